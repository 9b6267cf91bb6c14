"""The nvbox DER subset (spec 9.1, [R-der-1]) and the DER records built on it
(DirEntry/DirBranch [R-dir-3], extension fields [R-dir-4], snapshot records
[R-snap-5]): encoding tables checked both ways, and every subset rule broken
on purpose, each expecting ``der.malformed`` (or the record-level code the
spec names)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from nvbox import _der as der
from nvbox import _format as fmt
from nvbox.errors import NvboxError


def code_of(fn, *args):
    with pytest.raises(NvboxError) as ei:
        fn(*args)
    return ei.value.code


def decode_one(buf: bytes):
    """Decode one complete TLV filling ``buf``: (tag, content bytes)."""
    t, cs, ce = der.read_tlv(buf, 0, len(buf))
    if ce != len(buf):
        der._bad("trailing bytes")
    return t, bytes(buf[cs:ce])


# -- tables used both ways ----------------------------------------------------

INTEGERS = [
    (0, "020100"),
    (1, "020101"),
    (127, "02017f"),
    (128, "02020080"),
    (255, "020200ff"),
    (256, "02020100"),
    (0x7FFF, "02027fff"),
    (0x8000, "0203008000"),
    ((1 << 63) - 1, "02087fffffffffffffff"),
    (1 << 63, "0209008000000000000000"),
    ((1 << 64) - 1, "020900ffffffffffffffff"),
]


@pytest.mark.parametrize("value,hexbytes", INTEGERS)
def test_integer_table_both_ways(value, hexbytes):
    """[R-der-1] INTEGER: minimal two's complement, non-negative."""
    raw = bytes.fromhex(hexbytes)
    assert der.integer(value) == raw
    tag, cs, ce = der.read_tlv(raw, 0, len(raw))
    assert tag == der.INTEGER and ce == len(raw)
    assert der.as_integer(raw, cs, ce) == value


LENGTHS = [
    (0, "0400"),
    (1, "0401"),
    (127, "047f"),
    (128, "048180"),
    (255, "0481ff"),
    (256, "04820100"),
    (65535, "0482ffff"),
    (65536, "0483010000"),
]


