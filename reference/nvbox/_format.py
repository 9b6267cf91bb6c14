"""On-disk structures of nvbox v1: encoding and decoding, no I/O.

One section per table of spec/nvbox.md, in the same order, with the same
field names.  Decoders take bytes and return frozen records, or raise the
error code the spec gives for the first rule broken; encoders are their exact
inverse.  Nothing here reads a file: the tree code hands in cluster bytes it
has already verified against their pointer's checksum.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from functools import lru_cache, partial
from itertools import chain, repeat
from operator import itemgetter
from typing import NamedTuple

import crc32c as _crc32c_lib

from . import _der as der
from ._layout import (  # noqa: F401 - the constants, geometry and tables are part of this module's interface
    DEFAULT_CLUSTER_BITS, DIR_MAGIC, DIR_NODE, DIR_NODE_HEADER, ENCRYPTED_POINTER, ENCRYPTED_POINTER_LAYOUT,
    EXT_CREATOR, EXT_END, EXT_REQUIRED, EXTENSION, HEADER, HEADER_AREA, HEADER_LENGTH, INCOMPAT_ENCRYPTED,
    KEYSLOT, KEYSLOT_MAGIC, KEYSLOT_SIZE, KEYSLOT_TABLE, KIND_DATA, KIND_DIR, KIND_MAP, KIND_REFBLOCK,
    KIND_REFINDEX, KIND_SNAPDATA, KNOWN_AUTOCLEAR, KNOWN_COMPATIBLE, KNOWN_EXTENSIONS, KNOWN_INCOMPATIBLE, LAYOUTS,
    MAGIC, MAX_BLOB_SIZE, MAX_CLUSTER_BITS, MAX_DIR_DEPTH, MAX_IMAGE_CLUSTERS, MAX_MAP_DEPTH, MAX_NAME,
    MAX_NODE_ITEMS, MAX_REFCOUNT, MAX_REFCOUNT_DEPTH, MAX_SNAPSHOT_METADATA, MAX_SNAPSHOTS, MAX_SNAPTABLE,
    MIN_CLUSTER_BITS, NUM_KEYSLOTS, PLAIN_POINTER, PLAIN_POINTER_LAYOUT, POINTER_FIELD, REFCOUNT_ORDER, SECTOR,
    SLOT, SLOT_MAGIC, SLOT_OFFSETS, VERSION, Field, Geometry, Layout, geometry, nonzero, pointer_layout,
    slot_generation,
)
from ._layout import nonzero as _nonzero
from .errors import NvboxError, raise_code

# CRC-32C (Castagnoli) of any buffer (bytes, bytearray, memoryview), in hardware
# where the CPU has it, and without a copy: the write path checksums each
# cluster as a slice of the caller's buffer.
crc32c = _crc32c_lib.crc32c


def blob_key(name: str) -> bytes:
    """The directory key of a name: SHA-256 of its UTF-8 bytes [R-dir-1]."""
    return hashlib.sha256(name.encode("utf-8")).digest()


def check_name(name, code: str = "blob.name") -> str:
    """Validate a blob or snapshot name (1..255 bytes of UTF-8, no NUL)."""
    if isinstance(name, bytes):
        try:
            name = name.decode("utf-8")
        except UnicodeDecodeError:
            raise_code(code, "name is not UTF-8")
    if not isinstance(name, str):
        raise_code(code, "name must be a string")
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        raise_code(code, "name is not encodable as UTF-8")
    if not 1 <= len(raw) <= MAX_NAME or b"\0" in raw:
        raise_code(code, f"name must be 1 to {MAX_NAME} bytes without NUL, got {len(raw)} bytes")
    return name


# -- pointers (spec section 6) ----------------------------------------------

class Pointer(NamedTuple):
    """A pointer (a tuple: the write path builds one per cluster, and a frozen
    dataclass takes 2.4 times as long to build, 0.56 against 0.23 us)."""

    offset: int = 0
    crc: int = 0
    nonce: bytes = b""
    tag: bytes = b""

    @property
    def is_null(self) -> bool:
        return self.offset == 0

    def encode(self, width: int) -> bytes:
        return _node_struct(1, width).pack(*(self[:2] if width == PLAIN_POINTER else self))


NULL = Pointer()
_offset_and_crc = itemgetter(0, 1)


def decode_pointer(raw, width: int) -> Pointer:
    """Decode a pointer's bytes; checks R-ptr-2 rule 1 (the rest needs the geometry)."""
    if len(raw) < width:
        raise_code("image.truncated", f"a pointer needs {width} bytes, got {len(raw)}")
    if width == PLAIN_POINTER:
        offset, crc, reserved = _PLAIN_POINTER.unpack_from(raw)
        if offset == 0:
            if crc or reserved:
                raise_code("pointer.reserved", "a null pointer has non-zero bytes")
            return NULL
        if reserved:
            raise_code("pointer.reserved", "a plain pointer's reserved bytes are not zero")
        return Pointer(offset, crc)
    ptr = new_pointer(_ENCRYPTED_POINTER.unpack_from(raw))
    if ptr.offset == 0:
        if _nonzero(raw[:width]):
            raise_code("pointer.reserved", "a null pointer has non-zero bytes")
        return NULL
    return ptr


