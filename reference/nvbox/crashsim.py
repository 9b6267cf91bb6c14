"""Crash simulation and fault injection at the block-device interface.

Theory of operation (research notes, cow_crash_crypto.md section 3.5)
--------------------------------------------------------------------
``RecordingDevice`` forwards every call to an in-memory device and keeps an
ordered log of the calls that change state: ``write``, ``truncate`` and
``flush``.  A flush is a full barrier, so the log splits into *epochs*: epoch k
holds the writes between flush k-1 and flush k (the last epoch holds the
writes after the last flush and may be empty).

A power cut while epoch k is in flight may leave, on the medium:

1. every op of the epochs before k (barriers are honoured);
2. any *subset* of epoch k's ops, because the device and the page cache may
   reorder and drop writes freely until the next barrier.  The empty subset is
   the durable state after flush k; there are 2**w subsets for w ops, all of
   them enumerated when w <= ``max_exhaustive``, otherwise a seeded sample;
3. a *torn* write: the write in flight lands only up to some 512-byte sector
   boundary, and its remaining sectors hold the old data, zeros or garbage
   (sector-prefix model; SQLite's crash VFS "trashes" sectors the same way).
   The writes issued before it in the epoch are applied, the ones after are not
   (a crash in the middle of write i of an in-order replay).

Truncates (and extends) are ops like writes: applied or not, never torn.

The full subset of epoch k is the empty subset of epoch k+1, so each epoch
yields its proper subsets and the state with every op of the log applied comes
once, last, marked ``complete``.  A log of w writes and one flush therefore
gives exactly 2**w subset states (plus the torn ones).

``FaultyDevice`` is the other half of issue 7: it makes the Nth write or flush
(or every write after the Nth) fail with ``io.error`` or ``space.exhausted``,
the way a disk or a full file system would, and can be disarmed for a retry.

No pytest here: the real image tests (tests/test_crash.py) and the simulator's
own tests (tests/test_crashsim.py) both build on this module.
"""

from __future__ import annotations

import errno
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, NamedTuple

from .blockdev import BlockDevice, MemoryDevice
from .errors import raise_code

__all__ = [
    "Op", "RecordingDevice", "CrashState", "crash_states", "count_crash_states",
    "FaultyDevice", "CrashStats", "CrashCheckError", "run_crash_workload", "SECTOR",
]

SECTOR = 512  # the unit a disk writes atomically (the torn-write granularity)
FILLS = ("old", "zeros", "garbage")  # what the unwritten sectors of a torn write hold


class Op(NamedTuple):
    """One logged call.  ``kind`` is "write", "truncate" or "flush".

    For a write, ``offset``/``data`` are its arguments; for a truncate,
    ``offset`` is the new length.  Plain tuples such as ``("write", 0, b"x")``,
    ``("truncate", 4096)`` or ``("flush",)`` are accepted wherever a log is.
    """

    kind: str
    offset: int = 0
    data: bytes = b""


class RecordingDevice(BlockDevice):
    """Forwards to a ``MemoryDevice`` and logs every state-changing call.

    Args:
        inner: the device holding the initial image (or the image's bytes).

    ``initial`` is a snapshot of the image when recording started and ``log``
    the list of ``Op`` since; ``crash_states()`` enumerates from both.
    """

    def __init__(self, inner: MemoryDevice | bytes = b""):
        self.inner = inner if isinstance(inner, MemoryDevice) else MemoryDevice(inner)
        self.initial = bytes(self.inner.data)
        self.log: list[Op] = []

    @property
    def growable(self) -> bool:  # type: ignore[override]
        return self.inner.growable

    @property
    def flushes(self) -> int:
        """Flushes logged so far: a test notes it at each commit boundary and
        compares it with ``CrashState.after_flushes``."""
        return sum(1 for op in self.log if op.kind == "flush")

    def read(self, offset: int, length: int) -> bytes:
        return self.inner.read(offset, length)

    def write(self, offset: int, data: bytes) -> None:
        # Forward first: a write the device refused never reached the medium.
        self.inner.write(offset, data)
        self.log.append(Op("write", offset, bytes(data)))  # copy: callers reuse buffers

    def flush(self) -> None:
        self.inner.flush()
        self.log.append(Op("flush"))

    def size(self) -> int:
        return self.inner.size()

    def truncate(self, length: int) -> None:
        self.inner.truncate(length)
        if self.inner.growable:  # a fixed device ignores truncate: nothing to replay
            self.log.append(Op("truncate", length))

    def crash_states(self, **kwargs) -> Iterator["CrashState"]:
        return crash_states(self.initial, self.log, **kwargs)


