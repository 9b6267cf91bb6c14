"""Encryption for nvbox images (spec section 10).

Theory of operation
-------------------
An encrypted image has one random 32-byte **master key**, never stored in the
clear.  Up to eight **key slots** in the plaintext key slot table each hold the
master key wrapped (AES-256-GCM) under a key-encryption key (KEK) derived from
a passphrase (Argon2id, or scrypt where Argon2id is unavailable) or from a key
file (HKDF-SHA256).  The wrap's associated data ``"NVKS" || image_uuid ||
slot index`` pins a slot to its position and its image.

What the master key seals (clusters, commit slots) is ``nvbox._seal``'s
``Cipher``, the layer the cluster store uses; this module is the layer above
it, working on an open image: it finds the master key from a ``Key`` and the
key slot table (``unlock``, called by ``Image._load``), makes the first table
(``setup_for_create``, for ``create``), and changes the table
(``image.key_slots``).  Key slot changes are ordinary commits: the
transaction carries the new table as data, and the commit writes it to a new
cluster that the commit slot names.

Public API::

    key = nvbox.crypto.Key.from_passphrase("correct horse")   # or from_key_file(path), from_env()
    img = nvbox.create("vm.nvbox", encrypt=True, key=key)
    img.key_slots.list()            # [{"index": 0, "kind": "argon2id", "kdf_time": 3, ...}]
    i = img.key_slots.add(Key.from_key_file("backup.key"))
    img.key_slots.remove(0)         # or remove(key); never the last slot
    img.key_slots.replace(i, new_key)   # add + remove in one commit

KDF profiles: new passphrase slots use Argon2id t=3, m=64 MiB, p=4 (RFC 9106's
second recommendation).  ``Key(..., kdf="fast")`` or the environment variable
``NVBOX_KDF_PROFILE=test`` selects tiny parameters (t=1, m=64 KiB, p=1; scrypt
N=2^10): FOR TESTS ONLY, such a slot falls to a brute-force search.  Opening
always uses the parameters recorded in the slot.  Where Argon2id is missing
(``cryptography`` < 44, or an OpenSSL without it), new slots use scrypt (kind
2: N=2^17, r=8, p=1, 128 MiB) and Argon2id slots cannot be opened
(``feature.incompatible`` when no other slot opens).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from . import _format as fmt
from ._seal import KEY_SIZE, NONCE_SIZE, Cipher, hkdf_sha256
from .errors import raise_code

try:  # cryptography >= 44 with OpenSSL >= 3.2
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
except ImportError:  # pragma: no cover - depends on the platform
    Argon2id = None

__all__ = ["Key", "Cipher", "KeySlots", "KdfParams", "setup_for_create", "unlock", "argon2_available",
           "KIND_ARGON2ID", "KIND_SCRYPT", "KIND_KEYFILE"]

KIND_EMPTY, KIND_ARGON2ID, KIND_SCRYPT, KIND_KEYFILE = 0, 1, 2, 3
KDF_PROFILE_ENV = "NVBOX_KDF_PROFILE"
PASSPHRASE_ENV = "NVBOX_PASSPHRASE"
MIN_KEY_FILE = 16
_INFO_KEY_FILE = b"nvbox v1 key file"


@dataclass(frozen=True)
class KdfParams:
    """What a key slot records: ``kind`` and its three parameters (spec 10.1)."""

    kind: int
    time: int = 0       # Argon2id iterations; scrypt log2 N
    memory: int = 0     # Argon2id KiB; scrypt r
    lanes: int = 0      # Argon2id lanes; scrypt p


# Defaults for new slots, and the tiny test profile (never for real keys).
ARGON2ID_DEFAULT = KdfParams(KIND_ARGON2ID, 3, 64 * 1024, 4)
ARGON2ID_FAST = KdfParams(KIND_ARGON2ID, 1, 64, 1)
SCRYPT_DEFAULT = KdfParams(KIND_SCRYPT, 17, 8, 1)
SCRYPT_FAST = KdfParams(KIND_SCRYPT, 10, 8, 1)

# Limits a reader enforces on a slot's recorded parameters before running the
# KDF (R-limit-1: a hostile image must not make us allocate 2^32 GiB).
MAX_KDF_MEMORY_BYTES = 4 << 30
ARGON2_MAX_TIME = 256
MAX_LANES = 64
SCRYPT_MAX_LOG2N = 30
SCRYPT_MAX_R = 64

_argon2_ok: bool | None = None


def argon2_available() -> bool:
    """True when this platform can run Argon2id (probed once)."""
    global _argon2_ok
    if _argon2_ok is None:
        if Argon2id is None:
            _argon2_ok = False
        else:
            try:
                Argon2id(salt=bytes(16), length=32, iterations=1, lanes=1, memory_cost=8).derive(b"probe")
                _argon2_ok = True
            except UnsupportedAlgorithm:  # an OpenSSL without Argon2
                _argon2_ok = False
    return _argon2_ok


def _check_params(p: KdfParams, index: int) -> None:
    """Reject recorded KDF parameters out of the reference's bounds (key.slot_damaged)."""
    def bad(why):
        raise_code("key.slot_damaged", f"key slot {index}: {why}")

    if p.kind == KIND_ARGON2ID:
        if not 1 <= p.time <= ARGON2_MAX_TIME:
            bad(f"Argon2id iterations {p.time} outside 1..{ARGON2_MAX_TIME}")
        if not 1 <= p.lanes <= MAX_LANES:
            bad(f"Argon2id lanes {p.lanes} outside 1..{MAX_LANES}")
        if not 8 * p.lanes <= p.memory or p.memory * 1024 > MAX_KDF_MEMORY_BYTES:
            bad(f"Argon2id memory {p.memory} KiB outside {8 * p.lanes}..{MAX_KDF_MEMORY_BYTES >> 10}")
    elif p.kind == KIND_SCRYPT:
        if not 1 <= p.time <= SCRYPT_MAX_LOG2N or not 1 <= p.memory <= SCRYPT_MAX_R \
                or not 1 <= p.lanes <= MAX_LANES:
            bad(f"scrypt parameters log2N={p.time} r={p.memory} p={p.lanes} out of range")
        if 128 * p.memory * (1 << p.time) > MAX_KDF_MEMORY_BYTES:
            bad("scrypt would need more than 4 GiB")
    elif p.kind == KIND_KEYFILE:
        if p.time or p.memory or p.lanes:
            bad("a key-file slot has non-zero KDF parameters")


