"""Sequential writes gathered inside a transaction (Image.write, _GATHER_BYTES).

A write that continues the previous write into the same blob is held back and
applied with the ones after it.  These tests pin down that nothing can tell:
every other call sees the writes applied, the commit holds them, a failure in
applying them commits nothing, and the data written is what a write-at-once
would have written.  Each would fail if gathered data were lost, applied late
(after a call that should see it), applied twice, or applied outside its
transaction.
"""

from __future__ import annotations

import random

import pytest

import nvbox
from nvbox import image as image_mod
from nvbox.check import check_image
from nvbox.errors import NvboxError


def code_of(fn, *args, **kwargs) -> str:
    with pytest.raises(NvboxError) as ei:
        fn(*args, **kwargs)
    return ei.value.code


def test_each_other_call_sees_the_gathered_writes(tmp_path):
    img = nvbox.create(tmp_path / "g.nvbox", cluster_size=4096)
    probes = {
        "read": lambda: img.read("b", 0, 1 << 20),
        "getitem": lambda: img["b"],
        "stat": lambda: img.stat("b").size,
        "entries": lambda: [e.size for e in img.entries()],
        "names": lambda: (img.names(), img["b"])[1],
    }
    for what, probe in probes.items():
        with img.transaction():
            img.write("b", 0, b"a" * 100)
            img.write("b", 100, b"b" * 5000)         # gathered
            img.write("b", 5100, b"c" * 3)           # gathered
            assert img.txn.gathered is not None
            seen = probe()
            assert img.txn.gathered is None, what
        expected = b"a" * 100 + b"b" * 5000 + b"c" * 3
        assert seen in (expected, len(expected), [len(expected)]), what
        assert img["b"] == expected
        del img["b"]
    assert check_image(img).verdict == "clean"
    img.close()


def test_gathered_writes_are_committed_with_their_transaction_only(tmp_path):
    path = tmp_path / "g.nvbox"
    with nvbox.create(path, cluster_size=4096) as img:
        gen = img.generation
        with img.transaction():
            for i in range(300):
                img.write("seq", i * 1000, bytes([i % 251]) * 1000)
        assert img.generation == gen + 1                 # one commit for the whole block
    with nvbox.open(path) as img:
        assert img["seq"] == b"".join(bytes([i % 251]) * 1000 for i in range(300))


def test_leaving_the_block_with_an_error_drops_the_gathered_writes(tmp_path):
    path = tmp_path / "g.nvbox"
    with nvbox.create(path, cluster_size=4096) as img:
        img["seq"] = b"old"
        with pytest.raises(RuntimeError):
            with img.transaction():
                img.write("seq", 0, b"x" * 10_000)
                img.write("seq", 10_000, b"y" * 10_000)   # gathered
                raise RuntimeError("abandon")
        assert img["seq"] == b"old"
        with img.transaction():                           # a later block starts clean
            img.write("seq", 3, b"!")
        assert img["seq"] == b"old!"
    with nvbox.open(path) as img:
        assert img["seq"] == b"old!"


def test_running_out_of_room_while_applying_them_commits_nothing(tmp_path):
    path = tmp_path / "fixed.nvbox"
    with nvbox.create(path, cluster_size=4096, capacity=256 * 1024) as img:
        img["keep"] = b"k" * 5000
        gen = img.generation
        with pytest.raises(NvboxError) as ei:
            with img.transaction():
                img.write("big", 0, b"z" * 4096)
                for i in range(1, 200):                    # 800 KiB: more than the image holds
                    img.write("big", i * 4096, b"z" * 4096)
        assert ei.value.code == "space.exhausted"
        assert img.generation == gen and "big" not in img and img["keep"] == b"k" * 5000
    with nvbox.open(path) as img:
        assert img.names() == ["keep"] and check_image(img).verdict == "clean"


def test_a_write_after_any_other_call_is_not_gathered(tmp_path):
    img = nvbox.create(tmp_path / "g.nvbox", cluster_size=4096)
    with img.transaction():
        img.write("b", 0, b"1" * 10)
        del img["b"]
        # Continues where the last write ended, but the blob is gone: a write
        # of its own, so create=False reports the missing blob at once.
        assert code_of(img.write, "b", 10, b"2", create=False) == "blob.not_found"
    assert "b" not in img
    with img.transaction():
        img.write("b", 0, b"1" * 10)
        img.truncate("b", 4)
        img.write("b", 10, b"2")                         # zeros from 4 to 10, as without gathering
    assert img["b"] == b"1111" + bytes(6) + b"2"
    img.close()


