"""``dump``: every on-disk structure of an image with its byte offset."""

from __future__ import annotations

import os
import struct
import uuid

import click

import nvbox

from .. import _der as der
from .. import _format as fmt
from ..errors import NvboxError
from .common import CONTEXT, as_error, emit_json, format_time, image_command

__all__ = ["dump", "dump_image"]


# -- dump -------------------------------------------------------------------------------------

def _hex(b) -> str:
    return bytes(b).hex()


def _zero_range(b) -> dict:
    d = {"length": len(b), "all_zero": not any(b)}
    if not d["all_zero"]:
        d["hex"] = _hex(b)
    return d


def _raw_pointer(raw, width) -> dict:
    """A pointer's fields by spec name, decoded without validation."""
    offset, crc = struct.unpack_from("<QI", raw, 0)
    if width == fmt.PLAIN_POINTER:
        return {"offset": offset, "crc": crc, "reserved": struct.unpack_from("<I", raw, 12)[0]}
    return {"offset": offset, "crc": crc, "nonce": _hex(raw[12:24]), "tag": _hex(raw[24:40])}


def _ptr(p, width) -> dict:
    return _raw_pointer(p.encode(width), width)


def _slot_tail(raw) -> dict:
    """Bytes 248..475 of a slot: reserved1, or, in a library whose Slot has the
    ``alloc_hint`` field (u64 at 248), that field and reserved1 from 256."""
    if "alloc_hint" in getattr(fmt.Slot, "__dataclass_fields__", {}):
        return {"alloc_hint": struct.unpack_from("<Q", raw, 248)[0], "reserved1": _zero_range(raw[256:476])}
    return {"reserved1": _zero_range(raw[248:476])}


