"""Issue 8: small in-place updates (4 KiB inside a 1 MiB blob), and the first write after a
snapshot, every system.  Bytes written and flushes are per update."""

import pytest

import benchlib as B
from benchlib import KiB, MiB

BLOB = MiB
PATCH = 4 * KiB
ROUNDS = B.pick(5, 20)


def _setup(s):
    s.put("state", B.payload(BLOB))


@pytest.mark.parametrize("system", B.systems())
def test_update_4k_in_1m(benchmark, system):
    benchmark.group = "update 4K in 1M"
    patches = [bytes([i & 0xFF]) * PATCH for i in range(64)]
    with B.workdir() as d:
        s = B.create(system, d)
        try:
            _setup(s)
            k = iter(range(10 ** 6))

            def op():
                i = next(k)
                s.update("state", (i * 3 % 200) * PATCH, patches[i % 64])
            benchmark.pedantic(op, rounds=ROUNDS, iterations=1, warmup_rounds=1)
        finally:
            s.close()
    # counting pass: 4 updates at different offsets, averaged
    c = B.count_once(system, _setup,
                     lambda s: [s.update("state", j * 8 * PATCH, patches[j]) for j in range(1, 5)], per=4)
    B.annotate(benchmark, system, "update", BLOB, **c)


SNAP_SIZES = B.pick([16 * MiB], [16 * MiB, 256 * MiB, 1024 * MiB])


@pytest.mark.parametrize("allocated", SNAP_SIZES, ids=B.size_id)
@pytest.mark.parametrize("system", B.systems())
def test_first_write_after_snapshot(benchmark, system, allocated):
    """One 4 KiB update inside a 1 MiB blob, right after a snapshot of an image holding
    `allocated` bytes of other blobs (copy-on-write cost)."""
    benchmark.group = f"first write after snapshot {B.size_id(allocated)}"
    with B.workdir() as d:
        s = B.create(system, d)
        try:
            _setup(s)
            s.fill(allocated)
            n = iter(range(10 ** 6))

            def setup():
                s.snapshot_create(f"snap{next(n)}")
                return (), {}
            benchmark.pedantic(lambda: s.update("state", 3 * PATCH, b"\x77" * PATCH), setup=setup,
                               rounds=3, iterations=1)
        finally:
            s.close()

    def prep(s):
        _setup(s)
        s.fill(allocated)
        s.snapshot_create("snap")
    c = B.count_once(system, prep, lambda s: s.update("state", 3 * PATCH, b"\x77" * PATCH))
    B.annotate(benchmark, system, "first_write_after_snapshot", allocated, **c)