def check_pointer(ptr: Pointer, geo: Geometry, image_clusters: int) -> None:
    """R-ptr-2 rules 2 and 3 for a non-null pointer."""
    if ptr.offset % geo.cluster_size:
        raise_code("pointer.misaligned", f"pointer offset {ptr.offset} is not cluster-aligned")
    index = ptr.offset >> geo.cluster_bits
    if index < geo.header_clusters or index >= image_clusters:
        raise_code("pointer.out_of_range",
                   f"pointer to cluster {index} outside [{geo.header_clusters}, {image_clusters})")


# Pointer(*fields) for a tuple of the fields, called in C: map(new_pointer, zip(...))
# builds pointers with no Python frame per pointer.
new_pointer = partial(tuple.__new__, Pointer)


def plain_pointers(offsets, crcs):
    """``Pointer(offset, crc)`` for each pair, built in C (no Python frame per
    pointer: a 64 MiB write at 4 KiB clusters makes 16,384 of them)."""
    return map(new_pointer, zip(offsets, crcs, repeat(b""), repeat(b"")))


_PLAIN_POINTER = PLAIN_POINTER_LAYOUT.struct
_ENCRYPTED_POINTER = ENCRYPTED_POINTER_LAYOUT.struct


@lru_cache(maxsize=None)
def _node_struct(count: int, width: int) -> struct.Struct:
    """``count`` pointers of ``width`` bytes (R-ptr-1), from the pointer tables:
    offset, crc, then 4 reserved bytes (packed as zeros), or nonce and tag ('s'
    pads a null pointer's empty ones with zeros)."""
    return struct.Struct("<" + pointer_layout(width).record_struct.format.lstrip("<") * count)


def encode_pointers(ptrs, geo: Geometry) -> bytes:
    """A map node or refcount index node: ``fanout`` pointers, zero padded."""
    # One Struct packs the whole node (for 40-byte pointers a quarter of the time
    # of joining per-pointer encodings: 7.9 against 31.5 us); a null pointer (0, 0, b"", b"") packs to the zero
    # bytes R-ptr-2 wants.
    w = geo.pointer_size
    ptrs = list(ptrs)
    fields = map(_offset_and_crc, ptrs) if w == PLAIN_POINTER else ptrs
    return _node_struct(len(ptrs), w).pack(*chain.from_iterable(fields)).ljust(geo.cluster_size, b"\0")


def decode_pointers(raw, geo: Geometry) -> list[Pointer]:
    w = geo.pointer_size
    n = geo.fanout
    if len(raw) != geo.cluster_size:
        raise_code("image.truncated", f"a node needs {geo.cluster_size} bytes, got {len(raw)}")
    if _nonzero(raw[n * w:]):
        raise_code("pointer.reserved", "non-zero bytes after a node's last pointer")
    if w == PLAIN_POINTER:
        out = []
        for offset, crc, reserved in _PLAIN_POINTER.iter_unpack(raw[:n * w]):
            if offset == 0:
                if crc or reserved:
                    raise_code("pointer.reserved", "a null pointer has non-zero bytes")
                out.append(NULL)
            else:
                if reserved:
                    raise_code("pointer.reserved", "a plain pointer's reserved bytes are not zero")
                out.append(Pointer(offset, crc))
        return out
    return [decode_pointer(raw[i * w:(i + 1) * w], w) for i in range(n)]


# -- header (spec section 3) ------------------------------------------------

@dataclass(frozen=True)
class Extension:
    ext_type: int
    ext_flags: int
    ext_data: bytes
    offset: int = 0


@dataclass(frozen=True)
class Header:
    cluster_bits: int
    image_uuid: bytes
    capacity_clusters: int = 0
    create_time: int = 0
    header_length: int = HEADER_LENGTH
    refcount_order: int = REFCOUNT_ORDER
    extensions: tuple = ()

    def encode(self) -> bytes:
        out = bytearray(SECTOR)
        _HEADER.pack_into(out, 0, MAGIC, VERSION, self.header_length, self.cluster_bits, self.refcount_order, 0,
                          self.image_uuid, self.capacity_clusters, self.create_time, 0)
        pos = self.header_length
        for ext in self.extensions:
            _EXTENSION.pack_into(out, pos, ext.ext_type, ext.ext_flags, len(ext.ext_data))
            out[pos + _EXTENSION.size:pos + _EXTENSION.size + len(ext.ext_data)] = ext.ext_data
            pos += _EXTENSION.size + (len(ext.ext_data) + 7) // 8 * 8
        if pos + _EXTENSION.size > _HEADER_CRC:
            raise ValueError("header extensions do not fit")
        _CRC.pack_into(out, _HEADER_CRC, crc32c(bytes(out[:_HEADER_CRC])))
        return bytes(out)


