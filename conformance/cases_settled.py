"""Cases that pin the answers to the spec's former open questions (issue 17) and the
damaged-slot report of ``check`` (R-check-3).

Each case either pins the code the spec now names for one defect, or fails an
implementation that followed the old ambiguous reading.  Encrypted cases live in
cases_crypto.py; the pinned codes of older cases are in cases_def.py.
"""

from __future__ import annotations

import struct

from nvbox import _format as fmt

from conformance.cases_def import (
    CREATOR, CS, END, base_snaps3, ed_of, entry_kids, entry_named, ext, get_count, leaf_of, set_count,
)
from conformance.corrupt import TLV, encode_tlv
from conformance.builders import base, base_deep, base_snap, base_two_gens, build, pattern, put, snap, truncate, txn, write

RI = "read-invalid"
BAD_PADDING = ext(0x1235, 0, b"abc", pad=b"\x00\x00\x00\x00\x07")
REQUIRED = ext(0x1234, 1, b"must know")


def all_cases(c) -> None:
    header_order(c)
    slot_and_directory(c)
    der_structure(c)
    snapshot_records(c)
    reader_latitude(c)
    check_kinds(c)
    damaged_slots(c)
    writers(c)


# -- item 6: check order in the header ------------------------------------------------------------

def header_order(c) -> None:
    raw, m = base(CS)
    H = ["R-header-9"]
    for name, edits, desc, code in [
        ("length-before-cluster-bits", [("header_length", 120), ("cluster_bits", 8)],
         "header_length 120 and cluster_bits 8: header_length (offset 12) is checked first", "header.field"),
        ("cluster-bits-before-refcount-order", [("cluster_bits", 22), ("refcount_order", 3)],
         "cluster_bits 22 and refcount_order 3: cluster_bits is checked first", "header.cluster_size"),
    ]:
        ed = ed_of(raw)
        for field, value in edits:
            ed.set_header(field, value)
        c.read_invalid("header", f"n_header_order-{name}", desc, H + ["R-header-4", "R-header-5"], ed.bytes(), code)
    ed = ed_of(raw)
    ed.set_extensions(BAD_PADDING + END, reseal=False)
    ed.set_header("reserved0", 1)
    c.read_invalid("header", "n_header_order-fields-before-extensions",
                   "reserved0 non-zero and an extension with non-zero padding: the fixed fields come first",
                   H + ["R-header-10", "R-conv-5"], ed.bytes(), "header.field")
    # Records are checked one after another, each completely (R-header-10, R-header-11).
    for name, area, desc, code in [
        ("required-first", CREATOR + REQUIRED + BAD_PADDING + END,
         "An unknown required extension, then a record with non-zero padding: the first record's fault is reported",
         "header.extension_required"),
        ("malformed-first", CREATOR + BAD_PADDING + REQUIRED + END,
         "A record with non-zero padding, then an unknown required extension: the first record's fault is reported",
         "header.extension"),
        ("required-before-bytes-after-end", CREATOR + REQUIRED + END + b"\x09",
         "An unknown required extension and a non-zero byte after the end record: the record comes first",
         "header.extension_required"),
    ]:
        ed = ed_of(raw)
        ed.set_extensions(area)
        c.read_invalid("header", f"n_header_ext-order-{name}", desc, ["R-header-10", "R-header-11"], ed.bytes(), code)
    ed = ed_of(raw)
    ed.set_extensions(ext(1, 0, b"nv\x00box") + ext(1, 0, "second créateur".encode()) + END)
    c.read_valid("header", "y_header_creator-nul-and-twice",
                 "Two creator extensions, the first holding a NUL: both are valid UTF-8 of at most 64 bytes",
                 ["R-header-12"], ed.bytes(), m.logical())


# -- items 2, 6, 7: slot fields, blob_count, null pointers ----------------------------------------

