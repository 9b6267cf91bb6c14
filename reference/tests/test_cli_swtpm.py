"""A real swtpm state directory through nvbox (issue 18): swtpm_setup makes it,
import takes it in (not swtpm's .lock), a snapshot is held while the TPM gets a
new NV index, import writes only what changed, and ``export --mirror`` of the
snapshot restores the directory: swtpm starts on it and the index is gone."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import tempfile
import time

import pytest

from test_cli import ok, run

TOOLS = ("swtpm_setup", "swtpm", "swtpm_ioctl", "tpm2_nvdefine", "tpm2_nvwrite", "tpm2_nvread")
pytestmark = pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                                reason="needs swtpm, swtpm-tools and tpm2-tools")

INDEX = "0x1500016"
TIMEOUT = 30



class Swtpm:
    """swtpm serving DIR on unix sockets; stopped by its PID, within TIMEOUT."""

    def __init__(self, state_dir, sockets):
        self.server = str(sockets / "tpm.sock")
        self.ctrl = self.server + ".ctrl"          # where the swtpm TCTI looks for the control channel
        for path in (self.server, self.ctrl):
            if os.path.exists(path):
                os.unlink(path)
        self.proc = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state_dir}",
             "--server", f"type=unixio,path={self.server}", "--ctrl", f"type=unixio,path={self.ctrl}",
             "--flags", "startup-clear"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + TIMEOUT
        while not (os.path.exists(self.server) and os.path.exists(self.ctrl)):
            if self.proc.poll() is not None:
                raise AssertionError(f"swtpm exited: {self.proc.stderr.read().decode(errors='replace')}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError("swtpm did not create its sockets")
            time.sleep(0.05)

    def tool(self, *args, check=True):
        env = dict(os.environ, TPM2TOOLS_TCTI=f"swtpm:path={self.server}")
        r = subprocess.run(list(args), env=env, capture_output=True, timeout=TIMEOUT)
        if check:
            assert r.returncode == 0, (args, r.stderr.decode(errors="replace"))
        return r

    def ioctl(self, *flags):
        subprocess.run(["swtpm_ioctl", "--unix", self.ctrl, *flags], check=True, capture_output=True,
                       timeout=TIMEOUT)

    def stop(self):
        """Shut the TPM down (it writes its state), then wait for the process."""
        try:
            self.ioctl("-s")
            self.proc.wait(timeout=TIMEOUT)
        finally:
            self.kill()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)
        self.proc.stderr.close()


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


@pytest.fixture
def sockets():
    """A short directory for the unix sockets (sun_path holds 108 bytes; pytest's
    tmp_path can be longer)."""
    path = tempfile.mkdtemp(prefix="nvbox-swtpm-", dir="/tmp")
    try:
        yield pathlib.Path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_swtpm_state_directory_round_trip(tmp_path, sockets):
    state, image = tmp_path / "tpm", tmp_path / "vm.nvbox"
    state.mkdir()
    subprocess.run(["swtpm_setup", "--tpm2", "--tpmstate", str(state)], check=True, capture_output=True,
                   timeout=120)
    assert ".lock" in _files(state) and "tpm2-00.permall" in _files(state)
    ok("create", image)
    doc = json.loads(ok("import", "--output", "json", image, state).stdout)
    assert doc["blobs"] == ["tpm2-00.permall"]                  # not the lock file
    ok("snapshot", "create", image, "provisioned")

    tpm = Swtpm(state, sockets)
    try:
        tpm.tool("tpm2_nvdefine", INDEX, "-C", "o", "-s", "32", "-a", "ownerread|ownerwrite")
        (tmp_path / "secret").write_bytes(b"s" * 32)
        tpm.tool("tpm2_nvwrite", INDEX, "-C", "o", "-i", str(tmp_path / "secret"))
        assert tpm.tool("tpm2_nvread", INDEX, "-C", "o", "-s", "32").stdout == b"s" * 32
        tpm.ioctl("-v")                                         # also leave a volatile state file
    finally:
        tpm.stop()
    assert "tpm2-00.volatilestate" in _files(state)

    doc = json.loads(ok("import", "--output", "json", image, state).stdout)
    assert sorted(doc["written"]) == ["tpm2-00.permall", "tpm2-00.volatilestate"]
    assert json.loads(ok("import", "--output", "json", image, state).stdout)["written"] == []
    assert run("diff", image, "provisioned").exit_code == 1

    # Revert the directory to the snapshot: the newer volatile state must go too.
    doc = json.loads(ok("export", "--mirror", "--snapshot", "provisioned", "--output", "json", image,
                        state).stdout)
    assert doc["removed"] == ["tpm2-00.volatilestate"] and doc["failed"] == []
    assert _files(state) == [".lock", "tpm2-00.permall"]
    assert os.stat(state / "tpm2-00.permall").st_mode & 0o777 == 0o600

    tpm = Swtpm(state, sockets)
    try:
        r = tpm.tool("tpm2_nvread", INDEX, "-C", "o", "-s", "32", check=False)
        assert r.returncode != 0                                 # the index defined after the snapshot is gone
        listed = tpm.tool("tpm2_getcap", "handles-nv-index").stdout.decode() if shutil.which("tpm2_getcap") else ""
        assert INDEX not in listed
    finally:
        tpm.stop()
