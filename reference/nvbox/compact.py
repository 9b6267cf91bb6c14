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
from ._visit import Visitor
from .check import check_image
from .errors import raise_code

__all__ = ["PROGRESS_SCALE", "compact_image"]

_MAX_PASSES = 8
# compact_image reports progress on this scale: the check that comes first fills
# the first half; pass k then fills half of what is left (the number of passes
# is not known ahead, and most images need one or two), each pass by the share
# of the live clusters its walk has placed.
PROGRESS_SCALE = 1 << 16


class _Progress:
    """The (done, total) callback of compact_image, on PROGRESS_SCALE."""

    def __init__(self, report):
        self.report = report
        self.start, self.width = 0, PROGRESS_SCALE // 2

    def check(self, done, total) -> None:
        self._at(done / total if total else 1.0)

    def next_pass(self) -> None:
        self.start += self.width
        self.width = (PROGRESS_SCALE - self.start) // 2

    def placed(self, n: int, live: int) -> None:
        self._at(min(1.0, n / live) if live else 1.0)

    def _at(self, fraction: float) -> None:
        if self.report is not None:
            self.report(self.start + int(self.width * fraction), PROGRESS_SCALE)


class _Relocator:
    """One pass's moves, driven by the tree visitor in post-order: every child
    is placed before its parent, so a parent is rewritten once, with its
    children's new pointers.  ``memo`` maps each cluster reached to its new
    pointer (itself when it stays), so a cluster shared by several parents (a
    snapshot and the active state) moves once, and its count moves with it."""

    def __init__(self, image, cutoff: int, on_placed=None):
        self.img, self.store = image, image.store
        self.on_placed = on_placed      # called with the number of clusters placed so far
        self.bits = image.geo.cluster_bits
        self.cutoff = cutoff
        self.memo: dict[int, fmt.Pointer] = {}
        self.moved = 0
        # One walk for every directory of the pass: what one tree reached, the next finds in memo.
        self.walk = Visitor(self.store.read_raw, image.geo, image.slot.image_clusters, post_order=True)

    def _move(self, ptr: fmt.Pointer, kind: int, plaintext: bytes, changed: bool = False) -> fmt.Pointer:
        """Write ``plaintext`` to a new cluster replacing ``ptr``'s.  A node whose
        children moved (``changed``) must be rewritten wherever there is room; an
        unchanged cluster moves only if that brings it lower."""
        store = self.store
        old = ptr.offset >> self.bits
        new = store.allocate(1)
        if new >= old and not changed:
            # No free cluster below this one: moving would not help.
            store.release(new)
            return ptr
        new_ptr = store.write_cluster(new, kind, plaintext)
        # Every parent of the old cluster is redirected here (memo), so the
        # count moves over unchanged and the old cluster is freed.
        store.set_count(new, store.count(old))
        store.release(old)
        self.moved += 1
        return new_ptr

    def _done(self, old: fmt.Pointer, new: fmt.Pointer) -> fmt.Pointer:
        self.memo[old.offset >> self.bits] = new
        if self.on_placed is not None and len(self.memo) % 1024 == 0:
            self.on_placed(len(self.memo))
        return new

    def _new(self, ptr: fmt.Pointer) -> fmt.Pointer:
        """Where a child placed earlier in the walk now is."""
        return ptr if ptr.is_null else self.memo[ptr.offset >> self.bits]

    def data(self, ptr: fmt.Pointer, kind=fmt.KIND_DATA) -> fmt.Pointer:
        """A leaf cluster (data, or the key slot table): moved if at or above the cutoff."""
        if ptr.is_null:
            return ptr
        hit = self.memo.get(ptr.offset >> self.bits)
        if hit is not None:
            return hit
        if ptr.offset >> self.bits < self.cutoff:
            return self._done(ptr, ptr)
        return self._done(ptr, self._move(ptr, kind, self.store.read_raw(ptr, kind)))

    def _node(self, ptr: fmt.Pointer, kind: int, changed: bool, encode) -> None:
        if not changed and ptr.offset >> self.bits < self.cutoff:
            self._done(ptr, ptr)
        else:
            self._done(ptr, self._move(ptr, kind, encode(), changed))

    def directory(self, ptr: fmt.Pointer, level: int) -> fmt.Pointer:
        """Relocate the directory tree whose root (at ``level``) is ``ptr``, its
        blobs' maps and data; return the root's new pointer."""
        geo = self.img.geo
        for r in self.walk.directory(ptr, level + 1, "compaction"):
            if not r.first:
                continue    # placed already (memo)
            if r.kind == "data":
                self.data(r.ptr)
            elif r.kind == "map":
                moved = [self._new(c) for c in r.node]
                self._node(r.ptr, fmt.KIND_MAP, moved != r.node, lambda: fmt.encode_pointers(moved, geo))
            elif r.level == 0:
                items = [e if e.inline is not None else replace(e, root=self._new(e.root)) for e in r.node.items]
                self._node(r.ptr, fmt.KIND_DIR, items != list(r.node.items),
                           lambda: fmt.encode_dir_node(0, items, geo))
            else:
                items = [replace(b, child=self._new(b.child)) for b in r.node.items]
                self._node(r.ptr, fmt.KIND_DIR, items != list(r.node.items),
                           lambda: fmt.encode_dir_node(r.level, items, geo))
        return self._new(ptr)

    def refcount_tree(self) -> None:
        """Copy refcount nodes above the cutoff; the commit's fixpoint places them low."""
        store = self.store
        root = store.committed_refcount_root
        if root is None:
            return
        # The tree as this pass left it (maybe one level less), in pre-order.
        walk = Visitor(store.read_raw, self.img.geo, self.img.slot.image_clusters)
        for r in walk.refcount_tree(root, store.refcount_depth):
            if r.level == 1 and store.prune_refcount_leaf(r.index):
                self.moved += 1
            elif r.cluster >= self.cutoff:
                store.copy_refcount_node(r.level, r.index)


