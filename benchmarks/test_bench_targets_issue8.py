"""Issue 8 target: large sequential writes reach at least 50% of the plain-file peer's throughput.

The workload is one ``put`` of a large blob, what a device model does when it saves a big
state at once: nvbox's ``put`` (one commit: data, map, directory, refcounts, flush, slot,
flush) against swtpm's directory back end (write a temporary file, fsync it, rename it over
the old one, fsync the directory; PEERS.md).  Each store keeps every blob it wrote, so both
files grow the same way.

The two are timed in alternating rounds, the order swapped every round.  The result is the
median over rounds of each round's ratio (the plain-file put's time over nvbox's in the same
round), so each comparison is made under the same machine conditions.  On the shared
machine those conditions switch between two states for minutes at a time: a 16 MiB put
took 7-10 ms (files) and 15-18 ms (nvbox) in one, about 45 ms for both in the other (the
writer throttled by the page cache's dirty data).  A ratio of the two sides' overall medians
mixes the states whenever a run spans both, and swung from 0.38 to 1.25 between runs.
"""

import statistics
import time

import pytest

import benchlib as B
from benchlib import MiB

SIZES = B.pick([16 * MiB], [16 * MiB, 64 * MiB])


@pytest.mark.parametrize("size", SIZES, ids=B.size_id)
def test_large_put_vs_plain_files(benchmark, size):
    benchmark.group = f"issue 8: large put {B.size_id(size)}, nvbox vs plain files"
    data = B.payload(size)
    rounds = B.pick(6, 10)      # even: each order has half the rounds
    times = {"nvbox": [], "files": []}
    with B.workdir() as d:
        stores = {name: B.create(name, d) for name in times}
        names = iter(range(10 ** 6))

        def put(system):
            t = time.perf_counter()
            stores[system].put(f"blob/{next(names)}", data)
            times[system].append(time.perf_counter() - t)
        try:
            B.paired_rounds(benchmark, lambda: put("nvbox"), lambda: put("files"), rounds)
            sizes = {name: s.file_size() for name, s in stores.items()}
        finally:
            for s in stores.values():
                s.close()
    nv, pl = statistics.median(times["nvbox"]), statistics.median(times["files"])
    # nvbox throughput / plain-file throughput, round by round
    ratio = statistics.median(f / n for f, n in zip(times["files"], times["nvbox"]))
    B.annotate(benchmark, "nvbox", "target_large_put", size, nvbox_seconds=nv, files_seconds=pl,
               nvbox_mib_s=size / MiB / nv, files_mib_s=size / MiB / pl, throughput_ratio=ratio,
               ratio_of_medians=pl / nv,
               nvbox_rounds=times["nvbox"], files_rounds=times["files"], file_sizes=sizes)
    B.target(benchmark, f"issue8 large put {B.size_id(size)}: nvbox/plain-file throughput "
             f"(median of per-round ratios; medians {nv * 1e3:.0f} vs {pl * 1e3:.0f} ms)", round(ratio, 3), 0.5, op=">=",
             timing=True)
