#!/usr/bin/env python3
"""Generate spec/example.md: an annotated hex dump of a small nvbox image.

The image is written by the reference library (``nvbox``) with 512-byte
clusters: two inline blobs and one blob stored in clusters, committed in one
transaction, then one snapshot.  The image UUID and the clock are patched so
that the output is the same on every run; reference/tests/test_example.py
regenerates the document and fails when spec/example.md differs from it.

Every byte of every structure is labelled with the field names of the tables in
spec/nvbox.md; the script asserts that the labelled ranges cover each structure
exactly, so a layout change cannot leave bytes unexplained.

Usage::

    python spec/make_example.py            # rewrite spec/example.md
    python spec/make_example.py --check    # exit 1 if spec/example.md is stale
    python spec/make_example.py --image F  # also write the image bytes to F
"""

from __future__ import annotations

import argparse
import hashlib
import struct
import sys
import uuid
from pathlib import Path
from unittest import mock

import nvbox
from nvbox import _der as der
from nvbox import _format as fmt
from nvbox._visit import Visitor

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE / "example.md"

CLUSTER_SIZE = 512
# The date of the 2011 qemu-devel message that seeded the design (shared/seed/).
FIXED_TIME = 1315483860          # 2011-09-08 12:11:00 UTC
FIXED_UUID = uuid.UUID("6e76626f-782d-4578-a16d-706c65000001")

BLOBS = [
    ("tpm/permanent", b"P" * 40),                  # inline (40 <= inline_max = 64)
    ("nic0/eeprom", b"E" * 32),                    # inline
    ("uefi/vars", bytes(range(256)) * 5),          # 1280 bytes: three data clusters, map depth 1
]
SNAPSHOT = "factory"
NEXT_WRITE = ("tpm/permanent", b"p" * 40)

KIND_NAMES = {
    fmt.KIND_DATA: "data", fmt.KIND_MAP: "cluster-map node", fmt.KIND_REFBLOCK: "refcount block",
    fmt.KIND_REFINDEX: "refcount index node", fmt.KIND_DIR: "directory node",
    fmt.KIND_SNAPDATA: "snapshot-table data",
}


# -- building the image ------------------------------------------------------------------------

def build():
    """Return (image bytes after the snapshot, image bytes after the next write)."""
    with mock.patch("uuid.uuid4", return_value=FIXED_UUID), \
            mock.patch("time.time", return_value=float(FIXED_TIME)):
        img = nvbox.create(None, cluster_size=CLUSTER_SIZE)
        with img.transaction():
            for name, data in BLOBS:
                img[name] = data
        img.snapshots.create(SNAPSHOT)
        first = bytes(img.dev.inner.data)
        img[NEXT_WRITE[0]] = NEXT_WRITE[1]
        second = bytes(img.dev.inner.data)
        img.close()
    return first, second


# -- rendering helpers -------------------------------------------------------------------------

def hexbytes(b: bytes) -> str:
    return " ".join(f"{x:02x}" for x in b)


class Listing:
    """Annotated lines: absolute offset, up to 16 bytes, field name, value."""

    def __init__(self, raw: bytes, base: int, size: int):
        self.raw, self.base, self.size = raw, base, size
        self.lines: list[str] = []
        self.pos = 0            # next unlabelled byte, relative to base

    def field(self, rel: int, size: int, name: str, value: str = "") -> None:
        assert rel == self.pos, f"gap or overlap at +{rel} (expected +{self.pos}) before {name}"
        data = self.raw[self.base + rel:self.base + rel + size]
        assert len(data) == size
        if size > 16 and not any(data):
            self._line(rel, f"00 x {size}", name, value or "zero")
        else:
            for i in range(0, max(size, 1), 16):
                chunk = data[i:i + 16]
                self._line(rel + i, hexbytes(chunk), name if i == 0 else "", value if i == 0 else "")
        self.pos = rel + size

    def excerpt(self, rel: int, size: int, name: str, value: str, head: int = 32, tail: int = 16) -> None:
        """A long run of content shown by its first and last bytes."""
        assert rel == self.pos
        data = self.raw[self.base + rel:self.base + rel + size]
        if size <= head + tail + 16 or not any(data):
            self.field(rel, size, name, value)
            return
        for i in range(0, head, 16):
            self._line(rel + i, hexbytes(data[i:i + 16]), name if i == 0 else "", value if i == 0 else "")
        self.lines.append(f"{'':8}  ... {size - head - tail} bytes ...")
        for i in range(size - tail, size, 16):
            self._line(rel + i, hexbytes(data[i:i + 16]), "", "")
        self.pos = rel + size

    def _line(self, rel: int, hx: str, name: str, value: str) -> None:
        self.lines.append(f"{self.base + rel:08x}  {hx:<47}  {name:<24} {value}".rstrip())

    def done(self) -> list[str]:
        assert self.pos == self.size, f"structure has {self.size} bytes, labelled {self.pos}"
        return ["```", f"{'offset':<8}  {'bytes':<47}  {'field':<24} value"] + self.lines + ["```"]