def _derive_kek(secret: bytes, p: KdfParams, salt: bytes) -> bytes:
    if p.kind == KIND_ARGON2ID:
        return Argon2id(salt=salt, length=KEY_SIZE, iterations=p.time, lanes=p.lanes,
                        memory_cost=p.memory).derive(secret)
    if p.kind == KIND_SCRYPT:
        return Scrypt(salt=salt, length=KEY_SIZE, n=1 << p.time, r=p.memory, p=p.lanes).derive(secret)
    if p.kind == KIND_KEYFILE:
        return hkdf_sha256(secret, salt, _INFO_KEY_FILE)
    raise ValueError(p.kind)


def _wrap_aad(image_uuid: bytes, index: int) -> bytes:
    return fmt.KEYSLOT_MAGIC + image_uuid + bytes([index])


# -- keys ------------------------------------------------------------------------------------------

class Key:
    """A passphrase or a key file: what unlocks an encrypted image.

    Args:
        secret: the passphrase (UTF-8 if ``str``) or the key file's bytes.
        source: "passphrase" or "keyfile".
        kdf: for new passphrase slots: "default" (Argon2id t=3, m=64 MiB, p=4),
            "fast" (tiny parameters: FOR TESTS ONLY), or None for the default
            unless ``NVBOX_KDF_PROFILE=test`` is set.
        algorithm: "argon2id", "scrypt" or None (Argon2id when available).

    The key caches, in memory only, the key-encryption keys it derived and the
    ciphers it unlocked (by image uuid and the exact bytes of the key slot
    table), so reopening an image with the same ``Key`` neither reruns the KDF
    nor unwraps and derives again while the table is unchanged.  A changed table
    (a slot added or removed) is unlocked afresh.
    """

    __slots__ = ("_secret", "source", "kdf", "algorithm", "_keks", "_master", "_unlocked")
    _UNLOCKED_MAX = 8

    def __init__(self, secret, source: str = "passphrase", *, kdf: str | None = None,
                 algorithm: str | None = None):
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        if not isinstance(secret, (bytes, bytearray, memoryview)):
            raise_code("usage.argument", "a key must be bytes or str")
        secret = bytes(secret)
        if source not in ("passphrase", "keyfile", "master"):
            raise_code("usage.argument", f"unknown key source {source!r}")
        if kdf not in (None, "default", "fast", "test"):
            raise_code("usage.argument", f"kdf must be 'default' or 'fast', not {kdf!r}")
        if algorithm not in (None, "argon2id", "scrypt"):
            raise_code("usage.argument", f"algorithm must be 'argon2id' or 'scrypt', not {algorithm!r}")
        if source == "passphrase" and not secret:
            raise_code("usage.argument", "the passphrase is empty")
        if source == "keyfile" and len(secret) < MIN_KEY_FILE:
            raise_code("usage.argument", f"a key file must hold at least {MIN_KEY_FILE} bytes")
        self._secret = secret
        self.source = source
        self.kdf = kdf
        self.algorithm = algorithm
        self._keks: dict = {}
        self._master = secret if source == "master" else None
        self._unlocked: dict = {}       # image uuid -> (table head, its zero tail, CRC, Cipher)

    @classmethod
    def from_passphrase(cls, passphrase, *, kdf: str | None = None, algorithm: str | None = None) -> "Key":
        return cls(passphrase, "passphrase", kdf=kdf, algorithm=algorithm)

    @classmethod
    def from_key_file(cls, path) -> "Key":
        """The raw bytes of the file at ``path`` (at least 16 bytes) are the key."""
        try:
            with open(path, "rb") as f:
                data = f.read(1 << 20)
        except OSError as exc:
            raise_code("io.error", f"cannot read key file {path}: {exc.strerror}")
        return cls(data, "keyfile")

    @classmethod
    def from_key_bytes(cls, data: bytes) -> "Key":
        """A key file's contents given directly."""
        return cls(data, "keyfile")

    @classmethod
    def from_env(cls, environ=None, *, kdf: str | None = None) -> "Key | None":
        """The passphrase in ``NVBOX_PASSPHRASE`` (UTF-8), or None when it is unset."""
        environ = os.environ if environ is None else environ
        value = environ.get(PASSPHRASE_ENV)
        return None if value is None else cls(value.encode("utf-8"), "passphrase", kdf=kdf)

    def __repr__(self):
        return f"<nvbox.crypto.Key {self.source}>"

    # -- slot parameters -------------------------------------------------------------------------

    def _fast(self) -> bool:
        if self.kdf in ("fast", "test"):
            return True
        if self.kdf == "default":
            return False
        return os.environ.get(KDF_PROFILE_ENV, "").lower() in ("test", "fast")

    def new_params(self) -> KdfParams:
        """The KDF a new slot for this key records."""
        if self.source == "keyfile":
            return KdfParams(KIND_KEYFILE)
        if self.source != "passphrase":
            raise_code("usage.argument", "only a passphrase or a key file can fill a key slot")
        algo = self.algorithm or ("argon2id" if argon2_available() else "scrypt")
        if algo == "argon2id":
            if not argon2_available():
                raise_code("feature.incompatible", "Argon2id is not available on this platform")
            return ARGON2ID_FAST if self._fast() else ARGON2ID_DEFAULT
        return SCRYPT_FAST if self._fast() else SCRYPT_DEFAULT

    def matches(self, kind: int) -> bool:
        """True if this key could open a slot of ``kind`` (a key file only key-file slots...)."""
        if self.source == "keyfile":
            return kind == KIND_KEYFILE
        return self.source == "passphrase" and kind in (KIND_ARGON2ID, KIND_SCRYPT)

    def cached_cipher(self, image_uuid: bytes, table: bytes, crc: int) -> "Cipher | None":
        """The cipher this key unlocked from exactly these table bytes, if any.

        A valid table is its 800-byte head followed by zeros (R-enc-2), so the
        head and the length name it; the tail is still compared with zeros, so
        a table the decoder would refuse is never answered from here.  Both
        comparisons are memcmp: no copy, no hash.  Equal bytes have the CRC
        recorded when they were first checked, so the pointer's ``crc`` is
        compared with that instead of recomputing it."""
        hit = self._unlocked.get(image_uuid)
        if hit is None:
            return None
        head, zero_tail, table_crc, cipher = hit
        if crc != table_crc or len(table) != _TABLE_HEAD + len(zero_tail) or not table.startswith(head) \
                or not table.endswith(zero_tail):
            return None
        return cipher

    def remember(self, image_uuid: bytes, table: bytes, crc: int, cipher: "Cipher") -> None:
        """Keep ``cipher`` as what this key unlocks from these table bytes (see ``cached_cipher``)."""
        if len(self._unlocked) >= self._UNLOCKED_MAX:
            self._unlocked.clear()
        self._unlocked[image_uuid] = (bytes(table[:_TABLE_HEAD]), _zero_tail(len(table)), crc, cipher)

    def _kek(self, p: KdfParams, salt: bytes) -> bytes:
        k = (p, salt)
        kek = self._keks.get(k)
        if kek is None:
            kek = self._keks[k] = _derive_kek(self._secret, p, salt)
        return kek

    # -- wrapping the master key -----------------------------------------------------------------

    def wrap(self, master: bytes, image_uuid: bytes, index: int) -> fmt.KeySlot:
        """Key slot ``index`` holding ``master`` wrapped under this key (fresh salt and nonce)."""
        p = self.new_params()
        salt = os.urandom(16)
        nonce = os.urandom(NONCE_SIZE)
        sealed = AESGCM(self._kek(p, salt)).encrypt(nonce, master, _wrap_aad(image_uuid, index))
        return fmt.KeySlot(p.kind, p.time, p.memory, p.lanes, salt, nonce, sealed[:KEY_SIZE], sealed[KEY_SIZE:])

    def unwrap(self, ks: fmt.KeySlot, image_uuid: bytes, index: int) -> bytes | None:
        """The master key if this key opens ``ks``, key slot ``index``; else None."""
        p = KdfParams(ks.kind, ks.kdf_time, ks.kdf_memory, ks.kdf_lanes)
        try:
            return AESGCM(self._kek(p, ks.salt)).decrypt(ks.nonce, ks.wrapped_key + ks.wrap_tag,
                                                         _wrap_aad(image_uuid, index))
        except InvalidTag:
            return None

    @property
    def master(self) -> bytes | None:
        """For a key made from the master key itself (source "master"), that key."""
        return self._master


