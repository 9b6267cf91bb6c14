"""A picture of an image's clusters: what holds each one (``nvbox map``).

Every cluster is classified by the tree visitor's walk (each reachable
cluster is reported once, the active directory first): header area,
refcount tree, directory node, snapshot table, key slots, a blob's data or
cluster map (named), or free.  Clusters whose count is above 1 are shared
(with a snapshot, or between blobs of different snapshots).  The result is
run-length encoded for ``--output json``; ``nvbox.mappicture`` draws it.
"""

from __future__ import annotations

from ._visit import Visitor
from .check import check_image

__all__ = ["cluster_map"]

_CATEGORY = {"header": "header", "refindex": "refcount", "refblock": "refcount", "dir": "directory",
             "snapmap": "snapshot-table", "snapdata": "snapshot-table", "keyslots": "key-slots"}


def _classify(reached) -> tuple[str, str | None]:
    category = _CATEGORY.get(reached.kind)
    if category is not None:
        return category, None
    if reached.owner != "active":
        # The walk covers the active directory first, so a cluster first met in
        # a snapshot's tree is one that only snapshots hold.
        return "snapshot-only", reached.blob
    return "blob", reached.blob


def _skip(code, message, offset) -> None:
    pass


def cluster_map(image, progress=None) -> dict:
    """Classify every cluster of ``image``; return a JSON-ready description.
    ``progress(done, total)`` is check's, called as the walk goes."""
    n = image.slot.image_clusters
    cats: list = [("free", None)] * n
    result = check_image(image, progress)
    slot = image.slot
    # Damage is check's to report (in ``verdict``): these walks skip what they cannot read.
    walk = Visitor(image.store.read_raw, image.geo, n, on_problem=_skip)
    # Shared: reachable from the active state and from a snapshot.  Lazy counts
    # mark only the top of a shared subtree (R-ref-6), so reachability is walked:
    # the active directory is walked whole before any snapshot.
    active = set()
    for reached in walk.slot(slot):
        if reached.first and reached.cluster < n:
            cats[reached.cluster] = _classify(reached)
        if reached.owner == "active":
            active.add(reached.cluster)
    snapshots = Visitor(image.store.read_raw, image.geo, n, on_problem=_skip)
    snaps = {reached.cluster for s in walk.snapshots if s.dir_depth
             for reached in snapshots.directory(s.dir_root, s.dir_depth, f"snapshot:{s.name}")}
    shared = [c in active and c in snaps for c in range(n)]
    runs = []
    for c in range(n):
        cat, owner = cats[c]
        if runs and runs[-1]["category"] == cat and runs[-1]["owner"] == owner \
                and runs[-1]["shared"] == shared[c] and runs[-1]["start"] + runs[-1]["length"] == c:
            runs[-1]["length"] += 1
        else:
            runs.append({"start": c, "length": 1, "category": cat, "owner": owner, "shared": shared[c]})
    totals: dict = {}
    for cat, _ in cats:
        totals[cat] = totals.get(cat, 0) + 1
    return {
        "cluster_size": image.geo.cluster_size,
        "image_clusters": n,
        "totals": totals,
        "shared_clusters": sum(shared),
        "fragments": sum(1 for r in runs if r["category"] == "blob"),
        "verdict": result.verdict,
        "runs": runs,
    }

