"""Compaction: move live clusters toward the start and give the tail back.

Each pass is one ordinary commit, so a crash leaves the image before or after
that pass, never in between (spec section 12).  A pass picks a cutoff (the
number of live clusters) and relocates every cluster at or above it into a
free cluster below it.  Relocating a cluster rewrites every parent that points
to it, so a pass walks the whole reachable graph once, memoising moves: a
cluster shared by several parents (a snapshot and the active state) moves
once, and its count moves with it unchanged.  After the commit is durable, the
file is truncated to the new ``image_clusters``; the older slot is never
needed again once the newer one is durable, so cutting clusters only it
referenced is safe.

Parents rewritten in a pass take free clusters too, and the clusters they
leave may only be reused after the commit (R-alloc-2), so a pass can leave a
few clusters above the cutoff; the next pass moves them.  Passes stop when a
pass no longer shrinks the image.
"""

from __future__ import annotations

from dataclasses import replace

from . import _format as fmt
from ._store import _SCAN_BLOCKS
from .check import check_image
from .errors import raise_code

__all__ = ["compact_image"]

_MAX_PASSES = 8


class _Relocator:
    def __init__(self, image, cutoff: int):
        self.img, self.store, self.trees = image, image.store, image.trees
        self.bits = image.geo.cluster_bits
        self.cutoff = cutoff
        self.memo: dict[int, fmt.Pointer] = {}
        self.moved = 0

    def _move(self, ptr: fmt.Pointer, kind: int, plaintext: bytes, changed: bool = False) -> fmt.Pointer:
        """Write ``plaintext`` to a new cluster replacing ``ptr``'s.  A node whose
        children moved (``changed``) must be rewritten wherever there is room; an
        unchanged cluster moves only if that brings it lower."""
        store = self.store
        old = ptr.offset >> self.bits
        new = store.allocate(1)
        if new >= old and not changed:
            # No free cluster below this one: moving would not help.
            store.set_count(new, 0)
            store._release(new)
            return ptr
        new_ptr = store.write_cluster(new, kind, plaintext)
        # Every parent of the old cluster is redirected here (memo), so the
        # count moves over unchanged and the old cluster is freed.
        store.set_count(new, store.count(old))
        store.set_count(old, 0)
        store.freed.add(old)
        self.moved += 1
        return new_ptr

    def _done(self, old: fmt.Pointer, new: fmt.Pointer) -> fmt.Pointer:
        self.memo[old.offset >> self.bits] = new
        return new

    def data(self, ptr: fmt.Pointer, kind=fmt.KIND_DATA) -> fmt.Pointer:
        if ptr.is_null:
            return ptr
        hit = self.memo.get(ptr.offset >> self.bits)
        if hit is not None:
            return hit
        if ptr.offset >> self.bits < self.cutoff:
            return self._done(ptr, ptr)
        return self._done(ptr, self._move(ptr, kind, self.store.read_raw(ptr, kind)))

    def cluster_map(self, ptr: fmt.Pointer, depth: int, data_kind=fmt.KIND_DATA) -> fmt.Pointer:
        if depth == 0 or ptr.is_null:
            return self.data(ptr, data_kind)
        hit = self.memo.get(ptr.offset >> self.bits)
        if hit is not None:
            return hit
        children = self.trees.map_node(ptr)
        moved = [self.cluster_map(c, depth - 1, data_kind) for c in children]
        changed = moved != list(children)
        if not changed and ptr.offset >> self.bits < self.cutoff:
            return self._done(ptr, ptr)
        return self._done(ptr, self._move(ptr, fmt.KIND_MAP, fmt.encode_pointers(moved, self.img.geo), changed))

    def directory(self, ptr: fmt.Pointer, level: int) -> fmt.Pointer:
        hit = self.memo.get(ptr.offset >> self.bits)
        if hit is not None:
            return hit
        node = self.trees.dir_node(ptr, level)
        if level == 0:
            items = [e if e.inline is not None else replace(e, root=self.cluster_map(e.root, e.depth))
                     for e in node.items]
        else:
            items = [replace(b, child=self.directory(b.child, level - 1)) for b in node.items]
        changed = items != list(node.items)
        if not changed and ptr.offset >> self.bits < self.cutoff:
            return self._done(ptr, ptr)
        return self._done(ptr, self._move(ptr, fmt.KIND_DIR, fmt.encode_dir_node(level, items, self.img.geo),
                                          changed))

    def refcount_tree(self) -> None:
        """Copy refcount nodes above the cutoff; the commit's fixpoint places them low."""
        store, geo = self.store, self.img.geo

        def walk(ptr, level, k):
            if ptr.is_null:
                return
            if level == 1 and store.prune_refcount_leaf(k):
                self.moved += 1
                return
            if ptr.offset >> self.bits >= self.cutoff:
                store._ref_path_node(level, k)
            if level > 1:
                for j, child in enumerate(self.trees.map_node(ptr, fmt.KIND_REFINDEX)):
                    walk(child, level - 1, k * geo.fanout + j)

        if store._ref_root_ptr is not None:  # the tree as this pass left it (maybe one level less)
            walk(store._ref_root_ptr, store.refcount_depth, 0)


