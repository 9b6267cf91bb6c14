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
import time

from nvbox.live.commands import mounted_image

NVBOX = [sys.executable, "-m", "nvbox"]
MOUNT_TIMEOUT = 60.0        # seconds for a mount to become ready (a loaded 2-core machine)
STOP_TIMEOUT = 30.0         # seconds for the mount process to commit and exit after the unmount


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


def fusermount_u(mountpoint, lazy: bool = False) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(["fusermount3", "-uz" if lazy else "-u", str(mountpoint)],
                       capture_output=True, timeout=10)


class Mount:
    """``nvbox mount -f`` of ``image`` at ``mountpoint`` as a child process.

    Use as a context manager; ``stop()`` unmounts with ``fusermount3 -u``,
    waits for the process (its final commit), then kills it by PID and
    unmounts lazily if either did not work.
    """

    def __init__(self, image, mountpoint, *options, env=None, log=None):
        self.image, self.mountpoint = str(image), str(mountpoint)
        self.log = str(log or f"{mountpoint}.log")
        os.makedirs(self.mountpoint, exist_ok=True)
        self.proc = subprocess.Popen(
            NVBOX + ["mount", "-f", "--log-file", self.log, *map(str, options), self.image, self.mountpoint],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env=env, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

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

    def stop(self) -> int | None:
        """Unmount and wait; returns the process's exit status."""
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
        if self.proc.stderr:
            self.proc.stderr.close()
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
