"""Shared helpers of the benchmark suites (test_bench_*.py).

Selection: NVBOX_BENCH=quick (default) runs a small subset (< 3 minutes on 2 cores);
NVBOX_BENCH=full runs every size.  Targets are of two kinds (``target``): counts (clusters
written or read, flushes, bytes, freed clusters, undetected mutants), which do not depend on
the machine and fail their test when missed, and timing ratios, which are recorded and
reported but fail only with NVBOX_BENCH_STRICT=1, so that a loaded machine does not fail
`make test`.  NVBOX_BENCH_DIR chooses where the
stores live (default: the system temporary directory, which must be a real disk file
system for the numbers to mean anything; scratch files of the qcow2 peer go to /dev/shm).

Every benchmark is timed with counting off (ptrace slows system calls), then, where the
workload allows, repeated once in a separate counting pass (`count_once`) whose numbers go
into `benchmark.extra_info`: bytes_written, flushes, file_size, clusters_written (nvbox).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import peers  # noqa: E402
from nvbox_store import NvboxStore  # noqa: E402
from peers import GiB, MiB, PlainFilesStore, Qcow2Store, SqliteStore  # noqa: E402

KiB = 1 << 10
MODE = os.environ.get("NVBOX_BENCH", "quick").strip().lower() or "quick"
if MODE not in ("quick", "full"):
    raise SystemExit(f"NVBOX_BENCH must be 'quick' or 'full', not {MODE!r}")
FULL = MODE == "full"
STRICT = os.environ.get("NVBOX_BENCH_STRICT", "") not in ("", "0", "no")
CLUSTER = 4096          # nvbox and qcow2 use the same cluster size everywhere

CLASSES = {"nvbox": NvboxStore, "qcow2": Qcow2Store, "sqlite": SqliteStore, "files": PlainFilesStore}


def pick(quick, full):
    return full if FULL else quick


def systems(*, snapshots: bool = False) -> list:
    """pytest params for every system; qcow2 is skipped (with the reason) without qemu."""
    import pytest
    out = []
    for name in CLASSES:
        marks = []
        if name == "qcow2" and not peers.have_qemu():
            marks.append(pytest.mark.skip(reason="qemu-img/qemu-io not installed (apt-get install qemu-utils)"))
        out.append(pytest.param(name, marks=marks, id=name))
    return out


def size_id(n: int) -> str:
    for unit, mult in (("G", GiB), ("M", MiB), ("K", KiB)):
        if n >= mult and n % mult == 0:
            return f"{n // mult}{unit}"
    return f"{n}B"


def bench_root() -> str:
    base = os.environ.get("NVBOX_BENCH_DIR") or tempfile.gettempdir()
    os.makedirs(base, exist_ok=True)
    return base


@contextlib.contextmanager
def workdir():
    """A fresh directory on the benchmark disk, removed afterwards (images can be GiBs)."""
    d = tempfile.mkdtemp(prefix="nvbox-bench-", dir=bench_root())
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def store_path(d: str, system: str, tag: str = "s") -> str:
    return os.path.join(d, f"{tag}.{system}" + (".qcow2" if system == "qcow2" else ""))


def create(system: str, d: str, count_io: bool = False, tag: str = "s", **kw):
    cls = CLASSES[system]
    if system in ("nvbox", "qcow2"):
        kw.setdefault("cluster_size", CLUSTER)
    return cls.create(store_path(d, system, tag), count_io=count_io, **kw)


def can_count(system: str) -> bool:
    return system in ("nvbox", "files") or peers.have_strace()


def payload(n: int, seed: int = 0) -> bytes:
    """Incompressible-looking but cheap data of n bytes."""
    block = bytes(((i * 131 + seed * 7 + (i >> 8)) & 0xFF) for i in range(min(n, 65536) or 0))
    if n <= len(block):
        return block[:n]
    reps = -(-n // len(block))
    return (block * reps)[:n]


def counters(store) -> dict:
    out = {"bytes_written": store.bytes_written, "flushes": store.flushes}
    if isinstance(store, NvboxStore):
        st = store.img.stats
        out["clusters_written"] = st["clusters_written"]
        out["clusters_read"] = st["clusters_read"]
        out["commits"] = st["commits"]
    return out


def delta(before: dict, after: dict) -> dict:
    return {k: (after[k] - before[k]) if after.get(k) is not None and before.get(k) is not None else None
            for k in after}


def count_once(system: str, setup, op, per: int = 1, **create_kw) -> dict:
    """The counting pass: a fresh store with count_io=True, `setup(store)` (not counted),
    then `op(store)` counted.  Returns bytes_written/flushes (divided by `per` operations),
    file_size and, for nvbox, clusters_written/clusters_read/commits."""
    if not can_count(system):
        return {"bytes_written": None, "flushes": None, "count_note": "strace not installed"}
    with workdir() as d:
        s = create(system, d, count_io=True, **create_kw)
        try:
            setup(s)
            if isinstance(s, NvboxStore):
                s.img.reset_stats()
            b = counters(s)
            op(s)
            a = counters(s)
            out = delta(b, a)
            if per != 1:
                out = {k: (v / per if v is not None else None) for k, v in out.items()}
            out["file_size"] = s.file_size()
            return out
        finally:
            s.close()


def annotate(benchmark, system: str, workload: str, size=None, **extra) -> None:
    info = benchmark.extra_info
    info.update(system=system, workload=workload, mode=MODE)
    if size is not None:
        info["size"] = size
    for k, v in extra.items():
        info[k] = v


def target(benchmark, name: str, value, limit, op: str = "<=", unit: str = "", note: str = "", *,
           timing: bool = False) -> bool:
    """Record a target measurement (issues 2, 3, 6, 8) in extra_info['targets'].  A missed
    count fails the test; a missed timing ratio (``timing=True``) only with NVBOX_BENCH_STRICT=1."""
    ok = {"<=": value <= limit, ">=": value >= limit, "==": value == limit, "<": value < limit}[op]
    rec = {"name": name, "value": value, "limit": limit, "op": op, "unit": unit, "pass": bool(ok),
           "kind": "timing" if timing else "count"}
    if note:
        rec["note"] = note
    benchmark.extra_info.setdefault("targets", []).append(rec)
    _TARGETS.append(rec)
    if STRICT or not timing:
        assert ok, f"target missed: {name}: {value} {unit} (limit {op} {limit})"
    return ok


_TARGETS: list = []


def paired_rounds(benchmark, first, second, rounds: int) -> None:
    """Time two writers side by side: both run in every round, one right after
    the other, and the order swaps each round (which one goes first moved a
    ratio by up to 0.1 on this machine).  Each callable records its own time;
    compare them round by round (the median of per-round ratios)."""
    turn = iter(range(rounds))

    def one_round():
        for run in ((first, second) if next(turn) % 2 == 0 else (second, first)):
            run()
    benchmark.pedantic(one_round, rounds=rounds, iterations=1)


def timed(fn, *a, **kw):
    t = time.perf_counter()
    r = fn(*a, **kw)
    return time.perf_counter() - t, r
