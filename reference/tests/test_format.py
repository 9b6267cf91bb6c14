"""On-disk structures without I/O (nvbox._format): CRC-32C [R-conv-4], the header
[R-header-2..12], commit slots [R-slot-2] [R-slot-5], feature bits [R-feature-1],
pointers [R-ptr-1] [R-ptr-2], geometry [R-map-1] [R-ref-2], directory nodes
[R-dir-1] [R-dir-2] [R-dir-5], key slots [R-enc-2]."""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest
from hypothesis import given, settings, strategies as st

from nvbox import _der as der
from nvbox import _format as fmt
from nvbox.errors import NvboxError


def code_of(fn, *args, **kw):
    with pytest.raises(NvboxError) as ei:
        fn(*args, **kw)
    return ei.value.code


# -- CRC-32C -------------------------------------------------------------------------

@pytest.mark.parametrize("data,value", [
    (b"123456789", 0xE3069283),
    (b"", 0),
    (bytes(32), 0x8A9136AA),          # RFC 3720 B.4 test vectors
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
])
def test_crc32c_vectors(data, value):
    """[R-conv-4] Castagnoli CRC, check value 0xE3069283."""
    assert fmt.crc32c(data) == value
    assert fmt.crc32c(bytearray(data)) == value
    assert fmt.crc32c(memoryview(data)) == value


# -- header -------------------------------------------------------------------------

def header_bytes(cluster_bits=12, capacity=0, extensions=(), header_length=128) -> bytearray:
    h = fmt.Header(cluster_bits, bytes(range(16)), capacity, 1700000000, header_length=header_length,
                   extensions=tuple(extensions))
    return bytearray(h.encode().ljust(fmt.HEADER_AREA, b"\0"))


def fix_crc(raw):
    struct.pack_into("<I", raw, 508, fmt.crc32c(bytes(raw[:508])))
    return raw


def poke(raw, off, code, value, crc=True):
    raw = bytearray(raw)
    struct.pack_into("<" + code, raw, off, value)
    return fix_crc(raw) if crc else raw


def test_header_known_bytes():
    """[R-header-2..8] field by field at the offsets of the table."""
    raw = header_bytes(cluster_bits=9, capacity=77)
    assert raw[0:8] == bytes.fromhex("8a4e56420d0a1a0a")
    assert struct.unpack_from("<IIBBHI", raw, 8) == (1, 128, 9, 4, 0, 0)
    assert raw[24:40] == bytes(range(16))
    assert struct.unpack_from("<QQ", raw, 40) == (77, 1700000000)
    assert not any(raw[56:128])
    assert raw[128:136] == bytes(8)   # end record
    assert struct.unpack_from("<I", raw, 508)[0] == fmt.crc32c(bytes(raw[:508]))
    h = fmt.decode_header(bytes(raw))
    assert (h.cluster_bits, h.capacity_clusters, h.create_time, h.header_length, h.refcount_order) == \
        (9, 77, 1700000000, 128, 4)
    assert h.image_uuid == bytes(range(16)) and h.extensions == ()


def test_header_roundtrip_with_extensions():
    exts = (fmt.Extension(1, 0, b"nvbox-test"), fmt.Extension(700, 0, b"\x01\x02\x03"))
    raw = header_bytes(extensions=exts)
    h = fmt.decode_header(bytes(raw))
    assert [(e.ext_type, e.ext_flags, e.ext_data) for e in h.extensions] == \
        [(1, 0, b"nvbox-test"), (700, 0, b"\x01\x02\x03")]
    assert h.extensions[0].offset == 128 and h.extensions[1].offset == 128 + 8 + 16
    assert replace(h, extensions=tuple(replace(e, offset=0) for e in h.extensions)).encode() == bytes(raw[:512])


def test_header_truncated():
    """[R-header-9] fewer than 2048 bytes is image.truncated, checked first."""
    raw = header_bytes()
    for n in (0, 1, 8, 511, 512, 1024, 2047):
        assert code_of(fmt.decode_header, bytes(raw[:n])) == "image.truncated"
    assert code_of(fmt.decode_header, b"garbage") == "image.truncated"


MANGLED = {
    "unix2dos (LF -> CRLF)": bytes.fromhex("8a4e56420d0d0a1a"),
    "dos2unix (CRLF -> LF)": bytes.fromhex("8a4e56420a1a0a00"),
    "high bit stripped": bytes.fromhex("0a4e56420d0a1a0a"),
    "EOF char dropped": bytes.fromhex("8a4e56420d0a0a00"),
    "qcow2": b"QFI\xfb\x00\x00\x00\x03",
    "zeros": bytes(8),
    "lowercase": b"\x8anvb\r\n\x1a\n",
}


@pytest.mark.parametrize("why", sorted(MANGLED))
def test_header_magic(why):
    """[R-header-2] anything else is header.magic, even with a fixed CRC and before it."""
    raw = header_bytes()
    raw[0:8] = MANGLED[why]
    assert code_of(fmt.decode_header, bytes(raw)) == "header.magic"
    assert code_of(fmt.decode_header, bytes(fix_crc(raw))) == "header.magic"


