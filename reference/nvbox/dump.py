"""Every on-disk structure of an image with its byte offset (``nvbox dump``).

``dump_image`` returns one JSON-ready tree; ``render_dump`` turns it into
indented text.  The header area (header, extensions, both commit slots) is
decoded field by field from the layout tables of ``_format`` without
validation, so a damaged image still shows it.  The trees are read through
the library from the active slot by the tree visitor, every cluster verified
against its pointer; problems met on the way are listed, not raised.

Every structure is a dict with "type", "offset" (absolute, in the file),
"length" and "fields", whose keys are the field names of the spec's tables
(and of the ASN.1 module for DER records).  Byte strings are lowercase hex,
pointers {offset, crc, reserved} or {offset, crc, nonce, tag}, reserved byte
ranges {length, all_zero}; derived values go in "decoded".
"""

from __future__ import annotations

import datetime
import os
import uuid

from . import _der as der
from . import _format as fmt
from ._visit import Visitor
from .check import damaged_slots
from .errors import NvboxError
from .opening import open_image

__all__ = ["dump_image", "format_time", "render_dump"]


def _hex(b) -> str:
    return bytes(b).hex()


def _zero_range(b) -> dict:
    d = {"length": len(b), "all_zero": not fmt.nonzero(b)}
    if not d["all_zero"]:
        d["hex"] = _hex(b)
    return d


