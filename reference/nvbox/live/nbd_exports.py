"""The blobs of a live image as NBD exports: what ``nvbox serve`` serves.

nbdkit speaks the protocol; its Python plugin (``nbd_plugin.py``) calls into
this module, which knows nothing of nbdkit.  Everything goes through one
``LiveSession`` (``session.py``), the same as the FUSE mount's.

Export names
------------
- a live blob is served under its own name, read-write unless the server
  is read-only; its size is the blob's size when the client connected, and
  the export never grows (nbdkit refuses writes past the end with ENOSPC);
- a blob of a snapshot is served read-only as ``BLOB@SNAPSHOT``.  A name is
  first looked up as a live blob (a live blob called ``a@b`` wins); otherwise
  it is split at an ``@`` such that the right-hand side names a snapshot,
  trying the last ``@`` first;
- the default export (the empty name, which clients use when given none) is
  the first ``--export`` given, or the only blob of a one-blob image;
- with ``--export NAME`` (repeatable) only those names are listed and served.

Requests and commits (the thread model)
---------------------------------------
nbdkit runs the plugin with ``SERIALIZE_ALL_REQUESTS``: one request of any
connection at a time, and the Python GIL would allow no more.  That alone does
not order commits, since the session's committer thread (``--commit-interval``)
and its control socket (snapshot commands) run beside the requests.  What does
is the session's lock: each request is one session call that holds it from
start to end, and a commit takes it too.  So a commit holds only whole
requests, in the order they completed; a half-applied write is never part of
any state.  All connections share the session's one open transaction, which
is what NBD's multi-conn promises: a read on any connection sees every write
completed on any connection, and FLUSH (or a FUA write) on any connection
commits every write completed before it, in one nvbox commit, and answers
once that commit is durable.  Writes that no client has flushed are committed
at most ``commit_interval`` seconds after they were made, when the last client
of an export disconnects, and when the server stops.
"""

from __future__ import annotations

import errno

from ..errors import NvboxError, raise_code
from .session import LiveSession, errno_of

__all__ = ["Export", "Exports", "nbd_errno", "SNAPSHOT_SEPARATOR"]

SNAPSHOT_SEPARATOR = "@"

# The error values the NBD protocol defines (others reach the client as EINVAL,
# which would misreport a damaged or unreadable image).
_NBD_ERRNOS = {errno.EPERM, errno.EIO, errno.ENOMEM, errno.EINVAL, errno.ENOSPC, errno.EOVERFLOW,
               errno.ENOTSUP, errno.ESHUTDOWN}
_TO_NBD = {errno.EROFS: errno.EPERM, errno.EFBIG: errno.ENOSPC}


def nbd_errno(exc: BaseException) -> int:
    """The NBD error for ``exc``: ENOSPC for a full image, EPERM for a
    read-only one, EIO for a damaged cluster or an I/O failure."""
    err = errno_of(exc)
    err = _TO_NBD.get(err, err)
    return err if err in _NBD_ERRNOS else errno.EIO


