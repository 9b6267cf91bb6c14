"""Tests of the crash simulator and the fault-injection device (nvbox.crashsim).

The simulator is tested on its own terms (state counts, barriers, torn writes)
and against a toy two-slot key/value store written here: the correct toy must
survive every crash state, and deliberately broken toys must be caught.
"""

from __future__ import annotations

import errno
import json
import struct
import zlib

import pytest

from nvbox.blockdev import MemoryDevice
from nvbox.crashsim import (CrashCheckError, FaultyDevice, Op, RecordingDevice, count_crash_states,
                            crash_states, run_crash_workload)
from nvbox.errors import error_class

IOFailureError = error_class("io.error")
SpaceExhaustedError = error_class("space.exhausted")


# -- a toy two-slot store ----------------------------------------------------
#
# Layout: commit slots at 512 and 1024 (one sector each, like nvbox), data from
# 4096 on, appended (never overwritten: copy-on-write).  A slot holds magic,
# generation, data offset, length and CRC, and its own CRC.  The valid slot
# with the highest generation wins.  A commit writes the data one sector per
# write (so an epoch has several writes), flushes, writes the other slot,
# flushes.  The switches break it on purpose.

SLOTS = (512, 1024)
DATA_START = 4096
SLOT_FMT = struct.Struct("<8sQQQI")
MAGIC = b"TOYSLOT1"


class ToyCorrupt(Exception):
    pass


def _read_slot(dev, off: int, slot_check: bool):
    raw = dev.read(off, SLOT_FMT.size + 4)
    if len(raw) < SLOT_FMT.size + 4:
        return None
    magic, gen, data_off, data_len, data_crc = SLOT_FMT.unpack_from(raw)
    if slot_check:
        if magic != MAGIC or zlib.crc32(raw[:SLOT_FMT.size]) != int.from_bytes(raw[-4:], "little"):
            return None
    elif gen == 0:  # the broken toy trusts any slot that is not all zeros
        return None
    return gen, data_off, data_len, data_crc


def toy_load(dev, slot_check: bool = True) -> tuple[int, dict]:
    """(generation, contents) of the newest valid slot; ToyCorrupt if unreadable."""
    slots = [s for s in (_read_slot(dev, off, slot_check) for off in SLOTS) if s]
    if not slots:
        raise ToyCorrupt("no valid slot")
    gen, data_off, data_len, data_crc = max(slots)
    data = dev.read(data_off, data_len)
    if len(data) != data_len or zlib.crc32(data) != data_crc:
        raise ToyCorrupt(f"generation {gen}: data checksum mismatch")
    return gen, json.loads(data)


