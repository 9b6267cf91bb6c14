"""The cases of the nvbox conformance corpus, area by area (generate.py runs them, then
crash_gen.py, cases_settled.py and cases_crypto.py).

Naming: the leaf name starts with the expectation (y_ valid, n_ invalid,
i_ implementation-defined, k_ check, w_ write, r_ roundtrip, c_ crash), then
the area and the single fault or behaviour.  Ids are stable: never rename a
case, add a new one and retire the old in CHANGES.md.
"""

from __future__ import annotations

import struct

from nvbox import _der as der
from nvbox import _format as fmt

from conformance.builders import (
    Model, base, base_deep, base_refdepth2, base_snap, base_sparse, base_two_gens, build, delete, pattern, put, snap,
    truncate, txn, write,
)
from conformance.corrupt import TLV, Editor, crc_fixpoint, encode_tlv

CS = 512


def _memo_simple(fn):
    cache = []

    def w():
        if not cache:
            cache.append(fn())
        return cache[0]
    return w


def all_cases(c) -> None:
    read_valid(c)
    header_invalid(c)
    slot_invalid(c)
    feature_cases(c)
    pointer_invalid(c)
    checksum_invalid(c)
    der_invalid(c)
    directory_invalid(c)
    map_invalid(c)
    snapshot_invalid(c)
    truncation_invalid(c)
    acceptable(c)
    check_cases(c)
    write_cases(c)
    roundtrip_cases(c)


# -- small helpers ---------------------------------------------------------------------------

def ed_of(raw) -> Editor:
    return Editor(raw)


def leaf_of(ed: Editor, owner="active") -> int:
    return ed.find("dir", owner=owner, level=0).index


def entry_kids(ed: Editor, leaf: int):
    body = ed.dir_body(leaf)
    return body, body.kids


def entry_named(kids, name: str) -> TLV:
    for e in kids:
        if e.kids[0].content == name.encode():
            return e
    raise LookupError(name)


def ext(ext_type: int, flags: int, data: bytes, length: int | None = None, pad: bytes | None = None) -> bytes:
    length = len(data) if length is None else length
    padded = (len(data) + 7) // 8 * 8
    pad = bytes(padded - len(data)) if pad is None else pad
    return struct.pack("<HHI", ext_type, flags, length) + data + pad


END = bytes(8)
CREATOR = ext(1, 0, b"nvbox-reference 1.0")


def single(cs=1024, name="x", data=b"hello"):
    return build(f"single-{cs}-{name}-{len(data)}", [put(name, data)], cs)


