"""FileDevice: early writeback of large transactions (sync_file_range hints).

The hint must fire once WRITEBACK_AFTER bytes are written since the last flush or
kick, cover the range those bytes lie in, never fire for a smaller transaction,
and change nothing that a reader sees.
"""

from __future__ import annotations

import os
import sys

import pytest

import nvbox
from nvbox import blockdev
from nvbox.blockdev import FileDevice


@pytest.fixture
def kicks(monkeypatch):
    """Record every sync_file_range call (and still make it, where the platform has it)."""
    calls = []
    real = blockdev._sync_file_range

    def spy(fd, offset, nbytes, flags):
        calls.append((offset, nbytes, flags))
        return real(fd, offset, nbytes, flags) if real is not None else 0

    monkeypatch.setattr(blockdev, "_sync_file_range", spy)
    return calls


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_sync_file_range_is_found_on_linux(tmp_path):
    assert blockdev._sync_file_range is not None
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, b"x" * 8192)
        assert blockdev._sync_file_range(fd, 0, 8192, blockdev._SYNC_FILE_RANGE_WRITE) == 0
    finally:
        os.close(fd)


def test_kick_after_threshold_covers_the_dirty_range(tmp_path, kicks, monkeypatch):
    monkeypatch.setattr(FileDevice, "WRITEBACK_AFTER", 16384)
    dev = FileDevice(str(tmp_path / "d"), writable=True, create=True)
    try:
        dev.write(40960, b"a" * 8192)
        dev.write(8192, b"b" * 4096)
        assert kicks == []                  # 12 KiB written: below the threshold
        dev.write(65536, b"c" * 4096)       # 16 KiB: kick the range 8192..69632
        assert kicks == [(8192, 69632 - 8192, blockdev._SYNC_FILE_RANGE_WRITE)]
        dev.write(0, b"d" * 12288)
        assert len(kicks) == 1              # the count starts again after a kick
        dev.flush()
        dev.write(0, b"e" * 12288)
        assert len(kicks) == 1              # and after a flush: 12 KiB since it
        dev.write(12288, b"f" * 4096)
        assert kicks[1] == (0, 16384, blockdev._SYNC_FILE_RANGE_WRITE)
        assert dev.read(0, 16384) == b"e" * 12288 + b"f" * 4096
        assert dev.read(40960, 8192) == b"a" * 8192
    finally:
        dev.close()


def test_small_transactions_never_kick(tmp_path, kicks):
    img = nvbox.create(str(tmp_path / "s.nvbox"))
    for i in range(20):
        img.put(f"b{i}", os.urandom(100_000))
    img.close()
    assert kicks == []


def test_large_put_kicks_and_reads_back(tmp_path, kicks):
    data = os.urandom(20 << 20)
    path = str(tmp_path / "l.nvbox")
    img = nvbox.create(path)
    img.put("big", data)
    img.close()
    # 20 MiB in 4 MiB steps; every kicked range lies inside the file.
    assert len(kicks) >= 4
    size = os.path.getsize(path)
    assert all(0 <= off and off + n <= size for off, n, _ in kicks)
    with nvbox.open(path) as img:
        assert img["big"] == data


@pytest.mark.parametrize("count", [1, 3, blockdev._IOV_MAX, blockdev._IOV_MAX * 2 + 5])
def test_writev_writes_the_buffers_end_to_end(tmp_path, count):
    bufs = [os.urandom(1 + (i * 37) % 200) for i in range(count)]
    views = [memoryview(bytearray(b)) for b in bufs]     # any buffers
    dev = FileDevice(str(tmp_path / "v"), writable=True, create=True)
    counting = blockdev.CountingDevice(dev, record_offsets=True)
    memory = blockdev.MemoryDevice()
    try:
        counting.writev(100, views)
        memory.writev(100, bufs)           # the base class: one write of the join
        joined = b"".join(bufs)
        assert dev.read(0, 100 + len(joined) + 1) == bytes(100) + joined
        assert memory.read(0, 100 + len(joined)) == bytes(100) + joined
        assert counting.stats.writes == 1 and counting.stats.bytes_written == len(joined)
        assert counting.stats.write_offsets == [(100, len(joined))]
    finally:
        dev.close()


def test_writev_past_a_fixed_capacity_is_space_exhausted(tmp_path):
    path = tmp_path / "fixed"
    path.write_bytes(bytes(8192))
    dev = FileDevice(str(path), writable=True, fixed=True)
    try:
        with pytest.raises(nvbox.NvboxError) as e:
            dev.writev(4096, [bytes(4096), b"x"])
        assert e.value.code == "space.exhausted"
        assert path.read_bytes() == bytes(8192)
    finally:
        dev.close()


def test_writev_without_pwritev_writes_the_join(tmp_path, monkeypatch, kicks):
    monkeypatch.delattr(os, "pwritev")
    dev = FileDevice(str(tmp_path / "j"), writable=True, create=True)
    try:
        dev.writev(10, [b"ab", memoryview(b"cd"), bytearray(b"ef")])
        assert dev.read(0, 16) == bytes(10) + b"abcdef"
    finally:
        dev.close()


def test_iov_max_is_at_least_posix_minimum(monkeypatch):
    assert 16 <= blockdev._IOV_MAX <= 1024
    monkeypatch.setattr(os, "sysconf", lambda name: (_ for _ in ()).throw(ValueError(name)))
    assert blockdev._iov_max() == 16


def test_writev_finishes_a_short_write(tmp_path, monkeypatch):
    real = os.pwritev
    # A kernel may write less than asked (a signal, a full disk on the way): here
    # only the first buffer and 3 bytes of the second of every call.
    monkeypatch.setattr(os, "pwritev", lambda fd, bufs, off: real(fd, [bufs[0], bytes(bufs[1])[:3]], off))
    bufs = [os.urandom(100), os.urandom(50), os.urandom(70)]
    dev = FileDevice(str(tmp_path / "s"), writable=True, create=True)
    try:
        dev.writev(4096, bufs)
        assert dev.read(4096, 220) == b"".join(bufs)
    finally:
        dev.close()


def test_write_loops_over_short_pwrites(tmp_path, monkeypatch):
    real = os.pwrite
    monkeypatch.setattr(os, "pwrite", lambda fd, data, off: real(fd, bytes(data)[:7], off))
    data = os.urandom(100)
    dev = FileDevice(str(tmp_path / "p"), writable=True, create=True)
    try:
        dev.write(512, data)
        dev.writev(1024, [data])
        assert dev.read(512, 100) == data and dev.read(1024, 100) == data
    finally:
        dev.close()


def test_a_failing_writeback_hint_changes_nothing(tmp_path, monkeypatch):
    # sync_file_range's result is ignored on purpose: the flush writes everything
    # and reports real errors.  A hint that fails (-1) must not fail the write.
    calls = []
    monkeypatch.setattr(blockdev, "_sync_file_range", lambda *a: calls.append(a) or -1)
    monkeypatch.setattr(FileDevice, "WRITEBACK_AFTER", 4096)
    dev = FileDevice(str(tmp_path / "f"), writable=True, create=True)
    try:
        dev.write(0, b"x" * 8192)
        dev.flush()
        assert calls and dev.read(0, 8192) == b"x" * 8192
    finally:
        dev.close()