@dataclass(frozen=True)
class CrashState:
    """One image a crash may leave behind.

    Attributes:
        image: the bytes on the medium after the crash.
        description: which ops were applied, for failure messages.
        after_flushes: flushes that had returned before the crash.
        complete: every op of the log is applied (the state the workload left;
            when the log ends with a flush, the durable state after it).
        kind: "subset" (some ops of the epoch applied), "torn" or "complete".
    """

    image: bytes
    description: str
    after_flushes: int
    complete: bool
    kind: str = "subset"


def _apply(img: bytearray, op: Op) -> None:
    if op.kind == "write":
        end = op.offset + len(op.data)
        if end > len(img):
            img.extend(bytes(end - len(img)))
        img[op.offset:end] = op.data
    elif op.kind == "truncate":
        if op.offset < len(img):
            del img[op.offset:]
        else:
            img.extend(bytes(op.offset - len(img)))


def _epochs(log: Iterable) -> list[list[Op]]:
    """Split the log at flushes; the last list holds the ops after the last flush."""
    epochs: list[list[Op]] = [[]]
    for op in log:
        op = Op(*op)
        if op.kind == "flush":
            epochs.append([])
        elif op.kind in ("write", "truncate"):
            epochs[-1].append(op)
        else:
            raise ValueError(f"unknown op {op.kind!r}")
    return epochs


def _subset_masks(w: int, k: int, max_exhaustive: int, samples: int, seed: int) -> list[int]:
    """Bit masks of the proper subsets of an epoch of w ops to try (bit j = op j applied)."""
    full = (1 << w) - 1
    if w <= max_exhaustive:
        return list(range(full))  # 0 .. 2**w - 2: every subset but the full one
    # Sample: always the durable state (empty subset), then distinct random
    # subsets.  Each sample draws its own inclusion probability so that nearly
    # empty and nearly full subsets (where ordering bugs hide) come up too.
    rng = random.Random(f"subsets:{seed}:{k}")
    wanted = min(samples, full)
    masks, seen = [0], {0, full}
    while len(masks) < wanted:
        p = rng.random()
        m = sum(1 << j for j in range(w) if rng.random() < p)
        if m not in seen:
            seen.add(m)
            masks.append(m)
    return masks


