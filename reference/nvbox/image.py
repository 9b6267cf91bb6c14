"""The nvbox image: create, open, blobs, transactions, snapshots.

``Image`` wires the layers together: the header and commit slots (``_format``),
the cluster store (``_store``) and the trees (``_tree``).  Every mutating call
is one atomic, durable commit, unless it runs inside ``with
image.transaction():``, whose changes commit together when the block ends, or
between ``image.begin()`` and ``image.commit()`` (a server's transaction, open
across many calls).  What a commit will carry is the handle's ``Transaction``
(``transaction.py``).  A failure abandons the transaction and returns the
handle to the last durable commit (R-commit-4).
"""

from __future__ import annotations

import contextlib
import random
import time

from . import _content as content
from . import _format as fmt
from . import crypto
from ._store import ClusterStore
from ._tree import Blob, Trees
from .blobio import BlobIO
from .blockdev import BlockDevice, CountingDevice
from .errors import NvboxError, error_class, raise_code
from .names import check_path_safe
from .probe import describe
from .records import BlobStat
from .snapshots import Snapshots
from .transaction import DirState, Transaction

__all__ = ["Image"]

# A read-only handle's retries when the writer's commits reuse or cut off clusters
# it needs (R-lock-2): the first retry is immediate, later ones pause a little
# longer each time (up to _PAUSE_MAX), about a second in all before image.busy.
_READ_ATTEMPTS = 40
_PAUSE_FIRST, _PAUSE_MAX = 0.0005, 0.02
# Errors a concurrent writer can cause: a reused cluster fails its checksum (or
# authentication); a compaction's truncation cuts clusters off, and a reader
# that read the slots before that commit sees pointers past the new end.
_READ_RACE_CODES = frozenset({"cluster.checksum", "cluster.auth", "image.truncated", "pointer.out_of_range"})
# Opening also reads the key slot table of an encrypted image.
_OPEN_RACE_CODES = _READ_RACE_CODES | {"key.slot_damaged"}
_jitter = random.Random()
# Inside a transaction, writes that continue the previous write into the same
# blob are gathered up to this many bytes and applied as one (see write()).
_GATHER_BYTES = 1 << 20


def _pause(attempt: int) -> None:
    time.sleep(min(_PAUSE_MAX, _PAUSE_FIRST * 2 ** attempt) * (0.5 + _jitter.random() / 2))


def _retry_while_the_writer_moves(attempt, race_codes, moved_on, during: str):
    """``attempt()``, again while it fails with one of ``race_codes`` and
    ``moved_on(failure)`` says the writer committed since (R-lock-2): at once,
    then with short growing pauses.  A failure without a newer commit is the
    image's own and is raised; ``image.busy`` after ``_READ_ATTEMPTS`` attempts."""
    for n in range(_READ_ATTEMPTS):
        try:
            return attempt()
        except NvboxError as exc:
            if exc.code not in race_codes:
                raise
            failure = exc
        if not moved_on(failure):
            raise failure
        if n:
            _pause(n - 1)
    raise error_class("image.busy")(
        f"the writer committed {_READ_ATTEMPTS} times {during}; last: {failure}") from failure


def _newest_generation(raw: bytes) -> int:
    """The highest generation among the valid slots of a header area (0 if none)."""
    gens = [fmt.slot_generation(raw, off) for index, off in enumerate(fmt.SLOT_OFFSETS)
            if fmt.slot_is_valid(raw[off:off + fmt.SECTOR], index)]
    return max(gens, default=0)