@pytest.mark.parametrize("n,prefix", LENGTHS)
def test_length_table_both_ways(n, prefix):
    """[R-der-1] short form for 0..127, long form 0x81..0x83 with the fewest bytes."""
    content = bytes(range(256)) * (n // 256) + bytes(range(n % 256))
    raw = bytes.fromhex(prefix) + content
    assert der.octets(content) == raw
    assert decode_one(raw) == (der.OCTET_STRING, content)


STRUCTURES = [
    (lambda: der.octets(b""), "0400"),
    (lambda: der.octets(b"\x00\xff"), "040200ff"),
    (lambda: der.utf8("a"), "0c0161"),
    (lambda: der.utf8("é"), "0c02c3a9"),
    (lambda: der.utf8("tpm/permanent"), "0c0d74706d2f7065726d616e656e74"),
    (lambda: der.sequence(), "3000"),
    (lambda: der.sequence(der.integer(1), der.utf8("x")), "30060201010c0178"),
    (lambda: der.octets(b"ab", der.context(0)), "80026162"),
    (lambda: der.octets(b"", der.context(30)), "9e00"),
    (lambda: der.sequence(der.integer(2), tag=der.context(1, True)), "a103020102"),
    (lambda: der.sequence(tag=der.context(30, True)), "be00"),
]


@pytest.mark.parametrize("make,hexbytes", STRUCTURES)
def test_structure_table_both_ways(make, hexbytes):
    raw = bytes.fromhex(hexbytes)
    assert make() == raw
    tag, content = decode_one(raw)
    assert bytes([tag]) + der.encode_length(len(content)) + content == raw


def test_context_tag_bytes():
    assert der.context(0) == 0x80 and der.context(30) == 0x9E
    assert der.context(0, True) == 0xA0 and der.context(30, True) == 0xBE
    assert der.context_number(0x85) == 5 and der.context_number(0xA7) == 7
    assert der.context_number(0x30) is None and der.context_number(0x04) is None
    assert der.is_constructed(0x30) and der.is_constructed(0xA1) and not der.is_constructed(0x80)


def test_utf8_decoding_table():
    for text in ("a", "é", "日本", "\U0001F600", "x" * 255):
        raw = der.utf8(text)
        t, cs, ce = der.read_tlv(raw, 0, len(raw))
        assert t == der.UTF8_STRING and der.as_utf8(raw, cs, ce) == text


def test_elements_fill_exactly():
    body = der.integer(5) + der.utf8("n") + der.octets(b"zz")
    got = der.elements(body, 0, len(body))
    assert [t for t, _, _ in got] == [der.INTEGER, der.UTF8_STRING, der.OCTET_STRING]
    assert got[-1][2] == len(body)


def test_encoder_refuses_outside_subset():
    with pytest.raises(ValueError):
        der.integer(-1)
    with pytest.raises(ValueError):
        der.encode_length(1 << 24)  # would need 4 length bytes


# -- subset violations: der.malformed -------------------------------------------

MALFORMED_TLV = {
    "indefinite length": "3080020100" + "0000",
    "non-minimal length (leading zero)": "048200" + "80" + "00" * 128,
    "non-minimal 3-byte length": "04830000ff" + "00" * 255,
    "long form for length 5": "048105" + "00" * 5,
    "long form for length 0": "048100",
    "long form for length 127": "04817f" + "00" * 127,
    "4-byte length": "048400000001" + "00",
    "4-byte length (big)": "048401000000",
    "0xff length byte": "04ff",
    "tag BOOLEAN": "010100",
    "tag NULL": "0500",
    "tag OID": "0603550403",
    "tag PrintableString": "130161",
    "tag IA5String": "160161",
    "tag BIT STRING": "030100",
    "tag SET": "3100",
    "tag primitive SEQUENCE 0x10": "1000",
    "tag application 0x40": "4000",
    "tag private 0xC0": "c000",
    "tag context high-tag-number form 0x9F": "9f2000",
    "tag constructed context 0xBF": "bf2000",
    "tag 0x00": "0000",
    "tag 0x1F (universal high form)": "1f2000",
    "tag 0xFF": "ff00",
    "truncated: only a tag": "30",
    "truncated: empty": "",
    "truncated content": "300502010102",
    "truncated long length": "0482",
    "truncated long length 2": "048301",
    "content past container": "0405abcd",
}


@pytest.mark.parametrize("why", sorted(MALFORMED_TLV))
def test_tlv_subset_violations(why):
    """[R-der-1] every violation of the subset is der.malformed."""
    raw = bytes.fromhex(MALFORMED_TLV[why])
    assert code_of(decode_one, raw) == "der.malformed"


def test_trailing_bytes_after_value():
    raw = der.integer(1) + b"\x00"
    assert code_of(der.parse_single, raw, 0, len(raw), der.INTEGER) == "der.malformed"
    # and one value of the wrong tag
    raw = der.integer(1)
    assert code_of(der.parse_single, raw, 0, len(raw), der.SEQUENCE) == "der.malformed"
    # a child running past its parent's content
    inner = bytes.fromhex("3003" "020201")   # SEQUENCE claims 3, INTEGER claims 2 but only 1 byte follows
    cs, ce = der.parse_single(inner + b"\x00" * 0, 0, 2 + 3, der.SEQUENCE) if False else (2, 5)
    assert code_of(der.elements, inner, cs, ce) == "der.malformed"


def test_trailing_garbage_inside_sequence():
    body = der.integer(1) + b"\x00"   # one byte that is not a TLV
    raw = der.sequence(body)
    cs, ce = der.parse_single(raw, 0, len(raw), der.SEQUENCE)
    assert code_of(der.elements, raw, cs, ce) == "der.malformed"


INTEGER_VIOLATIONS = {
    "empty": "",
    "negative 0x80": "80",
    "negative 0xff": "ff",
    "negative two bytes": "8000",
    "non-minimal 00 01": "0001",
    "non-minimal 00 7f": "007f",
    "non-minimal 00 00": "0000",
    "ten bytes": "01" + "00" * 9,
    "2^64 (nine bytes, above u64)": "01" + "00" * 8,
}


@pytest.mark.parametrize("why", sorted(INTEGER_VIOLATIONS))
def test_integer_violations(why):
    content = bytes.fromhex(INTEGER_VIOLATIONS[why])
    assert code_of(der.as_integer, content, 0, len(content)) == "der.malformed"


def test_integer_limit():
    raw = bytes.fromhex("0111")
    assert der.as_integer(raw, 0, 2, 0x111) == 0x111
    assert code_of(der.as_integer, raw, 0, 2, 0x110) == "der.malformed"


UTF8_VIOLATIONS = {
    "invalid continuation": "c328",
    "lone continuation": "80",
    "overlong NUL": "c080",
    "overlong slash": "c0af",
    "overlong 3-byte": "e080af",
    "surrogate": "eda080",
    "above U+10FFFF": "f4908080",
    "truncated sequence": "e282",
    "0xff byte": "ff",
    "NUL": "00",
    "NUL inside": "610062",
}


@pytest.mark.parametrize("why", sorted(UTF8_VIOLATIONS))
def test_utf8_violations(why):
    """[R-der-1] UTF8String: well-formed UTF-8 (no surrogates, no overlong forms), no NUL."""
    content = bytes.fromhex(UTF8_VIOLATIONS[why])
    assert code_of(der.as_utf8, content, 0, len(content)) == "der.malformed"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_decoder_garbage_only_raises_der_malformed(data):
    """Arbitrary bytes: the TLV walker either decodes or raises der.malformed."""
    try:
        for tag, cs, ce in der.elements(data, 0, len(data)):
            assert 0 <= cs <= ce <= len(data)
            if tag == der.INTEGER:
                der.as_integer(data, cs, ce)
            elif tag == der.UTF8_STRING:
                der.as_utf8(data, cs, ce)
    except NvboxError as exc:
        assert exc.code == "der.malformed"


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_integer_roundtrip_property(v):
    raw = der.integer(v)
    t, cs, ce = der.read_tlv(raw, 0, len(raw))
    assert der.as_integer(raw, cs, ce) == v
    # minimal: one byte shorter would not hold it
    assert ce - cs == v.bit_length() // 8 + 1


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=(1 << 24) - 1))
def test_length_roundtrip_property(n):
    enc = der.encode_length(n)
    raw = bytes([der.OCTET_STRING]) + enc
    # decode just the header; claim the content is there
    t, cs, ce = der.read_tlv(raw + bytes(n), 0, len(raw) + n)
    assert ce - cs == n and cs == len(raw)
    assert len(enc) == (1 if n < 128 else 1 + (n.bit_length() + 7) // 8)


# -- records: DirEntry, DirBranch, Snapshot -----------------------------------------

GEO = fmt.Geometry(9)          # 512-byte clusters, inline_max 64
GEO4K = fmt.Geometry(12)


def decode_entry_bytes(raw: bytes, geo=GEO):
    cs, ce = der.parse_single(raw, 0, len(raw), der.SEQUENCE)
    return fmt.decode_entry(raw, cs, ce, geo)


ENTRY_TABLE = [
    (fmt.DirEntry("a", 3, b"abc"), "300b" "0c0161" "020103" "8003616263"),
    (fmt.DirEntry("a", 0, b""), "3008" "0c0161" "020100" "8000"),
    (fmt.DirEntry("b", 600, None, 1, fmt.Pointer(0x1000, 0x11223344)),
     "301e" "0c0162" "02020258" "a115" "020101" "0410" "0010000000000000" "44332211" "00000000"),
    (fmt.DirEntry("c", 0, None, 0, fmt.NULL),
     "301d" "0c0163" "020100" "a115" "020100" "0410" + "00" * 16),
]


@pytest.mark.parametrize("entry,hexbytes", ENTRY_TABLE)
def test_dir_entry_table_both_ways(entry, hexbytes):
    """[R-dir-3] DirEntry ::= SEQUENCE { name, size, content }."""
    raw = bytes.fromhex(hexbytes)
    assert entry.encode(16) == raw
    assert decode_entry_bytes(raw) == entry
    width = fmt.entry_len(len(entry.name.encode()), entry.size,
                          None if entry.inline is None else len(entry.inline), entry.depth, 0, 16)
    assert width == len(raw)


def test_dir_branch_table_both_ways():
    b = fmt.DirBranch(b"", fmt.Pointer(0x2000, 7))
    raw = bytes.fromhex("3014" "0400" "0410" "0020000000000000" "07000000" "00000000")
    assert b.encode(16) == raw
    cs, ce = der.parse_single(raw, 0, len(raw), der.SEQUENCE)
    assert fmt.decode_branch(raw, cs, ce, GEO) == b
    b2 = fmt.DirBranch(b"\x01" * 32, fmt.Pointer(0x2000, 7))
    raw2 = b2.encode(16)
    cs, ce = der.parse_single(raw2, 0, len(raw2), der.SEQUENCE)
    assert fmt.decode_branch(raw2, cs, ce, GEO) == b2


def entry_with(name=der.utf8("a"), size=der.integer(3), content=der.octets(b"abc", der.context(0)), extra=b""):
    return der.sequence(name, size, content, extra)


ENTRY_VIOLATIONS = {
    "no content": (der.sequence(der.utf8("a"), der.integer(3)), "der.malformed"),
    "name is OCTET STRING": (entry_with(name=der.octets(b"a")), "der.malformed"),
    "size is OCTET STRING": (entry_with(size=der.octets(b"\x03")), "der.malformed"),
    "name with NUL": (entry_with(name=der.tlv(der.UTF8_STRING, b"a\0")), "der.malformed"),
    "name bad UTF-8": (entry_with(name=der.tlv(der.UTF8_STRING, b"\xc3\x28")), "der.malformed"),
    "empty name": (entry_with(name=der.utf8("")), "directory.entry"),
    "name of 256 bytes": (entry_with(name=der.utf8("n" * 256)), "directory.entry"),
    "negative size": (entry_with(size=der.tlv(der.INTEGER, b"\xff")), "der.malformed"),
    "non-minimal size": (entry_with(size=der.tlv(der.INTEGER, b"\x00\x03")), "der.malformed"),
    "size above 2^48": (entry_with(size=der.integer((1 << 48) + 1), content=der.sequence(
        der.integer(GEO.map_depth((1 << 48) + 1)), der.octets(bytes(16)), tag=der.context(1, True))),
        "directory.entry"),
    "inline length != size": (entry_with(size=der.integer(4)), "directory.entry"),
    "inline above inline_max": (entry_with(size=der.integer(65), content=der.octets(b"x" * 65, der.context(0))),
                                "directory.entry"),
    "content tag [2]": (entry_with(content=der.octets(b"abc", der.context(2))), "der.malformed"),
    "content constructed [0]": (entry_with(content=der.sequence(tag=der.context(0, True))), "der.malformed"),
    "content universal OCTET STRING": (entry_with(content=der.octets(b"abc")), "der.malformed"),
    "map with one field": (entry_with(size=der.integer(600), content=der.sequence(
        der.integer(1), tag=der.context(1, True))), "der.malformed"),
    "map with three fields": (entry_with(size=der.integer(600), content=der.sequence(
        der.integer(1), der.octets(bytes(16)), der.integer(0), tag=der.context(1, True))), "der.malformed"),
    "map depth as OCTET STRING": (entry_with(size=der.integer(600), content=der.sequence(
        der.octets(b"\x01"), der.octets(bytes(16)), tag=der.context(1, True))), "der.malformed"),
    "map depth 17": (entry_with(size=der.integer(600), content=der.sequence(
        der.integer(17), der.octets(bytes(16)), tag=der.context(1, True))), "der.malformed"),
    "map depth wrong for size": (entry_with(size=der.integer(600), content=der.sequence(
        der.integer(2), der.octets(bytes(16)), tag=der.context(1, True))), "map.depth"),
    "map depth 1 for size 512": (entry_with(size=der.integer(512), content=der.sequence(
        der.integer(1), der.octets(bytes(16)), tag=der.context(1, True))), "map.depth"),
    "map root of 40 bytes in a plain image": (entry_with(size=der.integer(600), content=der.sequence(
        der.integer(1), der.octets(bytes(40)), tag=der.context(1, True))), "directory.entry"),
    "map root null with crc": (entry_with(size=der.integer(600), content=der.sequence(
        der.integer(1), der.octets(bytes(8) + b"\x01\0\0\0" + bytes(4)), tag=der.context(1, True))),
        "pointer.reserved"),
    # extension fields [R-dir-4]
    "extension [1] in an entry": (entry_with(extra=der.octets(b"", der.context(1))), "der.malformed"),
    "extension [0] in an entry": (entry_with(extra=der.octets(b"", der.context(0))), "der.malformed"),
    "extensions out of order": (entry_with(extra=der.octets(b"", der.context(3)) + der.octets(b"", der.context(2))),
                                "der.malformed"),
    "extension repeated": (entry_with(extra=der.octets(b"", der.context(2)) + der.octets(b"", der.context(2))),
                           "der.malformed"),
    "universal field after content": (entry_with(extra=der.integer(1)), "der.malformed"),
    "extension [31] form": (entry_with(extra=bytes.fromhex("9f1f00")), "der.malformed"),
    "trailing garbage after content": (entry_with(extra=b"\x00"), "der.malformed"),
}


@pytest.mark.parametrize("why", sorted(ENTRY_VIOLATIONS))
def test_dir_entry_violations(why):
    """[R-dir-3] [R-dir-4] [R-der-1] each broken entry rule gives its code."""
    raw, code = ENTRY_VIOLATIONS[why]
    assert code_of(decode_entry_bytes, raw) == code


def test_dir_entry_extensions_kept_byte_for_byte():
    """[R-dir-4] ascending unknown fields [2]..[30] are kept exactly."""
    ext = der.octets(b"\x01\x02", der.context(2)) + der.sequence(der.integer(9), tag=der.context(5, True)) \
        + der.octets(b"z" * 200, der.context(30))
    raw = entry_with(extra=ext)
    e = decode_entry_bytes(raw)
    assert e.extra == ext
    assert e.encode(16) == raw


def test_dir_branch_violations():
    def dec(raw):
        cs, ce = der.parse_single(raw, 0, len(raw), der.SEQUENCE)
        return fmt.decode_branch(raw, cs, ce, GEO)
    ptr = fmt.Pointer(0x1000, 1).encode(16)
    assert code_of(dec, der.sequence(der.octets(b""))) == "der.malformed"
    assert code_of(dec, der.sequence(der.octets(b""), der.octets(ptr), der.integer(0))) == "der.malformed"
    assert code_of(dec, der.sequence(der.integer(0), der.octets(ptr))) == "der.malformed"
    assert code_of(dec, der.sequence(der.octets(b"k" * 5), der.octets(ptr))) == "directory.entry"
    assert code_of(dec, der.sequence(der.octets(b""), der.octets(ptr[:15]))) == "directory.entry"
    assert code_of(dec, der.sequence(der.octets(b""), der.octets(bytes(16)))) == "directory.entry"  # null child


def snap_record(sid=1, name="s", ctime=0, count=0, depth=0, root=bytes(16), meta=None, extra=b""):
    parts = [der.integer(sid) if isinstance(sid, int) else sid, der.utf8(name) if isinstance(name, str) else name,
             der.integer(ctime), der.integer(count), der.integer(depth), der.octets(root)]
    if meta is not None:
        parts.append(der.octets(meta, der.context(0)))
    return der.sequence(*parts, extra)


def test_snapshot_table_both_ways():
    """[R-snap-5] a known SnapshotTable encoding decodes to its records and back."""
    snaps = [fmt.Snapshot(1, "a", 5, 0, 0, fmt.NULL),
             fmt.Snapshot(3, "b", 6, 2, 1, fmt.Pointer(0x1000, 9), b"meta")]
    raw = fmt.encode_snapshot_table(snaps, 16)
    expect = der.sequence(snap_record(1, "a", 5), snap_record(3, "b", 6, 2, 1, fmt.Pointer(0x1000, 9).encode(16),
                                                              b"meta"))
    assert raw == expect
    assert fmt.decode_snapshot_table(raw, GEO, 2, 4) == snaps
    assert fmt.encode_snapshot_table([], 16) == b""
    assert fmt.decode_snapshot_table(b"", GEO, 0, 1) == []


SNAP_VIOLATIONS = {
    "five fields": (der.sequence(der.sequence(der.integer(1), der.utf8("s"), der.integer(0), der.integer(0),
                                              der.integer(0))), "der.malformed"),
    "id as OCTET STRING": (der.sequence(snap_record(sid=der.octets(b"\x01"))), "der.malformed"),
    "name with NUL": (der.sequence(snap_record(name=der.tlv(der.UTF8_STRING, b"a\0b"))), "der.malformed"),
    "empty name": (der.sequence(snap_record(name="")), "snapshot.table"),
    "id 0": (der.sequence(snap_record(sid=0)), "snapshot.table"),
    "id not below next_snapshot_id": (der.sequence(snap_record(sid=9)), "snapshot.table"),
    "ids not ascending": (der.sequence(snap_record(sid=2, name="x"), snap_record(sid=1, name="y")), "snapshot.table"),
    "ids repeated": (der.sequence(snap_record(sid=2, name="x"), snap_record(sid=2, name="y")), "snapshot.table"),
    "names repeated": (der.sequence(snap_record(sid=1, name="x"), snap_record(sid=2, name="x")), "snapshot.table"),
    "root width 40": (der.sequence(snap_record(root=bytes(40))), "snapshot.table"),
    "null root with depth": (der.sequence(snap_record(depth=1)), "snapshot.table"),
    "root with depth 0": (der.sequence(snap_record(root=fmt.Pointer(0x1000, 1).encode(16))), "snapshot.table"),
    "depth 17": (der.sequence(snap_record(depth=17, root=fmt.Pointer(0x1000, 1).encode(16))), "der.malformed"),
    "metadata 1025": (der.sequence(snap_record(meta=b"m" * 1025)), "snapshot.table"),
    "extension [0] after metadata": (der.sequence(snap_record(meta=b"", extra=der.octets(b"", der.context(0)))),
                                     "der.malformed"),
    "extensions descending": (der.sequence(snap_record(extra=der.octets(b"", der.context(4))
                                                       + der.octets(b"", der.context(3)))), "der.malformed"),
    "record is not a SEQUENCE": (der.sequence(der.integer(1)), "der.malformed"),
    "trailing bytes after the table": (der.sequence(snap_record()) + b"\x00", "der.malformed"),
    "table is a SET": (b"\x31" + der.sequence(snap_record())[1:], "der.malformed"),
}


@pytest.mark.parametrize("why", sorted(SNAP_VIOLATIONS))
def test_snapshot_table_violations(why):
    raw, code = SNAP_VIOLATIONS[why]
    count = 2 if why in ("ids not ascending", "ids repeated", "names repeated") else 1
    assert code_of(fmt.decode_snapshot_table, raw, GEO, count, 5) == code


def test_snapshot_table_count_mismatch():
    raw = der.sequence(snap_record())
    assert code_of(fmt.decode_snapshot_table, raw, GEO, 2, 5) == "snapshot.table"
    assert code_of(fmt.decode_snapshot_table, raw, GEO, 0, 5) == "snapshot.table"


def test_snapshot_extensions_kept():
    """[R-dir-4] a snapshot record's fields [1]..[30] survive decode/encode."""
    ext = der.octets(b"q", der.context(1)) + der.octets(b"r", der.context(7))
    raw = der.sequence(snap_record(meta=b"m", extra=ext))
    (rec,) = fmt.decode_snapshot_table(raw, GEO, 1, 2)
    assert rec.extra == ext and rec.metadata == b"m"
    assert fmt.encode_snapshot_table([rec], 16) == raw


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=80), st.integers(0, 5))
def test_snapshot_table_garbage(data, count):
    """Garbage tables raise only der.malformed or snapshot.table (or pointer.reserved)."""
    try:
        fmt.decode_snapshot_table(data, GEO, count, 1 << 20)
    except NvboxError as exc:
        assert exc.code in ("der.malformed", "snapshot.table", "pointer.reserved")


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=2, max_size=120))
def test_entry_garbage(data):
    try:
        decode_entry_bytes(der.sequence(data))
    except NvboxError as exc:
        assert exc.code in ("der.malformed", "directory.entry", "map.depth", "pointer.reserved")