def int_tlv(value: int) -> bytes:
    return value.to_bytes(value.bit_length() // 8 + 1, "big")


# -- read-valid ------------------------------------------------------------------------------

def read_valid(c) -> None:
    for cs in (512, 1024, 2048, 4096):
        raw, m = base(cs)
        c.read_valid("cluster", f"y_cluster_{cs}-mixed-blobs",
                     f"An image with {cs}-byte clusters holding inline, one-cluster, multi-cluster and empty blobs",
                     ["R-conv-2", "R-conv-3", "R-conv-4", "R-header-5", "R-dir-1", "R-dir-3", "R-map-1", "R-ref-5"],
                     raw, m.logical())
    raw, m = build("big-8192", [put("a/inline", pattern(1024, "a8")), put("b/two", pattern(8200, "b8")), put("c", b"")], 8192)
    c.read_valid("cluster", "y_cluster_8192-inline-1024", "8192-byte clusters: a 1024-byte inline blob (inline_max caps at 1024) "
                 "and a two-cluster blob", ["R-conv-2", "R-dir-3", "R-map-1"], raw, m.logical())
    for cs in (512, 4096):
        raw, m = build(f"empty-{cs}", [], cs)
        c.read_valid("image", f"y_image_empty--c{cs}", "A freshly created image with no blobs and no snapshots",
                     ["R-header-1", "R-slot-1", "R-slot-3", "R-ref-3", "R-dir-1"], raw, m.logical())
    im = CS // 8
    for n, size in (("inline-max", im), ("inline-max-plus-one", im + 1), ("empty", 0), ("one-byte", 1),
                    ("one-cluster", CS), ("one-cluster-plus-one", CS + 1)):
        raw, m = build(f"blob-{n}", [put("blob", pattern(size, n))], CS)
        c.read_valid("blob", f"y_blob_{n}", f"A blob of {size} bytes (inline_max is {im})",
                     ["R-dir-3", "R-map-1"], raw, m.logical())

    def clustered_small(img):
        from nvbox._tree import Blob
        with img._change():
            name, key, path, leaf, i, found = img._leaf_for("small/clustered")
            blob = Blob(name, 0, None, key=key)
            img.trees.map_write(blob, 0, b"short but clustered")
            leaf.items.insert(i, blob)
            img.state.blob_count += 1
            img.trees.dir_fix(img.state, path)
    raw, m = build("small-clustered", [put("other", b"inline")], CS, hook=clustered_small)
    m.blobs["small/clustered"] = b"short but clustered"
    c.read_valid("blob", "y_blob_small-stored-clustered",
                 "A blob that fits inline but is stored in a data cluster (inline is a MAY for writers)",
                 ["R-dir-3"], raw, m.logical(), flags=["InlineThreshold"])
    raw, m = base_sparse(CS, 20000)
    c.read_valid("map", "y_map_sparse-depth-2", "A sparse blob with a depth-2 cluster map whose first subtree is a hole",
                 ["R-map-1", "R-map-2"], raw, m.logical())
    raw, m = base_sparse(CS, 600000)
    c.read_valid("map", "y_map_sparse-depth-3", "A sparse blob of 600 KB with a depth-3 cluster map and few clusters",
                 ["R-map-1", "R-map-2"], raw, m.logical())
    raw, m = build("map-full-level-1", [put("full", pattern(32 * CS, "full"))], CS)
    c.read_valid("map", "y_map_full-level-1-node", "A blob of exactly F clusters: a full level-1 map node",
                 ["R-map-1"], raw, m.logical())
    raw, m = build("map-all-hole", [put("h", b""), truncate("h", 3000)], CS)
    c.read_valid("map", "y_map_all-hole", "A blob extended by truncate: size 3000, no cluster allocated (null root)",
                 ["R-map-2"], raw, m.logical())
    raw, m = build("map-tail-zero", [put("t", pattern(CS + 7, "t"))], CS)
    c.read_valid("map", "y_map_partial-last-cluster", "The last data cluster is partly used and zero after the size",
                 ["R-map-3"], raw, m.logical())
    for n in (20, 60, 150):
        raw, m = base_deep(CS, n)
        c.read_valid("directory", f"y_dir_{n}-blobs--c512", f"{n} small blobs in 512-byte clusters: a multi-level directory",
                     ["R-dir-1", "R-dir-2", "R-dir-5"], raw, m.logical())
    names = ["é", "日本語/状態", "emoji/\U0001F600", "combining/e\u0301", "space name", "a/b/c/d/e/f", "\u00ff" * 3,
             "tab\tname", "x" * 10]
    raw, m = build("unicode-names", [put(n, n.encode()) for n in names], CS)
    c.read_valid("name", "y_name_unicode", "Blob names with multi-byte UTF-8, combining marks and control characters",
                 ["R-dir-3", "R-dir-9"], raw, m.logical())
    long1 = "n" * 255
    long2 = "é" * 127 + "z"   # 255 bytes
    raw, m = build("max-names", [put(long1, b"a"), put(long2, pattern(100, "l2"))], 1024)
    c.read_valid("name", "y_name_max-length-255-bytes", "Blob names of exactly 255 bytes, ASCII and multi-byte",
                 ["R-dir-3"], raw, m.logical())
    raw, m = build("one-byte-name", [put("a", b"1"), put("\x7f", b"2")], CS)
    c.read_valid("name", "y_name_one-byte", "One-byte blob names", ["R-dir-3"], raw, m.logical())

    raw, m = base_snap(CS)
    c.read_valid("snapshot", "y_snapshot_one-with-metadata", "One snapshot with metadata, the active state changed since",
                 ["R-snap-1", "R-snap-5", "R-cow-2", "R-ref-5"], raw, m.logical())
    c.read_valid("snapshot", "y_snapshot_view", "Reading through a snapshot (--snapshot s1)",
                 ["R-snap-1"], raw, m.logical("s1"), snapshot="s1")
    ops = [snap("empty"), put("x", b"1")]
    raw, m = build("snap-empty", ops, CS)
    c.read_valid("snapshot", "y_snapshot_of-empty-image", "A snapshot of an empty directory (null dirRoot, depth 0)",
                 ["R-snap-1", "R-snap-5"], raw, m.logical())
    ops = [put("v", b"1"), snap("a"), put("v", b"2"), snap("b", b""), put("v", b"3"), snap("c", pattern(1024, "m")),
           put("w", pattern(700, "w"))]
    raw, m = build("snap-three", ops, CS)
    c.read_valid("snapshot", "y_snapshot_three-metadata-max", "Three snapshots: no metadata, empty metadata, 1024 bytes",
                 ["R-snap-1", "R-snap-4", "R-snap-5"], raw, m.logical())
    ops = base_ops_small() + [snap("s1"), put("p", b"changed"), {"op": "snapshot_revert", "name": "s1"}]
    raw, m = build("snap-revert", ops, CS)
    c.read_valid("snapshot", "y_snapshot_after-revert", "The active state after reverting to a snapshot",
                 ["R-snap-2", "R-cow-3"], raw, m.logical())
    ops = base_ops_small() + [snap("s1"), put("p", b"2"), snap("s2"), put("p", b"3"), snap("s3"),
                              {"op": "snapshot_delete", "name": "s2"}, {"op": "snapshot_rename", "name": "s3", "new": "late"}]
    raw, m = build("snap-delete-rename", ops, CS)
    c.read_valid("snapshot", "y_snapshot_after-delete-and-rename", "Snapshot ids with a gap after a delete, and a renamed record",
                 ["R-snap-3", "R-snap-5"], raw, m.logical())
    ops = [put("v", b"0")] + [snap(f"snapshot-number-{i:02d}", pattern(20, str(i))) for i in range(12)]
    raw, m = build("snap-table-two-clusters", ops, CS)
    c.read_valid("snapshot", "y_snapshot_table-spans-clusters", "A snapshot table larger than one cluster (snaptable_depth 1)",
                 ["R-snap-5", "R-map-1"], raw, m.logical())
    ops = [put("v", b"0"), snap("snäpshot/日本"), put("v", b"1")]
    raw, m = build("snap-unicode", ops, CS)
    c.read_valid("snapshot", "y_snapshot_unicode-name", "A snapshot name in multi-byte UTF-8", ["R-snap-4"], raw, m.logical())

    ops = [put(f"blob{i}", pattern(100 + 37 * i, f"del{i}")) for i in range(12)] + [delete(f"blob{i}") for i in range(0, 12, 2)]
    raw, m = build("after-deletes", ops, CS)
    c.read_valid("image", "y_image_after-deletes", "An image after half its blobs were deleted (free clusters inside)",
                 ["R-cow-3", "R-alloc-1", "R-alloc-2"], raw, m.logical())
    ops2 = ops + [snap("keep"), delete("blob1"), {"op": "compact"}]
    raw, m = build("after-compact", ops2, CS)
    c.read_valid("image", "y_image_after-compaction", "An image after deletes and compaction",
                 ["R-compact-1", "R-alloc-5"], raw, m.logical())
    ops = [put("p", pattern(3000, "pw")), write("p", 100, b"middle"), write("p", 2990, pattern(50, "ext")),
           truncate("p", 1500), write("q", 10, b"created by a write"), truncate("q", 2000)]
    raw, m = build("after-partial-writes", ops, CS)
    c.read_valid("image", "y_image_after-partial-writes-and-truncates", "Partial writes, extension and truncation",
                 ["R-map-2", "R-map-3", "R-cow-1"], raw, m.logical())
    ops = [txn(put("a", b"1"), put("b", pattern(900, "tb")), delete("a"), put("c", b"3"))]
    raw, m = build("after-txn", ops, CS)
    c.read_valid("image", "y_image_after-transaction", "The state after one multi-operation transaction",
                 ["R-commit-1"], raw, m.logical())
    raw, m = build("fixed-capacity", [put("a", pattern(2000, "cap"))], CS, capacity=40 * CS)
    c.read_valid("image", "y_image_fixed-capacity", "A fixed-capacity image (capacity_clusters set, file preallocated)",
                 ["R-header-7", "R-conv-6", "R-alloc-3"], raw, m.logical())
    raw, m = base(CS)
    c.read_valid("image", "y_image_trailing-bytes", "Bytes past image_clusters * cluster_size are ignored",
                 ["R-conv-6"], raw + pattern(1000, "junk"), m.logical(), flags=["TrailingBytes"])
    c.read_valid("image", "y_image_trailing-zero-clusters", "A file longer than the image by whole zero clusters",
                 ["R-conv-6"], raw + bytes(4 * CS), m.logical(), flags=["TrailingBytes"])
    raw, m = base_refdepth2(CS)
    c.read_valid("refcount", "y_refcount_depth-2", "A refcount tree of depth 2 (index node over one block)",
                 ["R-ref-1", "R-ref-2", "R-alloc-5"], raw, m.logical())

    # slots
    raw, m = base_two_gens(CS)
    c.read_valid("slot", "y_slot_both-valid-newer-wins", "Both slots valid: the higher generation is used",
                 ["R-slot-1", "R-slot-3"], raw, m.logical())
    older = older_model(m)
    ed = ed_of(raw)
    ed.poke_raw(ed.slot_off + 100, b"\xff")   # torn: CRC no longer matches
    c.read_valid("slot", "y_slot_newer-torn-older-valid", "The newer slot fails its CRC (torn write); the older slot is used",
                 ["R-slot-2", "R-slot-3", "R-commit-1", "R-commit-3"], ed.bytes(), older.logical())
    ed = ed_of(raw)
    ed.poke_raw(ed.slot_off, bytes(512))
    c.read_valid("slot", "y_slot_newer-zeroed-older-valid", "The newer slot is all zeros (lost write); the older slot is used",
                 ["R-slot-2", "R-slot-3"], ed.bytes(), older.logical())
    ed = ed_of(raw)
    ed.set_slot("slot_magic", b"NVBXSLOX")
    c.read_valid("slot", "y_slot_newer-bad-magic-older-valid", "The newer slot has a wrong magic; the older slot is used",
                 ["R-slot-2", "R-slot-3"], ed.bytes(), older.logical())
    ed = ed_of(raw)
    gen = ed.get_slot("generation")
    ed.set_slot("generation", gen + 1)  # wrong parity for its slot
    c.read_valid("slot", "y_slot_newer-wrong-parity-older-valid",
                 "The newer slot's generation has the wrong parity for its position; the older slot is used",
                 ["R-slot-1", "R-slot-2", "R-slot-3"], ed.bytes(), older.logical())
    ed = ed_of(raw)
    other = 1 - ed.layout.slot_index
    ed.poke_raw(fmt.SLOT_OFFSETS[other] + 30, b"\x55")
    c.read_valid("slot", "y_slot_older-damaged-newer-valid", "The older slot is damaged; the newer one is used",
                 ["R-slot-3"], ed.bytes(), m.logical())
    ed = ed_of(raw)
    ed.set_slot("incompatible_features", 1 << 40, slot=other)
    c.read_valid("slot", "y_slot_older-unknown-incompat-bit", "Only the older slot has an unknown incompatible bit; it is never used",
                 ["R-slot-3", "R-feature-1"], ed.bytes(), m.logical())
    ed = ed_of(raw)
    ed.set_slot("generation", ed.get_slot("generation") + 1000)
    c.read_valid("slot", "y_slot_generation-gap", "The newer generation is 1000 more than the older (a gap is allowed)",
                 ["R-slot-1", "R-slot-3"], ed.bytes(), m.logical(), flags=["GenerationGap"])
    raw1, m1 = build("slot-b-only", [put("a", b"1")], CS)   # generation 2 in slot B, 1 in A
    ed = ed_of(raw1)
    ed.poke_raw(fmt.SLOT_OFFSETS[0], bytes(512))
    c.read_valid("slot", "y_slot_a-empty-b-valid", "Slot A never written (zeros), slot B holds generation 2",
                 ["R-slot-1", "R-slot-2"], ed.bytes(), m1.logical())
    ed = ed_of(raw)
    ed.set_slot("alloc_hint", 0)
    c.read_valid("slot", "y_slot_alloc-hint-zero", "alloc_hint 0 says nothing and is always correct",
                 ["R-alloc-6"], ed.bytes(), m.logical())

    # header
    raw, m = base(CS)
    ed = ed_of(raw)
    ed.set_extensions(CREATOR + ext(0x1234, 0, b"\xc0\xff\xee") + END)
    c.read_valid("header", "y_header_unknown-extension", "An unknown header extension without the required flag is ignored",
                 ["R-header-10", "R-header-12"], ed.bytes(), m.logical())
    ed = ed_of(raw)
    ed.set_extensions(END)
    c.read_valid("header", "y_header_no-extensions", "The extension area holds only the end record",
                 ["R-header-10"], ed.bytes(), m.logical())
    ed = ed_of(raw)
    ed.set_extensions(ext(0xFFFF, 0, b"") + ext(7, 0, pattern(13, "e7")) + ext(1, 0, b"x" * 64) + END)
    c.read_valid("header", "y_header_several-extensions", "Several extensions: an empty one, padding, a 64-byte creator",
                 ["R-header-10", "R-header-12"], ed.bytes(), m.logical())
    ed = ed_of(raw)
    ed.set_header("header_length", 136, reseal=False)
    ed.data[128:136] = bytes(8)
    ed.set_extensions(CREATOR + END)
    c.read_valid("header", "y_header_length-136", "header_length 136: a later version's zero fields before the extensions",
                 ["R-header-4"], ed.bytes(), m.logical())
    ed = ed_of(raw)
    ed.set_header("header_length", 496, reseal=False)
    ed.data[128:496] = bytes(368)
    ed.set_extensions(END)
    c.read_valid("header", "y_header_length-496-end-at-500", "header_length 496: the end record ends exactly at byte 504",
                 ["R-header-4", "R-header-10"], ed.bytes(), m.logical())
    ed = ed_of(raw)
    area = CREATOR + ext(9, 0, bytes(500 - 128 - len(CREATOR) - 8 - 8)) + END
    ed.set_extensions(area)
    c.read_valid("header", "y_header_extensions-fill-to-508", "Extension records fill the header up to byte 508",
                 ["R-header-10"], ed.bytes(), m.logical())
    ed = ed_of(raw)
    ed.set_header("create_time", 0)
    c.read_valid("header", "y_header_create-time-zero", "create_time is informational: 0 is fine", ["R-header-1"],
                 ed.bytes(), m.logical())

    # directory extension fields (R-dir-4)
    raw, m = base(CS)
    ed = ed_of(raw)
    leaf = leaf_of(ed)
    body, kids = entry_kids(ed, leaf)
    e = entry_named(kids, "b/one")
    e.kids += [TLV(0x82, b"\x01\x02"), TLV(0xBE, kids=[TLV(0x02, b"\x05")])]
    ed.set_dir_node(leaf, body)
    c.read_valid("directory", "y_dir_entry-extension-fields", "A DirEntry with unknown extension fields [2] and [30] (ignored)",
                 ["R-dir-4", "R-der-1"], ed.bytes(), m.logical())
    raw, m = base_snap(CS)
    ed = ed_of(raw)
    t = ed.snapshot_table()
    t.kids[0].kids.append(TLV(0x81, b"\xaa"))
    ed.set_snapshot_table(encode_tlv(t))
    c.read_valid("snapshot", "y_snapshot_record-extension-field", "A snapshot record with an unknown extension field [1]",
                 ["R-dir-4", "R-snap-5"], ed.bytes(), m.logical())
    raw, m = build("long-form-length", [put("l", pattern(128, "ll"))], 1024)
    c.read_valid("der", "y_der_long-form-length", "DER long-form lengths (0x81 0x80) for a 128-byte inline blob",
                 ["R-der-1"], raw, m.logical())

    # features
    raw, m = base(CS)
    for bit in (0, 17, 63):
        ed = ed_of(raw)
        ed.set_slot("compatible_features", 1 << bit)
        c.read_valid("feature", f"y_feature_unknown-compatible-bit-{bit}", f"Unknown compatible feature bit {bit} is ignored",
                     ["R-feature-2"], ed.bytes(), m.logical(), flags=["UnknownCompatBit"])
    for bit in (0, 63):
        ed = ed_of(raw)
        ed.set_slot("autoclear_features", 1 << bit)
        c.read_valid("feature", f"y_feature_unknown-autoclear-bit-{bit}", f"Unknown autoclear feature bit {bit} may be ignored by a reader",
                     ["R-feature-3"], ed.bytes(), m.logical(), flags=["UnknownAutoclearBit"])


def base_ops_small():
    return [put("p", b"1"), put("q", pattern(700, "q"))]


def older_model(m: Model) -> Model:
    o = m.copy()
    del o.blobs["z/last"]
    return o


# -- header ------------------------------------------------------------------------------

def header_invalid(c) -> None:
    raw, m = base(CS)
    H = ["R-header-9"]
    ed = ed_of(raw); ed.poke_raw(0, b"\x89")
    c.read_invalid("header", "n_header_magic-first-byte", "The first magic byte is wrong", ["R-header-2"] + H, ed.bytes(), "header.magic")
    ed = ed_of(raw); ed.set_header("magic", b"\x8aNVB\n\x1a\n\x00")
    c.read_invalid("header", "n_header_magic-text-mode", "The magic mangled by a CRLF->LF transfer", ["R-header-2"], ed.bytes(), "header.magic")
    c.read_invalid("header", "n_header_not-nvbox", "A file of 4096 bytes of text", ["R-header-2"], (b"hello world\n" * 342)[:4096], "header.magic")
    ed = ed_of(raw); ed.poke_raw(508, b"\x00\x00\x00\x00")
    c.read_invalid("header", "n_header_checksum-zero", "header_crc is zero", ["R-header-8"], ed.bytes(), "header.checksum")
    ed = ed_of(raw); ed.poke_raw(60, b"\x01")
    c.read_invalid("header", "n_header_checksum-reserved-flip", "A bit of reserved1 flipped without updating header_crc",
                   ["R-header-8"] + H, ed.bytes(), "header.checksum")
    ed = ed_of(raw); ed.set_header("version", 2, reseal=False)
    c.read_invalid("header", "n_header_checksum-before-version", "version 2 with the old CRC: the CRC is checked before the version",
                   H, ed.bytes(), "header.checksum")
    ed = ed_of(raw); ed.poke_raw(0, b"X"); ed.poke_raw(60, b"\x01")
    c.read_invalid("header", "n_header_magic-before-checksum", "A wrong magic and a wrong CRC: the magic is checked first",
                   H, ed.bytes(), "header.magic")
    for v in (0, 2, 0xFFFFFFFF):
        ed = ed_of(raw); ed.set_header("version", v)
        c.read_invalid("header", f"n_header_version-{v}", f"version {v}", ["R-header-3"], ed.bytes(), "header.version")
    for hl in (120, 129, 132, 512, 0):
        ed = ed_of(raw); ed.set_header("header_length", hl)
        c.read_invalid("header", f"n_header_length-{hl}", f"header_length {hl} (must be a multiple of 8 in 128..504)",
                       ["R-header-4"], ed.bytes(), "header.field")
    ed = ed_of(raw); ed.set_header("header_length", 504, reseal=False); ed.data[128:504] = bytes(376); ed.reseal_header()
    c.read_invalid("header", "n_header_length-504-no-room-for-end", "header_length 504 leaves no room for the end record before byte 508",
                   ["R-header-4", "R-header-10"], ed.bytes(), "header.extension")
    for cb in (0, 8, 22, 255):
        ed = ed_of(raw); ed.set_header("cluster_bits", cb)
        c.read_invalid("header", f"n_header_cluster-bits-{cb}", f"cluster_bits {cb} (must be 9..21)", ["R-header-5", "R-conv-2"],
                       ed.bytes(), "header.cluster_size")
    for ro in (3, 5, 0):
        ed = ed_of(raw); ed.set_header("refcount_order", ro)
        c.read_invalid("header", f"n_header_refcount-order-{ro}", f"refcount_order {ro} (must be 4)", ["R-header-6"], ed.bytes(), "header.field")
    ed = ed_of(raw); ed.set_header("reserved0", 1)
    c.read_invalid("header", "n_header_reserved0", "reserved0 non-zero", ["R-conv-5"], ed.bytes(), "header.field")
    ed = ed_of(raw); ed.set_header("header_flags", 1 << 31)
    c.read_invalid("header", "n_header_flags", "header_flags non-zero", ["R-conv-5"], ed.bytes(), "header.field")
    ed = ed_of(raw); ed.poke(100, b"\x01")
    c.read_invalid("header", "n_header_reserved1", "A byte of reserved1 (56..header_length) non-zero", ["R-conv-5"], ed.bytes(), "header.field")
    for cap in (1, 5):
        ed = ed_of(raw); ed.set_header("capacity_clusters", cap)
        c.read_invalid("header", f"n_header_capacity-{cap}", f"capacity_clusters {cap}, below header_clusters + 2",
                       ["R-header-7"], ed.bytes(), "header.field")
    # extensions
    cases = [
        ("no-end-record", CREATOR + ext(9, 0, bytes(500 - 128 - len(CREATOR) - 8)), "header.extension",
         "The extension records run to byte 508 without an end record"),
        ("bytes-after-end", CREATOR + END + b"\x01", "header.extension", "A non-zero byte after the end record"),
        ("end-record-length", CREATOR + struct.pack("<HHI", 0, 0, 4) + bytes(8), "header.extension", "An end record with a non-zero length"),
        ("end-record-flags", CREATOR + struct.pack("<HHI", 0, 1, 0), "header.extension", "An end record with a non-zero flag"),
        ("reserved-flag-bit", ext(0x1234, 2, b"abc") + END, "header.extension", "An extension with reserved flag bit 1 set"),
        ("runs-past-header", CREATOR + ext(9, 0, b"", length=400), "header.extension", "An extension whose length runs past byte 508"),
        ("nonzero-padding", ext(0x1234, 0, b"abc", pad=b"\x00\x00\x00\x00\x07") + END, "header.extension", "Non-zero padding after extension data"),
        ("required-unknown", CREATOR + ext(0x1234, 1, b"must know") + END, "header.extension_required", "An unknown extension marked required"),
        ("creator-not-utf8", ext(1, 0, b"\xff\xfe bad") + END, "header.extension", "A creator extension that is not UTF-8"),
        ("creator-65-bytes", ext(1, 0, b"c" * 65) + END, "header.extension", "A creator extension of 65 bytes (at most 64)"),
    ]
    for name, area, code, desc in cases:
        ed = ed_of(raw); ed.set_extensions(area)
        spec = ["R-header-11"] if "required" in code or "flag" in name else ["R-header-10"]
        if name.startswith("creator"):
            spec = ["R-header-12"]
        c.read_invalid("header", f"n_header_ext-{name}", desc, spec, ed.bytes(), code)


# -- slots -------------------------------------------------------------------------------

def slot_invalid(c) -> None:
    raw, m = base(CS)     # slot A gen 1 was overwritten? base has several commits: both slots valid
    ed = ed_of(raw)
    act, oth = ed.layout.slot_index, 1 - ed.layout.slot_index

    def both(fn, name, desc, spec):
        e = ed_of(raw)
        fn(e, act)
        fn(e, oth)
        c.read_invalid("slot", name, desc, spec, e.bytes(), "slot.none_valid")

    both(lambda e, i: e.poke_raw(fmt.SLOT_OFFSETS[i] + 100, b"\x77"), "n_slot_both-bad-crc", "Both commit slots fail their CRC",
         ["R-slot-2", "R-slot-3"])
    both(lambda e, i: e.poke_raw(fmt.SLOT_OFFSETS[i], bytes(512)), "n_slot_both-zero", "Both commit slots are all zeros",
         ["R-slot-2", "R-slot-3"])
    both(lambda e, i: e.set_slot("slot_magic", b"nvbxslot", slot=i), "n_slot_both-bad-magic", "Both slots have a wrong magic (CRC valid)",
         ["R-slot-2", "R-slot-3"])
    both(lambda e, i: e.set_slot("generation", e.get_slot("generation", i) + 1, slot=i), "n_slot_both-wrong-parity",
         "Both slots' generations have the wrong parity (CRC valid)", ["R-slot-1", "R-slot-2", "R-slot-3"])
    both(lambda e, i: e.set_slot("generation", 0, slot=i), "n_slot_both-generation-zero", "Both slots have generation 0 (CRC valid)",
         ["R-slot-2", "R-slot-3"])
    # one valid slot whose trees are damaged: no fall back
    raw2, m2 = base_two_gens(CS)
    e = ed_of(raw2)
    leaf = leaf_of(e)
    e.poke_raw(leaf * CS + 40, b"\x00\x01")
    c.read_invalid("slot", "n_slot_newer-tree-damaged-no-fallback",
                   "The newer slot is valid but its directory fails its checksum: no fall back to the older slot",
                   ["R-slot-4", "R-ptr-3"], e.bytes(), "cluster.checksum")
    # slot fields (R-slot-5)
    fields = [
        ("reserved0", lambda e: e.set_slot("reserved0", 1), "reserved0 non-zero"),
        ("reserved1", lambda e: e.poke(e.slot_off + 300, b"\x01"), "a byte of reserved1 non-zero"),
        ("slot-mac-in-plain-image", lambda e: e.poke(e.slot_off + 480, b"\x01"), "slot_mac non-zero in a plain image"),
        ("bytes-after-root-pointer", lambda e: e.poke(e.slot_off + 128 + 20, b"\x01"), "a non-zero byte after dir_root's 16 bytes"),
        ("bytes-after-keyslots", lambda e: e.poke(e.slot_off + 230, b"\x01"), "a non-zero byte after the keyslots pointer"),
        ("root-pointer-reserved", lambda e: e.poke(e.slot_off + 88 + 12, b"\x01"), "refcount_root's reserved bytes non-zero"),
        ("image-clusters-zero", lambda e: e.set_slot("image_clusters", 0), "image_clusters 0"),
        ("image-clusters-header-only", lambda e: e.set_slot("image_clusters", 4), "image_clusters equals header_clusters"),
        ("image-clusters-above-2-40", lambda e: e.set_slot("image_clusters", (1 << 40) + 1), "image_clusters above 2^40"),
        ("refcount-depth-0", lambda e: e.set_slot("refcount_depth", 0), "refcount_depth 0"),
        ("refcount-depth-7", lambda e: e.set_slot("refcount_depth", 7), "refcount_depth 7"),
        ("dir-depth-17", lambda e: e.set_slot("dir_depth", 17), "dir_depth 17"),
        ("dir-depth-0-root-set", lambda e: e.set_slot("dir_depth", 0), "dir_depth 0 with a non-null dir_root"),
        ("dir-root-null-depth-1", lambda e: e.set_slot("dir_root", bytes(40)), "dir_depth 1 with a null dir_root"),
        ("snapshot-count-1025", lambda e: e.set_slot("snapshot_count", 1025), "snapshot_count 1025"),
        ("snapshot-count-without-table", lambda e: e.set_slot("snapshot_count", 1), "snapshot_count 1 with snaptable_size 0"),
        ("snaptable-size-without-count", lambda e: e.set_slot("snaptable_size", 10), "snaptable_size 10 with snapshot_count 0"),
        ("snaptable-depth-mismatch", lambda e: e.set_slot("snaptable_depth", 1), "snaptable_depth 1 for an empty table"),
        ("next-snapshot-id-0", lambda e: e.set_slot("next_snapshot_id", 0), "next_snapshot_id 0"),
        ("alloc-hint-past-end", lambda e: e.set_slot("alloc_hint", e.get_slot("image_clusters") + 1), "alloc_hint above image_clusters"),
        ("refcount-root-null", lambda e: e.set_slot("refcount_root", bytes(40)), "refcount_root null"),
        ("keyslots-in-plain-image", lambda e: e.set_slot("keyslots", struct.pack("<QI", 4 * CS, 0) + bytes(4)),
         "a keyslots pointer in a plain image"),
    ]
    for name, fn, desc in fields:
        e = ed_of(raw)
        fn(e)
        spec = ["R-slot-5"]
        if "refcount" in name:
            spec.append("R-ref-2") if "depth" in name else None
        if name.startswith("snap"):
            spec.append("R-snap-5")
        if "reserved" in name or "mac" in name or "bytes-after" in name:
            spec.append("R-conv-5")
        if "alloc-hint" in name:
            spec.append("R-alloc-6")
        c.read_invalid("slot", f"n_slot_field-{name}", f"The active slot has {desc}", spec, e.bytes(), "slot.field")
    raws, ms = base_snap(CS)
    for name, fn, desc in [
        ("snaptable-size-above-2mib", lambda e: e.set_slot("snaptable_size", (2 << 20) + 1), "snaptable_size above 2 MiB"),
        ("snaptable-root-null", lambda e: e.set_slot("snaptable_root", bytes(40)), "a null snaptable_root with a non-zero snaptable_size"),
    ]:
        e = ed_of(raws)
        fn(e)
        c.read_invalid("slot", f"n_slot_field-{name}", f"The active slot has {desc}", ["R-slot-5", "R-snap-5"], e.bytes(),
                       "slot.field", notes="snaptable_root is null iff snaptable_size is 0 (section 4), a slot field rule "
                       "checked before any pointer is followed (R-slot-5)." if "null" in name else None)
    rawf, mf = build("fixed-capacity", [put("a", pattern(2000, "cap"))], CS, capacity=40 * CS)
    e = ed_of(rawf)
    e.set_header("capacity_clusters", e.get_slot("image_clusters") - 1)
    c.read_invalid("slot", "n_slot_image-clusters-above-capacity", "image_clusters exceeds the header's capacity_clusters",
                   ["R-header-7", "R-slot-5"], e.bytes(), "slot.field")


# -- features ------------------------------------------------------------------------------

def feature_cases(c) -> None:
    raw, m = base(CS)
    for bit in (1, 2, 31, 63):
        ed = ed_of(raw)
        ed.set_slot("incompatible_features", 1 << bit)
        c.read_invalid("feature", f"n_feature_unknown-incompatible-bit-{bit}", f"Unknown incompatible feature bit {bit}",
                       ["R-feature-1", "R-slot-5"], ed.bytes(), "feature.incompatible")
    ed = ed_of(raw)
    ed.set_slot("incompatible_features", 1 << 5)
    ed.set_slot("compatible_features", 1 << 5)
    ed.set_slot("autoclear_features", 1 << 5)
    c.read_invalid("feature", "n_feature_incompatible-among-others", "Unknown bits in all three masks: the incompatible one wins",
                   ["R-feature-1", "R-feature-2", "R-feature-3"], ed.bytes(), "feature.incompatible")
    # Two rules broken in one slot: the first in R-slot-7's order is the error.
    for name, edits, desc, code in [
        ("feature-before-field", [("incompatible_features", 1 << 5), ("dir_depth", 17)],
         "an unknown incompatible feature and dir_depth 17", "feature.incompatible"),
        ("feature-before-pointer", [("incompatible_features", 1 << 5), ("dir_root", struct.pack("<QI", 10 * CS + 8, 0) + bytes(4))],
         "an unknown incompatible feature and a misaligned dir_root", "feature.incompatible"),
        ("field-before-pointer", [("dir_depth", 17), ("dir_root", struct.pack("<QI", 10 ** 5 * CS, 0) + bytes(4))],
         "dir_depth 17 and a dir_root past the end", "slot.field"),
    ]:
        ed = ed_of(raw)
        for field, value in edits:
            ed.set_slot(field, value)
        c.read_invalid("slot", f"n_slot_order-{name}", f"The active slot has {desc}: the first rule in order is reported",
                       ["R-slot-7", "R-slot-5"], ed.bytes(), code)


# -- pointers ------------------------------------------------------------------------------

def pointer_invalid(c) -> None:
    raw, m = base(CS)
    ed = ed_of(raw)
    ic = ed.layout.slot.image_clusters
    mapn = ed.blob_node("c/multi", "map").index
    data_b = ed.blob_node("b/one").index
    leaf = leaf_of(ed)
    P = "R-ptr-2"

    def map_ptr(value_fn, name, desc, code, spec=(P,), j=0):
        e = ed_of(raw)
        off = mapn * CS + j * 16
        cur = bytes(e.data[off:off + 16])
        e.poke(off, value_fn(cur))
        c.read_invalid("pointer", name, desc, list(spec), e.bytes(), code)

    def with_offset(new):
        return lambda cur: struct.pack("<Q", new) + cur[8:]

    cur_off = struct.unpack_from("<Q", raw, mapn * CS)[0]
    map_ptr(lambda cur: cur[:12] + b"\x01\x00\x00\x00", "n_pointer_map-reserved", "A map-node pointer with non-zero reserved bytes", "pointer.reserved")
    map_ptr(with_offset(cur_off + 8), "n_pointer_map-misaligned", "A map-node pointer not aligned to a cluster", "pointer.misaligned")
    map_ptr(with_offset(cur_off + 1), "n_pointer_map-misaligned-by-one", "A map-node pointer one byte off", "pointer.misaligned")
    map_ptr(with_offset(ic * CS), "n_pointer_map-past-end", "A map-node pointer to cluster image_clusters (one past the end)", "pointer.out_of_range")
    map_ptr(with_offset(1 * CS), "n_pointer_map-into-header", "A map-node pointer to cluster 1, inside the header area", "pointer.out_of_range",
            spec=(P, "R-conv-3"))
    map_ptr(with_offset((1 << 40) * CS), "n_pointer_map-far-past-end", "A map-node pointer to cluster 2^40", "pointer.out_of_range",
            spec=(P, "R-limit-1"))
    map_ptr(with_offset((2 ** 64 - 1) // CS * CS), "n_pointer_map-offset-max", "A map-node pointer with offset near 2^64", "pointer.out_of_range",
            spec=(P, "R-limit-1"))

    # pointers inside directory entries (DER octet strings)
    def entry_ptr(value_fn, name, desc, code, blob="b/one"):
        e = ed_of(raw)
        body, kids = entry_kids(e, leaf)
        ent = entry_named(kids, blob)
        root = ent.kids[2].kids[1]
        root.content = value_fn(root.content)
        e.set_dir_node(leaf, body)
        c.read_invalid("pointer", name, desc, [P], e.bytes(), code)

    cur_b = data_b * CS
    entry_ptr(lambda p: p[:12] + b"\x00\x00\x00\x80", "n_pointer_entry-reserved", "A blob root pointer with non-zero reserved bytes", "pointer.reserved")
    entry_ptr(lambda p: struct.pack("<Q", cur_b + 256) + p[8:], "n_pointer_entry-misaligned", "A blob root pointer half a cluster off", "pointer.misaligned")
    entry_ptr(lambda p: struct.pack("<Q", (ic + 5) * CS) + p[8:], "n_pointer_entry-past-end", "A blob root pointer past the image's end", "pointer.out_of_range")
    entry_ptr(lambda p: struct.pack("<Q", 3 * CS) + p[8:], "n_pointer_entry-last-header-cluster", "A blob root pointer to the last header-area cluster",
              "pointer.out_of_range")
    # a null pointer with a crc: the sparse blob's hole
    raws, ms = base_sparse(CS, 20000)
    e = ed_of(raws)
    root = e.blob_node("sparse", "map", first_cluster=0)
    assert root.level == 2
    e.poke(root.index * CS + 8, b"\x01\x02\x03\x04")   # pointer 0 is null (the hole): give it a crc
    c.read_invalid("pointer", "n_pointer_null-with-crc", "A null map pointer (a hole) whose crc field is non-zero",
                   [P, "R-map-2"], e.bytes(), "pointer.reserved")
    # a cycle: the root's pointer 1 names the root itself (CRC forged so it matches)
    e = ed_of(raws)
    buf = e.cluster(root.index)
    struct.pack_into("<Q", buf, 16, root.index * CS)
    assert crc_fixpoint(buf, 24) is not None
    e.set_cluster(root.index, buf)
    c.read_invalid("pointer", "n_pointer_map-cycle", "A depth-2 map node whose second pointer names the node itself (CRC forged to match)",
                   [P], e.bytes(), "pointer.cycle", accept=["map.tail", "map"],
                   notes="Map nodes carry no level, so only a path check (or check's kind tracking) finds this.")
    # directory cycle: an index node's branch names the index node
    rawd, md = base_deep(CS, 60)
    done = False
    for n150 in (60, 150):
        rawx, _ = base_deep(CS, n150)
        for node in ed_of(rawx).find_all("dir", pred=lambda n: n.level > 0):
            for bi in range(len(node.info["items"])):
                e = ed_of(rawx)
                rootn = node.index
                body = e.dir_body(rootn)
                br = body.kids[bi]
                ptr = bytearray(br.kids[1].content)
                struct.pack_into("<Q", ptr, 0, rootn * CS)
                br.kids[1].content = bytes(ptr)
                raw_node = e.cluster(rootn)
                n = struct.unpack_from("<I", raw_node, 8)[0]
                enc = encode_tlv(body)
                raw_node[16:16 + n] = enc
                pos = 16 + enc.find(bytes(ptr)) + 8
                if crc_fixpoint(raw_node, pos) is not None:
                    done = True
                    break
            if done:
                break
        if done:
            break
    assert done, "no directory cycle could be forged"
    e.set_cluster(rootn, raw_node)
    c.read_invalid("pointer", "n_pointer_dir-cycle", "A directory index node's last branch names the index node itself (CRC forged)",
                   [P], e.bytes(), "pointer.cycle", accept=["directory.depth", "directory.order"])
    # index branch pointers
    e = ed_of(rawd)
    body = e.dir_body(rootn)
    ch = body.kids[1].kids[1]
    ch.content = struct.pack("<Q", struct.unpack_from("<Q", ch.content)[0] + 64) + ch.content[8:]
    e.set_dir_node(rootn, body)
    c.read_invalid("pointer", "n_pointer_branch-misaligned", "A directory branch's child pointer is misaligned", [P], e.bytes(), "pointer.misaligned")
    e = ed_of(rawd)
    body = e.dir_body(rootn)
    ch = body.kids[1].kids[1]
    ch.content = struct.pack("<Q", e.layout.slot.image_clusters * CS) + ch.content[8:]
    e.set_dir_node(rootn, body)
    c.read_invalid("pointer", "n_pointer_branch-past-end", "A directory branch's child points past the image", [P], e.bytes(), "pointer.out_of_range")
    # slot root pointers
    for name, fieldname, val, code, desc in [
        ("slot-dir-root-past-end", "dir_root", lambda e: struct.pack("<QI", (ic + 1) * CS, 0), "pointer.out_of_range", "dir_root past the end"),
        ("slot-dir-root-misaligned", "dir_root", lambda e: struct.pack("<QI", leaf * CS + 4, fmt.crc32c(bytes(e.data[leaf * CS + 4:leaf * CS + 4 + CS]))),
         "pointer.misaligned", "dir_root misaligned (its crc matches the misaligned bytes)"),
        ("slot-refcount-root-into-header", "refcount_root", lambda e: struct.pack("<QI", CS, 0), "pointer.out_of_range",
         "refcount_root in the header area"),
    ]:
        e = ed_of(raw)
        v = val(e)
        e.set_slot(fieldname, v + bytes(40 - len(v)))
        c.read_invalid("pointer", f"n_pointer_{name}", f"The active slot's {desc}", [P, "R-slot-5", "R-slot-8"], e.bytes(), code)


# -- checksums ----------------------------------------------------------------------------

def checksum_invalid(c) -> None:
    raw, m = base(CS)
    S = ["R-ptr-3"]

    def flip(raw_, index, name, desc, spec=S, at=100, snapshot=None):
        e = ed_of(raw_)
        b = e.data[index * CS + at]
        e.poke_raw(index * CS + at, bytes([b ^ 0x01]))
        c.read_invalid("checksum", name, desc, spec, e.bytes(), "cluster.checksum", snapshot=snapshot)

    e = ed_of(raw)
    flip(raw, e.blob_node("b/one").index, "n_checksum_data-cluster", "One bit of a data cluster flipped")
    flip(raw, e.blob_node("c/multi", first_cluster=5).index, "n_checksum_data-last-cluster", "One bit of a blob's last data cluster flipped")
    flip(raw, e.blob_node("e/two", first_cluster=1).index, "n_checksum_data-in-padding", "A bit flipped in the zero tail of the last data cluster",
         at=CS - 1)
    flip(raw, e.blob_node("c/multi", "map").index, "n_checksum_map-node", "One bit of a cluster-map node flipped", at=3)
    flip(raw, leaf_of(e), "n_checksum_dir-leaf", "One bit of a directory leaf flipped", at=20)
    flip(raw, leaf_of(e), "n_checksum_dir-leaf-padding", "One bit of a directory leaf's zero padding flipped", at=CS - 2)
    rawd, md = base_deep(CS, 60)
    e = ed_of(rawd)
    flip(rawd, e.layout.slot_refs["dir_root"].target, "n_checksum_dir-index", "One bit of a directory index node flipped", at=30)
    raws, ms = base_snap(CS)
    e = ed_of(raws)
    flip(raws, e.find("snapdata").index, "n_checksum_snapshot-table", "One bit of the snapshot table flipped",
         ["R-ptr-3", "R-snap-5"], at=10)
    snapdir = e.find("dir", owner="snapshot:s1").index
    flip(raws, snapdir, "n_checksum_snapshot-only-dir", "A directory leaf reachable only from a snapshot fails its checksum",
         ["R-ptr-3", "R-snap-1"], at=20)
    old = [n for n in e.find_all("data", owner="snapshot:s1")]
    if old:
        flip(raws, old[0].index, "n_checksum_snapshot-only-data", "A data cluster reachable only from a snapshot fails its checksum",
             ["R-ptr-3"])
        flip(raws, old[0].index, "n_checksum_snapshot-view-data", "Reading --snapshot s1 reaches a damaged data cluster",
             ["R-ptr-3"], snapshot="s1")
    # swapped, zeroed, stale
    e = ed_of(raw)
    a, b = e.blob_node("c/multi", first_cluster=0).index, e.blob_node("c/multi", first_cluster=1).index
    A, B = bytes(e.data[a * CS:(a + 1) * CS]), bytes(e.data[b * CS:(b + 1) * CS])
    e.poke_raw(a * CS, B); e.poke_raw(b * CS, A)
    c.read_invalid("checksum", "n_checksum_data-swapped", "Two data clusters swapped (a misdirected write)", S, e.bytes(), "cluster.checksum")
    e = ed_of(raw)
    i = e.blob_node("c/multi", first_cluster=2).index
    e.poke_raw(i * CS, bytes(CS))
    c.read_invalid("checksum", "n_checksum_data-zeroed", "A data cluster reads as zeros (a lost write)", S, e.bytes(), "cluster.checksum")
    e = ed_of(raw)
    ent = e.blob_node("b/one")
    e.poke_raw(ent.parents[0].crc_at[0], b"\x00\x00\x00\x00")
    e.reseal(leaf_of(e))
    c.read_invalid("checksum", "n_checksum_pointer-crc-wrong", "The crc in a blob's root pointer is wrong; the cluster is intact",
                   S, e.bytes(), "cluster.checksum")


# -- DER -------------------------------------------------------------------------------

def der_invalid(c) -> None:
    raw, m = base(CS)
    D = ["R-der-1"]

    def edit(name, desc, fn, code="der.malformed", spec=D, accept=None, raw_=raw, count=None):
        e = ed_of(raw_)
        leaf = leaf_of(e)
        body, kids = entry_kids(e, leaf)
        out = fn(e, body, kids)
        if isinstance(out, bytes):
            e.set_dir_node(leaf, out, count=count if count is not None else len(kids))
        else:
            e.set_dir_node(leaf, body, count=count)
        c.read_invalid("der", name, desc, spec, e.bytes(), code, accept=accept)

    def ent(kids, n="b/one"):
        return entry_named(kids, n)

    def set_tag(t, tag):
        t.tag = tag

    edit("n_der_tag-printable-string", "A blob name tagged PrintableString (0x13), outside the subset",
         lambda e, b, k: set_tag(ent(k).kids[0], 0x13))
    edit("n_der_tag-boolean", "A DirEntry element tagged BOOLEAN (0x01), outside the subset",
         lambda e, b, k: ent(k).kids.insert(3, TLV(0x01, b"\xff")))
    edit("n_der_tag-high-number", "An extension field in the high-tag-number form (0x9F 0x02), outside the subset",
         lambda e, b, k: ent(k).kids.append(TLV(0x9F, b"", length_override=b"\x02\x00")))
    edit("n_der_tag-set", "The body is a SET (0x31) instead of a SEQUENCE", lambda e, b, k: set_tag(b, 0x31))
    edit("n_der_tag-entry-not-sequence", "A DirEntry tagged [0] constructed instead of SEQUENCE", lambda e, b, k: set_tag(ent(k), 0xA0))

    def lo(t, raw_len):
        t.length_override = raw_len
    edit("n_der_length-long-form-short", "A length below 128 in the long form (0x81 0x..)",
         lambda e, b, k: lo(ent(k), b"\x81" + bytes([len(encode_tlv(ent(k))) - 2])))
    edit("n_der_length-leading-zero", "A long-form length with a leading zero byte (0x82 0x00 0x..)",
         lambda e, b, k: lo(b, b"\x82\x00" + bytes([len(encode_tlv(b)) - 3])))
    edit("n_der_length-four-bytes", "A length with 4 length bytes (0x84), beyond the subset",
         lambda e, b, k: lo(b, b"\x84" + (len(encode_tlv(b)) - 3).to_bytes(4, "big")))

    def indefinite(e, b, k):
        x = ent(k)
        xe = encode_tlv(x)
        inner = b"".join(encode_tlv(t) for t in x.kids)
        return _reencode_outer(encode_tlv(b).replace(xe, b"\x30\x80" + inner + b"\x00\x00"))
    edit("n_der_length-indefinite", "A DirEntry with the indefinite length form (0x80 ... 00 00)", indefinite)

    def content_past(e, b, k):
        x = ent(k)
        name = x.kids[0]
        name.length_override = bytes([len(name.content) + 1])
    edit("n_der_length-past-container", "A name's length runs one byte past its DirEntry", content_past)

    def int_content(value: bytes, n="b/one", idx=1):
        def fn(e, b, k):
            ent(k, n).kids[idx].content = value
        return fn
    size_b = len(m.blobs["b/one"])
    edit("n_der_integer-non-minimal", "A size INTEGER with a superfluous leading zero byte",
         int_content(b"\x00" + int_tlv(size_b)))
    edit("n_der_integer-non-minimal-zero", "The size 0 encoded as 00 00", int_content(b"\x00\x00", "d/empty"))
    edit("n_der_integer-empty", "A size INTEGER with no content bytes", int_content(b"", "d/empty"))
    edit("n_der_integer-negative", "A ClusterMap depth INTEGER that is negative (0xFF)",
         lambda e, b, k: setattr(ent(k, "c/multi").kids[2].kids[0], "content", b"\xff"))
    edit("n_der_integer-ten-bytes", "A size INTEGER of 10 content bytes (nine leading zeros; at most 9 are allowed)",
         int_content(bytes(9) + bytes([size_b & 0x7F])))

    def name_bytes(value: bytes):
        def fn(e, b, k):
            k[0].kids[0].content = value
        return fn
    rs, mss = single(1024, "x", b"hello")
    # One code per defect (R-dir-3): well-formed UTF-8 without NUL is the DER subset's rule (der.malformed).
    edit("n_der_utf8-invalid", "A blob name that is not UTF-8 (0xff)", name_bytes(b"\xff"), raw_=rs, spec=["R-der-1", "R-dir-3"])
    edit("n_der_utf8-overlong", "A blob name with an overlong UTF-8 form (C0 AF)", name_bytes(b"a\xc0\xaf"), raw_=rs,
         spec=["R-der-1", "R-dir-3"])
    edit("n_der_utf8-surrogate", "A blob name with an encoded surrogate (ED A0 80)", name_bytes(b"\xed\xa0\x80"), raw_=rs,
         spec=["R-der-1", "R-dir-3"])
    edit("n_der_utf8-truncated", "A blob name ending in half a UTF-8 sequence", name_bytes(b"ab\xe6\x97"), raw_=rs,
         spec=["R-der-1", "R-dir-3"])
    edit("n_der_utf8-nul", "A blob name containing NUL", name_bytes(b"a\x00b"), raw_=rs, spec=["R-der-1", "R-dir-3"])

    def trailing(e, b, k):
        return encode_tlv(b) + b"\x00\x00"
    edit("n_der_trailing-after-body", "Two bytes after the body's SEQUENCE inside body_length", trailing)

    def trailing_inside(e, b, k):
        ent(k, "c/multi").kids[2].kids.append(TLV(0x02, b"\x00"))
    edit("n_der_cluster-map-extra-element", "A ClusterMap with a third element", trailing_inside)
    edit("n_der_entry-two-fields", "A DirEntry with only name and size", lambda e, b, k: ent(k).kids.pop(2))
    edit("n_der_entry-size-as-octets", "A DirEntry whose size is an OCTET STRING", lambda e, b, k: set_tag(ent(k).kids[1], 0x04))
    edit("n_der_content-wrong-tag", "A DirEntry content tagged [2] (neither inline nor clusters)",
         lambda e, b, k: set_tag(ent(k, "a/inline").kids[2], 0x82))
    edit("n_der_ext-descending", "Extension fields [3] then [2]: not ascending",
         lambda e, b, k: ent(k).kids.extend([TLV(0x83, b"\x01"), TLV(0x82, b"\x01")]), spec=["R-dir-4", "R-der-1"])
    edit("n_der_ext-duplicate", "Extension field [2] twice",
         lambda e, b, k: ent(k).kids.extend([TLV(0x82, b"\x01"), TLV(0x82, b"\x02")]), spec=["R-dir-4", "R-der-1"])
    edit("n_der_ext-tag-1-in-entry", "Extension field [1] in a DirEntry (entries start at [2])",
         lambda e, b, k: ent(k, "a/inline").kids.append(TLV(0x81, b"\x01")), spec=["R-dir-4", "R-der-1"])
    edit("n_der_ext-universal", "An INTEGER after content where only context tags may follow",
         lambda e, b, k: ent(k).kids.append(TLV(0x02, b"\x01")), spec=["R-dir-4", "R-der-1"])


def _reencode_outer(body: bytes) -> bytes:
    """Fix the outer SEQUENCE length after its contents changed length."""
    _, cs, _ = _peek(body)
    inner = body[cs:]
    return b"\x30" + der.encode_length(len(inner)) + inner


def _peek(buf):
    first = buf[1]
    if first < 0x80:
        return buf[0], 2, 2 + first
    n = first & 0x7F
    return buf[0], 2 + n, None


# -- directory -------------------------------------------------------------------------

def directory_invalid(c) -> None:
    raw, m = base(CS)

    def node(name, desc, fn, code, spec, raw_=raw, accept=None, which=None):
        e = ed_of(raw_)
        idx = which(e) if which else leaf_of(e)
        fn(e, idx)
        c.read_invalid("directory", name, desc, spec, e.bytes(), code, accept=accept)

    def hdr(**kw):
        return lambda e, i: e.set_dir_node(i, e.dir_body(i), header=kw)
    N = ["R-dir-1", "R-dir-6"]
    node("n_dir_node-magic", "A directory node whose magic is NVDX", hdr(magic=b"NVDX"), "directory.node", N)
    node("n_dir_node-reserved0", "A directory node with reserved0 non-zero", hdr(reserved0=1), "directory.node", N + ["R-conv-5"])
    node("n_dir_node-reserved1", "A directory node with reserved1 non-zero", hdr(reserved1=1 << 24), "directory.node", N + ["R-conv-5"])
    node("n_dir_node-count-zero", "A directory node with count 0", hdr(count=0), "directory.node", N)
    node("n_dir_node-count-mismatch", "A directory node whose count is one more than its elements", hdr(count=6), "directory.node", N)
    node("n_dir_node-body-length-too-big", "body_length cluster_size - 15 (above cluster_size - 16)", hdr(body_length=CS - 15),
         "directory.node", N + ["R-limit-1"], accept=["der.malformed"])
    node("n_dir_node-body-length-huge", "body_length 0xFFFFFFFF", hdr(body_length=0xFFFFFFFF), "directory.node", N + ["R-limit-1"],
         accept=["der.malformed"])
    node("n_dir_node-padding", "A non-zero byte in a directory node's padding",
         lambda e, i: e.set_dir_node(i, e.dir_body(i), padding=b"\x00\x00\x01"), "directory.node", N)
    node("n_dir_depth-leaf-level-1", "The root leaf says level 1 while dir_depth is 1", hdr(level=1), "directory.depth", N)
    e = ed_of(raw)
    e.set_slot("dir_depth", 2)
    c.read_invalid("directory", "n_dir_depth-slot-too-deep", "dir_depth 2 while the root is a leaf (level 0)", N, e.bytes(), "directory.depth")
    rawd, md = base_deep(CS, 60)
    e = ed_of(rawd)
    dd = e.layout.slot.dir_depth
    e.set_slot("dir_depth", dd - 1)
    c.read_invalid("directory", "n_dir_depth-slot-too-shallow", f"dir_depth {dd - 1} while the root index node is level {dd - 1}",
                   N, e.bytes(), "directory.depth")
    e = ed_of(rawd)
    lf = e.find("dir", level=0).index
    e.set_dir_node(lf, e.dir_body(lf), header={"level": 1})
    c.read_invalid("directory", "n_dir_depth-child-level-wrong", "A leaf below a level-1 index node says level 1", N, e.bytes(),
                   "directory.depth", accept=["der.malformed", "directory.entry"])

    O = ["R-dir-2"]

    def kids_fn(fn):
        def f(e, i):
            body = e.dir_body(i)
            fn(body.kids)
            e.set_dir_node(i, body)
        return f
    node("n_dir_order-swapped", "Two leaf entries out of key order", kids_fn(lambda k: k.insert(0, k.pop(1))), "directory.order", O)
    node("n_dir_order-reversed", "Every leaf entry in descending key order", kids_fn(lambda k: k.reverse()), "directory.order", O)

    def dup(e, i):
        body = e.dir_body(i)
        body.kids.insert(1, body.kids[0])
        e.set_dir_node(i, body)
        e.set_slot("blob_count", e.get_slot("blob_count") + 1)
    node("n_dir_order-duplicate-name", "The same entry twice in a leaf (blob_count adjusted)", dup, "directory.order", O)
    rootw = (lambda e: max(e.find_all("dir", pred=lambda n: n.level > 0), key=lambda n: len(n.info["items"])).index)
    node("n_dir_order-branch-descending", "Two branches of an index node swapped",
         kids_fn(lambda k: k.insert(1, k.pop(2))), "directory.order", O, raw_=rawd, which=rootw)
    node("n_dir_order-first-low-key-set", "The first branch's lowKey is 32 bytes instead of empty",
         kids_fn(lambda k: setattr(k[0].kids[0], "content", bytes(32))), "directory.order", O, raw_=rawd, which=rootw)
    node("n_dir_order-second-low-key-empty", "A second branch with an empty lowKey",
         kids_fn(lambda k: setattr(k[1].kids[0], "content", b"")), "directory.order", O, raw_=rawd, which=rootw)

    e = ed_of(base_deep(CS, 20)[0])
    parent = e.find_all("dir", level=1)[0]
    items = parent.info["items"]
    l1, l2 = items[0]["ref"].target, items[1]["ref"].target
    b1 = e.dir_body(l1)
    b2 = e.dir_body(l2)
    moved = b1.kids[-1]
    # put l1's last entry into l2 (keys in l2 must be >= l2.lowKey; the moved key is below it)
    b1.kids.pop()
    b2.kids.insert(0, moved)
    e.set_dir_node(l1, b1)
    e.set_dir_node(l2, b2)
    c.read_invalid("directory", "n_dir_order-key-outside-branch", "A leaf holds a key below its branch's lowKey (entry in the wrong leaf)",
                   O, e.bytes(), "directory.order", accept=["blob.not_found"],
                   notes="A reader that looks names up by key reaches the other leaf and misses the entry; blob.not_found "
                         "is accepted for such readers.")

    E = ["R-dir-3"]
    rs, _ = single(1024, "x", b"hello")

    def ent0(fn):
        return lambda e, i: (lambda body: (fn(body.kids[0]), e.set_dir_node(i, body)))(e.dir_body(i))
    node("n_dir_entry-name-empty", "A blob name of 0 bytes (valid DER, outside R-dir-3's 1..255)",
         ent0(lambda x: setattr(x.kids[0], "content", b"")), "directory.entry", E, raw_=rs)
    node("n_dir_entry-name-256-bytes", "A blob name of 256 bytes", ent0(lambda x: setattr(x.kids[0], "content", b"n" * 256)),
         "directory.entry", E, raw_=rs)
    node("n_dir_entry-inline-length-mismatch", "Inline content of 5 bytes for size 6",
         ent0(lambda x: setattr(x.kids[1], "content", b"\x06")), "directory.entry", E, raw_=rs)
    node("n_dir_entry-inline-above-max", "An inline blob of 129 bytes in 1024-byte clusters (inline_max 128)",
         ent0(lambda x: (setattr(x.kids[1], "content", int_tlv(129)), setattr(x.kids[2], "content", b"i" * 129))),
         "directory.entry", E, raw_=rs)

    def huge(x):
        x.kids[1].content = int_tlv((1 << 48) + 1)
        depth = fmt.Geometry(9).map_depth((1 << 48) + 1)
        x.kids[2] = TLV(0xA1, kids=[TLV(0x02, int_tlv(depth)), TLV(0x04, bytes(16))])
    node("n_dir_entry-size-above-2-48", "A blob size of 2^48 + 1 (with a matching map depth and a null root)", ent0(huge),
         "directory.entry", E + ["R-limit-1"], raw_=build("single-512-x", [put("x", b"hi")], 512)[0])

    e = ed_of(raw)
    lf = leaf_of(e)
    body = e.dir_body(lf)
    en = entry_named(body.kids, "b/one")
    en.kids[2].kids[1].content = en.kids[2].kids[1].content + bytes(24)
    e.set_dir_node(lf, body)
    c.read_invalid("directory", "n_dir_entry-pointer-width-40-in-plain", "A 40-byte root pointer in a plain image", E, e.bytes(),
                   "directory.entry")
    e = ed_of(rawd)
    rootn = e.layout.slot_refs["dir_root"].target
    body = e.dir_body(rootn)
    body.kids[1].kids[0].content = body.kids[1].kids[0].content[:16]
    e.set_dir_node(rootn, body)
    c.read_invalid("directory", "n_dir_entry-low-key-16-bytes", "A branch lowKey of 16 bytes (neither 0 nor 32)", E + ["R-dir-2"],
                   e.bytes(), "directory.entry")
    e = ed_of(rawd)
    body = e.dir_body(rootn)
    body.kids[1].kids[1].content = body.kids[1].kids[1].content[:15]
    e.set_dir_node(rootn, body)
    c.read_invalid("directory", "n_dir_entry-branch-pointer-15-bytes", "A branch child pointer of 15 bytes", E, e.bytes(),
                   "directory.entry")


# -- maps ------------------------------------------------------------------------------

def map_invalid(c) -> None:
    raw, m = base(CS)
    M = ["R-map-1"]

    def depth(name, desc, blob, new, raw_=raw):
        e = ed_of(raw_)
        lf = leaf_of(e)
        body = e.dir_body(lf)
        en = entry_named(body.kids, blob)
        en.kids[2].kids[0].content = int_tlv(new)
        e.set_dir_node(lf, body)
        c.read_invalid("map", name, desc, M, e.bytes(), "map.depth")
    depth("n_map_depth-1-for-one-cluster", "A one-cluster blob with map depth 1 (must be 0)", "b/one", 1)
    depth("n_map_depth-0-for-six-clusters", "A six-cluster blob with map depth 0 (must be 1)", "c/multi", 0)
    depth("n_map_depth-2-for-six-clusters", "A six-cluster blob with map depth 2 (must be 1)", "c/multi", 2)
    raws, ms = base_sparse(CS, 20000)
    e = ed_of(raws)
    lf = leaf_of(e)
    body = e.dir_body(lf)
    en = entry_named(body.kids, "sparse")
    en.kids[2].kids[0].content = int_tlv(3)
    e.set_dir_node(lf, body)
    c.read_invalid("map", "n_map_depth-3-for-depth-2-blob", "A blob needing depth 2 declared with depth 3", M, e.bytes(), "map.depth")
    e = ed_of(raws)
    lf = leaf_of(e)
    body = e.dir_body(lf)
    en = entry_named(body.kids, "sparse")
    en.kids[1].content = int_tlv(16384)
    e.set_dir_node(lf, body)
    c.read_invalid("map", "n_map_size-shrunk-below-depth", "A blob size of exactly 32 clusters (depth 1) with a depth-2 map", M,
                   e.bytes(), "map.depth")


# -- snapshot table ---------------------------------------------------------------------

@_memo_simple
def base_snaps3():
    ops = [put("v", b"0"), put("w", pattern(700, "w")), snap("s1"), put("v", b"1"), snap("s2"), put("v", b"2"), snap("s3", b"meta"),
           put("v", b"3")]
    return build("snaps3", ops, CS)


def snapshot_invalid(c) -> None:
    raw, m = base_snaps3()
    T = ["R-snap-5"]

    def table(name, desc, fn, code="snapshot.table", spec=T, accept=None, size_delta=0):
        e = ed_of(raw)
        t = e.snapshot_table()
        out = fn(e, t)
        enc = out if isinstance(out, bytes) else encode_tlv(t)
        e.set_snapshot_table(enc, len(enc) + size_delta)
        c.read_invalid("snapshot", name, desc, spec, e.bytes(), code, accept=accept)

    def setint(rec, idx, v):
        rec.kids[idx].content = int_tlv(v)
    table("n_snapshot_ids-descending", "Two snapshot records out of id order", lambda e, t: t.kids.insert(0, t.kids.pop(1)))
    e = ed_of(raw)
    t = e.snapshot_table()
    setint(t.kids[0], 3, 3)      # s1 holds two blobs (v, w); its record says three
    enc = encode_tlv(t)
    e.set_snapshot_table(enc, len(enc))
    c.check("corrupt", "k_corrupt_snapshot-blob-count", "A snapshot record's blobCount disagrees with its directory",
            ["R-check-1", "R-snap-6"], e.bytes(), "corrupt")
    table("n_snapshot_id-duplicate", "Two records with the same id", lambda e, t: setint(t.kids[1], 0, 1))
    table("n_snapshot_id-not-below-next", "A record id equal to next_snapshot_id",
          lambda e, t: setint(t.kids[2], 0, e.layout.slot.next_snapshot_id))
    table("n_snapshot_id-zero", "A record with id 0", lambda e, t: setint(t.kids[0], 0, 0))
    table("n_snapshot_name-duplicate", "Two records named s1", lambda e, t: setattr(t.kids[1].kids[1], "content", b"s1"))
    table("n_snapshot_name-empty", "A record with an empty name", lambda e, t: setattr(t.kids[1].kids[1], "content", b""),
          spec=T + ["R-snap-4"])
    table("n_snapshot_name-256-bytes", "A record name of 256 bytes", lambda e, t: setattr(t.kids[1].kids[1], "content", b"s" * 256),
          spec=T + ["R-snap-4"])
    table("n_snapshot_root-null-depth-1", "A record with dirDepth 1 and a null dirRoot",
          lambda e, t: setattr(t.kids[0].kids[5], "content", bytes(16)))
    table("n_snapshot_root-width-15", "A record dirRoot of 15 bytes", lambda e, t: setattr(t.kids[0].kids[5], "content",
                                                                                           t.kids[0].kids[5].content[:15]))
    table("n_snapshot_record-five-fields", "A record without its dirRoot", lambda e, t: t.kids[0].kids.pop(5), code="der.malformed",
          spec=T + ["R-der-1"])
    table("n_snapshot_integer-non-minimal", "A record id INTEGER with a leading zero byte",
          lambda e, t: setattr(t.kids[0].kids[0], "content", b"\x00\x01"), code="der.malformed", spec=T + ["R-der-1"])
    table("n_snapshot_ext-descending", "Record extension fields [3] then [2]",
          lambda e, t: t.kids[0].kids.extend([TLV(0x83, b""), TLV(0x82, b"")]), code="der.malformed", spec=T + ["R-dir-4"])
    table("n_snapshot_ext-tag-0-twice", "Metadata [0] present twice", lambda e, t: t.kids[2].kids.append(TLV(0x80, b"x")),
          code="der.malformed", spec=T + ["R-dir-4"])
    table("n_snapshot_size-one-more", "snaptable_size one byte longer than the DER (a zero byte after it)",
          lambda e, t: None, code="der.malformed", size_delta=1)
    e = ed_of(raw)
    e.set_slot("snapshot_count", 2)
    c.read_invalid("snapshot", "n_snapshot_count-mismatch", "snapshot_count 2 while the table holds 3 records", T, e.bytes(), "snapshot.table")
    e = ed_of(raw)
    e.set_slot("next_snapshot_id", 3)
    c.read_invalid("snapshot", "n_snapshot_next-id-too-small", "next_snapshot_id 3 while record ids reach 3", T, e.bytes(), "snapshot.table")
    # metadata above 1024 bytes (2048-byte clusters so the table stays one cluster)
    rawm, mm = build("snap-meta-1024", [put("v", b"1"), snap("big", pattern(1024, "meta"))], 2048)
    e = ed_of(rawm)
    t = e.snapshot_table()
    t.kids[0].kids[6].content += b"!"
    enc = encode_tlv(t)
    e.set_snapshot_table(enc)
    c.read_invalid("snapshot", "n_snapshot_metadata-1025-bytes", "A record with 1025 bytes of metadata", T + ["R-snap-4"], e.bytes(),
                   "snapshot.table")
    # the snapshot's directory damaged (only reachable from the snapshot)
    e = ed_of(raw)
    d = e.find("dir", owner="snapshot:s1")
    e.set_dir_node(d.index, e.dir_body(d.index), header={"magic": b"XXXX"})
    c.read_invalid("snapshot", "n_snapshot_dir-node-magic", "A snapshot's directory leaf has a wrong magic", ["R-snap-1", "R-dir-1"],
                   e.bytes(), "directory.node")
    c.read_invalid("snapshot", "n_snapshot_dir-node-magic-via-view", "The same damage, read through --snapshot s1",
                   ["R-snap-1", "R-dir-1"], e.bytes(), "directory.node", snapshot="s1")
    c.read_invalid("snapshot", "n_snapshot_view-not-found", "--snapshot names no snapshot", ["R-snap-5"], raw, "snapshot.not_found",
                   snapshot="nope")


# -- truncation --------------------------------------------------------------------------

def truncation_invalid(c) -> None:
    raw, m = base(CS)
    T = ["R-conv-6", "R-header-9"]
    for name, n, desc in [("empty-file", 0, "An empty file"), ("header-only-half", 256, "256 bytes: half a header"),
                          ("2047-bytes", 2047, "2047 bytes: one byte short of the header area"),
                          ("header-area-only", 2048, "Only the 2048-byte header area"),
                          ("one-byte-short", len(raw) - 1, "The image minus its last byte"),
                          ("last-cluster-missing", len(raw) - CS, "The image minus its last cluster")]:
        c.read_invalid("truncation", f"n_truncation_{name}", desc, T, raw[:n], "image.truncated")


# -- read-acceptable ----------------------------------------------------------------------

def acceptable(c) -> None:
    raw, m = base(CS)
    L = ["LazyReader"]
    e = ed_of(raw)
    rb = e.find("refblock").index
    e.poke_raw(rb * CS + 300, b"\x01")
    c.read_acceptable("refcount", "i_refcount_block-checksum", "A refcount block fails its checksum; a reader need not read the refcount tree",
                      ["R-ptr-3", "R-ref-1", "R-read-1"], e.bytes(), m.logical(), ["cluster.checksum"], L)
    e = ed_of(raw)
    tailn = e.blob_node("c/multi", first_cluster=5)
    e.poke_cluster(tailn.index, CS - 1, b"\x01")
    c.read_acceptable("map", "i_map_tail-bytes-non-zero", "Non-zero bytes after the blob's end in its last cluster",
                      ["R-map-3", "R-read-1"], e.bytes(), m.logical(), ["map.tail"], L)
    e = ed_of(raw)
    mapn = e.blob_node("c/multi", "map").index
    extra = e.blob_node("b/one").index
    off = mapn * CS + 10 * 16
    e.poke(off, struct.pack("<QI", extra * CS, e.layout.nodes[extra].parents[0] and struct.unpack_from("<I", e.data, e.layout.nodes[extra].parents[0].crc_at[0])[0]) + bytes(4))
    c.read_acceptable("map", "i_map_pointer-beyond-size", "A non-null map pointer beyond the blob's last cluster",
                      ["R-map-3", "R-read-1"], e.bytes(), m.logical(), ["map.tail", "pointer.cycle"], L)
    e = ed_of(raw)
    e.set_slot("blob_count", 9)
    c.read_acceptable("directory", "i_dir_blob-count-wrong", "blob_count 9 while the directory holds 5 entries",
                      ["R-dir-1", "R-dir-7", "R-check-1", "R-read-1"], e.bytes(), m.logical(), ["directory.entry"], L)
    # i_slot_alloc-hint-above-free retired: readers ignore the hint (R-alloc-6), so it is
    # read-valid/slot/y_slot_alloc-hint-above-free now (cases_settled.py).


# -- check -------------------------------------------------------------------------------

def set_count(e: Editor, cluster: int, value: int) -> None:
    per = CS // 2
    blocks = sorted(e.find_all("refblock"), key=lambda n: n.index)
    # block k covers clusters k*per..: with one block it is block 0
    blk = blocks[cluster // per] if len(blocks) > cluster // per else None
    assert blk is not None, "no refcount block for that cluster"
    e.poke_cluster(blk.index, (cluster % per) * 2, struct.pack("<H", value))


def get_count(e: Editor, cluster: int) -> int:
    blk = sorted(e.find_all("refblock"), key=lambda n: n.index)[cluster // (CS // 2)]
    return struct.unpack_from("<H", e.data, blk.index * CS + (cluster % (CS // 2)) * 2)[0]


def check_cases(c) -> None:
    raw, m = base(CS)
    C = ["R-check-1", "R-ref-6"]
    c.check("clean", "k_clean_base", "An intact image is clean", ["R-check-1", "R-ref-5", "R-ref-6"], raw, "clean")
    for nm, fn in (("snapshots", base_snaps3), ("deep-directory", lambda: base_deep(CS, 60)), ("sparse", lambda: base_sparse(CS, 20000)),
                   ("refcount-depth-2", lambda: base_refdepth2(CS))):
        r, _ = fn()
        c.check("clean", f"k_clean_{nm}", f"An intact image ({nm}) is clean", ["R-check-1", "R-ref-5", "R-ref-6", "R-cow-2"], r, "clean")
    e = ed_of(raw)
    data_b = e.blob_node("b/one").index
    set_count(e, data_b, 2)
    c.check("leaks", "k_leaks_count-too-high", "A data cluster's count is 2 with one reference", C, e.bytes(), "leaks")
    e = ed_of(raw)
    ic = e.layout.slot.image_clusters
    free = [i for i in range(4, ic) if i not in e.nodes and get_count(e, i) == 0]
    e2 = ed_of(raw)
    # an unreferenced cluster with count 1: extend the image by one cluster
    e2.data += bytes(CS)
    e2.set_slot("image_clusters", ic + 1)
    set_count(e2, ic, 1)
    c.check("leaks", "k_leaks_unreachable-cluster", "A cluster no structure references has count 1", C + ["R-ref-1"], e2.bytes(), "leaks")
    e = ed_of(raw)
    set_count(e, data_b, 0)
    c.check("corrupt", "k_corrupt_count-zero-live", "A live data cluster has count 0 (it could be reused)", C, e.bytes(), "corrupt")
    e = ed_of(raw)
    lf = leaf_of(e)
    set_count(e, 0, 0)
    c.check("corrupt", "k_corrupt_header-cluster-count-zero", "A header-area cluster has count 0", C + ["R-ref-3"], e.bytes(), "corrupt")
    raws, _ = base_snaps3()
    e = ed_of(raws)
    shared = [n for n in e.nodes.values() if len(n.parents) > 1]
    n0 = shared[0]
    set_count(e, n0.index, len(n0.parents) - 1)
    c.check("corrupt", "k_corrupt_shared-count-too-low", "A cluster shared by a snapshot counts one reference too few", C + ["R-cow-2"],
            e.bytes(), "corrupt")
    e = ed_of(raws)
    set_count(e, n0.index, len(n0.parents) + 1)
    c.check("leaks", "k_leaks_shared-count-too-high", "A cluster shared by a snapshot counts one reference too many", C, e.bytes(), "leaks")
    e = ed_of(raw)
    set_count(e, ic + 3, 1)
    c.check("corrupt", "k_corrupt_count-beyond-image", "A count set for a cluster past image_clusters", ["R-check-1", "R-ref-1", "R-ref-7"],
            e.bytes(), "corrupt")
    e = ed_of(raw)
    tailn = e.blob_node("c/multi", first_cluster=5)
    e.poke_cluster(tailn.index, CS - 1, b"\x01")
    c.check("corrupt", "k_corrupt_map-tail-bytes", "Non-zero bytes after a blob's end", ["R-check-1", "R-map-3"], e.bytes(), "corrupt")
    e = ed_of(raw)
    e.set_slot("blob_count", 9)
    c.check("corrupt", "k_corrupt_blob-count", "blob_count differs from the directory's entries", ["R-check-1", "R-dir-1", "R-dir-7"], e.bytes(),
            "corrupt")
    e = ed_of(raw)
    e.set_slot("alloc_hint", e.get_slot("image_clusters"))
    # only a violation if a free cluster exists below image_clusters
    if free:
        c.check("leaks", "k_leaks_alloc-hint-above-free", "alloc_hint above a free cluster: space the allocator never finds",
                ["R-alloc-6", "R-check-1"], e.bytes(), "leaks")
    e = ed_of(raw)
    rb = e.find("refblock").index
    live = e.blob_node("b/one").index
    e.poke_raw(rb * CS + live * 2 + 1, b"\x80")   # count 1 -> 32769, CRC not updated
    c.check("corrupt", "k_corrupt_refcount-block-checksum", "A refcount block fails its checksum", ["R-check-1", "R-ptr-3"], e.bytes(),
            "corrupt")
    e = ed_of(raw)
    e.poke_raw(0, b"X")
    c.check("corrupt", "k_corrupt_unopenable", "An image too damaged to open gets the verdict corrupt", ["R-check-1", "R-header-2"],
            e.bytes(), "corrupt")
    e = ed_of(raw)
    db = e.blob_node("c/multi", first_cluster=1).index
    e.poke_raw(db * CS + 30, bytes([e.data[db * CS + 30] ^ 0x10]))
    c.check("corrupt", "k_corrupt_data-checksum", "A data cluster fails its checksum", ["R-check-1", "R-ptr-3"], e.bytes(), "corrupt")
    raw2, _ = base_refdepth2(CS)
    e = ed_of(raw2)
    ri = e.find("refindex").index
    e.poke_raw(ri * CS + 5, b"\x40")
    c.check("corrupt", "k_corrupt_refcount-index-checksum", "A refcount index node fails its checksum", ["R-check-1", "R-ptr-3", "R-ref-2"],
            e.bytes(), "corrupt")
    e = ed_of(raw)
    mapn = e.blob_node("c/multi", "map").index
    other = e.blob_node("e/two", "map").index
    crc = struct.unpack_from("<I", e.data, e.layout.nodes[other].parents[0].crc_at[0])[0]
    e.poke(mapn * CS + 16, struct.pack("<QI", other * CS, crc) + bytes(4))
    c.check("corrupt", "k_corrupt_cluster-as-map-and-data", "A map node of one blob is also named as a data cluster of another",
            ["R-check-1", "R-ref-6"], e.bytes(), "corrupt")


# -- write ---------------------------------------------------------------------------------

def write_cases(c) -> None:
    W = ["R-commit-1", "R-cow-1", "R-alloc-1", "R-ref-5"]
    C512 = {"cluster_size": 512}
    w = c.write
    w("blob", "w_blob_put-inline", "Put one small (inline) blob", W + ["R-dir-3"], [put("tpm/state", b"\x00\xff\x10")])
    w("blob", "w_blob_put-clustered", "Put a blob spanning several clusters", W + ["R-map-1"], [put("nic0/eeprom", pattern(9000, "ee"))])
    w("blob", "w_blob_put-empty", "Put an empty blob", W, [put("empty", b"")])
    w("blob", "w_blob_put-replace", "Replace a blob's contents, clustered then inline", W + ["R-cow-3"],
      [put("x", pattern(5000, "x1")), put("x", b"small now")])
    w("blob", "w_blob_put-inline-boundary", "Blobs of inline_max and inline_max + 1 bytes", W + ["R-dir-3"],
      [put("at", pattern(64, "at")), put("above", pattern(65, "ab"))], create=C512)
    w("blob", "w_blob_many--c512", "150 small blobs in 512-byte clusters: the directory splits into several levels", W + ["R-dir-5", "R-dir-2"],
      [put(f"dev{i:03d}/state", pattern(30 + i % 40, f"m{i}")) for i in range(150)], create=C512)
    w("blob", "w_blob_many-then-delete-most--c512", "150 blobs, then 140 deleted: the directory shrinks", W + ["R-dir-5", "R-cow-3"],
      [put(f"k{i:03d}", pattern(20, f"k{i}")) for i in range(150)] + [delete(f"k{i:03d}") for i in range(140)], create=C512)
    w("blob", "w_blob_delete", "Delete one of two blobs", W + ["R-cow-3"], [put("a", b"1"), put("b", pattern(6000, "b")), delete("b")])
    w("blob", "w_blob_delete-all", "Delete every blob: the directory becomes empty", W + ["R-cow-3"],
      [put("a", b"1"), put("b", pattern(6000, "b")), delete("a"), delete("b")])
    w("blob", "w_blob_write-middle", "A partial write inside a clustered blob", W + ["R-cow-1"],
      [put("p", pattern(10000, "p")), write("p", 4000, b"PATCHED")])
    w("blob", "w_blob_write-extends-with-zeros", "A write past the end extends the blob with zeros", W + ["R-map-2"],
      [put("p", b"abc"), write("p", 10000, b"tail")])
    w("blob", "w_blob_write-creates", "A write to a missing blob creates it", W, [write("new", 5, b"xyz")])
    w("blob", "w_blob_write-inline-to-clustered", "Writes grow an inline blob into a clustered one", W + ["R-dir-3"],
      [put("g", b"a" * 10), write("g", 100, pattern(50, "g")), write("g", 600, b"end")], create=C512)
    w("blob", "w_blob_truncate-shrink", "Truncate a clustered blob to a shorter clustered size", W + ["R-map-3"],
      [put("t", pattern(9000, "t")), truncate("t", 5000)])
    w("blob", "w_blob_truncate-extend", "Truncate to a larger size extends with zeros", W + ["R-map-2"],
      [put("t", pattern(100, "t")), truncate("t", 7000)])
    w("blob", "w_blob_truncate-to-inline", "Truncate a clustered blob below inline_max", W + ["R-dir-3"],
      [put("t", pattern(9000, "t")), truncate("t", 10)])
    w("blob", "w_blob_truncate-zero", "Truncate a blob to 0 bytes", W, [put("t", pattern(9000, "t")), truncate("t", 0)])
    w("blob", "w_blob_truncate-mid-cluster", "Truncate in the middle of a cluster: the tail must read as zeros after re-extension",
      W + ["R-map-3"], [put("t", pattern(3000, "t")), truncate("t", 1000), truncate("t", 3000)], create=C512)
    w("map", "w_map_sparse-far--c512", "A 10-byte write at offset 1000000 in 512-byte clusters (a depth-3 sparse map)",
      W + ["R-map-1", "R-map-2"], [write("far", 1000000, b"0123456789")], create=C512)
    w("map", "w_map_shrink-depth--c512", "A depth-2 blob truncated to one cluster (map depth falls to 0)", W + ["R-map-1"],
      [put("d", pattern(20000, "d")), truncate("d", 300)], create=C512)
    w("name", "w_name_unicode", "Unicode blob names", W + ["R-dir-3"],
      [put("日本語", b"1"), put("emoji/\U0001F600", b"2"), put("e\u0301", b"3")])
    w("name", "w_name_max-length", "A 255-byte blob name", W + ["R-dir-3"], [put("n" * 255, b"long name")])
    w("transaction", "w_txn_several-ops", "A transaction of puts, a write and a delete commits together", W,
      [put("keep", b"0"), txn(put("a", b"1"), put("b", pattern(3000, "tb")), write("keep", 1, b"+"), delete("a"))])
    w("transaction", "w_txn_put-delete-put", "Put, delete and put the same name inside one transaction", W,
      [txn(put("x", b"1"), delete("x"), put("x", pattern(2000, "x2")))])
    w("transaction", "w_txn_nested", "Nested transactions join the outer one", W,
      [txn(put("a", b"1"), txn(put("b", b"2"), delete("a")))])
    S = ["R-snap-1", "R-cow-2", "R-commit-1"]
    w("snapshot", "w_snapshot_create", "Create a snapshot, then change the active state", S,
      [put("a", b"1"), put("b", pattern(3000, "b")), snap("s"), put("a", b"2"), write("b", 10, b"changed")])
    w("snapshot", "w_snapshot_metadata", "Snapshots with metadata (empty, text, 1024 bytes)", S + ["R-snap-4"],
      [put("a", b"1"), snap("m0", b""), {"op": "snapshot_create", "name": "m1", "metadata_text": "{\"k\": 1}"},
       snap("m2", pattern(1024, "md"))])
    w("snapshot", "w_snapshot_delete", "Delete a snapshot: what only it held is freed", ["R-snap-3", "R-cow-3"],
      [put("a", pattern(3000, "a")), snap("s"), put("a", b"new"), {"op": "snapshot_delete", "name": "s"}])
    w("snapshot", "w_snapshot_revert", "Revert to a snapshot", ["R-snap-2", "R-cow-3"],
      [put("a", b"1"), snap("s"), put("a", b"2"), put("b", b"3"), {"op": "snapshot_revert", "name": "s"}])
    w("snapshot", "w_snapshot_revert-then-write", "Revert, then write: the snapshot keeps its content", ["R-snap-2", "R-cow-2"],
      [put("a", pattern(2000, "a")), snap("s"), {"op": "snapshot_revert", "name": "s"}, write("a", 0, b"after")])
    w("snapshot", "w_snapshot_rename", "Rename a snapshot", ["R-snap-5"],
      [put("a", b"1"), snap("old"), {"op": "snapshot_rename", "name": "old", "new": "new"}])
    w("snapshot", "w_snapshot_many", "Twenty snapshots of a changing blob", S + ["R-snap-5"],
      sum(([put("v", pattern(100 + i, f"v{i}")), snap(f"s{i:02d}")] for i in range(20)), []), create=C512)
    w("snapshot", "w_snapshot_delete-all", "Create and delete snapshots until none is left", ["R-snap-3"],
      [put("a", b"1"), snap("x"), snap("y"), {"op": "snapshot_delete", "name": "x"}, {"op": "snapshot_delete", "name": "y"}])
    w("snapshot", "w_snapshot_of-empty", "A snapshot of an empty image, then puts and a revert", ["R-snap-1", "R-snap-2"],
      [snap("empty"), put("a", b"1"), {"op": "snapshot_revert", "name": "empty"}])
    w("compact", "w_compact_after-deletes--c512", "Compaction after deletes keeps every blob and snapshot", ["R-compact-1", "R-alloc-5"],
      [put(f"b{i}", pattern(1500, f"c{i}")) for i in range(8)] + [snap("s")] + [delete(f"b{i}") for i in range(0, 8, 2)]
      + [{"op": "snapshot_delete", "name": "s"}, {"op": "compact"}], create=C512)
    for cs in (512, 1024, 65536):
        w("cluster", f"w_cluster_{cs}", f"An image with {cs}-byte clusters", W + ["R-conv-2"],
          [put("a", pattern(3 * cs + 5, "cs")), put("b", b"x")], create={"cluster_size": cs})
    w("image", "w_image_fixed-capacity", "A fixed-capacity image that its blobs fit", W + ["R-header-7", "R-alloc-3"],
      [put("a", pattern(4000, "fc"))], create={"cluster_size": 512, "capacity": 32768})
    w("blob", "w_blob_data-file", "A blob whose data comes from a file beside ops.json", W,
      [{"op": "put", "name": "from-file", "data_file": "payload.bin"}], files={"payload.bin": pattern(5000, "file")})
    # errors
    E = [
        ("blob", "w_error_blob-name-empty", "An empty blob name", [put("", b"x")], "blob.name", ["R-dir-3"]),
        ("blob", "w_error_blob-name-nul", "A blob name containing NUL", [put("a\x00b", b"x")], "blob.name", ["R-dir-3"]),
        ("blob", "w_error_blob-name-256-bytes", "A 256-byte blob name", [put("n" * 256, b"x")], "blob.name", ["R-dir-3"]),
        ("blob", "w_error_delete-missing", "Delete a blob that does not exist", [delete("ghost")], "blob.not_found", ["R-dir-1"]),
        ("blob", "w_error_truncate-missing", "Truncate a blob that does not exist", [truncate("ghost", 3)], "blob.not_found", ["R-dir-1"]),
        ("blob", "w_error_write-beyond-2-48", "A write ending past 2^48 bytes", [write("big", (1 << 48), b"x")], "blob.too_large", ["R-dir-3"]),
        ("snapshot", "w_error_snapshot-exists", "A second snapshot with the same name", [snap("s"), snap("s")], "snapshot.exists", ["R-snap-1"]),
        ("snapshot", "w_error_snapshot-not-found", "Revert to a snapshot that does not exist", [{"op": "snapshot_revert", "name": "x"}],
         "snapshot.not_found", ["R-snap-2"]),
        ("snapshot", "w_error_snapshot-delete-missing", "Delete a snapshot that does not exist", [{"op": "snapshot_delete", "name": "x"}],
         "snapshot.not_found", ["R-snap-3"]),
        ("snapshot", "w_error_snapshot-name-empty", "An empty snapshot name", [snap("")], "snapshot.name", ["R-snap-4"]),
        ("snapshot", "w_error_snapshot-name-256", "A 256-byte snapshot name", [snap("s" * 256)], "snapshot.name", ["R-snap-4"]),
        ("snapshot", "w_error_snapshot-metadata-1025", "Snapshot metadata of 1025 bytes", [snap("s", bytes(1025))], "snapshot.metadata",
         ["R-snap-4"]),
        ("snapshot", "w_error_snapshot-rename-onto-existing", "Rename a snapshot onto another's name",
         [snap("a"), snap("b"), {"op": "snapshot_rename", "name": "a", "new": "b"}], "snapshot.exists", ["R-snap-1"]),
        ("snapshot", "w_error_snapshot-in-transaction", "A snapshot operation inside a transaction", [txn(put("a", b"1"), snap("s"))],
         "usage.argument", ["R-snap-1"]),
        ("image", "w_error_capacity-exhausted", "A fixed 16 KiB image cannot take a 64 KiB blob",
         [put("big", pattern(65536, "big"))], "space.exhausted", ["R-alloc-3"]),
    ]
    for area, name, desc, ops, code, spec in E:
        create = {"cluster_size": 512, "capacity": 16384} if "capacity" in name else None
        w(area, name, desc, spec, ops, create=create, error=code)


# -- roundtrip -----------------------------------------------------------------------------

def roundtrip_cases(c) -> None:
    raw, m = base(CS)
    F = "0x"
    e = ed_of(raw)
    e.set_slot("compatible_features", 1 << 12)
    c.roundtrip("feature", "r_feature_compatible-bit-kept", "An unknown compatible bit survives a rewrite", ["R-feature-2"],
                e.bytes(), m.logical(), {"compatible_features": "0x1000"}, flags=["UnknownCompatBit"])
    e = ed_of(raw)
    e.set_slot("compatible_features", (1 << 63) | 1)
    c.roundtrip("feature", "r_feature_compatible-bits-0-and-63-kept", "Unknown compatible bits 0 and 63 survive a rewrite", ["R-feature-2"],
                e.bytes(), m.logical(), {"compatible_features": "0x8000000000000001"}, flags=["UnknownCompatBit"])
    e = ed_of(raw)
    e.set_slot("autoclear_features", 1 << 3)
    c.roundtrip("feature", "r_feature_autoclear-bit-cleared", "An unknown autoclear bit is cleared by a writer", ["R-feature-3"],
                e.bytes(), m.logical(), {"autoclear_features": "0x0"}, flags=["UnknownAutoclearBit"])
    e = ed_of(raw)
    e.set_slot("autoclear_features", 0xFFFF)
    e.set_slot("compatible_features", 0xF0)
    c.roundtrip("feature", "r_feature_compatible-kept-autoclear-cleared", "Both masks at once: compatible kept, autoclear cleared",
                ["R-feature-2", "R-feature-3"], e.bytes(), m.logical(),
                {"compatible_features": "0xf0", "autoclear_features": "0x0", "incompatible_features": "0x0"})
    e = ed_of(raw)
    e.set_extensions(CREATOR + ext(0x1234, 0, b"\xc0\xff\xee") + END)
    c.roundtrip("header", "r_header_unknown-extension-kept", "An unknown, non-required header extension survives a rewrite",
                ["R-header-12", "R-header-1"], e.bytes(), m.logical(),
                {"header_extensions": [{"type": 1, "required": False, "data_hex": b"nvbox-reference 1.0".hex()},
                                       {"type": 4660, "required": False, "data_hex": "c0ffee"}]})
    e = ed_of(raw)
    e.set_extensions(ext(0x9000, 0, b"") + ext(0x9001, 0, pattern(40, "x")) + END)
    c.roundtrip("header", "r_header_two-unknown-extensions-kept", "Two unknown extensions (one empty) survive; no creator is added",
                ["R-header-12", "R-header-1"], e.bytes(), m.logical(),
                {"header_extensions": [{"type": 0x9000, "required": False, "data_hex": ""},
                                       {"type": 0x9001, "required": False, "data_hex": pattern(40, "x").hex()}]})
    raws, ms = base_snaps3()
    c.roundtrip("snapshot", "r_snapshot_image-with-snapshots", "Rewriting an image with snapshots keeps every snapshot",
                ["R-snap-1", "R-cow-2"], raws, ms.logical(), {}, expect_check=["clean"])
    rawd, md = base_deep(CS, 60)
    c.roundtrip("directory", "r_dir_multi-level", "Rewriting a multi-level directory keeps every blob", ["R-dir-5", "R-cow-1"],
                rawd, md.logical(), {}, expect_check=["clean"])
    e = ed_of(raw)
    leaf = leaf_of(e)
    body = e.dir_body(leaf)
    entry_named(body.kids, "b/one").kids.append(TLV(0x85, b"\x01\x02\x03"))
    e.set_dir_node(leaf, body)
    c.roundtrip("directory", "r_dir_entry-extension-kept-readable", "A rewrite of a leaf holding an entry with extension fields stays readable",
                ["R-dir-4"], e.bytes(), m.logical(), {}, expect_check=["clean"])

