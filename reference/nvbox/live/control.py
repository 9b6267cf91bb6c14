"""The control socket of a live session: how ``nvbox snapshot`` reaches a
mounted or served image.

A writable live session holds the image's lock, so another process cannot
open the image for writing; it asks the session instead, over a Unix socket.

Where: ``<runtime dir>/nvbox/<hash>.sock``, where ``<hash>`` is the first 32
hex digits of the SHA-256 of the image's real path (``os.path.realpath``: a
symbolic link or a relative path reaches the same socket), and the runtime dir
is ``$XDG_RUNTIME_DIR`` if set, else ``/run/user/<uid>`` if it exists, else a
per-user ``/tmp/nvbox-<uid>`` directory.  The ``nvbox`` directory is created
with mode 0700 and refused if another user owns it or others can enter it; the
socket is mode 0600.  Each connection's peer is checked with ``SO_PEERCRED``:
a process of another user (root included) gets ``live.refused``.

Protocol: JSON lines, one request and one reply per line, UTF-8.
Request ``{"op": OP, "args": {...}}``; reply ``{"ok": true, "result": ...}``
or ``{"ok": false, "error": {"code": CODE, "message": TEXT}}`` with CODE an
nvbox error code.  Ops:

- ``status``: ``{"pid", "path", "generation", "pending", "open_files", "read_only",
  "commits", "device_flushes"}`` (the last two: this session's) and
  what the front end adds (``nvbox mount``: ``"mountpoint"``);
- ``commit``: commit what is pending (durable on reply);
- ``snapshot.create`` (name, metadata as hex or null), ``snapshot.list``,
  ``snapshot.delete`` (name), ``snapshot.rename`` (old, new),
  ``snapshot.revert`` (name): ``LiveSession.snapshot``'s results.

A stale socket of a session that died (``kill -9``) is replaced by the next
session, which holds the lock and so is the only one that can serve the image.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import stat
import struct
import threading

from ..errors import NvboxError, error_class, raise_code

__all__ = ["ControlServer", "request", "request_at", "runtime_dir", "snapshot_op", "socket_path"]

_MAX_LINE = 1 << 16                 # a request is small; a longer line is refused
_CLIENT_TIMEOUT = 30.0              # seconds a client waits for a reply (a commit may flush a lot)
_PEER_TIMEOUT = 10.0                # seconds the server waits for a connected client's request
_UCRED = struct.Struct("3i")        # struct ucred: pid, uid, gid


def runtime_dir() -> str:
    """The per-user directory that holds control sockets (created 0700)."""
    uid = os.getuid()
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        d = os.path.join(base, "nvbox")
    elif os.path.isdir(f"/run/user/{uid}"):
        d = f"/run/user/{uid}/nvbox"
    else:
        d = f"/tmp/nvbox-{uid}"
    with contextlib.suppress(FileExistsError):
        os.mkdir(d, 0o700)
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
        raise_code("io.error", f"{d} is not a private directory of uid {uid} (mode {st.st_mode & 0o777:o}, "
                               f"owner {st.st_uid}); remove it")
    return d


def socket_path(image_path) -> str:
    """The control socket of the live session of ``image_path``."""
    real = os.path.realpath(os.fspath(image_path))
    digest = hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return os.path.join(runtime_dir(), digest + ".sock")


def request(image_path, op: str, **args):
    """Send one request to the live session of ``image_path``; its result.

    Raises:
        NvboxError: the server's error, by its code; ``image.locked`` when no
        live session answers (the lock's holder is another kind of writer).
    """
    return request_at(socket_path(image_path), op, args, image_path=image_path)


def request_at(path: str, op: str, args: dict, *, image_path=None):
    """``request`` to the control socket at ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(_CLIENT_TIMEOUT)
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise_code("image.locked", f"{image_path or path} is open for writing by a process without "
                                       "a control socket")
        except PermissionError:
            raise_code("live.refused", f"{path}: the live session belongs to another user")
        try:
            s.sendall(json.dumps({"op": op, "args": args}).encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            pass        # a refusing server replies and closes before reading: its reply is there
        reply = _read_line(s.makefile("rb"))
    if reply is None:
        raise_code("io.error", "the live session closed the control connection without a reply")
    try:
        msg = json.loads(reply)
        if msg.get("ok"):
            return msg.get("result")
        code, message = msg["error"]["code"], msg["error"]["message"]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise_code("io.error", f"the live session sent a malformed reply: {reply[:200]!r}")
    try:
        cls = error_class(code)
    except KeyError:
        cls = error_class("io.error")
        message = f"{code}: {message}"
    raise cls(message)


def _read_line(f) -> bytes | None:
    line = f.readline(_MAX_LINE + 1)
    if not line or not line.endswith(b"\n"):
        return None
    return line


class ControlServer:
    """Serves ``session`` on its image's control socket, in a thread.

    ``start()`` binds (replacing a stale socket) and starts the thread;
    ``close()`` stops it and removes the socket.  Requests are served one at a
    time, each under the session's own lock.
    """

    def __init__(self, session, *, status: dict | None = None, log: logging.Logger | None = None):
        self.session = session
        self.status = dict(status or {})   # added to the status reply (the front end's own facts)
        self.log = log or session.log
        self.path = socket_path(session.path)
        self._sock = None
        self._inode = None              # the socket file this server bound
        self._thread = None
        self._stopping = False

    def start(self) -> "ControlServer":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # This session holds the image's lock, so a socket already there is a
        # dead session's (a second session cannot get this far).
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        s.bind(self.path)
        os.chmod(self.path, 0o600)
        self._inode = os.stat(self.path).st_ino
        s.listen(8)
        self._sock = s
        self._thread = threading.Thread(target=self._serve, name="nvbox-control", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stopping = True
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with contextlib.suppress(FileNotFoundError):
            # Only our own socket: a later session may have bound the name.
            if self._inode is not None and os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def _serve(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return      # closed
            with conn:
                try:
                    self._handle(conn)
                except OSError as exc:
                    self.log.warning("nvbox: control connection failed: %s", exc)

    def _handle(self, conn: socket.socket) -> None:
        pid, uid, gid = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        if uid != os.getuid():
            self.log.warning("nvbox: control request from uid %d (pid %d) refused", uid, pid)
            _reply(conn, error={"code": "live.refused",
                                "message": f"this live session serves uid {os.getuid()} only"})
            return
        conn.settimeout(_PEER_TIMEOUT)
        line = _read_line(conn.makefile("rb"))
        if line is None:
            _reply(conn, error={"code": "usage.argument", "message": "a request is one JSON line"})
            return
        try:
            msg = json.loads(line)
            op, args = msg["op"], msg.get("args") or {}
            if not isinstance(op, str) or not isinstance(args, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            _reply(conn, error={"code": "usage.argument", "message": "not a request: {\"op\": ..., \"args\": {...}}"})
            return
        try:
            result = self._dispatch(op, args)
        except NvboxError as exc:
            _reply(conn, error=exc.to_json())
        except (TypeError, KeyError) as exc:
            _reply(conn, error={"code": "usage.argument", "message": f"bad arguments for {op}: {exc}"})
        else:
            _reply(conn, result=result)

    def _dispatch(self, op: str, args: dict):
        session = self.session
        if op == "status":
            info = session.info()
            return dict(self.status, pid=os.getpid(), path=session.path, generation=info["generation"],
                        pending=info["pending"], open_files=info["open_files"], read_only=session.read_only,
                        commits=info["commits"], device_flushes=info["device_flushes"])
        if op == "commit":
            session.commit()
            return None
        if op.startswith("snapshot."):
            return session.snapshot(op.split(".", 1)[1], **args)
        raise_code("usage.argument", f"unknown control operation {op!r}")


def _reply(conn: socket.socket, result=None, error=None) -> None:
    msg = {"ok": False, "error": error} if error is not None else {"ok": True, "result": result}
    conn.sendall(json.dumps(msg).encode() + b"\n")


def snapshot_op(open_writer, image_path, op: str, **args):
    """A snapshot operation (create, delete, rename, revert) from a command:
    on the image itself, opened by ``open_writer()``; or, when a live session
    holds the image's lock, by that session over its control socket (which
    commits what is pending first and makes the operation its next commit)."""
    try:
        img = open_writer()
    except NvboxError as exc:
        if exc.code != "image.locked":
            raise
        if isinstance(args.get("metadata"), (bytes, bytearray)):
            args["metadata"] = bytes(args["metadata"]).hex()
        return request(image_path, "snapshot." + op, **args)
    with img:
        return getattr(img.snapshots, op)(**args)
