"""Constants, geometry and the byte-layout tables of nvbox v1 (no I/O).

One table per fixed byte layout of spec/nvbox.md (sections 3, 3.1, 4, 6, 9,
10.1), row for row: offset, size, name, valid values, error code.  The Structs
``_format`` encodes and decodes with are built from them once, at import; the
dumper (nvbox.dump), the conformance corpus's field mutators and the benchmarks
read the same tables, and ksy/tests check them against the spec and the Kaitai
descriptors.  ``_format`` re-exports everything here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import NamedTuple

from .errors import raise_code

# -- constants (spec section 1, 3, 4) ---------------------------------------

MAGIC = b"\x8aNVB\r\n\x1a\n"
VERSION = 1
HEADER_LENGTH = 128
HEADER_AREA = 2048
SECTOR = 512
SLOT_OFFSETS = (512, 1024)  # slot A, slot B
SLOT_MAGIC = b"NVBXSLOT"
DIR_MAGIC = b"NVDN"
KEYSLOT_MAGIC = b"NVKS"
MIN_CLUSTER_BITS, MAX_CLUSTER_BITS = 9, 21
DEFAULT_CLUSTER_BITS = 12
REFCOUNT_ORDER = 4
MAX_REFCOUNT = 0xFFFF
MAX_IMAGE_CLUSTERS = 1 << 40
MAX_BLOB_SIZE = 1 << 48
MAX_NAME = 255
MAX_DIR_DEPTH = 16
MAX_MAP_DEPTH = 16
MAX_REFCOUNT_DEPTH = 6
MAX_SNAPSHOTS = 1024
MAX_SNAPSHOT_METADATA = 1024
MAX_SNAPTABLE = 2 << 20
NUM_KEYSLOTS = 8
KEYSLOT_SIZE = 96
DIR_NODE_HEADER = 16
MAX_NODE_ITEMS = 0xFFFF  # a directory node's count is a u16 (R-dir-5)

PLAIN_POINTER = 16
ENCRYPTED_POINTER = 40
POINTER_FIELD = 40  # pointer fields in the commit slot are always 40 bytes

# Feature bits (spec section 5).
INCOMPAT_ENCRYPTED = 1 << 0
KNOWN_INCOMPATIBLE = INCOMPAT_ENCRYPTED
KNOWN_COMPATIBLE = 0
KNOWN_AUTOCLEAR = 0

EXT_END = 0
EXT_CREATOR = 1
EXT_REQUIRED = 1
KNOWN_EXTENSIONS = {EXT_CREATOR}

# AEAD associated-data kinds (spec section 10.2).
KIND_DATA, KIND_MAP, KIND_REFBLOCK, KIND_REFINDEX, KIND_DIR, KIND_SNAPDATA = 1, 2, 3, 4, 5, 6


_ZEROS = bytes(1 << 16)

# -- layout tables (spec sections 3, 3.1, 4, 6, 9, 10.1) ------------------------
#
# One table per fixed byte layout of the spec, row for row as the spec's tables
# give them: offset, size, name, valid values, error code.  The Structs that
# encode and decode each structure are built from these tables once, at import;
# the dumper, the conformance corpus's field mutators, the benchmarks and the
# spec-table test read the same tables.  Offsets and sizes that depend on other
# fields are kept as the spec writes them (a string such as "header_length"):
# such fields are not part of the Struct and their decoders handle them.

class Field(NamedTuple):
    """One row of a layout table.

    ``type``: "u" a little-endian unsigned integer, "bytes" a byte string,
    "pointer" a pointer field (section 6) held as its bytes.  ``valid``: None
    (any value), an int or bytes (exactly that value; 0 for a byte string means
    all zero), a ``range``, or a sentence for a rule that involves other fields
    (the decoder checks it).  ``error``: the code for a value that breaks it.
    """

    offset: int | str
    size: int | str
    name: str
    type: str = "u"
    valid: object = None
    error: str | None = None

    @property
    def fixed(self) -> bool:
        return isinstance(self.offset, int) and isinstance(self.size, int)

    @property
    def end(self) -> int:
        return self.offset + self.size

    @property
    def reserved_zero(self) -> bool:
        """A field that must be zero and carries nothing (encoders write zeros)."""
        return self.valid == 0 and not isinstance(self.valid, bool) and self.name.startswith(("reserved", "padding"))

    def accepts(self, value) -> bool:
        """True unless ``value`` breaks this row's own ``valid`` (rules stated
        in words, which involve other fields, are the decoder's)."""
        v = self.valid
        if v is None or isinstance(v, str):
            return True
        if isinstance(v, range):
            return value in v
        if v == 0 and not isinstance(value, int):
            return not _nonzero(value)
        return value == v

    def check(self, value, message: str | None = None) -> None:
        if not self.accepts(value):
            raise_code(self.error, message or f"{self.name} is {value!r}, expected {self.describe()}")

    @property
    def code(self) -> str:
        """The struct format code of a fixed field: B, H, I, Q, or Ns for N bytes."""
        if self.type == "u":
            return {1: "B", 2: "H", 4: "I", 8: "Q"}[self.size]
        return f"{self.size}s"

    def describe(self) -> str:
        v = self.valid
        if isinstance(v, range):
            step = f" in steps of {v.step}" if v.step != 1 else ""
            return f"{v.start}..{v.stop - 1}{step}"
        if isinstance(v, bytes):
            return v.hex()
        return "any value" if v is None else str(v)