def test_header_checksum_before_version():
    """[R-header-8] [R-header-9] a damaged version field is reported as damage."""
    raw = header_bytes()
    raw[8] = 2
    assert code_of(fmt.decode_header, bytes(raw)) == "header.checksum"
    assert code_of(fmt.decode_header, bytes(fix_crc(raw))) == "header.version"
    raw = header_bytes()
    raw[300] ^= 1
    assert code_of(fmt.decode_header, bytes(raw)) == "header.checksum"
    raw = header_bytes()
    raw[509] ^= 0x10
    assert code_of(fmt.decode_header, bytes(raw)) == "header.checksum"


HEADER_FIELDS = [
    # (offset, struct code, value, expected)
    (8, "I", 0, "header.version"),
    (8, "I", 2, "header.version"),
    (8, "I", 0x01000000, "header.version"),
    (12, "I", 120, "header.field"),
    (12, "I", 0, "header.field"),
    (12, "I", 132, "header.field"),
    (12, "I", 512, "header.field"),
    (12, "I", 505, "header.field"),
    (12, "I", 0xFFFFFFF8, "header.field"),
    (16, "B", 8, "header.cluster_size"),
    (16, "B", 0, "header.cluster_size"),
    (16, "B", 22, "header.cluster_size"),
    (16, "B", 255, "header.cluster_size"),
    (17, "B", 3, "header.field"),
    (17, "B", 5, "header.field"),
    (17, "B", 0, "header.field"),
    (18, "H", 1, "header.field"),
    (18, "H", 0x8000, "header.field"),
    (20, "I", 1, "header.field"),
    (20, "I", 0x80000000, "header.field"),
    (40, "Q", 1, "header.field"),     # capacity below header_clusters + 2 (= 3 for 4 KiB)
    (40, "Q", 2, "header.field"),
    (40, "Q", (1 << 40) + 1, "header.field"),
    (56, "B", 1, "header.field"),     # reserved1
    (64, "Q", 1, "header.field"),
    (127, "B", 0x80, "header.field"),
]


@pytest.mark.parametrize("off,code,value,expected", HEADER_FIELDS)
def test_header_field_out_of_range(off, code, value, expected):
    """[R-header-3..7] [R-conv-5] each field out of range gives the table's code."""
    raw = poke(header_bytes(), off, code, value)
    assert code_of(fmt.decode_header, bytes(raw)) == expected


@pytest.mark.parametrize("bits", [9, 10, 12, 16, 21])
def test_header_cluster_bits_range(bits):
    h = fmt.decode_header(bytes(header_bytes(cluster_bits=bits)))
    assert h.cluster_bits == bits


def test_header_capacity_boundaries():
    """[R-header-7] capacity >= header_clusters + 2."""
    assert fmt.decode_header(bytes(header_bytes(12, capacity=3))).capacity_clusters == 3
    assert fmt.decode_header(bytes(header_bytes(9, capacity=6))).capacity_clusters == 6
    assert code_of(fmt.decode_header, bytes(header_bytes(9, capacity=5))) == "header.field"
    assert fmt.decode_header(bytes(header_bytes(12, capacity=1 << 40))).capacity_clusters == 1 << 40


def test_header_longer_fixed_area_nonzero_is_field():
    """[R-header-4] a longer header_length is accepted; later-version fields there must be zero
    for this reader (reserved1 covers 56..header_length)."""
    raw = header_bytes(header_length=136)
    assert fmt.decode_header(bytes(raw)).header_length == 136
    raw = poke(raw, 130, "B", 1)
    assert code_of(fmt.decode_header, bytes(raw)) == "header.field"


def ext_record(ext_type, flags, data, pad=None):
    padded = (len(data) + 7) // 8 * 8
    body = data + (pad if pad is not None else bytes(padded - len(data)))
    return struct.pack("<HHI", ext_type, flags, len(data)) + body


def with_ext_area(area: bytes) -> bytearray:
    raw = header_bytes()
    raw[128:508] = area.ljust(380, b"\0")[:380]
    return fix_crc(raw)


EXT_CASES = {
    "reserved flag bit 1": (ext_record(700, 2, b"x"), "header.extension"),
    "reserved flag bit 15": (ext_record(1, 0x8000, b"x"), "header.extension"),
    "unknown required": (ext_record(700, 1, b"x"), "header.extension_required"),
    "unknown required, empty": (ext_record(65535, 1, b""), "header.extension_required"),
    "creator too long": (ext_record(1, 0, b"c" * 65), "header.extension"),
    "creator not UTF-8": (ext_record(1, 0, b"\xc3\x28"), "header.extension"),
    "non-zero padding": (ext_record(700, 0, b"abc", pad=b"\0\0\0\0\x01"), "header.extension"),
    "record runs past 508": (struct.pack("<HHI", 700, 0, 400), "header.extension"),
    "record leaves no room for end": (ext_record(700, 0, bytes(368)), "header.extension"),
    "length huge": (struct.pack("<HHI", 700, 0, 0xFFFFFFFF), "header.extension"),
    "end record with flags": (struct.pack("<HHI", 0, 1, 0), "header.extension"),
    "end record with length": (struct.pack("<HHI", 0, 0, 8), "header.extension"),
    "junk after end record": (bytes(8) + b"\x01", "header.extension"),
    "junk at byte 507": (bytes(379) + b"\x01", "header.extension"),
}


