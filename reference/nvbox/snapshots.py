"""Snapshots: create, list, revert, delete, rename, read-only views, diff.

A snapshot is a record in the snapshot table holding a directory root; the
root's count includes the snapshot's reference (spec section 11).  Creating
one changes the table and one count, whatever the amount of data: the trees
are shared, and copied lazily by the first write that touches them (R-cow-2).
Each operation is one commit, so none may run inside an open transaction.
"""

from __future__ import annotations

import time
from dataclasses import replace

from . import _format as fmt
from ._tree import DirNode
from .errors import NvboxError, raise_code
from .records import BlobStat, SnapshotInfo

__all__ = ["Snapshots", "SnapshotView", "diff_trees"]


def _info(s: fmt.Snapshot) -> SnapshotInfo:
    return SnapshotInfo(s.id, s.name, s.create_time, s.blob_count, s.metadata)


def _lookup(image, name) -> fmt.Snapshot:
    """The record named ``name`` in the image's current state (no retry)."""
    for s in image.snapshot_records():
        if s.name == name:
            return s
    raise_code("snapshot.not_found", f"no snapshot named {name!r}")


class Snapshots:
    """``image.snapshots``: the image's snapshots, by name."""

    def __init__(self, image):
        self.image = image

    def _records(self):
        img = self.image
        return img.reading(img.snapshot_records)

    def _find(self, name) -> fmt.Snapshot:
        name = fmt.check_name(name, "snapshot.name")
        return self.image.reading(_lookup, self.image, name)

    def list(self) -> list[SnapshotInfo]:
        """Every snapshot, oldest first."""
        return [_info(s) for s in self._records()]

    def __iter__(self):
        return iter(self.list())

    def __len__(self) -> int:
        return len(self._records())

    def __contains__(self, name) -> bool:
        try:
            self._find(name)
            return True
        except NvboxError as exc:
            if exc.code in ("snapshot.not_found", "snapshot.name"):
                return False
            raise

    def _own_commit(self):
        """The transaction of one snapshot operation: a commit of its own."""
        img = self.image
        img.check_writable()
        if img.in_transaction:
            raise_code("usage.argument", "snapshot operations are commits of their own; "
                                         "run them outside a transaction (commit() first)")
        return img.transaction()

    def create(self, name, metadata: bytes | None = None) -> SnapshotInfo:
        """Snapshot the whole image under ``name`` (R-snap-1).

        Raises:
            NvboxError: ``snapshot.exists``, ``snapshot.limit``, ``snapshot.name``,
            ``snapshot.metadata``, ``refcount.overflow``.
        """
        name = fmt.check_name(name, "snapshot.name")
        if metadata is not None:
            metadata = bytes(metadata)
            if len(metadata) > fmt.MAX_SNAPSHOT_METADATA:
                raise_code("snapshot.metadata", f"metadata of {len(metadata)} bytes; at most 1024")
        img = self.image
        with self._own_commit():
            records = img.snapshot_records()
            if any(s.name == name for s in records):
                raise_code("snapshot.exists", f"a snapshot named {name!r} exists")
            if len(records) >= fmt.MAX_SNAPSHOTS:
                raise_code("snapshot.limit", f"the image already holds {fmt.MAX_SNAPSHOTS} snapshots")
            txn = img.txn
            state = txn.directory
            rec = fmt.Snapshot(txn.take_snapshot_id(), name, int(time.time()), state.blob_count,
                               state.dir_depth, state.dir_root, metadata)
            img.store.incref(state.dir_root)
            txn.set_snapshots(records + [rec])
        return _info(rec)

    def revert(self, name) -> None:
        """Make the active state equal snapshot ``name``'s; the snapshot stays (R-snap-2)."""
        img = self.image
        with self._own_commit():
            rec = self._find(name)
            state = img.txn.directory
            img.store.incref(rec.dir_root)      # first, in case both roots are the same node
            if state.dir_depth:
                img.trees.drop_dir(state.dir_root, state.dir_depth - 1)
            img.txn.set_directory(rec.dir_root, rec.dir_depth, rec.blob_count)

    def delete(self, name) -> None:
        """Delete snapshot ``name``, freeing what only it held (R-snap-3)."""
        img = self.image
        with self._own_commit():
            rec = self._find(name)
            img.txn.set_snapshots([s for s in img.snapshot_records() if s.id != rec.id])
            if rec.dir_depth:
                img.trees.drop_dir(rec.dir_root, rec.dir_depth - 1)

    def rename(self, old, new) -> None:
        """Rename snapshot ``old`` to ``new`` (``snapshot.exists`` if that is taken)."""
        img = self.image
        new = fmt.check_name(new, "snapshot.name")
        with self._own_commit():
            rec = self._find(old)
            records = img.snapshot_records()
            if new != rec.name and any(s.name == new for s in records):
                raise_code("snapshot.exists", f"a snapshot named {new!r} exists")
            img.txn.set_snapshots([replace(s, name=new) if s.id == rec.id else s for s in records])

    def view(self, name) -> "SnapshotView":
        """A read-only view of snapshot ``name``'s blobs."""
        return SnapshotView(self.image, self._find(name))


