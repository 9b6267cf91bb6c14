"""Which blobs differ between two states of an image, by content (``nvbox diff``).

``nvbox.snapshots.diff`` compares storage: it skips subtrees and entries the two
directory trees share without reading them, and reports every other entry as
changed, so a blob re-written with the same bytes shows as changed.  ``compare``
starts from that list and decides each candidate by content:

- different sizes: changed, nothing read;
- two cluster maps are walked side by side: a pointer both share names the same
  bytes (skipped unread); in a plain image two data pointers with different
  CRC-32Cs name different bytes (the CRC is of the plaintext cluster), so only
  data clusters whose pointers differ but whose CRCs agree are read; in an
  encrypted image the CRC covers the ciphertext, so differing clusters are read;
- inline content is compared directly.

A blob is "changed" when its bytes differ, "rewritten" when only its storage
does.
"""

from __future__ import annotations

from . import _format as fmt
from .snapshots import diff as storage_diff

__all__ = ["compare"]


def compare(img, a: str, b: str | None = None) -> dict:
    """Snapshot ``a`` against snapshot ``b`` (the active state when None).

    Returns added, removed and changed names (by content), ``rewritten`` (names
    whose storage differs but whose content is equal), per-blob sizes ``[a, b]``
    (None where absent), and ``equal`` (the same blobs with the same content).
    """
    storage = storage_diff(img, a, b)
    records = {r.name: r for r in img.snapshot_records()}
    tree_a = records[a].dir_root, records[a].dir_depth
    tree_b = (img.state.dir_root, img.state.dir_depth) if b is None else (records[b].dir_root, records[b].dir_depth)
    same = _Contents(img)
    changed, rewritten, sizes = [], [], {}
    for name in sorted(storage["changed"]):
        ea, eb = _entry(img, tree_a, name), _entry(img, tree_b, name)
        sizes[name] = [ea.size, eb.size]
        (rewritten if same(ea, eb) else changed).append(name)
    for name in storage["added"]:
        sizes[name] = [None, _entry(img, tree_b, name).size]
    for name in storage["removed"]:
        sizes[name] = [_entry(img, tree_a, name).size, None]
    for name in rewritten:
        del sizes[name]
    added, removed = sorted(storage["added"]), sorted(storage["removed"])
    return {"added": added, "removed": removed, "changed": changed, "rewritten": rewritten,
            "sizes": dict(sorted(sizes.items())), "equal": not (added or removed or changed)}


def _entry(img, tree, name):
    root, depth = tree
    return img.trees.dir_lookup(root, depth, name)


class _Contents:
    """``same(ea, eb)``: whether two directory entries hold the same bytes,
    reading as little as the pointers allow."""

    def __init__(self, img):
        self.img, self.trees, self.store = img, img.trees, img.store
        self.crc_is_content = not img.encrypted       # plain: the pointer's CRC is of the cluster's bytes

    def __call__(self, ea, eb) -> bool:
        if ea.size != eb.size:
            return False
        if ea.inline is not None or eb.inline is not None or ea.depth != eb.depth:
            return self.img.read_entry(ea) == self.img.read_entry(eb)
        self.size = ea.size
        return self._same(ea.root, eb.root, ea.depth, 0)

    def _same(self, pa, pb, level, first) -> bool:
        """Whether the subtrees ``pa`` and ``pb`` at ``level``, covering data
        clusters from index ``first``, hold the same bytes of the blob."""
        if pa == pb:
            return True                                   # shared: the same bytes, unread
        if level == 0:
            if self.crc_is_content and not pa.is_null and not pb.is_null and pa.crc != pb.crc:
                return False
            # Only the blob's bytes count, not what a writer left past its end.
            cs = self.store.geo.cluster_size
            end = min(cs, self.size - first * cs)
            return self._data(pa)[:end] == self._data(pb)[:end]
        span = self.store.geo.fanout ** (level - 1)
        kids_a, kids_b = self._children(pa), self._children(pb)
        return all(self._same(x, y, level - 1, first + i * span) for i, (x, y) in enumerate(zip(kids_a, kids_b)))

    def _children(self, ptr) -> list:
        if ptr.is_null:                                   # a hole: every child is one too
            return [fmt.NULL] * self.store.geo.fanout
        kids = self.trees.map_node(ptr)
        return kids + [fmt.NULL] * (self.store.geo.fanout - len(kids))

    def _data(self, ptr) -> bytes:
        if ptr.is_null:
            return bytes(self.store.geo.cluster_size)
        return self.store.read_raw(ptr, fmt.KIND_DATA)
