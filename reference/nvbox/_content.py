"""What one blob holds: inline bytes in its directory entry, or a cluster map.

These functions change one directory entry being edited (a ``_tree.Blob``)
through the trees, keeping R-dir-3 (a blob of at most ``inline_max`` bytes
may be inline) and R-map-3 (nothing beyond the size) true.  They neither
find the entry nor fix the directory around it, and never commit: ``Image``
does that.
"""

from __future__ import annotations

from ._tree import NULL

__all__ = ["read", "fill", "write_into", "uninline", "resize", "zero_range"]


def read(trees, e, offset: int = 0, length: int | None = None) -> bytes:
    """``length`` bytes (default: to the end) from ``offset`` of entry ``e``."""
    if length is None:
        length = e.size - offset
    if e.inline is not None:
        return bytes(e.inline[offset:offset + length])
    return trees.map_read(e.root, e.depth, e.size, offset, length)


def fill(trees, blob, data: bytes) -> None:
    """Make an empty ``blob`` hold ``data``: inline when it fits."""
    if len(data) <= trees.geo.inline_max:
        blob.inline, blob.size, blob.depth, blob.root = data, len(data), 0, NULL
    else:
        blob.inline, blob.size, blob.depth, blob.root = None, 0, 0, NULL
        trees.map_write(blob, 0, data)


def write_into(trees, blob, offset: int, data) -> None:
    """Write ``data`` at ``offset``; an inline blob stays inline while it fits."""
    if not data:
        return
    new_size = max(blob.size, offset + len(data))
    if new_size <= trees.geo.inline_max and blob.inline is not None:
        buf = bytearray(blob.inline.ljust(new_size, b"\0"))
        buf[offset:offset + len(data)] = data
        blob.inline, blob.size = bytes(buf), new_size
    else:
        uninline(trees, blob)
        trees.map_write(blob, offset, data)


def uninline(trees, blob) -> None:
    """Move an inline blob's bytes into clusters (nothing for a clustered one)."""
    if blob.inline is not None:
        content = blob.inline
        blob.inline, blob.size, blob.depth, blob.root = None, 0, 0, NULL
        if content:
            trees.map_write(blob, 0, content)
        blob.size = len(content)


def resize(trees, blob, size: int) -> None:
    """Cut ``blob`` to ``size`` bytes or extend it with zeros (sparse); a size
    that fits inline makes it inline."""
    if size <= trees.geo.inline_max:
        content = read(trees, blob, 0, size).ljust(size, b"\0")
        trees.drop_blob(blob)
        blob.inline, blob.size, blob.depth, blob.root = content, size, 0, NULL
    else:
        uninline(trees, blob)
        trees.map_truncate(blob, size)


def zero_range(trees, blob, offset: int, end: int, extend: bool) -> None:
    """Bytes ``offset..end`` read as zeros (see ``Image.zero``): past the size
    only with ``extend``, which grows the blob to ``end`` first."""
    if extend and end > blob.size:
        if end <= trees.geo.inline_max and blob.inline is not None:
            blob.inline, blob.size = blob.inline.ljust(end, b"\0"), end
        else:
            uninline(trees, blob)
            trees.map_truncate(blob, end)
    end = min(end, blob.size)
    if offset >= end:
        return
    if blob.inline is not None:
        blob.inline = blob.inline[:offset] + bytes(end - offset) + blob.inline[end:]
        return
    cs = trees.geo.cluster_size
    # Clusters lo..hi-1 are covered wholly (holes now); the blob's end counts as a cluster's end.
    lo, hi = -(-offset // cs), (-(-end // cs) if end == blob.size else end // cs)
    partial = [(offset, lo * cs), (hi * cs, end)] if lo < hi else [(offset, end)]
    for a, b in partial:
        while a < b:            # one cluster at a time: a hole stays a hole
            c_end = min(b, (a // cs + 1) * cs)
            if not trees.map_lookup(blob.root, blob.depth, a // cs).is_null:
                trees.map_write(blob, a, bytes(c_end - a))
            a = c_end
    trees.map_punch(blob, lo, hi)
