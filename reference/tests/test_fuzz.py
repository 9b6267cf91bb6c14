"""Mutation fuzzing of the reader and checker (issue 7; spec R-limit-1, R-ptr-2).

Inputs are valid small images (512-byte clusters; one encrypted with 1 KiB
clusters) changed by a short list of mutations:

- raw: bit flips, runs of bytes (zeros, 0xFF, random, a repeated byte),
  truncation of the file, bytes appended;
- field-aware, re-sealed so the damage gets past the checksums and reaches the
  parser (``conformance.corrupt.Editor`` recomputes every CRC above the edit, up
  to the commit slot): commit slot and header fields (lengths, counts, depths,
  roots) set to boundary values; pointers redirected to other clusters (their
  CRC forged to match, so the reader interprets the wrong cluster), to
  misaligned, header-area or past-the-end offsets, and to their own ancestors
  (cycles); directory node header fields (level, count, body_length) and DER
  length bytes inside directory nodes and the snapshot table; refcount counts.

Each input runs the harness: open read-only, read every blob of the active
directory and of every snapshot, then ``check_image``.  It must end in an
``NvboxError`` or in success.  A finding is any other exception, or work beyond
a bound that does not depend on how loaded the machine is:

- bytes read from the device (a ``CountingDevice`` under the image) above
  ``READ_BUDGET`` times (the file's length + 4 KiB) per pass, a pass being the
  check or the reading of one directory (the active one, each snapshot's): a
  reader that revisits a shared subtree per reference, or re-reads the image per
  blob, goes past it (the worst of the 100,000 inputs in docs/RELIABILITY.md read
  1.17 per pass);
- ``CPU_LIMIT`` seconds of this process's CPU time (the slowest of those took
  54 ms), where the input is stopped: time other processes take on a busy
  machine does not count;
- a ``tracemalloc`` peak of 64 MiB or more.

Two drivers share the mutation operators: a hypothesis test (strategies, so a
finding shrinks to a minimal list of mutations) and a bulk run of seeded
random mutations over a two-process pool (CI: 100,000 inputs; ``NVBOX_FUZZ``
sets the count).  A failed run saves its findings (image and mutation list) in
a new temporary directory and names it in the failure; none is written into the
source tree.  ``fuzz_regressions/`` holds the findings kept as regressions (copied
there by hand, with a ``bug`` note while the library is not fixed), replayed by
``test_regressions``; library bugs are xfail(strict=True) there.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing as mp
import os
import random
import struct
import sys
import tempfile
import time
import tracemalloc
import traceback
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import nvbox
from nvbox import _format as fmt
from nvbox.blockdev import CountingDevice, MemoryDevice
from nvbox.check import check_image
from nvbox.crypto import Key
from nvbox.errors import NvboxError

from conformance.corrupt import HEADER_FIELDS, SLOT_FIELDS, Editor

from budget import OutOfCpu, cpu_limit, reads_per_pass

HERE = Path(__file__).resolve().parent
REGRESSIONS = HERE / "fuzz_regressions"
READ_BUDGET = 8          # bytes read per pass, in units of (file length + 4 KiB)
CPU_LIMIT = 2.0          # CPU seconds per input: a finding beyond it, and the input is stopped
MEMORY_LIMIT = 64 << 20  # tracemalloc peak per input
BULK_INPUTS = int(os.environ.get("NVBOX_FUZZ", "100000"))
HYPOTHESIS_EXAMPLES = int(os.environ.get("NVBOX_FUZZ_HYPOTHESIS", "2000"))
FUZZ_KEY = Key.from_passphrase("fuzz-key", kdf="fast")

TOTALS = {"inputs": 0, "errors": 0, "ok": 0, "findings": 0, "max_cpu": 0.0, "max_peak": 0, "max_reads": 0.0,
          "codes": {}}


def _pat(tag: str, n: int) -> bytes:
    seed = hashlib.sha256(tag.encode()).digest()
    return bytes((seed[i % 32] + i // 32) & 0xFF for i in range(n))


# -- seed images ----------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def seeds() -> list[tuple[str, bytes]]:
    """(name, bytes) of the valid images the fuzzer starts from."""
    out = []
    img = nvbox.create(None, cluster_size=512)
    out.append(("empty", bytes(img.dev.inner.data)))
    img["a"] = b"inline"
    img["b"] = _pat("b", 1500)
    img["c"] = _pat("c", 700)
    img.snapshots.create("s1", b"meta")
    img["c"] = _pat("c2", 900)
    out.append(("small", bytes(img.dev.inner.data)))
    img = nvbox.create(None, cluster_size=512)
    with img.transaction():
        for i in range(40):
            img[f"n{i:02d}"] = _pat(f"n{i}", 10)
        img["deep"] = _pat("deep", 17000)           # cluster map of depth 2
        img["mid"] = _pat("mid", 2000)
    img.snapshots.create("one")
    del img["n05"]
    img.write("deep", 5000, b"x" * 600)
    img.snapshots.create("two", b"m2")
    img.truncate("mid", 100)
    assert img.slot.dir_depth == 2 and img.stat("deep").depth == 2
    out.append(("multi", bytes(img.dev.inner.data)))
    img = nvbox.create(None, cluster_size=1024, encrypt=True, key=FUZZ_KEY)
    img["a"] = b"secret"
    img["b"] = _pat("eb", 2500)
    img.snapshots.create("s")
    out.append(("enc", bytes(img.dev.inner.data)))
    return out


@functools.lru_cache(maxsize=None)
def sites(seed_index: int) -> dict:
    """Field-aware mutation sites of a plain seed: absolute offsets and widths of
    slot and header fields, pointer references, directory and DER fields."""
    name, raw = seeds()[seed_index]
    if name == "enc":
        return {"fields": [], "refs": [], "clusters": []}
    ed = Editor(raw)
    lay = ed.layout
    fields = []   # (abs offset, struct code)
    for off, code in SLOT_FIELDS.values():
        if code.endswith("s") and code != "8s":
            continue          # pointers are handled as refs
        for slot_off in fmt.SLOT_OFFSETS:
            fields.append((slot_off + off, code))
    for fname, (off, code) in HEADER_FIELDS.items():
        if fname not in ("header_crc", "image_uuid"):
            fields.append((off, code))
    cs = lay.cs
    for node in lay.nodes.values():
        base = node.index * cs
        if node.kind == "dir":
            fields += [(base + 4, "B"), (base + 6, "H"), (base + 8, "I")]
            for item in node.info.get("items", []):
                a, _b = item["span"]
                fields.append((base + a - 1, "B"))      # the element's DER length byte
                fields.append((base + a + 1, "B"))      # its first field's length byte
        elif node.kind == "refblock":
            fields += [(base + 2 * j, "H") for j in range(0, cs // 2, 17)]
        elif node.kind == "snapdata":
            fields += [(base + j, "B") for j in range(0, min(cs, 64))]
    refs = []
    for r in list(lay.slot_refs.values()) + [r for n in lay.nodes.values() for r in n.refs]:
        refs.append(tuple(r.at))
    clusters = sorted(lay.nodes)
    return {"fields": fields, "refs": refs, "clusters": clusters}


@functools.lru_cache(maxsize=None)
def editor(seed_index: int) -> Editor:
    return Editor(seeds()[seed_index][1])


# -- mutations ------------------------------------------------------------------------------
# A mutation is a plain tuple, so findings can be printed and replayed:
#   ("flip", pos, bit) ("run", pos, n, fill) ("truncate", n) ("append", n, fill)
#   ("field", site, value) ("pointer", ref, how, arg) ("count", cluster, j, value)

def _interesting(width_bits: int, rnd: int) -> list[int]:
    top = (1 << width_bits) - 1
    return [0, 1, 2, 3, 7, 15, 16, 17, 255, 256, 511, 512, 1023, 1024, 4096, 65535, 65536,
            1 << 20, 1 << 31, 1 << 32, 1 << 40, 1 << 48, top, top - 1, top >> 1, rnd]


def apply(seed_index: int, muts) -> bytes:
    """The image ``muts`` make of seed ``seed_index``."""
    raw = seeds()[seed_index][1]
    sit = sites(seed_index)
    field_muts = [m for m in muts if m[0] in ("field", "pointer")]
    if field_muts and sit["fields"]:
        ed = editor(seed_index)
        ed.data[:] = raw
        try:
            for m in field_muts:
                _apply_field(ed, sit, m)
            data = bytearray(ed.data)
        finally:
            ed.data[:] = raw
    else:
        data = bytearray(raw)
    for m in muts:
        kind = m[0]
        if kind == "flip" and data:
            pos = m[1] % len(data)
            data[pos] ^= 1 << (m[2] % 8)
        elif kind == "run" and data:
            pos, n, fill = m[1] % len(data), m[2], m[3]
            if fill < 0:
                blob = random.Random(pos * 7919 + n).randbytes(n)
            else:
                blob = bytes([fill]) * n
            data[pos:pos + n] = blob[:max(0, len(data) - pos)]
        elif kind == "truncate":
            del data[m[1] % (len(data) + 1):]
        elif kind == "append":
            data += bytes([m[2]]) * m[1]
    return bytes(data)


def _apply_field(ed: Editor, sit: dict, m) -> None:
    cs = ed.cs
    if m[0] == "field":
        off, code = sit["fields"][m[1] % len(sit["fields"])]
        size = struct.calcsize("<" + code)
        value = m[2] % (1 << (8 * size)) if code != "8s" else (m[2] % (1 << 64)).to_bytes(8, "little")
        ed.poke(off, struct.pack("<" + code, value))
        return
    # ("pointer", ref index, how, arg)
    refs = sit["refs"]
    if not refs:
        return
    at = list(refs[m[1] % len(refs)])
    how, arg = m[2], m[3]
    nclusters = len(ed.data) // cs
    if how == "cluster":          # another cluster, CRC forged to match it
        target = (arg % max(nclusters, 1)) * cs
    elif how == "ancestor":       # a reachable node: often a cycle
        cl = sit["clusters"]
        target = cl[arg % len(cl)] * cs if cl else 0
    elif how == "misaligned":
        target = (arg % max(nclusters, 1)) * cs + 1 + arg % (cs - 1)
    elif how == "past_end":
        target = (nclusters + arg % 4) * cs
    elif how == "header":
        target = 0 if arg % 2 else fmt.SLOT_OFFSETS[0]
    else:                          # "raw": any 64-bit value
        target = arg
    crc = fmt.crc32c(bytes(ed.data[target:target + cs])) if target + cs <= len(ed.data) and target % cs == 0 else arg
    value = struct.pack("<QI", target % (1 << 64), crc % (1 << 32))
    for k, b in enumerate(value):
        ed.data[at[k]] = b
    # Re-seal the holder: a slot, or a cluster (and everything above it).
    holder = at[0]
    if holder < fmt.HEADER_AREA:
        ed.reseal_slot(holder // fmt.SECTOR - 1)
    else:
        ed.reseal(holder // cs)


def random_mutations(rng: random.Random, seed_index: int) -> list:
    """The bulk driver's mutation list (the same shapes the strategies draw)."""
    n = len(seeds()[seed_index][1])
    sit = sites(seed_index)
    out = []
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
        r = rng.random()
        plain = bool(sit["fields"])
        if plain and r < 0.35:
            out.append(("field", rng.randrange(1 << 16), rng.choice(_interesting(64, rng.getrandbits(64)))
                        + rng.choice((0, 0, 0, 1, -1))))
        elif plain and r < 0.55:
            out.append(("pointer", rng.randrange(1 << 16),
                        rng.choice(("cluster", "cluster", "ancestor", "ancestor", "misaligned", "past_end",
                                    "header", "raw")), rng.getrandbits(rng.choice((4, 8, 16, 64)))))
        elif r < 0.8:
            hot = rng.random() < 0.5
            pos = rng.randrange(fmt.HEADER_AREA if hot else n)
            out.append(("flip", pos, rng.randrange(8)))
        elif r < 0.92:
            out.append(("run", rng.randrange(n), rng.choice((1, 2, 4, 8, 16, 64, 512)),
                        rng.choice((0, 0xFF, -1, 0x80, 0x01))))
        elif r < 0.97:
            out.append(("truncate", rng.choice((rng.randrange(n), (rng.randrange(n) // 512) * 512))))
        else:
            out.append(("append", rng.choice((1, 511, 512, 4096)), rng.choice((0, 0xFF))))
    return out


# -- the harness ------------------------------------------------------------------------------

def exercise(raw: bytes, key=None, dev=None) -> tuple[str, int]:
    """Open, read everything, check.  Returns ('ok:<verdict>' or the NvboxError
    code, passes made); any other exception propagates."""
    passes = 0
    try:
        img = nvbox.open(dev if dev is not None else raw, "r", key=key)
        views = [img] + [img.snapshots.view(info.name) for info in img.snapshots.list()]
        for view in views:
            passes += 1
            for name in view.names():
                view.read(name)
                view.stat(name)
        passes += 1
        res = check_image(img)
        return "ok:" + res.verdict, passes
    except NvboxError as exc:
        return exc.code, max(passes, 1)


class Work:
    """What one input cost: CPU seconds, bytes read against its budget, memory peak."""

    __slots__ = ("cpu", "reads", "peak")

    def __init__(self, cpu: float, reads: float, peak: int):
        self.cpu, self.reads, self.peak = cpu, reads, peak


def run_one(raw: bytes, key=None) -> tuple[str | None, str, Work]:
    """(finding or None, outcome, work) for one input.  ``work.reads`` is the bytes
    read per pass in units of (file length + 4 KiB): a finding above READ_BUDGET."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    dev = CountingDevice(MemoryDevice(raw))
    finding, passes = None, 1
    with cpu_limit(CPU_LIMIT) as cpu:
        try:
            outcome, passes = exercise(raw, key, dev)
        except OutOfCpu as exc:
            outcome, finding = "slow", f"slow: {exc}"
        except BaseException as exc:  # noqa: BLE001 - anything but NvboxError is the finding
            if isinstance(exc, KeyboardInterrupt):
                raise
            tb = traceback.extract_tb(exc.__traceback__)[-1]
            outcome = type(exc).__name__
            finding = f"{type(exc).__name__}: {exc} (at {Path(tb.filename).name}:{tb.lineno} in {tb.name})"
    peak = tracemalloc.get_traced_memory()[1] - base
    if started:
        tracemalloc.stop()
    reads = reads_per_pass(dev.stats.bytes_read, len(raw), passes)
    if finding is None and reads > READ_BUDGET:
        finding = (f"work: read {dev.stats.bytes_read:,} bytes in {dev.stats.reads:,} reads over {passes} passes "
                   f"of a {len(raw):,}-byte file ({reads:.1f} per pass, budget {READ_BUDGET}), outcome {outcome}")
    if finding is None and peak >= MEMORY_LIMIT:
        finding = f"memory: tracemalloc peak {peak >> 20} MiB (limit {MEMORY_LIMIT >> 20} MiB), outcome {outcome}"
    return finding, outcome, Work(cpu.seconds, reads, peak)


def _key_for(seed_index: int):
    return FUZZ_KEY if seeds()[seed_index][0] == "enc" else None


_FINDINGS_DIR: list = []


def findings_dir() -> Path:
    """A temporary directory for this run's findings, made on the first one."""
    if not _FINDINGS_DIR:
        _FINDINGS_DIR.append(Path(tempfile.mkdtemp(prefix="nvbox-fuzz-findings-")))
    return _FINDINGS_DIR[0]


def save_finding(seed_index: int, muts, raw: bytes, finding: str) -> Path:
    """Write a finding as NAME.nvbox + NAME.json (the fuzz_regressions/ format) into
    findings_dir(); copy the pair into fuzz_regressions/ to keep it as a regression."""
    h = hashlib.sha256(raw).hexdigest()[:16]
    path = findings_dir() / f"{seeds()[seed_index][0]}-{h}.nvbox"
    path.write_bytes(raw)
    meta = {"seed": seeds()[seed_index][0], "mutations": [list(m) for m in muts], "finding": finding,
            "key": "fuzz-key" if _key_for(seed_index) else None}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    return path


def _tally(outcome: str, work: Work, finding) -> None:
    TOTALS["inputs"] += 1
    TOTALS["max_cpu"] = max(TOTALS["max_cpu"], work.cpu)
    TOTALS["max_peak"] = max(TOTALS["max_peak"], work.peak)
    TOTALS["max_reads"] = max(TOTALS["max_reads"], work.reads)
    TOTALS["codes"][outcome] = TOTALS["codes"].get(outcome, 0) + 1
    if finding:
        TOTALS["findings"] += 1
    elif outcome.startswith("ok"):
        TOTALS["ok"] += 1
    else:
        TOTALS["errors"] += 1


# -- bulk driver (process pool) ---------------------------------------------------------------

def _bulk_chunk(args):
    start, count, base_seed = args
    tracemalloc.start()
    findings = []
    stats = {"inputs": count, "codes": {}, "max_cpu": 0.0, "max_peak": 0, "max_reads": 0.0, "cpu_seconds": 0.0}
    nseeds = len(seeds())
    for i in range(start, start + count):
        rng = random.Random(f"{base_seed}:{i}")
        # The encrypted seed costs a KDF per input: one input in twelve.
        si = rng.randrange(nseeds - 1) if rng.random() < 11 / 12 else nseeds - 1
        muts = random_mutations(rng, si)
        raw = apply(si, muts)
        finding, outcome, work = run_one(raw, _key_for(si))
        stats["codes"][outcome] = stats["codes"].get(outcome, 0) + 1
        stats["max_cpu"] = max(stats["max_cpu"], work.cpu)
        stats["max_peak"] = max(stats["max_peak"], work.peak)
        stats["max_reads"] = max(stats["max_reads"], work.reads)
        stats["cpu_seconds"] += work.cpu
        if finding:
            findings.append((si, muts, raw, finding))
    tracemalloc.stop()
    return stats, findings


def bulk(n: int, base_seed: str = "nvbox-fuzz", jobs: int = 2, chunk: int = 500):
    """Run n seeded random inputs over ``jobs`` processes; returns (stats, findings)."""
    seeds(), [sites(i) for i in range(len(seeds()))]   # build before forking
    tasks = [(s, min(chunk, n - s), base_seed) for s in range(0, n, chunk)]
    stats = {"inputs": 0, "codes": {}, "max_cpu": 0.0, "max_peak": 0, "max_reads": 0.0, "cpu_seconds": 0.0}
    findings = []
    t0 = time.perf_counter()     # reported, never judged
    with mp.get_context("fork").Pool(jobs) as pool:
        for part, f in pool.imap_unordered(_bulk_chunk, tasks):
            stats["inputs"] += part["inputs"]
            for k, v in part["codes"].items():
                stats["codes"][k] = stats["codes"].get(k, 0) + v
            for k in ("max_cpu", "max_peak", "max_reads"):
                stats[k] = max(stats[k], part[k])
            stats["cpu_seconds"] += part["cpu_seconds"]
            findings += f
    stats["wall_seconds"] = time.perf_counter() - t0
    stats["rate"] = stats["inputs"] / stats["wall_seconds"]
    return stats, findings


# -- regressions ------------------------------------------------------------------------------

def regression_files():
    return sorted(REGRESSIONS.glob("*.nvbox")) if REGRESSIONS.is_dir() else []


def _regression_param(path: Path):
    meta = json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").exists() else {}
    marks = []
    if meta.get("bug"):
        marks.append(pytest.mark.xfail(strict=True, reason=meta["bug"]))
    return pytest.param(path, meta, id=path.stem, marks=marks)


@pytest.mark.parametrize("path,meta", [_regression_param(p) for p in regression_files()] or
                         [pytest.param(None, {}, marks=pytest.mark.skip(reason="no regressions saved"))])
def test_regressions(path, meta):
    raw = path.read_bytes()
    key = FUZZ_KEY if meta.get("key") else None
    finding, outcome, work = run_one(raw, key)
    assert finding is None, finding


# -- the tests --------------------------------------------------------------------------------

def test_seeds_are_valid_and_field_sites_found():
    for i, (name, raw) in enumerate(seeds()):
        assert exercise(raw, _key_for(i))[0] == "ok:clean", name
        if name != "enc":
            s = sites(i)
            assert s["fields"] and (name == "empty" or len(s["refs"]) > 3)


def test_field_mutations_get_past_the_checksums():
    """The re-sealing works: field-aware mutations mostly fail on a field rule,
    not on a checksum (else they would test nothing the bit flips do not)."""
    rng = random.Random(5)
    codes = {}
    for _ in range(300):
        muts = [("field", rng.randrange(1 << 16), rng.choice(_interesting(64, rng.getrandbits(64))))]
        out = exercise(apply(2, muts))[0]
        codes[out] = codes.get(out, 0) + 1
    checksum = codes.get("cluster.checksum", 0) + codes.get("slot.none_valid", 0) + codes.get("header.checksum", 0)
    assert checksum < 150, codes
    assert len(codes) >= 6, codes


def test_harness_bounds_have_teeth(monkeypatch):
    """Each bound turns into a finding when an input passes it (here: bounds set below
    what a valid seed costs), and a saved finding lands outside the source tree."""
    raw = seeds()[2][1]
    assert run_one(raw)[0] is None
    this = sys.modules[__name__]
    monkeypatch.setattr(this, "READ_BUDGET", 0.5)
    finding, outcome, work = run_one(raw)
    assert finding.startswith("work: read ") and outcome == "ok:clean" and work.reads > 0.5, finding
    monkeypatch.setattr(this, "READ_BUDGET", 8)
    monkeypatch.setattr(this, "CPU_LIMIT", 0.001)
    assert run_one(raw)[0].startswith("slow: still running after 0.001 s of CPU time")
    monkeypatch.setattr(this, "CPU_LIMIT", 2.0)
    monkeypatch.setattr(this, "MEMORY_LIMIT", 1)
    assert run_one(raw)[0].startswith("memory: ")
    monkeypatch.setattr(this, "_FINDINGS_DIR", [])
    saved = save_finding(2, [("flip", 0, 0)], raw, "example")
    try:
        assert HERE.parent.parent not in saved.parents and saved.read_bytes() == raw
        assert json.loads(saved.with_suffix(".json").read_text())["mutations"] == [["flip", 0, 0]]
    finally:
        saved.unlink()
        saved.with_suffix(".json").unlink()
        saved.parent.rmdir()


def _strategy_mutation(n: int, plain: bool):
    raw = st.tuples(st.just("flip"), st.integers(0, n - 1), st.integers(0, 7)) | \
        st.tuples(st.just("run"), st.integers(0, n - 1), st.sampled_from([1, 2, 4, 8, 64, 512]),
                  st.sampled_from([0, 0xFF, -1, 0x80])) | \
        st.tuples(st.just("truncate"), st.integers(0, n)) | \
        st.tuples(st.just("append"), st.sampled_from([1, 512, 4096]), st.sampled_from([0, 0xFF]))
    if not plain:
        return raw
    field = st.tuples(st.just("field"), st.integers(0, 1 << 16),
                      st.sampled_from(_interesting(64, 0x1234_5678_9ABC)) | st.integers(0, (1 << 64) - 1))
    pointer = st.tuples(st.just("pointer"), st.integers(0, 1 << 16),
                        st.sampled_from(["cluster", "ancestor", "misaligned", "past_end", "header", "raw"]),
                        st.integers(0, (1 << 64) - 1))
    return field | pointer | raw


@st.composite
def fuzz_inputs(draw):
    si = draw(st.integers(0, len(seeds()) - 1))
    n = len(seeds()[si][1])
    muts = draw(st.lists(_strategy_mutation(n, seeds()[si][0] != "enc"), min_size=1, max_size=4))
    return si, muts


@settings(max_examples=HYPOTHESIS_EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(fuzz_inputs())
def test_fuzz_hypothesis(case):
    si, muts = case
    raw = apply(si, muts)
    finding, outcome, work = run_one(raw, _key_for(si))
    _tally(outcome, work, finding)
    if finding:
        saved = save_finding(si, muts, raw, finding)
        pytest.fail(f"seed {seeds()[si][0]}, mutations {muts}: {finding} (saved as {saved})")


def test_fuzz_bulk():
    """BULK_INPUTS seeded random inputs over two processes (CI: 100,000)."""
    stats, findings = bulk(BULK_INPUTS)
    TOTALS["bulk"] = stats
    assert stats["inputs"] == BULK_INPUTS
    if findings:
        saved = [save_finding(si, muts, raw, f) for si, muts, raw, f in findings]
        listing = "\n".join(f"  {seeds()[si][0]} {muts}: {f}" for si, muts, _raw, f in findings[:10])
        pytest.fail(f"{len(findings)} findings, saved in {saved[0].parent} (copy a NAME.nvbox + NAME.json pair "
                    f"into {REGRESSIONS} to keep it as a regression):\n{listing}")


def summary() -> list[str]:
    """The totals of this run, for the report at the end of the test session (conftest.py)."""
    if not TOTALS["inputs"] and "bulk" not in TOTALS:
        return []
    b = TOTALS.get("bulk", {})
    lines = [f"hypothesis inputs {TOTALS['inputs']:,}, findings {TOTALS['findings']}, slowest "
             f"{TOTALS['max_cpu'] * 1000:.0f} ms CPU, most read {TOTALS['max_reads']:.1f} x the file per pass, "
             f"tracemalloc peak {TOTALS['max_peak'] >> 10} KiB"]
    if b:
        lines.append(f"bulk inputs {b['inputs']:,} in {b['wall_seconds']:.0f} s ({b['rate']:.0f}/s on 2 processes), "
                     f"slowest {b['max_cpu'] * 1000:.0f} ms CPU, most read {b['max_reads']:.1f} x the file per pass "
                     f"(budget {READ_BUDGET}), tracemalloc peak {b['max_peak'] >> 10} KiB")
    if _FINDINGS_DIR:
        lines.append(f"findings saved in {_FINDINGS_DIR[0]}")
    return lines