# -- hooks used by image.py --------------------------------------------------------------------------

def setup_for_create(key: Key):
    """For ``create``: a function of the header giving (cipher, key slot table bytes).
    The master key is fresh randomness; slot 0 holds it wrapped under ``key``."""
    if not isinstance(key, Key) or key.source == "master":
        raise_code("usage.argument", "create(encrypt=True) needs an nvbox.crypto.Key (passphrase or key file)")
    key.new_params()  # fail early (feature.incompatible) before anything is written

    def setup(header):
        master = os.urandom(KEY_SIZE)
        slots = [key.wrap(master, header.image_uuid, 0)] + [fmt.KeySlot()] * (fmt.NUM_KEYSLOTS - 1)
        return Cipher(master, header.image_uuid), fmt.encode_keyslots(slots, fmt.Geometry(header.cluster_bits, True))

    return setup


_TABLE_HEAD = 32 + fmt.NUM_KEYSLOTS * fmt.KEYSLOT_SIZE     # the table's bytes that may be non-zero


@functools.lru_cache(maxsize=None)
def _zero_tail(table_size: int) -> bytes:
    """The zero bytes after a table's head, one object per cluster size (for a memcmp)."""
    return bytes(table_size - _TABLE_HEAD)


def read_table(image, slot=None) -> list[fmt.KeySlot]:
    """The key slot table ``slot`` (default: the image's durable slot) names,
    after its checksum (R-enc-2), decoded and its KDF bounds checked (R-enc-7).
    Only reads."""
    slot = image.slot if slot is None else slot
    raw = _read_table_unchecked(image, slot)
    _check_table_bytes(raw, slot.keyslots, 1 << image.header.cluster_bits)
    return _decode_table(raw)