def _dead_refcount_blocks(image) -> bool:
    """True if some refcount block lies wholly past the image's end."""
    slot, geo = image.slot, image.geo
    if slot.refcount_depth < 2:
        return False
    first_dead = -(-slot.image_clusters // geo.counts_per_block)
    covered = geo.refcount_coverage(slot.refcount_depth) // geo.counts_per_block
    return any(image.store._durable_ref_pointer(k) is not None for k in range(first_dead, covered))


def _collapsible(image) -> bool:
    slot, geo = image.slot, image.geo
    return slot.refcount_depth > 1 and geo.refcount_coverage(slot.refcount_depth - 1) >= slot.image_clusters


def _live_clusters(image) -> tuple[int, int]:
    """(number of clusters in use, index of the highest one + 1)."""
    store = image.store
    live, top = 0, 0
    for c in range(image.slot.image_clusters):
        if store.durable_count(c):
            live += 1
            top = c + 1
    return live, top


def compact_image(image, progress=None) -> dict:
    """Compact ``image`` (open read-write, no transaction pending).

    Returns:
        {"before": bytes, "after": bytes, "passes": n, "moved": clusters moved}.

    Raises:
        NvboxError: ``usage.argument`` if the image is not clean (run check and
        repair first), or inside a transaction.
    """
    image._check_writable()
    if image._txn_depth:
        raise_code("usage.argument", "compact commits on its own; run it outside a transaction")
    result = check_image(image)
    if result.verdict != "clean":
        raise_code("usage.argument", f"the image is not clean ({result.verdict}); run check -r first")
    dev = image.store.dev
    before = dev.size()
    passes = moved = 0
    try:
        for passes in range(1, _MAX_PASSES + 1):
            image.store.scan_limit = None   # a pass needs every free cluster below the cutoff
            live, top = _live_clusters(image)
            if top <= live and image.slot.image_clusters <= top and not _dead_refcount_blocks(image) \
                    and not _collapsible(image):
                passes -= 1
                break
            old_clusters = image.slot.image_clusters
            reloc = _Relocator(image, live)
            with image._change():
                slot, state = image.slot, image.state
                if image.store.collapse_refcount_root():
                    reloc.moved += 1
                if state.dir_depth:
                    state.dir_root = reloc.directory(state.dir_root, state.dir_depth - 1)
                if slot.snapshot_count:
                    snaps = image._snapshot_list()
                    image._snapshots = [replace(s, dir_root=reloc.directory(s.dir_root, s.dir_depth - 1))
                                        if s.dir_depth else s for s in snaps]
                    image._snap_dirty = True   # rewritten low, with the new roots
                if not slot.keyslots.is_null:
                    new_keyslots = reloc.data(slot.keyslots, 0)
                    if new_keyslots != slot.keyslots:
                        image._keyslots_dirty = lambda store, p=new_keyslots: p
                reloc.refcount_tree()
                image._shrink = True
            moved += reloc.moved
            image._truncate_file()
            if progress:
                progress(passes, _MAX_PASSES)
            if image.slot.image_clusters >= old_clusters and not reloc.moved:
                break
    finally:
        image.store.scan_limit = _SCAN_BLOCKS
    return {"before": before, "after": dev.size(), "passes": passes, "moved": moved,
            "image_clusters": image.slot.image_clusters}
