"""Fault injection (issue 7; spec R-commit-4, R-commit-5, R-alloc-3): storage that fails.

For every operation type of the crash tests, on the small, multi-level and
encrypted base images, a ``nvbox.crashsim.FaultyDevice`` makes one call fail
with EIO (``io.error``) or ENOSPC (``space.exhausted``) at each position the
operation reaches:

- the Nth write, for every N the operation issues;
- the Nth flush, for every N;
- every write after the first N (a disk that fills up), for every N.

Each time:

1. the operation raises an ``NvboxError`` whose code is exactly the injected
   one (nothing else, nothing wrapped);
2. the same handle reads the last committed state, all of it, and so does the
   image reopened from the device's bytes, which ``check`` finds clean; a
   failure of a commit's *last* flush (after the slot was written) may leave
   the new commit or the old one, and handle and device must agree;
3. every crash state of what the failed operation did write reads as that
   same state (a failed commit never leaves a torn or mixed image);
4. after ``disarm()`` a retry of the operation on the same handle succeeds and
   gives the state a fault-free run gives.

Plus a real fixed-capacity image that fills up (R-alloc-3), and read faults.
"""

from __future__ import annotations

import functools

import pytest

import nvbox
from nvbox.blockdev import MemoryDevice
from nvbox.check import check_image
from nvbox.crashsim import FaultyDevice, RecordingDevice, crash_states
from nvbox.errors import NvboxError

from test_crash import ENC_OPS, OPS, PLAIN_OPS, base_image, logical, open_key, pattern

ERRORS = ("io.error", "space.exhausted")
TOTALS = {"faults": 0, "crash_states": 0, "ambiguous_final_flush": 0}

# (tree, op) -> reason, for library bugs (xfail strict).
KNOWN_BUGS: dict = {}


@functools.lru_cache(maxsize=None)
def profile(tree: str, op: str):
    """(writes, flushes, logical before, logical after) of a fault-free run."""
    fd = FaultyDevice(MemoryDevice(base_image(tree)))
    img = nvbox.open(fd, "rw", key=open_key(tree))
    before = logical(img, tree)
    w0, f0 = fd.writes, fd.flushes
    OPS[op](img, 0)
    return fd.writes - w0, fd.flushes - f0, before, logical(img, tree)


def faults_for(tree: str, op: str):
    writes, flushes, _, _ = profile(tree, op)
    for error in ERRORS:
        for n in range(1, writes + 1):
            yield error, {"fail_write": n}
        for n in range(1, flushes + 1):
            yield error, {"fail_flush": n}
        for n in range(0, writes):
            yield error, {"fail_writes_after": n}


def inject(tree: str, op: str, error: str, where: dict) -> str:
    """Run one fault; assert everything; return 'old' or 'new' (what it left)."""
    writes, flushes, before, after = profile(tree, op)
    rec = RecordingDevice(MemoryDevice(base_image(tree)))
    fd = FaultyDevice(rec, error=error, **where)
    img = nvbox.open(fd, "rw", key=open_key(tree))
    w0, f0 = fd.writes, fd.flushes
    # Positions count from the operation's first call, not from opening.
    for k in ("fail_write", "fail_writes_after"):
        if getattr(fd, k) is not None:
            setattr(fd, k, getattr(fd, k) + w0)
    if fd.fail_flush is not None:
        fd.fail_flush += f0
    TOTALS["faults"] += 1
    with pytest.raises(NvboxError) as info:
        OPS[op](img, 0)
    assert info.value.code == error, f"{where}: raised {info.value.code}: {info.value}"
    assert fd.failures >= 1
    last_flush = where.get("fail_flush") == flushes
    # The handle and the device agree, on a committed state.
    on_device = nvbox.open(bytes(rec.inner.data), "r", key=open_key(tree))
    dev_state = logical(on_device, tree)
    handle_state = logical(img, tree)
    assert handle_state == dev_state, f"{where}: the handle and the device disagree"
    allowed = [before, after] if last_flush or op == "compact" else [before]
    assert dev_state in allowed, f"{where}: committed data lost or a partial commit visible"
    if last_flush and dev_state == after and after != before:
        TOTALS["ambiguous_final_flush"] += 1
    res = check_image(on_device)
    assert res.verdict == "clean", f"{where}: check {res.verdict}: {res.corruptions[:3]} {res.leaks[:3]}"
    # What the failed operation did write: every crash state reads as a commit
    # (subsets and torn writes on the small trees; the durable cuts on 'deep').
    for st in crash_states(rec.initial, rec.log, torn=tree != "deep",
                           max_exhaustive=10 if tree != "deep" else 0, samples=8):
        TOTALS["crash_states"] += 1
        cs = nvbox.open(st.image, "r", key=open_key(tree))
        assert logical(cs, tree) in allowed, f"{where}: crash state {st.description}"
    # Retry after disarming: same handle.
    fd.disarm()
    left = "new" if dev_state == after and after != before else "old"
    if left == "old":
        OPS[op](img, 0)
        assert logical(img, tree) == after, f"{where}: the retry gave another state"
    img["retry-probe"] = b"probe"
    again = nvbox.open(bytes(rec.inner.data), "r", key=open_key(tree))
    assert again["retry-probe"] == b"probe" and logical(img, tree) == logical(again, tree)
    assert check_image(again).verdict == "clean"
    return left


