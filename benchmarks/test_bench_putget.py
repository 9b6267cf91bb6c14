"""Issue 8: put and get across blob sizes (64 B .. 64 MiB), every system."""

import pytest

import benchlib as B
from benchlib import KiB, MiB

SIZES = B.pick([64, 4 * KiB, 1 * MiB], [64, 1 * KiB, 4 * KiB, 64 * KiB, 1 * MiB, 16 * MiB, 64 * MiB])


def _rounds(size):
    return 5 if size <= MiB else (3 if size <= 16 * MiB else 2)


@pytest.mark.parametrize("size", SIZES, ids=B.size_id)
@pytest.mark.parametrize("system", B.systems())
def test_put(benchmark, system, size):
    benchmark.group = f"put {B.size_id(size)}"
    data = B.payload(size)
    with B.workdir() as d:
        s = B.create(system, d)
        n = iter(range(10 ** 6))
        try:
            benchmark.pedantic(lambda: s.put(f"blob/{next(n)}", data), rounds=_rounds(size),
                               iterations=1, warmup_rounds=1 if size <= MiB else 0)
        finally:
            s.close()
    c = B.count_once(system, lambda s: None, lambda s: s.put("blob/x", data))
    B.annotate(benchmark, system, "put", size, **c)


@pytest.mark.parametrize("size", SIZES, ids=B.size_id)
@pytest.mark.parametrize("system", B.systems())
def test_get(benchmark, system, size):
    benchmark.group = f"get {B.size_id(size)}"
    data = B.payload(size)
    with B.workdir() as d:
        s = B.create(system, d)
        try:
            s.put("blob", data)
            if system == "nvbox":
                s.drop_caches()
            got = benchmark.pedantic(lambda: s.get("blob"), rounds=_rounds(size), iterations=1,
                                     warmup_rounds=1 if size <= MiB else 0)
            assert got == data
            B.annotate(benchmark, system, "get", size, bytes_written=0, flushes=0, file_size=s.file_size())
        finally:
            s.close()
