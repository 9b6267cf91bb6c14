"""Shared helpers for the nvbox tests: crafting and re-sealing image bytes.

These edit raw image bytes the way a hostile or buggy writer would, then fix
up checksums so that exactly one fault remains.
"""

from __future__ import annotations

import struct
from dataclasses import replace

from nvbox import _format as fmt

__all__ = ["active_slot_index", "read_active_slot", "reslot", "fix_header_crc", "fix_slot_crc",
           "set_header", "crc_fixpoint", "image_bytes", "reseal_pointer", "find_pointer_field"]


def image_bytes(img) -> bytearray:
    """A copy of an in-memory image's device bytes."""
    return bytearray(img.dev.inner.data)


def active_slot_index(raw) -> int:
    """0 for slot A, 1 for slot B: the valid slot with the higher generation."""
    best, best_gen = None, -1
    for index, off in enumerate(fmt.SLOT_OFFSETS):
        body = bytes(raw[off:off + fmt.SECTOR])
        if fmt.slot_is_valid(body, index):
            gen = struct.unpack_from("<Q", body, 8)[0]
            if gen > best_gen:
                best, best_gen = index, gen
    if best is None:
        raise AssertionError("no valid slot in the image")
    return best


def read_active_slot(raw) -> fmt.Slot:
    header = fmt.decode_header(bytes(raw[:fmt.HEADER_AREA]))
    off = fmt.SLOT_OFFSETS[active_slot_index(raw)]
    return fmt.decode_slot(bytes(raw[off:off + fmt.SECTOR]), header)


def reslot(image_bytes, **fields) -> bytearray:
    """Rewrite the active commit slot with ``fields`` replaced; recompute its CRC.

    Uses ``nvbox._format.Slot`` so the result is a well-formed slot apart from
    whatever the fields say.  Returns a new bytearray.
    """
    raw = bytearray(image_bytes)
    index = active_slot_index(raw)
    slot = replace(read_active_slot(raw), **fields)
    off = fmt.SLOT_OFFSETS[index]
    raw[off:off + fmt.SECTOR] = slot.encode()
    return raw


def fix_slot_crc(raw, index: int) -> None:
    off = fmt.SLOT_OFFSETS[index]
    struct.pack_into("<I", raw, off + 508, fmt.crc32c(bytes(raw[off:off + 508])))


def fix_header_crc(raw) -> None:
    struct.pack_into("<I", raw, 508, fmt.crc32c(bytes(raw[:508])))


def set_header(raw, offset: int, fmt_code: str, value, fix_crc: bool = True) -> bytearray:
    out = bytearray(raw)
    struct.pack_into("<" + fmt_code, out, offset, value)
    if fix_crc:
        fix_header_crc(out)
    return out


def crc_fixpoint(cluster: bytearray, field_off) -> bool:
    """Set the u32 at ``field_off`` (an offset, or a list of offsets that all get
    the same value) so that crc32c(cluster) equals that u32.

    CRC-32C is affine over GF(2): crc(v) = L v + c.  Solve (L + I) v = c.
    Returns False when no solution exists.
    """
    offsets = [field_off] if isinstance(field_off, int) else list(field_off)

    def crc_with(v):
        for off in offsets:
            struct.pack_into("<I", cluster, off, v)
        return fmt.crc32c(bytes(cluster))

    c = crc_with(0)
    cols = [crc_with(1 << i) ^ c ^ (1 << i) for i in range(32)]   # column i of (L + I)
    # Gaussian elimination on rows: build augmented system row by row (bit r of each column).
    rows = []
    for r in range(32):
        mask = 0
        for i in range(32):
            if cols[i] >> r & 1:
                mask |= 1 << i
        rows.append([mask, c >> r & 1])
    pivots = []
    row_i = 0
    for col in range(32):
        pivot = next((k for k in range(row_i, 32) if rows[k][0] >> col & 1), None)
        if pivot is None:
            continue
        rows[row_i], rows[pivot] = rows[pivot], rows[row_i]
        for k in range(32):
            if k != row_i and rows[k][0] >> col & 1:
                rows[k][0] ^= rows[row_i][0]
                rows[k][1] ^= rows[row_i][1]
        pivots.append(col)
        row_i += 1
    for k in range(row_i, 32):
        if rows[k][1]:
            return False
    v = 0
    for k, col in enumerate(pivots):
        if rows[k][1]:
            v |= 1 << col
    got = crc_with(v)
    return got == v


def find_pointer_field(raw, target_offset: int, start: int, end: int) -> list[int]:
    """Positions in raw[start:end] where a plain pointer to ``target_offset`` is stored."""
    needle = struct.pack("<Q", target_offset)
    out = []
    pos = raw.find(needle, start, end)
    while pos >= 0:
        out.append(pos)
        pos = raw.find(needle, pos + 1, end)
    return out


def reseal_pointer(raw, pointer_pos: int, cluster_size: int) -> None:
    """Recompute the CRC field of the plain pointer at ``pointer_pos`` from the cluster it names."""
    offset = struct.unpack_from("<Q", raw, pointer_pos)[0]
    struct.pack_into("<I", raw, pointer_pos + 8, fmt.crc32c(bytes(raw[offset:offset + cluster_size])))
