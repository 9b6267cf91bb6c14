"""``nvbox serve``: every blob of an image as an NBD export, served by nbdkit.

nbdkit speaks NBD and runs nvbox's plugin (``nbd_plugin.py``) in its embedded
Python.  This module builds nbdkit's command line and the listening socket:

- ``nvbox serve`` binds the socket itself and hands it to nbdkit by socket
  activation (LISTEN_FDS=1, the socket as fd 3).  So a Unix socket is mode
  0600 from the moment it exists (nbdkit would create it under its own umask,
  022), a TCP port is bound to 127.0.0.1 unless ``--bind`` says otherwise, and
  ``--port 0`` picks a free port, which the printed address names.
- nbdkit runs as the child of this process (``_Supervisor``), which is the
  server's process for the user: its pid is the ``--pid-file``'s, and SIGTERM,
  SIGINT or SIGHUP to it commit and stop, also while clients stay connected
  (nbdkit alone would wait for them to leave).
- In the foreground (the default) the command returns when the server stops,
  with nbdkit's exit status.  ``--fork`` runs the supervisor in a new session
  and returns once the server accepts connections: when the plugin has opened
  the image (lock, key) and written its ready file.  A server that fails
  before that is reported with its messages and a non-zero exit.
- Keys are never arguments: the plugin gets the key or passphrase file's
  name, or finds NVBOX_PASSPHRASE in the environment nbdkit inherits.
- The plugin finds this nvbox: ``sitedir=`` names this interpreter's
  site-packages (the embedded interpreter does not see a virtual environment)
  and the directory this package was imported from.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import signal
import site
import socket
import stat
import sys
import tempfile
import time

import click

from ..cmdline import CONTEXT, image_command

__all__ = ["serve", "nbdkit_command", "listening_socket", "READY_TIMEOUT"]

PLUGIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nbd_plugin.py")
READY_TIMEOUT = 120.0       # seconds --fork waits (an encrypted image's KDF can take a while)
_LISTEN_FD = 3              # the first socket-activation descriptor (sd_listen_fds)
_STOP_FD = 4                # the plugin's end of the supervisor's stop channel


def _site_dirs() -> list[str]:
    """Where this interpreter finds its packages, nvbox's own directory last."""
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    import nvbox
    dirs.append(os.path.dirname(os.path.dirname(os.path.abspath(nvbox.__file__))))
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def nbdkit_command(image: str, *, exports=(), read_only=False, commit_interval=1.0, key_file=None,
                   passphrase_file=None, ready_file=None, socket_path=None) -> list[str]:
    """The nbdkit command line that serves ``image`` on socket-activation fd 3."""
    argv = ["nbdkit", "-f", "--log=stderr"]
    if read_only:
        argv.append("-r")
    argv += ["python", PLUGIN, f"image={os.path.abspath(image)}"]
    argv += [f"sitedir={d}" for d in _site_dirs()]
    argv += [f"export={name}" for name in exports]
    argv.append(f"commit-interval={commit_interval}")
    if read_only:
        argv.append("read-only=1")
    for param, path in (("key-file", key_file), ("passphrase-file", passphrase_file),
                        ("ready-file", ready_file), ("socket", socket_path)):
        if path:
            argv.append(f"{param}={os.path.abspath(path)}")
    return argv


