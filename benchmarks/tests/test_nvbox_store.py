"""Quick correctness checks of NvboxStore (the nvbox side of the benchmarks)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import peers  # noqa: E402
from nvbox_store import NvboxStore, have_crypto  # noqa: E402
from peers import MiB  # noqa: E402

needs_strace = pytest.mark.skipif(not peers.have_strace(), reason="strace not installed")


def _blob(n, seed=1):
    return bytes((i * 31 + seed) & 0xFF for i in range(n))


def test_round_trip_update_delete_reopen(tmp_path):
    p = str(tmp_path / "s.nvbox")
    s = NvboxStore.create(p)
    sizes = {"empty": 0, "tiny": 64, "odd": 1000, "page": 4096, "big": 3 * MiB + 5}
    for name, n in sizes.items():
        s.put(name, _blob(n))
    s.put_many([(f"many/{i}", _blob(100, i)) for i in range(50)])
    for name, n in sizes.items():
        assert s.get(name) == _blob(n)
    s.put("odd", _blob(5000, 7))
    assert s.get("odd") == _blob(5000, 7)
    s.put("odd", _blob(10, 9))
    assert s.get("odd") == _blob(10, 9)
    s.put("state", _blob(MiB, 3))
    s.update("state", 8192, b"\xAB" * 4096)
    want = bytearray(_blob(MiB, 3))
    want[8192:12288] = b"\xAB" * 4096
    assert s.get("state") == bytes(want)
    with pytest.raises(ValueError):
        s.update("state", MiB - 10, b"x" * 20)
    with pytest.raises(KeyError):
        s.get("missing")
    with pytest.raises(KeyError):
        s.delete("missing")
    s.delete("tiny")
    assert "tiny" not in s.names()
    assert s.check()
    assert s.file_size() > MiB
    s.close()

    s = NvboxStore.open(p)
    assert set(s.names()) == ({"empty", "odd", "page", "big", "state"} | {f"many/{i}" for i in range(50)})
    assert s.get("state") == bytes(want)
    assert s.get("many/42") == _blob(100, 42)
    s.put("after-reopen", b"x" * 700)
    assert s.get("after-reopen") == b"x" * 700
    assert s.check()
    s.close()


def test_snapshots_fill_compact(tmp_path):
    s = NvboxStore.create(str(tmp_path / "s.nvbox"))
    s.put("a", _blob(10000))
    s.snapshot_create("before")
    s.update("a", 0, b"changed!")
    s.put("b", b"new")
    assert s.snapshots() == ["before"]
    assert s.snapshot_get("before", "a") == _blob(10000)
    s.snapshot_create("after")
    assert s.snapshots() == ["after", "before"]
    s.snapshot_delete("before")
    assert s.snapshots() == ["after"]
    assert s.get("a")[:8] == b"changed!"
    s.fill(5 * MiB, chunk=2 * MiB)
    assert s.get("fill/000002") == b"\x5a" * MiB
    assert s.file_size() >= 5 * MiB
    s.snapshot_delete("after")
    for n in list(s.names()):
        if n.startswith("fill/"):
            s.delete(n)
    before = s.file_size()
    s.compact()
    assert s.file_size() < before
    assert s.check()
    assert s.get("a")[:8] == b"changed!"
    s.close()


def test_counters_cover_create_and_commits(tmp_path):
    s = NvboxStore.create(str(tmp_path / "s.nvbox"))
    assert s.bytes_written >= 2048 and s.flushes >= 1        # create is counted too
    s.put("state", _blob(MiB))
    b0, f0 = s.bytes_written, s.flushes
    s.img.reset_stats()
    s.update("state", 65536, b"\x11" * 4096)
    db, df = s.bytes_written - b0, s.flushes - f0
    st = s.stats()
    assert df == 2 and st["commits"] == 1                  # flush, slot, flush
    assert db == st["clusters_written"] * 4096 + 512       # whole clusters plus the slot sector
    assert 4096 <= db < 64 * 1024, db
    s.close()
    s2 = NvboxStore.open(s.path)
    assert s2.bytes_written == 0
    s2.close()


@needs_strace
def test_device_counters_agree_with_strace(tmp_path):
    """The library's device counters (used for nvbox) give exactly what strace of the
    write/flush system calls gives (the method used for qcow2 and SQLite)."""
    root = str(tmp_path / "d")
    os.makedirs(root)
    tracer = peers.SelfTracer(root)
    try:
        s = NvboxStore.create(root + "/s.nvbox")
        s.put("a", b"z" * 5000)
        s.put_many([(f"m{i}", b"q" * 300) for i in range(10)])
        s.put("big", _blob(MiB))
        s.update("big", 4096, b"y" * 4096)
        s.delete("m3")
        s.snapshot_create("snap")
        s.update("big", 8192, b"w" * 10)
        s.snapshot_delete("snap")
        tracer.sync()
        assert (tracer.tally.bytes_written, tracer.tally.flushes) == (s.bytes_written, s.flushes)
        s.close()
    finally:
        tracer.stop()


def test_crypto_availability_is_explained():
    ok, reason = have_crypto()
    assert ok or reason
