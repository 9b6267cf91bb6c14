"""Mounting nvbox images in tests: the real ``nvbox mount`` in its own process,
always unmounted and stopped (by the PID the test started) within bounded time,
so a hung FUSE mount never hangs the suite."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from nvbox.live.commands import mounted_image

NVBOX = [sys.executable, "-m", "nvbox"]
MOUNT_TIMEOUT = 60.0        # seconds for a mount to become ready (a loaded 2-core machine)
STOP_TIMEOUT = 30.0         # seconds for the mount process to commit and exit after the unmount
WATCHDOG = 180.0            # seconds a mount may live: then it is killed, so that a test blocked
                            # in a system call on a hung mount gets ENOTCONN instead of hanging


TOTALS = {"mounts": 0, "unmounted": 0}


def summary() -> list[str]:
    """For the report at the end of the test session (conftest.py): the mounts
    this run made, or why every FUSE test was skipped."""
    reason = fuse_missing()
    if reason is not None:
        return [f"every FUSE test (test_fuse_mount.py, test_fuse_programs.py, benchmarks/test_bench_fuse.py) "
                f"skipped: {reason}"]
    if not TOTALS["mounts"]:
        return []
    return [f"nvbox mounts {TOTALS['mounts']}, unmounted and stopped {TOTALS['unmounted']}"]


def fuse_missing() -> str | None:
    """Why FUSE cannot be used here, or None."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (no FUSE in this machine or container)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not readable and writable by this user"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is missing (apt install fuse3)"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"mfusepy cannot load libfuse 3: {exc}"
    return None


def run_nvbox(*args, check=True, timeout=120, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(NVBOX + [str(a) for a in args], capture_output=True, text=True, timeout=timeout, **kw)
    if check and done.returncode:
        raise AssertionError(f"nvbox {' '.join(map(str, args))} exited {done.returncode}: {done.stderr}")
    return done


def refused_mount(image, mountpoint, *options, **kw) -> subprocess.CompletedProcess:
    """``nvbox mount`` (in the background) that the test expects to fail; should
    it mount after all, the mount is undone before the test goes on."""
    try:
        # Its own log file: the default one would be left in the user's runtime directory.
        return run_nvbox("mount", "--log-file", f"{mountpoint}.refused.log", *options, image, mountpoint,
                         check=False, **kw)
    finally:
        if mounted_image(mountpoint) is not None:
            stop_background_mount(image, mountpoint)


def stop_background_mount(image, mountpoint) -> None:
    """Unmount a mount made without -f: fusermount3 -u, then its process (found
    through its control socket) killed by PID, then a lazy unmount."""
    from nvbox.live import control
    pid = None
    with contextlib.suppress(Exception):
        pid = control.request(image, "status")["pid"]
    fusermount_u(mountpoint)
    if pid is not None and mounted_image(mountpoint) is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if mounted_image(mountpoint) is not None:
        fusermount_u(mountpoint, lazy=True)


def fusermount_u(mountpoint, lazy: bool = False) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(["fusermount3", "-uz" if lazy else "-u", str(mountpoint)],
                       capture_output=True, timeout=10)


NV_INDEX = "0x1500016"


class Swtpm:
    """``swtpm socket`` with its state at ``tpmstate`` (swtpm's option value),
    reached by tpm2-tools; stopped by its control channel, then by PID."""

    def __init__(self, tpmstate: str):
        # A short directory: Unix socket paths are limited to 108 bytes.
        self.dir = tempfile.mkdtemp(prefix="nvbox-swtpm-")
        self.sock = os.path.join(self.dir, "tpm")
        self.env = dict(os.environ, TPM2TOOLS_TCTI=f"swtpm:path={self.sock}")
        self.proc = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", tpmstate, "--flags", "startup-clear",
             "--server", f"type=unixio,path={self.sock}", "--ctrl", f"type=unixio,path={self.sock}.ctrl"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while not (os.path.exists(self.sock) and os.path.exists(self.sock + ".ctrl")):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"swtpm did not start: {self.proc.stderr.read()}")
            time.sleep(0.02)

    def tool(self, *args) -> bytes:
        done = subprocess.run(list(args), capture_output=True, env=self.env, timeout=60)
        assert done.returncode == 0, f"{args[0]}: {done.stderr.decode(errors='replace')}"
        return done.stdout

    def nv_define(self) -> None:
        self.tool("tpm2_nvdefine", NV_INDEX, "-C", "o", "-s", "8", "-a", "ownerread|ownerwrite")

    def nv_write(self, value: bytes) -> None:
        path = os.path.join(self.dir, "value")
        with open(path, "wb") as f:
            f.write(value)
        self.tool("tpm2_nvwrite", NV_INDEX, "-C", "o", "-i", path)

    def nv_read(self) -> bytes:
        return self.tool("tpm2_nvread", NV_INDEX, "-C", "o", "-s", "8")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run(["swtpm_ioctl", "--unix", self.sock + ".ctrl", "-s"], capture_output=True,
                               timeout=10)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class Mount:
    """``nvbox mount -f`` of ``image`` at ``mountpoint`` as a child process.

    Use as a context manager; ``stop()`` unmounts with ``fusermount3 -u``,
    waits for the process (its final commit), then kills it by PID and
    unmounts lazily if either did not work.
    """

    def __init__(self, image, mountpoint, *options, env=None, log=None, watchdog: float = WATCHDOG):
        self.image, self.mountpoint = str(image), str(mountpoint)
        self.log = str(log or f"{mountpoint}.log")
        os.makedirs(self.mountpoint, exist_ok=True)
        self.proc = subprocess.Popen(
            NVBOX + ["mount", "-f", "--log-file", self.log, *map(str, options), self.image, self.mountpoint],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env=env, start_new_session=True)
        self._watchdog = threading.Timer(watchdog, self._kill)
        self._watchdog.daemon = True
        self._watchdog.start()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        TOTALS["mounts"] += 1

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while mounted_image(self.mountpoint) is None:
            if self.proc.poll() is not None:
                raise AssertionError(f"nvbox mount exited {self.proc.returncode}: {self.proc.stderr.read()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.mountpoint} was not mounted within {MOUNT_TIMEOUT:g} s")
            time.sleep(0.02)

    def path(self, *parts) -> str:
        return os.path.join(self.mountpoint, *parts)

    def log_text(self) -> str:
        with open(self.log, encoding="utf-8", errors="replace") as f:
            return f.read()

    def _kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)      # the kernel aborts the connection
        fusermount_u(self.mountpoint, lazy=True)

    def stop(self) -> int | None:
        """Unmount and wait; returns the process's exit status."""
        self._watchdog.cancel()
        if self.proc.poll() is None:
            fusermount_u(self.mountpoint)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if mounted_image(self.mountpoint) is not None:
            fusermount_u(self.mountpoint, lazy=True)
        if self.proc.stderr and not self.proc.stderr.closed:
            self.proc.stderr.close()
            TOTALS["unmounted"] += mounted_image(self.mountpoint) is None
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
