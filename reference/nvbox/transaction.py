"""What one commit carries: the ``Transaction`` an ``Image`` owns.

Between two commits, everything a writer has changed but not yet committed
lives in one ``Transaction`` (the clusters it wrote and the counts it changed
live in the cluster store, which the commit flushes as well).  Each field is
one thing the next commit slot records or does:

==================  ==============================================================
``directory``       the active directory: root (a pointer or an in-memory node),
                    depth and blob count
``gathered``        sequential writes not yet applied: [name, blob offset, bytes
                    filled in the image's gather buffer] (see ``Image.write``)
``write_end``       (name, end) of this transaction's last write, so the next one
                    that continues it is gathered
``snapshots``       the snapshot table as this transaction sees it (None: not
                    loaded, the durable one); ``snapshots_dirty``: rewrite it
``next_snapshot_id`` the id the next snapshot takes
``keyslot_table``   a new key slot table (a tuple of ``fmt.KeySlot``) to write, or
                    None; the commit writes it to a new cluster and frees the old
``keyslots_moved``  the key slot table cluster copied elsewhere (compaction), or None
``shrink``          cut ``image_clusters`` to just past the last cluster in use
``changed``         something was changed: the commit writes a slot
==================  ==============================================================

The image and the library's other modules (snapshots, compaction, key slots,
repair) change these through the methods below, which also set ``changed``.
``write_commit`` writes what the transaction carries and the next commit slot
(R-commit-1), through the public methods of the trees and the cluster store;
``Image`` calls it, and starts a fresh transaction after every commit and
after every failure (R-commit-4).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from . import _format as fmt
from ._tree import NULL, Blob
from .errors import raise_code

__all__ = ["Transaction", "DirState"]


class DirState:
    """The active directory while a transaction changes it (the trees update it in place)."""

    __slots__ = ("dir_root", "dir_depth", "blob_count")

    def __init__(self, root, depth: int, count: int):
        self.dir_root, self.dir_depth, self.blob_count = root, depth, count


@dataclass(eq=False)
class Transaction:
    """The uncommitted changes of one image handle (see the module docstring)."""

    directory: DirState
    next_snapshot_id: int
    gathered: list | None = None
    write_end: tuple | None = None
    snapshots: list | None = None
    snapshots_dirty: bool = False
    keyslot_table: tuple | None = None
    keyslots_moved: fmt.Pointer | None = None
    shrink: bool = False
    changed: bool = False

    @classmethod
    def after(cls, slot: fmt.Slot) -> "Transaction":
        """An empty transaction on top of the durable commit ``slot``."""
        return cls(DirState(slot.dir_root, slot.dir_depth, slot.blob_count), slot.next_snapshot_id)

    def mark_changed(self) -> None:
        """Something outside these fields changed (counts, trees): commit a slot."""
        self.changed = True

    def set_directory(self, root, depth: int, blob_count: int) -> None:
        """Make the active directory the tree at ``root`` (a snapshot revert)."""
        d = self.directory
        d.dir_root, d.dir_depth, d.blob_count = root, depth, blob_count
        self.changed = True

    def set_snapshots(self, records: list) -> None:
        """The snapshot table becomes ``records`` (``fmt.Snapshot``, oldest first)."""
        self.snapshots = list(records)
        self.snapshots_dirty = self.changed = True

    def take_snapshot_id(self) -> int:
        """The id for a new snapshot (ids are never reused, R-snap-5)."""
        sid = self.next_snapshot_id
        self.next_snapshot_id += 1
        self.changed = True
        return sid

    def set_keyslot_table(self, table) -> None:
        """Write ``table`` (every ``fmt.KeySlot``, in order) as the new key slot table."""
        self.keyslot_table = tuple(table)
        self.changed = True

    def move_keyslots(self, ptr: fmt.Pointer) -> None:
        """The key slot table now lives in the cluster ``ptr`` names (already written)."""
        self.keyslots_moved = ptr
        self.changed = True

    def request_shrink(self) -> None:
        """Cut ``image_clusters`` after the last live cluster, and the file after the commit."""
        self.shrink = self.changed = True

    @property
    def pending(self) -> bool:
        """True when committing would write something."""
        return self.changed or self.gathered is not None

    # -- the commit (R-commit-1) ------------------------------------------------------------------

    def write_commit(self, trees, store, slot: fmt.Slot, mac=None) -> fmt.Slot:
        """Write this transaction on top of the durable ``slot``: its trees, the
        snapshot and key slot tables it changed, the refcounts, flush, the new
        slot, flush.  Returns the new slot (durable on return).  ``mac`` signs
        the slot of an encrypted image.  Gathered writes must be applied first."""
        assert self.gathered is None, "gathered writes are applied before the transaction ends"
        d = self.directory
        dir_root = trees.flush_dir(d.dir_root, d.dir_depth - 1) if d.dir_depth else NULL
        snaptable = slot.snaptable_root, slot.snaptable_depth, slot.snaptable_size
        if self.snapshots_dirty:
            snaptable = self._write_snapshot_table(trees, slot)
        keyslots = self.keyslots_moved or slot.keyslots
        if self.keyslot_table is not None:
            raw = fmt.encode_keyslots(list(self.keyslot_table), fmt.Geometry(store.geo.cluster_bits, True))
            new_table = store.write_cluster(store.allocate(1), 0, raw)
            store.decref(keyslots)
            keyslots = new_table
        store.flush_refcounts()
        if self.shrink:
            store.shrink_to_fit()
        end = store.image_clusters << store.geo.cluster_bits
        if store.dev.size() < end:
            store.dev.truncate(end)
        new = fmt.Slot(
            generation=slot.generation + 1,
            incompatible_features=slot.incompatible_features,
            compatible_features=slot.compatible_features,            # R-feature-2: kept
            autoclear_features=slot.autoclear_features & fmt.KNOWN_AUTOCLEAR,  # R-feature-3
            image_clusters=store.image_clusters,
            blob_count=d.blob_count,
            next_snapshot_id=self.next_snapshot_id,
            commit_time=int(time.time()),
            refcount_depth=store.refcount_depth,
            dir_depth=d.dir_depth,
            snaptable_depth=snaptable[1],
            snapshot_count=len(self.snapshots) if self.snapshots is not None else slot.snapshot_count,
            snaptable_size=snaptable[2],
            refcount_root=store.refcount_root,
            dir_root=dir_root,
            snaptable_root=snaptable[0],
            keyslots=keyslots,
            alloc_hint=store.alloc_hint(),
        )
        store.write_slot(new, mac)
        return new

    def _write_snapshot_table(self, trees, slot: fmt.Slot) -> tuple:
        """The snapshot table rewritten from ``snapshots``: (root, depth, size)."""
        if not slot.snaptable_root.is_null:
            trees.drop_map(slot.snaptable_root, slot.snaptable_depth, data_kind=fmt.KIND_SNAPDATA)
        raw = fmt.encode_snapshot_table(self.snapshots, trees.geo.pointer_size)
        if not raw:
            return NULL, 0, 0
        if len(raw) > fmt.MAX_SNAPTABLE:
            raise_code("snapshot.limit", "the snapshot table would exceed 2 MiB")
        holder = Blob("snapshot-table", 0, None)
        trees.map_write(holder, 0, raw, data_kind=fmt.KIND_SNAPDATA)
        return trees.flush_map(holder.root, holder.depth), holder.depth, len(raw)