@pytest.mark.parametrize("why", sorted(EXT_CASES))
def test_header_extension_rules(why):
    """[R-header-10] [R-header-11] malformed records; unknown required ones refused."""
    area, code = EXT_CASES[why]
    assert code_of(fmt.decode_header, bytes(with_ext_area(area))) == code


def test_header_extension_no_end_record():
    """[R-header-10] records must end with an end record before byte 508."""
    area = b"".join(ext_record(700 + i, 0, b"12345678") for i in range(23))  # 23 * 16 = 368 bytes
    area += struct.pack("<HHI", 800, 0, 0)  # 376: a record, then only 4 bytes left
    raw = header_bytes()
    raw[128:128 + len(area)] = area
    assert code_of(fmt.decode_header, bytes(fix_crc(raw))) == "header.extension"


def test_header_unknown_optional_extension_ignored():
    """[R-header-12] an unknown extension without `required` is ignored (and kept)."""
    area = ext_record(4242, 0, b"future data") + ext_record(1, 0, b"me")
    h = fmt.decode_header(bytes(with_ext_area(area)))
    assert [(e.ext_type, e.ext_data) for e in h.extensions] == [(4242, b"future data"), (1, b"me")]


def test_header_extension_exactly_fits():
    """The largest record that still leaves room for the end record before 508."""
    n = 360                    # 8-byte record header + 360 + 8-byte end record = 376 <= 380
    area = ext_record(700, 0, bytes(n))
    assert len(area) == 368
    h = fmt.decode_header(bytes(with_ext_area(area)))
    assert len(h.extensions[0].ext_data) == n
    area = ext_record(700, 0, bytes(n + 1))
    assert code_of(fmt.decode_header, bytes(with_ext_area(area))) == "header.extension"


@settings(max_examples=200, deadline=None)
@given(st.integers(8, 507), st.integers(1, 255))
def test_header_any_byte_flip_rejected(pos, x):
    """Any change to bytes 8..507 without fixing the CRC is header.checksum."""
    raw = header_bytes()
    raw[pos] ^= x
    assert code_of(fmt.decode_header, bytes(raw)) == "header.checksum"


# -- commit slots ----------------------------------------------------------------------

HEADER = fmt.Header(12, bytes(16), 0)
HEADER9 = fmt.Header(9, bytes(16), 0)


def good_slot(**kw) -> fmt.Slot:
    base = dict(generation=3, image_clusters=10, refcount_depth=1, refcount_root=fmt.Pointer(4096, 123))
    base.update(kw)
    return fmt.Slot(**base)


def test_slot_known_bytes():
    """[R-slot-1] field offsets of the slot table."""
    s = good_slot(blob_count=7, next_snapshot_id=9, commit_time=11, dir_depth=2, dir_root=fmt.Pointer(8192, 5),
                  compatible_features=0x40, autoclear_features=0x80)
    raw = s.encode()
    assert len(raw) == 512 and raw[:8] == b"NVBXSLOT"
    assert struct.unpack_from("<QQQQQQQQ", raw, 8) == (3, 0, 0x40, 0x80, 10, 7, 9, 11)
    assert tuple(raw[72:76]) == (1, 2, 0, 0)
    assert struct.unpack_from("<IQ", raw, 76) == (0, 0)
    assert raw[88:104] == fmt.Pointer(4096, 123).encode(16) and not any(raw[104:128])
    assert raw[128:144] == fmt.Pointer(8192, 5).encode(16)
    assert not any(raw[168:508 - 32]) and not any(raw[476:508])
    assert struct.unpack_from("<I", raw, 508)[0] == fmt.crc32c(raw[:508])
    assert fmt.slot_is_valid(raw, 0)
    assert fmt.decode_slot(raw, HEADER) == s


def resign(raw: bytearray) -> bytes:
    struct.pack_into("<I", raw, 508, fmt.crc32c(bytes(raw[:508])))
    return bytes(raw)


def slot_poke(slot_raw, off, code, value, crc=True):
    raw = bytearray(slot_raw)
    struct.pack_into("<" + code, raw, off, value)
    return resign(raw) if crc else bytes(raw)


