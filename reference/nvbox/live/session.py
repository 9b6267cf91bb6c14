"""A live session: one process keeps an image open while devices write to it.

``LiveSession`` is what the FUSE mount (``nvbox mount``) and the NBD server
(``nvbox serve``) share.  It holds the writer's lock for as long as it runs,
gathers the changes its users make into one open library transaction, and turns
them into commits by the rules of a file system:

- ``commit()`` (fsync, fdatasync, an NBD flush, a rename, the close of a file
  written since the last commit) commits every pending change of the session in
  one nvbox commit and returns once it is durable;
- otherwise a committer thread commits pending changes at most
  ``commit_interval`` seconds after the first of them was made;
- ``close()`` makes a final commit and releases the lock.

All image access happens under one lock (the library handle is not thread-safe,
and FUSE calls arrive on several threads).  Only the public library API is used.

When a change fails
-------------------
The library abandons a failed transaction as a whole: after ``space.exhausted``
or ``io.error`` the handle is back at the last commit.  The session keeps a
journal of the changes made since that commit (references to the data, not
copies) and *salvages* them: it replays them in the order they were made, each
as a commit of its own, so that every change that still fits is kept and
durable.  A change that fails again is dropped, its error is logged with its
code, and the next ``fsync`` or ``release`` of that name reports it (as a file
system reports a failed write-back at fsync).  The call that met the failure
is then tried again by itself and gets its own error if it fails again.
Nothing committed is ever lost: commits are atomic (R-commit-4).  The journal
is bounded: past ``journal_limit`` bytes of pending data the session commits.

Open files
----------
``opened(name)``/``released(name)`` count a name's open handles (FUSE opens,
NBD exports).  ``snapshot("revert", ...)`` is refused with ``live.busy`` while
any handle is open: a revert would change the contents under a program that
has the file open (and the kernel's caches of it).  Other snapshot operations
never change the active state and always run.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import logging
import os
import threading
import time

from ..errors import NvboxError, error_class, raise_code
from ..image import BlobStat, Image
from ..names import MAX_NAME, check_name
from ..opening import open_image

__all__ = ["LiveSession", "SnapshotReader", "errno_of", "ERRNO_BY_CODE"]

# nvbox error code -> errno, for the file system and block device front ends.
# One table: FUSE returns these, NBD maps them on to its own few error values.
ERRNO_BY_CODE = {
    "blob.not_found": errno.ENOENT,
    "snapshot.not_found": errno.ENOENT,
    "blob.name": errno.EINVAL,            # ENAMETOOLONG when the name is too long (errno_of)
    "snapshot.name": errno.EINVAL,
    "snapshot.exists": errno.EEXIST,
    "snapshot.metadata": errno.EINVAL,
    "blob.too_large": errno.EFBIG,
    "blob.limit": errno.ENOSPC,
    "snapshot.limit": errno.ENOSPC,
    "refcount.overflow": errno.ENOSPC,
    "space.exhausted": errno.ENOSPC,
    "image.readonly": errno.EROFS,
    "image.locked": errno.EBUSY,
    "live.busy": errno.EBUSY,
    "live.refused": errno.EACCES,
    "usage.argument": errno.EINVAL,
    "io.error": errno.EIO,
    "image.poisoned": errno.EIO,
    "image.closed": errno.EIO,
    "image.busy": errno.EAGAIN,
    "image.changed": errno.EAGAIN,
}


def errno_of(exc: BaseException) -> int:
    """The errno a front end returns for ``exc``: the table above; EIO for a
    damaged image (any "corrupt" code) and for anything unexpected."""
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    if not isinstance(exc, NvboxError):
        return errno.EIO
    if exc.code == "blob.name" and exc.details.get("too_long"):
        return errno.ENAMETOOLONG
    return ERRNO_BY_CODE.get(exc.code, errno.EIO)


def check_blob_name(name: str) -> str:
    """``check_name`` with the too-long case marked, so it maps to ENAMETOOLONG."""
    if isinstance(name, str) and len(name.encode("utf-8", "surrogateescape")) > MAX_NAME:
        raise_code("blob.name", f"a name of {len(name.encode('utf-8', 'surrogateescape'))} bytes; "
                                f"at most {MAX_NAME}", too_long=True)
    return check_name(name)


class _Change:
    """One journalled change: the library method and its arguments.  A run of
    contiguous writes into one blob is one change holding its chunks."""

    __slots__ = ("op", "name", "args", "chunks", "end")

    def __init__(self, op, name, args=(), chunks=None, end=0):
        self.op, self.name, self.args, self.chunks, self.end = op, name, args, chunks, end

    def names(self):
        return (self.name, self.args[0]) if self.op == "rename" else (self.name,)


class SnapshotReader:
    """Read-only access to one snapshot's blobs (``LiveSession.view``)."""

    def __init__(self, session: "LiveSession", snapshot: str):
        self.session, self.snapshot = session, snapshot
        session.names(snapshot)         # snapshot.not_found now, not at the first read

    def names(self) -> list[str]:
        return self.session.names(self.snapshot)

    def stat(self, name) -> BlobStat:
        return self.session.stat(name, self.snapshot)

    def read(self, name, offset: int = 0, length: int | None = None) -> bytes:
        return self.session.read(name, offset, length, self.snapshot)