def _clear_stale_socket(path: str) -> None:
    """Remove a socket left by a server that is gone; refuse one still served."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise click.ClickException(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise
        os.unlink(path)
        return
    finally:
        probe.close()
    raise click.ClickException(f"{path}: a server already listens on this socket")


def listening_socket(socket_path=None, port=None, bind="127.0.0.1") -> tuple[socket.socket, str]:
    """A listening socket and the NBD URI of its default export."""
    if socket_path is not None:
        socket_path = os.path.abspath(socket_path)
        _clear_stale_socket(socket_path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(socket_path)      # created 0600: no moment when others may connect
        finally:
            os.umask(old)
        sock.listen(64)
        return sock, f"nbd+unix:///?socket={socket_path}"
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.create_server((bind, port), family=family, backlog=64)
    host, bound_port = sock.getsockname()[:2]
    host = f"[{host}]" if family == socket.AF_INET6 else host
    return sock, f"nbd://{host}:{bound_port}/"


class _Supervisor:
    """nbdkit as a child process, watched until it exits.

    nbdkit asks for SIGTERM when its parent exits (PR_SET_PDEATHSIG, even in
    the foreground), and on SIGTERM it stops accepting connections but waits
    for connected clients to leave.  ``nvbox serve`` stops when told to, so on
    SIGTERM, SIGINT or SIGHUP this parent forwards SIGTERM; if clients keep
    nbdkit up past ``STOP_GRACE`` seconds, it asks the plugin over a socket
    pair (the plugin's ``stop-fd``) to close the session (the final commit;
    any later request fails with EIO, so no write is acknowledged and lost)
    and, once the plugin answers, ends nbdkit with SIGKILL.
    """

    STOP_GRACE = 2.0
    CLOSE_TIMEOUT = 120.0

    def __init__(self, argv, sock: socket.socket):
        self.stop_channel, plugin_end = socket.socketpair()
        argv = argv + [f"stop-fd={_STOP_FD}"]
        self.pid = os.fork()
        if self.pid == 0:
            try:
                self._exec(argv, sock, plugin_end)
            finally:
                os._exit(127)
        plugin_end.close()
        sock.close()
        self._stop_requested = None     # monotonic time of the first stop signal
        self._closed_by_request = False  # the plugin closed the session before SIGKILL

    @staticmethod
    def _exec(argv, sock, plugin_end) -> None:
        """In the child: become nbdkit, ``sock`` as socket-activation fd 3."""
        # Copies above both targets first, so that neither dup2 closes the other's source.
        moved = [(fcntl.fcntl(s.fileno(), fcntl.F_DUPFD, 10), target)
                 for s, target in ((sock, _LISTEN_FD), (plugin_end, _STOP_FD))]
        for fd, target in moved:
            os.dup2(fd, target)     # dup2 makes the copy inheritable
        env = dict(os.environ, LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
        env.pop("LISTEN_FDNAMES", None)
        os.execvpe(argv[0], argv, env)

    def _on_signal(self, signum, frame) -> None:
        if self._stop_requested is None:
            self._stop_requested = time.monotonic()
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)

    def exited(self):
        """nbdkit's exit code if it has exited, else None."""
        done, status = os.waitpid(self.pid, os.WNOHANG)
        return os.waitstatus_to_exitcode(status) if done else None

    def run(self, ready_file, on_ready=None) -> int:
        """Wait for nbdkit to exit (stopping it on a signal); its exit code
        (a signal N gives 128 + N).  ``on_ready()`` runs once the plugin has
        written ``ready_file``."""
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        while True:
            code = self.exited()
            if code is not None:
                if self._closed_by_request:
                    return 0                        # stopped as asked, after the final commit
                return code if code >= 0 else 128 - code
            if on_ready is not None and os.path.exists(ready_file):
                on_ready()
                on_ready = None
            if self._stop_requested is not None and time.monotonic() - self._stop_requested > self.STOP_GRACE:
                self._close_and_kill()
            time.sleep(0.05)

    def _close_and_kill(self) -> None:
        """Clients keep nbdkit up: the plugin closes the session, then SIGKILL."""
        self._stop_requested = float("inf")         # once
        try:
            self.stop_channel.settimeout(self.CLOSE_TIMEOUT)
            self.stop_channel.sendall(b"stop")
            # "closed" once the final commit is durable; EOF if nbdkit exited meanwhile.
            self._closed_by_request = self.stop_channel.recv(16) == b"closed"
        except OSError:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


def _write_pid_file(path, pid: int) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(f"{pid}\n")
    os.replace(tmp, path)


def _serve_in_foreground(argv, sock, ready_file, pid_file) -> int:
    supervisor = _Supervisor(argv, sock)
    return supervisor.run(ready_file, (lambda: _write_pid_file(pid_file, os.getpid())) if pid_file else None)


