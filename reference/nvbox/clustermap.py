"""A picture of an image's clusters: what holds each one (``nvbox map``).

Every cluster is classified by the walk ``check`` makes (each reachable
cluster is reported once, the active directory first): header area,
refcount tree, directory node, snapshot table, key slots, a blob's data or
cluster map (named), or free.  Clusters whose count is above 1 are shared
(with a snapshot, or between blobs of different snapshots).  The result is
run-length encoded for ``--output json`` and drawn as a grid for PNG.
"""

from __future__ import annotations

import re

from . import _format as fmt
from .check import check_image
from .errors import raise_code

__all__ = ["cluster_map", "render_png"]

CATEGORIES = {
    "header": "#404040",
    "refcount": "#d62728",
    "directory": "#ff7f0e",
    "snapshot-table": "#9467bd",
    "key-slots": "#8c564b",
    "blob": None,            # a colour per blob
    "snapshot-only": "#7f7f7f",
    "free": "#f0f0f0",
}

_BLOB = re.compile(r"blob '((?:[^'\\]|\\.)*)'|blob \"((?:[^\"\\]|\\.)*)\"")


def _classify(kind: int, what: str) -> tuple[str, str | None]:
    if kind in (fmt.KIND_REFBLOCK, fmt.KIND_REFINDEX):
        return "refcount", None
    if kind == fmt.KIND_DIR:
        return "directory", None
    if kind == fmt.KIND_SNAPDATA or what.startswith("snapshot table"):
        return "snapshot-table", None
    if kind == 0:
        return "key-slots", None
    m = _BLOB.search(what)
    name = (m.group(1) if m.group(1) is not None else m.group(2)) if m else None
    if what.startswith("snapshot '"):
        # The walk covers the active directory first, so a cluster first met in
        # a snapshot's tree is one that only snapshots hold.
        return "snapshot-only", name
    return "blob", name


def cluster_map(image, progress=None) -> dict:
    """Classify every cluster of ``image``; return a JSON-ready description.
    ``progress(done, total)`` is check's, called as the walk goes."""
    n = image.slot.image_clusters
    cats: list = [("free", None)] * n
    for c in range(min(image.geo.header_clusters, n)):
        cats[c] = ("header", None)

    def visit(idx, kind, what):
        cats[idx] = _classify(kind, what)

    result = check_image(image, progress, on_visit=visit)
    # Shared: reachable from the active state and from a snapshot.  Lazy counts
    # mark only the top of a shared subtree (R-ref-6), so reachability is walked.
    slot = image.slot
    active = _reachable(image, [(slot.dir_root, slot.dir_depth)]) if slot.dir_depth else set()
    snaps = _reachable(image, [(s.dir_root, s.dir_depth) for s in image._snapshot_list() if s.dir_depth])
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


def _reachable(image, roots) -> set:
    """Every cluster reachable from the given directory roots (each subtree once)."""
    trees, bits = image.trees, image.geo.cluster_bits
    seen: set = set()

    def map_walk(ptr, depth):
        if ptr.is_null or ptr.offset >> bits in seen:
            return
        seen.add(ptr.offset >> bits)
        if depth:
            for child in trees.map_node(ptr):
                map_walk(child, depth - 1)

    def dir_walk(ptr, level):
        if ptr.offset >> bits in seen:
            return
        seen.add(ptr.offset >> bits)
        for item in trees.dir_node(ptr, level).items:
            if level:
                dir_walk(item.child, level - 1)
            elif item.inline is None:
                map_walk(item.root, item.depth)

    for root, depth in roots:
        dir_walk(root, depth - 1)
    return seen


def render_png(description: dict, path: str, columns: int = 64) -> None:
    """Draw the map as a grid of cells, one per cluster, with a legend."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch, Rectangle
    except ImportError:
        raise_code("usage.argument", "drawing a PNG needs matplotlib (pip install matplotlib)")
    n = description["image_clusters"]
    rows = -(-n // columns)
    blob_names = sorted({r["owner"] for r in description["runs"] if r["category"] == "blob"})
    palette = plt.get_cmap("tab20")
    blob_colour = {name: palette(i % 20) for i, name in enumerate(blob_names)}
    fig_w = 10
    cell = fig_w / columns
    fig, ax = plt.subplots(figsize=(fig_w, max(1.5, rows * cell + 1.2)))
    for r in description["runs"]:
        colour = blob_colour[r["owner"]] if r["category"] == "blob" else CATEGORIES[r["category"]]
        for c in range(r["start"], r["start"] + r["length"]):
            y, x = divmod(c, columns)
            ax.add_patch(Rectangle((x, rows - 1 - y), 1, 1, facecolor=colour, edgecolor="white", linewidth=0.3,
                                   hatch="///" if r["shared"] else None))
    ax.set_xlim(0, columns)
    ax.set_ylim(0, rows)
    ax.set_aspect("equal")
    ax.axis("off")
    handles = [Patch(facecolor=CATEGORIES[k], label=k) for k in CATEGORIES if CATEGORIES[k]]
    handles += [Patch(facecolor=blob_colour[b], label=f"blob {b}") for b in blob_names[:12]]
    if len(blob_names) > 12:
        handles.append(Patch(facecolor="white", label=f"... {len(blob_names) - 12} more blobs"))
    handles.append(Patch(facecolor="white", hatch="///", label="shared (count > 1)"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=4, fontsize=7, frameon=False)
    ax.set_title(f"{n} clusters of {description['cluster_size']} bytes, {description['shared_clusters']} shared, "
                 f"{description['totals'].get('free', 0)} free", fontsize=9)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