class Layout:
    """A structure's table and the Struct of its fixed fields.

    ``struct`` covers every field with a fixed offset and size, in offset
    order, with pad bytes over the rest (variable parts, the spaces between);
    ``names`` are the fields it unpacks, in order.  ``record_struct`` is the
    same with reserved zero fields as pad bytes, for encoders (struct packs pad
    bytes and short byte strings as zeros)."""

    def __init__(self, name: str, size: int | str, fields):
        self.name, self.size, self.fields = name, size, tuple(fields)
        self.by_name = {f.name: f for f in self.fields}
        fixed = [f for f in self.fields if f.fixed]
        self.names = tuple(f.name for f in fixed)
        self.struct = struct.Struct(self._format(fixed, pad_reserved=False))
        self.record_struct = struct.Struct(self._format(fixed, pad_reserved=True))
        self.record_names = tuple(f.name for f in fixed if not f.reserved_zero)

    @staticmethod
    def _format(fixed, pad_reserved: bool) -> str:
        out, pos = ["<"], 0
        for f in fixed:
            if f.offset < pos:
                raise ValueError(f"field {f.name} overlaps the one before it")
            if f.offset > pos:
                out.append(f"{f.offset - pos}x")
            out.append(f"{f.size}x" if pad_reserved and f.reserved_zero else f.code)
            pos = f.end
        return "".join(out)

    def __getitem__(self, name: str) -> Field:
        return self.by_name[name]

    def __iter__(self):
        return iter(self.fields)

    def span(self, name: str) -> slice:
        """The bytes of a fixed field, as a slice of the structure."""
        f = self.by_name[name]
        return slice(f.offset, f.end)

    def unpack(self, raw, base: int = 0) -> dict:
        """The fixed fields of the structure at ``raw[base:]`` by name (no checks)."""
        return dict(zip(self.names, self.struct.unpack_from(raw, base)))


def _u(offset, size, name, valid=None, error=None):
    return Field(offset, size, name, "u", valid, error)


def _b(offset, size, name, valid=None, error=None):
    return Field(offset, size, name, "bytes", valid, error)


def _p(offset, size, name, valid=None, error=None):
    return Field(offset, size, name, "pointer", valid, error)


HEADER = Layout("header", SECTOR, [
    _b(0, 8, "magic", MAGIC, "header.magic"),
    _u(8, 4, "version", VERSION, "header.version"),
    _u(12, 4, "header_length", range(HEADER_LENGTH, 505, 8), "header.field"),
    _u(16, 1, "cluster_bits", range(MIN_CLUSTER_BITS, MAX_CLUSTER_BITS + 1), "header.cluster_size"),
    _u(17, 1, "refcount_order", REFCOUNT_ORDER, "header.field"),
    _u(18, 2, "reserved0", 0, "header.field"),
    _u(20, 4, "header_flags", 0, "header.field"),
    _b(24, 16, "image_uuid"),
    _u(40, 8, "capacity_clusters", "0, or header_clusters + 2 .. 2^40", "header.field"),
    _u(48, 8, "create_time"),
    _b(56, "header_length - 56", "reserved1", 0, "header.field"),
    _b("header_length", "...", "extensions", "extension records, then the end record", "header.extension"),
    _u(508, 4, "header_crc", "CRC-32C of bytes 0-507", "header.checksum"),
])

