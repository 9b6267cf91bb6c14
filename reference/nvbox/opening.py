"""Making an ``Image``: ``create`` a new image, ``open_image`` an existing one.

Both take a path, a ``BlockDevice`` (or, to open, the image's bytes); a path's
device is a ``FileDevice`` holding the writer's lock for 'rw'.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import replace

from . import _format as fmt
from . import crypto
from ._store import ClusterStore
from .blockdev import BlockDevice, FileDevice, MemoryDevice
from .errors import raise_code
from .image import Image

__all__ = ["create", "open_image", "parse_size"]


def parse_size(text) -> int:
    """'64M', '1g', '4096' -> bytes (binary units, as qemu-img)."""
    if isinstance(text, int):
        return text
    s = str(text).strip().lower().rstrip("b").rstrip("i")
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    try:
        if s and s[-1] in units:
            return int(float(s[:-1]) * units[s[-1]])
        return int(s)
    except ValueError:
        raise_code("usage.argument", f"not a size: {text!r}")


def _initial_image(dev: BlockDevice, cluster_bits: int, capacity_clusters: int, encrypt_setup=None,
                   creator: str = "nvbox-reference 1.0") -> None:
    """Write a fresh image: header, refcount block, slot 1 (then slot B stays empty)."""
    geo = fmt.Geometry(cluster_bits, encrypt_setup is not None)
    image_uuid = uuid.uuid4().bytes
    header = fmt.Header(cluster_bits, image_uuid, capacity_clusters, int(time.time()),
                        extensions=(fmt.Extension(fmt.EXT_CREATOR, 0, creator.encode()),))
    area = bytearray(max(fmt.HEADER_AREA, geo.header_clusters * geo.cluster_size))
    area[0:fmt.SECTOR] = header.encode()
    dev.write(0, bytes(area))
    # A bootstrap slot (generation 0 is never written): the store's first commit
    # allocates the refcount tree (and key slots), and writes generation 1.
    boot = fmt.Slot(generation=0, incompatible_features=fmt.INCOMPAT_ENCRYPTED if encrypt_setup else 0,
                    image_clusters=geo.header_clusters, refcount_depth=1)
    store = ClusterStore(dev, header, boot, None)
    for c in range(geo.header_clusters):
        store.set_count(c, 1)                     # R-ref-3
    cipher, keyslots = (None, fmt.NULL)
    if encrypt_setup is not None:
        cipher, table = encrypt_setup(header)
        store.cipher = cipher
        idx = store.allocate(1)
        keyslots = store.write_cluster(idx, 0, table)
    store.flush_refcounts()
    slot = replace(boot, generation=1, image_clusters=store.image_clusters, refcount_root=store.refcount_root,
                   refcount_depth=store.refcount_depth, keyslots=keyslots, commit_time=int(time.time()),
                   alloc_hint=store.alloc_hint())
    store.write_slot(slot, cipher.slot_mac if cipher else None)


def create(target=None, cluster_size: int = 4096, capacity=None, *, encrypt: bool = False, key=None,
           overwrite: bool = False) -> Image:
    """Create an image and return it open for writing.

    Args:
        target: a path, a ``BlockDevice``, or None for an in-memory image.
        cluster_size: a power of two from 512 to 2 MiB (default 4 KiB).
        capacity: fixed size in bytes (or '64M'); None for a growable image.  A path
            that names an existing block device or preallocated file with
            ``overwrite=True`` and ``capacity='device'`` uses its current size.
        encrypt: encrypt the image; ``key`` is a ``nvbox.Key`` (passphrase or key file).

    Raises:
        NvboxError: ``image.exists``, ``usage.argument``, ``space.exhausted``...
    """
    cluster_bits = _cluster_bits(cluster_size)
    if encrypt and cluster_bits < 10:
        raise_code("usage.argument", "encrypted images need clusters of at least 1024 bytes")
    if encrypt and key is None:
        raise_code("key.missing", "an encrypted image needs a passphrase or key file")
    path = None
    if target is None:
        dev = MemoryDevice(capacity=parse_size(capacity) if capacity not in (None, "device") else None)
    elif isinstance(target, BlockDevice):
        dev = target
    else:
        path = os.fspath(target)
        exists = os.path.exists(path)
        if exists and not overwrite:
            raise_code("image.exists", f"{path} already exists (use overwrite to reuse a device or file)")
        fixed = capacity is not None
        if not exists:
            dev = FileDevice(path, writable=True, create=True)
            if capacity not in (None, "device"):
                dev.truncate(parse_size(capacity))  # preallocate the fixed region
                dev.make_fixed()
        else:
            dev = FileDevice(path, writable=True, fixed=fixed)
            if not fixed:
                dev.truncate(0)
    size_cap = None
    if capacity is not None:
        size_cap = dev.size() if capacity == "device" else parse_size(capacity)
        if dev.size() < size_cap and not dev.growable:
            raise_code("usage.argument", f"the device holds {dev.size()} bytes, fewer than the capacity {size_cap}")
    capacity_clusters = (size_cap >> cluster_bits) if size_cap is not None else 0
    geo = fmt.Geometry(cluster_bits)
    if capacity_clusters and capacity_clusters < geo.header_clusters + 4:
        raise_code("space.exhausted", f"a capacity of {size_cap} bytes cannot hold an image")
    setup = None
    if encrypt:
        setup = crypto.setup_for_create(key)
    _initial_image(dev, cluster_bits, capacity_clusters, setup)
    dev.flush()
    return Image(dev, True, key=key, path=path)


def _cluster_bits(cluster_size) -> int:
    cluster_size = parse_size(cluster_size)
    bits = cluster_size.bit_length() - 1
    if cluster_size != 1 << bits or not fmt.MIN_CLUSTER_BITS <= bits <= fmt.MAX_CLUSTER_BITS:
        raise_code("usage.argument", f"cluster size {cluster_size} is not a power of two from 512 to 2 MiB")
    return bits


def open_image(target, mode: str = "r", *, key=None) -> Image:
    """Open an image: ``mode`` 'r' (read-only, no lock) or 'rw' (the writer's lock).

    Raises:
        NvboxError: ``image.locked`` when another writer holds the image, any
        format error code for a damaged image, ``key.missing``/``key.invalid``.
    """
    if mode not in ("r", "rw", "r+"):
        raise_code("usage.argument", f"mode must be 'r' or 'rw', not {mode!r}")
    writable = mode != "r"
    if isinstance(target, BlockDevice):
        return Image(target, writable, key=key)
    if isinstance(target, (bytes, bytearray)):
        return Image(MemoryDevice(bytes(target)), writable, key=key)
    path = os.fspath(target)
    if not os.path.exists(path):
        raise_code("io.error", f"{path}: no such file")
    dev = FileDevice(path, writable=writable)
    try:
        # A fixed-capacity image stays fixed: its header says so.
        head = dev.read(0, fmt.SECTOR)
        if len(head) == fmt.SECTOR and head[:8] == fmt.MAGIC and fmt.nonzero(head[fmt.HEADER.span("capacity_clusters")]):
            dev.make_fixed()
        return Image(dev, writable, key=key, path=path)
    except BaseException:
        dev.close()
        raise