def _start_in_background(argv, sock, ready_file, pid_file, log_file) -> int:
    """A new session runs the supervisor; returns its pid once the plugin has
    written ``ready_file`` (and the pid file is written)."""
    log = open(log_file, "ab") if log_file else tempfile.TemporaryFile()  # noqa: SIM115 - the child keeps it
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1):
                os.dup2(null, fd)
            os.dup2(log.fileno(), 2)
            code = _Supervisor(argv, sock).run(ready_file)
            os._exit(code & 0xFF)
        finally:
            os._exit(127)
    sock.close()
    deadline = time.monotonic() + READY_TIMEOUT
    try:
        while not os.path.exists(ready_file):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                if not log_file:
                    log.seek(0)
                    sys.stderr.write(log.read().decode("utf-8", "replace"))
                raise click.exceptions.Exit(os.waitstatus_to_exitcode(status) or 1)
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGTERM)
                raise click.ClickException(f"the server was not ready after {READY_TIMEOUT:.0f} s")
            time.sleep(0.02)
    finally:
        log.close()
    if pid_file:
        _write_pid_file(pid_file, pid)
    return pid


@click.command("serve", context_settings=CONTEXT, help="""\
Serve every blob of IMAGE as an NBD export (through nbdkit), for QEMU, qemu-img,
qemu-io and any NBD client.  Each export is named by its blob and has the
blob's size; a snapshot's blobs are read-only exports named BLOB@SNAPSHOT.
FLUSH and FUA writes commit everything pending (durable when they answer);
other writes commit at most --commit-interval seconds later, when the last
client of a blob disconnects, and at SIGTERM.  While served, `nvbox snapshot`
and the readers (get, ls, export) work on IMAGE as usual.

\b
Examples:
  nvbox serve --socket /run/vm1.nbd vm.nvbox
  qemu-img info 'nbd+unix:///uefi/vars?socket=/run/vm1.nbd'
  nvbox serve --fork --pid-file vm1.pid --port 10809 --export uefi/vars vm.nvbox""")
@image_command(exists=True)
@click.option("--socket", "socket_path", type=click.Path(dir_okay=False), metavar="PATH",
              help="Listen on the Unix socket PATH (created mode 0600).")
@click.option("--port", type=click.IntRange(0, 65535), metavar="N",
              help="Listen on TCP port N (0: any free port; the address is printed).")
@click.option("--bind", default="127.0.0.1", show_default=True, metavar="ADDRESS",
              help="The address --port listens on.")
@click.option("--export", "exports", multiple=True, metavar="NAME",
              help="Serve only NAME (repeatable; the first is the default export).")
@click.option("--read-only", is_flag=True, help="Serve every export read-only (no lock is taken).")
@click.option("--commit-interval", type=click.FloatRange(min=0), default=1.0, show_default=True,
              metavar="SECONDS", help="Commit unflushed writes at most this long after they were made.")
@click.option("--fork", is_flag=True, help="Return once the server accepts connections.")
@click.option("--pid-file", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write the server's pid to FILE once it accepts connections.")
@click.option("--log-file", type=click.Path(dir_okay=False), metavar="FILE",
              help="With --fork: append the server's messages to FILE (otherwise only "
                   "messages before it is ready are shown).")
def serve(image, socket_path, port, bind, exports, read_only, commit_interval, fork, pid_file, log_file):
    if (socket_path is None) == (port is None):
        raise click.UsageError("give exactly one of --socket PATH and --port N")
    if shutil.which("nbdkit") is None:
        raise click.ClickException("nbdkit is not installed (apt-get install nbdkit nbdkit-plugin-python)")
    ready_dir = tempfile.mkdtemp(prefix="nvbox-serve-")
    ready_file = os.path.join(ready_dir, "ready")
    if pid_file:
        pid_file = os.path.abspath(pid_file)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pid_file)
    sock, uri = listening_socket(socket_path, port, bind)
    argv = nbdkit_command(image.path, exports=exports, read_only=read_only, commit_interval=commit_interval,
                          key_file=image.key_file, passphrase_file=image.passphrase_file, ready_file=ready_file,
                          socket_path=socket_path)
    try:
        if not fork:
            click.echo(f"nvbox serve: {uri}", err=True)
            code = _serve_in_foreground(argv, sock, ready_file, pid_file)
            if pid_file:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(pid_file)
            raise click.exceptions.Exit(code)
        pid = _start_in_background(argv, sock, ready_file, pid_file, log_file)
    except BaseException:
        if socket_path:
            # Gone with the server (nbdkit's cleanup removes it, but not after SIGKILL).
            with contextlib.suppress(OSError):
                os.unlink(socket_path)
        raise
    finally:
        shutil.rmtree(ready_dir, ignore_errors=True)
    click.echo(f"{uri} pid={pid}")
