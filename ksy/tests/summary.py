"""What a generated parser reads from one image, as plain JSON-able data.

`outcome(parse, path)` parses an image, follows every lazy instance the
descriptors offer (both trees, every map node, every snapshot's directory, the
key slot table) and returns either the summary of what it read or the error
that stopped it: ``{"error": kind, "path": src_path}`` for a failed `valid`
(kind is the Kaitai exception class), ``{"error": "eof"}`` for a read past the
end, ``{"error": "utf8"}`` for a name that is not UTF-8. `tests/walk.js` is the
same walk over the generated JavaScript; test_targets.py compares the two.

Blob contents are summarized per stored cluster (logical cluster index and
SHA-256 of its bytes), so a sparse blob of 2^40 bytes costs only the clusters
it stores.
"""
from __future__ import annotations

import hashlib

import kaitaistruct as ks


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _map(node, level: int, fanout: int, first: int, out: list) -> None:
    """Append [logical cluster, sha] of every data cluster under a map node."""
    span = fanout ** (level - 1)
    for i, e in enumerate(node.entries):
        if e.pointer.offset == 0:
            continue
        if level == 1:
            out.append([first + i, _sha(e.child.data)])
        else:
            _map(e.child, level - 1, fanout, first + i * span, out)


def _cluster_map(cm, fanout: int) -> list:
    out: list = []
    if cm.root_pointer.pointer.offset != 0:
        if cm.depth.value == 0:
            out.append([0, _sha(cm.root_node.data)])
        else:
            _map(cm.root_node, cm.depth.value, fanout, 0, out)
    return out


def _entry(e, fanout: int) -> dict:
    b = e.body
    c = b.content
    d = {"name": b.name.value, "size": b.size.value, "ext": len(b.extensions)}
    if int(c.tag) == 0x80:
        d["inline"] = _sha(c.inline_data)
    else:
        d["depth"] = c.clusters.depth.value
        d["clusters"] = _cluster_map(c.clusters, fanout)
    return d


def _directory(node, fanout: int, out: list) -> None:
    if node.level == 0:
        out.extend(_entry(e, fanout) for e in node.body.entries)
    else:
        for br in node.body.branches:
            _directory(br.child_node, fanout, out)


def _refcounts(node, level: int, fanout: int, half: int, first: int, out: dict) -> None:
    """Non-zero counts of the refcount tree, keyed by cluster index (as str)."""
    if level == 1:
        for j, n in enumerate(node.counts):
            if n:
                out[str(first + j)] = n
        return
    span = half * fanout ** (level - 2)
    for i, e in enumerate(node.entries):
        if e.pointer.offset != 0:
            _refcounts(e.child, level - 1, fanout, half, first + i * span, out)


def summarize(img) -> dict:
    s = img.active_slot
    h = img.header
    out = {
        "cluster_bits": h.cluster_bits,
        "capacity": h.capacity_clusters,
        "extensions": [[x.ext_type, x.ext_length] for x in h.extensions],
        "creator": [x.creator_name for x in h.extensions if x.ext_type == 1],
        "slot": img.active_slot_index,
        "generation": s.generation,
        "image_clusters": s.image_clusters,
        "blob_count": s.blob_count,
        "encrypted": bool(img.is_encrypted),
    }
    fanout = img.cluster_size // img.pointer_width
    if img.is_encrypted:
        out["key_slots"] = [int(k.kind) for k in img.keyslot_table.slots]
        return out
    counts: dict = {}
    _refcounts(img.refcount_root_node, s.refcount_depth, fanout, img.cluster_size // 2, 0, counts)
    out["refcounts"] = counts
    blobs: list = []
    if img.dir_root_node is not None:
        _directory(img.dir_root_node, fanout, blobs)
    out["blobs"] = blobs
    if s.snaptable_depth != 0:
        table: list = []
        _map(img.snaptable_root_node, s.snaptable_depth, fanout, 0, table)
        out["snapshot_table_clusters"] = table
    if img.snapshot_table is not None:
        snaps = []
        for sn in img.snapshot_table.snapshots:
            b = sn.body
            d = {"id": b.id.value, "name": b.name.value, "blob_count": b.blob_count.value,
                 "metadata": _sha(b.metadata.value) if hasattr(b, "metadata") else None}
            tree: list = []
            if b.dir_root_node is not None:
                _directory(b.dir_root_node, fanout, tree)
            d["blobs"] = tree
            snaps.append(d)
        out["snapshots"] = snaps
    return out


def outcome(parse, path) -> dict:
    try:
        return summarize(parse(path))
    except ks.ValidationFailedError as e:
        return {"error": type(e).__name__, "path": e.src_path}
    except EOFError:
        return {"error": "eof"}
    except UnicodeDecodeError:
        return {"error": "utf8"}