def format_time(t) -> str:
    """Seconds since the epoch as UTC text ("-" for 0), as nvbox dump and info print them."""
    if not t:
        return "-"
    try:
        return datetime.datetime.fromtimestamp(int(t), datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return str(t)


def _raw_pointer(raw, width) -> dict:
    """A pointer's fields by spec name, decoded without validation."""
    return _fields(fmt.pointer_layout(width), raw)


def _ptr(p, width) -> dict:
    return _raw_pointer(p.encode(width), width)


def _fields(layout: fmt.Layout, raw, base: int = 0, width: int = fmt.PLAIN_POINTER, **variable) -> dict:
    """Every field of ``layout`` at ``raw[base:]``, in table order: integers as
    numbers, reserved zero ranges as {length, all_zero}, other bytes as hex,
    pointer fields decoded (``keyslots`` always plain).  Fields with a variable
    offset or size come from ``variable`` (left out when not given)."""
    values = layout.unpack(raw, base)
    out = {}
    for f in layout:
        if f.name in variable:
            out[f.name] = variable[f.name]
        elif f.name not in values:
            continue
        elif f.type == "u":
            out[f.name] = values[f.name]
        elif f.type == "pointer":
            out[f.name] = _raw_pointer(values[f.name], fmt.PLAIN_POINTER if f.name == "keyslots" else width)
        elif f.reserved_zero:
            out[f.name] = _zero_range(values[f.name])
        else:
            out[f.name] = _hex(values[f.name])
    return out


class _Dumper:
    def __init__(self, path):
        self.path = path
        self.errors = []
        self.doc = {"image": path}

    def problem(self, code, message, offset=None):
        item = {"code": code, "message": message}
        if offset is not None:
            item["offset"] = offset
        self.errors.append(item)

    # -- header area: decoded field by field, no validation ----------------------------------

    def header_area(self, area):
        doc = self.doc
        if len(area) < fmt.HEADER_AREA:
            self.problem("image.truncated", f"the file holds {len(area)} bytes")
            area = area.ljust(fmt.HEADER_AREA, b"\0")
        values = fmt.HEADER.unpack(area)
        header_length = values["header_length"]
        hl = header_length if fmt.HEADER["header_length"].accepts(header_length) else fmt.HEADER_LENGTH
        reserved1 = fmt.HEADER["reserved1"].offset
        h = {"type": "header", "offset": 0, "length": fmt.SECTOR,
             "fields": _fields(fmt.HEADER, area, reserved1=_zero_range(area[reserved1:hl])),
             "checks": {"magic_ok": values["magic"] == fmt.MAGIC,
                        "crc_ok": fmt.crc32c(area[:fmt.HEADER["header_crc"].offset]) == values["header_crc"]},
             "decoded": {"image_uuid": str(uuid.UUID(bytes=values["image_uuid"])),
                         "create_time": format_time(values["create_time"])}}
        h["extensions"] = self._extensions(area, hl)
        doc["header"] = h
        slots, valid = [], []
        for index, off in enumerate(fmt.SLOT_OFFSETS):
            raw = area[off:off + fmt.SECTOR]
            f = fmt.SLOT.unpack(raw)
            width = fmt.ENCRYPTED_POINTER if f["incompatible_features"] & fmt.INCOMPAT_ENCRYPTED else fmt.PLAIN_POINTER
            is_valid = fmt.slot_is_valid(raw, index)
            if is_valid:
                valid.append((f["generation"], index))
            slots.append({
                "type": "commit_slot", "name": "AB"[index], "offset": off, "length": fmt.SECTOR,
                "valid": is_valid, "active": False, "generation": f["generation"],
                # damaged: neither valid nor zeros, a commit that may be lost (R-check-3)
                "state": "valid" if is_valid else "damaged" if fmt.nonzero(raw) else "empty",
                "fault": fmt.slot_fault(raw, index),
                "fields": _fields(fmt.SLOT, raw, width=width),
                "decoded": {"commit_time": format_time(f["commit_time"]),
                            "encrypted": bool(f["incompatible_features"] & fmt.INCOMPAT_ENCRYPTED),
                            "pointer_width": width},
            })
        if valid:
            slots[max(valid)[1]]["active"] = True
        doc["slots"] = slots
        doc["active_slot"] = "AB"[max(valid)[1]] if valid else None

    def _extensions(self, area, pos) -> list:
        end_of_area = fmt.HEADER["header_crc"].offset
        head = fmt.EXTENSION.struct.size
        exts = []
        while pos + head <= end_of_area:
            f = fmt.EXTENSION.unpack(area, pos)
            ext_type, length = f["ext_type"], f["ext_length"]
            padded = (length + 7) // 8 * 8
            data = area[pos + head:min(pos + head + length, end_of_area)]
            rec = {"type": "header_extension", "offset": pos, "length": head + min(padded, end_of_area - pos - head),
                   "fields": _fields(fmt.EXTENSION, area, pos, ext_data=_hex(data))}
            exts.append(rec)
            if ext_type == fmt.EXT_END:
                rec["decoded"] = {"name": "end"}
                break
            rec["decoded"] = {"name": "creator" if ext_type == fmt.EXT_CREATOR else "unknown",
                              "required": bool(f["ext_flags"] & fmt.EXT_REQUIRED)}
            if ext_type == fmt.EXT_CREATOR:
                rec["decoded"]["text"] = bytes(data).decode("utf-8", "replace")
            if pos + head + padded + head > end_of_area:
                self.problem("header.extension", "extension runs past the header", pos)
                break
            pos += head + padded
        return exts

    # -- trees: read through the library, every cluster verified against its pointer ----------

    def trees(self, img):
        self.img, self.geo = img, img.geo
        geo = self.geo
        self.width = geo.pointer_size
        slot = img.slot
        for d in damaged_slots(img):   # also a slot whose MAC fails, which only the key shows
            self.problem("slot.damaged", d["message"], d["offset"])
        self.doc["geometry"] = {"cluster_size": geo.cluster_size, "pointer_size": geo.pointer_size,
                                "fanout": geo.fanout, "header_clusters": geo.header_clusters,
                                "inline_max": geo.inline_max, "encrypted": img.encrypted,
                                "image_clusters": slot.image_clusters}
        self.visitor = Visitor(img.store.read_raw, geo, slot.image_clusters, on_problem=self.problem,
                               read_leaves=True)
        self.dir_nodes, self.dir_seen, self.maps, self.map_seen = [], {}, [], {}
        ref_nodes = [self._refcount_node(r) for r in self.visitor.refcount_tree(slot.refcount_root,
                                                                                 slot.refcount_depth)]
        self.doc["refcount_tree"] = {"depth": slot.refcount_depth, "root": _ptr(slot.refcount_root, self.width),
                                     "nodes": ref_nodes}
        if slot.dir_depth:
            self.directory(slot.dir_root, slot.dir_depth, "active")
        self.doc["directory"] = {"depth": slot.dir_depth, "root": _ptr(slot.dir_root, self.width),
                                 "blob_count": slot.blob_count, "nodes": self.dir_nodes}
        self.doc["cluster_maps"] = self.maps
        self.snapshot_table(slot)
        self.doc["keyslot_table"] = None
        if not slot.keyslots.is_null:
            for r in self.visitor.keyslots(slot.keyslots):
                self.doc["keyslot_table"] = self.keyslots(r)

    def _struct(self, type_, ptr, **extra):
        d = {"type": type_, "offset": ptr.offset, "cluster": ptr.offset >> self.geo.cluster_bits,
             "length": self.geo.cluster_size}
        d.update(extra)
        return d

    def _pointers(self, raw):
        """The non-null pointers of a node, by position (undecoded, so damage shows)."""
        w, out = self.width, []
        for j in range(self.geo.fanout):
            chunk = raw[j * w:(j + 1) * w]
            if fmt.nonzero(chunk):
                p = _raw_pointer(chunk, w)
                p["index"] = j
                out.append(p)
        return out

    def _refcount_node(self, r) -> dict:
        geo = self.geo
        first = r.index * geo.counts_per_block * geo.fanout ** (r.level - 1)
        if r.level == 1:
            node = self._struct("refcount_block", r.ptr, level=1, first_cluster=first)
            if r.raw is not None:
                counts = fmt.decode_refblock(r.raw)
                node["fields"] = {"counts": counts}
                node["decoded"] = {"nonzero": sum(1 for c in counts if c)}
            return node
        node = self._struct("refcount_index_node", r.ptr, level=r.level, first_cluster=first)
        if r.raw is not None:
            node["fields"] = {"pointers": self._pointers(r.raw)}
        return node

    @staticmethod
    def _tlvs(raw, start, end):
        """(tlv_start, tag, content_start, content_end) of each element in [start, end)."""
        out, pos = [], start
        while pos < end:
            tag, cs, ce = der.read_tlv(raw, pos, end)
            out.append((pos, tag, cs, ce))
            pos = ce
        return out

    def directory(self, root, depth, owner):
        for r in self.visitor.directory(root, depth, owner, maps=False):
            if not r.first:
                seen = self.dir_seen.get(r.cluster)
                if seen is not None and owner not in seen["trees"]:
                    seen["trees"].append(owner)
                continue
            node = self._struct("dir_node", r.ptr, trees=[owner])
            self.dir_seen[r.cluster] = node
            self.dir_nodes.append(node)
            if r.raw is not None:
                self._dir_fields(node, r)

    def _dir_fields(self, node, r):
        raw = r.raw
        fields = _fields(fmt.DIR_NODE, raw)
        node["fields"] = fields
        node["level"] = fields["level"]
        body_length = fields["body_length"]
        body = fmt.DIR_NODE["body"].offset
        if r.node is None:
            node["body_hex"] = _hex(raw[body:body + min(body_length, len(raw))])
            return
        try:
            _, body_cs, body_ce = der.read_tlv(raw, body, body + body_length)
            tlvs = self._tlvs(raw, body_cs, body_ce)
        except NvboxError as exc:
            self.problem(exc.code, f"directory node ({r.owner}): {exc.message}", r.ptr.offset)
            return
        base, items = r.ptr.offset, []
        for (pos, _tag, cs, ce), item in zip(tlvs, r.node.items):
            if r.node.level == 0:
                e = item
                content = ({"inline": _hex(e.inline)} if e.inline is not None
                           else {"clusters": {"depth": e.depth, "root": _ptr(e.root, self.width)}})
                fields = {"name": e.name, "size": e.size, "content": content}
                if e.extra:
                    fields["extensions"] = _hex(e.extra)
                items.append({"type": "DirEntry", "offset": base + pos, "length": ce - pos, "fields": fields,
                              "decoded": {"key": _hex(e.key)}})
                if e.inline is None and not e.root.is_null:
                    self.cluster_map(e, r.owner)
            else:
                items.append({"type": "DirBranch", "offset": base + pos, "length": ce - pos,
                              "fields": {"lowKey": _hex(item.low_key), "child": _ptr(item.child, self.width)}})
        node["entries" if r.node.level == 0 else "branches"] = items

    def cluster_map(self, e, owner):
        seen = self.map_seen.get(e.root.offset)
        if seen is not None:
            if owner not in seen["trees"]:
                seen["trees"].append(owner)
            return
        m = {"blob": e.name, "trees": [owner], "size": e.size, "depth": e.depth,
             "root": _ptr(e.root, self.width), "nodes": [], "data_clusters": []}
        self.map_seen[e.root.offset] = m
        self.maps.append(m)
        # Each map is listed whole, shared parts included: a walk of its own.
        walk = Visitor(self.img.store.read_raw, self.geo, self.img.slot.image_clusters, on_problem=self.problem)
        self._map_records(m, walk.cluster_map(e.root, e.depth, e.size, owner, e.name,
                                              f"cluster map of {e.name!r}"))

    def _map_records(self, m, reached) -> None:
        for r in reached:
            if r.kind in ("data", "snapdata"):
                m["data_clusters"].append({"index": r.index, "offset": r.ptr.offset, "cluster": r.cluster,
                                           "crc": r.ptr.crc})
                continue
            node = self._struct("map_node", r.ptr, level=r.level, first_index=r.index)
            if r.raw is not None:
                node["fields"] = {"pointers": self._pointers(r.raw)}
            m["nodes"].append(node)

    def snapshot_table(self, slot):
        if not slot.snaptable_size:
            self.doc["snapshot_table"] = None
            return
        t = {"type": "SnapshotTable", "snaptable_size": slot.snaptable_size, "depth": slot.snaptable_depth,
             "root": _ptr(slot.snaptable_root, self.width)}
        m = {"blob": "(snapshot table)", "trees": ["snapshot table"], "size": slot.snaptable_size,
             "depth": slot.snaptable_depth, "root": t["root"], "nodes": [], "data_clusters": []}
        self._map_records(m, self.visitor.snapshot_table(slot))
        t["map"] = m
        self.doc["snapshot_table"] = t
        cs = self.geo.cluster_size
        where = {d["index"]: d["offset"] for d in m["data_clusters"]}

        def absolute(pos):
            base = where.get(pos // cs)
            return None if base is None else base + pos % cs

        raw, records = self.visitor.snapshot_table_raw, self.visitor.snapshots
        t["records"] = []
        if raw is None or not records:
            return
        try:
            cs0, ce0 = der.parse_single(raw, 0, len(raw), der.SEQUENCE)
            tlvs = self._tlvs(raw, cs0, ce0)
        except NvboxError as exc:
            self.problem(exc.code, f"snapshot table: {exc.message}", slot.snaptable_root.offset)
            return
        out = []
        for (pos, _tag, _cs, ce), r in zip(tlvs, records):
            fields = {"id": r.id, "name": r.name, "createTime": r.create_time, "blobCount": r.blob_count,
                      "dirDepth": r.dir_depth, "dirRoot": _ptr(r.dir_root, self.width)}
            if r.metadata is not None:
                fields["metadata"] = _hex(r.metadata)
            if r.extra:
                fields["extensions"] = _hex(r.extra)
            out.append({"type": "Snapshot", "offset": absolute(pos), "table_offset": pos, "length": ce - pos,
                        "fields": fields, "decoded": {"createTime": format_time(r.create_time)}})
        t["records"] = out
        for r in records:
            if r.dir_depth:
                self.directory(r.dir_root, r.dir_depth, f"snapshot:{r.name}")

    def keyslots(self, r) -> dict:
        t = self._struct("keyslot_table", r.ptr)
        raw = r.raw
        if raw is None:
            return t
        first = fmt.KEYSLOT_TABLE["slots"].offset
        slots = []
        for i in range(fmt.NUM_KEYSLOTS):
            off = first + i * fmt.KEYSLOT_SIZE
            kind = raw[off]
            slots.append({"type": "key_slot", "index": i, "offset": r.ptr.offset + off, "length": fmt.KEYSLOT_SIZE,
                          "fields": _fields(fmt.KEYSLOT, raw, off),
                          "decoded": {"kind": fmt.KEYSLOT_KINDS.get(kind, "unknown")}})
        end = fmt.KEYSLOT_TABLE.struct.size
        t["fields"] = _fields(fmt.KEYSLOT_TABLE, raw, slots=slots, padding=_zero_range(raw[end:]))
        return t


def dump_image(path, key=None) -> dict:
    """Every structure of the image at ``path`` with its offset.

    The header and both commit slots are decoded without validation, so a damaged
    image still shows them; the trees are read through the library from the
    active slot.  Problems met on the way are listed under "errors"; an image
    that cannot be opened also gets "error" (the first such problem).
    """
    d = _Dumper(path)
    with open(path, "rb") as f:
        area = f.read(fmt.HEADER_AREA)
        d.doc["file_size"] = os.fstat(f.fileno()).st_size
    d.header_area(area)
    try:
        img = open_image(path, "r", key=key)
    except (NvboxError, OSError) as exc:
        code, message = _error(exc)
        d.doc["error"] = {"code": code, "message": message}
        d.doc["errors"] = d.errors + [{"code": code, "message": f"open: {message}"}]
        return d.doc
    with img:
        d.trees(img)
    d.doc["errors"] = d.errors
    return d.doc


def _error(exc) -> tuple[str, str]:
    if isinstance(exc, NvboxError):
        return exc.code, exc.message
    message = exc.strerror or str(exc)
    return "io.error", f"{exc.filename}: {message}" if exc.filename else message



def _render(obj, indent=0, label=None):
    """Indented text for a dump tree."""
    pad = "  " * indent
    lines = []
    if isinstance(obj, dict) and "type" in obj and "offset" in obj:
        where = "-" if obj["offset"] is None else f"0x{obj['offset']:x}"
        extra = []
        for k in ("name", "index", "cluster", "level", "first_cluster", "first_index", "valid", "state", "active",
                  "trees", "length"):
            if k in obj:
                v = obj[k]
                extra.append(f"{k}={','.join(v) if isinstance(v, list) else v}")
        lines.append(f"{pad}{label + ': ' if label else ''}{obj['type']} @{where} " + " ".join(extra))
        for k, v in (obj.get("fields") or {}).items():
            lines += _render_field(k, v, indent + 1)
        for k, v in (obj.get("decoded") or {}).items():
            if k != "key":
                lines.append(f"{pad}    ({k}: {v})")
        for k in ("extensions", "entries", "branches"):
            for item in obj.get(k, []):
                lines += _render(item, indent + 1)
        return lines
    if isinstance(obj, dict):
        for k, v in obj.items():
            lines += _render_field(k, v, indent)
        return lines
    return [f"{pad}{obj}"]


def _short(v, limit=64):
    s = str(v)
    return s if len(s) <= limit else s[:limit] + f"... ({len(s)} chars)"


def _ptr_text(p) -> str:
    if not p.get("offset"):
        return "null"
    s = f"-> 0x{p['offset']:x} crc=0x{p['crc']:08x}"
    if "tag" in p:
        s += f" nonce={p['nonce']} tag={p['tag']}"
    return s


def _render_field(k, v, indent):
    pad = "  " * indent
    if isinstance(v, dict) and "crc" in v and "offset" in v:
        return [f"{pad}{k:<22} {_ptr_text(v)}"]
    if isinstance(v, dict) and "all_zero" in v:
        return [f"{pad}{k:<22} {v['length']} bytes, {'zero' if v['all_zero'] else 'NOT ZERO ' + _short(v['hex'])}"]
    if k == "counts" and isinstance(v, list):
        nz = [(i, c) for i, c in enumerate(v) if c]
        return [f"{pad}{k:<22} {len(nz)} non-zero of {len(v)}: "
                + _short(" ".join(f"[{i}]={c}" for i, c in nz), 200)]
    if k == "pointers" and isinstance(v, list):
        return [f"{pad}{k:<22} {len(v)} non-null"] + [f"{pad}  [{p['index']}] {_ptr_text(p)}" for p in v]
    if isinstance(v, dict):
        out = [f"{pad}{k}:"]
        for kk, vv in v.items():
            out += _render_field(kk, vv, indent + 1)
        return out
    if isinstance(v, list):
        out = []
        for item in v:
            out += _render(item, indent, k)
        return out
    if isinstance(v, int) and k.endswith(("features", "_crc", "crc")):
        return [f"{pad}{k:<22} 0x{v:x}"]
    return [f"{pad}{k:<22} {_short(v, 100)}"]


def render_dump(doc) -> list[str]:
    """The lines of text ``nvbox dump`` prints for a ``dump_image`` tree."""
    lines = [f"image: {doc['image']}  ({doc.get('file_size')} bytes)"]
    if "geometry" in doc:
        g = doc["geometry"]
        lines.append("geometry: " + ", ".join(f"{k}={v}" for k, v in g.items()))
    lines += _render(doc["header"])
    for s in doc["slots"]:
        lines += _render(s)
    lines.append(f"active slot: {doc['active_slot']}")
    if "refcount_tree" in doc:
        rt = doc["refcount_tree"]
        lines.append(f"refcount tree: depth {rt['depth']}, root {_ptr_text(rt['root'])}")
        for n in rt["nodes"]:
            lines += _render(n, 1)
        d = doc["directory"]
        lines.append(f"directory: depth {d['depth']}, {d['blob_count']} blobs, root {_ptr_text(d['root'])}")
        for n in d["nodes"]:
            lines += _render(n, 1)
        lines.append(f"cluster maps: {len(doc['cluster_maps'])}")
        for m in doc["cluster_maps"]:
            lines += _render_map(m)
        t = doc["snapshot_table"]
        if t is None:
            lines.append("snapshot table: none")
        else:
            lines.append(f"snapshot table: {t['snaptable_size']} bytes, depth {t['depth']}, "
                         f"root {_ptr_text(t['root'])}")
            lines += _render_map(t["map"])
            for r in t["records"]:
                lines += _render(r, 1)
        k = doc["keyslot_table"]
        lines.append("key slot table: none" if k is None else "key slot table:")
        if k is not None:
            lines += _render(k, 1)
    for e in doc.get("errors", []):
        where = f" at 0x{e['offset']:x}" if e.get("offset") is not None else ""
        lines.append(f"ERROR {e['code']}: {e['message']}{where}")
    return lines


def _render_map(m):
    trees = ",".join(m["trees"])
    lines = [f"  map of {m['blob']!r} [{trees}]: size {m['size']}, depth {m['depth']}, root {_ptr_text(m['root'])}"]
    for n in m["nodes"]:
        lines += _render(n, 2)
    dc = m["data_clusters"]
    if dc:
        text = " ".join(f"{d['index']}:0x{d['offset']:x}" for d in dc)
        lines.append(f"    data clusters ({len(dc)}): {_short(text, 300)}")
    return lines