EXTENSION = Layout("header_extension", "8 + ext_length, padded to 8", [
    _u(0, 2, "ext_type", None, "header.extension_required"),
    _u(2, 2, "ext_flags", range(0, EXT_REQUIRED + 1), "header.extension"),
    _u(4, 4, "ext_length", "the record and its padding end before byte 500", "header.extension"),
    _b(8, "ext_length", "ext_data", "then zero padding to a multiple of 8", "header.extension"),
])

SLOT = Layout("commit_slot", SECTOR, [
    _b(0, 8, "slot_magic", SLOT_MAGIC, "slot.none_valid"),
    _u(8, 8, "generation", ">= 1, odd in slot A and even in slot B", "slot.none_valid"),
    _u(16, 8, "incompatible_features", "no bit unknown to the reader", "feature.incompatible"),
    _u(24, 8, "compatible_features"),
    _u(32, 8, "autoclear_features"),
    _u(40, 8, "image_clusters", "header_clusters + 1 .. 2^40, <= capacity_clusters when set", "slot.field"),
    _u(48, 8, "blob_count"),
    _u(56, 8, "next_snapshot_id", range(1, 1 << 64), "slot.field"),
    _u(64, 8, "commit_time"),
    _u(72, 1, "refcount_depth", range(1, MAX_REFCOUNT_DEPTH + 1), "slot.field"),
    _u(73, 1, "dir_depth", range(0, MAX_DIR_DEPTH + 1), "slot.field"),
    _u(74, 1, "snaptable_depth", "the map depth of snaptable_size", "slot.field"),
    _u(75, 1, "reserved0", 0, "slot.field"),
    _u(76, 4, "snapshot_count", range(0, MAX_SNAPSHOTS + 1), "slot.field"),
    _u(80, 8, "snaptable_size", range(0, MAX_SNAPTABLE + 1), "slot.field"),
    _p(88, POINTER_FIELD, "refcount_root", "never null", "slot.field"),
    _p(128, POINTER_FIELD, "dir_root", "null iff dir_depth is 0", "slot.field"),
    _p(168, POINTER_FIELD, "snaptable_root", "null iff snaptable_size is 0", "slot.field"),
    _p(208, POINTER_FIELD, "keyslots", "a plain pointer, non-null iff the image is encrypted", "slot.field"),
    _u(248, 8, "alloc_hint", "<= image_clusters", "slot.field"),
    _b(256, 220, "reserved1", 0, "slot.field"),
    _b(476, 32, "slot_mac", "HMAC-SHA-256 of bytes 0-475 when encrypted, else 0", "slot.field"),
    _u(508, 4, "slot_crc", "CRC-32C of bytes 0-507", "slot.none_valid"),
])

PLAIN_POINTER_LAYOUT = Layout("pointer", PLAIN_POINTER, [
    _u(0, 8, "offset", "0 (null), or cluster-aligned past the header area and inside the image",
       "pointer.out_of_range"),
    _u(8, 4, "crc", "CRC-32C of the cluster as stored", "cluster.checksum"),
    _u(12, 4, "reserved", 0, "pointer.reserved"),
])

ENCRYPTED_POINTER_LAYOUT = Layout("encrypted_pointer", ENCRYPTED_POINTER, [
    _u(0, 8, "offset", "0 (null), or cluster-aligned past the header area and inside the image",
       "pointer.out_of_range"),
    _u(8, 4, "crc", "CRC-32C of the ciphertext as stored", "cluster.checksum"),
    _b(12, 12, "nonce", "the AES-GCM nonce of the cluster", "cluster.auth"),
    _b(24, 16, "tag", "the AES-GCM tag of the cluster", "cluster.auth"),
])

DIR_NODE = Layout("dir_node", "cluster_size", [
    _b(0, 4, "node_magic", DIR_MAGIC, "directory.node"),
    _u(4, 1, "level", "dir_depth - 1 at the root, one less than the parent below", "directory.depth"),
    _u(5, 1, "reserved0", 0, "directory.node"),
    _u(6, 2, "count", range(1, MAX_NODE_ITEMS + 1), "directory.node"),
    _u(8, 4, "body_length", "<= cluster_size - 16", "directory.node"),
    _u(12, 4, "reserved1", 0, "directory.node"),
    _b(DIR_NODE_HEADER, "body_length", "body", "one DER value with count elements", "der.malformed"),
    _b("16 + body_length", "rest", "padding", 0, "directory.node"),
])

