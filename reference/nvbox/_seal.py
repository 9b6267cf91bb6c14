"""Sealing clusters and commit slots under an image's master key (spec 10.2, 10.3).

This is what the cluster store needs of encryption, and nothing more: from the
32-byte master key, HKDF-SHA256 (salt = image_uuid) derives

* the **cluster key** (info ``"nvbox v1 cluster"``): every cluster reached
  through a pointer, except the key slot table, is sealed with AES-256-GCM under
  it, with associated data ``"NVBX" || image_uuid || offset (u64 LE) || kind
  (u8)``; a fresh 96-bit nonce from ``os.urandom`` for every write, and nonce
  and tag stored in the parent pointer (so the tree is a Merkle tree);
* the **slot MAC key** (info ``"nvbox v1 slot mac"``): HMAC-SHA256 over bytes
  0..475 of every commit slot.

Where the master key comes from (key slots, passphrases, key files) is
``nvbox.crypto``'s business, a layer above.
"""

from __future__ import annotations

import functools
import hmac
import os
import struct
from collections import deque
from itertools import repeat

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import _format as fmt
from .errors import raise_code

__all__ = ["Cipher", "SealSlots", "hkdf_sha256", "TAG_SIZE", "NONCE_SIZE", "KEY_SIZE"]

TAG_SIZE, NONCE_SIZE, KEY_SIZE = 16, 12, 32

# AESGCM.encrypt_into is in the cryptography these tests run (50.0) but not
# necessarily in every release pyproject.toml accepts; Cipher.encrypt_run falls back.
_HAVE_ENCRYPT_INTO = hasattr(AESGCM, "encrypt_into")
_INFO_CLUSTER = b"nvbox v1 cluster"
_INFO_SLOT_MAC = b"nvbox v1 slot mac"
# A commit slot's MAC field; the MAC covers every byte before it.
_MAC = fmt.SLOT.span("slot_mac")


def _hkdf_extract(ikm: bytes, salt: bytes) -> bytes:
    """HKDF-SHA256's extract step (RFC 5869 section 2.2): PRK = HMAC(salt, ikm)."""
    return hmac.digest(salt, ikm, "sha256")


