"""Every byte table of spec/nvbox.md against the descriptors, both ways.

Mapping (also in ksy/README.md). A byte table is a markdown table whose header
row starts `| offset | size | name |`; it is identified by the section heading
above it and, when there is one, the "Label (N bytes):" line right before it:

    3. The header                     -> nvbox.ksy type `image_header`
    3.1 Header extensions             -> `header_extension`
    4. Commit slots                   -> `commit_slot`
    6. Pointers / Plain pointer       -> `pointer` (fields if: not is_encrypted)
    6. Pointers / Encrypted pointer   -> `pointer` (fields if: is_encrypted)
    9. The directory                  -> `dir_node`
    10.1 Keys                         -> `keyslot_cluster`
    10.1 Keys / Key slot              -> `key_slot`

The feature-bit table (`| mask | bit | name |`) maps each named bit of mask
`m` to a member of enum `<m>_feature`. ASN.1 SEQUENCE/CHOICE types of section
9.2 map to the types in ASN1_MAP, components by snake_case name.

Checks: every table is mapped; every spec name is a seq field or instance of
its type, and the seq fields appear in the spec's order; every seq field of
the type is in the spec table, except zero-size `check_*` assertion fields
and the documented EXTRA fields.

The same tables against the reference's layout tables (nvbox._format, the ones
its encoders, decoders and dumper are built from): every row's offset, size and
name in order, the error code a row names, and the value of a row that gives a
single number.  test_layout_tables.py compares those tables with the descriptors.
"""
from __future__ import annotations

import re
from pathlib import Path

import json

import pytest

KSY_DIR = Path(__file__).resolve().parents[1]
SPEC = KSY_DIR.parent / "spec" / "nvbox.md"

# Spec table -> (ksy type, the reference's layout table in nvbox._format).
TABLES = {
    ("3. The header", None): ("image_header", "HEADER"),
    ("3.1 Header extensions", None): ("header_extension", "EXTENSION"),
    ("4. Commit slots", None): ("commit_slot", "SLOT"),
    ("6. Pointers", "Plain pointer"): ("pointer", "PLAIN_POINTER_LAYOUT"),
    ("6. Pointers", "Encrypted pointer"): ("pointer", "ENCRYPTED_POINTER_LAYOUT"),
    ("9. The directory", None): ("dir_node", "DIR_NODE"),
    ("10.1 Keys", None): ("keyslot_cluster", "KEYSLOT_TABLE"),
    ("10.1 Keys", "Key slot"): ("key_slot", "KEYSLOT"),
}
TABLE_MAP = {key: ksy_type for key, (ksy_type, _) in TABLES.items()}
LAYOUT_MAP = {key: layout for key, (_, layout) in TABLES.items()}
# Seq fields a type has beyond its spec table, and why.
EXTRA = {
    "header_extension": {"padding"},  # "then zero padding to a multiple of 8" in ext_data's row
    "pointer": {"padding"},           # the zeros after a pointer in a 40-byte slot field
}
# Fields only one pointer form has: they must be conditional on is_encrypted.
POINTER_ONLY = {"Plain pointer": {"reserved": "not is_encrypted"},
                "Encrypted pointer": {"nonce": "is_encrypted", "tag": "is_encrypted"}}
ASN1_MAP = {
    "DirEntry": "dir_entry_body",
    "BlobContent": "blob_content",
    "ClusterMap": "cluster_map",
    "DirBranch": "dir_branch",
    "Snapshot": "snapshot_body",
    "DirLeaf": "dir_body",
    "DirIndex": "dir_body",
    "SnapshotTable": "snapshot_table_der",
}


def spec_tables():
    """[(heading, label, header_cells, rows)] for every markdown table in the spec."""
    lines = SPEC.read_text(encoding="utf-8").splitlines()
    out, heading, label, i = [], None, None, 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"#+\s+(.*)", line)
        if m:
            heading, label = m.group(1).strip(), None
        elif line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            out.append((heading, label, [c.lower() for c in block[0]], block[2:]))
            label = None
            continue
        elif line.strip():
            lm = re.match(r"(.+?)\s*\(\d+ bytes\):\s*$", line.strip())
            label = lm.group(1) if lm else None
        i += 1
    return out


