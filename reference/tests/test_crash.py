"""Crash safety of every commit (issue 7; spec sections 4, 7.3, 12, 12.1).

Every workload runs on a ``nvbox.crashsim.RecordingDevice``; ``crash_states``
enumerates the images a power cut may leave (every flush boundary, every subset
of the writes in flight, every write torn at a 512-byte sector with the rest
old, zeros or garbage).  Each crash image must:

1. open read-only (``nvbox.open(bytes, "r")``);
2. read, in full (every blob of the active directory and of every snapshot,
   snapshot metadata, and for encrypted images which test keys open it), as
   the logical state before or after the operation that was in flight; the
   ``complete`` state (every op applied: the operation returned) as the state
   after the last operation;
3. pass ``check_image`` as ``clean``: no corruption and no leaks either, since
   R-alloc-2 says freed clusters are reclaimed by the commit itself.

Workloads: every single operation type (put, partial write, extend, truncate,
delete, transaction, snapshot create/revert/delete, compact, key add/remove)
on a small image, a multi-level one (two-level directory, map depth 2,
two-level refcount tree, 512-byte clusters) and an encrypted one; and B3-style
sequences of up to three operations from a small fixed vocabulary (all pairs
on the small tree, a seeded sample of triples on both trees).

``NVBOX_CRASH=full`` (``make crash-full``, or ``reference/tests/crash_full.py``)
explores far more: all sequences, larger exhaustive epochs, more seeds.

Identical crash images are checked once (the verdict is a function of the
bytes): ``states`` counts every crash state explored, ``distinct`` the images
actually opened and checked.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import random
import time
from dataclasses import dataclass, field

import pytest

import nvbox
from nvbox.blockdev import MemoryDevice
from nvbox.check import check_image
from nvbox.compact import compact_image
from nvbox.crashsim import RecordingDevice, crash_states, count_crash_states
from nvbox.crypto import Key
from nvbox.errors import NvboxError

FULL = os.environ.get("NVBOX_CRASH", "").lower() == "full"
CS = 512

# Test keys (tiny KDF: tests only).  K1 and K2 open the encrypted base image.
KEYS = {name: Key.from_passphrase(f"crash-{name}", kdf="fast") for name in ("K1", "K2", "K3")}


def pattern(tag: str, n: int) -> bytes:
    """n bytes that differ per tag and per position (a stale cluster shows)."""
    seed = hashlib.sha256(tag.encode()).digest()
    return bytes((seed[i % 32] + i // 32) & 0xFF for i in range(n))


# -- base images ----------------------------------------------------------------------------

def _build_small(img):
    img["a"] = b"inline-a"
    img["b"] = pattern("b0", 1500)
    img["c"] = pattern("c0", 700)
    img.snapshots.create("s1", b"meta-1")
    img["c"] = pattern("c1", 900)


def _build_deep(img):
    with img.transaction():
        for i in range(60):
            img[f"n{i:02d}"] = pattern(f"n{i}", 12)
        img["b"] = pattern("b0", 1500)
        img["c"] = pattern("c0", 700)
        img["deep"] = pattern("deep", 20000)       # cluster map of depth 2
        img["bulk"] = pattern("bulk", 110000)      # > 256 clusters: refcount depth 2
    img.snapshots.create("s1", b"meta-1")
    img["c"] = pattern("c1", 900)
    s = img.slot
    assert s.dir_depth >= 2 and s.refcount_depth >= 2, (s.dir_depth, s.refcount_depth)
    assert img.stat("deep").depth >= 2


@functools.lru_cache(maxsize=None)
def base_image(tree: str) -> bytes:
    """The image bytes a workload starts from: 'small', 'deep' or 'enc'."""
    if tree == "enc":
        img = nvbox.create(None, cluster_size=1024, encrypt=True, key=KEYS["K1"])
        img.key_slots.add(KEYS["K2"])
        _build_small(img)
    else:
        img = nvbox.create(None, cluster_size=CS)
        (_build_deep if tree == "deep" else _build_small)(img)
    assert check_image(img).verdict == "clean"
    return bytes(img.dev.inner.data)


def open_key(tree: str):
    return KEYS["K1"] if tree == "enc" else None


# -- the logical state ----------------------------------------------------------------------

def logical(img, tree: str):
    """Everything a user can read: blobs, snapshots (name, metadata, blobs) and,
    encrypted, which test keys open the image.  Hashable."""
    blobs = tuple((n, img[n]) for n in img.names())
    snaps = []
    for info in img.snapshots.list():
        view = img.snapshots.view(info.name)
        snaps.append((info.name, info.metadata, tuple((n, view.read(n)) for n in view.names())))
    keys = ()
    if tree == "enc":
        keys = tuple(k for k, key in sorted(KEYS.items()) if img.key_slots.find(key) is not None)
    return blobs, tuple(snaps), keys


def describe(state) -> str:
    blobs, snaps, keys = state
    b = ", ".join(f"{n}:{len(d)}B/{hashlib.sha1(d).hexdigest()[:6]}" for n, d in blobs)
    s = "; ".join(f"{n}({len(bl)} blobs)" for n, _m, bl in snaps)
    return f"blobs[{b}] snaps[{s}] keys{list(keys)}"


# -- operations -----------------------------------------------------------------------------
# Each picks its target from the image it is given, so any sequence is valid;
# an operation with nothing to act on does nothing (no commit).

def _target(img):
    return "b" if "b" in img else next(iter(img.names()), None)


def op_put(img, n):
    img[f"new{n}"] = pattern(f"new{n}", 1300)


def op_put_inline(img, n):
    img["a"] = f"inline-{n}".encode()


def op_overwrite(img, n):
    img["c"] = pattern(f"c-over{n}", 1100)


def op_write(img, n):  # partial write inside one or two clusters of a mapped blob
    t = _target(img)
    if t is None:
        img["b"] = pattern(f"b{n}", 1500)
        return
    img.write(t, 700, pattern(f"w{n}", 200))


def op_extend(img, n):  # write past the end: new clusters, deeper map maybe
    t = _target(img) or "b"
    size = img.stat(t).size if t in img else 0
    img.write(t, max(size - 100, 0), pattern(f"x{n}", 1200))


def op_truncate(img, n):
    t = _target(img)
    if t is not None:
        img.truncate(t, 300 if img.stat(t).size > 300 else 2000)


def op_truncate_inline(img, n):
    t = _target(img)
    if t is not None:
        img.truncate(t, 10)


def op_delete(img, n):
    t = "c" if "c" in img else _target(img)
    if t is not None:
        del img[t]


def op_txn(img, n):
    with img.transaction():
        img[f"t{n}"] = pattern(f"t{n}", 900)
        if "a" in img:
            del img["a"]
        t = _target(img)
        if t is not None:
            img.write(t, 10, pattern(f"tw{n}", 600))


def op_snap_create(img, n):
    img.snapshots.create(f"snap{n}", f"m{n}".encode())


def op_snap_revert(img, n):
    names = [s.name for s in img.snapshots.list()]
    if names:
        img.snapshots.revert(names[0])


def op_snap_delete(img, n):
    names = [s.name for s in img.snapshots.list()]
    if names:
        img.snapshots.delete(names[-1])


def op_compact(img, n):
    compact_image(img)


def op_key_add(img, n):
    img.key_slots.add(KEYS["K3"])


def op_key_remove(img, n):
    used = [s["index"] for s in img.key_slots.list()]
    if len(used) > 1:
        img.key_slots.remove(used[-1])


OPS = {
    "put": op_put, "put_inline": op_put_inline, "overwrite": op_overwrite, "write": op_write,
    "extend": op_extend, "truncate": op_truncate, "truncate_inline": op_truncate_inline,
    "delete": op_delete, "txn": op_txn, "snap_create": op_snap_create, "snap_revert": op_snap_revert,
    "snap_delete": op_snap_delete, "compact": op_compact, "key_add": op_key_add, "key_remove": op_key_remove,
}
PLAIN_OPS = [k for k in OPS if not k.startswith("key_")]
ENC_OPS = list(OPS)
# The B3 vocabulary for sequences: one of each kind of commit.
VOCAB = ["put", "write", "truncate", "delete", "txn", "snap_create", "snap_revert", "snap_delete", "compact"]
ENC_VOCAB = ["put", "write", "delete", "snap_create", "snap_revert", "key_add", "key_remove"]


# -- the checker ----------------------------------------------------------------------------

@dataclass
class Totals:
    workloads: int = 0
    states: int = 0
    distinct: int = 0
    torn: int = 0
    complete: int = 0
    equal_old: int = 0
    seconds: float = 0.0
    findings: list = field(default_factory=list)

    def add(self, other: "Totals") -> None:
        for f in ("workloads", "states", "distinct", "torn", "complete", "equal_old", "seconds"):
            setattr(self, f, getattr(self, f) + getattr(other, f))
        self.findings += other.findings


TOTALS = Totals()


class CrashFinding(AssertionError):
    pass


def digest(state) -> bytes:
    """A logical state's fingerprint (states hold whole blobs: keep them small)."""
    return hashlib.blake2b(repr(state).encode(), digest_size=16).digest()


