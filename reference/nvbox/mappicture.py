"""The PNG of ``nvbox map -o FILE.png``: a cluster map's description as a grid.

The grid is built as one pixel array (each cluster a square cell, shared
clusters striped) and saved through matplotlib, which only the ``map`` extra
installs (``pip install 'nvbox[map]'``).  Drawing one patch per cluster took
minutes for a quarter of a million clusters; the array takes well under a
second for that, and the PNG encoding dominates.
"""

from __future__ import annotations

import math

from .errors import raise_code

__all__ = ["BLOB_COLOURS", "CATEGORY_COLOURS", "render_png"]

# One colour per category, and a separate set for blobs that repeats none of them
# (so the refcount tree and a blob never share a colour).
CATEGORY_COLOURS = {
    "header": "#202020",
    "refcount": "#b22222",
    "directory": "#ff8c00",
    "snapshot-table": "#6a0dad",
    "key-slots": "#8b4513",
    "snapshot-only": "#9e9e9e",
    "free": "#f2f2f2",
}
BLOB_COLOURS = ("#1f77b4", "#2ca02c", "#17becf", "#bcbd22", "#e377c2", "#000080", "#ffd700", "#008080",
                "#7cfc00", "#4b0082")
OTHER_BLOBS = "#5f9ea0"      # blobs beyond the named ones, when there are more than colours
BACKGROUND = "#ffffff"


def _rgb(hex_colour):
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))


def _need_matplotlib():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
        from matplotlib.patches import Patch
    except ImportError:
        raise_code("usage.argument",
                   "drawing a PNG needs matplotlib: install the map extra, pip install 'nvbox[map]'")
    return np, plt, Patch


def legend_entries(description) -> list[tuple[str, str, int]]:
    """(label, colour, clusters) for the legend: the categories present, then
    the blobs by cluster count, the largest first, the rest as one entry."""
    totals = description["totals"]
    entries = [(cat, colour, totals[cat]) for cat, colour in CATEGORY_COLOURS.items() if totals.get(cat)]
    per_blob: dict = {}
    for r in description["runs"]:
        if r["category"] == "blob":
            per_blob[r["owner"]] = per_blob.get(r["owner"], 0) + r["length"]
    ranked = sorted(per_blob.items(), key=lambda kv: (-kv[1], kv[0]))
    named = ranked if len(ranked) <= len(BLOB_COLOURS) else ranked[:len(BLOB_COLOURS) - 1]
    entries += [(f"blob {name}", BLOB_COLOURS[i], count) for i, (name, count) in enumerate(named)]
    rest = ranked[len(named):]
    if rest:
        entries.append((f"{len(rest)} other blobs", OTHER_BLOBS, sum(c for _, c in rest)))
    return entries


def render_png(description: dict, path, columns: int | None = None) -> dict:
    """Draw ``description`` (``nvbox.clustermap.cluster_map``) to the PNG ``path``.

    ``columns``: clusters per row (default: about as many rows as columns, 64 to
    512).  Returns the grid's geometry (columns, rows, cell pixels).
    """
    np, plt, Patch = _need_matplotlib()
    n = description["image_clusters"]
    if columns is None:
        columns = min(512, max(64, math.isqrt(max(n, 1) - 1) + 1))
    rows = max(1, -(-n // columns))
    cell = max(1, min(16, 2048 // columns, 8192 // rows))
    entries = legend_entries(description)
    colour_of = {label: colour for label, colour, _ in entries}
    palette = [_rgb(BACKGROUND)] + [_rgb(colour) for _, colour, _ in entries]
    index_of = {label: i + 1 for i, (label, _, _) in enumerate(entries)}
    other = index_of.get(next((label for label in index_of if label.endswith(" other blobs")), None))

    cells = np.zeros(rows * columns, dtype=np.uint16)        # 0: past the last cluster
    shared = np.zeros(rows * columns, dtype=bool)
    for r in description["runs"]:
        label = f"blob {r['owner']}" if r["category"] == "blob" else r["category"]
        cells[r["start"]:r["start"] + r["length"]] = index_of.get(label, other or 0)
        if r["shared"]:
            shared[r["start"]:r["start"] + r["length"]] = True
    pixels = np.array(palette, dtype=np.uint8)[cells.reshape(rows, columns)]
    pixels = pixels.repeat(cell, axis=0).repeat(cell, axis=1)
    if cell >= 4:
        # Stripes on shared cells, and a one-pixel gap between cells.
        ys, xs = np.indices((rows * cell, columns * cell))
        stripe = ((xs + ys) % 4 == 0) & shared.reshape(rows, columns).repeat(cell, 0).repeat(cell, 1)
        pixels[stripe] = 255
        pixels[cell - 1::cell, :, :] = 255
        pixels[:, cell - 1::cell, :] = 255
    height, width = pixels.shape[:2]
    width_px = max(width, 640)
    legend_px = 40 + 18 * -(-(len(entries) + 1) // 3)
    dpi = 100
    fig = plt.figure(figsize=(width_px / dpi, (height + legend_px) / dpi), dpi=dpi)
    ax = fig.add_axes([(width_px - width) / 2 / width_px, legend_px / (height + legend_px),
                       width / width_px, height / (height + legend_px)])
    ax.imshow(pixels, interpolation="nearest", aspect="auto")
    ax.axis("off")
    handles = [Patch(facecolor=colour_of[label], edgecolor="#808080", label=f"{label} ({count})")
               for label, _, count in entries]
    handles.append(Patch(facecolor="#c0c0c0", edgecolor="#808080", hatch="///", label="striped: shared (count > 1)"))
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=7, frameon=False,
               title=f"{n} clusters of {description['cluster_size']} bytes, {description['shared_clusters']} shared,"
                     f" {columns} per row", title_fontsize=8)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return {"columns": columns, "rows": rows, "cell_pixels": cell}
