"""The directory writer keeps each in-memory node's encoded size incrementally
(``DirNode.sizes``/``total``) so a put costs O(log n), not a re-measure of the
whole leaf.  These tests drive random changes through the public API and check,
after every change, that each cached size equals the real encoding and that no
node exceeds cluster_size - 16 bytes of body or MAX_NODE_ITEMS elements (R-dir-5).
"""

from __future__ import annotations

import random

import pytest

import nvbox
from nvbox import _der as der
from nvbox import _format as fmt
from nvbox._tree import DirNode
from nvbox.check import check_image


def _check_memory_tree(img) -> int:
    """Walk the in-memory directory; return how many cached nodes were checked."""
    trees, geo = img.trees, img.geo
    width = geo.pointer_size
    checked = 0
    todo = [img.state.dir_root] if isinstance(img.state.dir_root, DirNode) else []
    while todo:
        node = todo.pop()
        if node.level == 0:
            real = [len(b.encode(width)) for b in node.items]
        else:
            real = [len(fmt.DirBranch(k, fmt.NULL).encode(width)) for k, _ in node.items]
            todo.extend(c for _, c in node.items if isinstance(c, DirNode))
        if node.sizes is not None and len(node.sizes) == len(node.items):
            assert node.sizes == real
            assert node.total == sum(real)
            checked += 1
        body = sum(real)
        assert len(der.encode_length(body)) + 1 + body <= geo.dir_body_max
        assert len(node.items) <= fmt.MAX_NODE_ITEMS
    return checked


@pytest.mark.parametrize("cluster_size,max_items", [(512, None), (4096, 9)])
def test_cached_node_sizes_match_encoding(monkeypatch, cluster_size, max_items):
    if max_items:
        monkeypatch.setattr(fmt, "MAX_NODE_ITEMS", max_items)
    rng = random.Random(cluster_size)
    img = nvbox.create(cluster_size=cluster_size)
    inline_max = img.geo.inline_max
    model: dict[str, bytes] = {}
    checked = 0
    with img.transaction():
        for step in range(1500):
            name = f"n{rng.randrange(300)}" + "x" * rng.choice((0, 0, 40))
            op = rng.random()
            if op < 0.45 or not model:
                data = bytes([step % 251]) * rng.choice((0, 1, inline_max, inline_max + 1, 3 * cluster_size))
                img.put(name, data)
                model[name] = data
            elif op < 0.65:
                victim = rng.choice(sorted(model))
                img.delete(victim)
                del model[victim]
            elif op < 0.85:
                off = rng.randrange(2 * cluster_size)
                data = b"w" * rng.choice((1, 7, cluster_size))
                img.write(name, off, data)
                old = bytearray(model.get(name, b"").ljust(off, b"\0"))
                old[off:off + len(data)] = data
                model[name] = bytes(old)
            else:
                victim = rng.choice(sorted(model))
                size = rng.choice((0, 1, inline_max, inline_max + 1, 2 * cluster_size + 5))
                img.truncate(victim, size)
                model[victim] = model[victim][:size].ljust(size, b"\0")
            checked += _check_memory_tree(img)
    assert checked > 1000
    assert check_image(img).verdict == "clean"
    assert {n: img.get(n) for n in img.names()} == model


def test_many_puts_in_one_transaction_split_by_size_and_count(monkeypatch):
    """Sequential inserts at a big cluster size: nodes split by element count
    (lowered here) and by size, each within its bounds on disk."""
    monkeypatch.setattr(fmt, "MAX_NODE_ITEMS", 500)
    img = nvbox.create(cluster_size=65536)
    with img.transaction():
        for i in range(6000):
            img.put(f"{i:08d}", b"v" * (i % 40))
    _check_memory_tree(img)
    todo = [(img.state.dir_root, img.state.dir_depth - 1)]
    while todo:
        ptr, level = todo.pop()
        node = img.trees.dir_node(ptr, level)
        assert len(node.items) <= 500
        if level:
            todo.extend((b.child, level - 1) for b in node.items)
    assert check_image(img).verdict == "clean"
    assert len(img) == 6000