def test_slot_validity_rules():
    """[R-slot-2] magic, CRC, generation >= 1, parity (odd in A, even in B)."""
    odd = good_slot(generation=3).encode()
    even = good_slot(generation=4).encode()
    assert fmt.slot_is_valid(odd, 0) and not fmt.slot_is_valid(odd, 1)
    assert fmt.slot_is_valid(even, 1) and not fmt.slot_is_valid(even, 0)
    assert not fmt.slot_is_valid(bytes(512), 0) and not fmt.slot_is_valid(bytes(512), 1)
    assert not fmt.slot_is_valid(slot_poke(odd, 0, "8s", b"NVBXSLOt"), 0)       # magic (CRC fixed)
    assert not fmt.slot_is_valid(slot_poke(odd, 0, "8s", b"\0" * 8), 0)
    assert not fmt.slot_is_valid(slot_poke(odd, 40, "Q", 11, crc=False), 0)     # crc
    assert not fmt.slot_is_valid(slot_poke(odd, 508, "I", 0, crc=False), 0)
    gen0 = slot_poke(odd, 8, "Q", 0)
    assert not fmt.slot_is_valid(gen0, 0) and not fmt.slot_is_valid(gen0, 1)   # generation 0
    assert fmt.slot_is_valid(slot_poke(odd, 8, "Q", 1), 0)
    assert fmt.slot_is_valid(slot_poke(odd, 8, "Q", (1 << 64) - 1), 0)
    assert fmt.slot_is_valid(slot_poke(odd, 8, "Q", 1 << 63), 1)
    assert not fmt.slot_is_valid(odd[:511], 0)                                # short


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 511), st.integers(1, 255))
def test_slot_any_flip_invalid(pos, x):
    """[R-slot-2] any damaged byte makes the slot invalid (CRC, or magic/parity)."""
    raw = bytearray(good_slot(generation=5).encode())
    raw[pos] ^= x
    assert not fmt.slot_is_valid(bytes(raw), 0)


SLOT_FIELD_CASES = {
    "reserved0": (75, "B", 1),
    "reserved1 middle": (300, "B", 1),
    "reserved1 end": (475, "B", 1),
    "slot_mac in a plain image": (476, "B", 1),
    "slot_mac end": (507, "B", 1),
    "after refcount_root": (104, "B", 1),
    "after dir_root": (160, "Q", 1),
    "after snaptable_root": (200, "B", 1),
    "after keyslots": (224, "B", 1),
    "image_clusters 0": (40, "Q", 0),
    "image_clusters = header_clusters": (40, "Q", 1),
    "image_clusters above 2^40": (40, "Q", (1 << 40) + 1),
    "refcount_depth 0": (72, "B", 0),
    "refcount_depth 7": (72, "B", 7),
    "dir_depth 17": (73, "B", 17),
    "snapshot_count 1025": (76, "I", 1025),
    "snapshot_count without size": (76, "I", 1),
    "snaptable_size without count": (80, "Q", 10),
    "snaptable_depth without size": (74, "B", 1),
    "next_snapshot_id 0": (56, "Q", 0),
    "dir_depth without dir_root": (73, "B", 1),
}


@pytest.mark.parametrize("why", sorted(SLOT_FIELD_CASES))
def test_slot_field_out_of_range(why):
    """[R-slot-5] [R-conv-5] a chosen slot's field out of range is slot.field."""
    off, code, value = SLOT_FIELD_CASES[why]
    raw = slot_poke(good_slot().encode(), off, code, value)
    assert fmt.slot_is_valid(raw, 0)
    assert code_of(fmt.decode_slot, raw, HEADER) == "slot.field"


def test_slot_field_structural_cases():
    """[R-slot-5] [R-ref-2] the 'iff' rules and coverage, via Slot records."""
    cases = [
        good_slot(refcount_root=fmt.NULL),
        good_slot(dir_root=fmt.Pointer(8192, 1), dir_depth=0),
        good_slot(dir_depth=1),
        good_slot(snapshot_count=1, snaptable_size=0),
        good_slot(snapshot_count=1, snaptable_size=(2 << 20) + 1, snaptable_depth=2,
                  snaptable_root=fmt.Pointer(8192, 1)),
        good_slot(snapshot_count=1, snaptable_size=5000, snaptable_depth=0, snaptable_root=fmt.Pointer(8192, 1)),
        good_slot(keyslots=fmt.Pointer(8192, 1)),                             # keyslots in a plain image
        good_slot(image_clusters=2049, refcount_depth=1),                     # 2048 counts per 4 KiB block
    ]
    for s in cases:
        assert code_of(fmt.decode_slot, s.encode(), HEADER) == "slot.field", s
    # coverage boundary: exactly 2048 clusters fits depth 1
    assert fmt.decode_slot(good_slot(image_clusters=2048).encode(), HEADER).image_clusters == 2048
    assert fmt.decode_slot(good_slot(image_clusters=2049, refcount_depth=2).encode(), HEADER).refcount_depth == 2


def test_slot_above_capacity():
    hdr = fmt.Header(12, bytes(16), capacity_clusters=10)
    assert fmt.decode_slot(good_slot(image_clusters=10).encode(), hdr).image_clusters == 10
    assert code_of(fmt.decode_slot, good_slot(image_clusters=11).encode(), hdr) == "slot.field"


