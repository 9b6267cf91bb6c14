"""A minimal, independent nvbox image writer for the descriptor tests.

Written from spec/nvbox.md alone (not from the reference library) so that the
descriptors are tested against a second reading of the spec. It writes one
generation into slot A of a fresh image: data clusters and cluster maps,
directory leaves (and one index level when they do not fit one leaf), an
optional snapshot table (depth 0) whose snapshots share the directory root,
and a refcount tree that counts everything. Encrypted images get a real
header, slot and key slot table; their tree clusters are random bytes (the
descriptors never look inside them).
"""
from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass, field

import crc32c as crc32c_lib

MAGIC = b"\x8aNVB\r\n\x1a\n"


def crc32c(b: bytes) -> int:
    return crc32c_lib.crc32c(bytes(b))


# --- DER --------------------------------------------------------------------

def der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    assert len(body) <= 3
    return bytes([0x80 | len(body)]) + body


def tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + der_len(len(content)) + content


def der_int(v: int) -> bytes:
    body = v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big")
    return tlv(0x02, body)


def der_seq(*items: bytes) -> bytes:
    return tlv(0x30, b"".join(items))


# --- image ------------------------------------------------------------------

@dataclass
class Image:
    cluster_bits: int = 12
    encrypted: bool = False
    capacity_clusters: int = 0
    clusters: dict = field(default_factory=dict)   # index -> bytes
    next_cluster: int = 0
    children: dict = field(default_factory=dict)   # index -> list of child indexes

    def __post_init__(self):
        self.cs = 1 << self.cluster_bits
        self.hc = -(-2048 // self.cs)
        self.next_cluster = self.hc
        self.P = 40 if self.encrypted else 16
        self.F = self.cs // self.P

    def alloc(self, data: bytes, kids=()) -> int:
        assert len(data) <= self.cs
        i = self.next_cluster
        self.next_cluster += 1
        self.clusters[i] = data.ljust(self.cs, b"\0")
        self.children[i] = [k for k in kids if k]
        return i

    def ptr(self, idx: int | None, width: int | None = None) -> bytes:
        width = width or self.P
        if not idx:
            return bytes(width)
        off = idx * self.cs
        crc = crc32c(self.clusters[idx])
        if width == 16:
            return struct.pack("<QII", off, crc, 0)
        return struct.pack("<QI", off, crc) + os.urandom(12) + os.urandom(16)

    # cluster maps ---------------------------------------------------------
    def map_depth(self, size: int) -> int:
        d = 0
        while self.F ** d * self.cs < size:
            d += 1
        return d

    def store_clusters(self, data: bytes, depth: int | None = None) -> tuple[int, int | None]:
        depth = self.map_depth(len(data)) if depth is None else depth
        n = -(-len(data) // self.cs)
        cache = {}
        level = []
        for i in range(n):
            chunk = data[i * self.cs:(i + 1) * self.cs]
            if not chunk.strip(b"\0"):
                level.append(None)          # a hole
                continue
            level.append(self.alloc(chunk))
        for _ in range(depth):
            nxt = []
            for j in range(0, max(len(level), 1), self.F):
                group = level[j:j + self.F]
                if all(g is None for g in group):
                    nxt.append(None)
                    continue
                body = b"".join(self.ptr(g) for g in group)
                nxt.append(self.alloc(body, group))
            level = nxt
        assert len(level) <= 1, (depth, len(level))
        return depth, (level[0] if level else None)

    # directory --------------------------------------------------------------
    def entry(self, name: str, data: bytes, extensions: bytes = b"") -> tuple[bytes, list]:
        nb = name.encode()
        inline_max = min(self.cs // 8, 1024)
        if len(data) <= inline_max:
            content, kids = tlv(0x80, data), []
        else:
            depth, root = self.store_clusters(data)
            content = tlv(0xA1, der_int(depth) + tlv(0x04, self.ptr(root)))
            kids = [root]
        return der_seq(tlv(0x0C, nb), der_int(len(data)), content, extensions), kids

    def dir_node(self, level: int, elements: list[bytes], kids) -> int:
        body = der_seq(*elements)
        assert len(body) <= self.cs - 16
        hdr = b"NVDN" + struct.pack("<BBHII", level, 0, len(elements), len(body), 0)
        return self.alloc(hdr + body, kids)

    def build_directory(self, blobs: dict[str, bytes], extensions=None) -> tuple[int, int | None]:
        if not blobs:
            return 0, None
        extensions = extensions or {}
        items = sorted(blobs.items(), key=lambda kv: hashlib.sha256(kv[0].encode()).digest())
        leaves, cur, size, kids = [], [], 0, []
        for name, data in items:
            e, k = self.entry(name, data, extensions.get(name, b""))
            if cur and size + len(e) + 8 > self.cs - 16:
                leaves.append((cur, kids))
                cur, size, kids = [], 0, []
            cur.append((name, e))
            kids += k
            size += len(e)
        leaves.append((cur, kids))
        nodes = []
        for elems, k in leaves:
            idx = self.dir_node(0, [e for _, e in elems], k)
            nodes.append((hashlib.sha256(elems[0][0].encode()).digest(), idx))
        if len(nodes) == 1:
            return 1, nodes[0][1]
        branches = [der_seq(tlv(0x04, b"" if i == 0 else key), tlv(0x04, self.ptr(idx)))
                    for i, (key, idx) in enumerate(nodes)]
        return 2, self.dir_node(1, branches, [i for _, i in nodes])


def build(path, blobs=None, *, cluster_bits=12, encrypted=False, snapshots=(), creator="mkimage",
          extensions=None, header_length=128, capacity_clusters=0, slot_overrides=None, raw_ext=None):
    """Write an image to `path`; returns a dict describing what was written."""
    blobs = dict(blobs or {})
    im = Image(cluster_bits=cluster_bits, encrypted=encrypted)
    counts: dict[int, int] = {i: 1 for i in range(im.hc)}

    keyslots = None
    if encrypted:
        # Key slot table: one passphrase slot with plausible Argon2id parameters.
        slot0 = struct.pack("<B3xIII", 1, 3, 65536, 4) + os.urandom(16 + 12 + 32 + 16) + bytes(4)
        table = b"NVKS" + struct.pack("<HHI", 1, 8, 1) + bytes(20) + slot0 + bytes(96 * 7)
        keyslots = im.alloc(table)
        dir_depth, dir_root = (1, im.alloc(os.urandom(im.cs))) if blobs else (0, None)
        snap_size, snap_root = 0, None
    else:
        dir_depth, dir_root = im.build_directory(blobs, extensions)
        snap_size, snap_root, recs = 0, None, []
        for sid, sname in enumerate(snapshots, start=1):
            recs.append(der_seq(der_int(sid), tlv(0x0C, sname.encode()), der_int(1700000000),
                                der_int(len(blobs)), der_int(dir_depth), tlv(0x04, im.ptr(dir_root)),
                                tlv(0x80, b"meta")))
        if recs:
            table = der_seq(*recs)
            snap_size = len(table)
            assert snap_size <= im.cs, "only depth-0 snapshot tables are supported here"
            snap_root = im.alloc(table)
            im.children[snap_root] = []
    # snapshot records hold extra references to the directory root
    data_clusters = dict(im.children)
    for i, kids in data_clusters.items():
        counts[i] = counts.get(i, 0)
        for k in kids:
            counts[k] = counts.get(k, 0) + 1
    for r in (dir_root, snap_root, keyslots):
        if r:
            counts[r] = counts.get(r, 0) + 1
    if snap_root and dir_root:
        counts[dir_root] += len(snapshots)

    # refcount tree: fixpoint on the number of refcount clusters
    half = im.cs // 2
    nref = 0
    while True:
        total = im.next_cluster + nref
        blocks = -(-total // half)
        depth, nodes, width = 1, blocks, blocks
        while width > 1:
            width = -(-width // im.F)
            nodes += width
            depth += 1
        if nodes == nref:
            break
        nref = nodes
    first_ref = im.next_cluster
    image_clusters = first_ref + nref
    for i in range(first_ref, image_clusters):
        counts[i] = 1          # each refcount node has one parent (a node or the slot)
    level = []
    for b in range(blocks):
        vals = [counts.get(b * half + j, 0) for j in range(half)]
        level.append(im.alloc(struct.pack(f"<{half}H", *vals)))
    while len(level) > 1:
        level = [im.alloc(b"".join(im.ptr(c) for c in level[j:j + im.F]), level[j:j + im.F])
                 for j in range(0, len(level), im.F)]
    ref_root = level[0]
    assert im.next_cluster == image_clusters

    # header
    hl = header_length
    hdr = bytearray(512)
    struct.pack_into("<8sIIBBHI16sQQ", hdr, 0, MAGIC, 1, hl, cluster_bits, 4, 0, 0, os.urandom(16),
                     capacity_clusters, 1700000000)
    pos = hl
    exts = raw_ext if raw_ext is not None else (
        [(1, 0, creator.encode())] if creator is not None else [])
    for t, fl, data in exts:
        rec = struct.pack("<HHI", t, fl, len(data)) + data
        rec += bytes(-len(rec) % 8)
        hdr[pos:pos + len(rec)] = rec
        pos += len(rec)
    struct.pack_into("<I", hdr, 508, crc32c(hdr[:508]))

    # slot A, generation 1
    s = dict(slot_magic=b"NVBXSLOT", generation=1, incompatible_features=1 if encrypted else 0,
             compatible_features=0, autoclear_features=0, image_clusters=image_clusters,
             blob_count=len(blobs), next_snapshot_id=len(snapshots) + 1, commit_time=1700000001,
             refcount_depth=depth, dir_depth=dir_depth, snaptable_depth=0, reserved0=0,
             snapshot_count=len(snapshots), snaptable_size=snap_size)
    s.update(slot_overrides or {})
    slot = bytearray(512)
    struct.pack_into("<8sQQQQQQQQBBBBIQ", slot, 0, *s.values())
    slot[88:88 + im.P] = im.ptr(ref_root)
    slot[128:128 + im.P] = im.ptr(dir_root)
    slot[168:168 + im.P] = im.ptr(snap_root)
    slot[208:224] = im.ptr(keyslots, 16)
    if encrypted:
        slot[476:508] = os.urandom(32)      # a MAC the descriptors cannot verify
    struct.pack_into("<I", slot, 508, crc32c(slot[:508]))

    with open(path, "wb") as f:
        f.truncate(image_clusters * im.cs)
        f.write(bytes(hdr) + bytes(slot) + bytes(1024))
        for i, data in im.clusters.items():
            f.seek(i * im.cs)
            f.write(data)
    return dict(cluster_size=im.cs, image_clusters=image_clusters, dir_depth=dir_depth,
                refcount_depth=depth, counts=counts, header_clusters=im.hc)
