"""The generated parser on images written by tests/mkimage.py, valid and broken.

Each invalid case breaks one rule and expects the Kaitai exception class and the
descriptor path (`src_path`) that names the rule.
"""
from __future__ import annotations

import hashlib
import struct

import kaitaistruct as ks
import pytest

import mkimage
from mkimage import crc32c, der_int, der_len, der_seq, tlv

BLOBS = {
    "tpm/permanent": b"\x01" * 100,
    "nic0/eeprom": bytes(range(256)) * 40,             # 10 KiB: a depth-1 map at 4 KiB
    "empty": b"",
    "vpd": b"v" * 512,                                  # exactly inline_max at 4 KiB
    "holey": b"\0" * 8192 + b"tail",                     # a hole at cluster 0 and 1
}


def walk_blob(img, content, cs):
    """Read a blob's bytes through the descriptors (holes read as zeros)."""
    if content.tag == 0x80:
        return content.inline_data
    cm = content.clusters
    if cm.root_pointer.pointer.offset == 0:
        return None

    def rd(node, level):
        if level == 0:
            return node.data
        out = b""
        for e in node.entries:
            out += (rd(e.child, level - 1) if e.pointer.offset
                    else b"\0" * cs * (cs // img.pointer_width) ** (level - 1))
        return out
    return rd(cm.root_node, cm.depth.value)


def entries(img):
    root = img.dir_root_node
    if root is None:
        return []
    if root.level == 0:
        return list(root.body.entries)
    out = []
    for br in root.body.branches:
        out += br.child_node.body.entries
    return out


def blob_bytes(img, entry):
    body = entry.body
    data = walk_blob(img, body.content, img.cluster_size)
    return (data or b"")[: body.size.value].ljust(body.size.value, b"\0")


@pytest.mark.parametrize("bits", [9, 12, 16])
def test_valid_image_roundtrip(tmp_path, parse, bits):
    p = tmp_path / "a.nvbox"
    info = mkimage.build(p, BLOBS, cluster_bits=bits, snapshots=["before-upgrade", "s2"])
    img = parse(p)
    h = img.header
    assert (h.version, h.cluster_bits, h.header_length, h.refcount_order) == (1, bits, 128, 4)
    assert h.header_clusters == info["header_clusters"]
    assert h.extensions[0].ext_type == img.ExtType.creator.value
    assert h.extensions[0].creator_name == "mkimage"
    assert h.extensions[-1].ext_type == img.ExtType.end_of_extensions.value
    assert img.active_slot_index == 0 and img.slot_a.is_valid and not img.slot_b.is_valid
    s = img.active_slot
    assert s.image_clusters == info["image_clusters"]
    assert s.refcount_depth == info["refcount_depth"]
    assert s.blob_count == len(BLOBS)
    got = {e.body.name.value: blob_bytes(img, e) for e in entries(img)}
    assert got == BLOBS
    # keys ascending in each leaf (checked here; Kaitai cannot hash)
    keys = [hashlib.sha256(e.body.name.value.encode()).digest() for e in entries(img)]
    assert keys == sorted(keys)
    # refcounts
    half = img.cluster_size // 2
    root = img.refcount_root_node
    blocks = [root] if s.refcount_depth == 1 else [e.child for e in root.entries if e.pointer.offset]
    counts = [c for b in blocks for c in b.counts]
    for c, n in info["counts"].items():
        assert counts[c] == n, c
    assert all(c == 0 for c in counts[s.image_clusters:])
    assert len(counts) >= half
    # snapshots
    snaps = img.snapshot_table.snapshots
    assert [x.body.name.value for x in snaps] == ["before-upgrade", "s2"]
    assert snaps[0].body.dir_root_node.count == img.dir_root_node.count
    img._fetch_instances()      # every lazy instance parses on a small image


def test_crcs_exposed_for_application_check(tmp_path, parse):
    p = tmp_path / "a.nvbox"
    mkimage.build(p, BLOBS)
    img = parse(p)
    assert crc32c(img.header.crc_input) == img.header.header_crc
    assert crc32c(img.active_slot.crc_input) == img.active_slot.slot_crc
    for ptr in (img.active_slot.refcount_root, img.active_slot.dir_root):
        assert crc32c(ptr.cluster_bytes) == ptr.crc
    for e in entries(img):
        c = e.body.content
        if c.tag != 0x80 and c.clusters.root_pointer.pointer.offset:
            assert crc32c(c.clusters.root_pointer.pointer.cluster_bytes) == c.clusters.root_pointer.pointer.crc


def test_directory_with_index_node(tmp_path, parse):
    blobs = {f"dev{i}/state": bytes([i]) * 60 for i in range(40)}
    p = tmp_path / "a.nvbox"
    info = mkimage.build(p, blobs, cluster_bits=9)
    assert info["dir_depth"] == 2
    img = parse(p)
    assert img.dir_root_node.level == 1
    br = img.dir_root_node.body.branches
    assert br[0].low_key.value == b"" and all(len(b.low_key.value) == 32 for b in br[1:])
    assert {e.body.name.value: blob_bytes(img, e) for e in entries(img)} == blobs


def test_empty_image(tmp_path, parse):
    p = tmp_path / "a.nvbox"
    mkimage.build(p, {})
    img = parse(p)
    assert img.dir_root_node is None and img.snapshot_table is None
    assert img.active_slot.dir_root.is_null
    img._fetch_instances()


def test_encrypted_image_plaintext_structures(tmp_path, parse):
    p = tmp_path / "e.nvbox"
    mkimage.build(p, BLOBS, encrypted=True)
    img = parse(p)
    assert img.is_encrypted and img.pointer_width == 40
    assert img.active_slot.dir_root.nonce != bytes(12)
    assert img.dir_root_node is None and img.refcount_root_node is None   # ciphertext
    kt = img.keyslot_table
    assert kt.cipher == img.CipherId.aes_256_gcm
    assert kt.slots[0].kind == img.KeySlotKind.passphrase_argon2id
    assert all(sl.kind == img.KeySlotKind.empty for sl in kt.slots[1:])
    assert crc32c(img.active_slot.keyslots.cluster_bytes) == img.active_slot.keyslots.crc
    img._fetch_instances()


def test_slot_b_newer_wins(tmp_path, parse):
    p = tmp_path / "a.nvbox"
    mkimage.build(p, {"a": b"1"})
    raw = bytearray(p.read_bytes())
    raw[1024:1536] = raw[512:1024]
    struct.pack_into("<Q", raw, 1024 + 8, 2)
    img = parse(bytes(raw))
    assert img.active_slot_index == 1 and img.active_slot.generation == 2


# --- invalid structures -----------------------------------------------------

@pytest.fixture(scope="module")
def good(tmp_path_factory):
    p = tmp_path_factory.mktemp("img") / "good.nvbox"
    mkimage.build(p, {"small": b"abc", "big": b"B" * 10000}, snapshots=["s"])
    return bytes(p.read_bytes())


def poke(raw, off, data):
    raw = bytearray(raw)
    raw[off:off + len(data)] = data
    return bytes(raw)


def expect(parse, raw, exc, path, touch=lambda img: img):
    with pytest.raises(exc) as ei:
        touch(parse(raw))
    if path is not None:
        assert ei.value.src_path == path, str(ei.value)
    return ei.value


def dir_root_off(raw):
    return struct.unpack_from("<Q", raw, 512 + 128)[0]


def test_bad_magic(parse, good):
    e = expect(parse, poke(good, 0, b"\x89PNG"), ks.ValidationNotEqualError, "/types/image_header/seq/0")
    assert isinstance(e, ks.ValidationFailedError) and isinstance(e, ks.KaitaiStructError)


@pytest.mark.parametrize("off,data,exc,path", [
    (8, struct.pack("<I", 2), ks.ValidationNotEqualError, "/types/image_header/seq/1"),
    (12, struct.pack("<I", 132), ks.ValidationExprError, "/types/image_header/seq/2"),
    (12, struct.pack("<I", 512), ks.ValidationExprError, "/types/image_header/seq/2"),
    (16, b"\x08", ks.ValidationLessThanError, "/types/image_header/seq/3"),
    (16, b"\x16", ks.ValidationGreaterThanError, "/types/image_header/seq/3"),
    (17, b"\x05", ks.ValidationNotEqualError, "/types/image_header/seq/4"),
    (18, b"\x01", ks.ValidationNotEqualError, "/types/image_header/seq/5"),
    (20, b"\x01", ks.ValidationNotEqualError, "/types/image_header/seq/6"),
    (40, struct.pack("<Q", 2), ks.ValidationExprError, "/types/image_header/seq/8"),
    (100, b"\x01", ks.ValidationNotEqualError, "/types/image_header/seq/10"),
])
def test_bad_header_field(parse, good, off, data, exc, path):
    expect(parse, poke(good, off, data), exc, path)


def header_with_ext(tmp_path, exts):
    p = tmp_path / "x.nvbox"
    mkimage.build(p, {}, raw_ext=exts)
    return p.read_bytes()


def test_extensions(tmp_path, parse):
    raw = header_with_ext(tmp_path, [(7, 0, b"ignored"), (1, 0, b"me"), (0, 0, b"")])
    assert [e.ext_type for e in parse(raw).header.extensions] == [7, 1, 0]
    # unknown + required
    raw = header_with_ext(tmp_path, [(7, 1, b"x"), (0, 0, b"")])
    expect(parse, raw, ks.ValidationExprError, "/types/header_extension/seq/3")
    # reserved flag bit
    raw = header_with_ext(tmp_path, [(7, 2, b"x"), (0, 0, b"")])
    expect(parse, raw, ks.ValidationExprError, "/types/header_extension/seq/1")
    # creator longer than 64 bytes
    raw = header_with_ext(tmp_path, [(1, 0, b"c" * 65), (0, 0, b"")])
    expect(parse, raw, ks.ValidationExprError, "/types/header_extension/seq/3")
    # non-zero padding
    raw = header_with_ext(tmp_path, [(1, 0, b"abc"), (0, 0, b"")])
    expect(parse, poke(raw, 128 + 8 + 3, b"\x01"), ks.ValidationNotEqualError,
           "/types/header_extension/seq/4")
    # a non-zero byte after the end record (R-header-10)
    raw = header_with_ext(tmp_path, [(1, 0, b"abc"), (0, 0, b"")])
    expect(parse, poke(raw, 505, b"\x01"), ks.ValidationNotEqualError, "/types/header_extension/seq/4")
    # no end record: records run into byte 508
    raw = header_with_ext(tmp_path, [(7, 0, b"x" * 8)] * 30)
    expect(parse, raw, ks.ValidationExprError, "/types/header_extension/seq/2")


def test_truncated(parse, good):
    expect(parse, good[:2000], EOFError, None)


def test_no_valid_slot(parse, good):
    raw = poke(good, 512, b"XXXX")
    img = parse(raw)        # the raw slots still parse
    assert not img.slot_a.is_valid and not img.slot_b.is_valid
    e = expect(parse, raw, ks.ValidationExprError, "/types/commit_slot/seq/1", lambda i: i.active_slot)
    # not cached: a second access fails again instead of returning the bad slot
    img = parse(raw)
    for _ in range(2):
        with pytest.raises(ks.ValidationExprError):
            img.active_slot
    assert e


def test_wrong_parity_is_not_valid(parse, good):
    raw = poke(good, 512 + 8, struct.pack("<Q", 2))
    assert not parse(raw).slot_a.is_valid


@pytest.mark.parametrize("off,data,seq", [
    (16, struct.pack("<Q", 2), 2),                      # unknown incompatible feature
    (16, struct.pack("<Q", 1 << 63), 2),                # bit 63 (a shift turned into >>> missed it)
    (40, struct.pack("<Q", (1 << 40) + 1), 5),          # image_clusters > 2^40
    (40, struct.pack("<Q", 1), 5),                      # image_clusters < header_clusters + 1
    (56, struct.pack("<Q", 0), 7),                      # next_snapshot_id 0
    (72, b"\x07", 9),                                   # refcount_depth 7
    (73, b"\x11", 10),                                  # dir_depth 17
    (75, b"\x01", 12),                                  # reserved0
    (76, struct.pack("<I", 1025), 13),                  # snapshot_count
    (80, struct.pack("<Q", 0), 14),                     # snaptable_size 0 with snapshots
    (136, struct.pack("<I", 0), 16),                    # dir_root null but dir_depth 1 ...
    (248, struct.pack("<Q", 10 ** 6), 19),             # alloc_hint beyond image_clusters
    (300, b"\x01", 20),                                 # reserved1
    (480, b"\x01", 21),                                 # slot_mac non-zero in a plain image
])
def test_bad_active_slot_field(parse, good, off, data, seq):
    raw = poke(good, 512 + off, data)
    if off == 136:   # make dir_root null (all 16 bytes) while dir_depth stays 1
        raw = poke(good, 512 + 128, bytes(16))
    e = expect(parse, raw, ks.ValidationFailedError, None, lambda i: i.active_slot)
    assert e.src_path == f"/types/commit_slot/seq/{seq}", str(e)


def test_encrypted_needs_1k_clusters(tmp_path, parse):
    p = tmp_path / "e.nvbox"
    mkimage.build(p, {}, encrypted=True, cluster_bits=12)
    expect(parse, poke(p.read_bytes(), 16, b"\x09"), ks.ValidationExprError, "/types/commit_slot/seq/2",
           lambda i: i.active_slot)


@pytest.mark.parametrize("delta,path", [
    (100, "/types/pointer/seq/0"),                          # misaligned
    (None, "/types/pointer/seq/1"),                         # out of range (checked with the crc)
])
def test_bad_pointer(parse, good, delta, path):
    off = dir_root_off(good)
    new = off + delta if delta else 10 ** 9 * 4096
    raw = poke(good, 512 + 128, struct.pack("<Q", new))
    expect(parse, raw, ks.ValidationExprError, path, lambda i: i.active_slot)


def test_pointer_reserved_and_null_rules(parse, good):
    raw = poke(good, 512 + 128 + 12, b"\x01")
    expect(parse, raw, ks.ValidationNotEqualError, "/types/pointer/seq/2", lambda i: i.active_slot)
    raw = poke(good, 512 + 168 + 20, b"\x01")   # padding after a plain pointer in a 40-byte field
    expect(parse, raw, ks.ValidationExprError, "/types/pointer/seq/5", lambda i: i.active_slot)


def test_pointer_into_header_area(parse, good):
    raw = poke(good, 512 + 128, struct.pack("<Q", 0))
    raw = poke(raw, 512 + 128, struct.pack("<Q", 0) + b"\1\0\0\0")  # null with a crc
    expect(parse, raw, ks.ValidationExprError, "/types/pointer/seq/1", lambda i: i.active_slot)


@pytest.mark.parametrize("cap,ok", [(0, True), (2 ** 40, True), (2 ** 40 + 1, False), (2 ** 41, False),
                                    (2 ** 64 - 1, False)])
def test_capacity_at_most_2_40(parse, good, cap, ok):
    raw = poke(good, 40, struct.pack("<Q", cap))
    if ok:
        assert parse(raw).header.capacity_clusters == cap
    else:
        expect(parse, raw, ks.ValidationExprError, "/types/image_header/seq/8")


@pytest.mark.parametrize("rel,data,path", [
    (0, b"NVDX", "/types/dir_node/seq/0"),
    (4, b"\x01", "/types/dir_node/seq/1"),                  # level != dir_depth - 1
    (5, b"\x01", "/types/dir_node/seq/2"),
    (6, struct.pack("<H", 0), "/types/dir_node/seq/3"),
    (6, struct.pack("<H", 3), "/types/dir_node/seq/6"),     # count != elements
    (8, struct.pack("<I", 5000), "/types/dir_node/seq/4"),
    (12, b"\x01", "/types/dir_node/seq/5"),
    (4000, b"\x01", "/types/dir_node/seq/7"),               # padding
])
def test_bad_dir_node(parse, good, rel, data, path):
    raw = poke(good, dir_root_off(good) + rel, data)
    expect(parse, raw, ks.ValidationFailedError, path, lambda i: i.dir_root_node)


def leaf_with(tmp_path, parse, body):
    """A valid image whose directory leaf body is replaced by `body` (count 1)."""
    p = tmp_path / "a.nvbox"
    mkimage.build(p, {"small": b"abc"})
    raw = p.read_bytes()
    off = dir_root_off(raw)
    node = b"NVDN" + struct.pack("<BBHII", 0, 0, 1, len(body), 0) + body
    return poke(raw, off, node.ljust(4096, b"\0"))


def entry(name=b"small", size=der_int(3), content=tlv(0x80, b"abc"), ext=b""):
    return der_seq(tlv(0x0C, name) + size + content + ext)


@pytest.mark.parametrize("body,path", [
    (der_seq(entry()), None),                                                   # control: valid
    (b"\x31" + der_seq(entry())[1:], "/types/dir_body/seq/0"),                  # SET, not SEQUENCE
    (b"\x30\x81\x10" + entry(), "/types/length/seq/1"),           # non-minimal long form
    (b"\x30\x80" + entry() + b"\0\0", "/types/length/seq/0"),     # indefinite
    (der_seq(entry(size=tlv(0x02, b"\x00\x03"))), "/types/uint_body/seq/1"),
    (der_seq(entry(size=tlv(0x02, b"\x83"))), "/types/uint_body/seq/0"),  # negative
    (der_seq(entry(size=der_int(4))), "/types/dir_entry_body/seq/2"),           # inline len != size
    (der_seq(entry(name=b"")), "/types/dir_entry_body/seq/0"),
    (der_seq(entry(ext=tlv(0x81, b"x"))), "/types/dir_entry_body/seq/3"),       # [1] not an extension
    (der_seq(entry(ext=tlv(0x82, b"x"))), None),                                # [2] is
    (der_seq(entry(ext=tlv(0x1f, b"x"))), "/seq/0"),            # tag outside subset (path within nvbox_der.ksy)
    (der_seq(entry(content=tlv(0xA1, der_int(1) + tlv(0x04, bytes(16))))),
     "/types/dir_entry_body/seq/2"),                                            # map depth != size
    (der_seq(entry(size=der_int(0), content=tlv(0xA1, der_int(0) + tlv(0x04, bytes(16)) + der_int(0)))),
     "/types/cluster_map/seq/2"),                                               # element after root
    (der_seq(entry(name=b"n" * 200, size=der_int(200), content=tlv(0x80, b"i" * 200))), None),  # inline >= 128
    (der_seq(entry(size=der_int(2 ** 48), content=tlv(0xA1, der_int(5) + tlv(0x04, bytes(16))))), None),
    (der_seq(entry(size=der_int(2 ** 48 + 1), content=tlv(0xA1, der_int(5) + tlv(0x04, bytes(16))))),
     "/types/dir_entry_body/seq/1"),                                            # size > 2^48
    (der_seq(entry(size=der_int(2 ** 56), content=tlv(0xA1, der_int(6) + tlv(0x04, bytes(16))))),
     "/types/dir_entry_body/seq/1"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_der(tmp_path, parse, body, path):
    raw = leaf_with(tmp_path, parse, body)
    if path is None:
        assert parse(raw).dir_root_node.body.entries[0].body.name.value in ("small", "n" * 200)
    else:
        expect(parse, raw, ks.ValidationFailedError, path, lambda i: i.dir_root_node)


def test_der_length_forms():
    # sanity of the helper itself against the spec (0x81-0x83)
    assert der_len(127) == b"\x7f" and der_len(128) == b"\x81\x80"
    assert der_len(256) == b"\x82\x01\x00" and der_len(70000) == b"\x83\x01\x11\x70"


def test_der_long_lengths(ksy):
    import io
    from kaitaistruct import KaitaiStream
    der = ksy.nvbox_der.NvboxDer
    for n in (0, 127, 128, 255, 256, 70000):
        v = der(KaitaiStream(io.BytesIO(tlv(0x04, b"a" * n))))
        assert v.len.value == n and len(v.body) == n
    for n in (0, 1, 127, 128, 2 ** 24 + 3, 2 ** 32 + 5, 2 ** 40 + 1, 2 ** 48, 2 ** 56 - 1,
              2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1):
        b = der_int(n)
        v = der(KaitaiStream(io.BytesIO(b)))
        assert ksy.nvbox_der.NvboxDer.UintBody(KaitaiStream(io.BytesIO(v.body))).value == n
    nested = der_seq(der_seq(tlv(0xA5, der_int(1))), tlv(0x0C, "é".encode()))
    v = der(KaitaiStream(io.BytesIO(nested)))
    assert v.elements.elements[0].elements.elements[0].context_number == 5
    with pytest.raises(ks.ValidationFailedError):
        der(KaitaiStream(io.BytesIO(b"\x04\x84\0\0\0\1a")))


@pytest.fixture
def enc_raw(tmp_path):
    p = tmp_path / "e.nvbox"
    mkimage.build(p, {"a": b"1"}, encrypted=True)
    raw = p.read_bytes()
    return raw, struct.unpack_from("<Q", raw, 512 + 208)[0]


@pytest.mark.parametrize("rel,data,path", [
    (0, b"NVKX", "/types/keyslot_cluster/seq/0"),
    (4, struct.pack("<H", 2), "/types/keyslot_cluster/seq/1"),
    (6, struct.pack("<H", 9), "/types/keyslot_cluster/seq/2"),
    (8, struct.pack("<I", 2), "/types/keyslot_cluster/seq/3"),
    (12, b"\x01", "/types/keyslot_cluster/seq/4"),
    (32, b"\x00", "/types/keyslot_cluster/seq/5"),             # no slot in use
    (32, b"\x04", "/types/key_slot/seq/0"),                  # unknown kind
    (33, b"\x01", "/types/key_slot/seq/1"),
    (32 + 96 + 20, b"\x01", "/types/key_slot/seq/5"),        # empty slot with a salt
    (32 + 92, b"\x01", "/types/key_slot/seq/9"),
    (900, b"\x01", "/types/keyslot_cluster/seq/6"),            # padding
    # R-enc-7: KDF parameters a reader must refuse before running the KDF.
    (32 + 4, struct.pack("<I", 257), "/types/key_slot/seq/2"),          # Argon2id t > 256
    (32 + 8, struct.pack("<I", 0xFFFFFFFF), "/types/key_slot/seq/3"),   # Argon2id m > 4 GiB
    (32 + 12, struct.pack("<I", 65), "/types/key_slot/seq/4"),          # Argon2id p > 64
    (32 + 8, struct.pack("<I", 16), "/types/key_slot/seq/4"),           # m = 16 KiB < 8 p (p = 4)
    (32 + 96, struct.pack("<B3xIII", 2, 30, 64, 1), "/types/key_slot/seq/3"),  # scrypt 128 r N > 4 GiB
])
def test_bad_keyslot_table(parse, enc_raw, rel, data, path):
    raw, off = enc_raw
    if rel == 32 and data == b"\x00":
        raw = poke(raw, off + 32, bytes(96))
    raw = poke(raw, off + rel, data)
    expect(parse, raw, ks.ValidationFailedError, path, lambda i: i.keyslot_table)
