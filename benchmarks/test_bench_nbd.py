"""Issue 16 targets: ``nvbox serve`` against qemu-nbd serving qcow2 and ``nbdkit file``.

Three servers run side by side for the whole module, each on a Unix socket and
each serving a 64 MiB device filled with the same data: nvbox serve (one blob,
4 KiB clusters), qemu-nbd on a qcow2 image (4 KiB clusters) and nbdkit's file
plugin on a plain file.  The clients are the real ones: nbdcopy for the
sequential copy, qemu-io for the 4 KiB requests.  Each round runs every
server once, the order rotated each round, and the result is the median over
rounds of each round's ratio (as in the other issues' targets).

- 64 MiB sequential write + flush: ``nbdcopy --flush`` of a 64 MiB file into
  the device (256 KiB requests over several connections, as nbdcopy does).
- 4 KiB write + flush latency: one qemu-io process making N pairs of
  ``write 4k`` + ``flush`` at random aligned offsets; its time less that of
  the same process making none (start-up and handshake), over N.
- 4 KiB random reads: one qemu-io process reading N random aligned 4 KiB
  blocks, less the empty run, over N.

Targets: sequential write at least 0.5 of qemu-nbd + qcow2's throughput, the
write + flush latency within 2x of it, random reads at least 0.5 of it.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time

import pytest

import benchlib as B
from benchlib import MiB

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "reference", "tests"))
import nbd_support  # noqa: E402

REASON = nbd_support.missing_tools("qemu-img", "qemu-io", "qemu-nbd", "nbdcopy")
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

DEVICE = 64 * MiB
BLOCK = 4096
SYSTEMS = ("nvbox", "qcow2", "file")


@pytest.fixture(scope="module")
def devices():
    """system -> NBD URI of its 64 MiB device; the servers stop (by pid) afterwards."""
    with B.workdir() as d:
        source = os.path.join(d, "source.raw")
        with open(source, "wb") as f:
            f.write(B.payload(DEVICE, seed=16))
        image = os.path.join(d, "disk.nvbox")
        import nvbox
        with nvbox.create(image, cluster_size=B.CLUSTER) as img:
            img.write("disk", 0, open(source, "rb").read())
        qcow2 = os.path.join(d, "disk.qcow2")
        nbd_support.run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", f"cluster_size={B.CLUSTER}",
                        source, qcow2)
        plain = os.path.join(d, "disk.raw")
        nbd_support.run("cp", source, plain)
        servers = {}
        try:
            servers["nvbox"] = nbd_support.start(image, os.path.join(d, "nvbox.sock"))
            servers["qcow2"] = nbd_support.start_peer(
                ["qemu-nbd", "-k", os.path.join(d, "qcow2.sock"), "-f", "qcow2", "-t", "--shared=8", qcow2],
                os.path.join(d, "qcow2.sock"), os.path.join(d, "qcow2.log"))
            servers["file"] = nbd_support.start_peer(
                ["nbdkit", "-f", "-U", os.path.join(d, "file.sock"), "file", plain],
                os.path.join(d, "file.sock"), os.path.join(d, "file.log"))
            yield {"source": source, **{name: s.uri("disk" if name == "nvbox" else "")
                                        for name, s in servers.items()}}
        finally:
            for s in servers.values():
                s.stop()


def rotated_rounds(benchmark, run_one, rounds: int) -> dict:
    """Each round runs ``run_one(system)`` -> seconds for every system, the order
    rotated each round; returns system -> list of seconds."""
    times = {s: [] for s in SYSTEMS}
    turn = iter(range(rounds))

    def one_round():
        k = next(turn) % len(SYSTEMS)
        for system in SYSTEMS[k:] + SYSTEMS[:k]:
            times[system].append(run_one(system))
    benchmark.pedantic(one_round, rounds=rounds, iterations=1)
    return times


def per_round_ratio(times, a, b) -> float:
    """Median over rounds of b's time / a's time (a's throughput relative to b's)."""
    return statistics.median(tb / ta for ta, tb in zip(times[a], times[b]))


def qemu_io_seconds(uri, commands) -> float:
    argv = ["qemu-io", "-f", "raw"]
    for c in commands:
        argv += ["-c", c]
    t = time.perf_counter()
    nbd_support.run(*argv, uri)
    return time.perf_counter() - t


def per_request(uri, commands, n: int) -> float:
    """Seconds per request: the run of ``commands`` less an empty run, over n."""
    empty = qemu_io_seconds(uri, ["read 0 512"])
    return max(qemu_io_seconds(uri, commands) - empty, 1e-9) / n


def offsets(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(DEVICE // BLOCK) * BLOCK for _ in range(n)]


def record(benchmark, workload, size, times, ratio, what, limit, op, scale, unit, **extra) -> None:
    """Annotate the run and record its target: ``what`` with the three medians in ``unit``."""
    med = {s: statistics.median(t) for s, t in times.items()}
    B.annotate(benchmark, "nvbox", workload, size, rounds=times, ratio_vs_qcow2=ratio,
               **{f"median_{unit}": {s: t * scale for s, t in med.items()}}, **extra)
    shown = " / ".join(f"{med[s] * scale:.3g}" for s in SYSTEMS)
    B.target(benchmark, f"issue16 NBD {what} (medians nvbox / qcow2 / file {shown} {unit})",
             round(ratio, 3), limit, op=op, timing=True)


def test_nbd_sequential_write_64m(benchmark, devices):
    benchmark.group = "issue 16: 64 MiB sequential write + flush over NBD (nbdcopy)"

    def copy(system):
        t = time.perf_counter()
        nbd_support.run("nbdcopy", "--flush", devices["source"], devices[system], timeout=300)
        return time.perf_counter() - t
    times = rotated_rounds(benchmark, copy, B.pick(3, 7))
    record(benchmark, "nbd_sequential_write", DEVICE, times, per_round_ratio(times, "nvbox", "qcow2"),
           "64 MiB write+flush: nvbox/qemu-nbd+qcow2 throughput", 0.5, ">=", 1e3, "ms",
           ratio_vs_file=per_round_ratio(times, "nvbox", "file"))


def test_nbd_4k_write_flush_latency(benchmark, devices):
    benchmark.group = "issue 16: 4 KiB write + flush latency over NBD (qemu-io)"
    n = B.pick(40, 200)
    commands = []
    for i, off in enumerate(offsets(n, seed=1)):
        commands += [f"write -P {i % 250 + 1} {off} 4k", "flush"]
    times = rotated_rounds(benchmark, lambda system: per_request(devices[system], commands, n), B.pick(3, 7))
    # Latency: nvbox's time over qemu-nbd's, round by round (the inverse of a throughput ratio).
    record(benchmark, "nbd_write_flush_latency", BLOCK, times, 1 / per_round_ratio(times, "nvbox", "qcow2"),
           "4 KiB write+flush latency: nvbox/qemu-nbd+qcow2", 2.0, "<=", 1e3, "ms", requests=n)


def test_nbd_4k_random_reads(benchmark, devices):
    benchmark.group = "issue 16: 4 KiB random reads over NBD (qemu-io)"
    n = B.pick(300, 2000)
    commands = [f"read {off} 4k" for off in offsets(n, seed=2)]
    times = rotated_rounds(benchmark, lambda system: per_request(devices[system], commands, n), B.pick(3, 7))
    record(benchmark, "nbd_random_read", BLOCK, times, per_round_ratio(times, "nvbox", "qcow2"),
           "4 KiB random reads: nvbox/qemu-nbd+qcow2 throughput", 0.5, ">=", 1e6, "us", requests=n,
           ratio_vs_file=per_round_ratio(times, "nvbox", "file"))