def ptr_text(p: fmt.Pointer) -> str:
    if p.is_null:
        return "null"
    return f"cluster {p.offset // CLUSTER_SIZE} (offset 0x{p.offset:x}), crc 0x{p.crc:08x}"


def pointer_fields(lst: Listing, rel: int, name: str, p: fmt.Pointer, field_width: int = 16) -> None:
    """A plain 16-byte pointer (section 6), optionally padded to a 40-byte slot field."""
    if p.is_null:
        lst.field(rel, field_width, name, "null pointer (all zero)")
        return
    lst.field(rel, 8, f"{name}.offset", f"0x{p.offset:x} = cluster {p.offset // CLUSTER_SIZE}")
    lst.field(rel + 8, 4, f"{name}.crc", f"0x{p.crc:08x}")
    lst.field(rel + 12, 4, f"{name}.reserved", "0")
    if field_width > 16:
        lst.field(rel + 16, field_width - 16, "(pointer field pad)", "zero")


def u(raw: bytes, off: int, size: int) -> int:
    return int.from_bytes(raw[off:off + size], "little")


# -- the walk: what every cluster is and who refers to it --------------------------------------

class Walk:
    """What every cluster reachable from the active slot is, and who refers to it
    (R-ref-6): the library's tree visitor over the image, each cluster once."""

    def __init__(self, raw: bytes):
        self.raw = raw
        self.header = fmt.decode_header(raw[:fmt.HEADER_AREA])
        self.geo = fmt.Geometry(self.header.cluster_bits)
        valid = [(i, raw[off:off + 512]) for i, off in enumerate(fmt.SLOT_OFFSETS)
                 if fmt.slot_is_valid(raw[off:off + 512], i)]
        valid.sort(key=lambda t: fmt.slot_generation(t[1]), reverse=True)
        self.active_index = valid[0][0]
        self.slots = {i: fmt.decode_slot(b, self.header) for i, b in valid}
        self.slot = self.slots[self.active_index]
        self.kind: dict[int, str] = {}
        self.refs: dict[int, list[str]] = {}
        with nvbox.open(raw) as img:     # reads verify every cluster against its pointer's CRC
            visitor = Visitor(img.store.read_raw, img.geo, self.slot.image_clusters)
            self._label(visitor)
        self.snapshots: list[fmt.Snapshot] = visitor.snapshots

    def _label(self, visitor: Visitor) -> None:
        s = self.slot
        roots = {"refcount": (s.refcount_root, "slot.refcount_root"), "active": (s.dir_root, "slot.dir_root"),
                 "snapshot table": (s.snaptable_root, "slot.snaptable_root")}
        started = set()
        for r in visitor.slot(s):
            if r.owner not in started:      # a tree's root: referred to by the slot or a snapshot
                started.add(r.owner)
                if r.owner in roots:
                    self._ref(*roots[r.owner])
                elif r.owner.startswith("snapshot:"):
                    snap = next(x for x in visitor.snapshots if f"snapshot:{x.name}" == r.owner)
                    self._ref(snap.dir_root, f"snapshot {snap.id} ({snap.name}) dirRoot")
            self.kind[r.cluster] = self._kind_label(r)
            if r.kind == "header":
                self.refs[r.cluster] = ["header area (R-ref-3)"]
            elif r.first:
                self._children(r)

    @staticmethod
    def _kind_label(r) -> str:
        if r.kind == "header":
            return "header area"
        if r.kind in ("refblock", "refindex"):
            return "refcount block" if r.level == 1 else "refcount index node"
        if r.kind == "dir":
            return "directory node" + (" (leaf)" if r.level == 0 else " (index)")
        owner = r.blob if r.blob is not None else "snapshot table"
        if r.kind in ("map", "snapmap"):
            return f"cluster-map node ({owner})"
        return KIND_NAMES[fmt.KIND_DATA if r.kind == "data" else fmt.KIND_SNAPDATA] + f" ({owner})"

    def _children(self, r) -> None:
        """The pointers a node holds, as references to their clusters."""
        here = r.cluster
        if r.kind in ("refindex", "map", "snapmap"):
            what = "refcount index" if r.kind == "refindex" else "map node"
            for j, ch in enumerate(r.node or ()):
                if not ch.is_null:
                    self._ref(ch, f"{what} @{here} [{j}]")
        elif r.kind == "dir" and r.node is not None:
            for item in r.node.items:
                if r.level == 0:
                    if item.inline is None and not item.root.is_null:
                        self._ref(item.root, f"dir node @{here} entry {item.name}")
                else:
                    self._ref(item.child, f"dir node @{here} branch")

    def _ref(self, p: fmt.Pointer, who: str) -> None:
        if not p.is_null:
            self.refs.setdefault(p.offset // CLUSTER_SIZE, []).append(who)

    def cluster(self, c: int) -> bytes:
        return self.raw[c * CLUSTER_SIZE:(c + 1) * CLUSTER_SIZE]

    def read_map(self, root, depth, size) -> bytes:
        """The ``size`` bytes a cluster map holds (holes read as zeros)."""
        walk = Visitor(lambda ptr, kind: self.cluster(ptr.offset // CLUSTER_SIZE), self.geo,
                       self.slot.image_clusters)
        data = {r.index: self.cluster(r.cluster) for r in walk.cluster_map(root, depth, size, "read")
                if r.kind == "data"}
        return b"".join(data.get(i, bytes(CLUSTER_SIZE)) for i in range(-(-size // CLUSTER_SIZE)))[:size]

    def counts(self) -> list[int]:
        """Stored counts, read through the refcount tree (section 7 lookup)."""
        out = []
        for c in range(self.slot.image_clusters):
            node, level, i = self.slot.refcount_root, self.slot.refcount_depth, c
            per, F = self.geo.counts_per_block, self.geo.fanout
            while level > 1:
                span = per * F ** (level - 2)
                node = fmt.decode_pointers(self.cluster(node.offset // CLUSTER_SIZE), self.geo)[i // span]
                i %= span
                level -= 1
                if node.is_null:
                    break
            out.append(0 if node.is_null else u(self.cluster(node.offset // CLUSTER_SIZE), 2 * i, 2))
        return out


# -- dumpasn1-style decoding -------------------------------------------------------------------

_TYPE = {der.SEQUENCE: "SEQUENCE", der.INTEGER: "INTEGER", der.OCTET_STRING: "OCTET STRING",
         der.UTF8_STRING: "UTF8String"}


def dumpasn1(buf: bytes) -> list[str]:
    """Decode a DER value in the layout of Peter Gutmann's dumpasn1 (default options)."""
    out: list[str] = []
    w = max(3, len(str(len(buf))))

    def walk(start, end, depth):
        pos = start
        while pos < end:
            tag, cs, ce = der.read_tlv(buf, pos, end)
            ind = "  " * depth
            head = f"{pos:>{w}} {ce - cs:>{w}}: {ind}"
            if tag & 0xC0 == 0x80:
                name = f"[{tag & 0x1F}]"
            else:
                name = _TYPE[tag]
            if tag & 0x20:
                out.append(f"{head}{name} {{")
                walk(cs, ce, depth + 1)
                out.append(f"{'':>{w}} {'':>{w}}: {ind}  }}")
            else:
                content = buf[cs:ce]
                if tag == der.INTEGER:
                    val = str(int.from_bytes(content, "big")) if len(content) <= 4 else hexbytes(content).upper()
                elif tag == der.UTF8_STRING or all(0x20 <= b < 0x7F for b in content):
                    val = "'" + content.decode("utf-8") + "'"
                else:
                    val = hexbytes(content).upper()
                out.append(f"{head}{name} {val}")
            pos = ce
    walk(0, len(buf), 0)
    return out


def der_fields(lst: Listing, body_rel: int, buf: bytes, schema) -> None:
    """Label each TLV of ``buf`` (placed at ``body_rel`` in the listing) with ASN.1 names.

    ``schema`` maps a tuple path of ASN.1 names to a function naming children.
    """
    def walk(start, end, names):
        pos = start
        i = 0
        while pos < end:
            tag, cs, ce = der.read_tlv(buf, pos, end)
            name, value_fn = schema(names, i, tag)
            hl = cs - pos
            length_note = f"length {ce - cs}"
            if tag & 0x20:
                lst.field(body_rel + pos, hl, f"{name}", f"tag 0x{tag:02x}, {length_note}")
                walk(cs, ce, names + (name,))
            else:
                lst.field(body_rel + pos, hl, f"{name}", f"tag 0x{tag:02x}, {length_note}")
                value_fn(body_rel + cs, buf[cs:ce], name)
            pos = ce
            i += 1
    walk(0, len(buf), ())


def _content(lst):
    def show(rel, content, name):
        if not content:
            return
        lst.field(rel, len(content), "  (content)", "")
    return show


def dir_leaf_schema(lst: Listing):
    def integer(rel, content, name):
        lst.field(rel, len(content), "  (value)", str(int.from_bytes(content, "big")))

    def text(rel, content, name):
        lst.field(rel, len(content), "  (value)", repr(content.decode("utf-8")))

    def inline(rel, content, name):
        if len(content) > 16:
            lst.field(rel, 16, "  (blob bytes)", f"{len(content)} bytes of the blob")
            lst.field(rel + 16, len(content) - 16, "", "")
        else:
            lst.field(rel, len(content), "  (blob bytes)", f"{len(content)} bytes of the blob")

    def pointer(rel, content, name):
        p = fmt.decode_pointer(content, len(content))
        base = rel - lst.base if False else rel
        lst.field(base, 8, "  root.offset", f"0x{p.offset:x} = cluster {p.offset // CLUSTER_SIZE}")
        lst.field(base + 8, 4, "  root.crc", f"0x{p.crc:08x}")
        lst.field(base + 12, 4, "  root.reserved", "0")

    def schema(path, i, tag):
        depth = len(path)
        if depth == 0:
            return "DirLeaf SEQUENCE OF", None
        if depth == 1:
            return f"DirEntry [{i}]", None
        if depth == 2:
            if i == 0:
                return "name UTF8String", text
            if i == 1:
                return "size INTEGER", integer
            if tag == der.context(0):
                return "content: inline [0]", inline
            if tag == der.context(1, True):
                return "content: clusters [1]", None
            return f"extension [{tag & 0x1f}]", _content(lst)
        if i == 0:
            return "depth INTEGER", integer
        return "root OCTET STRING", pointer
    return schema


def snapshot_schema(lst: Listing):
    names = ["id INTEGER", "name UTF8String", "createTime INTEGER", "blobCount INTEGER",
             "dirDepth INTEGER", "dirRoot OCTET STRING", "metadata [0]"]

    def integer(rel, content, name):
        lst.field(rel, len(content), "  (value)", str(int.from_bytes(content, "big")))

    def text(rel, content, name):
        lst.field(rel, len(content), "  (value)", repr(content.decode("utf-8")))

    def pointer(rel, content, name):
        p = fmt.decode_pointer(content, len(content))
        lst.field(rel, 8, "  dirRoot.offset", f"0x{p.offset:x} = cluster {p.offset // CLUSTER_SIZE}")
        lst.field(rel + 8, 4, "  dirRoot.crc", f"0x{p.crc:08x}")
        lst.field(rel + 12, 4, "  dirRoot.reserved", "0")

    def schema(path, i, tag):
        if len(path) == 0:
            return "SnapshotTable SEQUENCE OF", None
        if len(path) == 1:
            return f"Snapshot [{i}]", None
        name = names[i] if i < len(names) else f"extension [{tag & 0x1f}]"
        fn = {0: integer, 1: text, 2: integer, 3: integer, 4: integer, 5: pointer}.get(i, _content(lst))
        return name, fn
    return schema


# -- the document ------------------------------------------------------------------------------

def render() -> str:
    raw, after = build()
    walk = Walk(raw)
    geo, header, slot = walk.geo, walk.header, walk.slot
    counts = walk.counts()
    cs = CLUSTER_SIZE
    out: list[str] = []
    add = out.append

    add("# nvbox: an annotated example image")
    add("")
    add("<!-- Generated by spec/make_example.py; do not edit by hand.  reference/tests/test_example.py")
    add("     regenerates it and fails when this file is stale. -->")
    add("")
    add("This is a complete nvbox image as the reference library writes it, byte by byte, with every")
    add("byte labelled by the field names of [nvbox.md](nvbox.md). It is small on purpose: 512-byte")
    add("clusters (the smallest allowed), so the whole image is "
        f"{len(raw)} bytes ({len(raw) // cs} clusters).")
    add("It was made by these calls, with the image UUID and the clock fixed so that the bytes are the")
    add("same on every run:")
    add("")
    add("```python")
    add(f"{'img = nvbox.create(None, cluster_size=' + str(CLUSTER_SIZE) + ')':<48}# generation 1")
    add(f"{'with img.transaction():':<48}# generation 2: one commit")
    for name, data in BLOBS:
        desc = f"{data[:1]!r} * {len(data)}" if len(set(data)) == 1 else "bytes(range(256)) * 5"
        add(f"    img[{name!r}] = {desc}")
    add(f"{'img.snapshots.create(' + repr(SNAPSHOT) + ')':<48}# generation 3")
    add("```")
    add("")
    add(f"`image_uuid` is `{FIXED_UUID}` and every timestamp is {FIXED_TIME} (2011-09-08 12:11:00 UTC,")
    add("the date of the qemu-devel message in which this design was first discussed).")
    add(f"`inline_max` is min(512 / 8, 1024) = {geo.inline_max} bytes, so the 40-byte and 32-byte blobs are")
    add("inline in their directory entries, and the 1280-byte blob needs three data clusters and a")
    add(f"cluster map of depth 1 (one map node of F = 512 / 16 = {geo.fanout} pointers).")
    add("")
    add("Offsets are absolute and hexadecimal; `00 x N` stands for N zero bytes; integers are")
    add("little-endian except inside DER, which is big-endian by definition.")
    add("")

    # overview
    add("## 1. Cluster overview")
    add("")
    add(f"The active commit slot is slot {'AB'[walk.active_index]} (generation {slot.generation}). "
        "The expected count of a cluster is the number of pointers to it")
    add("found by visiting every reachable cluster once (R-ref-6); the stored count is what the refcount")
    add("tree says. They agree, so `nvbox check` reports this image clean.")
    add("")
    add("| cluster | offset | holds | stored count | referred to by |")
    add("|---|---|---|---|---|")
    for c in range(slot.image_clusters):
        kind = walk.kind.get(c)
        refs = walk.refs.get(c, [])
        if kind is None:
            kind = "free (stale contents, see below)"
        assert counts[c] == len(refs), f"cluster {c}: stored {counts[c]}, expected {len(refs)}"
        add(f"| {c} | 0x{c * cs:04x} | {kind} | {counts[c]} | {'; '.join(refs) or '-'} |")
    add("")
    add("Things to notice:")
    add("")
    dir_c = slot.dir_root.offset // cs
    add(f"- The snapshot took **one** reference: the directory root (cluster {dir_c}) has count 2, one from")
    add("  the slot and one from the snapshot record. Nothing below it was touched: the map node and the")
    add("  data clusters still have count 1 (lazy reference counting, R-cow-2). In qcow2 the same")
    add("  snapshot would have incremented the count of every allocated cluster.")
    free = [c for c in range(slot.image_clusters) if counts[c] == 0]
    old_slot = walk.slots.get(1 - walk.active_index)
    if old_slot is not None:
        old_ref = old_slot.refcount_root.offset // cs
        add(f"- Cluster {old_ref} is free in generation {slot.generation} but is the refcount block of generation "
            f"{old_slot.generation},")
        add(f"  which the older slot still names. It may not be written until generation {slot.generation} is durable")
        add(f"  (R-alloc-2), and `alloc_hint` = {slot.alloc_hint} in the active slot says every cluster below it is in use.")
    snap_c = slot.snaptable_root.offset // cs
    add(f"- The snapshot table (cluster {snap_c}) reuses the cluster that held the refcount block of")
    add("  generation 1, freed by generation 2 and allocatable once generation 2 was durable.")
    add("")

    # header
    add("## 2. Header (bytes 0-511, section 3)")
    add("")
    L = Listing(raw, 0, 512)
    L.field(0, 8, "magic", '"\\x8aNVB\\r\\n\\x1a\\n"')
    L.field(8, 4, "version", str(u(raw, 8, 4)))
    L.field(12, 4, "header_length", str(u(raw, 12, 4)))
    L.field(16, 1, "cluster_bits", f"{raw[16]} (cluster_size {1 << raw[16]})")
    L.field(17, 1, "refcount_order", f"{raw[17]} (16-bit counts)")
    L.field(18, 2, "reserved0", "0")
    L.field(20, 4, "header_flags", "0")
    L.field(24, 16, "image_uuid", str(uuid.UUID(bytes=raw[24:40])))
    L.field(40, 8, "capacity_clusters", f"{u(raw, 40, 8)} (growable)")
    L.field(48, 8, "create_time", str(u(raw, 48, 8)))
    L.field(56, header.header_length - 56, "reserved1", "zero")
    pos = header.header_length
    for ext in header.extensions:
        L.field(pos, 2, "ext_type", f"{ext.ext_type} (creator)" if ext.ext_type == 1 else str(ext.ext_type))
        L.field(pos + 2, 2, "ext_flags", f"{ext.ext_flags} (not required)")
        L.field(pos + 4, 4, "ext_length", str(len(ext.ext_data)))
        L.field(pos + 8, len(ext.ext_data), "ext_data", repr(ext.ext_data.decode()))
        pad = (len(ext.ext_data) + 7) // 8 * 8 - len(ext.ext_data)
        pos += 8 + len(ext.ext_data)
        if pad:
            L.field(pos, pad, "(padding to 8)", "zero")
            pos += pad
    L.field(pos, 8, "end record", "ext_type 0, ext_flags 0, ext_length 0")
    L.field(pos + 8, 508 - pos - 8, "(after end record)", "zero (R-header-10)")
    L.field(508, 4, "header_crc", f"0x{u(raw, 508, 4):08x} = CRC-32C of bytes 0-507")
    out.extend(L.done())
    add("")
    assert fmt.crc32c(raw[:508]) == u(raw, 508, 4)

    # slots
    for index in (walk.active_index, 1 - walk.active_index):
        base = fmt.SLOT_OFFSETS[index]
        s = walk.slots.get(index)
        role = "active" if index == walk.active_index else "older, still valid"
        add(f"## {3 + (index != walk.active_index)}. Commit slot {'AB'[index]} "
            f"(bytes {base}-{base + 511}, section 4): generation {s.generation}, {role}")
        add("")
        if index != walk.active_index:
            add(f"The slot of the previous commit. It stays valid until generation {s.generation + 2} overwrites it;")
            add("a reader never chooses it while the newer slot is valid (R-slot-3, R-slot-4). It is shown")
            add("because after a crash during the next commit it is what the image would open at.")
            add("")
        L = Listing(raw, base, 512)
        L.field(0, 8, "slot_magic", '"NVBXSLOT"')
        L.field(8, 8, "generation", f"{s.generation} ({'odd: slot A' if s.generation % 2 else 'even: slot B'})")
        L.field(16, 8, "incompatible_features", "0")
        L.field(24, 8, "compatible_features", "0")
        L.field(32, 8, "autoclear_features", "0")
        L.field(40, 8, "image_clusters", str(s.image_clusters))
        L.field(48, 8, "blob_count", str(s.blob_count))
        L.field(56, 8, "next_snapshot_id", str(s.next_snapshot_id))
        L.field(64, 8, "commit_time", str(s.commit_time))
        L.field(72, 1, "refcount_depth", str(s.refcount_depth))
        L.field(73, 1, "dir_depth", str(s.dir_depth))
        L.field(74, 1, "snaptable_depth", str(s.snaptable_depth))
        L.field(75, 1, "reserved0", "0")
        L.field(76, 4, "snapshot_count", str(s.snapshot_count))
        L.field(80, 8, "snaptable_size", f"{s.snaptable_size} bytes of DER")
        pointer_fields(L, 88, "refcount_root", s.refcount_root, 40)
        pointer_fields(L, 128, "dir_root", s.dir_root, 40)
        pointer_fields(L, 168, "snaptable_root", s.snaptable_root, 40)
        pointer_fields(L, 208, "keyslots", s.keyslots, 40)
        L.field(248, 8, "alloc_hint", str(s.alloc_hint))
        L.field(256, 220, "reserved1", "zero")
        L.field(476, 32, "slot_mac", "zero (plain image)")
        L.field(508, 4, "slot_crc", f"0x{u(raw, base + 508, 4):08x} = CRC-32C of bytes 0-507 of the slot")
        out.extend(L.done())
        add("")

    add("## 5. Rest of the header area (bytes 1536-2047)")
    add("")
    add("Reserved; zero. With 512-byte clusters the header area is clusters 0-3 (`header_clusters` =")
    add("ceil(2048 / 512) = 4), each with count 1 (R-ref-3).")
    add("")
    L = Listing(raw, 1536, 512)
    L.field(0, 512, "(reserved)", "zero")
    out.extend(L.done())
    add("")

    # clusters
    sec = 6
    for c in range(geo.header_clusters, slot.image_clusters):
        kind = walk.kind.get(c, "free")
        base = c * cs
        data = walk.cluster(c)
        add(f"## {sec}. Cluster {c} (offset 0x{base:x}): {kind}")
        sec += 1
        add("")
        refs = walk.refs.get(c, [])
        if kind.startswith("snapshot-table data"):
            add(f"The snapshot table is stored like a blob (section 11): `snaptable_size` = {slot.snaptable_size} bytes of")
            add("DER `SnapshotTable` in a cluster map of depth 0, so `snaptable_root` names this one data cluster,")
            add("and the rest of the cluster is zero (R-map-3).")
            add("")
            tbl = data[:slot.snaptable_size]
            L = Listing(raw, base, cs)
            der_fields(L, 0, tbl, snapshot_schema(L))
            L.field(len(tbl), cs - len(tbl), "(beyond snaptable_size)", "zero (R-map-3)")
            out.extend(L.done())
            add("")
            add("Decoded by `dumpasn1` (offsets relative to the start of the table):")
            add("")
            add("```")
            out.extend(dumpasn1(tbl))
            add("```")
            add("")
        elif kind.startswith("data"):
            owner = kind[kind.index("(") + 1:-1]
            idx = next(int(r.rsplit("[", 1)[1][:-1]) for r in refs)
            size = dict(BLOBS)[owner].__len__()
            used = min(cs, size - idx * cs)
            add(f"Data cluster {idx} of blob `{owner}` (bytes {idx * cs}-{idx * cs + used - 1} of the blob). "
                "It has no header: a data cluster")
            add("is only content; its checksum is in the map node that points to it.")
            add("")
            L = Listing(raw, base, cs)
            L.excerpt(0, used, "(blob bytes)", f"blob bytes {idx * cs}..{idx * cs + used - 1}")
            if used < cs:
                L.field(used, cs - used, "(beyond size)", "zero (R-map-3)")
            out.extend(L.done())
            add("")
        elif kind.startswith("cluster-map node"):
            ptrs = fmt.decode_pointers(data, geo)
            add(f"A map node is exactly F = {geo.fanout} pointers of 16 bytes and nothing else (section 8). Pointer `i`")
            add("names data cluster `i` of the blob; pointers for clusters at or past ceil(size / 512) = "
                f"{-(-1280 // cs)} are null (R-map-3).")
            add("")
            L = Listing(raw, base, cs)
            last = max(j for j, p in enumerate(ptrs) if not p.is_null)
            for j in range(last + 1):
                pointer_fields(L, j * 16, f"pointer[{j}]", ptrs[j])
            L.field((last + 1) * 16, cs - (last + 1) * 16, f"pointer[{last + 1}..{geo.fanout - 1}]", "null")
            out.extend(L.done())
            add("")
        elif kind.startswith("directory node"):
            node = fmt.decode_dir_node(data, geo, 0)
            blen = u(data, 8, 4)
            body = data[16:16 + blen]
            add("A directory node: a 16-byte header, a DER body, zero padding (section 9). This is the only")
            add(f"node, so it is both the root and a leaf (`dir_depth` = {slot.dir_depth}, `level` = 0). Its entries are in")
            add("ascending order of SHA-256(name), not of the name (R-dir-2):")
            add("")
            add("| name | SHA-256(name) |")
            add("|---|---|")
            for e in node.items:
                add(f"| `{e.name}` | `{hashlib.sha256(e.name.encode()).hexdigest()}` |")
            add("")
            L = Listing(raw, base, cs)
            L.field(0, 4, "node_magic", '"NVDN"')
            L.field(4, 1, "level", f"{data[4]} (leaf)")
            L.field(5, 1, "reserved0", "0")
            L.field(6, 2, "count", f"{u(data, 6, 2)} entries")
            L.field(8, 4, "body_length", f"{blen} (at most cluster_size - 16 = {cs - 16})")
            L.field(12, 4, "reserved1", "0")
            der_fields(L, 16, body, dir_leaf_schema(L))
            L.field(16 + blen, cs - 16 - blen, "(padding)", "zero")
            out.extend(L.done())
            add("")
            add("The body decoded by `dumpasn1` (run on the `body_length` bytes from offset "
                f"0x{base + 16:x}; offsets are relative")
            add("to the body). `openssl asn1parse -inform DER -i` decodes the same bytes.")
            add("")
            add("```")
            out.extend(dumpasn1(body))
            add("```")
            add("")
            add("(dumpasn1 then prints `0 warnings, 0 errors.`; test_example.py runs the real tool, when it is")
            add("installed, and checks that its output matches these lines.)")
            add("")
            add("The `[1]` value is the `ClusterMap` of `uefi/vars`: `depth` 1 and a 16-byte plain pointer to")
            add("the map node. The `[0]` values are inline blob bytes. To extract the body for these tools:")
            add("")
            add("```sh")
            add(f"dd if=example.nvbox bs=1 skip=$((0x{base + 16:x})) count={blen} of=body.der && dumpasn1 body.der")
            add("```")
            add("")
        elif kind.startswith("refcount block"):
            add(f"A refcount block holds cluster_size / 2 = {geo.counts_per_block} little-endian u16 counts; entry `j` is the")
            add(f"count of cluster `j` (`refcount_depth` = {slot.refcount_depth}, so this block is the whole tree and covers")
            add(f"clusters 0-{geo.counts_per_block - 1}). Counts at or past `image_clusters` = {slot.image_clusters} are zero.")
            add("")
            L = Listing(raw, base, cs)
            for j in range(slot.image_clusters):
                L.field(2 * j, 2, f"count[{j}]", f"{u(data, 2 * j, 2)}  {walk.kind.get(j, 'free')}")
            L.field(2 * slot.image_clusters, cs - 2 * slot.image_clusters,
                    f"count[{slot.image_clusters}..{geo.counts_per_block - 1}]", "zero (past image_clusters)")
            out.extend(L.done())
            add("")
        else:
            add("Count 0: free. Its bytes are what generation "
                f"{old_slot.generation if old_slot else '?'} wrote, and the older slot still names it. A reader")
            add("never looks at a free cluster; a writer may reuse it once the current generation is durable.")
            add("")
            L = Listing(raw, base, cs)
            n = old_slot.image_clusters if old_slot else 0
            if old_slot is not None and old_slot.refcount_root.offset == base:
                for j in range(n):
                    L.field(2 * j, 2, f"count[{j}]", f"{u(data, 2 * j, 2)}  (generation {old_slot.generation})")
                L.field(2 * n, cs - 2 * n, f"count[{n}..{geo.counts_per_block - 1}]", "zero")
            else:
                L.field(0, cs, "(stale)", "")
            out.extend(L.done())
            add("")

    # checks a reader does
    add(f"## {sec}. Reading `uefi/vars`, step by step")
    sec += 1
    add("")
    e = next(x for x in fmt.decode_dir_node(walk.cluster(dir_c), geo, 0).items if x.name == "uefi/vars")
    mp = e.root.offset // cs
    mptrs = fmt.decode_pointers(walk.cluster(mp), geo)
    add("1. Read bytes 0-2047. `magic` matches, `header_crc` matches, `version` is 1 (R-header-9).")
    add(f"2. Slot A has `slot_magic`, a good CRC and an odd generation ({slot.generation}); slot B likewise with an")
    add(f"   even one ({old_slot.generation if old_slot else '-'}). The higher generation wins: slot A (R-slot-3).")
    add(f"3. `dir_depth` = 1: the root at offset 0x{slot.dir_root.offset:x} is a leaf. Read cluster {dir_c}, check")
    add(f"   CRC-32C(cluster) = 0x{slot.dir_root.crc:08x} as the slot's pointer says (R-ptr-3), decode the DER body.")
    add(f"4. Find the key SHA-256(\"uefi/vars\") = `{hashlib.sha256(b'uefi/vars').hexdigest()[:16]}...` in the leaf:")
    add(f"   size {e.size}, `clusters` with depth {e.depth} and root cluster {mp}.")
    add(f"5. Read map node {mp} (CRC 0x{e.root.crc:08x}); pointers 0-2 name clusters "
        + ", ".join(str(p.offset // cs) for p in mptrs[:3]) + ", each checked against its CRC.")
    add(f"6. The blob is the first {e.size} bytes of those three clusters; the last cluster's tail is zero.")
    add("")

    # next write
    add(f"## {sec}. What the next write changes")
    add("")
    add(f"The example stops after the snapshot. To show the lazy copy, here is what `img[{NEXT_WRITE[0]!r}] = "
        f"{NEXT_WRITE[1][:1]!r} * {len(NEXT_WRITE[1])}`")
    add(f"(generation {slot.generation + 1}) does to the same image. The directory leaf is shared (count 2), so")
    add("R-cow-2 copies it: the copy gets a new cluster, each cluster the old leaf points to gains a")
    add("reference (the map node goes from 1 to 2), and the old leaf drops to 1, held by the snapshot")
    add("alone. The map node and the data clusters are not copied; only the leaf and the refcount block are")
    add("written, plus the slot.")
    add("")
    w2 = Walk(after)
    c2 = w2.counts()
    add(f"| cluster | generation {slot.generation} | count | generation {w2.slot.generation} | count |")
    add("|---|---|---|---|---|")
    for c in range(max(slot.image_clusters, w2.slot.image_clusters)):
        k1 = walk.kind.get(c, "free") if c < slot.image_clusters else "-"
        k2 = w2.kind.get(c, "free") if c < w2.slot.image_clusters else "-"
        n1 = counts[c] if c < slot.image_clusters else "-"
        n2 = c2[c] if c < w2.slot.image_clusters else "-"
        if c >= geo.header_clusters:
            add(f"| {c} | {k1} | {n1} | {k2} | {n2} |")
    add("")
    old_rb = slot.refcount_root.offset // cs
    add(f"The new leaf landed in cluster {w2.slot.dir_root.offset // cs}, free since generation 3 became durable. The new")
    add(f"refcount block could not reuse cluster {old_rb}, the refcount block that generation 4 itself replaced")
    add(f"(R-alloc-2: slot A still names it until slot B is durable), so the image grew to cluster "
        f"{w2.slot.refcount_root.offset // cs}.")
    add(f"Written in generation {w2.slot.generation}: those two clusters and slot "
        f"{'AB'[(w2.slot.generation + 1) % 2]}, with two flushes (R-commit-1).")
    add("")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if spec/example.md is not current")
    ap.add_argument("--image", help="also write the example image (after the snapshot) to this file")
    args = ap.parse_args(argv)
    text = render()
    if args.image:
        Path(args.image).write_bytes(build()[0])
    if args.check:
        current = EXAMPLE.read_text(encoding="utf-8") if EXAMPLE.exists() else ""
        if current != text:
            print("spec/example.md is stale: run python spec/make_example.py", file=sys.stderr)
            return 1
        return 0
    EXAMPLE.write_text(text, encoding="utf-8")
    return 0


_ = struct
if __name__ == "__main__":
    sys.exit(main())
