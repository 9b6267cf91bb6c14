"""The tree visitor (nvbox._visit.Visitor): what it yields, in which order, and how it
copes with damage.

Damaged graphs are built by rewriting pointers in the image bytes and reading
those bytes without checksum verification (``_unverified``): the CRCs would
otherwise catch the change before the visitor's own rules are reached.
"""

from __future__ import annotations

import sys

import pytest

import nvbox
from nvbox import _format as fmt
from nvbox._visit import VISIT_KINDS, Visitor
from nvbox.errors import NvboxError

from helpers import image_bytes, read_active_slot


def _image(cluster_size=512, blobs=40, big=20_000):
    """Inline and clustered blobs, a snapshot, then changes after it (shared and copied subtrees)."""
    img = nvbox.create(None, cluster_size=cluster_size)
    with img.transaction():
        for i in range(blobs):
            img[f"b{i:03}"] = bytes([i % 256]) * (10 if i % 2 else 700)
        img["big"] = bytes(range(256)) * (big // 256)
    img.snapshots.create("s1")
    img.write("big", 3 * cluster_size, b"changed")
    del img["b001"]
    return img


def _unverified(raw, cs):
    def read(ptr, kind):
        return bytes(raw[ptr.offset:ptr.offset + cs])
    return read


def _walk(img, **kw):
    v = Visitor(img.store.read_raw, img.geo, img.slot.image_clusters, **kw)
    return v, list(v.slot(img.slot))


def test_every_reference_is_one_count():
    """In a clean image each cluster's count is the number of references the walk
    follows (R-ref-6; header clusters count once, R-ref-3), and each cluster is
    entered once."""
    img = _image()
    _, seen = _walk(img, read_leaves=True)
    refs = {}
    for r in seen:
        refs[r.cluster] = refs.get(r.cluster, 0) + 1
    counts = {c: img.store.durable_count(c) for c in range(img.slot.image_clusters)}
    assert refs == {c: n for c, n in counts.items() if n}
    first = [r.cluster for r in seen if r.first]
    assert len(first) == len(set(first)) == len(refs)
    # (a one-cluster snapshot table has no map node, one refcount block no index, a plain image no key slots)
    assert {r.kind for r in seen} == set(VISIT_KINDS) - {"keyslots", "snapmap", "refindex"}
    assert any(not r.first for r in seen), "the snapshot shares subtrees with the active state"


def test_owners_blobs_and_levels():
    img = _image()
    v, seen = _walk(img)
    assert [s.name for s in v.snapshots] == ["s1"]
    owners = {r.owner for r in seen}
    assert owners == {"header", "refcount", "active", "snapshot:s1", "snapshot table"}
    big = [r for r in seen if r.blob == "big" and r.first]
    depth = img.stat("big").depth
    assert {r.level for r in big} == set(range(depth + 1))
    assert all(r.kind == ("data" if r.level == 0 else "map") for r in big)
    # Data clusters carry their index in the blob; the snapshot's copy-on-write changed one.
    assert sorted(r.index for r in big if r.kind == "data" and r.owner == "active") == \
        list(range(-(-img.stat("big").size // img.geo.cluster_size)))
    assert [r.index for r in big if r.kind == "data" and r.owner == "snapshot:s1"] == [3]
    dirs = [r for r in seen if r.kind == "dir" and r.first]
    assert {r.level for r in dirs} == set(range(img.slot.dir_depth))
    assert all(isinstance(r.node, fmt.DirNode) for r in dirs)


def test_post_order_puts_children_first():
    img = _image()
    _, seen = _walk(img, post_order=True)
    pos = {r.cluster: i for i, r in enumerate(seen) if r.first}
    bits = img.geo.cluster_bits
    for r in seen:
        if not r.first or r.node is None:
            continue
        if r.kind in ("map", "refindex", "snapmap"):
            kids = [p for p in r.node if not p.is_null]
        else:
            kids = [b.child for b in r.node.items] if r.level else \
                [e.root for e in r.node.items if e.inline is None and not e.root.is_null]
        assert all(pos[p.offset >> bits] < pos[r.cluster] for p in kids), r


def test_leaves_are_read_only_when_asked():
    img = _image()
    read = []

    def counting(ptr, kind):
        read.append(ptr.offset)
        return img.store.read_raw(ptr, kind)

    v = Visitor(counting, img.geo, img.slot.image_clusters)
    seen = list(v.slot(img.slot))
    data = {r.ptr.offset for r in seen if r.kind in ("data", "refblock")}
    assert not data & set(read)
    assert len(read) == len(set(read)), "a cluster read twice"
    assert all(r.raw is None for r in seen if r.kind == "data")


def _map_node(img):
    _, seen = _walk(img)
    return next(r for r in seen if r.kind == "map" and r.owner == "active" and r.first)


@pytest.mark.parametrize("target", ["self", "dir root"])
def test_cycle_is_reported_and_the_walk_ends(target):
    """A map node pointing at itself, or at the directory root: each cluster is
    entered once, so the walk ends, and the second role is pointer.cycle."""
    img = _image()
    node = _map_node(img)
    raw = image_bytes(img)
    dest = node.ptr if target == "self" else read_active_slot(raw).dir_root
    at = node.ptr.offset + fmt.PLAIN_POINTER     # the node's second pointer
    raw[at:at + fmt.PLAIN_POINTER] = fmt.Pointer(dest.offset, dest.crc).encode(fmt.PLAIN_POINTER)
    problems = []
    v = Visitor(_unverified(raw, img.geo.cluster_size), img.geo, img.slot.image_clusters,
                on_problem=lambda code, message, offset: problems.append(code))
    seen = list(v.slot(img.slot))
    assert "pointer.cycle" in problems
    first = [r.cluster for r in seen if r.first]
    assert len(first) == len(set(first))
    with pytest.raises(NvboxError) as exc:
        list(Visitor(_unverified(raw, img.geo.cluster_size), img.geo, img.slot.image_clusters).slot(img.slot))
    assert exc.value.code in ("pointer.cycle", "map.tail")


def test_bad_pointer_and_unreadable_node_are_counted_not_entered():
    """An out-of-range pointer is reported and not yielded; a node that fails to
    read is yielded (it is referred to) without contents, and its subtree skipped."""
    img = _image()
    node = _map_node(img)
    raw = image_bytes(img)
    at = node.ptr.offset
    past = img.slot.image_clusters * img.geo.cluster_size
    raw[at:at + fmt.PLAIN_POINTER] = fmt.Pointer(past, 0).encode(fmt.PLAIN_POINTER)
    problems = []
    v = Visitor(_unverified(raw, img.geo.cluster_size), img.geo, img.slot.image_clusters,
                on_problem=lambda code, message, offset: problems.append((code, offset)))
    list(v.slot(img.slot))
    assert ("pointer.out_of_range", past) in problems
    # The same node made unreadable: check-style reading through the store fails its CRC.
    img2 = nvbox.open(bytes(raw))
    problems.clear()
    v = Visitor(img2.store.read_raw, img2.geo, img2.slot.image_clusters,
                on_problem=lambda code, message, offset: problems.append((code, offset)))
    hit = [r for r in v.slot(img2.slot) if r.cluster == node.cluster]
    assert hit and hit[0].node is None and hit[0].raw is None
    assert ("cluster.checksum", node.ptr.offset) in problems


def test_no_recursion_on_deep_trees():
    """Deep directory and map trees walk within a tight recursion limit: the
    visitor keeps its own stack."""
    img = _image(blobs=300, big=2_000_000)
    assert img.slot.dir_depth >= 2 and img.stat("big").depth >= 2
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(len(__import__("inspect").stack()) + 40)
    try:
        _, seen = _walk(img)
    finally:
        sys.setrecursionlimit(limit)
    assert sum(1 for r in seen if r.blob == "big" and r.kind == "data") >= 2_000_000 // 512
    assert {r.level for r in seen if r.kind == "refindex"} == set(range(2, img.slot.refcount_depth + 1))


def test_blob_count_mismatch_uses_the_spec_code():
    img = _image()
    slot = img.slot
    wrong = type(slot)(**{**slot.__dict__, "blob_count": slot.blob_count + 1})
    with pytest.raises(NvboxError) as exc:
        list(Visitor(img.store.read_raw, img.geo, slot.image_clusters).slot(wrong))
    assert exc.value.code == "directory.entry"


def test_encrypted_image_key_slots_and_sealed_kinds():
    """Every cluster of an encrypted image is opened with the kind it was sealed
    with (R-enc-5): a wrong kind would fail authentication."""
    from nvbox.crypto import Key
    img = nvbox.create(None, cluster_size=1024, encrypt=True, key=Key.from_key_bytes(bytes(range(32))))
    img["x"] = b"y" * 5000
    img.snapshots.create("s")
    problems = []
    v = Visitor(img.store.read_raw, img.geo, img.slot.image_clusters, read_leaves=True,
                on_problem=lambda *p: problems.append(p))
    seen = list(v.slot(img.slot))
    assert not problems
    keys = [r for r in seen if r.kind == "keyslots"]
    assert len(keys) == 1 and keys[0].owner == "keys" and sum(s.in_use for s in keys[0].node) == 1
    assert {"data", "map", "dir", "snapdata", "refblock"} <= {r.kind for r in seen}