KEYSLOT_TABLE = Layout("keyslot_table", "cluster_size", [
    _b(0, 4, "ks_magic", KEYSLOT_MAGIC, "key.slot_damaged"),
    _u(4, 2, "ks_version", 1, "key.slot_damaged"),
    _u(6, 2, "num_slots", NUM_KEYSLOTS, "key.slot_damaged"),
    _u(8, 4, "cipher", 1, "key.slot_damaged"),
    _b(12, 20, "reserved", 0, "key.slot_damaged"),
    _b(32, KEYSLOT_SIZE * NUM_KEYSLOTS, "slots", "key slots, at least one in use", "key.slot_damaged"),
    _b(32 + KEYSLOT_SIZE * NUM_KEYSLOTS, "rest", "padding", 0, "key.slot_damaged"),
])

KEYSLOT = Layout("key_slot", KEYSLOT_SIZE, [
    _u(0, 1, "kind", range(0, 4), "key.slot_damaged"),
    _b(1, 3, "reserved", 0, "key.slot_damaged"),
    _u(4, 4, "kdf_time", "per kind (section 10.1)", "key.slot_damaged"),
    _u(8, 4, "kdf_memory", "per kind (section 10.1)", "key.slot_damaged"),
    _u(12, 4, "kdf_lanes", "per kind (section 10.1)", "key.slot_damaged"),
    _b(16, 16, "salt"),
    _b(32, 12, "nonce"),
    _b(44, 32, "wrapped_key"),
    _b(76, 16, "wrap_tag"),
    _u(92, 4, "reserved2", 0, "key.slot_damaged"),
])

#: Every layout table, by name.
LAYOUTS = {t.name: t for t in (HEADER, EXTENSION, SLOT, PLAIN_POINTER_LAYOUT, ENCRYPTED_POINTER_LAYOUT, DIR_NODE,
                               KEYSLOT_TABLE, KEYSLOT)}


def pointer_layout(width: int) -> Layout:
    return PLAIN_POINTER_LAYOUT if width == PLAIN_POINTER else ENCRYPTED_POINTER_LAYOUT


def slot_generation(raw, base: int = 0) -> int:
    """The generation field of the commit slot at ``raw[base:]``."""
    return _GENERATION.unpack_from(raw, base + SLOT["generation"].offset)[0]


_GENERATION = struct.Struct("<Q")



def nonzero(data) -> bool:
    """True when ``data`` holds a byte other than zero.

    ``_ZEROS.startswith(chunk)`` is one memcmp without a copy: about 0.1 us for
    4 KiB, where ``bytes.lstrip`` takes 9 us and ``any()`` far longer."""
    data = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    step = len(_ZEROS)
    if len(data) <= step:
        return not _ZEROS.startswith(data)
    return any(not _ZEROS.startswith(data[i:i + step]) for i in range(0, len(data), step))


_nonzero = nonzero


# -- geometry ---------------------------------------------------------------

@dataclass(frozen=True)
class Geometry:
    """Sizes derived from cluster_bits and the pointer width (computed once per
    instance: the write path reads them for every cluster)."""

    cluster_bits: int
    encrypted: bool = False

    @cached_property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @cached_property
    def pointer_size(self) -> int:
        return ENCRYPTED_POINTER if self.encrypted else PLAIN_POINTER

    @cached_property
    def fanout(self) -> int:
        return self.cluster_size // self.pointer_size

    @cached_property
    def header_clusters(self) -> int:
        return -(-HEADER_AREA // self.cluster_size)

    @cached_property
    def inline_max(self) -> int:
        return min(self.cluster_size // 8, 1024)

    @cached_property
    def counts_per_block(self) -> int:
        return self.cluster_size // 2

    @cached_property
    def dir_body_max(self) -> int:
        return self.cluster_size - DIR_NODE_HEADER

    def map_depth(self, size: int) -> int:
        """Least depth whose map covers ``size`` bytes [R-map-1]."""
        depth, capacity = 0, self.cluster_size
        while capacity < size:
            depth += 1
            capacity *= self.fanout
        return depth

    def refcount_coverage(self, depth: int) -> int:
        return self.counts_per_block * self.fanout ** (depth - 1)

    def refcount_depth_for(self, clusters: int) -> int:
        depth = 1
        while self.refcount_coverage(depth) < clusters:
            depth += 1
        return depth


@lru_cache(maxsize=None)
def geometry(cluster_bits: int, encrypted: bool = False) -> Geometry:
    """The one shared Geometry for these parameters: opening an image decodes
    several structures that each need it, and a fresh instance recomputes its
    cached sizes (the readers decode in microseconds, so that shows)."""
    return Geometry(cluster_bits, encrypted)
