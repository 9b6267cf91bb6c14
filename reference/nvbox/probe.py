"""What an image's header area tells without a key: ``nvbox info`` of a locked image.

An encrypted image's header and commit slots are plaintext (only the slots'
MACs need the master key), and so is its key slot table.  ``probe`` reads them
as an open would, choosing the newest slot whose CRC is right, and reports
what they say; nothing it returns is authenticated, and nothing needing a tree
walk (used clusters, blob names) is in it.  ``signature`` says whether a file
is an nvbox image at all, for messages that should not call a JPEG "corrupt".
"""

from __future__ import annotations

import os
import uuid

from . import _format as fmt
from .errors import raise_code

__all__ = ["NEEDS_KEY", "describe", "probe", "signature"]

# What an encrypted image shows only when unlocked.
NEEDS_KEY = ("authenticating the commit slot (its MAC)", "used and free cluster counts",
             "blob names and contents", "snapshot names")


def signature(raw: bytes) -> bool:
    """True when the header area ``raw`` has nvbox's header or commit slot magic
    (one damaged copy is still an nvbox image)."""
    return raw[:len(fmt.MAGIC)] == fmt.MAGIC or any(
        raw[off:off + len(fmt.SLOT_MAGIC)] == fmt.SLOT_MAGIC for off in fmt.SLOT_OFFSETS)


def probe(path) -> dict:
    """The header, the newest CRC-valid slot and the key slot kinds of ``path``."""
    with open(path, "rb") as f:
        raw = f.read(fmt.HEADER_AREA)
        file_size = os.fstat(f.fileno()).st_size
        header = fmt.decode_header(raw)
        valid = [(fmt.slot_generation(raw[off:off + fmt.SECTOR]), off) for index, off in enumerate(fmt.SLOT_OFFSETS)
                 if fmt.slot_is_valid(raw[off:off + fmt.SECTOR], index)]
        if not valid:
            raise_code("slot.none_valid", "neither commit slot is valid")
        slot = fmt.decode_slot(raw[max(valid)[1]:max(valid)[1] + fmt.SECTOR], header)
        cs = 1 << header.cluster_bits     # the key slot table is one cluster
        kinds = None
        if not slot.keyslots.is_null and slot.keyslots.offset + cs <= file_size:
            f.seek(slot.keyslots.offset)
            table = f.read(cs)
            if fmt.crc32c(table) == slot.keyslots.crc:
                kinds = [fmt.KEYSLOT_KINDS.get(s.kind, "unknown") for s in fmt.decode_keyslots(table) if s.in_use]
    doc = describe(header, slot, os.fspath(path))
    doc.update(file_size=file_size, key_slots=kinds, authenticated=False)
    return doc


def describe(header, slot, path=None) -> dict:
    """What a decoded header and commit slot say, as ``Image.info`` and ``probe``
    report it (the one definition of those fields)."""
    cs = 1 << header.cluster_bits
    return {
        "format": "nvbox",
        "version": fmt.VERSION,
        "path": path,
        "cluster_size": cs,
        "image_uuid": str(uuid.UUID(bytes=header.image_uuid)),
        "capacity": header.capacity_clusters * cs if header.capacity_clusters else None,
        "image_clusters": slot.image_clusters,
        "image_size": slot.image_clusters * cs,
        "generation": slot.generation,
        "blob_count": slot.blob_count,
        "snapshot_count": slot.snapshot_count,
        "encrypted": slot.encrypted,
        "incompatible_features": slot.incompatible_features,
        "compatible_features": slot.compatible_features,
        "autoclear_features": slot.autoclear_features,
        "dir_depth": slot.dir_depth,
        "refcount_depth": slot.refcount_depth,
        "create_time": header.create_time,
        "commit_time": slot.commit_time,
        "extensions": [{"type": e.ext_type, "required": bool(e.ext_flags & 1), "data_hex": e.ext_data.hex()}
                       for e in header.extensions],
    }