class _Dumper:
    def __init__(self, path, key):
        self.path = path
        self.key = key
        self.errors = []
        self.doc = {"image": path}

    def problem(self, exc, where, offset=None):
        err = as_error(exc)
        item = {"code": err[0], "message": f"{where}: {err[1]}"}
        if offset is not None:
            item["offset"] = offset
        self.errors.append(item)

    # header area: decoded field by field, no validation, so a damaged image still dumps
    def header_area(self, area):
        doc = self.doc
        h = {"type": "header", "offset": 0, "length": fmt.SECTOR}
        if len(area) < fmt.HEADER_AREA:
            self.errors.append({"code": "image.truncated", "message": f"the file holds {len(area)} bytes"})
            area = area.ljust(fmt.HEADER_AREA, b"\0")
        (version, header_length, cluster_bits, refcount_order, reserved0, header_flags, image_uuid,
         capacity, create_time) = struct.unpack_from("<IIBBHI16sQQ", area, 8)
        hl = header_length if header_length % 8 == 0 and 128 <= header_length <= 504 else fmt.HEADER_LENGTH
        header_crc = struct.unpack_from("<I", area, 508)[0]
        h["fields"] = {
            "magic": _hex(area[0:8]), "version": version, "header_length": header_length,
            "cluster_bits": cluster_bits, "refcount_order": refcount_order, "reserved0": reserved0,
            "header_flags": header_flags, "image_uuid": _hex(image_uuid), "capacity_clusters": capacity,
            "create_time": create_time, "reserved1": _zero_range(area[56:hl]), "header_crc": header_crc,
        }
        h["checks"] = {"magic_ok": area[:8] == fmt.MAGIC, "crc_ok": fmt.crc32c(area[:508]) == header_crc}
        h["decoded"] = {"image_uuid": str(uuid.UUID(bytes=bytes(image_uuid))), "create_time": format_time(create_time)}
        exts, pos = [], hl
        while pos + 8 <= 508:
            ext_type, ext_flags, length = struct.unpack_from("<HHI", area, pos)
            padded = (length + 7) // 8 * 8
            rec = {"type": "header_extension", "offset": pos, "length": 8 + min(padded, 508 - pos - 8)}
            data = area[pos + 8:min(pos + 8 + length, 508)]
            rec["fields"] = {"ext_type": ext_type, "ext_flags": ext_flags, "ext_length": length,
                             "ext_data": _hex(data)}
            if ext_type == fmt.EXT_END:
                rec["decoded"] = {"name": "end"}
                exts.append(rec)
                break
            rec["decoded"] = {"name": "creator" if ext_type == fmt.EXT_CREATOR else "unknown",
                              "required": bool(ext_flags & 1)}
            if ext_type == fmt.EXT_CREATOR:
                rec["decoded"]["text"] = bytes(data).decode("utf-8", "replace")
            exts.append(rec)
            if pos + 8 + padded + 8 > 508:
                self.errors.append({"code": "header.extension", "message": "extension runs past the header",
                                    "offset": pos})
                break
            pos += 8 + padded
        h["extensions"] = exts
        doc["header"] = h
        self.cluster_bits = cluster_bits if fmt.MIN_CLUSTER_BITS <= cluster_bits <= fmt.MAX_CLUSTER_BITS else None

        slots = []
        valid = []
        for index, off in enumerate(fmt.SLOT_OFFSETS):
            raw = area[off:off + fmt.SECTOR]
            (magic, generation, incompat, compat, autoclear, image_clusters, blob_count, next_snapshot_id,
             commit_time, refcount_depth, dir_depth, snaptable_depth, reserved0, snapshot_count,
             snaptable_size) = fmt._SLOT.unpack_from(raw)
            width = fmt.ENCRYPTED_POINTER if incompat & fmt.INCOMPAT_ENCRYPTED else fmt.PLAIN_POINTER
            is_valid = fmt.slot_is_valid(raw, index)
            if is_valid:
                valid.append((generation, index))
            slots.append({
                "type": "commit_slot", "name": "AB"[index], "offset": off, "length": fmt.SECTOR,
                "valid": is_valid, "active": False, "generation": generation,
                "fields": {
                    "slot_magic": _hex(magic), "generation": generation,
                    "incompatible_features": incompat, "compatible_features": compat,
                    "autoclear_features": autoclear, "image_clusters": image_clusters,
                    "blob_count": blob_count, "next_snapshot_id": next_snapshot_id,
                    "commit_time": commit_time, "refcount_depth": refcount_depth, "dir_depth": dir_depth,
                    "snaptable_depth": snaptable_depth, "reserved0": reserved0,
                    "snapshot_count": snapshot_count, "snaptable_size": snaptable_size,
                    "refcount_root": _raw_pointer(raw[88:128], width),
                    "dir_root": _raw_pointer(raw[128:168], width),
                    "snaptable_root": _raw_pointer(raw[168:208], width),
                    "keyslots": _raw_pointer(raw[208:224], fmt.PLAIN_POINTER),
                    **_slot_tail(raw),
                    "slot_mac": _hex(raw[476:508]),
                    "slot_crc": struct.unpack_from("<I", raw, 508)[0],
                },
                "decoded": {"commit_time": format_time(commit_time), "encrypted": bool(incompat & 1),
                            "pointer_width": width},
            })
        if valid:
            slots[max(valid)[1]]["active"] = True
        doc["slots"] = slots
        doc["active_slot"] = "AB"[max(valid)[1]] if valid else None

    # trees: read through the library, every cluster verified against its pointer
    def trees(self, img):
        self.img, self.geo, self.store = img, img.geo, img.store
        geo = self.geo
        self.width = geo.pointer_size
        self.doc["geometry"] = {"cluster_size": geo.cluster_size, "pointer_size": geo.pointer_size,
                                "fanout": geo.fanout, "header_clusters": geo.header_clusters,
                                "inline_max": geo.inline_max, "encrypted": img.encrypted,
                                "image_clusters": img.slot.image_clusters}
        self.ref_nodes = []
        self.dir_nodes = []
        self.dir_seen = {}
        self.maps = []
        self.map_seen = {}
        slot = img.slot
        self.refcount(slot.refcount_root, slot.refcount_depth, 0)
        self.doc["refcount_tree"] = {"depth": slot.refcount_depth, "root": _ptr(slot.refcount_root, self.width),
                                     "nodes": self.ref_nodes}
        if slot.dir_depth:
            self.directory(slot.dir_root, slot.dir_depth - 1, "active")
        self.doc["directory"] = {"depth": slot.dir_depth, "root": _ptr(slot.dir_root, self.width),
                                 "blob_count": slot.blob_count, "nodes": self.dir_nodes}
        self.doc["cluster_maps"] = self.maps
        self.snapshot_table(slot)
        self.doc["keyslot_table"] = self.keyslots(slot.keyslots) if not slot.keyslots.is_null else None

    def _struct(self, type_, ptr, **extra):
        d = {"type": type_, "offset": ptr.offset, "cluster": ptr.offset >> self.geo.cluster_bits,
             "length": self.geo.cluster_size}
        d.update(extra)
        return d

    def read_file(self, ptr, kind, where):
        try:
            return self.store.read_raw(ptr, kind)
        except (NvboxError, OSError) as exc:  # recorded, the dump goes on
            self.problem(exc, where, ptr.offset)
            return None

    def _pointers(self, raw):
        w, out = self.width, []
        for j in range(self.geo.fanout):
            chunk = raw[j * w:(j + 1) * w]
            if any(chunk):
                p = _raw_pointer(chunk, w)
                p["index"] = j
                out.append(p)
        return out

    def _children(self, raw, where, offset):
        try:
            return fmt.decode_pointers(raw, self.geo)
        except NvboxError as exc:
            self.problem(exc, where, offset)
            return []

    def refcount(self, ptr, level, first):
        if ptr.is_null:
            return
        geo = self.geo
        kind = fmt.KIND_REFBLOCK if level == 1 else fmt.KIND_REFINDEX
        raw = self.read_file(ptr, kind, f"refcount level {level}")
        span = geo.counts_per_block * geo.fanout ** (level - 1)
        if level == 1:
            node = self._struct("refcount_block", ptr, level=1, first_cluster=first)
            if raw is not None:
                counts = list(struct.unpack(f"<{geo.counts_per_block}H", raw))
                node["fields"] = {"counts": counts}
                node["decoded"] = {"nonzero": sum(1 for c in counts if c)}
            self.ref_nodes.append(node)
            return
        node = self._struct("refcount_index_node", ptr, level=level, first_cluster=first)
        self.ref_nodes.append(node)
        if raw is None:
            return
        node["fields"] = {"pointers": self._pointers(raw)}
        child_span = span // geo.fanout
        for j, ch in enumerate(self._children(raw, "refcount index node", ptr.offset)):
            self.refcount(ch, level - 1, first + j * child_span)

    def _tlvs(self, raw, start, end):
        """(tlv_start, tag, content_start, content_end) of each element in [start, end)."""
        out, pos = [], start
        while pos < end:
            tag, cs, ce = der.read_tlv(raw, pos, end)
            out.append((pos, tag, cs, ce))
            pos = ce
        return out

    def directory(self, ptr, level, owner):
        seen = self.dir_seen.get(ptr.offset)
        if seen is not None:
            if owner not in seen["trees"]:
                seen["trees"].append(owner)
            return
        node = self._struct("dir_node", ptr, trees=[owner])
        self.dir_seen[ptr.offset] = node
        self.dir_nodes.append(node)
        raw = self.read_file(ptr, fmt.KIND_DIR, f"directory node ({owner})")
        if raw is None:
            return
        magic, lvl, reserved0, count, body_length, reserved1 = struct.unpack_from("<4sBBHII", raw, 0)
        node["fields"] = {"node_magic": _hex(magic), "level": lvl, "reserved0": reserved0, "count": count,
                          "body_length": body_length, "reserved1": reserved1}
        node["level"] = lvl
        base = ptr.offset
        items = []
        try:
            decoded = fmt.decode_dir_node(raw, self.geo, level)
            _, body_cs, body_ce = der.read_tlv(raw, fmt.DIR_NODE_HEADER, fmt.DIR_NODE_HEADER + body_length)
            tlvs = self._tlvs(raw, body_cs, body_ce)
        except NvboxError as exc:
            self.problem(exc, f"directory node ({owner})", ptr.offset)
            node["body_hex"] = _hex(raw[fmt.DIR_NODE_HEADER:fmt.DIR_NODE_HEADER + min(body_length, len(raw))])
            return
        for (pos, _tag, cs, ce), item in zip(tlvs, decoded.items):
            if decoded.level == 0:
                e = item
                content = ({"inline": _hex(e.inline)} if e.inline is not None
                           else {"clusters": {"depth": e.depth, "root": _ptr(e.root, self.width)}})
                fields = {"name": e.name, "size": e.size, "content": content}
                if e.extra:
                    fields["extensions"] = _hex(e.extra)
                items.append({"type": "DirEntry", "offset": base + pos, "length": ce - pos, "fields": fields,
                              "decoded": {"key": _hex(e.key)}})
                if e.inline is None and not e.root.is_null:
                    self.cluster_map(e, owner)
            else:
                items.append({"type": "DirBranch", "offset": base + pos, "length": ce - pos,
                              "fields": {"lowKey": _hex(item.low_key), "child": _ptr(item.child, self.width)}})
        node["entries" if decoded.level == 0 else "branches"] = items
        if decoded.level > 0:
            for b in decoded.items:
                self.directory(b.child, decoded.level - 1, owner)

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
        self._map_walk(m, e.root, e.depth, 0, fmt.KIND_DATA)

    def _map_walk(self, m, ptr, level, base, data_kind):
        if ptr.is_null:
            return
        if level == 0:
            m["data_clusters"].append({"index": base, "offset": ptr.offset,
                                       "cluster": ptr.offset >> self.geo.cluster_bits, "crc": ptr.crc})
            return
        node = self._struct("map_node", ptr, level=level, first_index=base)
        m["nodes"].append(node)
        raw = self.read_file(ptr, fmt.KIND_MAP, f"cluster map of {m['blob']!r}")
        if raw is None:
            return
        node["fields"] = {"pointers": self._pointers(raw)}
        span = self.geo.fanout ** (level - 1)
        for j, ch in enumerate(self._children(raw, f"cluster map of {m['blob']!r}", ptr.offset)):
            self._map_walk(m, ch, level - 1, base + j * span, data_kind)

    def snapshot_table(self, slot):
        if not slot.snaptable_size:
            self.doc["snapshot_table"] = None
            return
        t = {"type": "SnapshotTable", "snaptable_size": slot.snaptable_size, "depth": slot.snaptable_depth,
             "root": _ptr(slot.snaptable_root, self.width)}
        m = {"blob": "(snapshot table)", "trees": ["snapshot table"], "size": slot.snaptable_size,
             "depth": slot.snaptable_depth, "root": t["root"], "nodes": [], "data_clusters": []}
        self._map_walk(m, slot.snaptable_root, slot.snaptable_depth, 0, fmt.KIND_SNAPDATA)
        t["map"] = m
        self.doc["snapshot_table"] = t
        cs = self.geo.cluster_size
        where = {d["index"]: d["offset"] for d in m["data_clusters"]}

        def absolute(pos):
            base = where.get(pos // cs)
            return None if base is None else base + pos % cs

        try:
            raw = self.img.trees.map_read(slot.snaptable_root, slot.snaptable_depth, slot.snaptable_size, 0,
                                          slot.snaptable_size, data_kind=fmt.KIND_SNAPDATA)
            records = self.img._snapshot_list()
            cs0, ce0 = der.parse_single(raw, 0, len(raw), der.SEQUENCE)
            tlvs = self._tlvs(raw, cs0, ce0)
        except (NvboxError, OSError) as exc:
            self.problem(exc, "snapshot table", slot.snaptable_root.offset)
            t["records"] = []
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
                self.directory(r.dir_root, r.dir_depth - 1, f"snapshot:{r.name}")

    def keyslots(self, ptr):
        t = self._struct("keyslot_table", ptr)
        raw = self.read_file(ptr, 0, "key slot table")
        if raw is None:
            return t
        magic, version, num, cipher = struct.unpack_from("<4sHHI", raw, 0)
        slots = []
        for i in range(fmt.NUM_KEYSLOTS):
            off = 32 + i * fmt.KEYSLOT_SIZE
            chunk = raw[off:off + fmt.KEYSLOT_SIZE]
            kind, t_, m_, p_, salt, nonce, wrapped, tag = struct.unpack("<B3xIII16s12s32s16s4x", chunk)
            slots.append({"type": "key_slot", "index": i, "offset": ptr.offset + off, "length": fmt.KEYSLOT_SIZE,
                          "fields": {"kind": kind, "reserved": _hex(chunk[1:4]), "kdf_time": t_,
                                     "kdf_memory": m_, "kdf_lanes": p_, "salt": _hex(salt), "nonce": _hex(nonce),
                                     "wrapped_key": _hex(wrapped), "wrap_tag": _hex(tag),
                                     "reserved2": _hex(chunk[92:96])},
                          "decoded": {"kind": fmt.KEYSLOT_KINDS.get(kind, "unknown")}})
        end = 32 + fmt.NUM_KEYSLOTS * fmt.KEYSLOT_SIZE
        t["fields"] = {"ks_magic": _hex(magic), "ks_version": version, "num_slots": num, "cipher": cipher,
                       "reserved": _zero_range(raw[12:32]), "slots": slots, "padding": _zero_range(raw[end:])}
        return t


def dump_image(path, key=None) -> dict:
    """Every structure of the image at ``path`` with its offset (``nvbox dump``).

    The header and both commit slots are decoded without validation, so a damaged
    image still shows them; the trees are read through the library from the
    active slot.  Problems met on the way are listed under "errors"; an image
    that cannot be opened also gets "error" (the first such problem).
    """
    d = _Dumper(path, key)
    with open(path, "rb") as f:
        area = f.read(fmt.HEADER_AREA)
        d.doc["file_size"] = os.fstat(f.fileno()).st_size
    d.header_area(area)
    try:
        img = nvbox.open(path, "r", key=key)
    except (NvboxError, OSError) as exc:
        err = as_error(exc)
        d.doc["error"] = {"code": err[0], "message": err[1]}
        d.doc["errors"] = d.errors + [{"code": err[0], "message": f"open: {err[1]}"}]
        return d.doc
    with img:
        d.trees(img)
    d.doc["errors"] = d.errors
    return d.doc


def _render(obj, indent=0, label=None):
    """Indented text for a dump tree."""
    pad = "  " * indent
    lines = []
    if isinstance(obj, dict) and "type" in obj and "offset" in obj:
        where = "-" if obj["offset"] is None else f"0x{obj['offset']:x}"
        extra = []
        for k in ("name", "index", "cluster", "level", "first_cluster", "first_index", "valid", "active",
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


def _render_dump(doc) -> list[str]:
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


@click.command(context_settings=CONTEXT, help="""\
Show every structure with its byte offset: the header and its extensions, both
commit slots (valid or not, with their generation), the refcount tree's nodes,
the directory's nodes and entries, every cluster map, the snapshot table's
records, and the key slot table.  The header area is decoded without validation,
so a damaged image still shows it; problems are listed at the end.

\b
--output json gives one tree.  Every structure is an object with "type",
"offset" (absolute byte offset in the file), "length" and "fields", whose keys
are exactly the field names of the spec's tables (and of the ASN.1 module for
DER records: name, size, content, lowKey, child, id, createTime, blobCount,
dirDepth, dirRoot, metadata).  Byte strings are lowercase hex, pointers are
objects {offset, crc, reserved} or {offset, crc, nonce, tag}, reserved byte ranges
are {length, all_zero}.  Derived values go in "decoded".  In an encrypted image
the offsets of DER records are positions in the decrypted cluster.

\b
Examples:
  nvbox dump vm.nvbox
  nvbox dump --output json vm.nvbox | jq '.slots[] | {name, valid, generation}'""")
@image_command(output=True, exists=True)
def dump(image, output):
    doc = dump_image(image.path, image.key())
    if output == "json":
        emit_json(doc)
    else:
        for line in _render_dump(doc):
            click.echo(line)
        if "error" in doc:
            click.echo(f"nvbox: error: {doc['error']['code']}: {doc['error']['message']}", err=True)
    if "error" in doc:
        raise click.exceptions.Exit(1)


