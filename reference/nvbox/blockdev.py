"""The block-device interface, and the back ends that implement it.

Everything above this module (allocator, trees, commits) talks to storage only
through ``BlockDevice``: positioned reads and writes (``writev`` writes several
buffers end to end), a flush barrier, the current size and a truncate.  That
narrow waist is where the tests count writes, inject faults and record workloads
for the crash simulator.

Back ends:

* ``FileDevice``   a regular file or a block device: pread/pwrite/fsync, an
                   advisory ``flock`` that keeps a second writer out, and early
                   writeback of large transactions (``sync_file_range`` on Linux).
* ``MemoryDevice`` a bytearray, for unit tests and the crash simulator.
* ``CountingDevice`` wraps another device and counts reads, writes and flushes
                   (the statistics benchmarks report).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat
from dataclasses import dataclass, field

from .errors import raise_code

__all__ = ["BlockDevice", "FileDevice", "MemoryDevice", "CountingDevice", "IOStats"]


def _find_sync_file_range():
    """Linux's ``sync_file_range(2)`` through ctypes (the os module lacks it), or None."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _find_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2      # start writeback of the range's dirty pages; do not wait


def _iov_max() -> int:
    """How many buffers one pwritev may take (POSIX guarantees 16)."""
    try:
        return max(16, min(1024, os.sysconf("SC_IOV_MAX")))
    except (AttributeError, ValueError, OSError):
        return 16


_IOV_MAX = _iov_max()


class BlockDevice:
    """Abstract storage.  Offsets and lengths are in bytes.

    ``read`` may return fewer bytes than asked for only at the end of the
    device.  ``write`` past the end grows a growable device; a fixed device
    (``growable`` False) refuses with ``space.exhausted``.  ``flush`` is a
    durability barrier: every write issued before it is durable when it returns.
    """

    growable: bool = True

    def read(self, offset: int, length: int) -> bytes:
        raise NotImplementedError

    def write(self, offset: int, data: bytes) -> None:
        raise NotImplementedError

    def writev(self, offset: int, buffers) -> None:
        """Write ``buffers`` end to end from ``offset``: one write of their join
        (a device that can gather, like ``FileDevice``, skips the join)."""
        self.write(offset, b"".join(buffers))

    def flush(self) -> None:
        raise NotImplementedError

    def size(self) -> int:
        raise NotImplementedError

    def truncate(self, length: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class MemoryDevice(BlockDevice):
    """A device held in memory.  ``capacity`` makes it fixed-size."""

    def __init__(self, data: bytes = b"", capacity: int | None = None):
        self.data = bytearray(data)
        self.capacity = capacity
        self.growable = capacity is None
        if capacity is not None and len(self.data) < capacity:
            self.data.extend(bytes(capacity - len(self.data)))

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.data[offset:offset + length])

    def write(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        if end > len(self.data):
            if not self.growable:
                raise_code("space.exhausted", "write past the end of a fixed-size device")
            self.data.extend(bytes(end - len(self.data)))
        self.data[offset:end] = data

    def flush(self) -> None:
        pass

    def size(self) -> int:
        return len(self.data)

    def truncate(self, length: int) -> None:
        if not self.growable:
            return
        if length < len(self.data):
            del self.data[length:]
        else:
            self.data.extend(bytes(length - len(self.data)))


class FileDevice(BlockDevice):
    """A file or block device on the local file system.

    Args:
        path: the file.
        writable: open for writing (and take the writer's lock).
        create: create the file; refuse if it exists.
        fixed: treat the current size as a fixed capacity (block devices always are).

    Early writeback: once ``WRITEBACK_AFTER`` bytes have been written since the
    last flush or kick, the device asks the kernel to start writing the dirty
    range out (``sync_file_range(SYNC_FILE_RANGE_WRITE)``, which does not wait),
    as PostgreSQL's ``*_flush_after`` and RocksDB's ``bytes_per_sync`` do.  The
    disk then works while Python computes the next clusters, and the commit's
    flush finds most of a large transaction already written: 64 MiB in one
    transaction went from about 85 to 65 ms here.  It is only a hint: it
    promises nothing about durability or order, which come from ``flush()``
    alone (R-commit), so a crash at any point leaves what it left without it.
    A transaction smaller than ``WRITEBACK_AFTER`` never calls it.
    """

    WRITEBACK_AFTER = 4 << 20

    def __init__(self, path: str, writable: bool = False, create: bool = False, fixed: bool = False):
        self.path = os.fspath(path)
        flags = os.O_RDWR if writable else os.O_RDONLY
        if create:
            flags |= os.O_CREAT | os.O_EXCL
        try:
            self.fd = os.open(self.path, flags | getattr(os, "O_CLOEXEC", 0), 0o644)
        except FileExistsError:
            raise_code("image.exists", f"{self.path} already exists")
        except OSError as exc:
            raise_code("io.error", f"cannot open {self.path}: {exc.strerror}")
        self.writable = writable
        mode = os.fstat(self.fd).st_mode
        self.is_block_device = stat.S_ISBLK(mode)
        self.growable = not (fixed or self.is_block_device)
        self._fixed_size = self._raw_size() if not self.growable else None
        self._unkicked = 0                  # bytes written since the last flush or kick
        self._dirty_lo = self._dirty_hi = 0     # the range they lie in
        if writable:
            self._lock()

    def _lock(self) -> None:
        # [R-lock-1] one writer at a time: an exclusive, non-blocking flock on
        # the image file itself.  Readers take no lock.
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self.fd)
            self.fd = -1
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise_code("image.locked", f"{self.path} is open for writing elsewhere")
            raise_code("io.error", f"cannot lock {self.path}: {exc.strerror}")

    def make_fixed(self) -> None:
        """Treat the current size as a fixed capacity from now on."""
        self.growable = False
        self._fixed_size = self._raw_size()

    def _raw_size(self) -> int:
        if self.is_block_device:
            return os.lseek(self.fd, 0, os.SEEK_END)
        return os.fstat(self.fd).st_size

    def read(self, offset: int, length: int) -> bytes:
        try:
            return os.pread(self.fd, length, offset)
        except OSError as exc:
            raise_code("io.error", f"read failed at {offset}: {exc.strerror}")

    def write(self, offset: int, data: bytes) -> None:
        self.writev(offset, (data,))

    def writev(self, offset: int, buffers) -> None:
        """Write ``buffers`` (bytes-like) end to end from ``offset``: ``pwritev``,
        the kernel gathering them, or one ``pwrite`` where there is one buffer or
        the platform lacks ``pwritev`` (of their join)."""
        buffers = list(buffers)
        if len(buffers) > 1 and not hasattr(os, "pwritev"):
            buffers = [b"".join(buffers)]
        end = offset + sum(map(len, buffers))
        if not self.growable and end > self._fixed_size:
            raise_code("space.exhausted", "write past the end of a fixed-size device")
        pos = offset
        try:
            for a in range(0, len(buffers), _IOV_MAX):
                group = buffers[a:a + _IOV_MAX]
                want = sum(map(len, group))
                done = os.pwrite(self.fd, group[0], pos) if len(group) == 1 else os.pwritev(self.fd, group, pos)
                if done < want:     # a short write (a signal, a nearly full disk): the rest
                    rest = memoryview(group[0] if len(group) == 1 else b"".join(group))[done:]
                    while rest:
                        n = os.pwrite(self.fd, rest, pos + done)
                        rest, done = rest[n:], done + n
                pos += want
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise_code("space.exhausted", f"the file system is full: {exc.strerror}")
            raise_code("io.error", f"write failed at {pos}: {exc.strerror}")
        self._note_dirty(offset, end)

    def _note_dirty(self, start: int, end: int) -> None:
        if self._unkicked:
            self._dirty_lo, self._dirty_hi = min(self._dirty_lo, start), max(self._dirty_hi, end)
        else:
            self._dirty_lo, self._dirty_hi = start, end
        self._unkicked += end - start
        if self._unkicked >= self.WRITEBACK_AFTER and _sync_file_range is not None:
            # A failure here is harmless (the flush still writes everything), and
            # the flush reports any real I/O error.
            _sync_file_range(self.fd, self._dirty_lo, self._dirty_hi - self._dirty_lo, _SYNC_FILE_RANGE_WRITE)
            self._unkicked = 0

    def flush(self) -> None:
        self._unkicked = 0
        try:
            os.fdatasync(self.fd) if hasattr(os, "fdatasync") else os.fsync(self.fd)
        except OSError as exc:
            raise_code("io.error", f"flush failed: {exc.strerror}")

    def size(self) -> int:
        return self._fixed_size if self._fixed_size is not None else self._raw_size()

    def truncate(self, length: int) -> None:
        if not self.growable:
            return
        try:
            os.ftruncate(self.fd, length)
        except OSError as exc:
            raise_code("io.error", f"truncate failed: {exc.strerror}")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing releases the flock
            self.fd = -1


