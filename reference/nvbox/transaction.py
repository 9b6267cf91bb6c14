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
A ``Transaction`` does no I/O; ``Image`` commits it (R-commit-1) and starts a
fresh one after every commit and after every failure (R-commit-4).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import _format as fmt

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