def toy_commit(dev, kv: dict, *, flush_data: bool = True, slot_check: bool = True) -> None:
    try:
        gen = toy_load(dev, slot_check)[0]
    except ToyCorrupt:
        gen = 0  # a fresh device
    data = json.dumps(kv, sort_keys=True).encode()
    off = max(DATA_START, -(-dev.size() // 512) * 512)  # append after everything: COW
    padded = data + bytes(-len(data) % 512)
    for i in range(0, len(padded), 512):
        dev.write(off + i, padded[i:i + 512])
    if flush_data:  # the barrier the broken toy forgets
        dev.flush()
    slot = SLOT_FMT.pack(MAGIC, gen + 1, off, len(data), zlib.crc32(data))
    slot += zlib.crc32(slot).to_bytes(4, "little")
    dev.write(SLOTS[(gen + 1) % 2], slot)
    dev.flush()


OLD = {"a": "1" * 300}
NEW = {"a": "2" * 300, "b": "x" * 1000}  # three data sectors


def toy_setup(dev):
    toy_commit(dev, OLD)


def toy_checker(slot_check: bool = True):
    def check(state):
        kv = toy_load(MemoryDevice(state.image), slot_check)[1]
        if state.complete:
            assert kv == NEW, "the commit's last flush returned but NEW is not visible"
        else:
            assert kv in (OLD, NEW), "neither the old nor the new contents"
    return check


# -- the toy against the simulator -------------------------------------------

def test_correct_toy_survives_every_crash_state():
    stats = run_crash_workload(toy_setup, lambda dev: toy_commit(dev, NEW), toy_checker())
    assert stats.states > 2 ** 3
    assert stats.equal_old >= 1 and stats.equal_new >= 1
    assert stats.flushes == 2 and stats.ops == 6  # 3 data writes, flush, slot, flush


def test_slot_written_before_data_is_flushed_is_caught():
    def broken(dev):
        toy_commit(dev, NEW, flush_data=False)

    with pytest.raises(CrashCheckError) as info:
        run_crash_workload(toy_setup, broken, toy_checker(), torn=False)
    # The culprit: the slot landed, some data sector did not.
    assert info.value.state.kind == "subset"
    assert isinstance(info.value.__cause__, ToyCorrupt)
    assert "3" in info.value.state.description.split("[")[1]  # op 3 is the slot write


def test_unchecked_slot_is_caught_only_by_torn_writes():
    def commit(dev):
        toy_commit(dev, NEW, slot_check=False)

    def setup(dev):
        toy_commit(dev, OLD, slot_check=False)

    # Reordering alone cannot hurt it: the slot is one sector, in its own epoch.
    run_crash_workload(setup, commit, toy_checker(slot_check=False), torn=False)
    with pytest.raises(CrashCheckError) as info:
        run_crash_workload(setup, commit, toy_checker(slot_check=False))
    assert info.value.state.kind == "torn" and "garbage" in info.value.state.description


def test_crash_inside_the_second_of_two_commits():
    marks = {}

    def two_commits(dev):
        toy_commit(dev, {"step": 1})
        marks["first"] = dev.flushes
        toy_commit(dev, {"step": 2})

    seen = set()

    def check(state):
        kv = toy_load(MemoryDevice(state.image))[1]
        if state.complete:
            allowed = [{"step": 2}]
        elif state.after_flushes >= marks["first"]:  # commit 1's last barrier returned
            allowed = [{"step": 1}, {"step": 2}]
        else:
            allowed = [OLD, {"step": 1}]
        assert kv in allowed
        seen.add(json.dumps(kv, sort_keys=True))

    run_crash_workload(toy_setup, two_commits, check)
    assert len(seen) == 3  # old, first and second were all reached


def test_failed_commit_leaves_the_old_contents():
    # Fail each write of a commit in turn: the image, and every crash state of
    # the part that ran, must still read OLD; after disarming, a retry commits.
    for n in range(1, 5):
        faulty = {}

        def commit(dev):
            faulty["dev"] = FaultyDevice(dev, fail_write=n)
            toy_commit(faulty["dev"], NEW)

        def check(state):
            assert toy_load(MemoryDevice(state.image))[1] == OLD

        stats = run_crash_workload(toy_setup, commit, check, allow_error=True)
        assert isinstance(stats.error, IOFailureError)
        dev = faulty["dev"]
        assert toy_load(dev)[1] == OLD
        dev.disarm()
        toy_commit(dev, NEW)
        assert toy_load(dev)[1] == NEW


# -- the simulator's own properties ------------------------------------------

def _writes(k, size=512, stride=1024):
    # k writes to distinct places, each with its own byte, so every subset is a distinct image.
    return [Op("write", i * stride, bytes([i + 1]) * size) for i in range(k)]


@pytest.mark.parametrize("k", range(0, 7))
def test_subset_count_is_two_to_the_k(k):
    initial = bytes(8192)
    log = _writes(k) + [Op("flush")]
    states = list(crash_states(initial, log, torn=False))
    assert len(states) == 2 ** k == count_crash_states(log, torn=False)
    assert len({s.image for s in states}) == 2 ** k
    assert [s.complete for s in states].count(True) == 1 and states[-1].complete
    assert states[0].image == initial and states[-1].after_flushes == 1


def test_flush_is_a_barrier():
    log = _writes(3) + [Op("flush")] + [Op("write", 4096 + i * 512, b"\xee" * 512) for i in range(2)] + [("flush",)]
    states = list(crash_states(bytes(8192), log, torn=False))
    assert len(states) == (2 ** 3 - 1) + (2 ** 2 - 1) + 1
    for s in states:
        first_done = all(s.image[i * 1024] == i + 1 for i in range(3))
        second_started = b"\xee" in s.image[4096:]
        assert first_done or not second_started, s.description
        assert s.after_flushes == (1 if first_done else 0) or s.complete


def test_writes_after_the_last_flush_form_an_epoch():
    log = _writes(2) + [Op("flush")] + [Op("write", 6000, b"z")]
    states = list(crash_states(bytes(8192), log, torn=False))
    assert len(states) == 3 + 1 + 1
    assert states[-1].complete and states[-1].image[6000:6001] == b"z"
    assert states[-2].after_flushes == 1 and states[-2].image[6000] == 0  # durable, z not yet


def test_large_epochs_are_sampled_reproducibly():
    log = _writes(12, size=16, stride=64) + [Op("flush")]
    initial = bytes(1024)
    a = list(crash_states(initial, log, samples=20, torn=False))
    assert len(a) == 20 + 1 == count_crash_states(log, samples=20, torn=False)
    assert a[0].image == initial  # the durable state is always among the samples
    assert len({s.image for s in a}) == 21
    b = list(crash_states(initial, log, samples=20, torn=False))
    c = list(crash_states(initial, log, samples=20, torn=False, seed=1))
    assert [s.image for s in a] == [s.image for s in b]
    assert [s.image for s in a] != [s.image for s in c]
    # Asking for more samples than there are subsets gives each subset once.
    small = list(crash_states(initial, _writes(3, 16, 64), max_exhaustive=2, samples=64, torn=False))
    assert len(small) == 2 ** 3 and len({s.image for s in small}) == 8


def test_torn_write_variants():
    initial = b"\xaa" * 4096
    log = [Op("write", 512, b"\x55" * 1536), Op("flush")]  # sectors 1, 2, 3
    torn = [s for s in crash_states(initial, log) if s.kind == "torn"]
    # start x (zeros, garbage) + cuts at 1024 and 1536 x (old, zeros, garbage)
    assert len(torn) == 2 + 2 * 3
    assert count_crash_states(log) == 2 + len(torn)
    for s in torn:
        cut = 512 + int(s.description.split("torn after ")[1].split()[0])
        fill = s.description.rsplit(" ", 1)[1]
        assert s.image[:512] == initial[:512] and s.image[2048:] == initial[2048:]
        assert s.image[512:cut] == b"\x55" * (cut - 512)
        rest = s.image[cut:2048]
        if fill == "old":
            assert rest == initial[cut:2048]
        elif fill == "zeros":
            assert rest == bytes(len(rest))
        else:
            assert rest not in (bytes(len(rest)), initial[cut:2048], b"\x55" * len(rest))
    # Garbage is seeded: same seed, same bytes; another seed, other bytes.
    again = [s.image for s in crash_states(initial, log) if s.kind == "torn"]
    other = [s.image for s in crash_states(initial, log, seed=7) if s.kind == "torn"]
    assert again == [s.image for s in torn] and other != again


def test_torn_cuts_are_absolute_sector_boundaries():
    log = [Op("write", 1000, b"\x01" * 100)]  # spans the boundary at 1024
    torn = [s for s in crash_states(bytes(2048), log) if s.kind == "torn"]
    assert len(torn) == 2 + 3
    cut_old = next(s for s in torn if "after 24 bytes, rest old" in s.description)
    assert cut_old.image[1000:1024] == b"\x01" * 24 and cut_old.image[1024:1100] == bytes(76)


def test_torn_extending_write_grows_the_image():
    log = [Op("write", 1024, b"\x07" * 1024), Op("flush")]
    states = list(crash_states(b"\xaa" * 1024, log))
    torn = [s for s in states if s.kind == "torn"]
    assert torn and all(len(s.image) == 2048 for s in torn)
    assert len(states[0].image) == 1024  # the write not applied: the old length
    old_fill = next(s for s in torn if s.description.endswith("old"))
    assert old_fill.image[1536:] == bytes(512)  # nothing was there before: reads as zeros


def test_truncates_are_applied_or_not():
    log = [Op("truncate", 1024), Op("write", 0, b"x"), Op("truncate", 3000), Op("flush")]
    states = list(crash_states(b"\xaa" * 4096, log, torn=False))
    assert len(states) == 8
    assert {len(s.image) for s in states} == {4096, 1024, 3000}
    assert states[-1].image == b"x" + b"\xaa" * 1023 + bytes(1976)


def test_recording_device_logs_and_forwards():
    inner = MemoryDevice(b"\x01" * 1024)
    rec = RecordingDevice(inner)
    buf = bytearray(b"abc")
    rec.write(10, buf)
    buf[:] = b"zzz"  # the log holds a copy
    rec.flush()
    rec.truncate(2048)
    rec.write(2048, b"end")
    assert rec.read(10, 3) == b"abc" and rec.size() == 2051 and inner.size() == 2051
    assert rec.initial == b"\x01" * 1024 and rec.flushes == 1
    assert rec.log == [Op("write", 10, b"abc"), Op("flush"), Op("truncate", 2048), Op("write", 2048, b"end")]
    final = list(rec.crash_states())[-1]
    assert final.complete and final.image == bytes(inner.data)


def test_recording_device_skips_what_a_fixed_device_refused():
    rec = RecordingDevice(MemoryDevice(capacity=1024))
    with pytest.raises(SpaceExhaustedError):
        rec.write(1000, b"x" * 100)
    rec.truncate(10)  # a fixed device ignores it
    assert rec.log == [] and rec.size() == 1024


# -- the fault device ---------------------------------------------------------

def test_faulty_device_fails_the_nth_write_only():
    inner = MemoryDevice()
    dev = FaultyDevice(inner, fail_write=2)
    dev.write(0, b"a")
    with pytest.raises(IOFailureError) as info:
        dev.write(1, b"b")
    assert info.value.code == "io.error" and info.value.details["errno"] == errno.EIO
    assert bytes(inner.data) == b"a"  # the failed write never reached the device
    dev.write(1, b"c")
    assert bytes(inner.data) == b"ac" and dev.failures == 1 and dev.writes == 3


def test_faulty_device_every_write_after_n_until_disarmed():
    dev = FaultyDevice(MemoryDevice(), fail_writes_after=2, error="space.exhausted")
    dev.write(0, b"a")
    dev.write(1, b"b")
    for _ in range(3):
        with pytest.raises(SpaceExhaustedError) as info:
            dev.write(2, b"c")
        assert info.value.details["errno"] == errno.ENOSPC
    dev.disarm()
    dev.write(2, b"c")
    assert dev.read(0, 3) == b"abc" and dev.failures == 3


def test_faulty_device_flush_and_read():
    dev = FaultyDevice(MemoryDevice(b"data"), fail_flush=2, fail_read=1)
    with pytest.raises(IOFailureError):
        dev.read(0, 4)
    assert dev.read(0, 4) == b"data"
    dev.flush()
    with pytest.raises(IOFailureError):
        dev.flush()
    dev.flush()
    with pytest.raises(ValueError):
        FaultyDevice(MemoryDevice(), error="nope")
