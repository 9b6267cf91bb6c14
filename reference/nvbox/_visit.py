"""The tree visitor: one walk of everything a commit slot reaches (no I/O of its own).

The refcount tree, the directory with its blobs' cluster maps and data, the
snapshot table's map and data, every snapshot's directory, and the key slot
table (spec sections 7-11), each cluster yielded with its kind, level and
owner.  check, compact, the dumper, the cluster map and the example generator
all consume it; clusters are read through the ``read(ptr, kind)`` they pass in
(the store's verified ``read_raw``).
"""

from __future__ import annotations

from typing import NamedTuple

from . import _format as fmt
from .errors import NvboxError, raise_code

Pointer = fmt.Pointer
NULL = fmt.NULL

#: Cluster kinds the visitor reports, with the AEAD kind each is sealed with (R-enc-5).
VISIT_KINDS = {
    "header": None, "refindex": fmt.KIND_REFINDEX, "refblock": fmt.KIND_REFBLOCK, "dir": fmt.KIND_DIR,
    "map": fmt.KIND_MAP, "data": fmt.KIND_DATA, "snapmap": fmt.KIND_MAP, "snapdata": fmt.KIND_SNAPDATA,
    "keyslots": 0,
}
KIND_WORDS = {
    "header": "header area", "refindex": "refcount index", "refblock": "refcount block", "dir": "directory",
    "map": "map", "data": "data", "snapmap": "snapshot table map", "snapdata": "snapshot table",
    "keyslots": "key slots",
}


class Reached(NamedTuple):
    """One pointer the walk followed, or one header-area cluster.

    ``kind``: a key of VISIT_KINDS.  ``level``: refcount level (1 for a block),
    height above the data in a cluster map (0 for data), or directory level.
    ``owner``: "header", "refcount", "active", "snapshot:<name>", "snapshot table"
    or "keys"; ``blob``: the blob a map or data cluster belongs to.  ``index``:
    a refcount node's position in its level (a block's number), the first data
    cluster a map node covers, or 0.  ``first``: False when the cluster was
    reached before through another pointer (its subtree is not walked again).
    ``node``: the decoded node (pointers, ``fmt.DirNode``, key slots; None
    when it could not be read or decoded: the problem is reported and its
    subtree skipped) and ``raw``: its plaintext, when read (nodes always,
    leaves with read_leaves).
    ``where``: the words problems in this subtree are reported with.
    """

    cluster: int
    ptr: Pointer
    kind: str
    level: int
    owner: str
    blob: str | None = None
    index: int = 0
    first: bool = True
    node: object = None
    raw: bytes | None = None
    where: str = ""