def _read_image(raw: bytes, tree: str):
    """(logical state digest, verdict, problems, description) of crash image
    ``raw``; raises NvboxError if it does not open or read."""
    img = nvbox.open(raw, "r", key=open_key(tree))
    state = logical(img, tree)
    res = check_image(img)
    # A slot write torn into garbage is reported as slot.damaged (R-check-3): the trace of the
    # crash itself, which the image's trees do not share (test_damaged_slot.py tests the report).
    res.corruptions = [p for p in res.corruptions if p["code"] != "slot.damaged"]
    problems = (res.corruptions + res.refcount_errors)[:3] + res.leaks[:3]
    return digest(state), res.verdict, problems, describe(state)


def judge(states: list, marks: list, after_flushes: int, complete: bool, got) -> str | None:
    """Why a crash image that read as ``got`` is wrong, or None.

    ``states[i]`` is the digest of the logical state after i operations, ``marks[i]`` the
    flushes when operation i returned.  After f flushes, the operations with
    mark <= f are durable; the next one may or may not have landed.
    """
    state, verdict, problems, desc = got
    done = sum(1 for m in marks if m <= after_flushes)   # operations durably finished
    allowed = [states[-1]] if complete else states[done:done + 2]
    if state is None:
        return verdict
    if state not in allowed:
        which = [i for i, s in enumerate(states) if s == state]
        exp = f"after op {len(states) - 1}" if complete else \
            f"after op {done}" + (f" or {done + 1}" if len(allowed) > 1 else "")
        return (f"logical state is {'after op %s' % which if which else 'none of the workload states'}; "
                f"expected {exp} ({desc})")
    if verdict != "clean":
        return f"check verdict {verdict}: {problems}"
    return None


