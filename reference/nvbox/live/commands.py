"""``nvbox mount`` and ``nvbox umount``.

``mount`` opens the image (taking the writer's lock, unlocking an encrypted
image) in the calling process, so that every error about the image is reported
there with its code; then, unless ``--foreground``, it forks: the child mounts
and serves, the parent returns once the kernel has answered the mount (libfuse
calls ``init``), as sshfs does.  The session's threads and the control socket
start in ``init``, after the fork.

``umount`` asks the mount process for its pid over the control socket (a
writable mount has one), runs ``fusermount3 -u`` and waits until that process
has exited, so that the final commit is durable when it returns.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import subprocess
import sys
import time

import click

from ..errors import NvboxError, raise_code
from ..cmdline import CONTEXT, image_command
from . import control

__all__ = ["mount", "umount", "mounted_image"]

_READY_TIMEOUT = 60.0       # seconds the parent waits for the child's mount
_EXIT_TIMEOUT = 120.0       # seconds umount waits for the mount process's final commit


def _log_to(stream_or_path) -> logging.Logger:
    log = logging.getLogger("nvbox.live")
    for h in list(log.handlers):
        log.removeHandler(h)
    handler = (logging.FileHandler(stream_or_path) if isinstance(stream_or_path, str)
               else logging.StreamHandler(stream_or_path))
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return log


def default_log_path(image_path) -> str:
    """Where a background mount logs: beside its control socket."""
    return control.socket_path(image_path)[:-len(".sock")] + ".log"


@click.command("mount", context_settings=CONTEXT, help="""\
Mount IMAGE at MOUNTPOINT (a directory): each blob is a file, '/' in a name a
directory level.  Returns once the mount is ready; unmount with 'nvbox umount
MOUNTPOINT' or 'fusermount3 -u MOUNTPOINT' (SIGTERM and SIGINT do the same),
which commit what is pending first.

\b
Durability: fsync and fdatasync commit every pending change in one commit and
return once it is durable; so do a rename and the close of a file written since
the last commit.  Other changes are committed at most --commit-interval seconds
after they were made.  While mounted, 'nvbox snapshot create/delete/rename
IMAGE ...' reach the mount process; 'snapshot revert' is refused with live.busy
while any file is open.  MOUNTPOINT/.snapshots/NAME/ shows each snapshot
read-only.

