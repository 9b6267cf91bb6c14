"""Cross-check: images written by the reference library (reference/nvbox), read by
the Kaitai descriptors. Skips, with the reason, while the reference API is missing.

Every pointer reachable from the active slot is also checked in application code
(CRC-32C of the cluster), which is what the descriptors cannot do themselves.
"""
from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys

import kaitaistruct
import pytest

from mkimage import crc32c

nvbox_ref = pytest.importorskip("nvbox", reason="reference package `nvbox` not importable")
if not hasattr(nvbox_ref, "create") or not hasattr(nvbox_ref, "open"):
    pytest.skip("reference library has no nvbox.create/nvbox.open yet", allow_module_level=True)


def blob_bytes(entry, cs, P):
    body = entry.body
    c = body.content
    if c.tag == 0x80:
        return c.inline_data
    cm = c.clusters
    if cm.root_pointer.pointer.offset == 0:
        return bytes(body.size.value)

    def rd(node, level):
        if level == 0:
            return node.data
        return b"".join(rd(e.child, level - 1) if e.pointer.offset else bytes(cs * (cs // P) ** (level - 1))
                        for e in node.entries)
    return rd(cm.root_node, cm.depth.value)[: body.size.value].ljust(body.size.value, b"\0")


def leaves(node):
    if node is None:
        return
    if node.level == 0:
        yield node
    else:
        for br in node.body.branches:
            yield from leaves(br.child_node)


def check_crcs(img):
    """Verify the CRC of every pointer reachable from the active slot; return the
    expected reference counts (R-ref-6: each reachable cluster visited once)."""
    cs = img.cluster_size
    seen, counts = set(), {}

    def ptr(p, visit=None):
        if p.offset == 0:
            return
        assert crc32c(p.cluster_bytes) == p.crc, f"crc of cluster at {p.offset}"
        counts[p.offset // cs] = counts.get(p.offset // cs, 0) + 1
        if visit and p.offset not in seen:
            seen.add(p.offset)
            visit()

    def map_node(node, level):
        for e in node.entries:
            ptr(e.pointer, (lambda e=e: map_node(e.child, level - 1)) if level > 1 else None)

    def cmap(c):
        d = c.depth.value
        ptr(c.root_pointer.pointer, (lambda: map_node(c.root_node, d)) if d else None)

    def dnode(node):
        if node.level == 0:
            for e in node.body.entries:
                if e.body.content.tag != 0x80:
                    cmap(e.body.content.clusters)
        else:
            for br in node.body.branches:
                ptr(br.child.pointer, lambda br=br: dnode(br.child_node))

    def rnode(node, level):
        if level > 1:
            for e in node.entries:
                ptr(e.pointer, lambda e=e: rnode(e.child, level - 1))

    s = img.active_slot
    ptr(s.refcount_root, lambda: rnode(img.refcount_root_node, s.refcount_depth))
    ptr(s.dir_root, lambda: dnode(img.dir_root_node))
    ptr(s.snaptable_root, (lambda: map_node(img.snaptable_root_node, s.snaptable_depth))
        if s.snaptable_depth else None)
    if img.snapshot_table is not None:
        for sn in img.snapshot_table.snapshots:
            ptr(sn.body.dir_root.pointer, lambda sn=sn: dnode(sn.body.dir_root_node))
    return counts


def refcounts(img):
    s = img.active_slot

    def blocks(node, level):
        if level == 1:
            yield node
        else:
            for e in node.entries:
                if e.pointer.offset:
                    yield from blocks(e.child, level - 1)
                else:
                    yield None
    out, half = [], img.cluster_size // 2
    for b in blocks(img.refcount_root_node, s.refcount_depth):
        out += list(b.counts) if b is not None else [0] * half
    return out


def make(path, cluster_size, blobs, snapshots=(), deletes=()):
    with nvbox_ref.create(str(path), cluster_size=cluster_size) as im:
        for name, data in blobs.items():
            im[name] = data
        for sn in snapshots:
            im.snapshots.create(sn)
            for name in deletes:
                if name in im:
                    del im[name]
            im["after/" + sn] = sn.encode() * 50


CASES = {
    "small-4k": (4096, {"tpm/permanent": b"\x01" * 100, "empty": b"", "vpd": b"v" * 512}, (), ()),
    "clusters-512": (512, {"a": bytes(range(256)) * 40, "b": b"b" * 64, "c": b"c" * 65}, (), ()),
    "deep-map-512": (512, {"big": random.Random(1).randbytes(300_000)}, (), ()),
    "many-blobs-1k": (1024, {f"dev{i:03}/state": bytes([i]) * (i * 7) for i in range(200)}, (), ()),
    "snapshots": (4096, {"x": b"x" * 9000, "y": b"y" * 10, "z": b"z" * 20000},
                  ("before-upgrade", "s2"), ("y",)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_reference_image_parses(tmp_path, parse, case):
    cs, blobs, snaps, deletes = CASES[case]
    p = tmp_path / f"{case}.nvbox"
    make(p, cs, blobs, snaps, deletes)
    with nvbox_ref.open(str(p)) as im:
        expected = {name: im[name] for name in im}
    img = parse(p)
    assert img.cluster_size == cs
    assert crc32c(img.header.crc_input) == img.header.header_crc
    assert crc32c(img.active_slot.crc_input) == img.active_slot.slot_crc
    got = {}
    for leaf in leaves(img.dir_root_node):
        for e in leaf.body.entries:
            got[e.body.name.value] = blob_bytes(e, cs, img.pointer_width)
    assert got == expected
    assert img.active_slot.blob_count == len(expected)
    expected_counts = check_crcs(img)
    rc = refcounts(img)
    for c in range(img.header.header_clusters):
        expected_counts[c] = expected_counts.get(c, 0) + 1
    for c in range(img.active_slot.image_clusters):
        assert (rc[c] if c < len(rc) else 0) == expected_counts.get(c, 0), f"count of cluster {c}"
    if snaps:
        assert [s.body.name.value for s in img.snapshot_table.snapshots] == list(snaps)
    img._fetch_instances()


def _dump_available():
    exe = shutil.which("nvbox")
    if not exe:
        return None
    proc = subprocess.run([exe, "dump", "--help"], capture_output=True, text=True)
    return exe if proc.returncode == 0 else None


def _field_dicts(obj):
    """Every dict in the dump that has an `offset` and some fields."""
    if isinstance(obj, dict):
        yield obj
        for v in obj.values():
            yield from _field_dicts(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _field_dicts(v)


def test_dump_json_matches_descriptors(tmp_path, parse):
    exe = _dump_available()
    if exe is None:
        pytest.skip("`nvbox dump IMAGE --output json` is not available yet")
    p = tmp_path / "d.nvbox"
    make(p, 4096, {"a": b"a" * 10, "b": b"b" * 10000}, ("s",), ())
    dump = json.loads(subprocess.run([exe, "dump", str(p), "--output", "json"], check=True,
                                     capture_output=True, text=True).stdout)
    img = parse(p)
    structs = {"header": img.header, "active_slot": img.active_slot}
    by_offset = {0: img.header, 512: img.slot_a, 1024: img.slot_b}
    compared = 0
    for d in _field_dicts(dump):
        target = by_offset.get(d.get("offset")) if isinstance(d.get("offset"), int) else None
        fields = d.get("fields", d)
        if target is None or not isinstance(fields, dict):
            continue
        for k, v in fields.items():
            if isinstance(v, (int, str)) and hasattr(target, k):
                mine = getattr(target, k)
                mine = int(mine) if not isinstance(mine, (bytes, str)) else mine
                if isinstance(mine, bytes):
                    mine = mine.hex()
                    v = v.lower().replace(" ", "") if isinstance(v, str) else v
                assert str(mine) == str(v), (d.get("offset"), k, mine, v)
                compared += 1
    assert compared >= 10, f"too few fields matched between dump and descriptors: {compared}"
    del structs


def test_branch_length_covers_low_key_and_child(tmp_path, parse):
    """A DirBranch whose SEQUENCE length is not exactly lowKey + child is rejected."""
    p = tmp_path / "deep-dir.nvbox"
    make(p, 512, {f"blob{i:03}": b"x" for i in range(60)})
    raw = bytearray(p.read_bytes())
    img = parse(bytes(raw))
    assert img.active_slot.dir_depth >= 2
    root = img.active_slot.dir_root.offset
    # the body starts 16 bytes into the node: SEQUENCE tag, its length, then the first
    # branch's tag 0x30 and its one-byte length
    body = raw[root + 16:]
    first_branch = 2 if body[1] < 0x80 else 2 + (body[1] & 0x7F)
    assert body[first_branch] == 0x30
    raw[root + 16 + first_branch + 1] += 1
    with pytest.raises(kaitaistruct.ValidationExprError) as e:
        parse(bytes(raw)).dir_root_node
    assert e.value.src_path == "/types/dir_branch/seq/3", e.value