class Image:
    """An open nvbox image.  Use ``nvbox.create`` or ``nvbox.open``.

    Dict-like: ``img[name] = data``, ``img[name]``, ``del img[name]``,
    ``name in img``, ``len(img)``, iteration over names.

    A read-only handle next to a writer (spec 12.2): each read call returns
    data of one complete commit, never a mix.  Between calls the handle may
    move to a newer commit (when a read meets a cluster the writer reused, or
    on ``refresh()``), so several calls (``items()``, a ``BlobIO``'s reads,
    ``names()`` then ``img[name]``) can see several commits unless they run
    inside ``with img.read_transaction():``, which keeps them on one commit or
    raises ``image.changed``.  A read that a fast writer keeps failing gives up
    with ``image.busy``; neither code means damage.
    """

    def __init__(self, dev: BlockDevice, writable: bool, key=None, path: str | None = None):
        self.path = path
        self.writable = writable
        self.counting = dev if isinstance(dev, CountingDevice) else CountingDevice(dev)
        self.dev = self.counting
        self._key = key
        self._gather_buf = None         # see write(): allocated by the first gathered write
        self._closed = False
        self._poisoned = None           # set when _recover cannot re-read the last commit
        self._txn_depth = 0             # transaction() blocks open
        self._long_lived = False        # begin() opened a transaction that commit()/abort() ends
        self._pin_depth = 0             # read_transaction() blocks open
        self._read_depth = 0            # reading() calls open (the outermost one retries)
        self._load()

    # -- opening ---------------------------------------------------------------------

    def _load(self, raw: bytes | None = None) -> None:
        """Read the header and the newest valid slot (R-header-9, R-slot-2..6).

        A read-only handle can read the slots just before a commit of the writer
        and the file just after it (a compaction's truncation, R-compact-1 step 4):
        when the chosen state fails that way, it re-reads the header area and
        tries again while that changes (R-lock-2), ``image.busy`` after
        ``_READ_ATTEMPTS``.  Only an error that stays while the slots stay the
        same is the image's.  ``raw``: the header area, if already read.
        """
        header = [self.dev.read(0, fmt.HEADER_AREA) if raw is None else raw]
        if self.writable:
            return self._load_from(header[0])

        def slots_moved(failure) -> bool:
            newer = self.dev.read(0, fmt.HEADER_AREA)
            moved, header[0] = newer != header[0], newer
            return moved
        _retry_while_the_writer_moves(lambda: self._load_from(header[0]), _OPEN_RACE_CODES, slots_moved,
                                      "while this reader opened the image")

    def _load_from(self, raw: bytes) -> None:
        self.header = fmt.decode_header(raw)
        slots = []
        for index, off in enumerate(fmt.SLOT_OFFSETS):
            body = raw[off:off + fmt.SECTOR]
            if fmt.slot_is_valid(body, index):
                slots.append(body)
        slots.sort(key=fmt.slot_generation, reverse=True)
        if not slots:
            raise_code("slot.none_valid", "neither commit slot is valid")
        known = getattr(self, "cipher", None) if not self.writable else None
        chosen = cipher = None
        for body in slots:
            slot = fmt.decode_slot(body, self.header)
            if slot.encrypted:
                # A reader moving to a newer commit keeps its master key when the
                # slot's MAC proves it still right (no key derivation again).
                if known is not None and known.verify_slot(body):
                    cipher = known
                else:
                    cipher = crypto.unlock(self, slot, self._key)
                    if not cipher.verify_slot(body):
                        continue
            chosen = slot
            break
        if chosen is None:
            raise_code("slot.none_valid", "no commit slot passes authentication")
        size = self.dev.size()
        if size < chosen.image_clusters << self.header.cluster_bits:
            raise_code("image.truncated",
                       f"the file holds {size} bytes; the image needs {chosen.image_clusters} clusters")
        self.cipher = cipher if chosen.encrypted else None
        self._header_area = raw
        self.slot = chosen
        self.store = ClusterStore(self.dev, self.header, chosen, self.cipher)
        self.geo = self.store.geo
        self.trees = Trees(self.store)
        self._begin_state()

    def _begin_state(self) -> None:
        self.txn = Transaction.after(self.slot)

    @property
    def state(self) -> DirState:
        """The active directory as the open transaction sees it."""
        return self.txn.directory

    def _recover(self) -> None:
        """Back to the last durable commit after a failure (R-commit-4)."""
        self.txn.gathered = self.txn.write_end = None
        self._long_lived = False
        stats = self.store.stats
        try:
            self._load()
        except NvboxError as exc:
            # The durable state cannot be read back (the device keeps failing):
            # the handle refuses further use with image.poisoned, and the caller
            # re-raises the failure that started this.
            self._poisoned = exc
            return
        self.store.stats = stats

    def _refresh_reader(self) -> bool:
        """A reader: re-read the slots and move to the newest commit; True if
        its generation changed (R-lock-2)."""
        raw = self.dev.read(0, fmt.HEADER_AREA)
        if raw == self._header_area:
            return False
        old, old_cipher, old_store = self.slot.generation, self.cipher, self.store
        self._load(raw)
        self.store.stats = old_store.stats
        if self.cipher is old_cipher:
            # Keyed by offset, checksum and tag, and filled only after the checks:
            # what it holds is still what those clusters held.
            self.store.adopt_cache(old_store.node_cache)
        return self.slot.generation != old

    def refresh(self) -> bool:
        """Move a read-only handle to the newest commit; True if it moved.

        A read-only handle reads from the commit it last loaded; it moves on by
        itself only when a read meets a cluster the writer has since reused
        (R-lock-2).  A writable handle holds the lock, so there is nothing newer:
        False.

        Raises:
            NvboxError: ``usage.argument`` inside ``read_transaction()``;
            ``image.busy``, or the image's error if the newest commit is damaged.
        """
        self.check_open()
        if self.writable:
            return False
        if self._pin_depth:
            raise_code("usage.argument", "refresh() inside a read transaction")
        return self._refresh_reader()

    @contextlib.contextmanager
    def read_transaction(self):
        """Read several things from one committed state.

        Each read call (``img[name]``, ``read``, ``stat``, ``names``, the snapshot
        list, a snapshot view's calls...) always returns data of one complete
        commit.  Between calls a read-only handle may move to a newer commit (it
        does when it meets a cluster the writer reused), so two calls can see
        two commits.  Inside this block it does not move: on entry it moves to
        the newest commit, and every read in the block comes from that one
        (``img.generation`` stays put).  The writer may reuse that commit's
        clusters from its second commit after it on (R-alloc-1); a read that
        needs such a cluster raises ``image.changed`` instead of switching
        commits: leave the block and run it again.  Nested blocks join the
        outer one.  On a writable handle, which holds the lock, reads always
        come from its own state, and the block only groups them.

        Raises:
            NvboxError: ``image.changed`` from a read inside the block;
            ``image.busy`` on entry if the writer kept committing while the
            newest commit was being opened.
        """
        self.check_open()
        if not self.writable and not self._pin_depth:
            self._refresh_reader()
        self._pin_depth += 1
        try:
            yield self
        finally:
            self._pin_depth -= 1

    def reading(self, fn, *args):
        """Run one read call so that everything it returns comes from one commit.

        A read-only handle can meet a cluster the writer reused, or cut off by
        truncating the file, since the commit it reads from (R-lock-2).  It then
        re-reads the slots and, if there is a newer commit, runs the whole call
        again from the newest one (at once, then with short growing pauses).
        An error that stays while the slots stay the same is the image's.  If
        the writer commits so fast that ``_READ_ATTEMPTS`` attempts all fail,
        ``image.busy`` (liveness, not damage).  Inside ``read_transaction()``
        the handle does not move: ``image.changed`` when a newer commit exists.
        """
        self.check_open()
        if self.writable or self._read_depth:
            return fn(*args)            # the lock holder; or nested: the outer call retries
        def moved_on(failure) -> bool:
            if self._pin_depth:     # a read transaction never moves to another commit
                if _newest_generation(self.dev.read(0, fmt.HEADER_AREA)) != self.slot.generation:
                    raise error_class("image.changed")(
                        f"generation {self.slot.generation}, which this read transaction reads, was "
                        f"overwritten by later commits ({failure})") from failure
                return False
            return self._refresh_reader()
        self._read_depth += 1
        try:
            return _retry_while_the_writer_moves(lambda: fn(*args), _READ_RACE_CODES, moved_on,
                                                 "while this read ran")
        finally:
            self._read_depth -= 1

    # -- transactions ------------------------------------------------------------------

    def check_open(self) -> None:
        """Raise ``image.closed`` or ``image.poisoned`` if the handle cannot be used.

        Every public call (here and in the modules that work on an open image)
        passes here first; so gathered writes are applied here, before anything
        else can observe or change the blob they belong to."""
        if self._closed:
            raise_code("image.closed")
        if self._poisoned is not None:
            raise_code("image.poisoned", f"a failed commit could not be undone ({self._poisoned.code}): "
                                         "close the handle and reopen the image")
        if self.writable:
            if self.txn.gathered is not None:
                self._apply_gathered()
            self.txn.write_end = None      # this call may change the blob: the next write starts afresh

    def _apply_gathered(self) -> None:
        name, offset, filled = self.txn.gathered
        self.txn.gathered = None
        # Straight from the gather buffer: the layers below copy or write what
        # they need before returning, and keep no reference to it.
        self._write_now(name, offset, memoryview(self._gather_buf)[:filled], True)

    def check_writable(self) -> None:
        """``check_open``, then ``image.readonly`` unless this is the writer's handle."""
        self.check_open()
        if not self.writable:
            raise_code("image.readonly")

    @contextlib.contextmanager
    def transaction(self):
        """Group changes into one atomic commit.  Nested blocks join the outer one,
        and so does a block inside a transaction opened by ``begin()``.

        Raises:
            NvboxError: from any change, after which nothing of the block is
            committed: the whole transaction is abandoned and the handle is
            back at the last durable commit (R-commit-4).
        """
        self.check_writable()
        self._txn_depth += 1
        try:
            yield self
            if self._txn_depth == 1 and not self._long_lived and self.txn.gathered is not None:
                self._apply_gathered()      # still inside the transaction: part of its commit
        except BaseException:
            self._txn_depth -= 1
            if self._txn_depth == 0:
                self._recover()
            raise
        self._txn_depth -= 1
        if self._txn_depth == 0 and not self._long_lived:
            self._commit_or_recover()

    @property
    def in_transaction(self) -> bool:
        """True inside ``transaction()`` or between ``begin()`` and ``commit()``/``abort()``."""
        return bool(self._txn_depth) or self._long_lived

    @property
    def pending(self) -> bool:
        """True when the open transaction holds changes not yet committed."""
        return not self._closed and self.txn.pending

    def begin(self) -> Transaction:
        """Open a transaction that stays open across calls until ``commit()`` or
        ``abort()``: for a server that groups many calls into one commit (every
        change until then joins it, as inside ``with img.transaction():``).
        Calls come from one thread at a time; the handle does no locking.

        A failure of any change while it is open abandons the whole transaction
        (R-commit-4): its changes are dropped, the handle is back at the last
        durable commit, and no transaction is open any more (``in_transaction``
        is False; the next change commits on its own unless ``begin()`` is
        called again).  Snapshot operations and compaction are commits of their
        own: ``commit()`` first.

        Returns:
            The open ``Transaction`` (also ``img.txn``).

        Raises:
            NvboxError: ``usage.argument`` when a transaction is already open;
            ``image.readonly``, ``image.closed``.
        """
        self.check_writable()
        if self.in_transaction:
            raise_code("usage.argument", "a transaction is already open")
        self._long_lived = True
        return self.txn

    def commit(self) -> int:
        """Commit the transaction ``begin()`` opened and close it; return the new
        generation.  With nothing pending (or no transaction open) nothing is
        written and the current generation is returned.

        Raises:
            NvboxError: ``usage.argument`` inside ``with img.transaction():``
            (its end commits); any error of the commit, which then abandons
            the transaction as ``begin()`` says.
        """
        self.check_open()               # applies gathered writes: part of this commit
        if self._txn_depth:
            raise_code("usage.argument", "commit() inside a transaction() block; the block's end commits")
        if self._long_lived:
            self._long_lived = False
            self._commit_or_recover()
        return self.slot.generation

    def abort(self) -> None:
        """Drop what the transaction ``begin()`` opened holds and close it: the
        handle is back at the last durable commit.  Without one, nothing happens.

        Raises:
            NvboxError: ``usage.argument`` inside ``with img.transaction():``.
        """
        if self._closed:
            raise_code("image.closed")
        if self._txn_depth:
            raise_code("usage.argument", "abort() inside a transaction() block; raise out of the block instead")
        if self._long_lived:
            self._recover()

    @contextlib.contextmanager
    def _change(self):
        """One mutating call: its own commit outside a transaction."""
        self.check_writable()
        self.txn.changed = True
        if self._txn_depth:
            yield                   # the transaction() block recovers if this fails
            return
        try:
            yield
        except BaseException:
            self._recover()         # also abandons a transaction begin() opened
            raise
        if not self._long_lived:
            self._commit_or_recover()

    def _commit_or_recover(self) -> None:
        try:
            self._commit()
        except BaseException:
            self._recover()
            raise

    def _commit(self) -> None:
        """R-commit-1, with what the transaction carries; then a fresh transaction."""
        txn = self.txn
        if not txn.changed:
            return
        new = txn.write_commit(self.trees, self.store, self.slot, self.cipher.slot_mac if self.cipher else None)
        self.slot = new
        self.store.end_transaction(new)
        self._begin_state()
        if txn.keyslot_table is not None and getattr(self._key, "source", None) != "master":
            # The handle keeps working (reload after a failure, reader refresh)
            # even when the key it was opened with no longer opens any slot.
            self._key = crypto.Key(self.cipher.master, "master")
        end = new.image_clusters << self.geo.cluster_bits
        if txn.shrink and self.dev.growable and self.dev.size() > end:
            # The clusters past the new end go back to the file system: only now,
            # after the commit is durable, since the newer slot never needs them (section 12).
            self.dev.truncate(end)

    # -- blobs: reading -----------------------------------------------------------------

    def _entry(self, name):
        name = fmt.check_name(name)
        e = self.trees.dir_lookup(self.state.dir_root, self.state.dir_depth, name)
        if e is None:
            raise_code("blob.not_found", f"no blob named {name!r}")
        return e

    def read_entry(self, e, offset=0, length=None):
        """``length`` bytes (default: to the end) from ``offset`` of the blob whose
        directory entry is ``e`` (from any tree of this image: active or snapshot)."""
        return content.read(self.trees, e, offset, length)

    def get(self, name, default=None):
        try:
            return self[name]
        except NvboxError as exc:
            if exc.code == "blob.not_found":
                return default
            raise

    def read(self, name, offset: int = 0, length: int | None = None) -> bytes:
        """``length`` bytes of blob ``name`` from ``offset`` (to the end by default)."""
        if offset < 0 or (length is not None and length < 0):
            raise_code("usage.argument", "negative offset or length")
        return self.reading(lambda: self.read_entry(self._entry(name), offset, length))

    def __getitem__(self, name) -> bytes:
        return self.read(name)

    def stat(self, name) -> BlobStat:
        e = self.reading(self._entry, name)
        return BlobStat(e.name, e.size, e.inline is not None, e.depth)

    def __contains__(self, name) -> bool:
        try:
            self.stat(name)
            return True
        except NvboxError as exc:
            if exc.code in ("blob.not_found", "blob.name"):
                return False
            raise

    def names(self) -> list[str]:
        """Every blob name, sorted."""
        return sorted(self.reading(lambda: [e.name for e in self.trees.dir_iter(self.state.dir_root,
                                                                                 self.state.dir_depth)]))

    keys = names

    def items(self):
        for name in self.names():
            yield name, self[name]

    def __iter__(self):
        return iter(self.names())

    def __len__(self) -> int:
        self.check_open()
        return self.state.blob_count

    def entries(self):
        """Every entry (name, size, inline, depth) in key order, without reading data."""
        return self.reading(lambda: [BlobStat(e.name, e.size, e.inline is not None, e.depth)
                                      for e in self.trees.dir_iter(self.state.dir_root, self.state.dir_depth)])

    # -- blobs: writing ------------------------------------------------------------------

    def _leaf_for(self, name, must_exist: bool = False):
        """The path to the leaf where ``name`` is or would go.  With ``must_exist``,
        a missing blob is ``blob.not_found``; the path's copy is first put back
        in order by ``dir_fix``, which removes the empty root leaf ``dir_path``
        makes in an empty directory (inside a transaction nothing else would)."""
        name = fmt.check_name(name)
        key = fmt.blob_key(name)
        path = self.trees.dir_path(self.state, key)
        leaf = path[-1][0]
        i = leaf.find(key)
        found = i < len(leaf.items) and leaf.items[i].key == key
        if must_exist and not found:
            self.trees.dir_fix(self.state, path)
            raise_code("blob.not_found", f"no blob named {name!r}")
        return name, key, path, leaf, i, found

    def put(self, name, data) -> None:
        """Store ``data`` (bytes-like) as blob ``name``, replacing any old contents."""
        data = bytes(data)
        if len(data) > fmt.MAX_BLOB_SIZE:
            raise_code("blob.too_large")
        check_path_safe(name)  # new blobs get names export and the mount can use as paths (nvbox.names)
        with self._change():
            name, key, path, leaf, i, found = self._leaf_for(name)
            extra = b""
            if found:
                old = leaf.items[i]
                extra = old.extra  # R-dir-4: unknown fields survive a rewrite
                self.trees.drop_blob(old)
            blob = Blob(name, 0, b"", key=key, extra=extra)
            content.fill(self.trees, blob, data)
            if found:
                self.trees.dir_set(leaf, i, blob)
            else:
                self.trees.dir_insert(leaf, i, blob)
                self.state.blob_count += 1
            self.trees.dir_fix(self.state, path)

    __setitem__ = put

    def delete(self, name) -> None:
        with self._change():
            name, key, path, leaf, i, found = self._leaf_for(name, must_exist=True)
            self.trees.drop_blob(self.trees.dir_pop(leaf, i))
            self.state.blob_count -= 1
            self.trees.dir_fix(self.state, path)

    __delitem__ = delete

    def write(self, name, offset: int, data, create: bool = True) -> None:
        """Write ``data`` at ``offset`` inside blob ``name`` (a partial write touches
        only the clusters it covers).  Writing past the end extends the blob with zeros.

        Inside a transaction, a write that starts where the previous write into
        the same blob ended (a sequential writer, e.g. a ``BlobIO``) is gathered
        with the ones after it, up to 1 MiB, and they are applied together: the
        same result as applying each, for a fraction of the per-call work.  Any
        other call on the image, and the end of the transaction, applies them
        first; an error in applying them (``space.exhausted``, ``io.error``) is
        raised by that call, and as with any error inside the block, leaving
        the block with it commits nothing.
        """
        end = self.txn.write_end
        if end is not None and offset == end[1] and name == end[0] and self.in_transaction and not self._closed \
                and isinstance(data, (bytes, bytearray, memoryview)):
            n = data.nbytes if isinstance(data, memoryview) else len(data)
            plain_bytes = not isinstance(data, memoryview) or (data.itemsize == 1 and data.c_contiguous)
            if n < _GATHER_BYTES and plain_bytes:   # a large write gains nothing from a copy
                self._gather(name, offset, data, n)
                return
        data = bytes(data)
        if offset < 0:
            raise_code("usage.argument", "negative offset")
        if offset + len(data) > fmt.MAX_BLOB_SIZE:
            raise_code("blob.too_large")
        self._write_now(name, offset, data, create)
        if self.in_transaction:
            self.txn.write_end = (name, offset + len(data))

    def _gather(self, name, offset: int, data, n: int) -> None:
        if offset + n > fmt.MAX_BLOB_SIZE:
            raise_code("blob.too_large")
        if self.txn.gathered is not None and self.txn.gathered[2] + n > len(self._gather_buf):
            self._apply_gathered()
        if self.txn.gathered is None:
            if self._gather_buf is None:
                # One buffer for the handle's life: a fresh 1 MiB buffer per batch
                # cost page faults and copies that took a third of a 64 MiB write.
                self._gather_buf = bytearray(_GATHER_BYTES)
            self.txn.gathered = [name, offset, 0]
        filled = self.txn.gathered[2]
        self._gather_buf[filled:filled + n] = data
        self.txn.gathered[2] = filled + n
        self.txn.write_end = (name, offset + n)

    def _write_now(self, name, offset: int, data: bytes, create: bool) -> None:
        if create:
            check_path_safe(name)   # a write may create the blob: put's name rule (nvbox.names), checked first
        with self._change():
            name, key, path, leaf, i, found = self._leaf_for(name, must_exist=not create)
            if not found:
                self.trees.dir_insert(leaf, i, Blob(name, 0, b"", key=key))
                self.state.blob_count += 1
            content.write_into(self.trees, leaf.items[i], offset, data)
            self.trees.dir_fix(self.state, path, touched=i)

    def truncate(self, name, size: int) -> None:
        """Set blob ``name``'s size, cutting or extending with zeros."""
        if size < 0 or size > fmt.MAX_BLOB_SIZE:
            raise_code("usage.argument" if size < 0 else "blob.too_large")
        with self._change():
            name, key, path, leaf, i, found = self._leaf_for(name, must_exist=True)
            content.resize(self.trees, leaf.items[i], size)
            self.trees.dir_fix(self.state, path, touched=i)

    def rename(self, old, new, replace: bool = True) -> None:
        """Give blob ``old`` the name ``new``, moving its directory entry (no data
        is copied or rewritten: the entry keeps its tree and its unknown fields).
        An existing blob ``new`` is replaced (its clusters released) unless
        ``replace`` is False.  Renaming a blob onto itself changes nothing.

        Raises:
            NvboxError: ``blob.not_found`` when ``old`` does not exist;
            ``blob.exists`` when ``new`` exists and ``replace`` is False;
            ``blob.name`` for an invalid name (``new`` must be path-safe, as
            for ``put``).
        """
        old, new = fmt.check_name(old), fmt.check_name(new)
        check_path_safe(new)
        self.check_writable()
        state = self.state
        if self.trees.dir_lookup(state.dir_root, state.dir_depth, old) is None:
            raise_code("blob.not_found", f"no blob named {old!r}")
        if old == new:
            return
        target = self.trees.dir_lookup(state.dir_root, state.dir_depth, new)
        if target is not None and not replace:
            raise_code("blob.exists", f"a blob named {new!r} exists")
        with self._change():
            _, _, path, leaf, i, _ = self._leaf_for(old, must_exist=True)
            entry = self.trees.dir_pop(leaf, i)
            self.trees.dir_fix(state, path)
            moved = Blob(new, entry.size, entry.inline, entry.depth, entry.root, entry.extra)
            name, key, path, leaf, i, found = self._leaf_for(new)
            if found:
                self.trees.drop_blob(leaf.items[i])
                self.trees.dir_set(leaf, i, moved)
            else:
                self.trees.dir_insert(leaf, i, moved)
            state.blob_count -= found
            self.trees.dir_fix(state, path)

    def zero(self, name, offset: int, length: int, *, extend: bool = False) -> None:
        """Make ``length`` bytes of blob ``name`` from ``offset`` read as zeros,
        writing as little as possible: every cluster the range covers wholly
        becomes a hole (a null pointer; its reference is dropped, so a cluster
        nothing else shares is freed), and only a cluster the range covers in
        part is rewritten, zero-filled there (unless it is a hole already).

        The blob never grows: the part of the range past its end is ignored,
        unless ``extend`` is True, when the blob grows to ``offset + length``
        (with zeros, as ``truncate`` extends it: sparse).  A blob's last
        cluster counts as covered wholly when the range reaches the blob's end.

        Raises:
            NvboxError: ``blob.not_found``; ``usage.argument`` for a negative
            offset or length; ``blob.too_large`` when ``extend`` would pass
            the format's limit.
        """
        if offset < 0 or length < 0:
            raise_code("usage.argument", "negative offset or length")
        end = offset + length
        if extend and end > fmt.MAX_BLOB_SIZE:
            raise_code("blob.too_large")
        with self._change():
            _, _, path, leaf, i, _ = self._leaf_for(name, must_exist=True)
            content.zero_range(self.trees, leaf.items[i], offset, end, extend)
            self.trees.dir_fix(self.state, path, touched=i)

    def open_blob(self, name, mode: str = "rb") -> "BlobIO":
        """A file-like handle on blob ``name``.  Modes: 'rb', 'r+b', 'wb' (truncate
        or create), 'ab' (append, create)."""
        if mode not in ("rb", "r+b", "wb", "ab", "w+b", "a+b"):
            raise_code("usage.argument", f"unsupported mode {mode!r}")
        if mode != "rb":
            self.check_writable()
            if mode.startswith("w"):
                with self.transaction():
                    self.put(name, b"")
            elif mode.startswith("a") and name not in self:
                self.put(name, b"")
        self.stat(name)
        return BlobIO(self, fmt.check_name(name), mode)

    # -- snapshots ---------------------------------------------------------------------------

    @property
    def snapshots(self) -> Snapshots:
        return Snapshots(self)

    @property
    def key_slots(self):
        """The key slot manager of an encrypted image (``nvbox.crypto.KeySlots``):
        ``list()``, ``add(key)``, ``remove(index or key)``, ``replace(...)``."""
        return crypto.KeySlots(self)

    def snapshot_records(self) -> list:
        """The snapshot table's records (``fmt.Snapshot``, oldest first) as the
        open transaction sees it, read from the durable commit on first use.
        No retry: on a read-only handle next to a writer, call it through
        ``reading()``.  Change it with ``txn.set_snapshots``."""
        txn = self.txn
        if txn.snapshots is None:
            slot = self.slot
            raw = self.trees.map_read(slot.snaptable_root, slot.snaptable_depth, slot.snaptable_size,
                                      0, slot.snaptable_size, data_kind=fmt.KIND_SNAPDATA)
            txn.snapshots = fmt.decode_snapshot_table(raw, self.geo, slot.snapshot_count, slot.next_snapshot_id)
        return txn.snapshots

    # -- information --------------------------------------------------------------------------

    @property
    def cluster_size(self) -> int:
        return self.geo.cluster_size

    @property
    def encrypted(self) -> bool:
        return self.slot.encrypted

    @property
    def generation(self) -> int:
        """The generation of the commit this handle reads (and, for the writer,
        the last it made)."""
        return self.slot.generation

    @property
    def stats(self) -> dict:
        """What this handle did: clusters and bytes written, flushes, commits, reads."""
        s = self.store.stats.as_dict()
        d = self.counting.stats
        s.update(device_writes=d.writes, device_bytes_written=d.bytes_written, device_flushes=d.flushes,
                 device_reads=d.reads, device_bytes_read=d.bytes_read)
        return s

    def reset_stats(self) -> None:
        self.store.stats.__init__()
        self.counting.stats.reset()

    def info(self) -> dict:
        used = self.reading(lambda: self.store.durable_used())
        doc = describe(self.header, self.slot, self.path)
        doc["used_clusters"], doc["free_clusters"] = used, self.slot.image_clusters - used
        return doc

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the handle.  Uncommitted changes (of a transaction ``begin()``
        opened, say) are dropped, as a crash would drop them."""
        if not self._closed:
            self._closed = True
            self.txn.gathered = self.txn.write_end = None     # an uncommitted transaction's, like its other changes
            self.dev.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<nvbox.Image {self.path or 'in memory'} gen={self.slot.generation} blobs={self.state.blob_count}>"
