"""The live session (issue 15/16): changes grouped into commits by file-system
rules, the salvage of pending changes after a failure, snapshot operations,
and the control socket.  No FUSE here: test_fuse_*.py mount it."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

import nvbox
from nvbox.blockdev import MemoryDevice
from nvbox.check import check_image
from nvbox.crashsim import FaultyDevice
from nvbox.errors import NvboxError, error_class
from nvbox.live import control
from nvbox.errors import ERROR_CODES
from nvbox.live.session import ERRNO_BY_CODE, LiveSession, check_blob_name, errno_of


def _generation(path) -> int:
    with nvbox.open(path) as img:
        return img.generation


def _reader(path):
    return nvbox.open(path)


def _verdict(path) -> str:
    with nvbox.open(path) as img:
        return check_image(img).verdict


@pytest.fixture
def image(tmp_path):
    path = str(tmp_path / "vm.nvbox")
    nvbox.create(path).close()
    return path


def test_changes_wait_in_one_transaction_until_commit(image):
    gen0 = _generation(image)
    with LiveSession(image, commit_interval=3600) as s:
        s.write("tpm/permall", 0, b"a" * 5000)
        s.write("tpm/permall", 5000, b"b" * 5000)      # a sequential run: one journalled change
        s.create("tpm/.lock")
        s.truncate("tpm/permall", 9000)
        assert s.pending and s.read("tpm/permall", 4998, 4) == b"aabb"
        assert _generation(image) == gen0               # nothing committed yet: readers see the old state
        s.commit()
        assert not s.pending
        assert _generation(image) == gen0 + 1           # every pending change in ONE commit
        with _reader(image) as img:
            assert img["tpm/permall"] == b"a" * 5000 + b"b" * 4000 and img["tpm/.lock"] == b""
    assert _generation(image) == gen0 + 1               # close had nothing left to commit


def test_committer_commits_within_the_interval(image):
    with LiveSession(image, commit_interval=0.05) as s:
        s.write("x", 0, b"1")
        deadline = time.monotonic() + 30                # a bound for a loaded machine, not a timing claim
        while s.pending and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not s.pending
        with _reader(image) as img:
            assert img["x"] == b"1"


def test_flush_commits_only_a_changed_name_and_release_counts(image):
    with LiveSession(image, commit_interval=3600) as s:
        s.write("a", 0, b"1")
        s.opened("b")
        gen = s.generation
        s.flush("b")                    # b did not change: nothing committed
        assert s.pending and s.generation == gen
        s.opened("a")
        s.released("a")                 # a changed: its close commits everything pending
        assert not s.pending and s.generation == gen + 1
        assert s.info()["open_files"] == 1
        s.released("b")
        assert s.info()["open_files"] == 0


def test_rename_moves_open_handles_and_replaces(image):
    with LiveSession(image, commit_interval=3600) as s:
        s.write("tmp", 0, b"new")
        s.write("state", 0, b"old")
        s.opened("tmp")
        s.rename("tmp", "state")
        assert s.read("state") == b"new" and not s.exists("tmp")
        assert s.info()["open_files"] == 1
        with pytest.raises(NvboxError) as e:
            s.snapshot("revert", name="x")          # busy before the name is even looked up
        assert e.value.code == "live.busy"
        s.released("state")


def test_missing_blob_does_not_abandon_pending_changes(image):
    with LiveSession(image, commit_interval=3600) as s:
        s.write("kept", 0, b"k")
        for call in (lambda: s.truncate("nope", 1), lambda: s.delete("nope"),
                     lambda: s.rename("nope", "x"), lambda: s.zero("nope", 0, 1)):
            with pytest.raises(NvboxError) as e:
                call()
            assert e.value.code == "blob.not_found"
        assert s.pending and s.read("kept") == b"k"
    with _reader(image) as img:
        assert img["kept"] == b"k"


def test_snapshot_ops_commit_pending_first_and_revert_when_closed(image):
    with LiveSession(image, commit_interval=3600) as s:
        s.write("v", 0, b"one")
        info = s.snapshot("create", name="s1", metadata=b"meta".hex())
        assert info["name"] == "s1" and info["blob_count"] == 1 and info["metadata"] == b"meta".hex()
        assert not s.pending
        s.write("v", 0, b"two")
        assert s.view("s1").read("v") == b"one" and s.read("v") == b"two"
        s.snapshot("rename", old="s1", new="s2")
        assert [x["name"] for x in s.snapshot("list")] == ["s2"]
        s.snapshot("revert", name="s2")
        assert s.read("v") == b"one" and s.names() == ["v"]
        s.snapshot("delete", name="s2")
        with pytest.raises(NvboxError) as e:
            s.snapshot("delete", name="s2")
        assert e.value.code == "snapshot.not_found"
        with pytest.raises(NvboxError) as e:
            s.snapshot("bogus")
        assert e.value.code == "usage.argument"
    assert _verdict(image) == "clean"


def test_second_writer_is_locked_out_and_reader_sees_last_commit(image):
    with LiveSession(image, commit_interval=3600) as s:
        s.write("a", 0, b"committed")
        s.commit()
        s.write("a", 0, b"PENDING!!")
        with pytest.raises(NvboxError) as e:
            LiveSession(image)
        assert e.value.code == "image.locked"
        with pytest.raises(NvboxError) as e:
            nvbox.open(image, "rw")
        assert e.value.code == "image.locked"
        with _reader(image) as img:
            assert img["a"] == b"committed"


def test_read_only_session_refuses_changes_and_follows_the_writer(image):
    with nvbox.open(image, "rw") as w:
        w["a"] = b"1"
    with LiveSession(image, read_only=True, commit_interval=0.02) as r:
        with pytest.raises(NvboxError) as e:
            r.write("a", 0, b"2")
        assert e.value.code == "image.readonly" and errno_of(e.value) == errno.EROFS
        with nvbox.open(image, "rw") as w:
            w["a"] = b"2"
        deadline = time.monotonic() + 30
        while r.read("a") != b"2" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert r.read("a") == b"2"


# -- failures -------------------------------------------------------------------------------

def test_enospc_fails_one_write_and_keeps_the_other_pending_changes(tmp_path):
    """A full fixed-capacity image: the file whose writes do not fit gets
    space.exhausted (ENOSPC), from the write that meets it or, for the
    sequential writes the library gathers, from the file's fsync; the other
    files' pending writes are salvaged and committed; nothing committed is
    lost; check is clean."""
    path = str(tmp_path / "small.nvbox")
    nvbox.create(path, cluster_size=4096, capacity="160K").close()
    with LiveSession(path, commit_interval=3600) as s:
        s.write("committed", 0, b"c" * 8192)
        s.commit()
        s.write("small-a", 0, b"a" * 6000)
        s.write("small-b", 0, b"b" * 100)
        s.delete("committed")
        big = b"x" * (1 << 20)
        with pytest.raises(NvboxError) as e:
            for off in range(0, 1 << 20, 64 << 10):
                s.write("big", off, big[off:off + (64 << 10)])
            s.fsync("big")
        assert e.value.code == "space.exhausted" and errno_of(e.value) == errno.ENOSPC
        assert s.read("small-a") == b"a" * 6000 and s.read("small-b") == b"b" * 100
        assert not s.exists("committed")
        s.fsync("small-a")
    with _reader(path) as img:
        assert img["small-a"] == b"a" * 6000 and img["small-b"] == b"b" * 100
        assert "committed" not in img
    assert _verdict(path) == "clean"


def test_io_error_drops_what_fails_again_and_reports_it_at_fsync():
    """EIO from the disk: committed state keeps reading; a pending change that
    cannot be salvaged is reported by its file's next fsync (and only its)."""
    base = nvbox.create(None)
    base["committed"] = b"c" * 10000
    raw = base.dev.read(0, base.dev.size())
    dev = FaultyDevice(MemoryDevice(raw))
    img = nvbox.open(dev, "rw")
    s = LiveSession(img, commit_interval=3600)
    try:
        s.write("doomed", 0, b"d" * 10000)
        dev.fail_writes_after = dev.writes         # from now on every write fails
        with pytest.raises(NvboxError) as e:
            s.commit()
        assert e.value.code == "io.error" and errno_of(e.value) == errno.EIO
        assert s.read("committed") == b"c" * 10000      # committed state still reads
        assert not s.exists("doomed")
        dev.disarm()
        s.write("later", 0, b"l")
        s.fsync("later")                                # the disk is back: no error for others
        with pytest.raises(NvboxError) as e:
            s.fsync("doomed")
        assert e.value.code == "io.error"
        s.fsync("doomed")                               # reported once, as a write-back error is
    finally:
        s.close()