def _read_table_unchecked(image, slot) -> bytes:
    """The bytes of the key slot table cluster, its CRC not yet checked.  ``slot``
    is a decoded slot: decode_slot has checked its ``keyslots`` pointer (R-slot-8)."""
    ptr = slot.keyslots
    if ptr.offset == 0:
        raise_code("key.not_encrypted", "the image is not encrypted")
    return image.dev.read(ptr.offset, 1 << image.header.cluster_bits)


def _check_table_bytes(raw: bytes, ptr: fmt.Pointer, cluster_size: int) -> None:
    """The table cluster is whole and matches its pointer's CRC (R-enc-2)."""
    if len(raw) != cluster_size:
        raise_code("image.truncated", f"the key slot table at {ptr.offset} lies past the end of the file")
    if fmt.crc32c(raw) != ptr.crc:
        raise_code("key.slot_damaged", f"the key slot table at {ptr.offset} does not match its checksum")


def _decode_table(raw: bytes) -> list[fmt.KeySlot]:
    table = fmt.decode_keyslots(raw)
    for i, ks in enumerate(table):
        if ks.in_use:
            _check_params(KdfParams(ks.kind, ks.kdf_time, ks.kdf_memory, ks.kdf_lanes), i)
    return table


def unlock(image, slot, key) -> Cipher:
    """The cipher of an encrypted image whose commit slot is ``slot``.

    Reads only (a wrong key leaves the file untouched).  Raises ``key.missing``,
    ``key.slot_damaged`` (checksum or contents of the table), ``key.invalid``
    (no slot opens with ``key``), or ``feature.incompatible`` (only Argon2id
    slots could match and this platform lacks Argon2id).
    """
    if key is None:
        raise_code("key.missing", "the image is encrypted: give a passphrase or key file")
    if not isinstance(key, Key):
        raise_code("usage.argument", "key must be an nvbox.crypto.Key")
    raw = _read_table_unchecked(image, slot)
    image_uuid, ptr = image.header.image_uuid, slot.keyslots
    # A reopen with the same key: equal table bytes unlock to the same cipher.
    cipher = key.cached_cipher(image_uuid, raw, ptr.crc)
    if cipher is None:
        _check_table_bytes(raw, ptr, 1 << image.header.cluster_bits)
        cipher = _unlock_table(_decode_table(raw), image_uuid, key)
        key.remember(image_uuid, raw, ptr.crc, cipher)
    return cipher