def _dead_refcount_blocks(image) -> bool:
    """True if some refcount block lies wholly past the image's end."""
    slot, geo = image.slot, image.geo
    if slot.refcount_depth < 2:
        return False
    first_dead = -(-slot.image_clusters // geo.counts_per_block)
    covered = geo.refcount_coverage(slot.refcount_depth) // geo.counts_per_block
    return any(image.store.durable_block_pointer(k) is not None for k in range(first_dead, covered))


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
    ``progress(done, total)``, if given, is called as the work goes on (total
    is PROGRESS_SCALE; done grows and ends below it, at the last pass).

    Returns:
        {"before": bytes, "after": bytes, "passes": n, "moved": clusters moved}.

    Raises:
        NvboxError: ``image.not_clean`` if the image is not clean (run check and
        repair first); ``usage.argument`` inside a transaction.
    """
    image.check_writable()
    if image.in_transaction:
        raise_code("usage.argument", "compact commits on its own; run it outside a transaction")
    bar = _Progress(progress)
    result = check_image(image, bar.check)
    # A damaged commit slot (R-check-3) is no reason to refuse: no cluster move touches it, and
    # a pass's commit overwrites it.
    result.corruptions = [p for p in result.corruptions if p["code"] != "slot.damaged"]
    if result.verdict != "clean":
        raise_code("image.not_clean", f"the image is not clean ({result.verdict}); run check -r first")
    dev = image.store.dev
    before = dev.size()
    passes = moved = 0
    scan_limit = image.store.scan_limit
    try:
        for passes in range(1, _MAX_PASSES + 1):
            image.store.scan_limit = None   # a pass needs every free cluster below the cutoff
            live, top = _live_clusters(image)
            if top <= live and image.slot.image_clusters <= top and not _dead_refcount_blocks(image) \
                    and not _collapsible(image):
                passes -= 1
                break
            old_clusters = image.slot.image_clusters
            reloc = _Relocator(image, live, lambda placed, live=live: bar.placed(placed, live))
            with image.transaction():
                slot, txn = image.slot, image.txn
                state = txn.directory
                if image.store.collapse_refcount_root():
                    reloc.moved += 1
                if state.dir_depth:
                    txn.set_directory(reloc.directory(state.dir_root, state.dir_depth - 1), state.dir_depth,
                                      state.blob_count)
                if slot.snapshot_count:
                    snaps = image.snapshot_records()
                    # Rewritten low, with the new roots.
                    txn.set_snapshots([replace(s, dir_root=reloc.directory(s.dir_root, s.dir_depth - 1))
                                       if s.dir_depth else s for s in snaps])
                if not slot.keyslots.is_null:
                    new_keyslots = reloc.data(slot.keyslots, 0)
                    if new_keyslots != slot.keyslots:
                        txn.move_keyslots(new_keyslots)
                reloc.refcount_tree()
                txn.request_shrink()    # the commit cuts the image, then the file
            moved += reloc.moved
            bar.placed(live, live)
            bar.next_pass()
            if image.slot.image_clusters >= old_clusters and not reloc.moved:
                break
    finally:
        image.store.scan_limit = scan_limit
    return {"before": before, "after": dev.size(), "passes": passes, "moved": moved,
            "image_clusters": image.slot.image_clusters}