def _torn_cuts(op: Op, sector: int) -> list[tuple[int, str]]:
    """(cut, fill) pairs for a torn write: new bytes land in [offset, cut).

    Cuts are the absolute sector boundaries strictly inside the write, plus the
    write's start for zeros/garbage (nothing new landed but the sectors were
    trashed; an "old" fill there would just repeat the durable state).
    """
    start, end = op.offset, op.offset + len(op.data)
    first = (start // sector + 1) * sector
    cuts = [(start, f) for f in FILLS[1:]]
    cuts += [(c, f) for c in range(first, end, sector) for f in FILLS]
    return cuts


def _epoch_steps(ops: list[Op], k: int, max_exhaustive: int, samples: int, seed: int,
                 torn: bool, sector: int):
    """The crash states of epoch k as steps, without images: ("subset", mask)
    or ("torn", i, cut, fill).  Shared by ``crash_states`` and
    ``count_crash_states`` so the two always agree."""
    for mask in _subset_masks(len(ops), k, max_exhaustive, samples, seed):
        yield ("subset", mask)
    if torn:
        for i, op in enumerate(ops):
            if op.kind == "write" and op.data:
                for cut, fill in _torn_cuts(op, sector):
                    yield ("torn", i, cut, fill)


def crash_states(initial: bytes, log: Iterable, *, max_exhaustive: int = 10, samples: int = 64,
                 seed: int = 0, torn: bool = True, sector: int = SECTOR) -> Iterator[CrashState]:
    """Every image a crash during ``log`` may leave, starting from ``initial``.

    Args:
        initial: the image before the first op.
        log: ``Op`` (or plain tuples) in issue order, as ``RecordingDevice.log``.
        max_exhaustive: epochs with at most this many ops get all 2**w subsets.
        samples: subsets tried (the empty one included) in a larger epoch.
        seed: seeds subset sampling and garbage bytes; same seed, same states.
        torn: also yield torn-write states.
        sector: torn-write granularity in bytes.

    Yields:
        ``CrashState``; the last one is the ``complete`` state.
    """
    epochs = _epochs(log)
    base = bytearray(initial)  # the durable state after the k flushes so far
    for k, ops in enumerate(epochs):
        if k:
            for op in epochs[k - 1]:  # flush k returned: epoch k-1 is durable
                _apply(base, op)
        prefix, prefix_len = bytearray(base), 0  # base + ops[:prefix_len], for torn writes
        for step in _epoch_steps(ops, k, max_exhaustive, samples, seed, torn, sector):
            if step[0] == "subset":
                yield _subset_state(base, ops, k, step[1])
                continue
            _, i, cut, fill = step
            # Torn variants of write i all start from base + ops[:i]; steps come
            # in order of i, so the prefix grows incrementally.
            while prefix_len < i:
                _apply(prefix, ops[prefix_len])
                prefix_len += 1
            yield _torn_state(prefix, ops[i], k, i, cut, fill, seed)
    # Last, the complete state: the final epoch applied on top of the last base.
    for op in epochs[-1]:
        _apply(base, op)
    n = len(epochs) - 1
    yield CrashState(bytes(base), f"complete: every op applied ({n} flushes)", n, True, "complete")


def _subset_state(base: bytearray, ops: list[Op], k: int, mask: int) -> CrashState:
    img = bytearray(base)
    for j, op in enumerate(ops):
        if mask >> j & 1:
            _apply(img, op)
    applied = [j for j in range(len(ops)) if mask >> j & 1]
    which = ",".join(map(str, applied)) if applied else "none"
    desc = f"epoch {k} (after {k} flushes): {len(applied)}/{len(ops)} ops applied [{which}]"
    return CrashState(bytes(img), desc, k, False, "subset")


def _torn_state(prefix: bytearray, op: Op, k: int, i: int, cut: int, fill: str, seed: int) -> CrashState:
    img = bytearray(prefix)
    end = op.offset + len(op.data)
    if end > len(img):  # an extending write may grow the file before its data lands
        img.extend(bytes(end - len(img)))
    landed = cut - op.offset
    img[op.offset:cut] = op.data[:landed]
    if fill == "zeros":
        img[cut:end] = bytes(end - cut)
    elif fill == "garbage":
        # Seeded per write and cut: the same crash state always holds the same garbage.
        img[cut:end] = random.Random(f"garbage:{seed}:{k}:{i}:{cut}").randbytes(end - cut)
    # "old": the prefix already holds the old bytes (zeros past the old end).
    desc = (f"epoch {k} (after {k} flushes): first {i} ops applied, write {i} "
            f"({len(op.data)} bytes at {op.offset}) torn after {landed} bytes, rest {fill}")
    return CrashState(bytes(img), desc, k, False, "torn")


def count_crash_states(log: Iterable, *, max_exhaustive: int = 10, samples: int = 64, seed: int = 0,
                       torn: bool = True, sector: int = SECTOR) -> int:
    """How many states ``crash_states`` yields for ``log``, without building images."""
    epochs = _epochs(log)
    return 1 + sum(1 for k, ops in enumerate(epochs)
                   for _ in _epoch_steps(ops, k, max_exhaustive, samples, seed, torn, sector))


# -- fault injection ---------------------------------------------------------

_ERRNO = {"io.error": errno.EIO, "space.exhausted": errno.ENOSPC}


class FaultyDevice(BlockDevice):
    """Forwards to ``inner`` but fails chosen calls, as a sick or full disk would.

    Args:
        inner: the device to wrap.
        fail_write: fail the Nth write (1-based) and no other.
        fail_writes_after: fail every write after the first N (a disk that
            fills up: N writes succeed, then all fail).
        fail_flush: fail the Nth flush (1-based).
        fail_read: fail the Nth read (1-based).
        error: "io.error" (EIO) or "space.exhausted" (ENOSPC).

    A failed call never reaches ``inner``.  The errors are the nvbox classes
    (raised through ``raise_code``), with ``details["errno"]`` set.  ``disarm()``
    stops all failures, so a retry of the same call succeeds.  Counters count
    attempts, failed ones included.
    """

    def __init__(self, inner: BlockDevice, *, fail_write: int | None = None,
                 fail_writes_after: int | None = None, fail_flush: int | None = None,
                 fail_read: int | None = None, error: str = "io.error"):
        if error not in _ERRNO:
            raise ValueError(f"error must be one of {sorted(_ERRNO)}")
        self.inner = inner
        self.fail_write, self.fail_writes_after = fail_write, fail_writes_after
        self.fail_flush, self.fail_read = fail_flush, fail_read
        self.error = error
        self.armed = True
        self.writes = self.flushes = self.reads = 0
        self.failures = 0  # calls failed so far

    @property
    def growable(self) -> bool:  # type: ignore[override]
        return self.inner.growable

    def disarm(self) -> None:
        self.armed = False

    def _fail(self, what: str) -> None:
        self.failures += 1
        raise_code(self.error, f"injected fault: {what}", errno=_ERRNO[self.error])

    def read(self, offset: int, length: int) -> bytes:
        self.reads += 1
        if self.armed and self.reads == self.fail_read:
            self._fail(f"read #{self.reads} at {offset}")
        return self.inner.read(offset, length)

    def write(self, offset: int, data: bytes) -> None:
        self.writes += 1
        if self.armed and (self.writes == self.fail_write or
                           (self.fail_writes_after is not None and self.writes > self.fail_writes_after)):
            self._fail(f"write #{self.writes} at {offset}")
        self.inner.write(offset, data)

    def flush(self) -> None:
        self.flushes += 1
        if self.armed and self.flushes == self.fail_flush:
            self._fail(f"flush #{self.flushes}")
        self.inner.flush()

    def size(self) -> int:
        return self.inner.size()

    def truncate(self, length: int) -> None:
        self.inner.truncate(length)

    def close(self) -> None:
        self.inner.close()


# -- the workload driver -----------------------------------------------------

@dataclass
class CrashStats:
    """What ``run_crash_workload`` explored.

    ``equal_old``/``equal_new`` count states byte-identical to the image before
    and after the operation; the rest are mixed (new clusters written but not
    committed, a torn slot...), which is where the checker earns its keep.
    """

    states: int = 0
    equal_old: int = 0
    equal_new: int = 0
    ops: int = 0
    flushes: int = 0
    result: Any = None  # what operation returned
    error: BaseException | None = None  # what it raised, when allow_error


class CrashCheckError(AssertionError):
    """``check_state`` rejected a crash state; ``state`` is the culprit."""

    def __init__(self, state: CrashState, cause: BaseException):
        self.state = state
        super().__init__(f"crash state rejected: {state.description}: {type(cause).__name__}: {cause}")


def run_crash_workload(setup: Callable[[BlockDevice], Any] | None,
                       operation: Callable[[RecordingDevice], Any],
                       check_state: Callable[[CrashState], Any], *,
                       capacity: int | None = None, allow_error: bool = False,
                       **crash_kwargs) -> CrashStats:
    """Run ``operation`` on a recorded device and check every crash state.

    Args:
        setup: builds the initial image on a fresh ``MemoryDevice`` (None: empty).
        operation: the workload under test, given the ``RecordingDevice``.
        check_state: called with each ``CrashState``; raises if it is wrong.
        capacity: make the memory device fixed-size.
        allow_error: an exception from ``operation`` is kept in ``error`` and
            the ops logged before it are still explored (a failed commit must
            also leave a sane image).  Otherwise it propagates.
        crash_kwargs: passed to ``crash_states`` (max_exhaustive, samples, seed, torn, sector).

    Returns:
        ``CrashStats``.

    Raises:
        CrashCheckError: the first state ``check_state`` rejected.
    """
    dev = MemoryDevice(capacity=capacity)
    if setup is not None:
        setup(dev)
    # A fresh device from a snapshot: nothing setup left behind (a handle, a
    # cache) can touch the recorded one.
    rec = RecordingDevice(MemoryDevice(bytes(dev.data), capacity=capacity))
    stats = CrashStats()
    try:
        stats.result = operation(rec)
    except Exception as exc:
        if not allow_error:
            raise
        stats.error = exc
    old, new = rec.initial, bytes(rec.inner.data)
    stats.ops, stats.flushes = len(rec.log), rec.flushes
    for state in crash_states(old, rec.log, **crash_kwargs):
        stats.states += 1
        stats.equal_old += state.image == old
        stats.equal_new += state.image == new
        try:
            check_state(state)
        except Exception as exc:
            raise CrashCheckError(state, exc) from exc
    return stats