def slot_and_directory(c) -> None:
    raws, ms = base_snap(CS)
    e = ed_of(raws)
    e.set_slot("snaptable_depth", e.get_slot("snaptable_depth") + 1)
    c.read_invalid("slot", "n_slot_field-snaptable-depth-nonempty",
                   "A one-cluster snapshot table with snaptable_depth 1 (R-map-1 gives 0): a slot field, slot.field",
                   ["R-slot-5", "R-snap-5", "R-map-1"], e.bytes(), "slot.field")
    raw, m = base(CS)
    e = ed_of(raw)
    e.set_slot("alloc_hint", e.get_slot("image_clusters"))
    c.read_valid("slot", "y_slot_alloc-hint-above-free",
                 "alloc_hint above the lowest free cluster but within image_clusters: a reader ignores it",
                 ["R-alloc-6", "R-slot-5", "R-read-1"], e.bytes(), m.logical(), flags=["AllocHint"])
    rawd, md = base_deep(CS, 60)
    e = ed_of(rawd)
    rootn = e.layout.slot_refs["dir_root"].target
    body = e.dir_body(rootn)
    body.kids[1].kids[1].content = bytes(16)
    e.set_dir_node(rootn, body)
    c.read_invalid("directory", "n_dir_entry-branch-child-null", "A directory branch whose child pointer is null",
                   ["R-dir-3", "R-ref-5"], e.bytes(), "directory.entry")
    raw0, m0 = build("empty-512", [], CS)
    e = ed_of(raw0)
    e.set_slot("blob_count", 3)
    c.read_acceptable("directory", "i_dir_blob-count-empty-directory",
                      "dir_depth 0 (an empty directory) with blob_count 3: a reader need not look at blob_count",
                      ["R-dir-7", "R-read-1"], e.bytes(), m0.logical(), ["directory.entry"], ["LazyReader"])
    c.check("corrupt", "k_corrupt_blob-count-empty-directory", "dir_depth 0 with blob_count 3: check reports directory.entry",
            ["R-check-1", "R-dir-7"], e.bytes(), "corrupt")


# -- item 1: valid DER that does not match the ASN.1 module ----------------------------------------

def der_structure(c) -> None:
    raw, m = base(CS)
    D = ["R-der-2", "R-der-1"]

    def leaf_edit(name, desc, fn):
        e = ed_of(raw)
        lf = leaf_of(e)
        body, kids = entry_kids(e, lf)
        fn(kids)
        e.set_dir_node(lf, body)
        c.read_invalid("der", name, desc, D, e.bytes(), "der.malformed")

    def retag(t, tag):
        t.tag = tag
    leaf_edit("n_der_content-inline-constructed", "Inline content tagged [0] constructed (0xA0), not [0] primitive",
              lambda k: retag(entry_named(k, "a/inline").kids[2], 0xA0))
    leaf_edit("n_der_content-clusters-primitive", "A ClusterMap tagged [1] primitive (0x81), not [1] constructed",
              lambda k: retag(entry_named(k, "c/multi").kids[2], 0x81))
    rawd, _ = base_deep(CS, 60)

    def branch_edit(name, desc, fn):
        e = ed_of(rawd)
        rootn = e.layout.slot_refs["dir_root"].target
        body = e.dir_body(rootn)
        fn(body.kids[1])
        e.set_dir_node(rootn, body)
        c.read_invalid("der", name, desc, D, e.bytes(), "der.malformed")
    branch_edit("n_der_branch-not-sequence", "A DirBranch tagged [0] constructed instead of SEQUENCE", lambda b: retag(b, 0xA0))
    branch_edit("n_der_branch-extra-element", "A DirBranch with a third element", lambda b: b.kids.append(TLV(0x04, b"")))
    branch_edit("n_der_branch-child-as-integer", "A DirBranch whose child is an INTEGER", lambda b: retag(b.kids[1], 0x02))


# -- items 1, 3, 7: snapshot records ---------------------------------------------------------------

def snapshot_records(c) -> None:
    raw, m = base_snaps3()
    T = ["R-snap-5"]

    def table(name, desc, fn, code, spec=T):
        e = ed_of(raw)
        t = e.snapshot_table()
        fn(t)
        enc = encode_tlv(t)
        e.set_snapshot_table(enc, len(enc))
        c.read_invalid("snapshot", name, desc, spec, e.bytes(), code)

    def name_bytes(value):
        return lambda t: setattr(t.kids[1].kids[1], "content", value)
    table("n_snapshot_name-utf8-nul", "A snapshot name holding NUL: the DER subset's UTF8String rule", name_bytes(b"s\x00x"),
          "der.malformed", T + ["R-der-1", "R-snap-4"])
    table("n_snapshot_name-utf8-invalid", "A snapshot name that is not UTF-8 (0xff)", name_bytes(b"s\xff"),
          "der.malformed", T + ["R-der-1", "R-snap-4"])
    table("n_snapshot_record-field-wrong-type", "A record whose createTime is an OCTET STRING",
          lambda t: setattr(t.kids[0].kids[2], "tag", 0x04), "der.malformed", T + ["R-der-1"])
    table("n_snapshot_record-not-sequence", "A record tagged [0] constructed instead of SEQUENCE",
          lambda t: setattr(t.kids[0], "tag", 0xA0), "der.malformed", T + ["R-der-1"])
    rawe, _ = build("snap-empty", [snap("empty"), put("x", b"1")], CS)
    e = ed_of(rawe)
    t = e.snapshot_table()
    t.kids[0].kids[5].content = struct.pack("<QI", 0, 0x12345678) + bytes(4)
    enc = encode_tlv(t)
    e.set_snapshot_table(enc, len(enc))
    c.read_invalid("snapshot", "n_snapshot_root-null-with-crc",
                   "A snapshot of an empty directory whose null dirRoot has a non-zero crc: a pointer rule, pointer.reserved",
                   ["R-ptr-2", "R-snap-5"], e.bytes(), "pointer.reserved")


