"""Issue 8 (and issue 3): snapshot create and delete against the allocated size.

qcow2 runs `qemu-img snapshot -c/-d`; its process start-up (`qemu-img info` on the same
image) is recorded as extra_info['startup_seconds'], which report.py subtracts."""

import statistics

import pytest

import benchlib as B
from benchlib import GiB, MiB

SIZES = B.pick([16 * MiB, 64 * MiB], [16 * MiB, 256 * MiB, 1 * GiB, 4 * GiB])


def _rounds(system, size):
    if size >= GiB and system in ("sqlite",):
        return 1
    return 3


def _startup(s, system):
    if system != "qcow2":
        return None
    return statistics.median(s.startup_time() for _ in range(5))


@pytest.mark.parametrize("size", SIZES, ids=B.size_id)
@pytest.mark.parametrize("system", B.systems())
def test_snapshot_create(benchmark, system, size):
    benchmark.group = f"snapshot create {B.size_id(size)}"
    with B.workdir() as d:
        s = B.create(system, d)
        try:
            s.put("state", B.payload(MiB))
            s.fill(size)
            n = iter(range(100))
            benchmark.pedantic(lambda: s.snapshot_create(f"snap{next(n)}"), rounds=_rounds(system, size),
                               iterations=1)
            startup = _startup(s, system)
            fsize = s.file_size()
        finally:
            s.close()
    extra = {"startup_seconds": startup, "file_size": fsize}
    if size <= B.pick(64 * MiB, 256 * MiB):   # the counting pass refills the store
        c = B.count_once(system, lambda s: (s.put("state", B.payload(MiB)), s.fill(size)),
                         lambda s: s.snapshot_create("snap"))
        extra.update({k: v for k, v in c.items() if k != "file_size"})
    B.annotate(benchmark, system, "snapshot_create", size, **extra)


@pytest.mark.parametrize("size", SIZES, ids=B.size_id)
@pytest.mark.parametrize("system", B.systems())
def test_snapshot_delete(benchmark, system, size):
    """Delete a snapshot that shares everything with the active state."""
    benchmark.group = f"snapshot delete {B.size_id(size)}"
    with B.workdir() as d:
        s = B.create(system, d)
        try:
            s.put("state", B.payload(MiB))
            s.fill(size)
            n = iter(range(100))
            names = []

            def setup():
                names.append(f"snap{next(n)}")
                s.snapshot_create(names[-1])
                return (), {}
            benchmark.pedantic(lambda: s.snapshot_delete(names[-1]), setup=setup,
                               rounds=_rounds(system, size), iterations=1)
            startup = _startup(s, system)
            fsize = s.file_size()
        finally:
            s.close()
    B.annotate(benchmark, system, "snapshot_delete", size, startup_seconds=startup, file_size=fsize)