def test_a_change_failing_mid_transaction_salvages_the_rest():
    base = nvbox.create(None)
    raw = base.dev.read(0, base.dev.size())
    dev = FaultyDevice(MemoryDevice(raw))
    s = LiveSession(nvbox.open(dev, "rw"), commit_interval=3600)
    try:
        s.write("a", 0, b"a" * 9000)
        s.write("b", 0, b"b" * 9000)
        dev.fail_write = dev.writes + 1                 # the next device write fails, once
        s.write("c", 0, b"c" * 9000)                    # fails, salvages a and b, retried alone
        assert s.read("a") == b"a" * 9000 and s.read("b") == b"b" * 9000 and s.read("c") == b"c" * 9000
        s.commit()
        again = nvbox.open(MemoryDevice(dev.inner.read(0, dev.inner.size())))
        assert again["a"] == b"a" * 9000 and again["c"] == b"c" * 9000
    finally:
        s.close()


def test_errno_table_names_real_codes():
    assert set(ERRNO_BY_CODE) <= set(ERROR_CODES)
    with pytest.raises(NvboxError) as e:
        check_blob_name("x" * 256)
    assert errno_of(e.value) == errno.ENAMETOOLONG
    assert errno_of(error_class("cluster.checksum")()) == errno.EIO
    assert errno_of(error_class("blob.not_found")()) == errno.ENOENT


