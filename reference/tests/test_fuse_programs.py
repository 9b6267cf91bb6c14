"""Real programs keep their state in a mounted image (issue 15): swtpm with
both of its state back ends driven by tpm2-tools, a snapshot while the TPM
runs, qemu-io on a UEFI variable store, and kill -9 of the mount process in
the middle of fsync'ed writes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

import nvbox
from nvbox.check import check_image
from nvbox.live import control

from fuse_helpers import Mount, Swtpm, fuse_missing, fusermount_u, run_nvbox

OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"

pytestmark = pytest.mark.skipif(fuse_missing() is not None, reason=str(fuse_missing()))
needs_swtpm = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("swtpm", "swtpm_setup", "swtpm_ioctl", "tpm2_nvdefine")),
    reason="swtpm, swtpm-tools or tpm2-tools is not installed")


def _verdict(image) -> str:
    with nvbox.open(image) as img:
        return check_image(img).verdict


def _setup_tpm(state_arg: str) -> None:
    done = subprocess.run(["swtpm_setup", "--tpm2", "--tpmstate", state_arg, "--create-ek-cert"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_swtpm
@pytest.mark.parametrize("backend", ["dir", "file"])
def test_swtpm_state_in_the_image(tmp_path, backend):
    """swtpm_setup into the mount, an NV index defined and written through
    swtpm, unmount, check clean, mount again, swtpm reads the index back."""
    image = str(tmp_path / "vm.nvbox")
    nvbox.create(image).close()
    mnt = tmp_path / "m"

    def state(m) -> str:
        return f"dir={m.path('tpm')}" if backend == "dir" else f"backend-uri=file://{m.path('tpm', 'state')}"

    with Mount(image, mnt) as m:
        os.mkdir(m.path("tpm"))
        _setup_tpm(m.path("tpm") if backend == "dir" else f"file://{m.path('tpm', 'state')}")
        with Swtpm(state(m)) as tpm:
            tpm.nv_define()
            tpm.nv_write(b"persist!")
    assert _verdict(image) == "clean"
    with nvbox.open(image) as img:
        names = img.names()
    assert ("tpm/tpm2-00.permall" in names) if backend == "dir" else ("tpm/state" in names)
    with Mount(image, mnt) as m, Swtpm(state(m)) as tpm:
        assert tpm.nv_read() == b"persist!"


@needs_swtpm
def test_snapshot_while_the_tpm_runs_then_revert(tmp_path):
    image = str(tmp_path / "vm.nvbox")
    nvbox.create(image).close()
    mnt = tmp_path / "m"
    with Mount(image, mnt) as m:
        os.mkdir(m.path("tpm"))
        with Swtpm(f"dir={m.path('tpm')}") as tpm:
            tpm.nv_define()
            tpm.nv_write(b"value 1!")
            run_nvbox("snapshot", "create", image, "one")      # the TPM keeps running
            tpm.nv_write(b"value 2!")
            assert tpm.nv_read() == b"value 2!"
    run_nvbox("snapshot", "revert", image, "one")
    with Mount(image, mnt) as m, Swtpm(f"dir={m.path('tpm')}") as tpm:
        assert tpm.nv_read() == b"value 1!"
    assert _verdict(image) == "clean"


@pytest.mark.skipif(not (shutil.which("qemu-io") and os.path.exists(OVMF_VARS)),
                    reason="qemu-io (qemu-utils) or Debian's OVMF_VARS_4M.fd (ovmf) is missing")
def test_qemu_io_on_a_mounted_uefi_variable_store(tmp_path):
    image = str(tmp_path / "vm.nvbox")
    nvbox.create(image).close()
    run_nvbox("put", image, "uefi/vars.fd", OVMF_VARS)
    with open(OVMF_VARS, "rb") as f:
        original = f.read()
    with Mount(image, tmp_path / "m", "--commit-interval", "3600") as m:
        done = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0xab 65536 4k", "-c", "flush",
                               "-c", "read -P 0xab 65536 4k", m.path("uefi", "vars.fd")],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "Pattern verification failed" not in done.stdout, done.stdout + done.stderr
        # While still mounted: a reader sees the commit qemu's flush made.
        got = subprocess.run([sys.executable, "-m", "nvbox", "get", image, "uefi/vars.fd"],
                             capture_output=True, timeout=60).stdout
    assert got == original[:65536] + b"\xab" * 4096 + original[65536 + 4096:]
    assert _verdict(image) == "clean"


_WRITER = textwrap.dedent("""
    import os, sys
    fd = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY, 0o600)
    i = 0
    while True:
        os.pwrite(fd, i.to_bytes(8, "little") * 512, i * 4096)     # one 4 KiB record each
        os.fsync(fd)
        print(i, flush=True)                                     # after fsync returned
        i += 1
""")


def test_kill_9_during_fsynced_writes_loses_nothing_fsynced(tmp_path):
    image = str(tmp_path / "vm.nvbox")
    nvbox.create(image).close()
    mnt = tmp_path / "m"
    m = Mount(image, mnt, "--commit-interval", "3600")
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, m.path("log")], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    done = -1
    try:
        for line in writer.stdout:
            done = int(line)
            if done >= 40:
                os.kill(m.pid, signal.SIGKILL)                  # in the middle of the loop
                break
        for line in writer.stdout:          # writes whose fsync returned before the kill took effect
            done = int(line)
    finally:
        writer.kill()
        writer.wait(timeout=30)
        m.proc.wait(timeout=30)
        fusermount_u(mnt)
        m.stop()
        with contextlib.suppress(FileNotFoundError):     # the killed session's socket
            os.unlink(control.socket_path(image))
    assert done >= 40
    with nvbox.open(image) as img:
        data = img["log"]
    for i in range(done + 1):
        assert data[i * 4096:(i + 1) * 4096] == i.to_bytes(8, "little") * 512, f"record {i} lost"
    # A kill in the middle of a commit may leave clusters that nothing
    # references (leaks), never damage; in these runs it was always clean.
    assert _verdict(image) in ("clean", "leaks")