def _cases(trees):
    for tree in trees:
        for op in (ENC_OPS if tree == "enc" else PLAIN_OPS):
            marks = [pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[(tree, op)])] if (tree, op) in KNOWN_BUGS else []
            yield pytest.param(tree, op, id=f"{tree}-{op}", marks=marks)


@pytest.mark.parametrize("tree,op", list(_cases(("small", "deep", "enc"))))
def test_fault_at_every_position(tree, op):
    writes, flushes, before, after = profile(tree, op)
    assert writes >= 1 and flushes >= 2
    left = [inject(tree, op, error, where) for error, where in faults_for(tree, op)]
    # A fault anywhere before the slot's flush leaves the old state.
    assert left.count("old") >= len(left) - 2 * len(ERRORS) * (2 if op == "compact" else 1)


def test_fixed_capacity_fills_up():
    """A real fixed image (R-alloc-3): puts until space.exhausted; every commit
    before it is intact, check is clean, deleting makes room and a retry works."""
    img = nvbox.create(MemoryDevice(capacity=64 * 1024), cluster_size=512, capacity=64 * 1024)
    committed = {}
    i = 0
    with pytest.raises(NvboxError) as info:
        while True:
            data = pattern(f"fill{i}", 1000 + 37 * i)
            img[f"f{i}"] = data
            committed[f"f{i}"] = data
            i += 1
    assert info.value.code == "space.exhausted" and len(committed) >= 10
    TOTALS["faults"] += 1
    for name in (img, nvbox.open(bytes(img.dev.inner.data))):
        assert {n: name[n] for n in name.names()} == committed
    assert check_image(img).verdict == "clean"
    del img["f0"], img["f1"], img["f2"]
    img["small"] = b"s" * 900
    assert img["small"] == b"s" * 900 and check_image(img).verdict == "clean"


@pytest.mark.parametrize("tree", ["small", "deep"])
def test_read_faults_never_corrupt(tree):
    """A read failing anywhere during an operation: io.error, or success; the
    device still holds a committed state afterwards."""
    _, _, before, after = profile(tree, "txn")
    n = 1
    while True:
        fd = FaultyDevice(MemoryDevice(base_image(tree)))
        img = nvbox.open(fd, "rw", key=open_key(tree))
        fd.fail_read = fd.reads + n
        TOTALS["faults"] += 1
        try:
            OPS["txn"](img, 0)
        except NvboxError as exc:
            assert exc.code == "io.error", exc
        if fd.failures == 0:
            break
        state = logical(nvbox.open(bytes(fd.inner.data), "r"), tree)
        assert state in (before, after)
        n += 1
    assert n > 1


def summary() -> list[str]:
    """This run's totals, for the report at the end of the test session (conftest.py)."""
    if not TOTALS["faults"]:
        return []
    return [f"faults injected {TOTALS['faults']:,}, crash states of failed operations "
            f"{TOTALS['crash_states']:,}, final-flush failures that left the new commit "
            f"{TOTALS['ambiguous_final_flush']}"]


def test_handle_poisoned_when_the_last_commit_cannot_be_read_back():
    """[R-commit-5] A commit fails, and so does re-reading the slots to undo it: the
    original failure comes out, the handle then refuses every call with
    ``image.poisoned`` (never a half-undone state), closing it still works, and
    the image reopens at its last commit."""
    from nvbox.blockdev import MemoryDevice
    from nvbox.crashsim import FaultyDevice

    class FailingAfterWrite(FaultyDevice):
        """Fails the first write, and every read after it."""
        def read(self, offset, length):
            if self.armed and self.failures:
                self._fail(f"read at {offset}")
            return self.inner.read(offset, length)

    mem = MemoryDevice()
    img = nvbox.create(mem, cluster_size=512)
    img["kept"] = b"k" * 700
    img.close()
    dev = FailingAfterWrite(mem, fail_write=1)
    img = nvbox.open(dev, "rw")
    with pytest.raises(NvboxError) as ei:
        img["new"] = b"n" * 700
    assert ei.value.code == "io.error" and "write" in ei.value.message
    for call in (lambda: img["kept"], lambda: img.put("x", b"1"), img.names):
        with pytest.raises(NvboxError) as ei:
            call()
        assert ei.value.code == "image.poisoned"
    img.close()
    again = nvbox.open(mem, "r")
    assert again.names() == ["kept"] and again["kept"] == b"k" * 700
