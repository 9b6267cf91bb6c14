"""The PNG of ``nvbox map -o FILE.png``: a cluster map's description as a grid.

The grid is built as one pixel array (each cluster a square cell, shared
clusters striped), the legend is drawn by matplotlib, and pillow writes the
PNG; matplotlib (with numpy and pillow) comes with the ``map`` extra, ``pip
install 'nvbox[map]'``.  Drawing one patch per cluster took minutes for a
quarter of a million clusters; the array takes about a second.
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
        from PIL import Image                 # pillow: a dependency of matplotlib
    except ImportError:
        raise_code("usage.argument",
                   "drawing a PNG needs matplotlib: install the map extra, pip install 'nvbox[map]'")
    return np, plt, Patch, Image


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
    np, plt, Patch, Image = _need_matplotlib()
    n = description["image_clusters"]
    if columns is None:
        columns = min(512, max(64, math.isqrt(max(n, 1) - 1) + 1))
    rows = max(1, -(-n // columns))
    cell = max(1, min(16, 2048 // columns, 8192 // rows))
    entries = legend_entries(description)
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
    legend = _legend_pixels(np, plt, Patch, description, entries, columns, max(pixels.shape[1], 640))
    width = max(pixels.shape[1], legend.shape[1])
    canvas = np.full((pixels.shape[0] + legend.shape[0], width, 3), 255, dtype=np.uint8)
    left = (width - pixels.shape[1]) // 2
    canvas[:pixels.shape[0], left:left + pixels.shape[1]] = pixels
    canvas[pixels.shape[0]:, :legend.shape[1]] = legend
    # The grid goes to the PNG as it is: matplotlib's image drawing would resample
    # megapixels, which took most of the time.
    Image.fromarray(canvas).save(path, format="PNG")
    return {"columns": columns, "rows": rows, "cell_pixels": cell}


def _legend_pixels(np, plt, Patch, description, entries, columns, width_px):
    """The legend and title, drawn by matplotlib alone, as an RGB array."""
    dpi = 100
    height_px = 40 + 18 * -(-(len(entries) + 1) // 3)
    fig = plt.figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    handles = [Patch(facecolor=colour, edgecolor="#808080", label=f"{label} ({count})")
               for label, colour, count in entries]
    handles.append(Patch(facecolor="#c0c0c0", edgecolor="#808080", hatch="///", label="striped: shared (count > 1)"))
    fig.legend(handles=handles, loc="center", ncol=3, fontsize=7, frameon=False,
               title=f"{description['image_clusters']} clusters of {description['cluster_size']} bytes, "
                     f"{description['shared_clusters']} shared, {columns} per row", title_fontsize=8)
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[:, :, :3].copy()
    plt.close(fig)
    return rgb
