"""The nvbox DER subset (spec section 9.1), encoding and decoding, no I/O.

Only four universal tags (SEQUENCE, INTEGER, OCTET STRING, UTF8String) and
one-byte context-specific tags [0]..[30] exist; lengths are definite and
minimal, at most three length bytes.  Every violation raises
``der.malformed`` [R-der-1].  Decoding never allocates more than the input's
size, so a hostile length cannot make it use unbounded memory.
"""

from __future__ import annotations

from .errors import raise_code

SEQUENCE = 0x30
INTEGER = 0x02
OCTET_STRING = 0x04
UTF8_STRING = 0x0C

_UNIVERSAL = frozenset((SEQUENCE, INTEGER, OCTET_STRING, UTF8_STRING))


def context(n: int, constructed: bool = False) -> int:
    """Tag byte of context-specific tag [n]."""
    return (0xA0 if constructed else 0x80) | n


def is_constructed(tag: int) -> bool:
    return bool(tag & 0x20)


def context_number(tag: int) -> int | None:
    """n for a context-specific tag [n], else None."""
    return tag & 0x1F if tag & 0xC0 == 0x80 else None


# -- encoding ---------------------------------------------------------------

def encode_length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    if len(body) > 3:
        raise ValueError("DER length above the subset's 3-byte limit")
    return bytes((0x80 | len(body),)) + body


def tlv(tag: int, content: bytes) -> bytes:
    return bytes((tag,)) + encode_length(len(content)) + content


def integer(value: int, tag: int = INTEGER) -> bytes:
    if value < 0:
        raise ValueError("the nvbox DER subset has no negative integers")
    # One spare bit so the top bit is 0 (two's complement, non-negative).
    return tlv(tag, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def octets(value: bytes, tag: int = OCTET_STRING) -> bytes:
    return tlv(tag, bytes(value))


def utf8(value: str | bytes) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    return tlv(UTF8_STRING, raw)


def sequence(*elements: bytes, tag: int = SEQUENCE) -> bytes:
    return tlv(tag, b"".join(elements))


# -- decoding ---------------------------------------------------------------

def _bad(why: str):
    raise_code("der.malformed", f"DER: {why}")


def read_tlv(buf, pos: int, end: int) -> tuple[int, int, int]:
    """Decode one TLV header at ``pos``; return (tag, content_start, content_end).

    The content must lie within ``end``.
    """
    if pos + 2 > end:
        _bad("truncated tag or length")
    tag = buf[pos]
    if tag not in _UNIVERSAL and not (tag & 0xC0 == 0x80 and tag & 0x1F != 0x1F):
        _bad(f"tag 0x{tag:02x} is outside the subset")
    first = buf[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        _bad("indefinite length")
    else:
        nbytes = first & 0x7F
        if nbytes > 3:
            _bad("length of more than 3 bytes")
        if pos + nbytes > end:
            _bad("truncated length")
        length = int.from_bytes(buf[pos:pos + nbytes], "big")
        if buf[pos] == 0 or length < 0x80:
            _bad("non-minimal length")
        pos += nbytes
    if pos + length > end:
        _bad("content runs past its container")
    return tag, pos, pos + length


def elements(buf, start: int, end: int) -> list[tuple[int, int, int]]:
    """Every TLV inside [start, end), which they must fill exactly."""
    out = []
    pos = start
    while pos < end:
        tag, cs, ce = read_tlv(buf, pos, end)
        out.append((tag, cs, ce))
        pos = ce
    return out


def parse_single(buf, start: int, end: int, tag: int) -> tuple[int, int]:
    """The content span of the one value filling [start, end), which must have ``tag``."""
    t, cs, ce = read_tlv(buf, start, end)
    if t != tag:
        _bad(f"expected tag 0x{tag:02x}, found 0x{t:02x}")
    if ce != end:
        _bad("trailing bytes after the value")
    return cs, ce


def as_integer(buf, cs: int, ce: int, maximum: int = (1 << 64) - 1) -> int:
    if ce == cs:
        _bad("empty INTEGER")
    if ce - cs > 9:
        _bad("INTEGER above 2^64")
    if buf[cs] & 0x80:
        _bad("negative INTEGER")
    if ce - cs > 1 and buf[cs] == 0 and not buf[cs + 1] & 0x80:
        _bad("non-minimal INTEGER")
    value = int.from_bytes(buf[cs:ce], "big")
    if value > maximum:
        _bad(f"INTEGER {value} above its limit {maximum}")
    return value


def as_utf8(buf, cs: int, ce: int) -> str:
    raw = bytes(buf[cs:ce])
    if b"\0" in raw:
        _bad("NUL in UTF8String")
    try:
        return raw.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        _bad("invalid UTF-8")


def expect(tag_found: int, tag_wanted: int, what: str) -> None:
    if tag_found != tag_wanted:
        _bad(f"{what}: expected tag 0x{tag_wanted:02x}, found 0x{tag_found:02x}")