_HEADER = HEADER.record_struct       # reserved0 packed as zeros
_EXTENSION = EXTENSION.struct
_HEADER_CRC = HEADER["header_crc"].offset
_CRC = struct.Struct("<I")


_H_VERSION, _H_LENGTH, _H_CLUSTER_BITS, _H_REFCOUNT_ORDER = (
    HEADER[name] for name in ("version", "header_length", "cluster_bits", "refcount_order"))
_H_RESERVED1 = HEADER["reserved1"].offset
_EXT_FLAGS = EXTENSION["ext_flags"]


def decode_header(raw: bytes) -> Header:
    """Validate and decode sector 0 in the order R-header-9 prescribes."""
    if len(raw) < HEADER_AREA:
        raise_code("image.truncated", f"the file holds {len(raw)} bytes, fewer than the 2048-byte header area")
    (magic, version, header_length, cluster_bits, refcount_order, reserved0, header_flags, image_uuid,
     capacity, create_time, header_crc) = HEADER.struct.unpack_from(raw)
    if magic != MAGIC:
        if magic[:4] == MAGIC[:4]:
            raise_code("header.magic", "signature damaged, as by a text-mode (line-ending) transfer")
        raise_code("header.magic", "not an nvbox image")
    if header_crc != crc32c(raw[:_HEADER_CRC]):
        raise_code("header.checksum")
    # The table's valid values, read once at import (an open decodes the header each time).
    if version != _H_VERSION.valid:
        raise_code(_H_VERSION.error, f"format version {version}, this implementation reads version 1")
    if header_length not in _H_LENGTH.valid:
        raise_code(_H_LENGTH.error, f"header_length {header_length} out of range")
    if cluster_bits not in _H_CLUSTER_BITS.valid:
        raise_code(_H_CLUSTER_BITS.error, f"cluster_bits {cluster_bits} outside 9..21")
    if refcount_order != _H_REFCOUNT_ORDER.valid:
        raise_code(_H_REFCOUNT_ORDER.error, f"refcount_order {refcount_order}, must be 4")
    if reserved0 or header_flags or _nonzero(raw[_H_RESERVED1:header_length]):
        raise_code("header.field", "reserved header bytes are not zero")
    geo = geometry(cluster_bits)
    if capacity and not geo.header_clusters + 2 <= capacity <= MAX_IMAGE_CLUSTERS:
        raise_code("header.field", f"capacity_clusters {capacity} out of range")
    extensions = []
    pos = header_length
    head = _EXTENSION.size
    while True:
        if pos + head > _HEADER_CRC:
            raise_code("header.extension", "extension area has no end record")
        ext_type, ext_flags, length = _EXTENSION.unpack_from(raw, pos)
        if ext_type == EXT_END:
            if ext_flags or length:
                raise_code("header.extension", "malformed end record")
            break
        if ext_flags not in _EXT_FLAGS.valid:
            raise_code(_EXT_FLAGS.error, "reserved extension flag bits set")
        padded = (length + 7) // 8 * 8
        if pos + head + padded + head > _HEADER_CRC:
            raise_code("header.extension", "extension record runs past the header")
        data = bytes(raw[pos + head:pos + head + length])
        if _nonzero(raw[pos + head + length:pos + head + padded]):
            raise_code("header.extension", "non-zero extension padding")
        if ext_type not in KNOWN_EXTENSIONS and ext_flags & EXT_REQUIRED:
            raise_code("header.extension_required", f"unknown required header extension type {ext_type}")
        if ext_type == EXT_CREATOR:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                raise_code("header.extension", "creator extension is not UTF-8")
            if length > 64:
                raise_code("header.extension", "creator extension longer than 64 bytes")
        extensions.append(Extension(ext_type, ext_flags, data, pos))
        pos += head + padded
    if _nonzero(raw[pos + head:_HEADER_CRC]):
        raise_code("header.extension", "non-zero bytes after the end record")
    return Header(cluster_bits, bytes(image_uuid), capacity, create_time, header_length, refcount_order,
                  tuple(extensions))


# -- commit slots (spec section 4) ------------------------------------------

_SLOT = SLOT.struct
_SLOT_RECORD = SLOT.record_struct      # reserved0 and reserved1 packed as zeros
_SLOT_MAC = SLOT.span("slot_mac")
_SLOT_CRC = SLOT["slot_crc"].offset


