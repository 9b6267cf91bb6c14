"""Surgical corruption of nvbox images, for the conformance generator.

An invalid conformance case must hold exactly ONE fault: the rule it tests is
broken and every other rule holds, so a reader that enforces the rule names it
and a reader that does not is caught.  Since every pointer carries its target's
CRC-32C (and the commit slot carries its own), flipping a field in a cluster
would also break the checksum of that cluster's parent pointer; this module
repairs those checksums bottom-up ("re-sealing") so that only the intended
fault remains.

    ed = Editor(image_bytes)                    # walks the image with the reference's decoders
    node = ed.find("map")                       # a structure by kind (see Node.kind)
    ed.poke(node.index * ed.cs + 16 + 12, b"\\1")  # set bytes; re-seals up to the commit slot
    ed.set_slot("dir_depth", 17)                # a slot field; slot CRC recomputed
    bad = ed.bytes()

Locating structures uses the reference library's own decoders (``nvbox._format``
and ``nvbox._der``) over the raw bytes, so the map of the image is the
reference's reading of it: ``Layout`` records every cluster reachable from the
active commit slot (kind, level, parents) and the absolute byte positions of
every pointer that names it.  ``Editor.reseal(i)`` recomputes cluster ``i``'s
CRC, writes it into every pointer to ``i``, and re-seals the clusters (or the
commit slot) holding those pointers, up to the slot CRC.

Encrypted images are edited in plaintext: give ``Editor`` the opened image's
cipher (``Editor(raw, cipher=...)``) and ``set_cluster`` re-encrypts the cluster
under a fresh nonce, storing nonce and tag in the parent pointers; the slot MAC
is recomputed with the slot MAC key.  ``poke_raw`` changes stored bytes without
re-encrypting (to break authentication on purpose).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from nvbox import _der as der
from nvbox import _format as fmt

__all__ = ["Editor", "Layout", "Node", "Ref", "TLV", "parse_tlvs", "encode_tlv", "crc_fixpoint",
           "SLOT_FIELDS", "HEADER_FIELDS"]

def _field_codes(layout: fmt.Layout) -> dict:
    """name -> (offset, struct code) for each fixed field of a layout table."""
    return {f.name: (f.offset, f.code) for f in layout if f.fixed}


_PTR_CRC = fmt.PLAIN_POINTER_LAYOUT["crc"]   # at the same place in both pointer forms

#: Commit slot fields: name -> (offset, struct code), from the reference's table (spec section 4).
SLOT_FIELDS = _field_codes(fmt.SLOT)

#: Header fields: name -> (offset, struct code), from the reference's table (spec section 3).
HEADER_FIELDS = _field_codes(fmt.HEADER)

_AD_KIND = {"data": fmt.KIND_DATA, "map": fmt.KIND_MAP, "refblock": fmt.KIND_REFBLOCK,
            "refindex": fmt.KIND_REFINDEX, "dir": fmt.KIND_DIR, "snapdata": fmt.KIND_SNAPDATA,
            "snapmap": fmt.KIND_MAP, "keyslots": 0}


@dataclass
class Ref:
    """One pointer in the image: the absolute file offsets of its bytes, and the
    cluster it names.  ``holders`` are the clusters (or -1 for the commit slot)
    whose bytes hold the pointer (several when a snapshot-table pointer straddles
    two data clusters)."""

    at: list
    target: int
    width: int

    @property
    def crc_at(self) -> list:
        return self.at[_PTR_CRC.offset:_PTR_CRC.end]


@dataclass
class Node:
    """A cluster reachable from the active slot.

    ``kind``: refblock, refindex, map (a blob's cluster-map node), data,
    dir, snapmap (snapshot-table map node), snapdata, keyslots.  ``level``:
    refcount level, map height above data (0 for data), or directory level.
    ``refs``: the pointers it holds (children); ``parents``: pointers to it.
    ``info``: kind-specific notes (blob name, directory items, table records...)."""

    index: int
    kind: str
    level: int
    refs: list = field(default_factory=list)
    parents: list = field(default_factory=list)
    info: dict = field(default_factory=dict)
    owner: str = "active"   # "active", "snapshot:<name>", "table", "refcount", "keys"


# -- a small DER tree for editing directory bodies and snapshot tables --------------------

@dataclass
class TLV:
    tag: int
    content: bytes = b""
    kids: list | None = None          # constructed values: their elements
    length_override: bytes | None = None  # raw length bytes, to encode a non-minimal length
    start: int = 0                    # offset of the content in the parsed buffer

    def encode(self) -> bytes:
        return encode_tlv(self)


def parse_tlvs(buf, start: int = 0, end: int | None = None) -> list[TLV]:
    """Every TLV in buf[start:end]; constructed tags (0x30, 0xA0..) are parsed recursively."""
    end = len(buf) if end is None else end
    out = []
    for tag, cs, ce in der.elements(buf, start, end):
        if tag & 0x20:
            out.append(TLV(tag, kids=parse_tlvs(buf, cs, ce), start=cs))
        else:
            out.append(TLV(tag, bytes(buf[cs:ce]), start=cs))
    return out


def encode_tlv(t: TLV) -> bytes:
    content = b"".join(encode_tlv(k) for k in t.kids) if t.kids is not None else t.content
    length = t.length_override if t.length_override is not None else der.encode_length(len(content))
    return bytes((t.tag,)) + length + content


# -- CRC forging -------------------------------------------------------------------------

def crc_fixpoint(buf: bytearray, offset: int) -> int | None:
    """Set the u32 at ``offset`` of ``buf`` to v with crc32c(buf) == v (a cluster that
    names itself), solving the affine GF(2) system; returns v, or None if none exists."""
    def crc_with(v):
        struct.pack_into("<I", buf, offset, v)
        return fmt.crc32c(bytes(buf))

    c = crc_with(0)
    cols = [crc_with(1 << i) ^ c ^ (1 << i) for i in range(32)]  # columns of (L + I)
    rows = [[sum(1 << i for i in range(32) if cols[i] >> r & 1), c >> r & 1] for r in range(32)]
    pivots, ri = [], 0
    for col in range(32):
        p = next((k for k in range(ri, 32) if rows[k][0] >> col & 1), None)
        if p is None:
            continue
        rows[ri], rows[p] = rows[p], rows[ri]
        for k in range(32):
            if k != ri and rows[k][0] >> col & 1:
                rows[k][0] ^= rows[ri][0]
                rows[k][1] ^= rows[ri][1]
        pivots.append(col)
        ri += 1
    if any(rows[k][1] for k in range(ri, 32)):
        return None
    v = sum(1 << col for k, col in enumerate(pivots) if rows[k][1])
    return v if crc_with(v) == v else None


# -- the layout of an image ----------------------------------------------------------------

class Layout:
    """Every structure reachable from the active commit slot of ``raw``.

    Args:
        raw: the image bytes.
        cipher: the opened image's cipher (encrypted images), to decrypt nodes.
        slot_index: force a slot (0 = A, 1 = B) instead of the newest valid one.
    """

    def __init__(self, raw, cipher=None, slot_index: int | None = None):
        self.raw = raw
        self.cipher = cipher
        self.header = fmt.decode_header(bytes(raw[:fmt.HEADER_AREA]))
        if slot_index is None:
            valid = [i for i in (0, 1) if fmt.slot_is_valid(bytes(raw[fmt.SLOT_OFFSETS[i]:][:512]), i)]
            slot_index = max(valid, key=lambda i: fmt.slot_generation(raw, fmt.SLOT_OFFSETS[i]))
        self.slot_index = slot_index
        self.slot_off = fmt.SLOT_OFFSETS[slot_index]
        self.slot = fmt.decode_slot(bytes(raw[self.slot_off:self.slot_off + 512]), self.header)
        self.geo = fmt.Geometry(self.header.cluster_bits, self.slot.encrypted)
        self.cs = self.geo.cluster_size
        self.P = self.geo.pointer_size
        self.nodes: dict[int, Node] = {}
        self._pc: dict[int, bytearray] = {}   # plaintext of clusters read so far
        self.slot_refs: dict[str, Ref] = {}
        self.snapshots: list = []
        self._walk()

    # -- reading ---------------------------------------------------------

    def ptr_bytes(self, ref: Ref) -> bytes:
        out = bytearray()
        for loc in ref.at:
            out.append(self._pc[loc[0]][loc[1]] if isinstance(loc, tuple) else self.raw[loc])
        return bytes(out)

    def plain(self, index: int, kind: str, ref: Ref | None = None) -> bytes:
        if index in self._pc:
            return bytes(self._pc[index])
        raw = bytes(self.raw[index * self.cs:(index + 1) * self.cs])
        if self.cipher is not None and kind != "keyslots":
            p = fmt.decode_pointer(self.ptr_bytes(ref), ref.width)
            raw = self.cipher.decrypt(p.offset, _AD_KIND[kind], raw, p.nonce, p.tag)
        self._pc[index] = bytearray(raw)
        return raw

    def _ref(self, at: list, width: int | None = None) -> Ref | None:
        width = width or self.P
        ptr = fmt.decode_pointer(bytes(self.raw[a] for a in at[:width]), width)  # plain images
        if ptr.is_null:
            return None
        return Ref(list(at[:width]), ptr.offset // self.cs, width)

    def _visit(self, ref: Ref, kind: str, level: int, owner: str) -> tuple[Node, bool]:
        node = self.nodes.get(ref.target)
        if node is not None:
            node.parents.append(ref)
            return node, False
        node = Node(ref.target, kind, level, owner=owner)
        node.parents.append(ref)
        self.nodes[ref.target] = node
        return node, True

    def _walk(self) -> None:
        so, P = self.slot_off, self.P
        for name, off in (("refcount_root", 88), ("dir_root", 128), ("snaptable_root", 168)):
            r = self._ref(list(range(so + off, so + off + P)))
            if r is not None:
                self.slot_refs[name] = r
        r = self._ref(list(range(so + 208, so + 224)), fmt.PLAIN_POINTER)
        if r is not None:
            self.slot_refs["keyslots"] = r
        s = self.slot
        if "refcount_root" in self.slot_refs:
            self._refcount(self.slot_refs["refcount_root"], s.refcount_depth)
        if "dir_root" in self.slot_refs:
            self._dir(self.slot_refs["dir_root"], s.dir_depth - 1, "active")
        if "snaptable_root" in self.slot_refs:
            self._snaptable(self.slot_refs["snaptable_root"], s.snaptable_depth, s.snaptable_size)
        if "keyslots" in self.slot_refs:
            self._visit(self.slot_refs["keyslots"], "keyslots", 0, "keys")

    def _pointer_refs(self, node: Node, ref: Ref, kind: str) -> list:
        raw = self.plain(node.index, kind, ref)
        P = self.P
        if self.cipher is not None:
            return [_PlainRef.make(raw, j, P, node.index, self.cs) for j in range(self.geo.fanout)]
        base = node.index * self.cs
        return [self._ref(list(range(base + j * P, base + (j + 1) * P))) if any(raw[j * P:(j + 1) * P]) else None
                for j in range(self.geo.fanout)]

    def _refcount(self, ref: Ref, level: int) -> None:
        kind = "refblock" if level == 1 else "refindex"
        node, new = self._visit(ref, kind, level, "refcount")
        if not new or level == 1:
            return
        for j, r in enumerate(self._pointer_refs(node, ref, kind)):
            if r is not None:
                node.refs.append(r)
                self._refcount(r, level - 1)

    def _map(self, ref: Ref, depth: int, owner: str, blob: str, map_kind="map", data_kind="data", base=0) -> None:
        kind = data_kind if depth == 0 else map_kind
        node, new = self._visit(ref, kind, depth, owner)
        node.info.setdefault("blob", blob)
        node.info.setdefault("first_cluster", base)
        if not new or depth == 0:
            return
        span = self.geo.fanout ** (depth - 1)
        for j, r in enumerate(self._pointer_refs(node, ref, kind)):
            if r is not None:
                node.refs.append(r)
                self._map(r, depth - 1, owner, blob, map_kind, data_kind, base + j * span)

    def _dir(self, ref: Ref, level: int, owner: str) -> None:
        node, new = self._visit(ref, "dir", level, owner)
        if not new:
            return
        raw = self.plain(node.index, "dir", ref)
        base = node.index * self.cs
        body_length = fmt.DIR_NODE.unpack(raw)["body_length"]
        items = []
        for tag, a, b in der.elements(raw, *der.parse_single(raw, 16, 16 + body_length, der.SEQUENCE)):
            fields = der.elements(raw, a, b)
            if level == 0:
                name = der.as_utf8(raw, fields[0][1], fields[0][2])
                size = der.as_integer(raw, fields[1][1], fields[1][2])
                item = {"name": name, "size": size, "span": (a, b)}
                t2, c0, c1 = fields[2]
                if t2 == der.context(0):
                    item["inline"] = True
                else:
                    parts = der.elements(raw, c0, c1)
                    depth = der.as_integer(raw, parts[0][1], parts[0][2])
                    pa, pb = parts[1][1], parts[1][2]
                    item.update(inline=False, depth=depth)
                    r = self._locate(node.index, raw, pa, pb)
                    if r is not None:
                        node.refs.append(r)
                        item["ref"] = r
                        self._map(r, depth, owner, name)
                items.append(item)
            else:
                low = bytes(raw[fields[0][1]:fields[0][2]])
                r = self._locate(node.index, raw, fields[1][1], fields[1][2])
                items.append({"low_key": low, "ref": r, "span": (a, b)})
                if r is not None:
                    node.refs.append(r)
                    self._dir(r, level - 1, owner)
        node.info["items"] = items

    def _locate(self, index: int, raw, a: int, b: int):
        """A pointer stored at raw[a:b] of cluster ``index``."""
        if self.cipher is not None:
            return _PlainRef.at_span(raw, a, b, index, self.cs)
        base = index * self.cs
        return self._ref(list(range(base + a, base + b)), b - a)

    def _snaptable(self, ref: Ref, depth: int, size: int) -> None:
        self._map(ref, depth, "table", "<snapshot table>", "snapmap", "snapdata")
        # Byte i of the table -> absolute file offset (plain images).
        data = sorted((n for n in self.nodes.values() if n.kind == "snapdata"), key=lambda n: n.info["first_cluster"])
        table, where = bytearray(), []
        for n in data:
            plain = self.plain(n.index, "snapdata", n.parents[0])
            table += plain
            where.append(n)
        self.table_nodes = where
        table = bytes(table[:size])
        self.table = table
        records = []
        for tag, a, b in der.elements(table, *der.parse_single(table, 0, len(table), der.SEQUENCE)):
            f = der.elements(table, a, b)
            name = der.as_utf8(table, f[1][1], f[1][2])
            depth_ = der.as_integer(table, f[4][1], f[4][2])
            rec = {"name": name, "dir_depth": depth_, "root_span": (f[5][1], f[5][2])}
            if self.cipher is None:
                at = [self._table_abs(i) for i in range(f[5][1], f[5][2])]
                r = self._ref(at, f[5][2] - f[5][1])
            else:
                r = _PlainRef.table(table, f[5][1], f[5][2], self)
            if r is not None:
                rec["ref"] = r
                self._dir(r, depth_ - 1, f"snapshot:{name}")
            records.append(rec)
        self.snapshots = records

    def _table_abs(self, i: int) -> int:
        n = self.table_nodes[i // self.cs]
        return n.index * self.cs + i % self.cs


class _PlainRef(Ref):
    """A pointer inside an encrypted cluster: ``at`` holds (cluster, offset-in-plaintext)
    pairs instead of file offsets."""

    @staticmethod
    def make(raw, j, P, index, cs):
        chunk = raw[j * P:(j + 1) * P]
        if not any(chunk):
            return None
        return _PlainRef.at_span(raw, j * P, (j + 1) * P, index, cs)

    @staticmethod
    def at_span(raw, a, b, index, cs):
        ptr = fmt.decode_pointer(bytes(raw[a:b]), b - a)
        if ptr.is_null:
            return None
        return _PlainRef([(index, i) for i in range(a, b)], ptr.offset // cs, b - a)

    @staticmethod
    def table(table, a, b, layout):
        ptr = fmt.decode_pointer(bytes(table[a:b]), b - a)
        if ptr.is_null:
            return None
        cs = layout.cs
        at = [(layout.table_nodes[i // cs].index, i % cs) for i in range(a, b)]
        return _PlainRef(at, ptr.offset // cs, b - a)


# -- editing -----------------------------------------------------------------------------

class Editor:
    """Change an image and re-seal every checksum above the change."""

    def __init__(self, raw: bytes, cipher=None, slot_index: int | None = None):
        self.data = bytearray(raw)
        self.cipher = cipher
        self._slot_index = slot_index
        self.relayout()

    def relayout(self) -> None:
        """Walk the image again (after a structural edit that moved pointers)."""
        self.layout = Layout(self.data, self.cipher, self._slot_index)
        self.cs = self.layout.cs
        self.geo = self.layout.geo
        self.slot_off = self.layout.slot_off
        self._plain: dict[int, bytearray] = {}

    def bytes(self) -> bytes:
        return bytes(self.data)

    # -- finding -------------------------------------------------------

    @property
    def nodes(self) -> dict:
        return self.layout.nodes

    def find_all(self, kind: str, owner: str | None = None, level: int | None = None, pred=None) -> list[Node]:
        out = [n for n in self.layout.nodes.values() if n.kind == kind
               and (owner is None or n.owner == owner) and (level is None or n.level == level)
               and (pred is None or pred(n))]
        return sorted(out, key=lambda n: n.index)

    def find(self, kind: str, owner: str | None = None, level: int | None = None, pred=None) -> Node:
        found = self.find_all(kind, owner, level, pred)
        if not found:
            raise LookupError(f"no {kind} node (owner={owner}, level={level}) in the image")
        return found[0]

    def blob_node(self, name: str, kind: str = "data", first_cluster: int | None = None) -> Node:
        return self.find(kind, pred=lambda n: n.info.get("blob") == name and
                         (first_cluster is None or n.info.get("first_cluster") == first_cluster))

    def cluster(self, index: int) -> bytearray:
        """The cluster's plaintext (a copy; change it with ``set_cluster``)."""
        node = self.layout.nodes.get(index)
        if self.cipher is None or node is None or node.kind == "keyslots":
            return bytearray(self.data[index * self.cs:(index + 1) * self.cs])
        return bytearray(self.layout._pc[index])

    # -- changing ------------------------------------------------------

    def set_cluster(self, index: int, content: bytes, reseal: bool = True) -> None:
        """Replace a cluster's (plaintext) content and re-seal above it."""
        content = bytes(content).ljust(self.cs, b"\0")[:self.cs]
        node = self.layout.nodes.get(index)
        if self.cipher is not None and node is not None and node.kind != "keyslots":
            offset = index * self.cs
            ct, nonce, tag = self.cipher.encrypt(offset, _AD_KIND[node.kind], content)
            self.data[offset:offset + self.cs] = ct
            self.layout._pc[index] = bytearray(content)
            for r in node.parents:
                self._write_ptr_bytes(r, 12, nonce + tag)
        else:
            self.data[index * self.cs:(index + 1) * self.cs] = content
        if reseal:
            self.reseal(index)

    def poke(self, offset: int, value: bytes, reseal: bool = True) -> None:
        """Write ``value`` at absolute file offset ``offset`` (plain images, or the
        header, slots and key slot table of an encrypted one) and re-seal."""
        self.data[offset:offset + len(value)] = value
        if not reseal:
            return
        for idx in sorted({o // self.cs for o in range(offset, offset + len(value))}):
            self._reseal_at(idx * self.cs if offset >= fmt.HEADER_AREA else offset)

    def poke_cluster(self, index: int, offset: int, value: bytes, reseal: bool = True) -> None:
        """Write ``value`` at ``offset`` of a cluster's plaintext and re-seal."""
        c = self.cluster(index)
        c[offset:offset + len(value)] = value
        self.set_cluster(index, c, reseal)

    def poke_raw(self, offset: int, value: bytes) -> None:
        """Write stored bytes with no re-sealing at all (a checksum or tag fault)."""
        self.data[offset:offset + len(value)] = value

    def _reseal_at(self, offset: int) -> None:
        if offset < fmt.SECTOR:
            self.reseal_header()
        elif offset < fmt.HEADER_AREA:
            self.reseal_slot(offset // fmt.SECTOR - 1)
        else:
            self.reseal(offset // self.cs)

    def _write_ptr_bytes(self, ref: Ref, start: int, value: bytes) -> set:
        """Write bytes ``start..`` of a pointer; returns the holders touched."""
        holders = set()
        for k, b in enumerate(value):
            loc = ref.at[start + k]
            if isinstance(loc, tuple):       # inside an encrypted cluster's plaintext
                idx, off = loc
                c = self._plain.get(idx)
                if c is None:
                    c = self._plain[idx] = self.cluster(idx)
                c[off] = b
                holders.add(("enc", idx))
            else:
                self.data[loc] = b
                holders.add(("slot", loc // fmt.SECTOR - 1) if loc < fmt.HEADER_AREA else ("plain", loc // self.cs))
        return holders

    def write_pointer(self, ref: Ref, value: bytes, reseal: bool = True) -> None:
        """Overwrite a whole pointer (``value`` of at most its width) and re-seal its holders."""
        holders = self._write_ptr_bytes(ref, 0, value)
        if reseal:
            self._reseal_holders(holders)

    def _reseal_holders(self, holders) -> None:
        for kind, idx in sorted(holders, key=lambda h: (h[0] == "slot", h[1])):
            if kind == "slot":
                self.reseal_slot(idx)
            elif kind == "enc":
                content = self._plain.pop(idx)
                self.set_cluster(idx, content)
            else:
                self.reseal(idx)

    def reseal(self, index: int, _depth: int = 0) -> None:
        """Recompute cluster ``index``'s CRC into every pointer to it, then re-seal upward."""
        if _depth > 64:
            raise RuntimeError("re-seal does not terminate (a cycle?)")
        node = self.layout.nodes.get(index)
        if node is None:
            return  # an unreachable cluster: nothing names it
        crc = struct.pack("<I", fmt.crc32c(bytes(self.data[index * self.cs:(index + 1) * self.cs])))
        holders = set()
        for r in node.parents:
            holders |= self._write_ptr_bytes(r, _PTR_CRC.offset, crc)
        for kind, idx in sorted(holders):
            if kind == "slot":
                self.reseal_slot(idx)
            elif kind == "enc":
                content = self._plain.pop(idx, None)
                if content is not None:
                    self.set_cluster(idx, content)
            else:
                self.reseal(idx, _depth + 1)

    def reseal_slot(self, index: int | None = None) -> None:
        index = self.layout.slot_index if index is None else index
        off = fmt.SLOT_OFFSETS[index]
        mac, crc = fmt.SLOT["slot_mac"], fmt.SLOT["slot_crc"].offset
        if self.cipher is not None and index == self.layout.slot_index:
            self.data[off + mac.offset:off + mac.end] = self.cipher.slot_mac(bytes(self.data[off:off + mac.offset]))
        struct.pack_into("<I", self.data, off + crc, fmt.crc32c(bytes(self.data[off:off + crc])))

    def reseal_header(self) -> None:
        crc = fmt.HEADER["header_crc"].offset
        struct.pack_into("<I", self.data, crc, fmt.crc32c(bytes(self.data[:crc])))

    # -- fields --------------------------------------------------------

    def set_slot(self, name: str, value, slot: int | None = None, reseal: bool = True) -> None:
        """Set a commit-slot field (of the active slot by default) and re-seal the slot."""
        index = self.layout.slot_index if slot is None else slot
        off, code = SLOT_FIELDS[name]
        base = fmt.SLOT_OFFSETS[index]
        if isinstance(value, (bytes, bytearray)):
            self.data[base + off:base + off + len(value)] = value
        else:
            struct.pack_into("<" + code, self.data, base + off, value)
        if reseal:
            self.reseal_slot(index)

    def get_slot(self, name: str, slot: int | None = None):
        index = self.layout.slot_index if slot is None else slot
        off, code = SLOT_FIELDS[name]
        return struct.unpack_from("<" + code, self.data, fmt.SLOT_OFFSETS[index] + off)[0]

    def set_header(self, name: str, value, reseal: bool = True) -> None:
        off, code = HEADER_FIELDS[name]
        if isinstance(value, (bytes, bytearray)):
            self.data[off:off + len(value)] = value
        else:
            struct.pack_into("<" + code, self.data, off, value)
        if reseal:
            self.reseal_header()

    def set_extensions(self, area: bytes, reseal: bool = True) -> None:
        """Replace the header bytes from header_length to 508 (records and what follows)."""
        hl = fmt.HEADER.unpack(self.data)["header_length"]
        end = fmt.HEADER["header_crc"].offset
        area = bytes(area).ljust(end - hl, b"\0")
        assert len(area) == end - hl, "extension area too long"
        self.data[hl:end] = area
        if reseal:
            self.reseal_header()

    # -- directory nodes -------------------------------------------------

    def dir_body(self, index: int) -> TLV:
        raw = self.cluster(index)
        n = fmt.DIR_NODE.unpack(raw)["body_length"]
        body = fmt.DIR_NODE["body"].offset
        return parse_tlvs(raw, body, body + n)[0]

    def set_dir_node(self, index: int, body: bytes | TLV, count: int | None = None, level: int | None = None,
                     header: dict | None = None, padding: bytes = b"") -> None:
        """Rewrite a directory node from a body (bytes or a TLV tree); ``count``
        defaults to the body's element count.  ``header`` overrides raw fields
        (magic, level, reserved0, count, body_length, reserved1)."""
        raw = self.cluster(index)
        if isinstance(body, TLV):
            if count is None:
                count = len(body.kids)
            body = encode_tlv(body)
        magic, lv, r0, cnt, _, r1 = fmt.DIR_NODE.struct.unpack_from(raw, 0)
        h = {"magic": magic, "level": lv if level is None else level, "reserved0": r0,
             "count": cnt if count is None else count, "body_length": len(body), "reserved1": r1}
        h.update(header or {})
        head = fmt.DIR_NODE.struct.pack(h["magic"], h["level"], h["reserved0"], h["count"], h["body_length"],
                                        h["reserved1"])
        content = (head + body + padding)
        assert len(content) <= self.cs, "directory node overflows its cluster"
        self.set_cluster(index, content)

    # -- snapshot table --------------------------------------------------

    def set_snapshot_table(self, table: bytes, size: int | None = None) -> None:
        """Rewrite the snapshot table's data clusters with ``table`` (same cluster
        count; zero padded) and set snaptable_size (default len(table))."""
        nodes = self.layout.table_nodes
        assert len(table) <= len(nodes) * self.cs, "the new table needs more clusters"
        for k, n in enumerate(nodes):
            self.set_cluster(n.index, table[k * self.cs:(k + 1) * self.cs])
        self.set_slot("snaptable_size", len(table) if size is None else size)

    def snapshot_table(self) -> TLV:
        return parse_tlvs(self.layout.table)[0]
