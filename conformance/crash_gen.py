"""Crash cases: images a power cut may leave during a small recorded workload.

Each workload runs through ``nvbox.crashsim.RecordingDevice``; ``crash_states``
enumerates the images on the medium at every flush boundary, every subset of the
writes in flight, and every write torn at a 512-byte sector boundary (the rest
old, zeros or garbage).  Distinct images are kept, a deterministic sample of at
most ``PER_CASE`` per workload (torn slot writes and epoch cuts first), and each
lists the logical states it may read as: before or after the operation.  The
check verdict of every crash image must be clean or leaks, never corrupt, except
where a slot write was torn into garbage: that slot is reported (R-check-3).
"""

from __future__ import annotations

import hashlib

import nvbox
from nvbox.blockdev import MemoryDevice
from nvbox.crashsim import RecordingDevice, crash_states

from conformance.builders import (build, deterministic, delete, model_ops, pattern, put, reference_check,
                                  reference_read, snap, truncate, txn, write, BUGS)
from nvbox import adapter as ref_adapter

PER_CASE = 8
CS = 512


def _pick(states, initial, final):
    """Distinct crash images, a deterministic spread over the kinds."""
    seen = {hashlib.sha256(initial).digest(), hashlib.sha256(final).digest()}
    groups = {"torn-slot": [], "torn": [], "subset": []}
    for s in states:
        h = hashlib.sha256(s.image).digest()
        if h in seen:
            continue
        seen.add(h)
        if s.kind == "torn":
            # a torn write of 512 bytes at a slot offset tears a slot
            groups["torn-slot" if " at 512)" in s.description or " at 1024)" in s.description else "torn"].append(s)
        elif s.kind == "subset":
            groups["subset"].append(s)
    out = []
    quota = {"torn-slot": 3, "subset": 3, "torn": PER_CASE}
    for k in ("torn-slot", "subset", "torn"):
        g = groups[k]
        n = min(quota[k], len(g), PER_CASE - len(out))
        if n <= 0:
            continue
        step = len(g) / n
        out += [g[int(i * step)] for i in range(n)]
    return out


def _has_damaged_slot(raw: bytes) -> bool:
    from nvbox.check import damaged_slots
    with nvbox.open(bytes(raw)) as img:
        return bool(damaged_slots(img))


def crash_case(c, area, name, description, spec, setup_ops, op_ops, cs=CS):
    raw, before = build(f"crash-{name}", setup_ops, cs)
    after = before.copy()
    model_ops(after, op_ops)
    with deterministic(f"crash-op-{name}"):
        rec = RecordingDevice(MemoryDevice(raw))
        img = nvbox.open(rec, "rw")
        ref_adapter.run_ops(img, op_ops, ".")
        img.close()
        final = bytes(rec.inner.data)
        states = list(crash_states(rec.initial, rec.log, max_exhaustive=6, samples=16, seed=1))
    picked = _pick(states, raw, final)
    images, blobs = [], []
    b_doc, a_doc = before.logical(), after.logical()
    for k, s in enumerate(picked):
        got, err = reference_read(s.image)
        verdict = reference_check(s.image)
        cid = f"crash/{area}/{name}"
        if got not in (b_doc, a_doc):
            BUGS.append((cid, f"crash-{k}.nvbox ({s.description}) reads as before or after", f"error {err}" if err else "other content"))
        # A slot write torn into garbage leaves a slot that is neither valid nor zeros:
        # check must report it (R-check-3), so that image's verdict is corrupt.
        allowed_check = ["corrupt"] if _has_damaged_slot(s.image) else ["clean", "leaks"]
        if verdict not in allowed_check:
            BUGS.append((cid, f"crash-{k}.nvbox ({s.description}) check {' or '.join(allowed_check)}", verdict))
        images.append({"image": f"crash-{k}.nvbox", "allowed": ["states/before.json", "states/after.json"],
                       "check": allowed_check, "note": s.description})
        blobs.append(s.image)
    c.crash(area, name, description, spec, images, {"__images__": blobs, "before": b_doc, "after": a_doc},
            notes=f"{len(states)} crash states enumerated (crashsim: max_exhaustive=6, samples=16, seed=1, torn at 512-byte "
                  f"sectors); {len(picked)} distinct ones kept.")


def crash_cases(c) -> None:
    S = ["R-commit-1", "R-commit-3", "R-slot-3", "R-cow-1", "R-alloc-2"]
    base = [put("a", pattern(20, "a")), put("b", pattern(1300, "b")), put("c", b"")]
    crash_case(c, "blob", "c_blob_put-new-inline", "Crash while putting a new inline blob", S, base, [put("new", b"inline!")])
    crash_case(c, "blob", "c_blob_put-new-clustered", "Crash while putting a new three-cluster blob", S, base,
               [put("new", pattern(1400, "n"))])
    crash_case(c, "blob", "c_blob_replace-clustered", "Crash while replacing a clustered blob", S + ["R-cow-3"], base,
               [put("b", pattern(1500, "b2"))])
    crash_case(c, "blob", "c_blob_delete", "Crash while deleting a clustered blob", S + ["R-cow-3"], base, [delete("b")])
    crash_case(c, "blob", "c_blob_partial-write", "Crash during a partial write inside a blob", S, base,
               [write("b", 600, pattern(100, "w"))])
    crash_case(c, "blob", "c_blob_truncate", "Crash while truncating a blob", S + ["R-map-3"], base, [truncate("b", 700)])
    crash_case(c, "transaction", "c_txn_three-ops", "Crash during a transaction of three changes", S, base,
               [txn(put("x", pattern(900, "x")), delete("a"), write("b", 0, b"T"))])
    crash_case(c, "snapshot", "c_snapshot_create", "Crash while creating a snapshot", S + ["R-snap-1"], base, [snap("s", b"m")])
    crash_case(c, "snapshot", "c_snapshot_first-write-after", "Crash during the first write after a snapshot (shared nodes copied)",
               S + ["R-cow-2"], base + [snap("s")], [put("b", pattern(1000, "b3"))])
    crash_case(c, "snapshot", "c_snapshot_delete", "Crash while deleting a snapshot", S + ["R-snap-3"],
               base + [snap("s"), put("b", b"small")], [{"op": "snapshot_delete", "name": "s"}])
    crash_case(c, "directory", "c_dir_split", "Crash during a put that splits a full directory leaf", S + ["R-dir-5"],
               [put(f"k{i:02d}", pattern(50, f"k{i}")) for i in range(7)], [put("k99", pattern(60, "k99"))])
    crash_case(c, "compact", "c_compact_pass", "Crash during a compaction pass", S + ["R-compact-1"],
               base + [put("d", pattern(2000, "d")), delete("b")], [{"op": "compact"}])