# -- the control socket -------------------------------------------------------------------------

def test_control_socket_serves_snapshots_and_reports_errors(image):
    with LiveSession(image, commit_interval=3600) as s, control.ControlServer(s, status={"mountpoint": "/m"}):
        path = control.socket_path(image)
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        s.write("a", 0, b"pending")
        status = control.request(image, "status")
        assert status["pid"] == os.getpid() and status["pending"] and status["mountpoint"] == "/m"
        # Through a symbolic link: the same socket (the real path is hashed).
        link = image + ".link"
        os.symlink(image, link)
        created = control.request(link, "snapshot.create", name="s1")
        assert created["blob_count"] == 1
        with pytest.raises(NvboxError) as e:
            control.request(image, "snapshot.create", name="s1")
        assert e.value.code == "snapshot.exists"
        with pytest.raises(NvboxError) as e:
            control.request(image, "nonsense")
        assert e.value.code == "usage.argument"
        with pytest.raises(NvboxError) as e:
            control.request(image, "snapshot.rename", old="s1")     # a missing argument
        assert e.value.code == "usage.argument"
        # A line that is not JSON.
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(path)
            c.sendall(b"{not json\n")
            reply = json.loads(c.makefile("rb").readline())
        assert reply["ok"] is False and reply["error"]["code"] == "usage.argument"
    assert not os.path.exists(control.socket_path(image))          # close removed its socket
    with pytest.raises(NvboxError) as e:
        control.request(image, "status")
    assert e.value.code == "image.locked"


def test_stale_socket_of_a_dead_session_is_replaced(image):
    path = control.socket_path(image)
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(path)                    # bound, never listening: what kill -9 leaves behind
    dead.close()
    with LiveSession(image) as s, control.ControlServer(s):
        assert control.request(image, "status")["pid"] == os.getpid()


def test_snapshot_command_routes_to_the_live_session(image):
    with LiveSession(image, commit_interval=3600) as s, control.ControlServer(s):
        s.write("a", 0, b"1")
        env = dict(os.environ)
        run = subprocess.run([sys.executable, "-m", "nvbox", "snapshot", "create", image, "live"],
                             capture_output=True, text=True, timeout=120, env=env)
        assert run.returncode == 0, run.stderr
        assert [x["name"] for x in s.snapshots()] == ["live"]
        assert s.view("live").read("a") == b"1"        # it committed what was pending first
        s.opened("a")
        run = subprocess.run([sys.executable, "-m", "nvbox", "snapshot", "revert", image, "live"],
                             capture_output=True, text=True, timeout=120, env=env)
        assert run.returncode == 1 and "live.busy" in run.stderr
        s.released("a")


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a session as another user")
def test_control_request_from_another_user_is_refused():
    """A session run by uid 65534; root connects (file permissions do not stop
    root, SO_PEERCRED does) and is refused with live.refused."""
    d = pathlib.Path(tempfile.mkdtemp(prefix="nvbox-uid65534-"))     # pytest's tmp dirs are root's, 0700
    os.chown(d, 65534, 65534)
    # Everything imported first, as root: the interpreter's own files may not
    # be readable by uid 65534.
    script = textwrap.dedent(f"""
        import os, sys, nvbox
        from nvbox.live.session import LiveSession
        from nvbox.live import control
        os.setgid(65534)
        os.setuid(65534)
        path = {str(d / 'img.nvbox')!r}
        nvbox.create(path).close()
        s = LiveSession(path)
        server = control.ControlServer(s).start()
        print(server.path, flush=True)
        sys.stdin.read()
        server.close(); s.close()
    """)
    env = dict(os.environ, HOME=str(d))
    env.pop("XDG_RUNTIME_DIR", None)
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env, cwd=str(d))
    try:
        sock = proc.stdout.readline().strip()
        assert sock, "the session did not start"
        with pytest.raises(NvboxError) as e:
            control.request_at(sock, "snapshot.create", {"name": "intruder"})
        assert e.value.code == "live.refused"
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
        shutil.rmtree(d, ignore_errors=True)