def test_slot_root_pointer_rules():
    """[R-ptr-2] [R-slot-8] rules 1-3 applied to the slot's root pointers: a misaligned or
    out-of-range root pointer is pointer.*, its malformed bytes slot.field."""
    assert code_of(fmt.decode_slot, good_slot(refcount_root=fmt.Pointer(4097, 1)).encode(), HEADER) \
        == "pointer.misaligned"
    assert code_of(fmt.decode_slot, good_slot(refcount_root=fmt.Pointer(0, 0)).encode(), HEADER) == "slot.field"
    assert code_of(fmt.decode_slot, good_slot(refcount_root=fmt.Pointer(10 * 4096, 1)).encode(), HEADER) \
        == "pointer.out_of_range"
    assert code_of(fmt.decode_slot, good_slot(dir_depth=1, dir_root=fmt.Pointer(0x600, 1)).encode(), HEADER9) \
        == "pointer.out_of_range"   # 512-byte clusters: cluster 3 is still in the header area
    assert fmt.decode_slot(good_slot(dir_depth=1, dir_root=fmt.Pointer(0x800, 1),
                                     refcount_root=fmt.Pointer(0xA00, 1)).encode(), HEADER9).dir_depth == 1
    raw = bytearray(good_slot().encode())
    struct.pack_into("<I", raw, 88 + 12, 1)      # reserved bytes of refcount_root
    # The spec names both slot.field (R-slot-5) and pointer.reserved (R-ptr-2 rule 1) here.
    assert code_of(fmt.decode_slot, resign(raw), HEADER) in ("slot.field", "pointer.reserved")
    raw = bytearray(good_slot().encode())
    struct.pack_into("<I", raw, 128 + 8, 5)      # null dir_root with a crc
    assert code_of(fmt.decode_slot, resign(raw), HEADER) in ("slot.field", "pointer.reserved")


@pytest.mark.parametrize("bit", [1, 2, 17, 63])
def test_slot_unknown_incompatible_feature(bit):
    """[R-feature-1] an unknown incompatible bit: feature.incompatible."""
    s = good_slot(incompatible_features=1 << bit)
    assert code_of(fmt.decode_slot, s.encode(), HEADER) == "feature.incompatible"


def test_slot_unknown_compatible_and_autoclear_bits_decode():
    """[R-feature-2] [R-feature-3] unknown compatible/autoclear bits do not stop a reader."""
    s = good_slot(compatible_features=(1 << 64) - 1, autoclear_features=1 << 33)
    d = fmt.decode_slot(s.encode(), HEADER)
    assert d.compatible_features == (1 << 64) - 1 and d.autoclear_features == 1 << 33


def test_encrypted_needs_1k_clusters():
    s = good_slot(incompatible_features=1, keyslots=fmt.Pointer(0x1000, 1),
                  refcount_root=fmt.Pointer(0x1200, 1), image_clusters=12)
    assert code_of(fmt.decode_slot, s.encode(), HEADER9) == "header.field"


# -- pointers ---------------------------------------------------------------------------

def test_pointer_known_bytes():
    """[R-ptr-1] plain 16 bytes, encrypted 40."""
    p = fmt.Pointer(0x123000, 0xDEADBEEF)
    assert p.encode(16) == bytes.fromhex("0030120000000000" "efbeadde" "00000000")
    assert fmt.decode_pointer(p.encode(16), 16) == p
    e = fmt.Pointer(0x2000, 0x01020304, bytes(range(12)), bytes(range(100, 116)))
    raw = e.encode(40)
    assert len(raw) == 40 and raw[:12] == bytes.fromhex("0020000000000000" "04030201")
    assert raw[12:24] == bytes(range(12)) and raw[24:40] == bytes(range(100, 116))
    assert fmt.decode_pointer(raw, 40) == e
    assert fmt.decode_pointer(bytes(16), 16) is fmt.NULL or fmt.decode_pointer(bytes(16), 16).is_null
    assert fmt.NULL.encode(16) == bytes(16) and fmt.NULL.encode(40) == bytes(40)


@pytest.mark.parametrize("raw,width", [
    (bytes(8) + b"\x01" + bytes(7), 16),          # null with crc
    (bytes(12) + b"\x01" + bytes(3), 16),         # null with reserved
    (bytes(15) + b"\x80", 16),
    (bytes(39) + b"\x01", 40),                    # null with tag
    (bytes(12) + b"\x01" + bytes(27), 40),        # null with nonce
    (struct.pack("<QII", 4096, 1, 1), 16),       # non-null with reserved
    (struct.pack("<QII", 4096, 1, 0x80000000), 16),
])
def test_pointer_reserved(raw, width):
    """[R-ptr-2] rule 1."""
    assert code_of(fmt.decode_pointer, raw, width) == "pointer.reserved"