def test_closing_inside_the_block_commits_nothing(tmp_path):
    path = tmp_path / "g.nvbox"
    img = nvbox.create(path, cluster_size=4096)
    img["a"] = b"before"
    with pytest.raises(NvboxError):
        with img.transaction():
            img.write("a", 0, b"x" * 3000)
            img.write("a", 3000, b"y" * 3000)
            img.close()
    assert code_of(img.write, "a", 6000, b"z") == "image.closed"
    with nvbox.open(path) as again:
        assert again["a"] == b"before"


@pytest.mark.parametrize("cluster_size", [512, 4096, 65536])
def test_random_sequences_match_a_model(tmp_path, cluster_size, monkeypatch):
    monkeypatch.setattr(image_mod, "_GATHER_BYTES", 3 * cluster_size + 7)   # apply often, mid-cluster
    rng = random.Random(cluster_size)
    path = tmp_path / "m.nvbox"
    model: dict[str, bytearray] = {}
    img = nvbox.create(path, cluster_size=cluster_size)
    for _ in range(40):
        with img.transaction():
            for _ in range(rng.randrange(1, 12)):
                name = rng.choice(["a", "b"])
                cur = model.setdefault(name, bytearray())
                # Mostly sequential runs; sometimes a jump, an overwrite or another call.
                roll = rng.random()
                if roll < 0.1 and name in img:
                    img.truncate(name, len(cur) // 2)
                    del cur[len(cur) // 2:]
                    continue
                start = len(cur) if roll < 0.8 else rng.randrange(0, len(cur) + 50)
                for _ in range(rng.randrange(1, 30)):
                    data = rng.randbytes(rng.choice([1, 100, cluster_size, 3 * cluster_size + 5]))
                    img.write(name, start, data)
                    if start > len(cur):
                        cur.extend(bytes(start - len(cur)))
                    cur[start:start + len(data)] = data
                    start += len(data)
                if rng.random() < 0.3:
                    assert img.read(name, 0, len(cur) + 10) == bytes(cur)
        for name, cur in model.items():
            assert img[name] == bytes(cur)
    img.close()
    with nvbox.open(path) as again:
        assert {n: again[n] for n in again.names()} == {n: bytes(c) for n, c in model.items()}
        assert check_image(again).verdict == "clean"


def test_small_writes_into_large_clusters_write_each_cluster_once(tmp_path):
    with nvbox.create(tmp_path / "g.nvbox", cluster_size=65536) as img:
        before = img.stats["clusters_written"]
        with img.transaction():
            for i in range(256):                       # 1 MiB in 4 KiB pieces: 16 clusters
                img.write("b", i * 4096, bytes([i]) * 4096)
        data_clusters = img.stats["clusters_written"] - before
        # 16 data clusters, plus the map node, directory and refcount blocks of the commit;
        # without gathering each 64 KiB cluster was rewritten 16 times (256 + metadata).
        assert 16 <= data_clusters <= 24, data_clusters
        assert img["b"] == b"".join(bytes([i]) * 4096 for i in range(256))


def test_blobio_sequential_writes_in_a_transaction(tmp_path):
    path = tmp_path / "g.nvbox"
    with nvbox.create(path, cluster_size=4096) as img:
        with img.transaction():
            with img.open_blob("f", "wb") as f:
                for i in range(100):
                    f.write(bytes([i]) * 777)
        assert img["f"] == b"".join(bytes([i]) * 777 for i in range(100))


def test_gathered_buffers_of_any_shape(tmp_path):
    # The gather buffer is reused: what it held must already be written, and
    # memoryviews of other item sizes or strides go through the ordinary path.
    import array
    img = nvbox.create(tmp_path / "g.nvbox", cluster_size=4096)
    words = array.array("I", range(1000))
    strided = memoryview(bytes(range(256)) * 20)[::2]
    expected = bytearray()
    with img.transaction():
        for piece in (b"head", bytearray(b"x" * 5000), memoryview(words), strided, memoryview(b"tail")):
            img.write("b", len(expected), piece)
            expected += bytes(piece) if not isinstance(piece, memoryview) else piece.tobytes()
        assert img["b"] == bytes(expected)
        for i in range(600):                               # several buffer-fulls, reused
            chunk = bytes([i % 256]) * 4000
            img.write("b", len(expected), chunk)
            expected += chunk
    assert img["b"] == bytes(expected)
    img.close()


def test_a_gathered_write_past_the_largest_blob_is_refused():
    img = nvbox.create(None, cluster_size=4096)
    from nvbox import _format as fmt
    top = fmt.MAX_BLOB_SIZE
    with img.transaction():
        img.write("b", top - 10, b"x" * 5)                # sparse: a few map nodes
        assert code_of(img.write, "b", top - 5, b"y" * 6) == "blob.too_large"   # would be gathered
        img.write("b", top - 5, b"y" * 5)                 # exactly to the end: fine
    assert img.read("b", top - 10, 10) == b"x" * 5 + b"y" * 5
