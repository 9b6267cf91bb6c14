"""The reference's layout tables (nvbox._format) against the Kaitai descriptors.

For every table, the fields of the matching ksy type (the compiler's JSON of
ksy/nvbox.ksy, as test_spec_tables reads it) come in the table's order with the
table's sizes, and at the table's offsets while the offsets are fixed.  Fields
are matched by the spec's names (the tables use them).  Zero-size ``check_*``
assertions, the fields only the other pointer form has, and the EXTRA fields
test_spec_tables documents are not rows of a table.
"""
from __future__ import annotations

import pytest

from test_spec_tables import EXTRA, LAYOUT_MAP, TABLE_MAP, ksy_types  # noqa: F401 - ksy_types is a fixture

from nvbox import _format as fmt

# Layout -> ksy type, through the spec table both stand for.
KSY_TYPE = {getattr(fmt, layout).name: TABLE_MAP[key] for key, layout in LAYOUT_MAP.items()}
UINT = {"u1": 1, "u2": 2, "u4": 4, "u8": 8}


def ksy_size(attr):
    """The size of a seq field or positioned instance, or None when it varies."""
    if "contents" in attr:
        c = attr["contents"]
        return len(c) if isinstance(c, list) else len(str(c).encode())
    if isinstance(attr.get("size"), int):
        n = attr["size"]
    elif attr.get("type") in UINT:
        n = UINT[attr["type"]]
    else:
        return None
    if "repeat" in attr:
        count = attr.get("repeat-expr")
        return n * count if attr["repeat"] == "expr" and isinstance(count, int) else None
    return n


def ksy_fields(t, encrypted: bool):
    """[(name, offset or None, size or None)] of a ksy type: seq fields, then positioned instances."""
    out, pos = [], 0
    for attr in t.get("seq", []):
        cond = attr.get("if")
        if cond is not None and cond != ("is_encrypted" if encrypted else "not is_encrypted"):
            continue
        size = ksy_size(attr)
        if not attr["id"].startswith("check_"):
            out.append((attr.get("-orig-id", attr["id"]), pos, size))
        pos = None if pos is None or size is None else pos + size
    for name, inst in (t.get("instances") or {}).items():
        if isinstance(inst.get("pos"), int):
            out.append((name, inst["pos"], ksy_size(inst)))
    return out


@pytest.mark.parametrize("name", sorted(fmt.LAYOUTS))
def test_layout_matches_descriptor(name, ksy_types):  # noqa: F811
    layout = fmt.LAYOUTS[name]
    tname = KSY_TYPE[name]
    found = {n: (o, s) for n, o, s in ksy_fields(ksy_types[tname], name == "encrypted_pointer")}
    missing = [f.name for f in layout if f.name not in found]
    assert not missing, f"{tname}: no field or instance for {missing} (renamed? the tables use the spec's names)"
    seq = [n for n, _, _ in ksy_fields({"seq": ksy_types[tname].get("seq", [])}, name == "encrypted_pointer")]
    in_seq = [f.name for f in layout if f.name in seq]
    assert in_seq == [n for n in seq if n in in_seq], f"{tname}: field order differs from the table"
    extra = [n for n in seq if n not in layout.by_name and n not in EXTRA.get(tname, set())]
    assert not extra, f"{tname}: seq fields the table lacks: {extra}"
    for f in layout:
        offset, size = found[f.name]
        if isinstance(f.size, int) and size is not None:
            assert size == f.size, f"{tname}.{f.name}: size {size} in ksy, {f.size} in the table"
        if isinstance(f.offset, int) and offset is not None:
            assert offset == f.offset, f"{tname}.{f.name}: offset {offset} in ksy, {f.offset} in the table"
    # The table's fixed fields are all sized in the descriptor, except where ksy counts them
    # by another field (the key slot table's `slots`, repeat-expr num_slots).
    unsized = [f.name for f in layout if f.fixed and found[f.name][1] is None]
    assert unsized in ([], ["slots"]), f"{tname}: ksy gives no size for {unsized}"
