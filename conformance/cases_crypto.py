"""Encrypted-image cases (spec section 10): keys, authentication, key slots, slot MACs."""

from __future__ import annotations

import struct

import nvbox
from nvbox import _format as fmt
from nvbox.crypto import Key

from conformance.corrupt import Editor
from conformance.builders import base_ops, build, delete, deterministic, pattern, put, snap

CS = 1024
KEY = pattern(32, "key-file-1")
OTHER_KEY = pattern(32, "key-file-2")


def key():
    return Key.from_key_bytes(KEY)


def enc_build(seed, ops, cs=CS):
    return build(seed, ops, cs, encrypt=True, key=key())


def editor(raw) -> Editor:
    with nvbox.open(bytes(raw), key=key()) as img:
        cipher = img.cipher
    return Editor(raw, cipher=cipher)


def all_cases(c) -> None:
    # Editing an encrypted cluster draws a fresh nonce: keep those deterministic too.
    with deterministic("crypto-edits"):
        _all_cases(c)


def _all_cases(c) -> None:
    E = ["R-enc-1", "R-enc-2", "R-enc-3", "R-enc-5", "R-ptr-1", "R-ptr-4"]
    raw, m = enc_build("enc-base", base_ops(CS))
    kw = dict(key_file=KEY, key=key())
    c.read_valid("crypto", "y_crypto_mixed-blobs--c1024", "An encrypted image (key file) with inline, clustered and empty blobs",
                 E, raw, m.logical(), **kw)
    raws, ms = enc_build("enc-snap", base_ops(CS) + [snap("s1", b"meta"), put("b/one", pattern(300, "x")), delete("e/two")])
    c.read_valid("crypto", "y_crypto_snapshot", "An encrypted image with a snapshot and metadata", E + ["R-snap-1"], raws, ms.logical(), **kw)
    rawd, md = enc_build("enc-deep", [put(f"dev{i:02d}", pattern(60, f"d{i}")) for i in range(40)])
    c.read_valid("crypto", "y_crypto_multi-level-directory", "An encrypted image whose directory has several levels",
                 E + ["R-dir-5"], rawd, md.logical(), **kw)
    ed = editor(raw)
    older = m.copy()
    # the newer slot's MAC fails (CRC fixed): treated as not valid, the older slot is used
    old_raw, old_m = enc_build("enc-base-older", base_ops(CS)[:-1])
    e2 = editor(raw)
    e2.poke_raw(e2.slot_off + 480, bytes([e2.data[e2.slot_off + 480] ^ 1]))
    struct.pack_into("<I", e2.data, e2.slot_off + 508, fmt.crc32c(bytes(e2.data[e2.slot_off:e2.slot_off + 508])))
    c.read_valid("crypto", "y_crypto_newer-slot-mac-fails-older-used", "The newer slot's MAC fails: the older slot is used",
                 ["R-slot-6", "R-slot-3"], e2.bytes(), old_m.logical(), **kw)

    def inv(name, desc, spec, data, code, accept=None, key_file=KEY):
        c.read_invalid("crypto", name, desc, spec, data, code, accept=accept, key_file=key_file,
                       key=Key.from_key_bytes(key_file) if key_file else None)

    inv("n_crypto_key-missing", "An encrypted image read without NVBOX_KEY_FILE", ["R-enc-3"], raw, "key.missing", key_file=None)
    inv("n_crypto_key-wrong", "An encrypted image read with a key file no slot accepts", ["R-enc-3"], raw, "key.invalid", key_file=OTHER_KEY)
    for kind, pick in (("data", lambda e: e.blob_node("b/one").index), ("map-node", lambda e: e.blob_node("c/multi", "map").index),
                       ("dir-leaf", lambda e: e.find("dir", level=0).index)):
        e = editor(raw)
        i = pick(e)
        e.poke_raw(i * CS + 200, bytes([e.data[i * CS + 200] ^ 4]))
        e.reseal(i)
        inv(f"n_crypto_auth-{kind}", f"A {kind} cluster's ciphertext changed, CRCs and MAC re-sealed: authentication fails",
            ["R-ptr-4", "R-enc-5"], e.bytes(), "cluster.auth")
    e = editor(raws)
    i = e.find("snapdata").index
    e.poke_raw(i * CS + 5, bytes([e.data[i * CS + 5] ^ 4]))
    e.reseal(i)
    inv("n_crypto_auth-snapshot-table", "The snapshot table's ciphertext changed (re-sealed)", ["R-ptr-4", "R-enc-5"], e.bytes(), "cluster.auth")
    # a cluster moved: b/one's data copied over c/multi's first data cluster, with its nonce, tag and crc
    e = editor(raw)
    src, dst = e.blob_node("b/one"), e.blob_node("c/multi", first_cluster=0)
    e.poke_raw(dst.index * CS, bytes(e.data[src.index * CS:(src.index + 1) * CS]))
    sp = e.layout.ptr_bytes(src.parents[0])
    e.write_pointer(dst.parents[0], struct.pack("<Q", dst.index * CS) + sp[8:])
    inv("n_crypto_auth-cluster-moved", "A cluster copied to another offset with its nonce, tag and CRC: the offset is bound",
        ["R-ptr-4", "R-enc-5"], e.bytes(), "cluster.auth")
    e = editor(raw)
    i = e.blob_node("b/one").index
    e.poke_raw(i * CS + 7, bytes([e.data[i * CS + 7] ^ 1]))
    inv("n_crypto_checksum-ciphertext", "A ciphertext bit flipped without re-sealing: the CRC fails first", ["R-ptr-3"], e.bytes(),
        "cluster.checksum")
    # key slots
    ks = editor(raw).layout.slot_refs["keyslots"].target

    def ks_edit(name, desc, spec, fn, code="key.slot_damaged", reseal=True, accept=None):
        e = editor(raw)
        fn(e)
        if reseal:
            e.reseal(ks)
        inv(name, desc, spec, e.bytes(), code, accept=accept)
    ks_edit("n_crypto_keyslots-magic", "The key slot table's magic is not NVKS (CRC and MAC re-sealed)", ["R-enc-2"],
            lambda e: e.poke_raw(ks * CS, b"NVKX"))
    ks_edit("n_crypto_keyslots-cipher", "The key slot table names cipher 2", ["R-enc-2"], lambda e: e.poke_raw(ks * CS + 8, b"\x02"))
    ks_edit("n_crypto_keyslots-none-in-use", "No key slot is in use", ["R-enc-4"], lambda e: e.poke_raw(ks * CS + 32, bytes(96)))
    ks_edit("n_crypto_keyslots-reserved", "A key slot's reserved bytes are non-zero", ["R-enc-2", "R-conv-5"],
            lambda e: e.poke_raw(ks * CS + 32 + 1, b"\x01"))
    ks_edit("n_crypto_keyslots-padding", "Non-zero padding after the 8 key slots", ["R-enc-2"], lambda e: e.poke_raw(ks * CS + 900, b"\x01"))
    # R-enc-7: a second slot (Argon2id) asking for 4 TiB of memory; the key file's slot would open.
    ks_edit("n_crypto_keyslots-kdf-memory-too-large", "An Argon2id slot records memory_cost 2^32-1 KiB, above the "
            "4 GiB bound, next to the slot the key opens", ["R-enc-7", "R-enc-2"],
            lambda e: e.poke_raw(ks * CS + 32 + 96, struct.pack("<B3xIII", 1, 3, 0xFFFFFFFF, 4)))
    ks_edit("n_crypto_keyslots-kdf-time-too-large", "An Argon2id slot records 2^32-1 iterations, above the bound of 256",
            ["R-enc-7", "R-enc-2"], lambda e: e.poke_raw(ks * CS + 32 + 96, struct.pack("<B3xIII", 1, 0xFFFFFFFF, 65536, 4)))
    ks_edit("n_crypto_keyslots-checksum", "The key slot table fails its (plain) CRC: key.slot_damaged, not cluster.checksum",
            ["R-enc-2", "R-ptr-3"], lambda e: e.poke_raw(ks * CS + 100, b"\x01"), reseal=False)
    # R-slot-7 step 4 in detail: no key comes before the table; a table past the end is image.truncated
    e = editor(raw)
    e.poke_raw(ks * CS + 100, b"\x01")
    inv("n_crypto_key-missing-damaged-table", "No key and a damaged key slot table: key.missing, the table is not read yet",
        ["R-slot-7", "R-enc-3"], e.bytes(), "key.missing", key_file=None)
    e = editor(raw)
    ic = e.get_slot("image_clusters")
    table = bytes(e.data[ks * CS:(ks + 1) * CS])
    e.set_slot("image_clusters", ic + 1)
    e.set_slot("keyslots", struct.pack("<QI", ic * CS, fmt.crc32c(table)) + bytes(4))
    inv("n_crypto_truncated-keyslots-past-end",
        "keyslots names a cluster past the end of a truncated file: image.truncated while reading the table (step 4)",
        ["R-slot-7", "R-conv-6"], e.bytes(), "image.truncated")
    short = KEY[:15]
    c.read_invalid("crypto", "n_crypto_key-file-short", "A key file of 15 bytes is refused before any slot is tried",
                   ["R-enc-8"], raw, "usage.argument", key_file=short, key=short)
    c.write("crypto", "w_error_crypto-key-file-short", "Creating an encrypted image with a 15-byte key file is refused",
            ["R-enc-8"], [], create={"cluster_size": 1024, "encrypt": True}, key_file=short, error="usage.argument")
    c.write("crypto", "w_error_crypto-encrypt-512", "An encrypted image with 512-byte clusters is refused",
            ["R-enc-1", "R-op-1"], [], create={"cluster_size": 512, "encrypt": True}, key_file=KEY, error="usage.argument")
    # a damaged slot is reported by check (R-check-3): the newer slot's MAC fails
    c.check("crypto", "k_crypto_slot-damaged-mac", "The newest slot's MAC fails: the older slot is used and check reports it",
            ["R-check-3", "R-slot-6"], e2.bytes(), "corrupt", key_file=KEY)
    # no valid slot once the MAC fails and the other slot is gone
    e = editor(raw)
    e.poke_raw(fmt.SLOT_OFFSETS[1 - e.layout.slot_index], bytes(512))
    e.poke_raw(e.slot_off + 480, bytes([e.data[e.slot_off + 480] ^ 1]))
    struct.pack_into("<I", e.data, e.slot_off + 508, fmt.crc32c(bytes(e.data[e.slot_off:e.slot_off + 508])))
    inv("n_crypto_slot-mac-fails-no-other", "The only valid slot fails its MAC: no slot remains", ["R-slot-6"], e.bytes(), "slot.none_valid")
    e = editor(raw)
    m_node = e.blob_node("c/multi", "map").index
    e.poke_cluster(m_node, CS - 3, b"\x01")
    inv("n_crypto_map-node-trailing-bytes", "Non-zero bytes after the last 40-byte pointer of a map node (1024 = 25 * 40 + 24)",
        ["R-ptr-1", "R-map-1", "R-map-4"], e.bytes(), "pointer.reserved")
    e = editor(raw)
    e.set_slot("keyslots", bytes(40))
    inv("n_crypto_keyslots-pointer-null", "An encrypted image whose slot has no keyslots pointer", ["R-enc-1", "R-slot-5"], e.bytes(),
        "slot.field")
    # write, roundtrip, check
    c.write("crypto", "w_crypto_basic", "Create an encrypted image and store blobs", ["R-enc-1", "R-enc-5", "R-enc-6", "R-commit-1"],
            [put("tpm/state", pattern(100, "t")), put("big", pattern(5000, "b")), snap("s"), delete("tpm/state")],
            create={"cluster_size": 1024, "encrypt": True}, key_file=KEY)
    c.check("crypto", "k_crypto_clean", "An intact encrypted image is clean", ["R-check-1", "R-enc-5"], raw, "clean", key_file=KEY)
    e = editor(raw)
    e.set_slot("compatible_features", 1 << 9)
    c.roundtrip("crypto", "r_crypto_compatible-bit-kept", "An encrypted rewrite keeps an unknown compatible bit (slot MAC re-made)",
                ["R-feature-2", "R-slot-6"], e.bytes(), m.logical(), {"compatible_features": "0x200", "incompatible_features": "0x1"},
                key_file=KEY)