def test_pointer_alignment_and_range():
    """[R-ptr-2] rules 2 and 3."""
    g = fmt.Geometry(12)
    fmt.check_pointer(fmt.Pointer(4096, 0), g, 2)
    fmt.check_pointer(fmt.Pointer(9 * 4096, 0), g, 10)
    for off in (4097, 4096 + 512, 8191, 1, 4095):
        assert code_of(fmt.check_pointer, fmt.Pointer(off, 0), g, 10) == "pointer.misaligned"
    assert code_of(fmt.check_pointer, fmt.Pointer(10 * 4096, 0), g, 10) == "pointer.out_of_range"
    assert code_of(fmt.check_pointer, fmt.Pointer(1 << 62, 0), g, 10) == "pointer.out_of_range"
    g9 = fmt.Geometry(9)
    for c in range(4):   # header area: 4 clusters of 512 bytes
        if c:
            assert code_of(fmt.check_pointer, fmt.Pointer(c * 512, 0), g9, 100) == "pointer.out_of_range"
    fmt.check_pointer(fmt.Pointer(4 * 512, 0), g9, 5)
    assert code_of(fmt.check_pointer, fmt.Pointer(4 * 512, 0), g9, 4) == "pointer.out_of_range"
    g21 = fmt.Geometry(21)
    fmt.check_pointer(fmt.Pointer(1 << 21, 0), g21, 2)


def test_pointer_node_roundtrip_and_trailing():
    """[R-map-4] [R-ref-8] a pointer node (map node or refcount index node: one decoder)
    round-trips; its trailing bytes and its pointers' reserved bytes must be zero."""
    g = fmt.Geometry(9)
    ptrs = [fmt.Pointer((i + 4) * 512, i * 7) if i % 3 else fmt.NULL for i in range(g.fanout)]
    raw = fmt.encode_pointers(ptrs, g)
    assert len(raw) == 512 and fmt.decode_pointers(raw, g) == ptrs
    ge = fmt.Geometry(10, encrypted=True)   # 1024 / 40 = 25 pointers, 24 trailing bytes
    assert ge.fanout == 25
    eptrs = [fmt.Pointer((i + 2) * 1024, i, bytes([i]) * 12, bytes([i]) * 16) for i in range(25)]
    raw = bytearray(fmt.encode_pointers(eptrs, ge))
    assert fmt.decode_pointers(bytes(raw), ge) == eptrs
    raw[1023] = 1
    assert code_of(fmt.decode_pointers, bytes(raw), ge) == "pointer.reserved"
    raw = bytearray(fmt.encode_pointers(ptrs, g))
    raw[16 * 3 + 8] = 1     # a null pointer with a crc byte
    assert code_of(fmt.decode_pointers, bytes(raw), g) == "pointer.reserved"
    raw = bytearray(fmt.encode_pointers(ptrs, g))
    raw[16 * 1 + 12] = 1    # a non-null pointer's reserved byte
    assert code_of(fmt.decode_pointers, bytes(raw), g) == "pointer.reserved"


# -- geometry ---------------------------------------------------------------------------------

def test_geometry_table():
    """[R-conv-2] [R-conv-3] [R-map-1] [R-ref-2] derived sizes."""
    g9, g12, g21 = fmt.Geometry(9), fmt.Geometry(12), fmt.Geometry(21)
    assert (g9.cluster_size, g9.fanout, g9.header_clusters, g9.inline_max, g9.counts_per_block) == (512, 32, 4, 64, 256)
    assert (g12.cluster_size, g12.fanout, g12.header_clusters, g12.inline_max) == (4096, 256, 1, 512)
    assert (g21.header_clusters, g21.inline_max) == (1, 1024)
    assert fmt.Geometry(12, True).fanout == 102
    assert [g9.map_depth(n) for n in (0, 1, 512, 513, 16384, 16385, 512 * 32 * 32, 512 * 32 * 32 + 1)] == \
        [0, 0, 0, 1, 1, 2, 2, 3]
    assert [g12.map_depth(n) for n in (4096, 4097, 1 << 20, (1 << 20) + 1)] == [0, 1, 1, 2]
    assert g9.refcount_coverage(1) == 256 and g9.refcount_coverage(2) == 256 * 32
    assert g12.refcount_depth_for(2048) == 1 and g12.refcount_depth_for(2049) == 2


# -- directory nodes ------------------------------------------------------------------------

G9 = fmt.Geometry(9)


def entries_sorted(names, size=3):
    es = [fmt.DirEntry(n, size, b"x" * size) for n in names]
    return sorted(es, key=lambda e: e.key)


def test_dir_node_known_header_and_roundtrip():
    """[R-dir-1] 16-byte header, DER body, zero padding."""
    items = entries_sorted(["a", "b", "c"])
    raw = fmt.encode_dir_node(0, items, G9)
    body = der.sequence(*(e.encode(16) for e in items))
    assert raw[:16] == struct.pack("<4sBBHII", b"NVDN", 0, 0, 3, len(body), 0)
    assert raw[16:16 + len(body)] == body and not any(raw[16 + len(body):]) and len(raw) == 512
    node = fmt.decode_dir_node(raw, G9, 0)
    assert node.level == 0 and list(node.items) == items
    branches = [fmt.DirBranch(b"", fmt.Pointer(4 * 512, 1)), fmt.DirBranch(b"\x80" * 32, fmt.Pointer(5 * 512, 2))]
    raw = fmt.encode_dir_node(2, branches, G9)
    node = fmt.decode_dir_node(raw, G9, 2)
    assert node.level == 2 and list(node.items) == branches


