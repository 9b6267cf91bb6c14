"""Quick checks of the benchmark peers (real qemu-img/qemu-io, real SQLite, real files)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import machine  # noqa: E402
import peers  # noqa: E402
from peers import MiB, PlainFilesStore, Qcow2Store, SqliteStore  # noqa: E402

needs_qemu = pytest.mark.skipif(not peers.have_qemu(), reason="qemu-img/qemu-io not installed")
needs_strace = pytest.mark.skipif(not peers.have_strace(), reason="strace not installed")

KINDS = [pytest.param(Qcow2Store, marks=needs_qemu, id="qcow2"),
         pytest.param(SqliteStore, id="sqlite"),
         pytest.param(PlainFilesStore, id="files")]


def _path(tmp_path, cls):
    return str(tmp_path / ("store.qcow2" if cls is Qcow2Store else "store"))


def _blob(n, seed=1):
    return bytes((i * 31 + seed) & 0xFF for i in range(n))


@pytest.mark.parametrize("cls", KINDS)
def test_round_trip_update_delete_reopen(tmp_path, cls):
    p = _path(tmp_path, cls)
    s = cls.create(p)
    sizes = {"empty": 0, "tiny": 64, "odd": 1000, "page": 4096, "big": 3 * MiB + 5}
    for name, n in sizes.items():
        s.put(name, _blob(n))
    s.put_many([(f"many/{i}", _blob(100, i)) for i in range(50)])
    for name, n in sizes.items():
        assert s.get(name) == _blob(n)
    # overwrite with a longer value (forces a move for qcow2), then a shorter one
    s.put("odd", _blob(5000, 7))
    assert s.get("odd") == _blob(5000, 7)
    s.put("odd", _blob(10, 9))
    assert s.get("odd") == _blob(10, 9)
    # small in-place update: 4 KiB inside a 1 MiB blob
    s.put("state", _blob(MiB, 3))
    s.update("state", 8192, b"\xAB" * 4096)
    want = bytearray(_blob(MiB, 3))
    want[8192:12288] = b"\xAB" * 4096
    assert s.get("state") == bytes(want)
    with pytest.raises(ValueError):
        s.update("state", MiB - 10, b"x" * 20)
    s.delete("tiny")
    assert "tiny" not in s.names()
    assert s.check()
    assert s.file_size() > MiB
    s.close()

    s = cls.open(p)
    assert set(s.names()) == ({"empty", "odd", "page", "big", "state"} | {f"many/{i}" for i in range(50)})
    assert s.get("state") == bytes(want)
    assert s.get("many/42") == _blob(100, 42)
    assert s.get("big") == _blob(3 * MiB + 5)
    s.put("after-reopen", b"x" * 700)       # allocation state survives reopen
    assert s.get("after-reopen") == b"x" * 700 and s.get("page") == _blob(4096)
    assert s.check()
    s.close()


@pytest.mark.parametrize("cls", KINDS)
def test_snapshots(tmp_path, cls):
    s = cls.create(_path(tmp_path, cls))
    s.put("a", _blob(10000))
    s.snapshot_create("before")
    s.update("a", 0, b"changed!")
    s.put("b", b"new")
    assert s.snapshots() == ["before"]
    s.snapshot_create("after")
    assert s.snapshots() == ["after", "before"]
    s.snapshot_delete("before")
    assert s.snapshots() == ["after"]
    assert s.get("a")[:8] == b"changed!"
    assert s.check()
    s.close()


@needs_qemu
def test_qcow2_snapshot_keeps_old_data(tmp_path):
    p = str(tmp_path / "s.qcow2")
    s = Qcow2Store.create(p)
    s.put("a", b"one" * 100)
    s.snapshot_create("s1")
    s.update("a", 0, b"two")
    s.close()
    import subprocess
    subprocess.run(["qemu-img", "snapshot", "-a", "s1", p], check=True)
    assert Qcow2Store.open(p).get("a") == b"one" * 100


@needs_qemu
def test_qcow2_image_is_real_and_fill(tmp_path):
    import json
    import subprocess
    p = str(tmp_path / "f.qcow2")
    s = Qcow2Store.create(p, cluster_size=4096)
    s.fill(20 * MiB, chunk=8 * MiB)
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", p],
                                     capture_output=True, check=True).stdout)
    assert info["format"] == "qcow2" and info["cluster-size"] == 4096
    assert s.file_size() >= 20 * MiB
    assert s.get("fill/000002") == b"\x5a" * (4 * MiB)
    assert s.check()
    assert s.startup_time() > 0
    s.close()


def test_sqlite_is_wal_full(tmp_path):
    s = SqliteStore.create(str(tmp_path / "q"))
    assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert s.conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    s.put("x", b"1" * 100)
    s.snapshot_create("s")
    import sqlite3
    snap = sqlite3.connect(os.path.join(s.snapdir, "s.db"))
    assert snap.execute("SELECT data FROM blobs WHERE name='x'").fetchone()[0] == b"1" * 100
    snap.close()
    s.close()


def test_plain_files_counters_exact(tmp_path):
    s = PlainFilesStore.create(str(tmp_path / "d"))
    f0 = s.flushes
    s.put("x", b"a" * 1000)
    assert (s.bytes_written, s.flushes - f0) == (1000, 2)     # file fsync + directory fsync
    s.put("y", b"b" * MiB)
    s.update("y", 4096, b"c" * 4096)                          # whole-file rewrite
    assert s.bytes_written == 1000 + 2 * MiB and s.flushes - f0 == 6
    assert s.get("y")[4096:8192] == b"c" * 4096


@needs_strace
@pytest.mark.parametrize("cls", KINDS)
def test_counted_small_update(tmp_path, cls):
    """count_io=True: bytes and flushes of one 4 KiB update inside a 1 MiB blob."""
    s = cls.create(_path(tmp_path, cls), count_io=True)
    s.put("state", _blob(MiB))
    b0, f0 = s.bytes_written, s.flushes
    assert b0 >= MiB and f0 >= 1
    s.update("state", 65536, b"\x11" * 4096)
    db, df = s.bytes_written - b0, s.flushes - f0
    assert df >= 1
    if cls is PlainFilesStore:
        assert db == MiB
    else:
        assert 4096 <= db < 64 * 1024, db         # page/cluster-granular, not the whole blob
    s.close()


@needs_strace
def test_strace_agrees_with_plain_files_own_count(tmp_path):
    """The strace method (used for qcow2 and SQLite) counts exactly what PlainFilesStore
    knows it did."""
    root = str(tmp_path / "d")
    os.makedirs(root)
    tracer = peers.SelfTracer(root)
    try:
        s = PlainFilesStore.create(root + "/s")
        s.put("a", b"z" * 5000)
        s.put_many([(f"m{i}", b"q" * 300) for i in range(10)])
        s.update("a", 100, b"y" * 10)
        s.delete("m3")
        s.snapshot_create("snap")
        tracer.sync()
        assert (tracer.tally.bytes_written, tracer.tally.flushes) == (s.bytes_written, s.flushes)
    finally:
        tracer.stop()


def test_trace_parser_handles_unfinished_calls(tmp_path):
    t = peers.TraceTally(str(tmp_path))
    p = str(tmp_path / "img")
    t.feed(f"10 pwrite64(4<{p}>, \"\"..., 512, 0 <unfinished ...>\n"
           f"11 fdatasync(4<{p}>) = 0\n"
           f"10 <... pwrite64 resumed>) = 512\n"
           f"10 pwrite64(5</elsewhere>, \"\"..., 512, 0) = 512\n"
           f"12 pwritev(4<{p}>, [{{iov_base=\"\"..., iov_len=4096}}], 1, 8192) = 4096\n")
    assert (t.bytes_written, t.flushes) == (4608, 1)


def test_machine_description(tmp_path):
    d = machine.describe(str(tmp_path))
    for key in ("cpu_model", "cores_logical", "ram_bytes", "os", "python", "sqlite", "qemu_img",
                "filesystem"):
        assert key in d
    assert d["filesystem"]["type"]