def run_workload(tree: str, seq: tuple, *, max_exhaustive: int = 10, samples: int = 64, seed: int = 0,
                 raise_first: bool = True) -> Totals:
    """Run ``seq`` (op names) on base image ``tree``; check every crash state."""
    t0 = time.perf_counter()
    rec = RecordingDevice(MemoryDevice(base_image(tree)))
    img = nvbox.open(rec, "rw", key=open_key(tree))
    states = [digest(logical(img, tree))]    # states[i]: after the first i operations
    marks = []                       # flushes when operation i returned
    for i, name in enumerate(seq):
        OPS[name](img, i)
        marks.append(rec.flushes)
        states.append(digest(logical(img, tree)))
    final = bytes(rec.inner.data)
    out = Totals(workloads=1)
    cache: dict = {}
    for st in crash_states(rec.initial, rec.log, max_exhaustive=max_exhaustive, samples=samples, seed=seed):
        out.states += 1
        out.torn += st.kind == "torn"
        out.complete += st.complete
        out.equal_old += st.image == rec.initial
        h = hashlib.blake2b(st.image, digest_size=16).digest()
        got = cache.get(h)
        if got is None:
            out.distinct += 1
            try:
                got = _read_image(st.image, tree)
            except NvboxError as exc:
                got = (None, f"open/read failed: {exc.code}: {exc}", [], "")
            cache[h] = got
        why = judge(states, marks, st.after_flushes, st.complete, got)
        if why:
            msg = (f"{tree} {'+'.join(seq)}: crash state [{st.kind}] {st.description} "
                   f"(size {len(st.image)}, final {len(final)}): {why}")
            out.findings.append(msg)
            if raise_first:
                out.seconds = time.perf_counter() - t0
                TOTALS.add(out)
                raise CrashFinding(msg)
    out.seconds = time.perf_counter() - t0
    TOTALS.add(out)
    return out