def node_poke(raw, off, code, value):
    raw = bytearray(raw)
    struct.pack_into("<" + code, raw, off, value)
    return bytes(raw)


def test_dir_node_header_violations():
    """[R-dir-6] every rule of the node header table, with the code it names."""
    raw = fmt.encode_dir_node(0, entries_sorted(["a", "b"]), G9)
    body_len = struct.unpack_from("<I", raw, 8)[0]
    assert code_of(fmt.decode_dir_node, node_poke(raw, 0, "4s", b"NVDM"), G9) == "directory.node"
    assert code_of(fmt.decode_dir_node, node_poke(raw, 5, "B", 1), G9) == "directory.node"
    assert code_of(fmt.decode_dir_node, node_poke(raw, 12, "I", 1), G9) == "directory.node"
    assert code_of(fmt.decode_dir_node, node_poke(raw, 6, "H", 0), G9) == "directory.node"
    assert code_of(fmt.decode_dir_node, node_poke(raw, 6, "H", 3), G9) == "directory.node"   # count mismatch
    assert code_of(fmt.decode_dir_node, node_poke(raw, 6, "H", 1), G9) == "directory.node"
    assert code_of(fmt.decode_dir_node, node_poke(raw, 6, "H", 0xFFFF), G9) == "directory.node"
    assert code_of(fmt.decode_dir_node, node_poke(raw, 8, "I", 497), G9) == "directory.node"   # > cs - 16
    assert code_of(fmt.decode_dir_node, node_poke(raw, 8, "I", 0xFFFFFFFF), G9) == "directory.node"
    assert code_of(fmt.decode_dir_node, node_poke(raw, 511, "B", 1), G9) == "directory.node"   # padding
    assert code_of(fmt.decode_dir_node, node_poke(raw, 16 + body_len, "B", 1), G9) == "directory.node"
    # body_length too small: the cut-off byte is then non-zero padding
    assert code_of(fmt.decode_dir_node, node_poke(raw, 8, "I", body_len - 1), G9) == "directory.node"
    assert code_of(fmt.decode_dir_node, node_poke(raw, 8, "I", 0), G9) == "directory.node"
    # ...and with that byte zeroed, the DER runs past the body
    cut = bytearray(node_poke(raw, 8, "I", body_len - 1))
    cut[16 + body_len - 1] = 0
    assert code_of(fmt.decode_dir_node, bytes(cut), G9) == "der.malformed"
    assert code_of(fmt.decode_dir_node, raw, G9, 1) == "directory.depth"
    assert code_of(fmt.decode_dir_node, node_poke(raw, 4, "B", 3), G9, 0) == "directory.depth"


def test_dir_node_body_must_be_one_sequence():
    def node(body, count=1, level=0):
        return (struct.pack("<4sBBHII", b"NVDN", level, 0, count, len(body), 0) + body).ljust(512, b"\0")
    e = fmt.DirEntry("a", 1, b"x").encode(16)
    assert fmt.decode_dir_node(node(der.sequence(e)), G9).items[0].name == "a"
    assert code_of(fmt.decode_dir_node, node(der.sequence(e) + b"\x05\x00"), G9) == "der.malformed"
    assert code_of(fmt.decode_dir_node, node(b"\x31" + der.sequence(e)[1:]), G9) == "der.malformed"
    assert code_of(fmt.decode_dir_node, node(der.sequence(der.integer(1))), G9) == "der.malformed"
    assert code_of(fmt.decode_dir_node, node(e, count=3), G9) == "der.malformed"  # entry, not SEQUENCE OF
    assert code_of(fmt.decode_dir_node, node(e, count=1), G9) == "directory.node"


def test_dir_node_ordering():
    """[R-dir-2] leaf keys strictly ascending; index: first lowKey empty, others 32 bytes ascending."""
    items = entries_sorted(["a", "b", "c"])
    bad = [items[1], items[0], items[2]]
    assert code_of(fmt.decode_dir_node, fmt.encode_dir_node(0, bad, G9), G9) == "directory.order"
    dup = [items[0], items[0]]
    assert code_of(fmt.decode_dir_node, fmt.encode_dir_node(0, dup, G9), G9) == "directory.order"
    p = fmt.Pointer(4 * 512, 1)
    cases = [
        [fmt.DirBranch(b"\x01" * 32, p)],
        [fmt.DirBranch(b"", p), fmt.DirBranch(b"", p)],
        [fmt.DirBranch(b"", p), fmt.DirBranch(b"\x05" * 32, p), fmt.DirBranch(b"\x04" * 32, p)],
        [fmt.DirBranch(b"", p), fmt.DirBranch(b"\x05" * 32, p), fmt.DirBranch(b"\x05" * 32, p)],
    ]
    for c in cases:
        assert code_of(fmt.decode_dir_node, fmt.encode_dir_node(1, c, G9), G9, 1) == "directory.order"


