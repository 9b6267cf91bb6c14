"""``nvbox mount`` (issue 15): the file system a state-keeping program sees,
when its changes become commits, commands while mounted, bad input and faults.
Every test mounts with the real libfuse (through mfusepy) in its own process."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess

import pytest

import nvbox
from nvbox.check import check_image
from nvbox.live.commands import mounted_image

from fuse_helpers import Mount, fuse_missing, refused_mount, run_nvbox, stop_background_mount

pytestmark = pytest.mark.skipif(fuse_missing() is not None, reason=str(fuse_missing()))


def _committed(image, name, default=None):
    """What a reader (another process's view: the last commit) sees of ``name``."""
    with nvbox.open(image) as img:
        return img.get(name, default)


def _verdict(image) -> str:
    with nvbox.open(image) as img:
        return check_image(img).verdict


def _oserror(fn, *args):
    with pytest.raises(OSError) as e:
        fn(*args)
    return e.value.errno


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """One writable mount for the file-operation tests, with commits only on
    the file-system calls that make them (an interval of an hour)."""
    d = tmp_path_factory.mktemp("live")
    image = str(d / "vm.nvbox")
    nvbox.create(image).close()
    with Mount(image, d / "m", "--commit-interval", "3600") as m:
        m.image_path = image
        yield m


def test_files_and_directories(live):
    p = live.path
    os.mkdir(p("dir"))
    with open(p("dir", "f"), "wb") as f:
        f.write(b"hello")
        f.seek(10)
        f.write(b"world")                             # past the end: a hole of zeros
    with open(p("dir", "f"), "rb") as f:
        assert f.read() == b"hello" + bytes(5) + b"world"
    st = os.stat(p("dir", "f"))
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.getuid() and st.st_size == 15
    assert stat.S_ISDIR(os.stat(p("dir")).st_mode)
    assert sorted(os.listdir(p("dir"))) == ["f"]
    assert ".snapshots" in os.listdir(live.mountpoint)
    # O_TRUNC, O_APPEND, O_EXCL
    with open(p("dir", "f"), "ab") as f:
        f.write(b"!")
    with open(p("dir", "f"), "rb") as f:
        assert f.read().endswith(b"world!")
    fd = os.open(p("dir", "f"), os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    assert os.path.getsize(p("dir", "f")) == 0
    assert _oserror(os.open, p("dir", "f"), os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST
    # pwrite at any offset, truncate both ways
    fd = os.open(p("dir", "f"), os.O_RDWR)
    try:
        os.pwrite(fd, b"abc", 8192 + 5)
        os.ftruncate(fd, 8192 + 6)
        assert os.pread(fd, 10, 8192) == bytes(5) + b"a"
        os.truncate(p("dir", "f"), 3)
        assert os.pread(fd, 10, 0) == bytes(3)
    finally:
        os.close(fd)
    # errors of the kind a program meets
    assert _oserror(os.rmdir, p("dir")) == errno.ENOTEMPTY
    assert _oserror(os.open, p("dir"), os.O_WRONLY) == errno.EISDIR
    assert _oserror(os.mkdir, p("dir", "f", "sub")) == errno.ENOTDIR
    assert _oserror(os.stat, p("nope")) == errno.ENOENT
    os.unlink(p("dir", "f"))
    assert os.listdir(p("dir")) == []                 # an emptied directory stays (in the mount)
    os.rmdir(p("dir"))
    assert _oserror(os.stat, p("dir")) == errno.ENOENT


def test_rename_replaces_atomically_and_moves_directories(live):
    p = live.path
    os.makedirs(p("tpm"), exist_ok=True)
    with open(p("tpm", "state"), "wb") as f:
        f.write(b"old state")
    # swtpm's pattern: write a temporary file, then rename it over the state file.
    with open(p("tpm", "TMP-state"), "wb") as f:
        f.write(b"new state")
    os.rename(p("tpm", "TMP-state"), p("tpm", "state"))
    assert sorted(os.listdir(p("tpm"))) == ["state"]
    assert _committed(live.image_path, "tpm/state") == b"new state"       # a rename commits
    assert _committed(live.image_path, "tpm/TMP-state") is None
    os.rename(p("tpm"), p("tpm2"))
    with open(p("tpm2", "state"), "rb") as f:
        assert f.read() == b"new state"
    assert _committed(live.image_path, "tpm2/state") == b"new state"
    os.mkdir(p("other"))
    with open(p("other", "x"), "wb"):
        pass
    assert _oserror(os.rename, p("tpm2"), p("other")) == errno.ENOTEMPTY
    assert _oserror(os.rename, p("tpm2", "state"), p("other")) == errno.EISDIR


def test_durability_fsync_close_and_pending(live):
    """fsync commits; a write that is neither fsynced nor closed is pending
    (readers see the last commit); the close of a written file commits."""
    image = live.image_path
    fd = os.open(live.path("durable"), os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        os.write(fd, b"v1")
        os.fsync(fd)
        assert _committed(image, "durable") == b"v1"
        os.pwrite(fd, b"v2", 0)
        assert _committed(image, "durable") == b"v1"  # pending: commit interval is an hour
        os.fdatasync(fd)
        assert _committed(image, "durable") == b"v2"
        os.pwrite(fd, b"v3", 0)
    finally:
        os.close(fd)
    assert _committed(image, "durable") == b"v3"      # the close of a written file commits


@pytest.mark.skipif(shutil.which("fallocate") is None, reason="util-linux fallocate is missing")
def test_fallocate_punches_zeroes_and_extends(live):
    path = live.path("sparse")
    with open(path, "wb") as f:
        f.write(b"x" * 12288)

    def fallocate(*args):
        subprocess.run(["fallocate", *args, path], check=True, capture_output=True, timeout=30)
    fallocate("--punch-hole", "--offset", "4096", "--length", "4096")
    fallocate("--zero-range", "--offset", "100", "--length", "10", "--keep-size")
    fallocate("--length", "20000")
    with open(path, "rb") as f:
        data = f.read()
    assert data == b"x" * 100 + bytes(10) + b"x" * 3986 + bytes(4096) + b"x" * 4096 + bytes(20000 - 12288)
    assert _committed(live.image_path, "sparse") == data    # the close of a changed file committed


def test_names_over_255_bytes_get_enametoolong(live):
    assert _oserror(open, live.path("a" * 256), "wb") == errno.ENAMETOOLONG
    os.makedirs(live.path("d" * 200), exist_ok=True)
    assert _oserror(open, live.path("d" * 200, "e" * 60), "wb") == errno.ENAMETOOLONG
    with open(live.path("d" * 200, "e" * 54), "wb") as f:      # 255 bytes exactly
        f.write(b"fits")


def test_statfs_and_snapshots_dir_is_read_only(live):
    vfs = os.statvfs(live.mountpoint)
    assert vfs.f_bsize == 4096 and vfs.f_namemax == 255 and vfs.f_bavail > 0
    with open(live.path("snapme"), "wb") as f:
        f.write(b"in the snapshot")
    run_nvbox("snapshot", "create", live.image_path, "s1")         # reaches the mount process
    assert os.listdir(live.path(".snapshots")) == ["s1"]
    with open(live.path(".snapshots", "s1", "snapme"), "rb") as f:
        assert f.read() == b"in the snapshot"
    assert _oserror(open, live.path(".snapshots", "s1", "snapme"), "r+b") == errno.EROFS
    assert _oserror(open, live.path(".snapshots", "s1", "new"), "wb") == errno.EROFS
    assert _oserror(os.mkdir, live.path(".snapshots", "x")) == errno.EROFS
    run_nvbox("snapshot", "rename", live.image_path, "s1", "s2")
    assert os.listdir(live.path(".snapshots")) == ["s2"]
    run_nvbox("snapshot", "delete", live.image_path, "s2")
    assert os.listdir(live.path(".snapshots")) == []


def test_writers_are_locked_out_and_readers_see_the_last_commit(live, tmp_path):
    with open(live.path("reader-sees"), "wb") as f:
        f.write(b"committed")
    done = run_nvbox("put", live.image_path, "x", "-", input="data", check=False)
    assert done.returncode == 1 and "image.locked" in done.stderr
    done = refused_mount(live.image_path, tmp_path)
    assert done.returncode == 1 and "image.locked" in done.stderr
    assert mounted_image(tmp_path) is None
    assert run_nvbox("get", live.image_path, "reader-sees").stdout == "committed"
    assert "No errors" in run_nvbox("check", live.image_path).stdout


def test_revert_refused_while_a_file_is_open(live):
    with open(live.path("rv"), "wb") as f:
        f.write(b"before")
    run_nvbox("snapshot", "create", live.image_path, "rv-point")
    with open(live.path("rv"), "wb") as f:
        f.write(b"after")
        done = run_nvbox("snapshot", "revert", live.image_path, "rv-point", check=False)
        assert done.returncode == 1 and "live.busy" in done.stderr
    run_nvbox("snapshot", "revert", live.image_path, "rv-point")    # no file open: it runs
    with open(live.path("rv"), "rb") as f:
        assert f.read() == b"before"
    run_nvbox("snapshot", "delete", live.image_path, "rv-point")


# -- mounts of their own --------------------------------------------------------------------

def test_background_mount_umount_and_what_stays(tmp_path):
    """Without -f the command returns once the mount is ready; nvbox umount
    returns after the final commit; an empty directory is not stored."""
    image = str(tmp_path / "bg.nvbox")
    nvbox.create(image).close()
    mnt = tmp_path / "m"
    mnt.mkdir()
    run_nvbox("mount", "--commit-interval", "3600", "--log-file", tmp_path / "log", image, mnt)
    try:
        assert mounted_image(mnt) == os.path.realpath(image)
        os.mkdir(mnt / "empty")
        os.mkdir(mnt / "full")
        with open(mnt / "full" / "f", "wb") as f:
            f.write(b"pending until unmount, and more")
        os.truncate(mnt / "full" / "f", 21)     # not closed, not fsynced: pending
        assert _committed(image, "full/f") == b"pending until unmount, and more"
        run_nvbox("umount", mnt)
    finally:
        if mounted_image(mnt) is not None:
            stop_background_mount(image, mnt)
    assert mounted_image(mnt) is None
    assert _committed(image, "full/f") == b"pending until unmount"   # umount returned after the commit
    with nvbox.open(image) as img:
        assert img.names() == ["full/f"]    # "empty" lived in the mount only
    assert _verdict(image) == "clean"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_unmounts_after_a_final_commit(tmp_path, sig):
    image = str(tmp_path / "sig.nvbox")
    nvbox.create(image).close()
    m = Mount(image, tmp_path / "m", "--commit-interval", "3600")
    try:
        fd = os.open(m.path("f"), os.O_CREAT | os.O_WRONLY)
        os.write(fd, b"x" * 10000)          # pending: no fsync, not closed
        os.kill(m.pid, sig)
        assert m.proc.wait(timeout=30) == 0
        os.close(fd)                        # ENOTCONN is fine too: the mount has gone
    except OSError:
        pass
    finally:
        m.stop()
    assert mounted_image(tmp_path / "m") is None
    assert _committed(image, "f") == b"x" * 10000
    assert _verdict(image) == "clean"


def test_full_fixed_capacity_image_gets_enospc_and_keeps_the_rest(tmp_path):
    image = str(tmp_path / "fixed.nvbox")
    nvbox.create(image, capacity="256K").close()
    with Mount(image, tmp_path / "m", "--commit-interval", "3600") as m:
        with open(m.path("keep"), "wb") as f:
            f.write(b"k" * 20000)
        other = os.open(m.path("other"), os.O_CREAT | os.O_WRONLY)
        os.write(other, b"pending other file")
        fd = os.open(m.path("big"), os.O_CREAT | os.O_WRONLY)
        code = None
        try:
            for _ in range(64):
                os.write(fd, b"b" * 65536)
            os.fsync(fd)
        except OSError as exc:
            code = exc.errno
        finally:
            try:
                os.close(fd)
            except OSError as exc:
                code = code or exc.errno
        assert code == errno.ENOSPC
        os.fsync(other)                     # the other file's pending write was not lost
        os.close(other)
        with open(m.path("keep"), "rb") as f:
            assert f.read() == b"k" * 20000
    assert _committed(image, "keep") == b"k" * 20000
    assert _committed(image, "other") == b"pending other file"
    assert _verdict(image) == "clean"


def test_encrypted_image_with_passphrase_from_the_environment(tmp_path):
    image = str(tmp_path / "enc.nvbox")
    env = dict(os.environ, NVBOX_PASSPHRASE="correct horse")
    run_nvbox("create", "--encrypt", image, env=env)
    done = refused_mount(image, tmp_path)                                 # no key
    assert done.returncode == 1 and "key.missing" in done.stderr
    with Mount(image, tmp_path / "m", env=env) as m:
        with open(m.path("secret"), "wb") as f:
            f.write(b"tpm seeds")
    assert run_nvbox("get", image, "secret", env=env).stdout == "tpm seeds"
    with open(image, "rb") as f:
        assert b"tpm seeds" not in f.read()


def test_read_only_and_snapshot_mounts(tmp_path):
    image = str(tmp_path / "ro.nvbox")
    with nvbox.create(image) as img:
        img["a"] = b"one"
        img.snapshots.create("s")
        img["a"] = b"two"
    with Mount(image, tmp_path / "ro", "--read-only") as ro, Mount(image, tmp_path / "snap", "--snapshot", "s") as sn:
        with open(ro.path("a"), "rb") as f:
            assert f.read() == b"two"
        with open(sn.path("a"), "rb") as f:
            assert f.read() == b"one"
        for m in (ro, sn):
            assert _oserror(open, m.path("a"), "r+b") == errno.EROFS
            assert _oserror(open, m.path("new"), "wb") == errno.EROFS
            assert stat.S_IMODE(os.stat(m.path("a")).st_mode) == 0o400
        with nvbox.open(image, "rw") as img:           # a read-only mount holds no lock
            img["a"] = b"three"
    done = refused_mount(image, tmp_path, "--snapshot", "nope")
    assert done.returncode == 1 and "snapshot.not_found" in done.stderr


def test_damaged_cluster_gives_eio_for_that_file_alone(tmp_path):
    image = str(tmp_path / "bad.nvbox")
    with nvbox.create(image) as img:
        img["good"] = b"g" * 10000
        img["bad"] = bytes(range(256)) * 40
    raw = bytearray(open(image, "rb").read())
    at = raw.find(bytes(range(256)) * 4)
    raw[at + 100] ^= 0xFF                               # one bit pattern in one data cluster
    open(image, "wb").write(raw)
    with Mount(image, tmp_path / "m") as m:
        with open(m.path("bad"), "rb") as f:
            assert _oserror(f.read) == errno.EIO
        with open(m.path("good"), "rb") as f:
            assert f.read() == b"g" * 10000
        with open(m.path("new"), "wb") as f:            # the rest of the mount keeps working
            f.write(b"fine")
        assert "cluster.checksum" in m.log_text()