\b
Examples:
  nvbox mount vm.nvbox /run/vm/state
  swtpm socket --tpm2 --tpmstate dir=/run/vm/state/tpm ...
  nvbox snapshot create vm.nvbox before-upgrade
  nvbox umount /run/vm/state""")
@image_command(exists=True)
@click.argument("mountpoint", type=click.Path(file_okay=False, exists=True))
@click.option("-f", "--foreground", is_flag=True, help="Stay in the foreground, logging to stderr.")
@click.option("--read-only", is_flag=True, help="Mount read-only (without taking the writer's lock).")
@click.option("--snapshot", metavar="NAME", help="Mount snapshot NAME, read-only.")
@click.option("--commit-interval", type=click.FloatRange(min=0), default=1.0, show_default=True,
              metavar="SECONDS", help="Commit pending changes at most this long after they were made.")
@click.option("--file-mode", default="0600", show_default=True, metavar="OCTAL",
              help="Permission bits of the files (directories get the same plus x where r is set).")
@click.option("--allow-other", is_flag=True, help="Let other users reach the mount (needs user_allow_other "
                                                  "in /etc/fuse.conf unless run as root).")
@click.option("--log-file", type=click.Path(dir_okay=False), metavar="FILE",
              help="Log here (default: stderr in the foreground, else next to the control socket).")
def mount(image, mountpoint, foreground, read_only, snapshot, commit_interval, file_mode, allow_other, log_file):
    try:
        mode = int(file_mode, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise_code("usage.argument", f"--file-mode {file_mode!r} is not octal permission bits")
    try:
        from .fuse import NvboxFS, run_mount
        from .session import LiveSession
    except (ImportError, OSError) as exc:
        raise_code("usage.argument", f"the FUSE mount needs mfusepy and libfuse 3 "
                                     f"(pip install 'nvbox[fuse]'; apt install fuse3): {exc}")
    mountpoint = os.path.abspath(mountpoint)
    log_target = os.path.abspath(log_file) if log_file else (sys.stderr if foreground else default_log_path(image.path))
    log = _log_to(log_target)
    read_only = read_only or snapshot is not None
    session = LiveSession(image.path, key=image.key(), read_only=read_only, commit_interval=commit_interval,
                          log=log, start=False)
    dir_mode = mode | ((mode & 0o444) >> 2)
    server = None if read_only else control.ControlServer(
        session, status={"mountpoint": os.path.realpath(mountpoint)}, log=log)
    try:
        fs = NvboxFS(session, snapshot=snapshot, file_mode=mode, dir_mode=dir_mode, log=log)
    except BaseException:
        session.close()
        raise
    fsname = os.path.realpath(image.path)
    if foreground:
        def ready():
            session.start()
            if server is not None:
                server.start()
            log.info("nvbox: %s mounted at %s%s", fsname, mountpoint, " read-only" if read_only else "")
        fs.on_ready = ready
        _serve(fs, session, server, mountpoint, fsname, allow_other, log)
        return
    _fork_and_serve(fs, session, server, mountpoint, fsname, allow_other, log, log_target)


def _serve(fs, session, server, mountpoint, fsname, allow_other, log) -> None:
    from .fuse import run_mount
    try:
        run_mount(fs, mountpoint, fsname=fsname, allow_other=allow_other)
    finally:
        if server is not None:
            server.close()
        try:
            session.close()         # idempotent: destroy() made the final commit already
        except NvboxError as exc:
            log.error("nvbox: the final commit failed: %s", exc)
            raise
        log.info("nvbox: %s unmounted from %s", fsname, mountpoint)


def _fork_and_serve(fs, session, server, mountpoint, fsname, allow_other, log, log_target) -> None:
    out = os.open(log_target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    log_start = os.fstat(out).st_size
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                    # the mount process
        os.close(r)
        os.setsid()
        os.chdir("/")               # keep no directory busy (paths are absolute by now)
        # Let go of the caller's terminal or pipes (it may wait for their end);
        # what libfuse prints goes to the log, which the parent shows on failure.
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(null)
        os.close(out)
        code = 1

        def ready():
            session.start()
            if server is not None:
                server.start()
            log.info("nvbox: %s mounted at %s (pid %d)", fsname, mountpoint, os.getpid())
            os.write(w, b"ready\n")
        fs.on_ready = ready
        try:
            _serve(fs, session, server, mountpoint, fsname, allow_other, log)
            code = 0
        except BaseException as exc:    # reported to the parent if it still listens
            with contextlib.suppress(OSError):
                os.write(w, f"failed: {exc}\n".encode())
        finally:
            os._exit(code)
    os.close(w)
    os.close(out)
    # The parent keeps its copy of the image's descriptor until it exits: the
    # lock belongs to the open file, which the child holds too.
    got = b""
    deadline = time.monotonic() + _READY_TIMEOUT
    while not got.endswith(b"\n") and time.monotonic() < deadline:
        ready, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(r, 4096)
        if not chunk:
            break
        got += chunk
    os.close(r)
    if got == b"ready\n":
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    detail = got.decode(errors="replace").strip() or "the mount process ended"
    with open(log_target, "rb") as f:
        f.seek(log_start)
        said = f.read(4096).decode(errors="replace").strip()
    raise_code("io.error", f"mounting {fsname} at {mountpoint} failed: {detail}" + (f"; {said}" if said else ""))


# -- umount -----------------------------------------------------------------------------------

def mounted_image(mountpoint) -> str | None:
    """The image mounted at ``mountpoint`` by nvbox (its fsname), from
    /proc/self/mountinfo; None if nvbox has nothing mounted there."""
    target = os.path.realpath(mountpoint)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields, _, rest = line.partition(" - ")
        parts, tail = fields.split(" "), rest.split(" ")
        if len(parts) >= 5 and len(tail) >= 2 and tail[0] == "fuse.nvbox" and _unescape(parts[4]) == target:
            return _unescape(tail[1])
    return None


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code, ch in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, ch)
    return field


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


@click.command("umount", context_settings=CONTEXT, help="""\
Unmount an nvbox mount after its final commit: runs 'fusermount3 -u
MOUNTPOINT' and waits until the mount process has committed and exited.

\b
Example:
  nvbox umount /run/vm/state""")
@click.argument("mountpoint", type=click.Path(file_okay=False, exists=True))
@click.option("--timeout", type=click.FloatRange(min=0), default=_EXIT_TIMEOUT, show_default=True,
              metavar="SECONDS", help="How long to wait for the mount process to exit.")
def umount(mountpoint, timeout):
    from ..cmdline import guard

    @guard()
    def run():
        image = mounted_image(mountpoint)
        if image is None:
            raise_code("usage.argument", f"{mountpoint} is not an nvbox mount")
        pid = None
        with contextlib.suppress(NvboxError):   # a read-only mount has no socket (and nothing to commit)
            status = control.request(image, "status")
            if status.get("mountpoint") == os.path.realpath(mountpoint):
                pid = status["pid"]
        tool = shutil.which("fusermount3") or shutil.which("fusermount")
        if tool is None:
            raise_code("usage.argument", "fusermount3 is not installed (apt install fuse3)")
        done = subprocess.run([tool, "-u", mountpoint], capture_output=True, text=True, timeout=60)
        if done.returncode:
            raise_code("io.error", f"{tool} -u {mountpoint}: {done.stderr.strip()}")
        deadline = time.monotonic() + timeout
        while pid is not None and _alive(pid):
            if time.monotonic() > deadline:
                raise_code("io.error", f"the mount process {pid} has not exited after {timeout:g} s")
            time.sleep(0.02)
    run()