def _unlock_table(table: list[fmt.KeySlot], image_uuid: bytes, key: Key) -> Cipher:
    if key.source == "master":
        # The slot MAC, checked next by the caller, proves the master key right.
        return Cipher(key.master, image_uuid)
    skipped = tried = 0
    for i, ks in enumerate(table):
        if not ks.in_use or not key.matches(ks.kind):
            continue
        if ks.kind == KIND_ARGON2ID and not argon2_available():
            skipped += 1
            continue
        tried += 1
        master = key.unwrap(ks, image_uuid, i)
        if master is not None:
            return Cipher(master, image_uuid)
    if skipped and not tried:
        raise_code("feature.incompatible", "the key slots need Argon2id, which this platform lacks")
    raise_code("key.invalid", "no key slot opens with this key")


# -- the key manager ---------------------------------------------------------------------------------

def _slot_info(index: int, ks: fmt.KeySlot) -> dict:
    kind = fmt.KEYSLOT_KINDS[ks.kind]
    d = {"index": index, "kind": kind}
    if ks.kind == KIND_ARGON2ID:
        d.update(kdf="argon2id", iterations=ks.kdf_time, memory_kib=ks.kdf_memory, lanes=ks.kdf_lanes)
    elif ks.kind == KIND_SCRYPT:
        d.update(kdf="scrypt", log2_n=ks.kdf_time, r=ks.kdf_memory, p=ks.kdf_lanes)
    else:
        d.update(kdf="hkdf-sha256")
    return d


