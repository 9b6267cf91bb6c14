"""What a Key and a Cipher remember between opens, and that it never changes an answer.

A ``Key`` keeps the cipher it unlocked, by image uuid and the exact bytes of the
key slot table; a ``Cipher`` keeps the last commit slot body whose MAC passed.
Each test makes the remembered answer wrong if it were used where the bytes
differ: a removed slot, a damaged table, a forged slot.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

import nvbox
from nvbox import _format as fmt
from nvbox import _seal, crypto
from nvbox.crypto import Key
from nvbox.errors import NvboxError

from helpers import active_slot_index, image_bytes


def code_of(fn, *args, **kwargs) -> str:
    with pytest.raises(NvboxError) as ei:
        fn(*args, **kwargs)
    return ei.value.code


def test_hkdf_is_rfc5869():
    # RFC 5869 appendix A.1 (test case 1): the first 32 bytes of its OKM are T(1).
    ikm, salt, info = bytes([0x0B] * 22), bytes(range(13)), bytes(range(0xF0, 0xFA))
    assert _seal.hkdf_sha256(ikm, salt, info).hex() == \
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
    for info in (b"nvbox v1 cluster", b"nvbox v1 slot mac", b"nvbox v1 key file"):
        master, uuid = bytes(range(32)), bytes(range(100, 116))
        assert _seal.hkdf_sha256(master, uuid, info) == HKDF(hashes.SHA256(), 32, uuid, info).derive(master)


def _table_offset(raw: bytes) -> int:
    off = fmt.SLOT_OFFSETS[active_slot_index(raw)]
    header = fmt.decode_header(raw[:fmt.HEADER_AREA])
    return fmt.decode_slot(raw[off:off + fmt.SECTOR], header).keyslots.offset


def test_reopen_with_the_same_key_skips_unwrap_and_derivation(tmp_path, monkeypatch):
    path = tmp_path / "e.nvbox"
    key = Key.from_passphrase("pw", kdf="fast")
    with nvbox.create(path, 4096, encrypt=True, key=key) as img:
        img["a"] = b"x" * 5000
    unwraps = []
    real = crypto._unlock_table
    monkeypatch.setattr(crypto, "_unlock_table", lambda *a: unwraps.append(1) or real(*a))
    for _ in range(3):
        with nvbox.open(path, key=key) as img:
            assert img["a"] == b"x" * 5000
    assert unwraps == []                      # create already unlocked this table with this key
    with nvbox.open(path, key=Key.from_passphrase("pw", kdf="fast")) as img:   # a new Key object
        assert img["a"] == b"x" * 5000
    assert unwraps == [1]


def test_a_removed_slot_no_longer_opens_even_for_a_key_that_opened_it(tmp_path):
    path = tmp_path / "e.nvbox"
    owner, guest = Key.from_passphrase("owner", kdf="fast"), Key.from_passphrase("guest", kdf="fast")
    with nvbox.create(path, 4096, encrypt=True, key=owner) as img:
        img.key_slots.add(guest)
    nvbox.open(path, key=guest).close()       # guest remembers what it unlocked
    with nvbox.open(path, "rw", key=owner) as img:
        img.key_slots.remove(guest)
    assert code_of(nvbox.open, path, key=guest) == "key.invalid"


@pytest.mark.parametrize("where", ["slot area", "zero tail", "last byte"])
def test_a_damaged_table_is_refused_after_a_remembered_open(tmp_path, where):
    path = tmp_path / "e.nvbox"
    key = Key.from_passphrase("pw", kdf="fast")
    with nvbox.create(path, 4096, encrypt=True, key=key) as img:
        img["a"] = b"1"
    nvbox.open(path, key=key).close()
    raw = bytearray(path.read_bytes())
    table = _table_offset(bytes(raw))
    raw[table + {"slot area": 40, "zero tail": 900, "last byte": 4095}[where]] ^= 0x10
    path.write_bytes(bytes(raw))
    assert code_of(nvbox.open, path, key=key) == "key.slot_damaged"


def test_a_table_equal_to_a_remembered_one_but_named_with_another_crc_is_refused(tmp_path):
    key = Key.from_passphrase("pw", kdf="fast")
    img = nvbox.create(None, 4096, encrypt=True, key=key)
    img["a"] = b"1"
    raw = bytearray(image_bytes(img))
    off = fmt.SLOT_OFFSETS[active_slot_index(bytes(raw))]
    raw[off + 216] ^= 1                                           # keyslots pointer's crc
    raw[off + 508:off + 512] = fmt.crc32c(bytes(raw[off:off + 508])).to_bytes(4, "little")
    assert code_of(nvbox.open, bytes(raw), key=key) == "key.slot_damaged"


def test_a_remembered_slot_body_does_not_vouch_for_a_forged_one():
    key = Key.from_passphrase("pw", kdf="fast")
    img = nvbox.create(None, 1024, encrypt=True, key=key)
    img["a"] = b"b"
    raw = image_bytes(img)
    off = fmt.SLOT_OFFSETS[active_slot_index(raw)]
    body = bytes(raw[off:off + 512])
    assert img.cipher.verify_slot(body) and img.cipher.verify_slot(body)   # the second from memory
    for pos in (0, 48, 475, 476, 507):
        forged = bytearray(body)
        forged[pos] ^= 1
        assert not img.cipher.verify_slot(bytes(forged)), pos
    assert img.cipher.verify_slot(body[:508] + bytes(4))     # bytes 508..511 (the CRC) are not MACed
    assert not img.cipher.verify_slot(body[:507])
