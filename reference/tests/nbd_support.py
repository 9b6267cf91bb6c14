"""Running ``nvbox serve`` and the real NBD clients in tests and benchmarks.

Servers are started as child processes, waited for through their pid file
(written once the image is open and nbdkit accepts connections), and stopped
by the pid that was started: SIGTERM, then SIGKILL if it has not exited
within a bound.  Every client runs with a timeout.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse

__all__ = ["NBD_PYTHON", "NVBOX", "PausingClient", "CLIENT_TIMEOUT", "missing_tools", "served", "start", "start_peer", "Server", "run", "nbdsh", "nvbox"]

NVBOX = [sys.executable, "-m", "nvbox"]
CLIENT_TIMEOUT = 60
START_TIMEOUT = 60
STOP_TIMEOUT = 30
NBD_PYTHON = "/usr/bin/python3"     # the interpreter python3-libnbd is built for (nbdsh is `python3 -m nbd`)
PLUGIN_SO = "/usr/lib/x86_64-linux-gnu/nbdkit/plugins/nbdkit-python-plugin.so"


def missing_tools(*tools) -> str | None:
    """Why the NBD tests cannot run here (a skip reason), or None."""
    missing = [t for t in ("nbdkit",) + tools if t != "nbdsh" and shutil.which(t) is None]
    if not os.path.exists(PLUGIN_SO):
        missing.append("nbdkit-plugin-python")
    if "nbdsh" in tools and subprocess.run([NBD_PYTHON, "-c", "import nbd"], capture_output=True).returncode:
        missing.append("python3-libnbd")
    return f"not installed: {', '.join(missing)} (make tools installs them)" if missing else None


def run(*argv, check=True, timeout=CLIENT_TIMEOUT, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, timeout=timeout, **kw)
    if check and proc.returncode:
        raise AssertionError(f"{argv[0]} exited {proc.returncode}: {proc.stderr.decode(errors='replace')}"
                             f"{proc.stdout.decode(errors='replace')}")
    return proc


def nvbox(*args, check=True, **kw) -> subprocess.CompletedProcess:
    return run(*NVBOX, *args, check=check, **kw)


def nbdsh(uri: str, script: str, check=True) -> subprocess.CompletedProcess:
    """Run ``script`` with ``h`` connected to ``uri`` by libnbd, its own
    client-side range checks off (so the server's answers are what is seen)."""
    prologue = f"h.set_strict_mode(0)\nh.connect_uri({uri!r})\n"
    return run(NBD_PYTHON, "-m", "nbd", "-c", prologue + script, check=check)


class PausingClient:
    """An nbdsh script that stops at each ``pause()`` with its connection open,
    until the test calls ``resume()``: what a client has done but not yet
    closed can be looked at from outside."""

    PROLOGUE = ("import sys\n"
                "def pause():\n"
                "    print('paused', flush=True)\n"
                "    assert sys.stdin.readline() == 'go\\n'\n")

    def __init__(self, uri: str, script: str):
        prologue = f"h.set_strict_mode(0)\nh.connect_uri({uri!r})\n" + self.PROLOGUE
        self.proc = subprocess.Popen([NBD_PYTHON, "-m", "nbd", "-c", prologue + script], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def paused(self) -> None:
        """Wait until the script reaches its next ``pause()``."""
        line = self.proc.stdout.readline()
        if line != "paused\n":
            self.proc.wait(timeout=CLIENT_TIMEOUT)
            raise AssertionError(f"nbdsh stopped: {line!r} {self.proc.stderr.read()}")

    def resume(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def finish(self) -> None:
        """Let the script run to its end; it must succeed."""
        out, err = self.proc.communicate(timeout=CLIENT_TIMEOUT)
        if self.proc.returncode:
            raise AssertionError(f"nbdsh exited {self.proc.returncode}: {err}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=CLIENT_TIMEOUT)


class Server:
    """A running ``nvbox serve``: its process, socket and URIs."""

    def __init__(self, proc: subprocess.Popen, socket_path: str, log_path: str):
        self.proc, self.socket, self.log_path = proc, socket_path, log_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def nbdkit_pid(self) -> int:
        """nbdkit, the child of the ``nvbox serve`` process."""
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
            (child,) = f.read().split()
        return int(child)

    def uri(self, export: str = "") -> str:
        return f"nbd+unix:///{urllib.parse.quote(export, safe='/@')}?socket={self.socket}"

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self, sig=signal.SIGTERM) -> int:
        """Signal the server, wait for it (bounded), SIGKILL if it hangs; its exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)
            try:
                return self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)
                raise AssertionError(f"nvbox serve (pid {self.proc.pid}) ignored signal {sig}: {self.log()}")
        return self.proc.returncode


def start(image, socket_path, *options, env=None) -> Server:
    """Start ``nvbox serve`` in the foreground and wait until it accepts connections."""
    socket_path, pid_file, log_path = str(socket_path), f"{socket_path}.pid", f"{socket_path}.log"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(pid_file)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*NVBOX, "serve", "--socket", socket_path, "--pid-file", pid_file,
                                 *map(str, options), str(image)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
    server = Server(proc, socket_path, log_path)
    deadline = time.monotonic() + START_TIMEOUT
    while not os.path.exists(pid_file):
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop(signal.SIGKILL)
            raise AssertionError(f"nvbox serve did not start (exit {proc.returncode}): {server.log()}")
        time.sleep(0.02)
    return server


def start_peer(argv, socket_path, log_path) -> Server:
    """Start another NBD server (qemu-nbd, nbdkit file) on ``socket_path`` and
    wait until it accepts connections."""
    socket_path = str(socket_path)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    server = Server(proc, socket_path, str(log_path))
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(socket_path)
                return server
            except OSError:
                pass
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop(signal.SIGKILL)
            raise AssertionError(f"{argv[0]} did not start (exit {proc.returncode}): {server.log()}")
        time.sleep(0.02)


@contextlib.contextmanager
def served(image, socket_path, *options, env=None):
    """``nvbox serve`` for the duration of the block, stopped by its pid afterwards."""
    server = start(image, socket_path, *options, env=env)
    try:
        yield server
    finally:
        server.stop()