class KeySlots:
    """The key slots of an open encrypted image (``image.key_slots``).

    ``list()`` describes the slots in use (never secrets); ``add``, ``remove`` and
    ``replace`` each make one atomic commit (or join the open transaction) that
    writes a new key slot table cluster.  The master key does not change, so no
    cluster is re-encrypted.
    """

    def __init__(self, image):
        self.image = image

    def _cipher(self) -> Cipher:
        img = self.image
        img.check_open()
        if not img.slot.encrypted or img.cipher is None:
            raise_code("key.not_encrypted", "the image is not encrypted")
        return img.cipher

    def _table(self) -> list[fmt.KeySlot]:
        """The table as this transaction sees it (a pending change first)."""
        pending = self.image.txn.keyslot_table
        if pending is not None:
            return list(pending)
        return read_table(self.image)

    def list(self) -> list[dict]:
        self._cipher()
        return [_slot_info(i, ks) for i, ks in enumerate(self._table()) if ks.in_use]

    def __iter__(self):
        return iter(self.list())

    def __len__(self) -> int:
        return len(self.list())

    def find(self, key: Key) -> int | None:
        """The index of the first slot ``key`` opens, or None."""
        cipher = self._cipher()
        for i, ks in enumerate(self._table()):
            if ks.in_use and key.matches(ks.kind) and not (ks.kind == KIND_ARGON2ID and not argon2_available()):
                if key.unwrap(ks, cipher.image_uuid, i) is not None:
                    return i
        return None

    def add(self, new_key: Key) -> int:
        """Fill the lowest free slot with ``new_key``; return its index (``key.slots_full``)."""
        cipher = self._cipher()
        self.image.check_writable()
        if not isinstance(new_key, Key) or new_key.source == "master":
            raise_code("usage.argument", "expected an nvbox.crypto.Key (passphrase or key file)")
        table = self._table()
        free = [i for i, ks in enumerate(table) if not ks.in_use]
        if not free:
            raise_code("key.slots_full", f"all {fmt.NUM_KEYSLOTS} key slots are in use")
        index = free[0]
        table[index] = new_key.wrap(cipher.master, cipher.image_uuid, index)
        self._commit(table)
        return index

    def _resolve(self, which, table) -> int:
        if isinstance(which, Key):
            i = self.find(which)
            if i is None:
                raise_code("key.invalid", "no key slot opens with this key")
            return i
        if isinstance(which, bool) or not isinstance(which, int) or not 0 <= which < fmt.NUM_KEYSLOTS:
            raise_code("usage.argument", f"a key slot index is 0..{fmt.NUM_KEYSLOTS - 1} or a Key")
        if not table[which].in_use:
            raise_code("usage.argument", f"key slot {which} is empty")
        return which

    def remove(self, which) -> int:
        """Empty the slot ``which`` (an index, or the Key it opens with); return its
        index.  Refuses the last slot in use (``key.last_slot``)."""
        self._cipher()
        self.image.check_writable()
        table = self._table()
        index = self._resolve(which, table)
        if sum(ks.in_use for ks in table) <= 1:
            raise_code("key.last_slot", "refusing to remove the last key slot (the image could never be opened)")
        table[index] = fmt.KeySlot()
        self._commit(table)
        return index

    def replace(self, which, new_key: Key) -> int:
        """Put ``new_key`` in the slot ``which`` holds (change a passphrase) in one
        commit; return the index."""
        cipher = self._cipher()
        self.image.check_writable()
        if not isinstance(new_key, Key) or new_key.source == "master":
            raise_code("usage.argument", "expected an nvbox.crypto.Key (passphrase or key file)")
        table = self._table()
        index = self._resolve(which, table)
        table[index] = new_key.wrap(cipher.master, cipher.image_uuid, index)
        self._commit(table)
        return index

    def _commit(self, table: list[fmt.KeySlot]) -> None:
        """One commit (or a part of the open transaction) that writes ``table``."""
        img = self.image
        with img.transaction():
            img.txn.set_keyslot_table(table)
