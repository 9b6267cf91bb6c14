"""Issue 8 (and issue 2's open target): time to open a store against its blob count."""

import pytest

import benchlib as B

COUNTS = B.pick([10, 1000], [10, 1000, 10000, 100000])


@pytest.mark.parametrize("count", COUNTS)
@pytest.mark.parametrize("system", B.systems())
def test_open(benchmark, system, count):
    benchmark.group = f"open with {count} blobs"
    cls = B.CLASSES[system]
    with B.workdir() as d:
        s = B.create(system, d)
        s.put_many([(f"blob/{i:06d}", b"v" * 100) for i in range(count)])
        path = s.path
        size = s.file_size()
        s.close()
        reads = {}

        def op():
            t = cls.open(path)
            if system == "nvbox":
                reads.update(t.stats())
            t.close()
        benchmark.pedantic(op, rounds=5, iterations=1, warmup_rounds=1)
    extra = {"file_size": size, "bytes_written": 0, "flushes": 0}
    if system == "nvbox":
        extra.update(clusters_read=reads["clusters_read"], device_bytes_read=reads["device_bytes_read"])
    B.annotate(benchmark, system, "open", count, **extra)