# -- item 5: what read and read --snapshot must verify ---------------------------------------------

def reader_latitude(c) -> None:
    raws, ms = base_snap(CS)
    e = ed_of(raws)
    active = e.find("dir", owner="active", level=0)
    assert active.index != e.find("dir", owner="snapshot:s1", level=0).index
    e.poke_raw(active.index * CS + 20, bytes([e.data[active.index * CS + 20] ^ 1]))
    c.read_acceptable("snapshot", "i_snapshot_view-active-directory-damaged",
                      "read --snapshot s1 when only the active directory is damaged: it need not be read",
                      ["R-read-1", "R-snap-1", "R-ptr-3"], e.bytes(), ms.logical("s1"), ["cluster.checksum"], ["LazyReader"],
                      snapshot="s1")


# -- item 8: what "kind" means for check -----------------------------------------------------------

def check_kinds(c) -> None:
    # The active directory of base_snap is not shared with s1 (b/one was rewritten after
    # it), so re-pointing b/one changes nothing the snapshot table's checksum covers.
    raw, _ = base_snap(CS)
    e = ed_of(raw)
    old = e.blob_node("b/one").index
    sd = e.find("snapdata").index
    assert len(e.blob_node("b/one").parents) == 1
    lf = e.find("dir", owner="active", level=0).index
    body, kids = entry_kids(e, lf)
    root = entry_named(kids, "b/one").kids[2].kids[1]
    root.content = struct.pack("<QI", sd * CS, fmt.crc32c(bytes(e.data[sd * CS:(sd + 1) * CS]))) + root.content[12:]
    e.set_dir_node(lf, body)
    # Counts as the new references say, so only the clash of kinds is wrong.
    set_count(e, sd, get_count(e, sd) + 1)
    set_count(e, old, 0)
    c.check("corrupt", "k_corrupt_cluster-as-blob-and-snapshot-data",
            "A blob's data pointer names the snapshot table's data cluster (counts adjusted): two kinds of one cluster",
            ["R-check-1", "R-ref-6"], e.bytes(), "corrupt")

    # A map level counts: a level-1 map node of one blob named as the level-2 root of another.
    # "c" sorts first, so check meets the node as level 1 before the clash (and never descends
    # into it as level 2); every count is made to agree, so only the levels are wrong.
    raw, _ = build("map-levels", [put("c", pattern(6 * CS + 1, "c")), write("m/two-level", 20000, pattern(CS + 10, "t"))], CS)
    e = ed_of(raw)
    node = e.blob_node("c", "map").index
    old = [n.index for n in e.nodes.values() if n.info.get("blob") == "m/two-level"]
    lf = e.find("dir", owner="active", level=0).index
    body, kids = entry_kids(e, lf)
    root = entry_named(kids, "m/two-level").kids[2].kids[1]
    root.content = struct.pack("<QI", node * CS, fmt.crc32c(bytes(e.data[node * CS:(node + 1) * CS]))) + root.content[12:]
    e.set_dir_node(lf, body)
    set_count(e, node, get_count(e, node) + 1)
    for i in old:
        set_count(e, i, 0)
    c.check("corrupt", "k_corrupt_map-node-at-two-levels",
            "A blob's depth-2 root names another blob's level-1 map node (counts adjusted): a map level is part of its kind",
            ["R-check-1", "R-ref-6"], e.bytes(), "corrupt")


# -- part 2: a damaged commit slot is reported by check (R-check-3) --------------------------------