class LiveSession:
    """An image kept open for live use.

    Args:
        image: a path, or an ``nvbox.Image`` already open (the session then
            owns it and closes it).
        key: the ``nvbox.Key`` of an encrypted image.
        read_only: open without the lock; changes raise ``image.readonly``.
            A read-only session follows the writer: it moves to the newest
            commit every ``commit_interval`` seconds.
        commit_interval: seconds from the first uncommitted change to the
            commit that the committer thread makes (0: commit every change
            as it is made).
        log: a ``logging.Logger`` (default ``nvbox.live``).
        journal_limit: pending data, in bytes, past which a change commits.
        start: start the committer thread now; with False, call ``start()``
            later (a server that forks into the background opens the image,
            with its lock, before the fork and starts threads after it).

    Raises:
        NvboxError: ``image.locked`` when another writer holds the image, and
        what ``nvbox.open`` raises.
    """

    def __init__(self, image, *, key=None, read_only: bool = False, commit_interval: float = 1.0,
                 log: logging.Logger | None = None, journal_limit: int = 64 << 20, start: bool = True):
        self.log = log or logging.getLogger("nvbox.live")
        if isinstance(image, Image):
            self._image, self.path = image, image.path
            read_only = not image.writable
        else:
            self.path = os.path.abspath(image)     # a server may change its directory
            self._image = open_image(self.path, "r" if read_only else "rw", key=key)
        self._key = key
        self.read_only = read_only
        self.commit_interval = float(commit_interval)
        self.journal_limit = journal_limit
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._txn = False               # whether this session's library transaction is open
        self._journal: list[_Change] = []
        self._journal_bytes = 0
        self._first_pending = None      # monotonic time of the first uncommitted change
        self._dirty: set[str] = set()   # names changed since the last commit
        self._lost: dict[str, NvboxError] = {}  # name -> error of a dropped change, until reported
        self._open: dict[str, int] = {}
        self._names = None              # sorted names, cached until a change adds or removes one
        self._closing = False
        self.commits = 0                # commits this session made (for tests and benchmarks)
        self._committer = None
        if start:
            self.start()

    def start(self) -> "LiveSession":
        """Start the committer thread (once)."""
        with self._lock:
            if self._committer is None:
                self._committer = threading.Thread(target=self._run_committer, name="nvbox-committer", daemon=True)
                self._committer.start()
        return self

    # -- state ---------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        with self._lock:
            return self._image.generation

    @property
    def pending(self) -> bool:
        """Whether changes wait for a commit."""
        with self._lock:
            return self._txn

    @property
    def cluster_size(self) -> int:
        return self._image.cluster_size

    def info(self) -> dict:
        """``Image.info()`` of the last commit, plus the session's own counts."""
        with self._lock:
            d = self._image.info()
            d.update(pending=self._txn, open_files=sum(self._open.values()),
                     read_only=self.read_only, commits=self.commits,
                     device_flushes=self._image.stats["device_flushes"])
            return d

    @contextlib.contextmanager
    def batch(self):
        """Hold the session's lock across several calls, so that no other thread
        runs between them (e.g. a check that a name is free, then a rename)."""
        with self._lock:
            yield self

    # -- reading -----------------------------------------------------------------------

    def stat(self, name, snapshot: str | None = None) -> BlobStat:
        """Blob ``name`` of the active state (pending changes included), or of
        snapshot ``snapshot``."""
        with self._lock:
            return self._reader(snapshot).stat(check_blob_name(name))

    def read(self, name, offset: int = 0, length: int | None = None, snapshot: str | None = None) -> bytes:
        with self._lock:
            return self._reader(snapshot).read(check_blob_name(name), offset, length)

    def names(self, snapshot: str | None = None) -> list[str]:
        """Every blob name, sorted (of the active state: cached until a name is
        added or removed)."""
        with self._lock:
            if snapshot is not None:
                return self._reader(snapshot).names()
            if self._names is None:
                self._names = self._image.names()
            return self._names

    def _reader(self, snapshot):
        return self._image if snapshot is None else self._image.snapshots.view(snapshot)

    def exists(self, name) -> bool:
        with self._lock:
            try:
                self._image.stat(check_blob_name(name))
                return True
            except NvboxError as exc:
                if exc.code == "blob.not_found":
                    return False
                raise

    def snapshots(self) -> list[dict]:
        with self._lock:
            return [_snapshot_dict(s) for s in self._image.snapshots.list()]

    def view(self, snapshot: str) -> SnapshotReader:
        """Read-only access to snapshot ``snapshot``; ``snapshot.not_found``."""
        return SnapshotReader(self, snapshot)

    # -- changing ----------------------------------------------------------------------

    def create(self, name) -> None:
        """Create an empty blob ``name`` unless it exists (then nothing changes)."""
        with self._lock:
            if not self.exists(name):
                self._change(_Change("put", check_blob_name(name), (b"",)))

    def write(self, name, offset: int, data) -> int:
        """Write ``data`` at ``offset`` of blob ``name`` (created if missing)."""
        name = check_blob_name(name)
        if not data:
            return 0
        with self._lock:
            self._check_writable()
            if self._names is not None and not _sorted_has(self._names, name):
                self._names = None      # the write creates it
            self._apply(_Change("write", name, (offset, data)))
            last = self._journal[-1] if self._journal else None
            if last is not None and last.op == "write" and last.name == name and last.end == offset:
                # A sequential writer: one journalled run, holding the chunks themselves.
                last.chunks.append(data)
                last.end += len(data)
            else:
                self._journal.append(_Change("write", name, (offset,), [data], offset + len(data)))
            self._noted(len(data), name)
            return len(data)

    def truncate(self, name, size: int) -> None:
        with self._lock:
            self.stat(name)         # blob.not_found here: inside, it would abandon the transaction
            self._change(_Change("truncate", check_blob_name(name), (size,)))

    def zero(self, name, offset: int, length: int) -> None:
        """Make ``length`` bytes from ``offset`` read as zeros (not past the end)."""
        with self._lock:
            size = self.stat(name).size
            length = max(0, min(length, size - offset))
            if length:
                self._change(_Change("zero", check_blob_name(name), (offset, length)), weight=0)

    def delete(self, name) -> None:
        with self._lock:
            self.stat(name)
            self._change(_Change("delete", check_blob_name(name)))
            self._lost.pop(name, None)

    def rename(self, old, new) -> None:
        """Rename blob ``old`` to ``new``, replacing ``new`` if it exists.  Part of
        the pending transaction: a caller that renames several names (a
        directory) and then commits makes them all one commit."""
        with self._lock:
            old, new = check_blob_name(old), check_blob_name(new)
            self.stat(old)
            if old == new:
                return
            self._change(_Change("rename", old, (new,)))
            if old in self._lost:
                self._lost[new] = self._lost.pop(old)
            if old in self._open:       # an open file keeps its handles under its new name
                self._open[new] = self._open.get(new, 0) + self._open.pop(old)

    # -- open handles, durability ---------------------------------------------------

    def opened(self, name) -> None:
        with self._lock:
            self._open[name] = self._open.get(name, 0) + 1

    def released(self, name) -> None:
        """The last close of a handle on ``name`` (a FUSE release, the end of an
        NBD export's connection): ``flush(name)``, and one handle less."""
        with self._lock:
            n = self._open.get(name, 0) - 1
            if n > 0:
                self._open[name] = n
            else:
                self._open.pop(name, None)
            self.flush(name)

    def flush(self, name) -> None:
        """A close of a handle on ``name``: commits if ``name`` changed since the
        last commit, and raises the error of a dropped change to it (module doc)."""
        with self._lock:
            if name in self._dirty:
                self._commit_pending()
            self._report_lost(name)

    def fsync(self, name=None) -> None:
        """Commit everything pending (durable on return); then raise the error of
        a dropped change to ``name``, if there was one."""
        with self._lock:
            if name is None:
                self.commit()
            else:
                self._commit_pending()
                self._report_lost(name)

    def commit(self) -> None:
        """Commit every pending change in one nvbox commit, durable on return.
        If the commit fails, the changes are salvaged (module doc); raises the
        error of a change the salvage had to drop, if any."""
        with self._lock:
            dropped = self._commit_pending()
            if dropped:
                raise self._lost.get(dropped[0]) or error_class("io.error")("a pending change was dropped")

    def _commit_pending(self) -> list[str]:
        """commit() without raising: the names whose changes were dropped."""
        if not self._txn:
            return []
        try:
            self._end_txn()
        except NvboxError as exc:
            self._abort()
            return self._salvage()
        self._committed()
        return []

    def snapshot(self, op: str, **args):
        """A snapshot operation, after committing what is pending, as a commit of
        its own.  ``op``: ``create`` (name, metadata=None) and ``list`` return
        snapshot dicts (id, name, create_time, blob_count, metadata as hex or
        None); ``delete`` (name), ``rename`` (old, new), ``revert`` (name; refused
        with ``live.busy`` while any handle is open)."""
        with self._lock:
            if op == "list":
                return self.snapshots()
            self._check_writable()
            snaps = self._image.snapshots
            if op == "revert":
                busy = sorted(n for n, c in self._open.items() if c)
                if busy:
                    raise_code("live.busy", f"{len(busy)} open file(s) or export(s) ({', '.join(busy[:5])}); "
                                            "close them (stop the device) and revert again")
            self._commit_pending()      # a dropped change is reported to its file, not here
            if op == "create":
                meta = args.get("metadata")
                info = snaps.create(args["name"], bytes.fromhex(meta) if isinstance(meta, str) else meta)
                result = _snapshot_dict(info)
            elif op == "delete":
                result = snaps.delete(args["name"])
            elif op == "rename":
                result = snaps.rename(args["old"], args["new"])
            elif op == "revert":
                result = snaps.revert(args["name"])
                self._names = None
            else:
                raise_code("usage.argument", f"unknown snapshot operation {op!r}")
            self.commits += 1
            return result

    def close(self) -> None:
        """Final commit, stop the committer, close the image (releasing the lock).
        Raises the final commit's error after closing, if it failed."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self._wake.notify_all()
        if self._committer is not None:
            self._committer.join(timeout=30)
        with self._lock:
            try:
                self.commit()
            finally:
                self._image.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- inside ----------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._closing:
            raise_code("image.closed", "the live session is closing")
        if self.read_only:
            raise_code("image.readonly", "the live session is read-only")

    def _change(self, change: _Change, weight: int = 0) -> None:
        """Apply ``change`` inside the pending transaction and journal it."""
        self._check_writable()
        self._apply(change)
        self._journal.append(change)
        self._noted(weight, *change.names())
        if change.op in ("put", "delete", "rename"):
            self._names = None

    def _noted(self, weight: int, *names) -> None:
        self._journal_bytes += weight
        self._dirty.update(names)
        if self._first_pending is None:
            self._first_pending = time.monotonic()
            self._wake.notify_all()
        if self._journal_bytes >= self.journal_limit or self.commit_interval <= 0:
            self.commit()

    def _apply(self, change: _Change) -> None:
        """Run one change in the pending transaction (opened if needed).  A
        failure that abandoned the transaction (any failure inside a change,
        R-commit-4) salvages the journal, and the change is tried once more on
        its own before its error is raised."""
        if not self._txn:
            self._begin_txn()
        try:
            self._run(change)
        except NvboxError as exc:
            if self._image.in_transaction:
                raise       # refused before it changed anything: the transaction is intact
            self._abort()
            self._salvage()
            self._begin_txn()
            try:
                self._run(change)
            except NvboxError as again:
                self._abort()
                raise again from exc

    def _run(self, change: _Change, whole: bool = False) -> None:
        img, op, name, args = self._image, change.op, change.name, change.args
        if op == "write":
            if whole:       # a journalled run: every chunk from its start
                pos = args[0]
                for chunk in change.chunks:
                    img.write(name, pos, chunk)
                    pos += len(chunk)
            else:
                img.write(name, args[0], args[1])
        elif op == "put":
            img.put(name, *args)
        elif op == "truncate":
            img.truncate(name, *args)
        elif op == "delete":
            img.delete(name)
        elif op == "rename":
            img.rename(name, args[0], replace=True)
        elif op == "zero":
            img.zero(name, *args)
        else:
            raise AssertionError(op)

    def _begin_txn(self) -> None:
        self._image.begin()
        self._txn = True

    def _end_txn(self) -> None:
        self._txn = False
        self._image.commit()

    def _abort(self) -> None:
        """After a failure: the library is back at the last commit (a failed
        change or commit abandons the transaction); make sure none stays open,
        and reopen a handle that could not re-read that commit."""
        self._txn = False
        with contextlib.suppress(NvboxError):
            self._image.abort()
        self._names = None
        self._reopen_if_poisoned()

    def _reopen_if_poisoned(self) -> None:
        try:
            len(self._image)      # every call on a poisoned handle raises image.poisoned
        except NvboxError as exc:
            if exc.code != "image.poisoned" or self._image.path is None:
                return
            self.log.error("nvbox: the image handle cannot re-read the last commit (%s); reopening", exc.code)
            self._image.close()
            self._image = open_image(self.path, "rw", key=self._key)

    def _salvage(self) -> list[str]:
        """Replay the journal after an abandoned transaction, one commit per
        change; a change that fails again is dropped and remembered for its
        names.  Returns the names of dropped changes."""
        journal, self._journal = self._journal, []
        self._journal_bytes, self._first_pending = 0, None
        dropped = []
        for change in journal:
            try:
                with self._image.transaction():
                    self._run(change, whole=True)
                self.commits += 1
            except NvboxError as exc:
                self._reopen_if_poisoned()
                dropped.extend(change.names())
                for name in change.names():
                    self._lost.setdefault(name, exc)
                self.log.error("nvbox: a pending %s of %r was dropped: %s", change.op, change.name, exc)
        self._dirty.clear()
        self._names = None
        if journal:
            self.log.warning("nvbox: salvaged %d pending change(s) one commit each; %d dropped",
                             len(journal) - len(dropped), len(dropped))
        return dropped

    def _committed(self) -> None:
        self.commits += 1
        self._journal, self._journal_bytes = [], 0
        self._first_pending = None
        self._dirty.clear()

    def _report_lost(self, name) -> None:
        exc = self._lost.pop(name, None)
        if exc is not None:
            raise exc

    def _run_committer(self) -> None:
        """Commit pending changes ``commit_interval`` after the first of them; a
        read-only session moves to the newest commit as often."""
        with self._lock:
            while not self._closing:
                if self.read_only:
                    self._wake.wait(self.commit_interval or 1.0)
                    if not self._closing:
                        with contextlib.suppress(NvboxError):
                            if self._image.refresh():
                                self._names = None
                    continue
                if self._first_pending is None:
                    self._wake.wait()
                    continue
                due = self._first_pending + self.commit_interval - time.monotonic()
                if due > 0:
                    self._wake.wait(due)
                    continue
                try:
                    self.commit()
                except NvboxError as exc:
                    self.log.error("nvbox: the interval commit failed: %s", exc)


def _sorted_has(names: list[str], name: str) -> bool:
    i = bisect.bisect_left(names, name)
    return i < len(names) and names[i] == name


def _snapshot_dict(info) -> dict:
    return {"id": info.id, "name": info.name, "create_time": info.create_time, "blob_count": info.blob_count,
            "metadata": info.metadata.hex() if info.metadata is not None else None}