@dataclass
class IOStats:
    """What a device saw: the numbers benchmarks and write-bound tests report."""

    reads: int = 0
    bytes_read: int = 0
    writes: int = 0
    bytes_written: int = 0
    flushes: int = 0
    write_offsets: list = field(default_factory=list)

    def reset(self) -> None:
        self.reads = self.bytes_read = self.writes = self.bytes_written = self.flushes = 0
        self.write_offsets = []


class CountingDevice(BlockDevice):
    """Forwards to ``inner`` and counts every call in ``stats``."""

    def __init__(self, inner: BlockDevice, record_offsets: bool = False):
        self.inner = inner
        self.stats = IOStats()
        self.record_offsets = record_offsets

    @property
    def growable(self) -> bool:  # type: ignore[override]
        return self.inner.growable

    def read(self, offset: int, length: int) -> bytes:
        self.stats.reads += 1
        self.stats.bytes_read += length
        return self.inner.read(offset, length)

    def write(self, offset: int, data: bytes) -> None:
        self.stats.writes += 1
        self.stats.bytes_written += len(data)
        if self.record_offsets:
            self.stats.write_offsets.append((offset, len(data)))
        self.inner.write(offset, data)

    def writev(self, offset: int, buffers) -> None:
        buffers = list(buffers)
        n = sum(map(len, buffers))
        self.stats.writes += 1
        self.stats.bytes_written += n
        if self.record_offsets:
            self.stats.write_offsets.append((offset, n))
        self.inner.writev(offset, buffers)

    def flush(self) -> None:
        self.stats.flushes += 1
        self.inner.flush()

    def size(self) -> int:
        return self.inner.size()

    def truncate(self, length: int) -> None:
        self.inner.truncate(length)

    def close(self) -> None:
        self.inner.close()