def damaged_slots(c) -> None:
    raw, m = base_two_gens(CS)
    K = ["R-check-3", "R-check-1", "R-slot-2"]
    e = ed_of(raw)
    other = 1 - e.layout.slot_index
    for name, fn, desc in [
        ("newer-crc", lambda x: x.poke_raw(x.slot_off + 100, b"\xff"), "The newest slot fails its CRC (torn or tampered)"),
        ("newer-magic", lambda x: x.set_slot("slot_magic", b"NVBXSLOX"), "The newest slot has a wrong magic (CRC valid)"),
        ("newer-parity", lambda x: x.set_slot("generation", x.get_slot("generation") + 1),
         "The newest slot's generation has the wrong parity"),
        ("older-crc", lambda x: x.poke_raw(fmt.SLOT_OFFSETS[other] + 30, b"\x55"), "The older slot fails its CRC"),
    ]:
        x = ed_of(raw)
        fn(x)
        c.check("corrupt", f"k_corrupt_slot-damaged-{name}",
                f"{desc}: the image opens at the other slot and check reports slot.damaged", K, x.bytes(), "corrupt")
    x = ed_of(raw)
    x.poke_raw(x.slot_off, bytes(512))
    c.check("clean", "k_clean_slot-newer-zeroed", "The newest slot is all zeros (never written): nothing to report",
            ["R-check-3", "R-slot-2"], x.bytes(), "clean")
    raw1, _ = build("slot-b-only", [put("a", b"1")], CS)
    x = ed_of(raw1)
    x.poke_raw(fmt.SLOT_OFFSETS[0], bytes(512))
    c.check("clean", "k_clean_slot-a-never-written", "Slot A all zeros, slot B valid: a fresh slot is not damage",
            ["R-check-3"], x.bytes(), "clean")


# -- item 10: writers ------------------------------------------------------------------------------

def writers(c) -> None:
    W = ["R-op-1", "R-commit-1"]
    w = c.write
    C512 = {"cluster_size": 512}
    w("image", "w_image_capacity-suffix-binary", "capacity \"32K\" is 32768 bytes (binary units): a 20000-byte blob fits",
      W + ["R-header-7"], [put("a", pattern(20000, "k"))], create={"cluster_size": 512, "capacity": "32K"})
    w("image", "w_image_capacity-rounded-down", "capacity 40000 bytes (not a multiple of 512) is rounded down to 78 clusters",
      W + ["R-header-7"], [put("a", pattern(30000, "r"))], create={"cluster_size": 512, "capacity": 40000})
    w("image", "w_error_capacity-too-small", "capacity 3072 bytes (6 clusters) cannot hold an image", ["R-op-1", "R-header-7"],
      [], create={"cluster_size": 512, "capacity": 3072}, error="space.exhausted")
    w("image", "w_error_capacity-not-a-size", "capacity \"12Q\" is not a size", ["R-op-1", "R-header-7"], [],
      create={"cluster_size": 512, "capacity": "12Q"}, error="usage.argument")
    w("blob", "w_blob_write-zero-length-past-end", "A zero-length write past the end changes nothing (no extension)",
      W + ["R-map-2"], [put("a", b"ab"), write("a", 100, b"")], create=C512)
    w("blob", "w_blob_write-zero-length-creates", "A zero-length write to a missing blob creates it empty", W,
      [write("new", 100, b"")], create=C512)
    w("snapshot", "w_snapshot_rename-onto-itself", "Renaming a snapshot onto its own name succeeds and changes nothing",
      ["R-op-1", "R-snap-4"], [put("a", b"1"), snap("s"), {"op": "snapshot_rename", "name": "s", "new": "s"}], create=C512)
    w("transaction", "w_error_compact-in-transaction", "compact inside a transaction is refused (it commits on its own)",
      ["R-op-1", "R-compact-1"], [txn(put("a", b"1"), {"op": "compact"})], error="usage.argument")
    w("snapshot", "w_error_snapshot-rename-missing-to-invalid-name",
      "Rename of a missing snapshot onto an empty name: the argument is checked before the lookup", ["R-op-1", "R-snap-4"],
      [{"op": "snapshot_rename", "name": "ghost", "new": ""}], error="snapshot.name")
    w("snapshot", "w_error_snapshot-exists-metadata-1025",
      "A second snapshot of an existing name with 1025 bytes of metadata: the argument is checked first", ["R-op-1", "R-snap-4"],
      [snap("s"), snap("s", bytes(1025))], error="snapshot.metadata")
    w("blob", "w_error_truncate-above-2-48", "Truncate to 2^48 + 1 bytes", ["R-dir-3", "R-limit-1"],
      [put("a", b"1"), truncate("a", (1 << 48) + 1)], error="blob.too_large")