def byte_tables():
    return [t for t in spec_tables() if t[2][:3] == ["offset", "size", "name"]]


def field_name(cell: str) -> str:
    return cell.replace("`", "").strip()


@pytest.fixture(scope="module")
def ksy_types(ksy):
    # compile.js writes each parsed .ksy as JSON (no YAML parser needed here)
    types = {}
    files = sorted((KSY_DIR / "build" / "json").glob("*.json"))
    assert {f.stem for f in files} >= {p.stem for p in KSY_DIR.glob("*.ksy")}
    for f in files:
        doc = json.loads(f.read_text(encoding="utf-8"))
        types[doc["meta"]["id"]] = doc
        for name, t in (doc.get("types") or {}).items():
            types[name] = t
    return types


def members(t):
    """(seq ids, every member name): a field renamed because the spec's name is a
    keyword of some target keeps the spec's name as ``-orig-id``, and counts as it."""
    seq = [a.get("-orig-id", a["id"]) for a in t.get("seq", [])]
    return seq, set(seq) | {a["id"] for a in t.get("seq", [])} | set(t.get("instances") or {})


def test_spec_has_the_expected_tables():
    keys = {(h, lab) for h, lab, _, _ in byte_tables()}
    assert keys == set(TABLE_MAP), f"unmapped: {keys - set(TABLE_MAP)}, stale: {set(TABLE_MAP) - keys}"


@pytest.mark.parametrize("table", byte_tables(), ids=lambda t: f"{t[0]}/{t[1]}")
def test_table_fields_in_descriptor(table, ksy_types):
    heading, label, _, rows = table
    tname = TABLE_MAP[(heading, label)]
    assert tname in ksy_types, f"type {tname} missing from ksy/"
    t = ksy_types[tname]
    seq, all_ids = members(t)
    names = [field_name(r[2]) for r in rows if field_name(r[2])]
    missing = [n for n in names if n not in all_ids]
    assert not missing, f"{heading}/{label}: fields missing from ksy type {tname}: {missing}"
    # spec order == seq order, for the names that are seq fields
    in_seq = [n for n in names if n in seq]
    assert in_seq == sorted(in_seq, key=seq.index), f"{tname}: field order differs from the spec"
    if tname == "pointer":
        for fname, cond in POINTER_ONLY[label].items():
            attr = next(a for a in t["seq"] if a["id"] == fname)
            assert attr.get("if") == cond, (fname, attr.get("if"))
        return
    extra = [s for s in seq if s not in names and not s.startswith("check_")
             and s not in EXTRA.get(tname, set())]
    assert not extra, f"{tname}: seq fields not in the spec table: {extra}"


def test_pointer_tables_cover_pointer_type(ksy_types):
    names = set()
    for heading, label, _, rows in byte_tables():
        if TABLE_MAP[(heading, label)] == "pointer":
            names |= {field_name(r[2]) for r in rows}
    seq, _ = members(ksy_types["pointer"])
    extra = [s for s in seq if s not in names and not s.startswith("check_")
             and s not in EXTRA["pointer"]]
    assert not extra


def test_feature_bits_are_enums(ksy_types):
    enums = ksy_types["nvbox"]["enums"]
    tables = [t for t in spec_tables() if t[2][:3] == ["mask", "bit", "name"]]
    assert len(tables) == 1
    named = 0
    for mask, bit, name, *_ in tables[0][3]:
        name = field_name(name)
        if not name:
            continue
        named += 1
        enum = enums[f"{mask}_feature"]
        member = enum[str(int(bit))]
        member_id = member["id"] if isinstance(member, dict) else member
        assert member_id == name, (mask, bit, name, member_id)
    assert named >= 1