def count_workload(tree: str, seq: tuple, **kw) -> int:
    """Crash states of a workload without checking them (for the full-mode plan)."""
    rec = RecordingDevice(MemoryDevice(base_image(tree)))
    img = nvbox.open(rec, "rw", key=open_key(tree))
    for i, name in enumerate(seq):
        OPS[name](img, i)
    return count_crash_states(rec.log, **kw)


# -- workload plans -------------------------------------------------------------------------

def ci_plan() -> list[tuple[str, tuple]]:
    """The workloads of the CI run (about 40k crash states, under 2 minutes)."""
    rng = random.Random("nvbox-crash-ci")
    pairs = list(itertools.product(VOCAB, repeat=2))
    triples = list(itertools.product(VOCAB, repeat=3))
    enc_pairs = list(itertools.product(ENC_VOCAB, repeat=2))
    enc_triples = list(itertools.product(ENC_VOCAB, repeat=3))
    plan = [(tree, (op,)) for tree in ("small", "deep") for op in PLAIN_OPS]
    plan += [("enc", (op,)) for op in ENC_OPS]
    plan += [("small", pair) for pair in pairs]
    plan += [("small", t) for t in rng.sample(triples, 200)]
    plan += [("deep", p) for p in rng.sample(pairs, 12)]
    plan += [("deep", t) for t in rng.sample(triples, 6)]
    plan += [("enc", p) for p in enc_pairs]
    plan += [("enc", t) for t in rng.sample(enc_triples, 30)]
    return plan


def full_plan() -> list[tuple[str, tuple, dict]]:
    """Every single op, pair and triple on every tree, and every sequence of
    four on the small tree.  The small and encrypted trees (about 1 ms a state)
    get exhaustive epochs up to 12 writes and 256 sampled subsets beyond; the
    multi-level tree (about 9 ms a state) keeps the CI settings."""
    plan = []
    for tree, ops, vocab in (("small", PLAIN_OPS, VOCAB), ("enc", ENC_OPS, ENC_VOCAB), ("deep", PLAIN_OPS, VOCAB)):
        seqs = [(op,) for op in ops] + list(itertools.product(vocab, repeat=2)) \
            + list(itertools.product(vocab, repeat=3))
        if tree == "small":
            seqs += list(itertools.product(vocab, repeat=4))
        kw = {"max_exhaustive": 10, "samples": 64} if tree == "deep" else {"max_exhaustive": 12, "samples": 256}
        plan += [(tree, tuple(seq), kw) for seq in seqs]
    return plan


# -- known library bugs ---------------------------------------------------------------------
# (tree, sequence) -> reason; the test is xfail(strict=True) so a fix shows.
KNOWN_BUGS: dict = {}


