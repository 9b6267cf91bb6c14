"""Issue 8: check and compact time against the allocated size."""

import pytest

import benchlib as B
from benchlib import MiB

SIZES = B.pick([16 * MiB], [16 * MiB, 256 * MiB])


def _prepare(s, size):
    s.put_many([(f"small/{i:05d}", b"s" * 200) for i in range(500)])
    s.fill(size, chunk=4 * MiB)
    s.fill(size, chunk=4 * MiB, prefix="gone/")
    for name in s.names():
        if name.startswith("gone/"):
            s.delete(name)


@pytest.mark.parametrize("size", SIZES, ids=B.size_id)
@pytest.mark.parametrize("system", B.systems())
def test_check(benchmark, system, size):
    benchmark.group = f"check {B.size_id(size)}"
    with B.workdir() as d:
        s = B.create(system, d)
        try:
            _prepare(s, size)
            ok = benchmark.pedantic(s.check, rounds=3, iterations=1)
            assert ok
            B.annotate(benchmark, system, "check", size, file_size=s.file_size(), bytes_written=0, flushes=0)
        finally:
            s.close()


@pytest.mark.parametrize("size", SIZES, ids=B.size_id)
@pytest.mark.parametrize("system", B.systems())
def test_compact(benchmark, system, size):
    """Compact a store after half of its data was deleted (one round: compacting twice
    measures nothing)."""
    benchmark.group = f"compact {B.size_id(size)}"
    with B.workdir() as d:
        s = B.create(system, d)
        try:
            _prepare(s, size)
            before = s.file_size()
            benchmark.pedantic(s.compact, rounds=1, iterations=1)
            after = s.file_size()
            assert s.get("small/00042") == b"s" * 200
        finally:
            s.close()
    c = B.count_once(system, lambda s: _prepare(s, size), lambda s: s.compact())
    c.pop("file_size", None)
    B.annotate(benchmark, system, "compact", size, file_size_before=before, file_size=after, **c)