class Export:
    """One open export: a live blob, or a blob of a snapshot (read-only)."""

    def __init__(self, session: LiveSession, blob: str, snapshot: str | None, writable: bool):
        self.session, self.blob, self.snapshot = session, blob, snapshot
        self.writable = writable and snapshot is None
        self._source = session if snapshot is None else session.view(snapshot)
        self.size = self._source.stat(blob).size
        self._closed = False
        if self.writable:
            session.opened(blob)

    @property
    def name(self) -> str:
        return self.blob if self.snapshot is None else f"{self.blob}{SNAPSHOT_SEPARATOR}{self.snapshot}"

    def read(self, offset: int, length: int) -> bytes:
        data = self._source.read(self.blob, offset, length)
        if len(data) != length:
            # The blob shrank under the export (it cannot through this server).
            raise_code("io.error", f"{self.name}: {len(data)} of {length} bytes at offset {offset}")
        return data

    def write(self, offset: int, data, fua: bool = False) -> None:
        self._check_range(offset, len(data))
        # A copy: nbdkit reuses its buffer, and the session's journal keeps what it is given.
        self.session.write(self.blob, offset, bytes(data))
        if fua:
            self.session.commit()

    def zero(self, offset: int, length: int, fua: bool = False) -> None:
        """Zero (and trim): holes where the library can punch them."""
        self._check_range(offset, length)
        self.session.zero(self.blob, offset, length)
        if fua:
            self.session.commit()

    def flush(self) -> None:
        self.session.commit()

    def close(self) -> None:
        """The client disconnected: the session commits this blob's changes."""
        if not self._closed and self.writable:
            self._closed = True
            self.session.released(self.blob)

    def _check_range(self, offset: int, length: int) -> None:
        if not self.writable:
            raise_code("image.readonly", f"export {self.name!r} is read-only")
        if offset < 0 or offset + length > self.size:
            # nbdkit checks this before calling us; kept so the export can never grow.
            raise_code("space.exhausted", f"{self.name}: {length} bytes at {offset} pass the end ({self.size})")


class Exports:
    """The exports of a session: listing, name resolution, opening."""

    def __init__(self, session: LiveSession, only=(), read_only: bool = False):
        self.session = session
        self.only = list(dict.fromkeys(only))
        self.read_only = read_only or session.read_only

    def list(self) -> list[tuple[str, str]]:
        """(name, description) of every export, live blobs first."""
        if self.only:
            out = []
            for name in self.only:
                found = self._find(name)
                if found is not None:
                    out.append((name, self.description(*found)))
            return out
        out = [(name, self.description(name, None)) for name in self.session.names()]
        for snap in self.session.snapshots():
            view = self.session.view(snap["name"])
            out += [(f"{name}{SNAPSHOT_SEPARATOR}{snap['name']}", self.description(name, snap["name"], view))
                    for name in view.names()]
        return out

    def default(self) -> str:
        """The export the empty name means (see the module docstring)."""
        if self.only:
            return self.only[0]
        names = self.session.names()
        if len(names) == 1:
            return names[0]
        raise_code("blob.not_found", f"no default export: the image holds {len(names)} blobs; "
                                     "name one (nbdinfo --list shows them)")

    def open(self, name: str) -> Export:
        """The export ``name`` (``blob.not_found`` if it does not exist or is not served)."""
        if name == "":
            name = self.default()
        if self.only and name not in self.only:
            raise_code("blob.not_found", f"export {name!r} is not served (--export)")
        found = self._find(name)
        if found is None:
            raise_code("blob.not_found", f"no export named {name!r}")
        blob, snapshot = found
        return Export(self.session, blob, snapshot, writable=not self.read_only)

    def _find(self, name: str):
        """(blob, snapshot or None) that ``name`` serves, or None."""
        try:
            if self.session.exists(name):
                return name, None
        except NvboxError as exc:
            if exc.code != "blob.name":
                raise
        snapshots = {s["name"] for s in self.session.snapshots()}
        cut = name.rfind(SNAPSHOT_SEPARATOR)
        while cut > 0:
            blob, snap = name[:cut], name[cut + 1:]
            if snap in snapshots and blob in self.session.view(snap).names():
                return blob, snap
            cut = name.rfind(SNAPSHOT_SEPARATOR, 0, cut)
        return None

    def description(self, blob: str, snapshot: str | None = None, view=None) -> str:
        """What ``nbdinfo --list`` shows for an export."""
        if snapshot is None:
            size = self.session.stat(blob).size
            mode = "read-only" if self.read_only else "read-write"
            return f"blob {blob!r}, {size} bytes, {mode}"
        size = (view or self.session.view(snapshot)).stat(blob).size
        return f"blob {blob!r} of snapshot {snapshot!r}, {size} bytes, read-only"
