"""Verification and repair (spec section 13).

``check`` visits every cluster reachable from the active commit slot exactly
once, verifies each structure, and computes what every cluster's count should
be: one for each pointer held by a visited node (R-ref-6).  Comparing that with
the refcount tree gives leaks (count too high: wasted space) and under-counts
(count too low: the allocator could hand out live data, so corruption).

Problems are collected, not raised, so one run reports all of them.  Repair
rewrites the refcount tree from the computed counts in one commit, and refuses
when anything other than counts is wrong (R-check-2).
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

from . import _format as fmt
from .errors import NvboxError, raise_code

__all__ = ["CheckResult", "check_image", "repair_image", "EXIT_CLEAN", "EXIT_CORRUPT", "EXIT_LEAKS",
           "EXIT_FAILED", "EXIT_UNSUPPORTED"]

EXIT_CLEAN, EXIT_FAILED, EXIT_CORRUPT, EXIT_LEAKS, EXIT_UNSUPPORTED = 0, 1, 2, 3, 63

_KIND_NAMES = {fmt.KIND_DATA: "data", fmt.KIND_MAP: "map", fmt.KIND_REFBLOCK: "refcount block",
               fmt.KIND_REFINDEX: "refcount index", fmt.KIND_DIR: "directory", fmt.KIND_SNAPDATA: "snapshot table",
               0: "key slots"}


@dataclass
class CheckResult:
    corruptions: list = field(default_factory=list)   # {"code", "message", "offset"?}
    leaks: list = field(default_factory=list)         # {"cluster", "count", "expected"}
    refcount_errors: list = field(default_factory=list)  # under-counts: {"cluster", "count", "expected"}
    clusters_checked: int = 0
    image_clusters: int = 0
    expected: dict = field(default_factory=dict, repr=False)
    repaired: list = field(default_factory=list)

    @property
    def structural(self) -> list:
        return self.corruptions

    @property
    def verdict(self) -> str:
        if self.corruptions or self.refcount_errors:
            return "corrupt"
        return "leaks" if self.leaks else "clean"

    @property
    def exit_code(self) -> int:
        return {"clean": EXIT_CLEAN, "leaks": EXIT_LEAKS, "corrupt": EXIT_CORRUPT}[self.verdict]

    def to_json(self) -> dict:
        return {
            "verdict": self.verdict,
            "corruptions": self.corruptions,
            "refcount_errors": self.refcount_errors,
            "leaks": self.leaks,
            "leaked_clusters": len(self.leaks),
            "clusters_checked": self.clusters_checked,
            "image_clusters": self.image_clusters,
            "repaired": self.repaired,
        }


class _Walker:
    def __init__(self, image, progress=None, on_visit=None):
        self.img = image
        self.store = image.store
        self.trees = image.trees
        self.geo = image.geo
        self.result = CheckResult(image_clusters=image.slot.image_clusters)
        self.expected = array("I", bytes(4 * image.slot.image_clusters))
        self.seen: dict[int, tuple] = {}
        self.entry_counts: dict[int, int] = {}
        self.progress = progress
        self.on_visit = on_visit   # (cluster, kind, what) for each cluster reached first

    def problem(self, code, message, offset=None):
        item = {"code": code, "message": message}
        if offset is not None:
            item["offset"] = offset
        self.result.corruptions.append(item)

    def ref(self, ptr, kind, level, what) -> bool:
        """Count one reference to ``ptr``; True if the caller should descend into it."""
        if ptr.is_null:
            return False
        try:
            fmt.check_pointer(ptr, self.geo, self.img.slot.image_clusters)
        except NvboxError as exc:
            self.problem(exc.code, f"{what}: {exc.message}", ptr.offset)
            return False
        idx = ptr.offset >> self.geo.cluster_bits
        self.expected[idx] += 1
        prev = self.seen.get(idx)
        if prev is not None:
            if prev != (kind, level):
                self.problem("pointer.cycle",
                             f"{what}: cluster {idx} is reached as {_KIND_NAMES[kind]} level {level} "
                             f"and as {_KIND_NAMES[prev[0]]} level {prev[1]}", ptr.offset)
            return False
        self.seen[idx] = (kind, level)
        if self.on_visit is not None:
            self.on_visit(idx, kind, what)
        self.result.clusters_checked += 1
        if self.progress and self.result.clusters_checked % 1024 == 0:
            self.progress(self.result.clusters_checked, self.result.image_clusters)
        return True

    def read(self, ptr, kind, what):
        try:
            return self.store.read_raw(ptr, kind)
        except NvboxError as exc:
            self.problem(exc.code, f"{what}: {exc.message}", ptr.offset)
            return None

    # -- structures ------------------------------------------------------------

    def refcount_tree(self, ptr, level, first_block=0):
        """The refcount subtree at ``level`` whose first block is block ``first_block``."""
        kind = fmt.KIND_REFBLOCK if level == 1 else fmt.KIND_REFINDEX
        if not self.ref(ptr, kind, level, "refcount tree"):
            return
        raw = self.read(ptr, kind, "refcount tree")
        if raw is None:
            return
        if level == 1:
            # Blocks that straddle the image's end are checked with the counts
            # (_compare_counts); one wholly past it must count nothing (R-ref-7).
            per = self.geo.counts_per_block
            if first_block * per >= self.img.slot.image_clusters and any(fmt.decode_refblock(raw)):
                self.problem("refcount.tree", f"refcount block {first_block} lies past the image's end "
                                              "and counts clusters", ptr.offset)
            return
        try:
            children = fmt.decode_pointers(raw, self.geo)
        except NvboxError as exc:
            self.problem(exc.code, f"refcount index node: {exc.message}", ptr.offset)
            return
        span = self.geo.fanout ** (level - 2)   # blocks under each child
        for i, ch in enumerate(children):
            self.refcount_tree(ch, level - 1, first_block + i * span)

    def cluster_map(self, ptr, depth, size, what, kind=fmt.KIND_MAP, data_kind=fmt.KIND_DATA, base=0):
        """A cluster map subtree whose root is at ``depth`` covering clusters from ``base``."""
        geo = self.geo
        cs = geo.cluster_size
        n = -(-size // cs)
        if depth == 0:
            if not self.ref(ptr, data_kind, 0, what):
                return
            if base >= n:
                self.problem("map.tail", f"{what}: data cluster {base} beyond the blob's size", ptr.offset)
            raw = self.read(ptr, data_kind, what)
            if raw is not None and base == n - 1 and size % cs and any(raw[size % cs:]):
                self.problem("map.tail", f"{what}: non-zero bytes after the blob's end", ptr.offset)
            return
        if not self.ref(ptr, kind, depth, what):
            return
        raw = self.read(ptr, kind, what)
        if raw is None:
            return
        try:
            children = fmt.decode_pointers(raw, geo)
        except NvboxError as exc:
            self.problem(exc.code, f"{what}: {exc.message}", ptr.offset)
            return
        span = geo.fanout ** (depth - 1)
        for j, ch in enumerate(children):
            if ch.is_null:
                continue
            if base + j * span >= n:
                self.problem("map.tail", f"{what}: pointer beyond the blob's size", ch.offset)
            self.cluster_map(ch, depth - 1, size, what, kind, data_kind, base + j * span)

    def directory(self, ptr, level, what, low=b"", high=None) -> int:
        """Walk a directory subtree; return its entry count."""
        if not self.ref(ptr, fmt.KIND_DIR, 100 + level, what):
            # Shared with a tree already walked: its entries were counted there.
            return 0 if ptr.is_null else self.entry_counts.get(ptr.offset, 0)
        raw = self.read(ptr, fmt.KIND_DIR, what)
        if raw is None:
            return 0
        n = self._directory_node(ptr, raw, level, what, low, high)
        self.entry_counts[ptr.offset] = n
        return n

    def _directory_node(self, ptr, raw, level, what, low, high) -> int:
        try:
            node = fmt.decode_dir_node(raw, self.geo, level)
        except NvboxError as exc:
            self.problem(exc.code, f"{what}: {exc.message}", ptr.offset)
            return 0
        keys = node.keys()
        for k in keys:
            if k and (k < low or (high is not None and k >= high)):
                self.problem("directory.order", f"{what}: a key lies outside its branch's range", ptr.offset)
                break
        if level == 0:
            for e in node.items:
                if e.inline is None:
                    self.cluster_map(e.root, e.depth, e.size, f"{what} blob {e.name!r}")
            return len(node.items)
        total = 0
        for i, b in enumerate(node.items):
            lo = b.low_key or low
            hi = node.items[i + 1].low_key if i + 1 < len(node.items) else high
            total += self.directory(b.child, level - 1, what, lo, hi)
        return total


def check_image(image, progress=None, on_visit=None) -> CheckResult:
    """Verify every structure and count of ``image`` (open, any mode).

    ``on_visit(cluster, kind, what)`` is called once per reachable cluster, in
    walk order (the active directory first, then snapshots): ``nvbox map`` uses it.
    """
    image._check_open()
    w = _Walker(image, progress, on_visit)
    slot, geo = image.slot, image.geo
    for c in range(geo.header_clusters):
        w.expected[c] += 1
    w.refcount_tree(slot.refcount_root, slot.refcount_depth)
    if slot.dir_depth:
        n = w.directory(slot.dir_root, slot.dir_depth - 1, "directory")
        if n != slot.blob_count and not w.result.corruptions:
            w.problem("directory.entry", f"blob_count is {slot.blob_count} but the directory holds {n}")
    if slot.snaptable_size:
        w.cluster_map(slot.snaptable_root, slot.snaptable_depth, slot.snaptable_size, "snapshot table",
                      data_kind=fmt.KIND_SNAPDATA)
        try:
            snaps = image._snapshot_list()
        except NvboxError as exc:
            w.problem(exc.code, f"snapshot table: {exc.message}")
            snaps = []
        for s in snaps:
            if s.dir_depth:
                n = w.directory(s.dir_root, s.dir_depth - 1, f"snapshot {s.name!r}")
                if n != s.blob_count and not w.result.corruptions:
                    w.problem("snapshot.table", f"snapshot {s.name!r}: blobCount {s.blob_count}, holds {n}")
    if not slot.keyslots.is_null and w.ref(slot.keyslots, 0, 0, "key slots"):
        raw = w.read(slot.keyslots, 0, "key slots")
        if raw is not None:
            try:
                fmt.decode_keyslots(raw)
            except NvboxError as exc:
                w.problem(exc.code, f"key slots: {exc.message}", slot.keyslots.offset)
    _compare_counts(w)
    w.result.expected = w.expected
    return w.result


def _compare_counts(w: _Walker) -> None:
    store, geo = w.store, w.geo
    total = w.img.slot.image_clusters
    hint = w.img.slot.alloc_hint
    per = geo.counts_per_block
    for k in range(-(-total // per)):
        try:
            block = store._durable_block(k)
        except NvboxError as exc:
            w.problem(exc.code, f"refcount block {k}: {exc.message}")
            return
        base = k * per
        for j in range(min(per, total - base)):
            c = base + j
            actual = block[j] if block is not None else 0
            want = w.expected[c]
            if actual == 0 and want == 0 and geo.header_clusters <= c < hint:
                # R-alloc-6: a free cluster below alloc_hint would never be reused.
                w.result.leaks.append({"cluster": c, "count": 0, "expected": 0, "reason": "below alloc_hint"})
            if actual == want:
                continue
            entry = {"cluster": c, "count": actual, "expected": want}
            (w.result.leaks if actual > want else w.result.refcount_errors).append(entry)
        if block is not None and base + per > total and any(block[total - base:]):
            w.problem("refcount.tree", f"refcount block {k} counts clusters beyond the image's end")


def repair_image(image, mode: str = "all", progress=None) -> CheckResult:
    """Fix leaks (``mode='leaks'``) or leaks and refcount errors (``'all'``) in one
    commit, after a full check.  Returns the result of the check that ran first,
    with ``repaired`` listing what changed.

    Raises:
        NvboxError: ``usage.argument`` when structural corruption makes a safe
        repair impossible (nothing is changed then).
    """
    if mode not in ("leaks", "all"):
        raise_code("usage.argument", "repair mode must be 'leaks' or 'all'")
    image._check_writable()
    result = check_image(image, progress)
    if result.corruptions:
        raise_code("usage.argument", "structural corruption: repair would risk data; nothing was changed "
                                     f"({result.corruptions[0]['code']}: {result.corruptions[0]['message']})")
    fixes = list(result.leaks)
    if mode == "all":
        fixes += result.refcount_errors
    if not fixes:
        return result
    store = image.store
    with image._change():
        # Rescan from the start: a wrong alloc_hint is one of the things repaired.
        store._scan_from, store._scan_block = image.geo.header_clusters, 0
        # Every count is set before anything is allocated, so the commit's own
        # allocations can only take clusters that are really free.
        for f in fixes:
            store.set_count(f["cluster"], f["expected"])
            if f["expected"] == 0:
                store._add_candidate(f["cluster"])
    result.repaired = [dict({"cluster": f["cluster"], "from": f["count"], "to": f["expected"]},
                            **({"reason": f["reason"]} if "reason" in f else {})) for f in fixes]
    return result
