"""The capacity a fixed image needs for a set of blobs (``nvbox measure``).

Computed exactly, not estimated: the blobs are written into an image in
memory by the same code that writes files.

- minimum: ``image_clusters`` after writing every blob, in one commit, into a
  fresh image; with one cluster less that commit fails with space.exhausted.
- required: the peak ``image_clusters`` after a second commit that rewrites
  every blob (the next save of the whole state).  Copy-on-write never reuses a
  cluster the last commit still refers to (R-cow-1, R-alloc-2), so that commit
  needs room for a new copy of everything it replaces, plus new directory and
  refcount nodes, before the old copies are freed.
"""

from __future__ import annotations

import os

from .crypto import Key
from .opening import create

__all__ = ["measure"]


def measure(blobs, cluster_size=4096, encrypt: bool = False) -> dict:
    """Capacities for ``blobs``, a sequence of (name, bytes), in bytes and clusters.

    An encrypted layout (40-byte pointers, the key slot table) is measured under
    a throw-away key: sizes do not depend on the key."""
    blobs = list(blobs)
    key = Key.from_key_bytes(os.urandom(32)) if encrypt else None
    with create(None, cluster_size=cluster_size, encrypt=encrypt, key=key) as img:
        cs = img.geo.cluster_size
        floor = img.geo.header_clusters + 4           # the least capacity create accepts
        empty = img.slot.image_clusters
        with img.transaction():
            for name, data in blobs:
                img[name] = data
        minimum = max(img.slot.image_clusters, floor)
        with img.transaction():                        # the next save of the whole state
            for name, data in blobs:
                img[name] = data
        required = max(img.slot.image_clusters, minimum)
    return {
        "required": required * cs,
        "minimum": minimum * cs,
        "cluster_size": cs,
        "required_clusters": required,
        "minimum_clusters": minimum,
        "headroom_clusters": required - minimum,
        "empty_image_clusters": empty,
        "encrypted": bool(encrypt),
        "files": len(blobs),
        "bytes": sum(len(data) for _, data in blobs),
    }
