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
from ._visit import Visitor
from .errors import NvboxError, raise_code

__all__ = ["CheckResult", "check_image", "damaged_slots", "repair_image", "EXIT_CLEAN", "EXIT_CORRUPT", "EXIT_LEAKS",
           "EXIT_FAILED", "EXIT_UNSUPPORTED"]

EXIT_CLEAN, EXIT_FAILED, EXIT_CORRUPT, EXIT_LEAKS, EXIT_UNSUPPORTED = 0, 1, 2, 3, 63

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
    """Counts the references the tree visitor follows and collects what it finds wrong."""

    def __init__(self, image, progress=None):
        self.img = image
        self.store = image.store
        self.geo = image.geo
        self.result = CheckResult(image_clusters=image.slot.image_clusters)
        self.expected = array("I", bytes(4 * image.slot.image_clusters))
        self.progress = progress
        self.visitor = Visitor(self.store.read_raw, self.geo, image.slot.image_clusters,
                               on_problem=self.problem, read_leaves=True)

    def problem(self, code, message, offset=None, **details):
        item = {"code": code, "message": message}
        if offset is not None:
            item["offset"] = offset
        item.update(details)
        self.result.corruptions.append(item)

    def walk(self, slot) -> None:
        """One count per pointer held by a reachable node (R-ref-6), and one
        for each header-area cluster (R-ref-3)."""
        result, expected = self.result, self.expected
        for reached in self.visitor.slot(slot):
            expected[reached.cluster] += 1
            if reached.first and reached.kind != "header":
                result.clusters_checked += 1
                if self.progress and result.clusters_checked % 1024 == 0:
                    self.progress(result.clusters_checked, result.image_clusters)


def check_image(image, progress=None) -> CheckResult:
    """Verify every structure and count of ``image`` (open, any mode)."""
    image.check_open()
    w = _Walker(image, progress)
    for d in damaged_slots(image):
        w.problem("slot.damaged", d.pop("message"), d.pop("offset"), **d)
    w.walk(image.slot)
    _compare_counts(w)
    w.result.expected = w.expected
    return w.result


def damaged_slots(image) -> list[dict]:
    """The commit slot other than the one in use when it is neither valid nor all
    zeros (R-check-3): ``{"slot", "generation", "active_slot", "active_generation",
    "reason", "offset", "message"}``, ``generation`` as its bytes say (unverified).

    The reader's choice does not change (R-slot-3): such a slot may have held the
    newest commit (a torn slot write, or an attacker who broke it, section 10.3),
    and this report is the only way a user learns that commit is gone.  A slot of
    zeros was never written and is not reported.
    """
    image.check_open()
    area = image.dev.read(0, fmt.HEADER_AREA)
    active = 0 if image.slot.generation % 2 else 1
    out = []
    for index, off in enumerate(fmt.SLOT_OFFSETS):
        body = area[off:off + fmt.SECTOR]
        if index == active or not fmt.nonzero(body):
            continue
        why = fmt.slot_fault(body, index)
        if why is None and image.cipher is not None and not image.cipher.verify_slot(body):
            why = "its MAC does not verify under the image's key"   # R-slot-6
        if why is None:
            continue
        name, generation = "AB"[index], fmt.slot_generation(body)
        out.append({
            "slot": name, "generation": generation, "active_slot": "AB"[active],
            "active_generation": image.slot.generation, "reason": why, "offset": off,
            "message": f"commit slot {name} is damaged ({why}); its bytes say generation {generation}, and the "
                       f"image opened at generation {image.slot.generation} from slot {'AB'[active]}: if slot "
                       f"{name} held a newer commit, that commit is lost (the next commit overwrites slot {name})"})
    return out


def _compare_counts(w: _Walker) -> None:
    store, geo = w.store, w.geo
    total = w.img.slot.image_clusters
    hint = w.img.slot.alloc_hint
    per = geo.counts_per_block
    for k in range(-(-total // per)):
        try:
            block = store.durable_block(k)
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
        NvboxError: ``repair.refused`` when structural corruption makes a safe
        repair impossible (nothing is changed then).
    """
    if mode not in ("leaks", "all"):
        raise_code("usage.argument", "repair mode must be 'leaks' or 'all'")
    image.check_writable()
    result = check_image(image, progress)
    if result.corruptions:
        raise_code("repair.refused", "structural corruption: repair would risk data; nothing was changed "
                                     f"({result.corruptions[0]['code']}: {result.corruptions[0]['message']})")
    fixes = list(result.leaks)
    if mode == "all":
        fixes += result.refcount_errors
    if not fixes:
        return result
    store = image.store
    with image.transaction():
        image.txn.mark_changed()
        # Rescan from the start: a wrong alloc_hint is one of the things repaired.
        store.rescan_from(0)
        # Every count is set before anything is allocated, so the commit's own
        # allocations can only take clusters that are really free.
        for f in fixes:
            store.correct_count(f["cluster"], f["expected"])
    result.repaired = [dict({"cluster": f["cluster"], "from": f["count"], "to": f["expected"]},
                            **({"reason": f["reason"]} if "reason" in f else {})) for f in fixes]
    return result