def _param(tree, seq):
    reason = KNOWN_BUGS.get((tree, seq))
    marks = [pytest.mark.xfail(strict=True, reason=reason, raises=CrashFinding)] if reason else []
    return pytest.param(tree, seq, id=f"{tree}-{'+'.join(seq)}", marks=marks)


@pytest.mark.parametrize("tree,seq", [_param(t, s) for t, s in ci_plan()])
def test_crash_states(tree, seq):
    out = run_workload(tree, seq)
    assert out.states >= 2 and out.complete == 1


def test_base_images_have_the_shapes_we_want():
    small = nvbox.open(base_image("small"))
    deep = nvbox.open(base_image("deep"))
    assert small.cluster_size == CS and deep.cluster_size == CS
    assert deep.slot.dir_depth >= 2 and deep.slot.refcount_depth >= 2 and deep.stat("deep").depth >= 2
    enc = nvbox.open(base_image("enc"), key=KEYS["K2"])
    assert enc.encrypted and len(enc.key_slots.list()) == 2


def test_every_op_commits_and_changes_something():
    """A workload whose op did nothing would prove nothing: each op type changes
    the logical state (or, compact, the bytes) of its base image."""
    for tree, ops in (("small", PLAIN_OPS), ("deep", PLAIN_OPS), ("enc", ENC_OPS)):
        for name in ops:
            rec = RecordingDevice(MemoryDevice(base_image(tree)))
            img = nvbox.open(rec, "rw", key=open_key(tree))
            before = logical(img, tree)
            OPS[name](img, 0)
            assert rec.flushes >= 2, (tree, name)
            if name != "compact":
                assert logical(img, tree) != before, (tree, name)


def test_checker_has_teeth():
    """The judge rejects a rolled-back commit, a state from two operations
    ahead, an image that did not open, and a leak."""
    s0, s1, s2 = [digest((((f"x{i}", b"d"),), (), ())) for i in range(3)]
    states, marks = [s0, s1, s2], [2, 4]
    ok = lambda st: (st, "clean", [], "")  # noqa: E731
    assert judge(states, marks, 0, False, ok(s0)) is None
    assert judge(states, marks, 1, False, ok(s1)) is None        # op 0's slot landed before its flush
    assert judge(states, marks, 2, False, ok(s0)) is not None    # op 0 returned: rolled back
    assert judge(states, marks, 1, False, ok(s2)) is not None    # op 1 cannot have landed yet
    assert judge(states, marks, 4, True, ok(s1)) is not None     # complete but not the final state
    assert judge(states, marks, 0, False, (None, "open failed", [], "")) is not None
    assert "leaks" in judge(states, marks, 0, False, (s0, "leaks", [{"cluster": 9}], ""))
    # And a real leak is seen by the checker the crash test runs.
    w = nvbox.open(MemoryDevice(base_image("small")), "rw")
    last = w.slot.image_clusters - 1
    w.store.set_count(last, w.store.count(last) + 1)
    w.txn.mark_changed()
    w._commit()
    raw = bytes(w.dev.inner.data)
    assert _read_image(raw, "small")[1] == "leaks"
    assert _read_image(raw, "small")[0] == digest(logical(nvbox.open(base_image("small")), "small"))


def test_ci_plan_explores_at_least_10000_crash_states():
    """The CI target: test_crash_states together check >= 10,000 crash states
    (counted without checking them, as crash_full.py plans the full run)."""
    assert sum(count_workload(tree, seq) for tree, seq in ci_plan()) >= 10_000


def summary() -> list[str]:
    """This run's totals, for the report at the end of the test session (conftest.py)."""
    t = TOTALS
    if not t.workloads:
        return []
    return [f"workloads {t.workloads}, crash states {t.states:,} (distinct images {t.distinct:,}, "
            f"torn {t.torn:,}), {t.seconds:.1f} s, findings {len(t.findings)}"]