@dataclass(frozen=True)
class Slot:
    generation: int
    incompatible_features: int = 0
    compatible_features: int = 0
    autoclear_features: int = 0
    image_clusters: int = 0
    blob_count: int = 0
    next_snapshot_id: int = 1
    commit_time: int = 0
    refcount_depth: int = 1
    dir_depth: int = 0
    snaptable_depth: int = 0
    snapshot_count: int = 0
    snaptable_size: int = 0
    refcount_root: Pointer = NULL
    dir_root: Pointer = NULL
    snaptable_root: Pointer = NULL
    keyslots: Pointer = NULL
    alloc_hint: int = 0
    slot_mac: bytes = bytes(32)

    @property
    def encrypted(self) -> bool:
        return bool(self.incompatible_features & INCOMPAT_ENCRYPTED)

    def encode_unsigned(self) -> bytearray:
        """Bytes 0..507 with a zero MAC (the MAC, when any, covers bytes 0..475)."""
        width = ENCRYPTED_POINTER if self.encrypted else PLAIN_POINTER
        out = bytearray(SECTOR)
        # A pointer shorter than its 40-byte field is padded with zeros by '40s'.
        _SLOT_RECORD.pack_into(out, 0, SLOT_MAGIC, self.generation, self.incompatible_features,
                               self.compatible_features, self.autoclear_features, self.image_clusters,
                               self.blob_count, self.next_snapshot_id, self.commit_time, self.refcount_depth,
                               self.dir_depth, self.snaptable_depth, self.snapshot_count, self.snaptable_size,
                               self.refcount_root.encode(width), self.dir_root.encode(width),
                               self.snaptable_root.encode(width), self.keyslots.encode(PLAIN_POINTER),
                               self.alloc_hint, b"", 0)
        return out

    def encode(self) -> bytes:
        out = self.encode_unsigned()
        out[_SLOT_MAC] = self.slot_mac
        _CRC.pack_into(out, _SLOT_CRC, crc32c(bytes(out[:_SLOT_CRC])))
        return bytes(out)


def slot_fault(raw: bytes, index: int) -> str | None:
    """Which of the three conditions of R-slot-2 the commit slot ``raw`` at
    position ``index`` (0 = A) breaks, as words for a report; None if it is valid."""
    if len(raw) < SECTOR or raw[:len(SLOT_MAGIC)] != SLOT_MAGIC:
        return "its magic is not NVBXSLOT"
    if _CRC.unpack_from(raw, _SLOT_CRC)[0] != crc32c(raw[:_SLOT_CRC]):
        return "its CRC-32C does not match"
    generation = slot_generation(raw)
    if generation < 1:
        return "its generation is 0"
    if generation % 2 != (1 if index == 0 else 0):
        return f"generation {generation} has the wrong parity for slot {'AB'[index]}"
    return None


def slot_is_valid(raw: bytes, index: int) -> bool:
    """The three conditions of R-slot-2."""
    return slot_fault(raw, index) is None


def decode_slot(raw: bytes, header: Header) -> Slot:
    """Decode a slot already known valid, checking its fields (R-slot-5)."""
    (_, generation, incompat, compat, autoclear, image_clusters, blob_count, next_snapshot_id, commit_time,
     refcount_depth, dir_depth, snaptable_depth, reserved0, snapshot_count, snaptable_size, raw_refcount_root,
     raw_dir_root, raw_snaptable_root, raw_keyslots, alloc_hint, reserved1, slot_mac, _) = _SLOT.unpack_from(raw)
    unknown = incompat & ~KNOWN_INCOMPATIBLE
    if unknown:
        raise_code("feature.incompatible", f"unknown incompatible feature bits 0x{unknown:x}")
    encrypted = bool(incompat & INCOMPAT_ENCRYPTED)
    geo = geometry(header.cluster_bits, encrypted)
    width = geo.pointer_size

    def bad(why):
        raise_code("slot.field", why)

    F = SLOT.by_name
    if reserved0 or _nonzero(reserved1):
        bad("reserved slot bytes are not zero")
    for field_bytes in (raw_refcount_root, raw_dir_root, raw_snaptable_root):
        if _nonzero(field_bytes[width:]):
            bad("bytes after a root pointer are not zero")
    if _nonzero(raw_keyslots[PLAIN_POINTER:]):
        bad("bytes after the keyslots pointer are not zero")
    if not encrypted and _nonzero(slot_mac):
        bad("slot_mac is not zero in a plain image")
    if not geo.header_clusters + 1 <= image_clusters <= MAX_IMAGE_CLUSTERS:
        bad(f"image_clusters {image_clusters} out of range")
    if header.capacity_clusters and image_clusters > header.capacity_clusters:
        bad(f"image_clusters {image_clusters} above capacity {header.capacity_clusters}")
    if not F["refcount_depth"].accepts(refcount_depth) or geo.refcount_coverage(refcount_depth) < image_clusters:
        bad(f"refcount_depth {refcount_depth} cannot cover {image_clusters} clusters")
    F["dir_depth"].check(dir_depth, f"dir_depth {dir_depth} above {MAX_DIR_DEPTH}")
    F["snapshot_count"].check(snapshot_count, f"snapshot_count {snapshot_count} above {MAX_SNAPSHOTS}")
    if not F["snaptable_size"].accepts(snaptable_size) or (snaptable_size == 0) != (snapshot_count == 0):
        bad(f"snaptable_size {snaptable_size} inconsistent with snapshot_count {snapshot_count}")
    if snaptable_depth != geo.map_depth(snaptable_size):
        bad(f"snaptable_depth {snaptable_depth} does not match snaptable_size {snaptable_size}")
    F["next_snapshot_id"].check(next_snapshot_id, "next_snapshot_id is 0")
    if alloc_hint > image_clusters:
        bad(f"alloc_hint {alloc_hint} beyond image_clusters {image_clusters}")
    if encrypted and header.cluster_bits < 10:
        raise_code("header.field", "encrypted images need clusters of at least 1024 bytes")
    try:
        refcount_root = decode_pointer(raw_refcount_root, width)
        dir_root = decode_pointer(raw_dir_root, width)
        snaptable_root = decode_pointer(raw_snaptable_root, width)
        keyslots = decode_pointer(raw_keyslots, PLAIN_POINTER)
    except NvboxError as exc:  # pointer.reserved inside a slot is a slot field error
        bad(str(exc))
    if refcount_root.is_null:
        bad("refcount_root is null")
    if dir_root.is_null != (dir_depth == 0):
        bad("dir_root must be null exactly when dir_depth is 0")
    if snaptable_root.is_null != (snaptable_size == 0):
        bad("snaptable_root must be null exactly when snaptable_size is 0")
    if keyslots.is_null == encrypted:
        bad("keyslots must be set exactly when the image is encrypted")
    for ptr in (refcount_root, dir_root, snaptable_root, keyslots):
        if not ptr.is_null:
            check_pointer(ptr, geo, image_clusters)
    return Slot(generation, incompat, compat, autoclear, image_clusters, blob_count, next_snapshot_id,
                commit_time, refcount_depth, dir_depth, snaptable_depth, snapshot_count, snaptable_size,
                refcount_root, dir_root, snaptable_root, keyslots, alloc_hint, slot_mac)