def _hkdf_expand32(prk: bytes, info: bytes) -> bytes:
    """HKDF-SHA256's expand step for one 32-byte output (RFC 5869 section 2.3:
    T(1) = HMAC(PRK, info || 0x01)).  hmac.digest runs in C; the cryptography
    package's HKDF object costs three times as much per call, and an open
    derives two keys."""
    return hmac.digest(prk, info + b"\x01", "sha256")


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 (RFC 5869) with one 32-byte output."""
    return _hkdf_expand32(_hkdf_extract(ikm, salt), info)


@functools.lru_cache(maxsize=64)
def _splitter(width: int, gap: int, n: int) -> struct.Struct:
    return struct.Struct(f"{gap}x{width}s" * n)


def _split(buf, width: int, gap: int, n: int) -> list:
    """``n`` bytes objects of ``width`` bytes, each after ``gap`` skipped bytes
    (one unpack: a tenth to a twentieth of the time of a slice each)."""
    return list(_splitter(width, gap, n).unpack_from(buf))


class SealSlots:
    """Output buffers for ``Cipher.encrypt_run``, made once and reused: one per
    cluster (ciphertext and tag, as ``encrypt_into`` writes them), with views of
    the two parts.  A new buffer and two views per cluster cost a fifth of the
    sealing time (and the garbage collector's time for 32,768 views a 64 MiB write)."""

    def __init__(self, cluster_size: int, count: int):
        self.cluster_size = cluster_size
        self.buffers = [bytearray(cluster_size + TAG_SIZE) for _ in range(count)]
        self.ciphertexts = [memoryview(b)[:cluster_size] for b in self.buffers]
        self.tags = [memoryview(b)[cluster_size:] for b in self.buffers]


class Cipher:
    """AES-256-GCM for clusters and HMAC-SHA256 for commit slots, under one master key."""

    def __init__(self, master: bytes, image_uuid: bytes):
        if len(master) != KEY_SIZE or len(image_uuid) != 16:
            raise ValueError("master key must be 32 bytes and the uuid 16")
        self._master = bytes(master)
        self.image_uuid = bytes(image_uuid)
        prk = _hkdf_extract(self._master, self.image_uuid)
        self._aead = AESGCM(_hkdf_expand32(prk, _INFO_CLUSTER))
        self._mac_key = _hkdf_expand32(prk, _INFO_SLOT_MAC)
        self._prefix = b"NVBX" + self.image_uuid
        self._aad = struct.Struct(f"<{len(self._prefix)}sQB")    # R-enc-5: prefix, offset, kind
        self._verified_slot = None      # the last commit slot body whose MAC checked out

    def __repr__(self):
        return "<nvbox.crypto.Cipher AES-256-GCM>"

    @property
    def master(self) -> bytes:
        """The master key: for wrapping into a key slot (``nvbox.crypto``); never written in the clear."""
        return self._master

    def aad(self, offset: int, kind: int) -> bytes:
        return self._aad.pack(self._prefix, offset, kind)

    def encrypt(self, offset: int, kind: int, plaintext) -> tuple[bytes, bytes, bytes]:
        """Seal one cluster: (ciphertext of the same length, nonce, tag).  A fresh
        random nonce every call (R-enc-6)."""
        if not 1 <= kind <= 255:
            raise ValueError("kind 0 (the key slot table) is never encrypted")
        nonce = self._fresh_nonces(1)
        out = self._aead.encrypt(nonce, bytes(plaintext), self.aad(offset, kind))
        return out[:-TAG_SIZE], nonce, out[-TAG_SIZE:]

    def encrypt_run(self, offset: int, cluster_size: int, kind: int, clusters, slots=None) -> tuple[list, list, list]:
        """Seal consecutive clusters, the first at ``offset``, each exactly
        ``cluster_size`` bytes (any buffers): (ciphertexts, nonces, tags), the
        same as ``encrypt`` on each.  The ciphertexts are views into ``slots``
        (a ``SealSlots`` with room for the run; a new one when not given), so
        they hold until that is used again: write them out first.

        Every step is a ``map`` of C functions, so there is no Python frame per
        cluster (at 4 KiB clusters, 64 MiB is 16,384 of them), and reused slots
        mean no new buffer or view per cluster either: the AEAD's own per-call
        cost, about 1 us in ``cryptography``, is the larger part that is left."""
        if not 1 <= kind <= 255:
            raise ValueError("kind 0 (the key slot table) is never encrypted")
        n = len(clusters)
        if any(map(cluster_size.__ne__, map(len, clusters))):
            raise ValueError("encrypt_run takes whole clusters")
        if slots is None or slots.cluster_size != cluster_size or len(slots.buffers) < n:
            slots = SealSlots(cluster_size, n)
        nonces = _split(self._fresh_nonces(n), NONCE_SIZE, 0, n)
        aads = map(self._aad.pack, repeat(self._prefix), range(offset, offset + n * cluster_size, cluster_size),
                   repeat(kind))
        seal_into = self._aead.encrypt_into if _HAVE_ENCRYPT_INTO else self._seal_into
        deque(map(seal_into, nonces, clusters, aads, slots.buffers), maxlen=0)
        return slots.ciphertexts[:n], nonces, list(map(bytes, slots.tags[:n]))

    @staticmethod
    def seal_slots(cluster_size: int, count: int) -> "SealSlots":
        """Output buffers for ``encrypt_run`` runs of up to ``count`` clusters."""
        return SealSlots(cluster_size, count)

    def _seal_into(self, nonce, plaintext, aad, buf) -> None:
        """``encrypt_into`` for a ``cryptography`` without it: the same bytes, one copy more."""
        buf[:] = self._aead.encrypt(nonce, bytes(plaintext), aad)

    def _fresh_nonces(self, n: int) -> bytes:
        """``n`` nonces of 12 bytes end to end: random bits from the operating
        system's CSPRNG for every cluster written, never a counter (R-enc-6)."""
        return os.urandom(NONCE_SIZE * n)

    def decrypt(self, offset: int, kind: int, ciphertext, nonce: bytes, tag: bytes) -> bytes:
        """Open one cluster; ``cluster.auth`` when it was changed, moved, copied
        from another image or is an older version (R-ptr-4)."""
        if len(nonce) != NONCE_SIZE or len(tag) != TAG_SIZE:
            raise_code("cluster.auth", f"cluster at offset {offset}: malformed nonce or tag")
        try:
            return self._aead.decrypt(nonce, bytes(ciphertext) + tag, self.aad(offset, kind))
        except InvalidTag:
            raise_code("cluster.auth", f"cluster at offset {offset} failed authentication")

    def slot_mac(self, body) -> bytes:
        """HMAC-SHA256 of a commit slot's bytes before its MAC field (0..475)."""
        return hmac.digest(self._mac_key, bytes(body[:_MAC.start]), "sha256")

    def verify_slot(self, raw) -> bool:
        """True when the commit slot's MAC (its bytes 476..507) is right for this master key.

        The last body that passed is remembered: a reopen or refresh that finds
        the same unchanged slot (the common case) is answered by comparing 508
        bytes instead of recomputing the HMAC.  Same bytes, same answer."""
        raw = raw if isinstance(raw, bytes) else bytes(raw)
        if self._verified_slot is not None and raw.startswith(self._verified_slot):
            return True
        body = raw[:_MAC.stop]
        if len(body) < _MAC.stop:
            return False
        ok = hmac.compare_digest(self.slot_mac(body), body[_MAC])
        if ok:
            self._verified_slot = body
        return ok
