"""nbdkit plugin: the blobs of an nvbox image as NBD exports.

Run by ``nvbox serve`` (``serve.py``), which builds the nbdkit command line:

    nbdkit -f python nbd_plugin.py image=PATH sitedir=DIR... [export=NAME...]
           [read-only=1] [commit-interval=SECONDS] [key-file=F | passphrase-file=F]
           [ready-file=F] [socket=PATH] [stop-fd=N]

with the listening socket handed over by socket activation.  ``ready-file``
is written once the server accepts connections; ``socket`` is removed when it
stops; ``stop-fd`` is the plugin's end of the supervisor's stop channel (see
``serve.py``: nbdkit alone waits for connected clients before it stops).

nbdkit's embedded interpreter loads this file as a script (the callbacks must
be its top-level functions), and it does not see the virtual environment that
``nvbox serve`` ran in: each ``sitedir`` is added with ``site.addsitedir`` (so
the .pth files of an editable install work) before nvbox is imported.  Keys
reach the plugin as file names or through NVBOX_PASSPHRASE in the
environment, never as values on the command line.

The session is opened in ``get_ready`` (so a locked image or a wrong key ends
nbdkit before it serves) and its threads, the committer and the control
socket, start in ``after_fork``: nbdkit calls that in the process that serves
(after it forks, if it does), just before it accepts connections.  What the
exports are and how requests become commits: ``nbd_exports.py``.
"""

import builtins
import contextlib
import functools
import logging
import os
import site
import socket
import sys
import threading

import nbdkit

API_VERSION = 2

_params = {"sitedir": [], "export": []}
# Filled by get_ready: "session" (LiveSession), "exports" (nbd_exports.Exports),
# "nbd_errno" and "error_types" (what _nbd_errors maps; nvbox is imported late);
# by after_fork: "control" (the control socket's server).
_state = {"error_types": ()}
_REPEATABLE = ("sitedir", "export")
_KNOWN = ("image", "sitedir", "export", "read-only", "commit-interval", "key-file", "passphrase-file",
          "ready-file", "socket", "stop-fd")
_closing = threading.Lock()     # the session is closed once, by cleanup or by the stop channel


def config(key, value):
    if key not in _KNOWN:
        raise ValueError(f"unknown parameter {key!r} (known: {', '.join(_KNOWN)})")
    if key in _REPEATABLE:
        _params[key].append(value)
    else:
        _params[key] = value


def config_complete():
    if "image" not in _params:
        raise ValueError("the image=PATH parameter is missing")
    for directory in _params["sitedir"]:
        site.addsitedir(directory)


def thread_model():
    return nbdkit.THREAD_MODEL_SERIALIZE_ALL_REQUESTS