def test_dir_node_size_bound_encoder():
    """[R-dir-5] the encoder refuses a body above cluster_size - 16."""
    items = entries_sorted([f"name{i:03d}" for i in range(40)], size=0)
    with pytest.raises(ValueError):
        fmt.encode_dir_node(0, items, G9)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=512, max_size=512))
def test_dir_node_garbage(raw):
    try:
        fmt.decode_dir_node(raw, G9)
    except NvboxError as exc:
        assert exc.kind == "corrupt"


@settings(max_examples=150, deadline=None)
@given(st.integers(16, 200), st.integers(1, 255))
def test_dir_node_flipped_body(pos, x):
    """One flipped byte in a real node decodes to something or raises a corruption code, never else."""
    items = entries_sorted(["alpha", "beta", "gamma", "delta"], size=10)
    raw = bytearray(fmt.encode_dir_node(0, items, G9))
    raw[pos] ^= x
    try:
        fmt.decode_dir_node(bytes(raw), G9, 0)
    except NvboxError as exc:
        assert exc.kind == "corrupt"


# -- key slots ---------------------------------------------------------------------------------

def test_keyslots_roundtrip_and_damage():
    """[R-enc-2] [R-enc-4] NVKS table layout; damage is key.slot_damaged."""
    g = fmt.Geometry(10)
    slots = [fmt.KeySlot(3, 0, 0, 0, b"s" * 16, b"n" * 12, b"w" * 32, b"t" * 16)] + [fmt.KeySlot()] * 7
    raw = fmt.encode_keyslots(slots, g)
    assert raw[:12] == struct.pack("<4sHHI", b"NVKS", 1, 8, 1) and len(raw) == 1024
    assert fmt.decode_keyslots(raw) == slots
    damage = [(0, b"NVKX"), (4, b"\x02"), (6, b"\x07"), (8, b"\x02"), (12, b"\x01"), (32 + 1, b"\x01"),
              (32 + 92, b"\x01"), (32 + 96 + 5, b"\x01"), (32, b"\x09"), (900, b"\x01")]
    for off, val in damage:
        r = bytearray(raw)
        r[off:off + len(val)] = val
        assert code_of(fmt.decode_keyslots, bytes(r)) == "key.slot_damaged", off
    empty = fmt.encode_keyslots([fmt.KeySlot()] * 8, g)
    assert code_of(fmt.decode_keyslots, empty) == "key.slot_damaged"


# -- names -------------------------------------------------------------------------------------

def test_check_name():
    assert fmt.check_name("a") == "a" and fmt.check_name(b"tpm/x") == "tpm/x"
    assert fmt.check_name("é" * 127) == "é" * 127
    for bad in ("", "a\0b", "x" * 256, "é" * 128, b"\xff", 5, None, "\ud800"):
        assert code_of(fmt.check_name, bad) == "blob.name"
    assert code_of(fmt.check_name, "", "snapshot.name") == "snapshot.name"


def test_blob_key_is_sha256():
    """[R-dir-1] key(name) = SHA-256(UTF-8 name)."""
    assert fmt.blob_key("abc").hex() == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# -- decoders fed truncated buffers -------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda: fmt.decode_dir_node(b"NVDN\0\0\1\0", G9),
    lambda: fmt.decode_pointer(b"\x00\x10", 16),
    lambda: fmt.decode_pointers(b"\x00" * 20, G9),
    lambda: fmt.decode_keyslots(b"NVKS"),
])
def test_fixed_decoders_truncated_input(call):
    with pytest.raises(NvboxError):
        call()


def test_encode_pointers_packs_as_each_pointer_encodes():
    # The node encoder packs all pointers with one Struct: each record must
    # be exactly what Pointer.encode gives, nulls all zero (encrypted nodes too).
    import os as _os
    for encrypted, width in ((False, fmt.PLAIN_POINTER), (True, fmt.ENCRYPTED_POINTER)):
        geo = fmt.Geometry(10, encrypted)
        ptrs = [fmt.Pointer(4096 * (i + 1), i * 7919, _os.urandom(12), _os.urandom(16)) if encrypted
                else fmt.Pointer(4096 * (i + 1), i * 7919) for i in range(geo.fanout)]
        ptrs[3] = fmt.NULL
        raw = fmt.encode_pointers(ptrs[:-1], geo)
        assert len(raw) == geo.cluster_size
        assert raw == b"".join(p.encode(width) for p in ptrs[:-1]).ljust(geo.cluster_size, b"\0")
        assert fmt.decode_pointers(raw, geo)[:geo.fanout - 1] == ptrs[:-1]


@pytest.mark.parametrize("size", [0, 1, 4096, 65536, 65537, 200_000])
def test_nonzero_finds_any_nonzero_byte(size):
    # _nonzero compares with a 64 KiB zero buffer, chunk by chunk past that size.
    for kind in (bytes, bytearray, memoryview):
        assert not fmt._nonzero(kind(bytes(size)))
        for pos in {0, size // 2, size - 1} if size else ():
            buf = bytearray(size)
            buf[pos] = 1
            assert fmt._nonzero(kind(bytes(buf))), (kind, pos)
