"""Issue 8: many small blobs (up to 100,000): bulk insert, adding one more, looking one up."""

import pytest

import benchlib as B

COUNTS = B.pick([1000], [1000, 10000, 100000])
SMALL = 100


def _items(n, prefix="blob/"):
    data = B.payload(SMALL)
    return [(f"{prefix}{i:06d}", data) for i in range(n)]


def _populate(s, n):
    s.put_many(_items(n))


@pytest.mark.parametrize("count", COUNTS)
@pytest.mark.parametrize("system", B.systems())
def test_put_many(benchmark, system, count):
    """`count` blobs of 100 bytes in one batch (one transaction / process / directory fsync)."""
    benchmark.group = f"put_many {count} x 100B"
    items = _items(count)
    with B.workdir() as d:
        k = iter(range(100))

        def setup():
            return (B.create(system, d, tag=f"s{next(k)}"),), {}

        def op(s):
            s.put_many(items)
            s.close()
        benchmark.pedantic(op, setup=setup, rounds=B.pick(2, 2 if count < 100000 else 1), iterations=1)
    c = B.count_once(system, lambda s: None, lambda s: s.put_many(items))
    B.annotate(benchmark, system, "put_many", count, **c)


@pytest.mark.parametrize("count", COUNTS)
@pytest.mark.parametrize("system", B.systems())
def test_add_one_and_lookup(benchmark, system, count):
    """Adding one small blob to a store holding `count` blobs (timed), then a lookup
    (recorded in extra_info as lookup_seconds)."""
    benchmark.group = f"add one to {count}"
    with B.workdir() as d:
        s = B.create(system, d)
        try:
            _populate(s, count)
            n = iter(range(10 ** 6))
            benchmark.pedantic(lambda: s.put(f"new/{next(n)}", b"y" * SMALL), rounds=5, iterations=1,
                               warmup_rounds=1)
            import time
            name = f"blob/{count // 2:06d}"
            if system == "nvbox":
                s.drop_caches()
            t = time.perf_counter()
            assert len(s.get(name)) == SMALL
            lookup = time.perf_counter() - t
        finally:
            s.close()
    c = B.count_once(system, lambda s: _populate(s, count), lambda s: s.put("new/x", b"y" * SMALL))
    B.annotate(benchmark, system, "add_one", count, lookup_seconds=lookup, **c)