def get_ready():
    """Open the image (lock, key) before nbdkit serves; errors end nbdkit here."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="nvbox serve: %(message)s")
    from nvbox.cmdline import load_key
    from nvbox.errors import NvboxError
    from nvbox.live.nbd_exports import Exports, nbd_errno
    from nvbox.live.session import LiveSession
    read_only = _params.get("read-only") == "1"
    try:
        key = load_key(_params.get("key-file"), _params.get("passphrase-file"))
        session = LiveSession(_params["image"], key=key, read_only=read_only, start=False,
                              commit_interval=float(_params.get("commit-interval", 1.0)))
    except (NvboxError, OSError) as exc:
        # One line, as every nvbox command reports errors, and a failed exit
        # (nbdkit would print a traceback); nothing is open yet to clean up.
        code = getattr(exc, "code", "io.error")
        message = getattr(exc, "message", None) or str(exc)
        print(f"nvbox: error: {code}: {message}", file=sys.stderr, flush=True)
        _remove_socket()
        os._exit(1)
    _state.update(session=session, exports=Exports(session, _params["export"], read_only), nbd_errno=nbd_errno,
                  error_types=(NvboxError, OSError))


def after_fork():
    """Threads start in the process that serves: the committer, and the control
    socket through which ``nvbox snapshot`` reaches the image (a read-only
    server holds no lock, so those commands open the image themselves)."""
    from nvbox.live.control import ControlServer
    session = _state["session"]
    session.start()
    if not session.read_only:
        _state["control"] = ControlServer(session).start()
    if "stop-fd" in _params:
        threading.Thread(target=_stop_on_request, args=(int(_params["stop-fd"]),), name="nvbox-stop",
                         daemon=True).start()
    ready = _params.get("ready-file")
    if ready:
        # Written last: whoever waits for it (nvbox serve) may connect now.
        tmp = f"{ready}.tmp{os.getpid()}"
        with builtins.open(tmp, "w") as f:   # open() here is the callback below
            f.write(f"{os.getpid()}\n")
        os.replace(tmp, ready)


def _stop_on_request(fd: int) -> None:
    """``nvbox serve`` asks (or its end closes: it died): close the session
    while clients are still connected, answer, and let nbdkit shut down."""
    channel = socket.socket(fileno=fd)
    with contextlib.suppress(OSError):
        channel.recv(16)
    _close_session()
    with contextlib.suppress(OSError):
        channel.sendall(b"closed")
    nbdkit.shutdown()


def _close_session() -> None:
    """The final commit, then the lock goes.  Requests after it fail (EIO)."""
    with _closing:
        control = _state.pop("control", None)
        if control is not None:
            control.close()
        session = _state.get("session")
        if session is not None:
            try:
                session.close()
            except Exception as exc:  # noqa: BLE001 - reported; there is no one left to raise to
                print(f"nvbox: error: the final commit failed: {exc}", file=sys.stderr, flush=True)


def cleanup():
    """nbdkit stops (its clients have gone)."""
    _close_session()
    _remove_socket()


def _remove_socket():
    """The Unix socket ``nvbox serve`` made for this server goes with it."""
    if _params.get("socket"):
        try:
            os.unlink(_params["socket"])
        except OSError:
            pass


def _nbd_errors(callback):
    """An nvbox error leaves ``callback`` with the NBD error it maps to
    (nbdkit answers EIO for any other exception)."""
    @functools.wraps(callback)
    def run(*args):
        try:
            return callback(*args)
        except _state["error_types"] as exc:
            nbdkit.set_error(_state["nbd_errno"](exc))
            raise
    return run


@_nbd_errors
def list_exports(readonly, is_tls):
    return _state["exports"].list()


@_nbd_errors
def default_export(readonly, is_tls):
    return _state["exports"].default()


@_nbd_errors
def open(readonly):  # noqa: A001 - nbdkit's callback name
    return _state["exports"].open(nbdkit.export_name())


def close(h):
    try:
        h.close()
    except Exception as exc:  # noqa: BLE001 - a disconnect cannot fail; the session logged it
        print(f"nvbox: error: closing export {h.name!r}: {exc}", file=sys.stderr, flush=True)


@_nbd_errors
def export_description(h):
    return _state["exports"].description(h.blob, h.snapshot)


def get_size(h):
    return h.size


def block_size(h):
    # Byte-granular; clusters are what the image writes; 32 MiB as qemu-img convert writes.
    return (1, _state["session"].cluster_size, 32 << 20)


def is_rotational(h):
    return False


def can_write(h):
    return h.writable


def can_flush(h):
    return True


def can_trim(h):
    return h.writable


def can_zero(h):
    return h.writable


def can_fast_zero(h):
    return False


def can_fua(h):
    return nbdkit.FUA_NATIVE


def can_multi_conn(h):
    # Every connection shares the session's one state, and a flush on any of
    # them commits all of it (nbd_exports.py, the thread model).
    return True


def can_cache(h):
    return nbdkit.CACHE_NONE


@_nbd_errors
def pread(h, buf, offset, flags):
    buf[:] = h.read(offset, len(buf))


@_nbd_errors
def pwrite(h, buf, offset, flags):
    h.write(offset, buf, fua=bool(flags & nbdkit.FLAG_FUA))


@_nbd_errors
def zero(h, count, offset, flags):
    h.zero(offset, count, fua=bool(flags & nbdkit.FLAG_FUA))


def trim(h, count, offset, flags):
    # A trimmed range reads back as zeros: the same holes as zero.
    zero(h, count, offset, flags)


@_nbd_errors
def flush(h, flags):
    h.flush()
