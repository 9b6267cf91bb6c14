"""The batched data write path (``Trees.map_write``/``_store_clusters``,
``ClusterStore.write_run``): partial first and last clusters, whole clusters in
runs, rewrites in place of clusters this transaction wrote, clusters shared
with a snapshot, holes, and writes that span map leaves and run batches.  Each
case is checked against a bytearray model, by ``check_image`` and on reopen.
"""

from __future__ import annotations

import random

import pytest

import nvbox
from nvbox import _format as fmt
from nvbox import _store
from nvbox.check import check_image


def test_pointer_is_an_immutable_value():
    # The write path builds pointers with map(fmt.Pointer, offsets, crcs).
    p, = map(fmt.Pointer, [8192], [0xDEADBEEF])
    q = fmt.Pointer(8192, 0xDEADBEEF)
    assert type(p) is fmt.Pointer
    assert p == q and hash(p) == hash(q) and repr(p) == repr(q)
    assert p.nonce == b"" and p.tag == b"" and not p.is_null and fmt.Pointer().is_null
    assert p.encode(fmt.PLAIN_POINTER) == q.encode(fmt.PLAIN_POINTER)
    with pytest.raises(AttributeError):
        p.offset = 0


def _apply(model: bytearray, offset: int, data: bytes) -> None:
    if offset > len(model):
        model.extend(bytes(offset - len(model)))
    model[offset:offset + len(data)] = data


@pytest.mark.parametrize("cluster_size", [512, 4096])
@pytest.mark.parametrize("in_transaction", [False, True])
def test_random_writes_match_model(tmp_path, cluster_size, in_transaction, monkeypatch):
    monkeypatch.setattr(_store, "_RUN_BYTES", 3 * cluster_size)   # several device writes per run
    rng = random.Random(cluster_size * 2 + in_transaction)
    path = tmp_path / "w.nvbox"
    img = nvbox.create(str(path), cluster_size=cluster_size)
    fanout = img.geo.fanout
    models = {"a": bytearray(), "b": bytearray()}
    snap_models = {}
    for step in range(60):
        ctx = img.transaction() if in_transaction else _null()
        with ctx:
            for _ in range(rng.randrange(1, 6)):
                name = rng.choice("ab")
                model = models[name]
                kind = rng.random()
                if kind < 0.3:      # aligned, several whole clusters, sometimes across map leaves
                    offset = rng.randrange(0, 2 * fanout) * cluster_size
                    data = rng.randbytes(rng.randrange(1, 2 * fanout) * cluster_size)
                elif kind < 0.6:    # unaligned both ends
                    offset = rng.randrange(0, 3 * fanout * cluster_size // 2)
                    data = rng.randbytes(rng.randrange(1, 4 * cluster_size))
                elif kind < 0.75:   # small, inside one cluster
                    offset = rng.randrange(0, max(1, len(model) + cluster_size))
                    data = rng.randbytes(rng.randrange(1, 64))
                elif kind < 0.85:   # past the end (a hole in between)
                    offset = len(model) + rng.randrange(0, 5 * cluster_size)
                    data = rng.randbytes(rng.randrange(1, 3 * cluster_size))
                elif kind < 0.95 and model:
                    size = rng.randrange(0, len(model) + 1)
                    img.truncate(name, size)
                    del model[size:]
                    continue
                else:
                    img.put(name, bytes(model))
                    continue
                img.write(name, offset, data)
                _apply(model, offset, data)
        if step % 15 == 7:
            snap = f"s{step}"
            img.snapshots.create(snap)
            snap_models[snap] = {n: bytes(m) for n, m in models.items() if n in img}
        for n, m in models.items():
            if n in img:
                assert img.get(n) == bytes(m), (step, n)
    assert check_image(img).verdict == "clean"
    img.close()
    with nvbox.open(str(path)) as img:
        for n, m in models.items():
            if n in img:
                assert img.get(n) == bytes(m)
        for snap, blobs in snap_models.items():
            view = img.snapshots.view(snap)
            for n, data in blobs.items():
                assert view[n] == data
        assert check_image(img).verdict == "clean"


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_big_put_spans_leaves_and_batches(monkeypatch):
    """One put of many clusters: several map leaves, several device writes, and
    the clusters written in as few runs as the allocator gives."""
    monkeypatch.setattr(_store, "_RUN_BYTES", 64 * 1024)
    img = nvbox.create(cluster_size=4096)
    data = random.Random(1).randbytes(3 * 256 * 4096 + 1234)
    writes_before = img.stats["device_writes"]
    img.put("big", data)
    assert img.get("big") == data
    clusters = -(-len(data) // 4096)
    data_writes = img.stats["device_writes"] - writes_before
    assert data_writes < clusters // 8     # batched: 16 clusters per device write here
    img.write("big", 4096 * 100 + 7, b"x" * 4096 * 300)     # rewrite across a leaf boundary
    expect = bytearray(data)
    expect[4096 * 100 + 7:4096 * 100 + 7 + 4096 * 300] = b"x" * 4096 * 300
    assert img.get("big") == bytes(expect)
    assert check_image(img).verdict == "clean"