class SnapshotView:
    """Dict-like, read-only access to the blobs of one snapshot.

    The view follows its snapshot by id, not by the record it was made from:
    each call finds the record in the commit the image handle reads, so a
    read-only handle that moves to a newer commit (R-lock-2) reads the snapshot
    there (renamed or not), and a snapshot deleted by then raises
    ``snapshot.not_found``.  Like the image's, each call returns data of one
    commit; ``image.read_transaction()`` keeps several calls on one.
    ``record`` is the record the last call used.
    """

    def __init__(self, image, record: fmt.Snapshot):
        self.image, self.record = image, record
        self.id, self.name = record.id, record.name

    def _current(self) -> fmt.Snapshot:
        for s in self.image.snapshot_records():
            if s.id == self.id:
                self.record, self.name = s, s.name
                return s
        raise_code("snapshot.not_found", f"snapshot {self.name!r} no longer exists")

    def _entry(self, name):
        r = self._current()
        e = self.image.trees.dir_lookup(r.dir_root, r.dir_depth, name)
        if e is None:
            raise_code("blob.not_found", f"no blob named {name!r} in snapshot {r.name!r}")
        return e

    def read(self, name, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise_code("usage.argument", "negative offset or length")
        name = fmt.check_name(name)
        img = self.image
        return img.reading(lambda: img.read_entry(self._entry(name), offset, length))

    __getitem__ = read

    def stat(self, name) -> BlobStat:
        name = fmt.check_name(name)
        e = self.image.reading(self._entry, name)
        return BlobStat(e.name, e.size, e.inline is not None, e.depth)

    def names(self) -> list[str]:
        return sorted(e.name for e in self.entries())

    def entries(self) -> list[BlobStat]:
        """Every entry (name, size, inline, depth) in key order, without reading data."""
        def run():
            r = self._current()
            return [BlobStat(e.name, e.size, e.inline is not None, e.depth)
                    for e in self.image.trees.dir_iter(r.dir_root, r.dir_depth)]
        return self.image.reading(run)

    def __iter__(self):
        return iter(self.names())

    def __len__(self):
        return self.image.reading(self._current).blob_count

    def __contains__(self, name) -> bool:
        try:
            self.stat(name)
            return True
        except NvboxError as exc:
            if exc.code in ("blob.not_found", "blob.name"):
                return False
            raise


def _same_content(a, b) -> bool:
    if a.size != b.size or (a.inline is None) != (b.inline is None):
        return False
    if a.inline is not None:
        return a.inline == b.inline
    return a.depth == b.depth and a.root == b.root


def diff_trees(trees, a_root, a_depth, b_root, b_depth) -> dict:
    """Blobs added, removed and changed from tree A to tree B.

    Identical subtrees (the same pointer) are skipped without being read, so the
    cost follows the difference, not the size.  A blob counts as changed when
    its entry differs; blobs whose clusters are shared compare equal unread.
    """
    added, removed, changed = [], [], []

    def entries(node, level):
        return list(trees.dir_iter(node, level + 1))

    def walk(a, al, b, bl):
        if a == b and al == bl:
            return
        if al == bl and al > 0 and not isinstance(a, DirNode) and not isinstance(b, DirNode):
            na, nb = trees.dir_node(a, al), trees.dir_node(b, bl)
            ka = [x.low_key for x in na.items]
            kb = [x.low_key for x in nb.items]
            if ka == kb:
                for x, y in zip(na.items, nb.items):
                    walk(x.child, al - 1, y.child, bl - 1)
                return
        ea = {e.name: e for e in entries(a, al)} if al >= 0 else {}
        eb = {e.name: e for e in entries(b, bl)} if bl >= 0 else {}
        for n in ea.keys() - eb.keys():
            removed.append(n)
        for n in eb.keys() - ea.keys():
            added.append(n)
        for n in ea.keys() & eb.keys():
            if not _same_content(ea[n], eb[n]):
                changed.append(n)

    if a_depth == 0 and b_depth == 0:
        pass
    elif a_depth == 0:
        added.extend(e.name for e in trees.dir_iter(b_root, b_depth))
    elif b_depth == 0:
        removed.extend(e.name for e in trees.dir_iter(a_root, a_depth))
    else:
        walk(a_root, a_depth - 1, b_root, b_depth - 1)
    return {"added": sorted(added), "removed": sorted(removed), "changed": sorted(changed)}


def diff(image, a: str, b: str | None = None) -> dict:
    """Compare snapshot ``a`` with snapshot ``b``, or with the active state."""
    a = fmt.check_name(a, "snapshot.name")
    if b is None:
        if image.in_transaction:
            raise_code("usage.argument", "diff against the active state outside a transaction")
    else:
        b = fmt.check_name(b, "snapshot.name")

    def run():  # the records are found again in the state each attempt reads
        ra = _lookup(image, a)
        if b is None:
            b_root, b_depth = image.state.dir_root, image.state.dir_depth
        else:
            rb = _lookup(image, b)
            b_root, b_depth = rb.dir_root, rb.dir_depth
        return diff_trees(image.trees, ra.dir_root, ra.dir_depth, b_root, b_depth)

    return image.reading(run)
