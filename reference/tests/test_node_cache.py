"""The decoded-node cache (``ClusterStore.read_cached``/``remember``).

A commit puts the decoded form of every map, directory and refcount node it
writes into the cache, so that the next transaction's copy-on-write of the
same node needs no read and no decode.  That is only right if the cached form
is exactly what decoding the node from the file gives: each test here checks
every cache entry against a fresh read and decode of its cluster, after each
commit of a random workload (writes of every size, truncates, deletes,
renames, snapshots, enough blobs to split the directory), and the image
against a model on reopen.
"""

from __future__ import annotations

import random
from array import array

import pytest

import nvbox
from nvbox import _format as fmt
from nvbox.check import check_image


def _decode(store, offset: int, crc: int, kind: int):
    raw = store.read_raw(fmt.Pointer(offset, crc), kind)
    if kind == fmt.KIND_REFBLOCK:
        return array("H", raw)
    if kind == fmt.KIND_DIR:
        return fmt.decode_dir_node(raw, store.geo)
    return fmt.decode_pointers(raw, store.geo)


def _assert_cache_matches_file(img) -> int:
    store = img.store
    checked = 0
    size = store.geo.cluster_size
    for (offset, crc, _tag, kind), value in list(store.node_cache.items()):
        if fmt.crc32c(img.dev.read(offset, size)) != crc:
            # Freed and reused since: no valid pointer names these bytes any more,
            # and the key's checksum keeps the entry from being found.
            continue
        fresh = _decode(store, offset, crc, kind)
        if isinstance(fresh, fmt.DirNode):
            assert (value.level, tuple(value.items)) == (fresh.level, tuple(fresh.items)), offset
        else:
            assert list(value) == list(fresh), (offset, kind)
        checked += 1
    return checked


@pytest.mark.parametrize("cluster_size", [512, 4096])
def test_cached_nodes_are_what_the_file_holds(tmp_path, cluster_size):
    rng = random.Random(cluster_size)
    path = tmp_path / "c.nvbox"
    model: dict[str, bytearray] = {}
    snapshots: list[str] = []
    checked = 0
    with nvbox.create(path, cluster_size=cluster_size) as img:
        for step in range(160):
            img.begin()
            for _ in range(rng.randrange(1, 6)):
                op = rng.random()
                name = f"dir{rng.randrange(4)}/blob-{rng.randrange(40):02d}"
                if op < 0.55:
                    size = rng.choice([1, 100, cluster_size, 3 * cluster_size + 7, 40 * cluster_size])
                    data = rng.randbytes(size)
                    cur = model.get(name, bytearray())
                    offset = rng.randrange(len(cur) + 1)
                    img.write(name, offset, data)
                    cur.extend(bytes(max(0, offset + size - len(cur))))
                    cur[offset:offset + size] = data
                    model[name] = cur
                elif op < 0.7 and name in model:
                    size = rng.randrange(len(model[name]) * 2 + 1)
                    img.truncate(name, size)
                    model[name] = model[name][:size].ljust(size, b"\0")
                elif op < 0.8 and name in model:
                    img.delete(name)
                    del model[name]
                elif op < 0.9 and name in model:
                    new = f"dir{rng.randrange(4)}/renamed-{rng.randrange(40):02d}"
                    img.rename(name, new)
                    model[new] = model.pop(name)
            img.commit()
            if step % 20 == 19:
                snap = f"s{step}"
                img.snapshots.create(snap)
                snapshots.append(snap)
                if len(snapshots) > 3:
                    img.snapshots.delete(snapshots.pop(0))
            checked += _assert_cache_matches_file(img)
        assert checked > 1000        # the cache did hold the nodes the commits wrote
        for name, data in model.items():
            assert img.read(name) == bytes(data), name
    with nvbox.open(path) as img:
        assert sorted(img.names()) == sorted(model)
        for name, data in model.items():
            assert img.read(name) == bytes(data), name
        assert check_image(img).verdict == "clean"


def test_written_nodes_are_cached_and_reused(tmp_path):
    """A small overwrite of a big blob re-reads no map node: the leaf and root
    the previous commit wrote come from the cache."""
    with nvbox.create(tmp_path / "r.nvbox", cluster_size=4096) as img:
        img.write("disk", 0, bytes(8 << 20))       # depth 2: 8 leaves under a root
        for i in range(20):
            before = img.store.stats.clusters_read
            img.write("disk", (i * 37 % 2048) * 4096, b"x" * 4096)
            assert img.store.stats.clusters_read == before, i