class Visitor:
    """Walk every cluster reachable from a commit slot, each subtree once.

    ``read(ptr, kind)`` returns a cluster's verified plaintext (the store's
    ``read_raw``).  Damage is reported through ``on_problem(code, message,
    offset)`` and its subtree skipped; without ``on_problem`` the first problem
    raises its NvboxError.  The walk keeps its own stack (no recursion: map and
    directory depths come from the image) and enters each cluster at most once,
    so its work is bounded by the clusters the file holds times the fanout.

    ``post_order``: a node is yielded after its subtree (compaction rewrites
    parents from their moved children) instead of before it.  ``read_leaves``:
    read data clusters, refcount blocks and the key slot table too (verifying
    their checksums; check and the dumper want that, compaction does not).
    """

    def __init__(self, read, geo: fmt.Geometry, image_clusters: int, on_problem=None,
                 post_order: bool = False, read_leaves: bool = False):
        self.read, self.geo, self.image_clusters = read, geo, image_clusters
        self.on_problem, self.post_order, self.read_leaves = on_problem, post_order, read_leaves
        self.seen: dict[int, tuple] = {}        # cluster -> (kind, level) it was first reached as
        self.dir_entries: dict[int, int] = {}    # directory cluster -> entries below it
        self.problems = 0
        self.snapshots: list = []                # the snapshot table's records, once walked
        self.snapshot_table_raw: bytes | None = None   # and its DER bytes

    # -- reporting --------------------------------------------------------------------------

    def problem(self, code: str, message: str, offset: int | None = None) -> None:
        self.problems += 1
        if self.on_problem is None:
            raise_code(code, message)
        self.on_problem(code, message, offset)

    def _failed(self, exc, where: str, offset: int | None) -> None:
        self.problem(exc.code, f"{where}: {exc.message}", offset)

    # -- the whole graph ------------------------------------------------------------------------

    def slot(self, slot: fmt.Slot):
        """Everything ``slot`` reaches, in the order check reports it: header
        area, refcount tree, active directory, snapshot table, snapshots'
        directories, key slot table."""
        for c in range(self.geo.header_clusters):
            yield Reached(c, NULL, "header", 0, "header")
        yield from self.refcount_tree(slot.refcount_root, slot.refcount_depth)
        if slot.dir_depth:
            yield from self.directory(slot.dir_root, slot.dir_depth, "active", slot.blob_count)
        elif slot.blob_count:
            # An empty directory holds no entries (R-dir-7), whatever blob_count says.
            self.problem("directory.entry", f"blob_count is {slot.blob_count} but the directory is empty")
        if slot.snaptable_size:
            yield from self.snapshot_table(slot)
            for s in self.snapshots:
                if s.dir_depth:
                    yield from self.directory(s.dir_root, s.dir_depth, f"snapshot:{s.name}", s.blob_count)
                elif s.blob_count:
                    self.problem("snapshot.table", f"snapshot {s.name!r}: blobCount {s.blob_count}, "
                                                   "its directory is empty")
        if not slot.keyslots.is_null:
            yield from self.keyslots(slot.keyslots)

    # -- one pointer ----------------------------------------------------------------------------

    def _reach(self, ptr: Pointer, kind: str, level: int, where: str):
        """(cluster, first) for a non-null pointer, or None when it is invalid."""
        try:
            fmt.check_pointer(ptr, self.geo, self.image_clusters)
        except NvboxError as exc:
            self._failed(exc, where, ptr.offset)
            return None
        idx = ptr.offset >> self.geo.cluster_bits
        prev = self.seen.get(idx)
        if prev is None:
            self.seen[idx] = (kind, level)
            return idx, True
        if prev != (kind, level):
            self.problem("pointer.cycle", f"{where}: cluster {idx} is reached as {KIND_WORDS[kind]} level {level} "
                                          f"and as {KIND_WORDS[prev[0]]} level {prev[1]}", ptr.offset)
        return idx, False

    def _read(self, ptr: Pointer, kind: str, where: str):
        try:
            return self.read(ptr, VISIT_KINDS[kind])
        except NvboxError as exc:
            self._failed(exc, where, ptr.offset)
            return None

    def _pointers(self, raw, ptr: Pointer, where: str):
        try:
            return fmt.decode_pointers(raw, self.geo)
        except NvboxError as exc:
            self._failed(exc, where, ptr.offset)
            return None

    # -- the structures -------------------------------------------------------------------------
    #
    # Each walk is a loop over a stack of ("enter", ...) and ("leave", Reached)
    # frames; children are pushed in reverse so they come out in order.

    def _emit(self, stack, reached: Reached):
        """Yield ``reached`` now (pre-order) or when its children are done."""
        if self.post_order:
            stack.append(("leave", reached))
            return ()
        return (reached,)

    def _pointer_tree(self, root: Pointer, depth: int, kind_of, enter, owner: str, blob, where: str):
        """The loop the refcount tree and the cluster maps share (nodes of pointers):
        pop a frame; yield a node whose children are done (post-order); check a
        pointer and yield a repeat, or hand a first reach to ``enter(stack, ptr,
        cluster, kind, level, position)``, which yields its records and pushes its
        children as ("enter", pointer, level, position) frames."""
        stack = [("enter", root, depth, 0)]
        while stack:
            frame = stack.pop()
            if frame[0] == "leave":
                yield frame[1]
                continue
            _, ptr, level, pos = frame
            if ptr.is_null:
                continue
            kind = kind_of(level)
            hit = self._reach(ptr, kind, level, where)
            if hit is None:
                continue
            idx, first = hit
            if first:
                yield from enter(stack, ptr, idx, kind, level, pos)
            else:
                yield Reached(idx, ptr, kind, level, owner, blob, pos, first=False, where=where)

    def refcount_tree(self, root: Pointer, depth: int, owner: str = "refcount"):
        F, per = self.geo.fanout, self.geo.counts_per_block
        where = "refcount tree"

        def enter(stack, ptr, idx, kind, level, k):
            if level == 1:
                raw = self._read(ptr, kind, where) if self.read_leaves else None
                if raw is not None and k * per >= self.image_clusters and fmt.nonzero(raw):
                    # Blocks straddling the end are the count comparison's; one wholly past it
                    # must count nothing (R-ref-7).
                    self.problem("refcount.tree", f"refcount block {k} lies past the image's end "
                                                  "and counts clusters", ptr.offset)
                yield Reached(idx, ptr, kind, 1, owner, index=k, raw=raw, where=where)
                return
            raw = self._read(ptr, kind, where)
            children = None if raw is None else self._pointers(raw, ptr, "refcount index node")
            yield from self._emit(stack, Reached(idx, ptr, kind, level, owner, index=k, node=children, raw=raw,
                                                 where=where))
            for j in range(len(children or ()) - 1, -1, -1):
                stack.append(("enter", children[j], level - 1, k * F + j))

        return self._pointer_tree(root, depth, lambda level: "refblock" if level == 1 else "refindex", enter,
                                  owner, None, where)

    def cluster_map(self, root: Pointer, depth: int, size: int, owner: str, blob: str | None = None,
                    where: str = "", snapshot_table: bool = False):
        """A cluster map of ``depth`` levels over ``size`` bytes (R-map-1..3)."""
        geo = self.geo
        cs, F = geo.cluster_size, geo.fanout
        n = -(-size // cs)
        node_kind, data_kind = ("snapmap", "snapdata") if snapshot_table else ("map", "data")

        def enter(stack, ptr, idx, kind, level, base):
            if level == 0:
                if base >= n:
                    self.problem("map.tail", f"{where}: data cluster {base} beyond the blob's size", ptr.offset)
                raw = self._read(ptr, kind, where) if self.read_leaves or snapshot_table else None
                if raw is not None and base == n - 1 and size % cs and fmt.nonzero(raw[size % cs:]):
                    self.problem("map.tail", f"{where}: non-zero bytes after the blob's end", ptr.offset)
                yield Reached(idx, ptr, kind, 0, owner, blob, base, raw=raw, where=where)
                return
            raw = self._read(ptr, kind, where)
            children = None if raw is None else self._pointers(raw, ptr, where)
            yield from self._emit(stack, Reached(idx, ptr, kind, level, owner, blob, base, node=children,
                                                 raw=raw, where=where))
            span = F ** (level - 1)
            for j in range(len(children or ()) - 1, -1, -1):
                ch = children[j]
                if ch.is_null:
                    continue
                if base + j * span >= n:
                    self.problem("map.tail", f"{where}: pointer beyond the blob's size", ch.offset)
                stack.append(("enter", ch, level - 1, base + j * span))

        return self._pointer_tree(root, depth, lambda level: data_kind if level == 0 else node_kind, enter,
                                  owner, blob, where)

    def directory(self, root: Pointer, depth: int, owner: str, blob_count: int | None = None,
                  maps: bool = True):
        """A directory tree of ``depth`` levels and (with ``maps``) every blob's map below it.

        Checks the key ranges of R-dir-2 and, given ``blob_count``, that the
        tree holds that many entries (when nothing was found wrong so far:
        damage makes the count meaningless)."""
        label = ("directory" if owner == "active" else
                 f"snapshot {owner.partition(':')[2]!r}" if owner.startswith("snapshot:") else owner)
        stack = [("enter", root, depth - 1, b"", None, None)]
        while stack:
            frame = stack.pop()
            if frame[0] == "leave":
                yield frame[1]
                continue
            if frame[0] == "count":
                _, idx, kids = frame
                self.dir_entries[idx] = sum(self.dir_entries.get(k, 0) for k in kids)
                continue
            _, ptr, level, low, high, _ = frame
            hit = self._reach(ptr, "dir", level, label)
            if hit is None:
                continue
            idx, first = hit
            if not first:
                yield Reached(idx, ptr, "dir", level, owner, first=False, where=label)
                continue
            raw = self._read(ptr, "dir", label)
            node = None
            if raw is not None:
                try:
                    node = fmt.decode_dir_node(raw, self.geo, level)
                except NvboxError as exc:
                    self._failed(exc, label, ptr.offset)
            if node is None:    # reported; the reference still counts, the subtree is lost
                yield Reached(idx, ptr, "dir", level, owner, raw=raw, where=label)
                continue
            for key in node.keys():
                if key and (key < low or (high is not None and key >= high)):
                    self.problem("directory.order", f"{label}: a key lies outside its branch's range", ptr.offset)
                    break
            reached = Reached(idx, ptr, "dir", level, owner, node=node, raw=raw, where=label)
            if level == 0:
                self.dir_entries[idx] = len(node.items)
                if not self.post_order:
                    yield reached
                for e in node.items if maps else ():
                    if e.inline is None:
                        yield from self.cluster_map(e.root, e.depth, e.size, owner, e.name,
                                                    f"{label} blob {e.name!r}")
                if self.post_order:
                    yield reached
                continue
            yield from self._emit(stack, reached)
            items = node.items
            stack.append(("count", idx, [b.child.offset >> self.geo.cluster_bits for b in items]))
            for i in range(len(items) - 1, -1, -1):
                lo = items[i].low_key or low
                hi = items[i + 1].low_key if i + 1 < len(items) else high
                stack.append(("enter", items[i].child, level - 1, lo, hi, None))
        if blob_count is not None and not self.problems:
            held = self.dir_entries.get(root.offset >> self.geo.cluster_bits, 0)
            if held != blob_count:
                if owner == "active":
                    self.problem("directory.entry", f"blob_count is {blob_count} but the directory holds {held}")
                else:
                    self.problem("snapshot.table", f"{label}: blobCount {blob_count}, holds {held}")

    def snapshot_table(self, slot: fmt.Slot):
        """The snapshot table's map and data; afterwards ``snapshots`` holds its records."""
        where = "snapshot table"
        cs = self.geo.cluster_size
        data = {}
        problems_before = self.problems
        for r in self.cluster_map(slot.snaptable_root, slot.snaptable_depth, slot.snaptable_size,
                                  "snapshot table", None, where, snapshot_table=True):
            if r.kind == "snapdata" and r.raw is not None:
                data[r.index] = r.raw
            yield r
        self.snapshots, self.snapshot_table_raw = [], None
        if self.problems != problems_before:
            return      # reported already; the records cannot be read
        hole = bytes(cs)    # a null data pointer reads as zeros (R-map-2)
        table = b"".join(data.get(i, hole) for i in range(-(-slot.snaptable_size // cs)))[:slot.snaptable_size]
        self.snapshot_table_raw = table
        try:
            self.snapshots = fmt.decode_snapshot_table(table, self.geo, slot.snapshot_count, slot.next_snapshot_id)
        except NvboxError as exc:
            self._failed(exc, where, None)

    def keyslots(self, ptr: Pointer):
        where = "key slots"
        hit = self._reach(ptr, "keyslots", 0, where)
        if hit is None:
            return
        idx, first = hit
        raw = self._read(ptr, "keyslots", where) if first and self.read_leaves else None
        slots = None
        if raw is not None:
            try:
                slots = fmt.decode_keyslots(raw)
            except NvboxError as exc:
                self._failed(exc, where, ptr.offset)
        yield Reached(idx, ptr, "keyslots", 0, "keys", first=first, node=slots, raw=raw, where=where)
