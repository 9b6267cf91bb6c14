"""Bounds on the work a test of malformed input may take: CPU time and bytes read,
never wall-clock time.

A loaded machine stretches wall-clock time by any factor (fuzz inputs that take
1 to 17 ms when replayed took 1.8 and 1.9 s on a shared 2-core machine), so a
correctness test that compares elapsed time with a limit fails for reasons that
have nothing to do with the code.  These bound what the code does instead: the
CPU time this process spends, and the bytes read from the image's device
(``nvbox.CountingDevice``), in units of the file's length.
"""

from __future__ import annotations

import signal
import time
from contextlib import contextmanager

__all__ = ["OutOfCpu", "CpuUsage", "cpu_limit", "reads_per_pass"]


class OutOfCpu(BaseException):
    """Raised inside a ``cpu_limit`` block that used up its CPU time.  A
    BaseException, so that no ``except Exception`` in the code under test
    swallows it."""


class CpuUsage:
    """The CPU seconds a ``cpu_limit`` block used, set when the block ends."""

    seconds: float = 0.0


@contextmanager
def cpu_limit(seconds: float):
    """Run the block; raise OutOfCpu in it once it has used ``seconds`` of this
    process's CPU time (``ITIMER_PROF``: user and system time, which other
    processes on the machine do not add to).  Yields a CpuUsage."""
    usage = CpuUsage()

    def stop(signum, frame):
        raise OutOfCpu(f"still running after {seconds} s of CPU time")

    old = signal.signal(signal.SIGPROF, stop)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    start = time.process_time()
    try:
        yield usage
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, old)
        usage.seconds = time.process_time() - start


def reads_per_pass(bytes_read: int, file_length: int, passes: int) -> float:
    """Bytes read per pass over an image, in units of (its length + 4 KiB): a
    reader that visits each structure once per pass stays near 1 whatever the
    image holds; one that revisits a shared subtree per reference, or re-reads
    the image per blob, grows with the damage."""
    return bytes_read / (max(passes, 1) * (file_length + 4096))
