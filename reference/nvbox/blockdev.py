"""The block-device interface, and the back ends that implement it.

Everything above this module (allocator, trees, commits) talks to storage only
through ``BlockDevice``: positioned reads and writes, a flush barrier, the
current size and a truncate.  That narrow waist is where the tests count
writes, inject faults and record workloads for the crash simulator.

Back ends:

* ``FileDevice``   a regular file or a block device: pread/pwrite/fsync, and an
                   advisory ``flock`` that keeps a second writer out.
* ``MemoryDevice`` a bytearray, for unit tests and the crash simulator.
* ``CountingDevice`` wraps another device and counts reads, writes and flushes
                   (the statistics benchmarks report).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from dataclasses import dataclass, field

from .errors import raise_code

__all__ = ["BlockDevice", "FileDevice", "MemoryDevice", "CountingDevice", "IOStats"]


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
    """

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
        if not self.growable and offset + len(data) > self._fixed_size:
            raise_code("space.exhausted", "write past the end of a fixed-size device")
        try:
            view = memoryview(data)
            while view:
                n = os.pwrite(self.fd, view, offset)
                view = view[n:]
                offset += n
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise_code("space.exhausted", f"the file system is full: {exc.strerror}")
            raise_code("io.error", f"write failed at {offset}: {exc.strerror}")

    def flush(self) -> None:
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

    def flush(self) -> None:
        self.stats.flushes += 1
        self.inner.flush()

    def size(self) -> int:
        return self.inner.size()

    def truncate(self, length: int) -> None:
        self.inner.truncate(length)

    def close(self) -> None:
        self.inner.close()