# -- refcount blocks (spec section 7) ---------------------------------------

def decode_refblock(raw) -> list[int]:
    return list(struct.unpack(f"<{len(raw) // 2}H", raw))


# -- directory (spec section 9) ---------------------------------------------

def tlv_len(content_len: int) -> int:
    """Encoded size of a DER value whose content is ``content_len`` bytes."""
    if content_len < 0x80:
        return 2 + content_len
    return 2 + (content_len.bit_length() + 7) // 8 + content_len


def entry_len(name_len: int, size: int, inline_len, depth: int, extra_len: int, width: int) -> int:
    """Encoded size of a DirEntry, computed without encoding it (node splits need it often)."""
    if inline_len is not None:
        content = tlv_len(inline_len)
    else:
        content = tlv_len(tlv_len(depth.bit_length() // 8 + 1) + tlv_len(width))
    return tlv_len(tlv_len(name_len) + tlv_len(size.bit_length() // 8 + 1) + content + extra_len)


@dataclass(frozen=True)
class DirEntry:
    name: str
    size: int
    inline: bytes | None = None       # the blob's bytes when stored inline
    depth: int = 0                    # cluster map, when not inline
    root: Pointer = NULL
    extra: bytes = b""                # unknown extension fields, kept byte for byte [R-dir-4]

    @property
    def key(self) -> bytes:
        return blob_key(self.name)

    def encode(self, width: int) -> bytes:
        if self.inline is not None:
            content = der.octets(self.inline, der.context(0))
        else:
            content = der.sequence(der.integer(self.depth), der.octets(self.root.encode(width)),
                                   tag=der.context(1, True))
        return der.sequence(der.utf8(self.name), der.integer(self.size), content, self.extra)


@dataclass(frozen=True)
class DirBranch:
    low_key: bytes
    child: Pointer

    def encode(self, width: int) -> bytes:
        return der.sequence(der.octets(self.low_key), der.octets(self.child.encode(width)))


def _extension_fields(buf, fields, first_tag: int) -> bytes:
    """Validate trailing extension fields (ascending context tags >= first_tag) and return their bytes."""
    last = first_tag - 1
    for tag, cs, ce in fields:
        n = der.context_number(tag)
        if n is None or n < first_tag or n <= last:
            raise_code("der.malformed", "extension fields must be context tags in strictly ascending order")
        last = n
    if not fields:
        return b""
    start = fields[0][1] - _header_len(buf, fields[0][1])
    return bytes(buf[start:fields[-1][2]])


def _header_len(buf, content_start: int) -> int:
    """Length of the TLV header that ends at ``content_start`` (tag + length bytes)."""
    # Walk back: the length is either short (1 byte) or 0x8n followed by n bytes.
    for n in (1, 2, 3, 4):
        first = buf[content_start - n]
        if n == 1 and first < 0x80 and _is_tag_at(buf, content_start - 2):
            return 2
        if n > 1 and first == 0x80 | (n - 1):
            return n + 1
    raise_code("der.malformed", "cannot locate an extension field's header")


def _is_tag_at(buf, pos: int) -> bool:
    return pos >= 0


def _pointer_field(buf, cs, ce, width, what) -> Pointer:
    if ce - cs != width:
        raise_code("directory.entry", f"{what} is {ce - cs} bytes, the image's pointers are {width}")
    return decode_pointer(buf[cs:ce], width)


def decode_entry(buf, cs: int, ce: int, geo: Geometry) -> DirEntry:
    fields = der.elements(buf, cs, ce)
    if len(fields) < 3:
        raise_code("der.malformed", "DirEntry needs name, size and content")
    (t0, n0, n1), (t1, s0, s1), (t2, c0, c1) = fields[:3]
    der.expect(t0, der.UTF8_STRING, "DirEntry.name")
    der.expect(t1, der.INTEGER, "DirEntry.size")
    name = der.as_utf8(buf, n0, n1)
    if not 1 <= n1 - n0 <= MAX_NAME:
        raise_code("directory.entry", f"name of {n1 - n0} bytes")
    size = der.as_integer(buf, s0, s1)
    if size > MAX_BLOB_SIZE:
        raise_code("directory.entry", f"blob size {size} above 2^48")
    extra = _extension_fields(buf, fields[3:], 2)
    if t2 == der.context(0):
        if size > geo.inline_max:
            raise_code("directory.entry", f"inline blob of {size} bytes above inline_max {geo.inline_max}")
        if c1 - c0 != size:
            raise_code("directory.entry", f"inline content of {c1 - c0} bytes for size {size}")
        return DirEntry(name, size, bytes(buf[c0:c1]), extra=extra)
    if t2 != der.context(1, True):
        raise_code("der.malformed", f"DirEntry.content has tag 0x{t2:02x}")
    parts = der.elements(buf, c0, c1)
    if len(parts) != 2:
        raise_code("der.malformed", "ClusterMap needs depth and root")
    der.expect(parts[0][0], der.INTEGER, "ClusterMap.depth")
    der.expect(parts[1][0], der.OCTET_STRING, "ClusterMap.root")
    depth = der.as_integer(buf, parts[0][1], parts[0][2], MAX_MAP_DEPTH)
    root = _pointer_field(buf, parts[1][1], parts[1][2], geo.pointer_size, "ClusterMap.root")
    if depth != geo.map_depth(size):
        raise_code("map.depth", f"map depth {depth} for a blob of {size} bytes, expected {geo.map_depth(size)}")
    return DirEntry(name, size, None, depth, root, extra)


def decode_branch(buf, cs: int, ce: int, geo: Geometry) -> DirBranch:
    fields = der.elements(buf, cs, ce)
    if len(fields) != 2:
        raise_code("der.malformed", "DirBranch needs lowKey and child")
    der.expect(fields[0][0], der.OCTET_STRING, "DirBranch.lowKey")
    der.expect(fields[1][0], der.OCTET_STRING, "DirBranch.child")
    low = bytes(buf[fields[0][1]:fields[0][2]])
    if len(low) not in (0, 32):
        raise_code("directory.entry", f"lowKey of {len(low)} bytes")
    child = _pointer_field(buf, fields[1][1], fields[1][2], geo.pointer_size, "DirBranch.child")
    if child.is_null:
        raise_code("directory.entry", "a branch's child is null")
    return DirBranch(low, child)


@dataclass(frozen=True)
class DirNode:
    level: int
    items: tuple  # DirEntry for a leaf, DirBranch for an index node

    def keys(self):
        if self.level == 0:
            return [e.key for e in self.items]
        return [b.low_key for b in self.items]


def encode_dir_body(level: int, items, width: int) -> bytes:
    return der.sequence(*(item.encode(width) for item in items))


def encode_dir_node(level: int, items, geo: Geometry, body: bytes | None = None) -> bytes:
    if body is None:
        body = encode_dir_body(level, items, geo.pointer_size)
    if len(body) > geo.dir_body_max:
        raise ValueError("directory node body exceeds the cluster")
    head = _DIR_NODE_RECORD.pack(DIR_MAGIC, level, len(items), len(body))
    return (head + body).ljust(geo.cluster_size, b"\0")


_DIR_NODE = DIR_NODE.struct
_DIR_NODE_RECORD = DIR_NODE.record_struct     # reserved0 and reserved1 packed as zeros


def decode_dir_node(raw, geo: Geometry, expected_level: int | None = None) -> DirNode:
    if len(raw) < DIR_NODE_HEADER:
        raise_code("directory.node", f"a directory node needs at least {DIR_NODE_HEADER} bytes")
    magic, level, reserved0, count, body_length, reserved1 = _DIR_NODE.unpack_from(raw, 0)
    D = DIR_NODE.by_name
    D["node_magic"].check(magic, "directory node magic is not NVDN")
    if reserved0 or reserved1:
        raise_code("directory.node", "reserved directory node bytes are not zero")
    D["count"].check(count, "directory node with no elements")
    if body_length > geo.dir_body_max:
        raise_code("directory.node", f"body_length {body_length} exceeds the cluster")
    end = DIR_NODE_HEADER + body_length
    if _nonzero(raw[end:]):
        raise_code("directory.node", "non-zero padding after the directory node body")
    if expected_level is not None and level != expected_level:
        raise_code("directory.depth", f"directory node at level {level}, expected {expected_level}")
    cs, ce = der.parse_single(raw, DIR_NODE_HEADER, end, der.SEQUENCE)
    elems = der.elements(raw, cs, ce)
    if len(elems) != count:
        raise_code("directory.node", f"count {count} but the body holds {len(elems)} elements")
    items = []
    for tag, a, b in elems:
        der.expect(tag, der.SEQUENCE, "directory element")
        items.append(decode_entry(raw, a, b, geo) if level == 0 else decode_branch(raw, a, b, geo))
    keys = [e.key for e in items] if level == 0 else [br.low_key for br in items]
    if level > 0 and keys[0] != b"":
        raise_code("directory.order", "the first branch's lowKey must be empty")
    for i in range(1 if level > 0 else 0, len(keys)):
        if level > 0 and len(keys[i]) != 32:
            raise_code("directory.order", "only the first branch may have an empty lowKey")
        if i and keys[i - 1] >= keys[i]:
            raise_code("directory.order", "directory keys are not strictly ascending")
    return DirNode(level, tuple(items))


# -- snapshot table (spec sections 9.2, 11) ----------------------------------

@dataclass(frozen=True)
class Snapshot:
    id: int
    name: str
    create_time: int
    blob_count: int
    dir_depth: int
    dir_root: Pointer
    metadata: bytes | None = None
    extra: bytes = b""

    def encode(self, width: int) -> bytes:
        meta = der.octets(self.metadata, der.context(0)) if self.metadata is not None else b""
        return der.sequence(der.integer(self.id), der.utf8(self.name), der.integer(self.create_time),
                            der.integer(self.blob_count), der.integer(self.dir_depth),
                            der.octets(self.dir_root.encode(width)), meta, self.extra)


def encode_snapshot_table(snaps, width: int) -> bytes:
    if not snaps:
        return b""
    return der.sequence(*(s.encode(width) for s in snaps))


def decode_snapshot_table(raw, geo: Geometry, count: int, next_id: int) -> list[Snapshot]:
    if not raw:
        return []

    def bad(why):
        raise_code("snapshot.table", why)

    cs, ce = der.parse_single(raw, 0, len(raw), der.SEQUENCE)
    out = []
    names = set()
    for tag, a, b in der.elements(raw, cs, ce):
        der.expect(tag, der.SEQUENCE, "Snapshot")
        fields = der.elements(raw, a, b)
        if len(fields) < 6:
            raise_code("der.malformed", "Snapshot record needs six fields")
        wanted = (der.INTEGER, der.UTF8_STRING, der.INTEGER, der.INTEGER, der.INTEGER, der.OCTET_STRING)
        for (t, _, _), w in zip(fields, wanted):
            der.expect(t, w, "Snapshot field")
        sid = der.as_integer(raw, fields[0][1], fields[0][2], (1 << 63) - 1)
        name = der.as_utf8(raw, fields[1][1], fields[1][2])
        if not 1 <= fields[1][2] - fields[1][1] <= MAX_NAME:
            bad("snapshot name length out of range")
        ctime = der.as_integer(raw, fields[2][1], fields[2][2])
        blob_count = der.as_integer(raw, fields[3][1], fields[3][2])
        depth = der.as_integer(raw, fields[4][1], fields[4][2], MAX_DIR_DEPTH)
        if fields[5][2] - fields[5][1] != geo.pointer_size:
            bad("snapshot dirRoot has the wrong pointer width")
        root = decode_pointer(raw[fields[5][1]:fields[5][2]], geo.pointer_size)
        if root.is_null != (depth == 0):
            bad("snapshot dirRoot must be null exactly when dirDepth is 0")
        rest = fields[6:]
        metadata = None
        if rest and rest[0][0] == der.context(0):
            metadata = bytes(raw[rest[0][1]:rest[0][2]])
            if len(metadata) > MAX_SNAPSHOT_METADATA:
                bad("snapshot metadata above 1024 bytes")
            rest = rest[1:]
        extra = _extension_fields(raw, rest, 1)
        if sid == 0 or sid >= next_id or (out and sid <= out[-1].id):
            bad("snapshot ids must ascend and stay below next_snapshot_id")
        if name in names:
            bad(f"duplicate snapshot name {name!r}")
        names.add(name)
        out.append(Snapshot(sid, name, ctime, blob_count, depth, root, metadata, extra))
    if len(out) != count:
        bad(f"snapshot_count {count} but the table holds {len(out)} records")
    return out


# -- key slot table (spec section 10.1) --------------------------------------

class KeySlot(NamedTuple):
    """One key slot (a tuple, like Pointer: an open decodes eight)."""

    kind: int = 0
    kdf_time: int = 0
    kdf_memory: int = 0
    kdf_lanes: int = 0
    salt: bytes = bytes(16)
    nonce: bytes = bytes(12)
    wrapped_key: bytes = bytes(32)
    wrap_tag: bytes = bytes(16)

    @property
    def in_use(self) -> bool:
        return self.kind != 0

    def encode(self) -> bytes:
        return _KEYSLOT_RECORD.pack(*self)


KEYSLOT_KINDS = {0: "empty", 1: "argon2id", 2: "scrypt", 3: "keyfile"}


def encode_keyslots(slots, geo: Geometry) -> bytes:
    body = b"".join(s.encode() for s in slots)
    return _KEYSLOT_TABLE_RECORD.pack(KEYSLOT_MAGIC, 1, NUM_KEYSLOTS, 1, body).ljust(geo.cluster_size, b"\0")


_KEYSLOT = KEYSLOT.struct
_KEYSLOT_RECORD = KEYSLOT.record_struct              # the reserved fields packed as zeros
_KEYSLOT_TABLE = KEYSLOT_TABLE.struct
_KEYSLOT_TABLE_RECORD = KEYSLOT_TABLE.record_struct
_EMPTY_KEYSLOT = bytes(KEYSLOT_SIZE)


def decode_keyslots(raw) -> list[KeySlot]:
    raw = bytes(raw)
    end = _KEYSLOT_TABLE.size
    if len(raw) < end:
        raise_code("key.slot_damaged", "the key slot table is truncated")
    magic, version, num, cipher, reserved, slots = _KEYSLOT_TABLE.unpack_from(raw, 0)

    def bad(why):
        raise_code("key.slot_damaged", why)

    T = KEYSLOT_TABLE.by_name
    if not all(T[name].accepts(value) for name, value in
               (("ks_magic", magic), ("ks_version", version), ("num_slots", num), ("cipher", cipher))):
        bad("key slot table header is not NVKS version 1 with 8 AES-256-GCM slots")
    if _nonzero(reserved) or _nonzero(raw[end:]):
        bad("reserved key slot table bytes are not zero")
    out = []
    K = KEYSLOT.by_name
    for i, fields in enumerate(_KEYSLOT.iter_unpack(slots)):
        kind, reserved_a, t, m, p, salt, nonce, wrapped, tag, reserved_b = fields
        if not K["kind"].accepts(kind) or _nonzero(reserved_a) or reserved_b:
            bad(f"key slot {i} has an unknown kind or non-zero reserved bytes")
        if kind == 0 and slots[i * KEYSLOT_SIZE:(i + 1) * KEYSLOT_SIZE] != _EMPTY_KEYSLOT:
            bad(f"empty key slot {i} is not all zero")
        out.append(KeySlot(kind, t, m, p, salt, nonce, wrapped, tag))
    if not any(s.in_use for s in out):
        bad("no key slot is in use")
    return out


__all__ = [
    "DEFAULT_CLUSTER_BITS", "DIR_MAGIC", "DIR_NODE", "DIR_NODE_HEADER", "ENCRYPTED_POINTER",
    "ENCRYPTED_POINTER_LAYOUT", "EXT_CREATOR", "EXT_END", "EXT_REQUIRED", "EXTENSION", "HEADER",
    "HEADER_AREA", "HEADER_LENGTH", "INCOMPAT_ENCRYPTED", "KEYSLOT", "KEYSLOT_KINDS", "KEYSLOT_MAGIC",
    "KEYSLOT_SIZE", "KEYSLOT_TABLE", "KIND_DATA", "KIND_DIR", "KIND_MAP", "KIND_REFBLOCK", "KIND_REFINDEX",
    "KIND_SNAPDATA", "KNOWN_AUTOCLEAR", "KNOWN_COMPATIBLE", "KNOWN_EXTENSIONS", "KNOWN_INCOMPATIBLE",
    "LAYOUTS", "MAGIC", "MAX_BLOB_SIZE", "MAX_CLUSTER_BITS", "MAX_DIR_DEPTH", "MAX_IMAGE_CLUSTERS",
    "MAX_MAP_DEPTH", "MAX_NAME", "MAX_NODE_ITEMS", "MAX_REFCOUNT", "MAX_REFCOUNT_DEPTH",
    "MAX_SNAPSHOT_METADATA", "MAX_SNAPSHOTS", "MAX_SNAPTABLE", "MIN_CLUSTER_BITS", "NULL", "NUM_KEYSLOTS",
    "PLAIN_POINTER", "PLAIN_POINTER_LAYOUT", "POINTER_FIELD", "REFCOUNT_ORDER", "SECTOR", "SLOT",
    "SLOT_MAGIC", "SLOT_OFFSETS", "VERSION", "blob_key", "check_name", "check_pointer", "crc32c",
    "decode_branch", "decode_dir_node", "decode_entry", "decode_header", "decode_keyslots", "decode_pointer",
    "decode_pointers", "decode_refblock", "decode_slot", "decode_snapshot_table", "DirBranch", "DirEntry",
    "DirNode", "encode_dir_body", "encode_dir_node", "encode_keyslots", "encode_pointers",
    "encode_snapshot_table", "entry_len", "Extension", "Field", "geometry", "Geometry", "Header", "KeySlot",
    "Layout", "new_pointer", "nonzero", "plain_pointers", "Pointer", "pointer_layout", "Slot", "slot_fault",
    "slot_generation", "slot_is_valid", "Snapshot", "tlv_len",
]