def asn1_types():
    text = SPEC.read_text(encoding="utf-8")
    module = re.search(r"```asn1\n(.*?)```", text, re.S).group(1)
    module = re.sub(r"--[^\n]*", "", module)
    out = {}
    for m in re.finditer(r"(\w+)\s*::=\s*(SEQUENCE OF \w+|SEQUENCE\s*\{(.*?)\}|CHOICE\s*\{(.*?)\})",
                         module, re.S):
        body = m.group(3) or m.group(4)
        comps = []
        if body:
            for part in body.split(","):
                part = part.strip()
                if part and part != "...":
                    comps.append(part.split()[0])
        out[m.group(1)] = comps
    return out


def snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def test_asn1_module_in_descriptor(ksy_types):
    types = asn1_types()
    assert set(types) == set(ASN1_MAP), set(types) ^ set(ASN1_MAP)
    for asn, comps in types.items():
        t = ksy_types[ASN1_MAP[asn]]
        _, ids = members(t)
        missing = [c for c in comps if snake(c) not in ids]
        assert not missing, f"{asn} -> {ASN1_MAP[asn]}: missing {missing}"
        for a in t.get("seq", []):
            if snake_orig := a.get("-orig-id"):
                assert a["id"].startswith(snake(snake_orig)), (snake_orig, a["id"])


# -- the reference's layout tables (nvbox._format) against the spec's byte tables --------------

# R-slot-5: any rule a chosen slot's field breaks is slot.field, whatever other codes
# its row mentions (a writer's snapshot.limit, check's directory.entry).
ROW_CODE_OVERRIDE = {"commit_slot": "slot.field"}


def spec_extent(cell: str):
    """An offset or size cell as a number ("96 x 8" multiplied out), or the
    expression the spec writes (backticks and spacing dropped)."""
    text = field_name(cell)
    if re.fullmatch(r"\d+( x \d+)*", text):
        value = 1
        for part in text.split(" x "):
            value *= int(part)
        return value
    return " ".join(text.replace("`", "").split())


def test_every_spec_byte_table_has_a_layout():
    from nvbox import _format as fmt
    keys = {(h, lab) for h, lab, _, _ in byte_tables()}
    assert keys == set(LAYOUT_MAP)
    assert {getattr(fmt, name) for name in LAYOUT_MAP.values()} == set(fmt.LAYOUTS.values())


@pytest.mark.parametrize("table", byte_tables(), ids=lambda t: f"{t[0]}/{t[1]}")
def test_layout_rows_match_spec(table):
    """Offset, size and name of every row, in order; the error code a row names;
    the value of a row that gives one number (reserved zeros, versions)."""
    from nvbox import _format as fmt
    from nvbox.errors import ERROR_CODES
    heading, label, _, rows = table
    layout = getattr(fmt, LAYOUT_MAP[(heading, label)])
    spec = [(spec_extent(r[0]), spec_extent(r[1]), field_name(r[2]), r[3]) for r in rows]
    assert [s[2] for s in spec] == [f.name for f in layout], f"{layout.name}: names or order differ"
    for (offset, size, name, meaning), f in zip(spec, layout):
        assert (f.offset, f.size) == (offset, size), f"{layout.name}.{name}: offset/size"
        named = [c for c in re.findall(r"`([a-z_0-9]+\.[a-z_0-9]+)`", meaning) if c in ERROR_CODES]
        if named and f.error is not None and f.error != ROW_CODE_OVERRIDE.get(layout.name):
            assert f.error in named, f"{layout.name}.{name}: error {f.error}, the spec names {named}"
        if f.error is not None:
            assert f.error in ERROR_CODES, f"{layout.name}.{name}: unknown error code {f.error}"
        number = re.match(r"(\d+)(?:\.(?:\s|$)| \(| in\b)", meaning)
        if number:
            assert f.valid == int(number.group(1)), f"{layout.name}.{name}: valid {f.valid!r}, spec {number.group(1)}"
    fixed = [f for f in layout if f.fixed]
    if isinstance(layout.size, int):
        assert layout.struct.size == max(f.end for f in fixed) <= layout.size
