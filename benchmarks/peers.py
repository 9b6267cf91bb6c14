"""Benchmark peers for nvbox: the same blob-store work done three other ways.

Every peer implements `Store`:

    s = Peer.create(path, count_io=False, **options)   # new, empty store
    s = Peer.open(path, count_io=False)                 # existing store
    s.put(name, data) / s.put_many(items)               # items: iterable of (name, bytes)
    s.get(name) -> bytes
    s.update(name, offset, data)                        # small in-place update
    s.delete(name)
    s.names() -> list[str]
    s.snapshot_create(name) / s.snapshot_delete(name) / s.snapshots()
    s.fill(total_bytes, chunk=16 MiB)                   # allocate filler blobs quickly
    s.check() -> bool / s.compact()
    s.close()
    s.file_size() -> int                                # bytes the store occupies (apparent size)
    s.bytes_written, s.flushes                          # counters, None when not measured

Peers:
  Qcow2Store      a qcow2 image driven by Debian's qemu-img / qemu-io, one process per
                  operation (or per batch), blobs at fixed offsets of the virtual disk with a
                  directory of (name, offset, size, crc32) slots at offset 0, as in the 2011
                  TPM design (shared/seed).  Snapshots: qemu-img snapshot -c / -d.
  SqliteStore     stdlib sqlite3, table blobs(name TEXT PRIMARY KEY, data BLOB), WAL mode,
                  synchronous=FULL, in-place updates through Connection.blobopen, snapshots
                  as VACUUM INTO.
  PlainFilesStore a directory, one file per blob, replaced by write-to-temp, fsync, rename,
                  fsync(directory) (swtpm's directory back end).  Snapshots are directories of
                  hard links (files are never modified in place, so links are a true copy).

Counters (see PEERS.md): with count_io=True, every write-type and flush-type system call on a
file inside the store is counted from an strace(1) log -- of the qemu-io / qemu-img child for
Qcow2Store, of this very process (strace attached to ourselves) for SqliteStore.
PlainFilesStore counts in its own code (the calls it makes are exactly the system calls).
With count_io=False nothing is traced and Qcow2Store/SqliteStore report None: run the timed
pass without counting and the counting pass separately, because ptrace slows every system call.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import sqlite3
import struct
import subprocess
import tempfile
import time
import urllib.parse
import zlib
from typing import Iterable

MiB = 1 << 20
GiB = 1 << 30

# --------------------------------------------------------------------------------------
# System-call counting with strace
# --------------------------------------------------------------------------------------

WRITE_CALLS = ("write", "pwrite64", "writev", "pwritev", "pwritev2")
FLUSH_CALLS = ("fsync", "fdatasync", "syncfs", "sync_file_range", "msync")
TRACE_SET = ",".join(WRITE_CALLS + FLUSH_CALLS)

_LINE = re.compile(r"^(?:\[pid\s+)?(\d+)\]?\s+(.*)$")
_CALL = re.compile(r"^(\w+)\((\d+)<([^>]*)>")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>")
_RESULT = re.compile(r"\)\s+=\s+(-?\d+)")


def have_strace() -> bool:
    return shutil.which("strace") is not None


def have_qemu() -> bool:
    return shutil.which("qemu-img") is not None and shutil.which("qemu-io") is not None


class TraceTally:
    """Parses `strace -f -y -s0` output and sums writes/flushes on paths under `root`."""

    def __init__(self, root: str):
        self.root = os.path.realpath(root)
        self.pending: dict[str, tuple[str, str]] = {}
        self.bytes_written = 0
        self.flushes = 0
        self.markers = 0

    def _mine(self, path: str) -> bool:
        return path == self.root or path.startswith(self.root + os.sep)

    def _account(self, call: str, path: str, rest: str) -> None:
        if path == "/dev/null" and call == "write":
            self.markers += 1
            return
        if not self._mine(path):
            return
        m = _RESULT.search(rest)
        if not m:
            return
        ret = int(m.group(1))
        if call in WRITE_CALLS and ret > 0:
            self.bytes_written += ret
        elif call in FLUSH_CALLS and ret == 0:
            self.flushes += 1

    def feed(self, text: str) -> None:
        for line in text.splitlines():
            m = _LINE.match(line)
            pid, body = (m.group(1), m.group(2)) if m else ("0", line)
            if body.endswith("<unfinished ...>"):
                c = _CALL.match(body)
                if c:
                    self.pending[pid] = (c.group(1), c.group(3))
                continue
            r = _RESUMED.match(body)
            if r:
                call, path = self.pending.pop(pid, (r.group(1), ""))
                self._account(call, path, body)
                continue
            c = _CALL.match(body)
            if c:
                self._account(c.group(1), c.group(3), body)


def strace_prefix(logfile: str) -> list[str]:
    return ["strace", "-f", "-qq", "-y", "-s0", "-e", "signal=none", "-e", "trace=" + TRACE_SET,
            "-o", logfile]


class SelfTracer:
    """Attaches strace to this process (all threads) and tallies calls on files under root."""

    def __init__(self, root: str):
        if not have_strace():
            raise RuntimeError("count_io=True needs strace (apt-get install strace)")
        # Allow a non-descendant to trace us even under Yama ptrace_scope=1.
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(0x59616D61, ctypes.c_ulong(-1 & 0xFFFFFFFFFFFFFFFF), 0, 0, 0)  # PR_SET_PTRACER_ANY
        except Exception:
            pass
        self.tally = TraceTally(root)
        fd, self.log = tempfile.mkstemp(prefix="nvbox-selftrace-", suffix=".log", dir=_scratch_dir())
        os.close(fd)
        self._offset = 0
        self._buf = ""
        self._markers_sent = 0
        self._null = os.open("/dev/null", os.O_WRONLY)
        tids = sorted(os.listdir("/proc/self/task"))
        cmd = strace_prefix(self.log)
        for t in tids:
            cmd += ["-p", t]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        self.sync(timeout=10.0)

    def sync(self, timeout: float = 10.0) -> None:
        """Make a marker call and wait until strace has logged it (so the log is complete)."""
        self._markers_sent += 1
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while True:
            os.write(self._null, b"")
            self._read()
            if self.tally.markers >= self._markers_sent:
                # earlier unanswered marker writes may also show up later; re-base the target
                self._markers_sent = self.tally.markers
                return
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError("strace could not attach to this process: " + err.strip())
            if time.monotonic() > deadline:
                raise RuntimeError("strace did not report in time")
            time.sleep(delay)
            delay = min(delay * 2, 0.02)

    def _read(self) -> None:
        with open(self.log, "r", errors="replace") as f:
            f.seek(self._offset)
            data = f.read()
            self._offset = f.tell()
        data = self._buf + data
        cut = data.rfind("\n") + 1
        self._buf = data[cut:]
        self.tally.feed(data[:cut])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.sync()
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        os.close(self._null)
        try:
            os.unlink(self.log)
        except FileNotFoundError:
            pass


def _scratch_dir() -> str:
    """Scratch files (qemu-io source data, qemu-img output) live on tmpfs when possible,
    so that they neither touch the benchmark disk nor get counted."""
    d = "/dev/shm"
    if os.path.isdir(d) and os.access(d, os.W_OK):
        return d
    return tempfile.gettempdir()


# --------------------------------------------------------------------------------------
# Common interface
# --------------------------------------------------------------------------------------


class Store:
    kind = "abstract"
    supports_snapshots = True

    def __init__(self, path: str, count_io: bool = False):
        self.path = os.path.abspath(path)
        self.count_io = count_io

    # construction ------------------------------------------------------------------
    @classmethod
    def create(cls, path: str, count_io: bool = False, **options) -> "Store":
        raise NotImplementedError

    @classmethod
    def open(cls, path: str, count_io: bool = False) -> "Store":
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # blobs --------------------------------------------------------------------------
    def put(self, name: str, data: bytes) -> None:
        raise NotImplementedError

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        for name, data in items:
            self.put(name, data)

    def get(self, name: str) -> bytes:
        raise NotImplementedError

    def update(self, name: str, offset: int, data: bytes) -> None:
        raise NotImplementedError

    def delete(self, name: str) -> None:
        raise NotImplementedError

    def names(self) -> list[str]:
        raise NotImplementedError

    def fill(self, total: int, chunk: int = 16 * MiB, byte: int = 0x5A, prefix: str = "fill/") -> None:
        """Allocate `total` bytes as blobs of `chunk` bytes filled with `byte`."""
        block = bytes([byte]) * chunk
        i, left = 0, total
        while left > 0:
            n = min(chunk, left)
            self.put(f"{prefix}{i:06d}", block if n == chunk else block[:n])
            i += 1
            left -= n

    # snapshots ----------------------------------------------------------------------
    def snapshot_create(self, name: str) -> None:
        raise NotImplementedError

    def snapshot_delete(self, name: str) -> None:
        raise NotImplementedError

    def snapshots(self) -> list[str]:
        raise NotImplementedError

    # maintenance --------------------------------------------------------------------
    def check(self) -> bool:
        raise NotImplementedError

    def compact(self) -> None:
        raise NotImplementedError

    def file_size(self) -> int:
        raise NotImplementedError

    def counters(self) -> dict:
        return {"bytes_written": self.bytes_written, "flushes": self.flushes}


# --------------------------------------------------------------------------------------
# qcow2 through qemu-img / qemu-io
# --------------------------------------------------------------------------------------

IDX_MAGIC = b"NVDIR\x00\x00\x01"
IDX_HEADER = struct.Struct("<8sIIQQQ")  # magic, version, slot size, slots used, index bytes, data start
SLOT = struct.Struct("<BBHIQQQ104s")    # used, name length, pad, crc32, offset, length, capacity, name
SLOT_SIZE = SLOT.size                   # 136 bytes, padded to 144 below
assert SLOT_SIZE <= 144
SLOT_SIZE = 144
HEADER_SIZE = 512
NAME_MAX = 104


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


class Qcow2Store(Store):
    """Blobs at fixed offsets of a qcow2 virtual disk, with a directory at offset 0.

    Layout of the virtual disk:
      [0, 512)                    header: magic, version, slot size, slots used, index size
      [512, index_size)           slots of SLOT_SIZE bytes: used, name, crc32, offset, length,
                                  capacity (the 2011 TPM design: "a directory in the first
                                  sector holds the offsets, sizes and crc32's of these blobs")
      [index_size, virtual_size)  blob data; blobs start on 512-byte boundaries, blobs of
                                  1 MiB or more on 1 MiB boundaries; freed ranges are reused
                                  first-fit and discarded so qcow2 can free their clusters.

    Each operation is one qemu-io (or qemu-img) process; put writes the data, flushes, then
    writes the directory slot and flushes (the slot is the commit point).  Reads use
    `qemu-img convert` of a raw window (driver=raw,offset=,size=) into a tmpfs file.
    """

    kind = "qcow2"

    def __init__(self, path: str, count_io: bool = False):
        super().__init__(path, count_io)
        self.slots: dict[str, tuple[int, int, int, int, int]] = {}  # name -> (slot, crc, off, len, cap)
        self.free_slots: list[int] = []
        self.slots_used = 0
        self.index_size = 0
        self.virtual_size = 0
        self.bytes_written = 0 if count_io else None
        self.flushes = 0 if count_io else None
        self.processes = 0  # qemu-io / qemu-img processes started
        self._scratch = _scratch_dir()

    # processes ----------------------------------------------------------------------
    def _run(self, argv: list[str], stdin: bytes | None = None) -> subprocess.CompletedProcess:
        self.processes += 1
        if self.count_io:
            fd, log = tempfile.mkstemp(prefix="nvbox-qtrace-", dir=self._scratch)
            os.close(fd)
            try:
                p = subprocess.run(strace_prefix(log) + argv, input=stdin, capture_output=True)
                tally = TraceTally(os.path.dirname(self.path))
                with open(log, errors="replace") as f:
                    tally.feed(f.read())
                self.bytes_written += tally.bytes_written
                self.flushes += tally.flushes
            finally:
                os.unlink(log)
        else:
            p = subprocess.run(argv, input=stdin, capture_output=True)
        if p.returncode != 0 or b"failed" in p.stdout or p.stderr.strip():
            raise RuntimeError(f"{argv[0]} failed ({p.returncode}): "
                               f"{(p.stderr or p.stdout).decode(errors='replace').strip()}")
        return p

    def _io(self, commands: list[str]) -> None:
        """Run qemu-io commands in one process; commands go through stdin (no argv limit)."""
        script = "\n".join(commands + ["quit"]) + "\n"
        self._run(["qemu-io", "-f", "qcow2", self.path], stdin=script.encode())

    def _write_cmds(self, writes: list[tuple[int, bytes]], files: list[str],
                    pad: bool = False) -> list[str]:
        """qemu-io write commands for (offset, data) pairs, coalescing neighbours (with
        pad=True also across gaps under 512 bytes, which for blob data are the previous
        blob's padding).  Source files are created in the scratch dir and appended to `files`."""
        cmds = []
        writes = sorted(writes, key=lambda w: w[0])
        merged: list[tuple[int, bytearray]] = []
        for off, data in writes:
            if merged:
                moff, mbuf = merged[-1]
                end = moff + len(mbuf)
                if off == end or (pad and end < off < end + 512):
                    mbuf += b"\0" * (off - end)
                    mbuf += data
                    continue
            merged.append((off, bytearray(data)))
        for off, buf in merged:
            if not buf:
                continue
            fd, src = tempfile.mkstemp(prefix="nvbox-src-", dir=self._scratch)
            with os.fdopen(fd, "wb") as f:
                f.write(buf)
            files.append(src)
            cmds.append(f"write -q -s {src} {off} {len(buf)}")
        return cmds

    def _read(self, offset: int, length: int) -> bytes:
        if length == 0:
            return b""
        size = _align(length, 512)
        fd, out = tempfile.mkstemp(prefix="nvbox-out-", dir=self._scratch)
        os.close(fd)
        os.unlink(out)
        try:
            opts = (f"driver=raw,offset={offset},size={size},"
                    f"file.driver=qcow2,file.file.filename={self.path}")
            self._run(["qemu-img", "convert", "-U", "-O", "raw", "--image-opts", opts, out])
            with open(out, "rb") as f:
                return f.read(length)
        finally:
            try:
                os.unlink(out)
            except FileNotFoundError:
                pass

    # construction -------------------------------------------------------------------
    @classmethod
    def create(cls, path: str, count_io: bool = False, cluster_size: int = 65536,
               virtual_size: int = 16 * GiB, index_size: int = 16 * MiB) -> "Qcow2Store":
        s = cls(path, count_io)
        if os.path.exists(s.path):
            os.unlink(s.path)
        s._run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"cluster_size={cluster_size}",
                s.path, str(virtual_size)])
        s.index_size = index_size
        s.virtual_size = virtual_size
        s.slots_used = 0
        files: list[str] = []
        try:
            s._io(s._write_cmds([(0, s._header())], files) + ["flush"])
        finally:
            for f in files:
                os.unlink(f)
        s._rebuild_free()
        return s

    @classmethod
    def open(cls, path: str, count_io: bool = False) -> "Qcow2Store":
        s = cls(path, count_io)
        hdr = s._read(0, HEADER_SIZE)
        magic, version, slot_size, used, index_size, _data_start = IDX_HEADER.unpack_from(hdr)
        if magic != IDX_MAGIC or slot_size != SLOT_SIZE:
            raise ValueError(f"{path}: not a blob directory image")
        s.slots_used, s.index_size = used, index_size
        with open(s.path, "rb") as f:       # qcow2 header: virtual size at byte 24, big-endian
            s.virtual_size = struct.unpack(">Q", f.read(32)[24:32])[0]
        raw = s._read(HEADER_SIZE, used * SLOT_SIZE) if used else b""
        for i in range(used):
            u, nlen, _pad, crc, off, length, cap, name = SLOT.unpack_from(raw, i * SLOT_SIZE)
            if u:
                s.slots[name[:nlen].decode()] = (i, crc, off, length, cap)
            else:
                s.free_slots.append(i)
        s._rebuild_free()
        return s

    def _header(self) -> bytes:
        h = IDX_HEADER.pack(IDX_MAGIC, 1, SLOT_SIZE, self.slots_used, self.index_size, self.index_size)
        return h.ljust(HEADER_SIZE, b"\0")

    def _slot_bytes(self, name: str | None, crc=0, off=0, length=0, cap=0) -> bytes:
        if name is None:
            return b"\0" * SLOT_SIZE
        n = name.encode()
        return SLOT.pack(1, len(n), 0, crc, off, length, cap, n).ljust(SLOT_SIZE, b"\0")

    # allocation ---------------------------------------------------------------------
    def _rebuild_free(self) -> None:
        ext = sorted((off, cap) for (_i, _c, off, _l, cap) in self.slots.values())
        self.free: list[tuple[int, int]] = []
        pos = self.index_size
        for off, cap in ext:
            if off > pos:
                self.free.append((pos, off - pos))
            pos = max(pos, off + cap)
        self.top = pos

    @staticmethod
    def _alignment(length: int) -> int:
        return MiB if length >= MiB else 512

    def _alloc(self, length: int) -> tuple[int, int]:
        a = self._alignment(length)
        cap = _align(max(length, 1), 512)
        for i, (off, size) in enumerate(self.free):
            start = _align(off, a)
            if start + cap <= off + size:
                rest = []
                if start > off:
                    rest.append((off, start - off))
                if start + cap < off + size:
                    rest.append((start + cap, off + size - start - cap))
                self.free[i:i + 1] = rest
                return start, cap
        start = _align(self.top, a)
        if start > self.top:
            self.free.append((self.top, start - self.top))
        self.top = start + cap
        if self.top > self.virtual_size:
            new = max(self.virtual_size * 2, _align(self.top, GiB))
            self._run(["qemu-img", "resize", "-q", "-f", "qcow2", self.path, str(new)])
            self.virtual_size = new
        return start, cap

    def _release(self, off: int, cap: int, cmds: list[str]) -> None:
        self.free.append((off, cap))
        self.free.sort()
        cmds.append(f"discard -q {off} {cap}")

    def _take_slot(self) -> int:
        if self.free_slots:
            return self.free_slots.pop(0)
        i = self.slots_used
        if HEADER_SIZE + (i + 1) * SLOT_SIZE > self.index_size:
            raise RuntimeError("blob directory full (the 2011 design sizes it up front)")
        self.slots_used += 1
        return i

    # blobs --------------------------------------------------------------------------
    def put(self, name: str, data: bytes) -> None:
        self.put_many([(name, data)])

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        data_writes: list[tuple[int, bytes]] = []
        slot_writes: list[tuple[int, bytes]] = []
        pre: list[str] = []
        used_before = self.slots_used
        for name, data in items:
            data = bytes(data)
            if len(name.encode()) > NAME_MAX:
                raise ValueError("name too long")
            crc = zlib.crc32(data)
            old = self.slots.get(name)
            if old and len(data) <= old[4]:
                i, off, cap = old[0], old[2], old[4]      # overwrite in place
            else:
                if old:
                    self._release(old[2], old[4], pre)
                    i = old[0]
                else:
                    i = self._take_slot()
                off, cap = self._alloc(len(data))
            self.slots[name] = (i, crc, off, len(data), cap)
            if data:
                data_writes.append((off, data))
            slot_writes.append((HEADER_SIZE + i * SLOT_SIZE,
                                self._slot_bytes(name, crc, off, len(data), cap)))
        if self.slots_used != used_before:
            slot_writes.append((0, self._header()))
        files: list[str] = []
        try:
            cmds = pre + self._write_cmds(data_writes, files, pad=True) + ["flush"]
            cmds += self._write_cmds(slot_writes, files) + ["flush"]
            self._io(cmds)
        finally:
            for f in files:
                os.unlink(f)

    def get(self, name: str) -> bytes:
        _i, crc, off, length, _cap = self.slots[name]
        data = self._read(off, length)
        if zlib.crc32(data) != crc:
            raise ValueError(f"crc32 mismatch in blob {name!r}")
        return data

    def update(self, name: str, offset: int, data: bytes) -> None:
        """Write `data` at `offset` inside the blob; the directory slot is rewritten with the
        new crc32 (the crc covers the whole blob, so the blob is read back to recompute it --
        that read is what the 2011 design would have to do too)."""
        i, _crc, off, length, cap = self.slots[name]
        if offset < 0 or offset + len(data) > length:
            raise ValueError("update outside the blob")
        whole = bytearray(self._read(off, length))
        whole[offset:offset + len(data)] = data
        crc = zlib.crc32(whole)
        self.slots[name] = (i, crc, off, length, cap)
        files: list[str] = []
        try:
            cmds = self._write_cmds([(off + offset, bytes(data))], files) + ["flush"]
            cmds += self._write_cmds([(HEADER_SIZE + i * SLOT_SIZE,
                                       self._slot_bytes(name, crc, off, length, cap))], files)
            self._io(cmds + ["flush"])
        finally:
            for f in files:
                os.unlink(f)

    def delete(self, name: str) -> None:
        i, _crc, off, _length, cap = self.slots.pop(name)
        self.free_slots.append(i)
        self.free_slots.sort()
        cmds: list[str] = []
        files: list[str] = []
        try:
            cmds += self._write_cmds([(HEADER_SIZE + i * SLOT_SIZE, self._slot_bytes(None))], files)
            cmds.append("flush")
            self._release(off, cap, cmds)
            self._io(cmds + ["flush"])
        finally:
            for f in files:
                os.unlink(f)

    def names(self) -> list[str]:
        return sorted(self.slots)

    def fill(self, total: int, chunk: int = 16 * MiB, byte: int = 0x5A, prefix: str = "fill/") -> None:
        """Allocate `total` bytes as `chunk`-byte blobs with qemu-io's pattern writes, in one
        process (no data passes through Python)."""
        cmds: list[str] = []
        slot_writes = []
        used_before = self.slots_used
        pattern = bytes([byte]) * chunk
        crc_full = zlib.crc32(pattern)
        i, left = 0, total
        while left > 0:
            n = min(chunk, left)
            name = f"{prefix}{i:06d}"
            if name in self.slots:
                raise ValueError(f"{name} exists")
            s = self._take_slot()
            off, cap = self._alloc(n)
            crc = crc_full if n == chunk else zlib.crc32(pattern[:n])
            self.slots[name] = (s, crc, off, n, cap)
            cmds.append(f"write -q -P {byte:#x} {off} {n}")
            slot_writes.append((HEADER_SIZE + s * SLOT_SIZE, self._slot_bytes(name, crc, off, n, cap)))
            i += 1
            left -= n
        if self.slots_used != used_before:
            slot_writes.append((0, self._header()))
        files: list[str] = []
        try:
            self._io(cmds + ["flush"] + self._write_cmds(slot_writes, files) + ["flush"])
        finally:
            for f in files:
                os.unlink(f)

    # snapshots ----------------------------------------------------------------------
    def snapshot_create(self, name: str) -> None:
        self._run(["qemu-img", "snapshot", "-c", name, self.path])

    def snapshot_delete(self, name: str) -> None:
        self._run(["qemu-img", "snapshot", "-d", name, self.path])

    def snapshots(self) -> list[str]:
        p = self._run(["qemu-img", "info", "-U", "--output=json", self.path])
        return sorted(s["name"] for s in json.loads(p.stdout).get("snapshots", []))

    def startup_time(self) -> float:
        """Wall time of `qemu-img info` on this image: the process start-up the issue subtracts
        from `qemu-img snapshot -c` (not counted in `processes`)."""
        t = time.perf_counter()
        subprocess.run(["qemu-img", "info", "-U", self.path], capture_output=True, check=True)
        return time.perf_counter() - t

    # maintenance --------------------------------------------------------------------
    def check(self, window: int = 256 * MiB) -> bool:
        """`qemu-img check` (qcow2 metadata), then the crc32 of every blob, reading the data
        region in windows of `window` bytes (one qemu-img process per window)."""
        p = subprocess.run(["qemu-img", "check", "-q", "-U", self.path], capture_output=True)
        self.processes += 1
        if p.returncode != 0:
            return False
        ext = sorted((off, length, crc) for (_i, crc, off, length, _c) in self.slots.values())
        k = 0
        while k < len(ext):
            start = ext[k][0]
            j = k
            end = start
            while j < len(ext) and (ext[j][0] + ext[j][1] - start <= window or j == k):
                end = max(end, ext[j][0] + ext[j][1])
                j += 1
            buf = self._read(start, end - start)
            for off, length, crc in ext[k:j]:
                if zlib.crc32(buf[off - start:off - start + length]) != crc:
                    return False
            k = j
        return True

    def compact(self) -> None:
        """`qemu-img convert -O qcow2` into a new file, then rename over the old one.
        Internal snapshots do not survive: qcow2 has no in-place compaction."""
        tmp = self.path + ".compact"
        cs = self._cluster_size()
        self._run(["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "qcow2",
                   "-o", f"cluster_size={cs}", self.path, tmp])
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        _fsync_dir(os.path.dirname(self.path))
        if self.count_io:
            self.flushes += 2
            # the copy's writes are in the strace log under the same directory

    def _cluster_size(self) -> int:
        p = subprocess.run(["qemu-img", "info", "-U", "--output=json", self.path],
                           capture_output=True, check=True)
        return int(json.loads(p.stdout)["cluster-size"])

    def file_size(self) -> int:
        return os.path.getsize(self.path)


# --------------------------------------------------------------------------------------
# SQLite
# --------------------------------------------------------------------------------------


class SqliteStore(Store):
    """stdlib sqlite3: blobs(name TEXT PRIMARY KEY, data BLOB), WAL, synchronous=FULL.

    `path` is a directory holding store.db (+ -wal, -shm) and snapshots/<name>.db.
    Every put/update/delete is one transaction; put_many is one transaction."""

    kind = "sqlite"

    def __init__(self, path: str, count_io: bool = False):
        super().__init__(path, count_io)
        self.db = os.path.join(self.path, "store.db")
        self.snapdir = os.path.join(self.path, "snapshots")
        self.conn: sqlite3.Connection | None = None
        self.tracer: SelfTracer | None = None
        if count_io:
            self.tracer = SelfTracer(self.path if os.path.isdir(self.path) else os.path.dirname(self.path))

    def _connect(self) -> None:
        self.conn = sqlite3.connect(self.db, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")

    @classmethod
    def create(cls, path: str, count_io: bool = False, page_size: int = 4096) -> "SqliteStore":
        path = os.path.abspath(path)
        if os.path.exists(path):
            shutil.rmtree(path)
        os.makedirs(os.path.join(path, "snapshots"))
        s = cls(path, count_io)
        s.conn = sqlite3.connect(s.db, isolation_level=None, check_same_thread=False)
        s.conn.execute(f"PRAGMA page_size={page_size}")
        s.conn.execute("PRAGMA journal_mode=WAL")
        s.conn.execute("PRAGMA synchronous=FULL")
        s.conn.execute("CREATE TABLE blobs(name TEXT PRIMARY KEY, data BLOB NOT NULL)")
        return s

    @classmethod
    def open(cls, path: str, count_io: bool = False) -> "SqliteStore":
        s = cls(path, count_io)
        if not os.path.exists(s.db):
            raise FileNotFoundError(s.db)
        s._connect()
        s.conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()  # really open it
        return s

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()   # checkpoints the WAL and removes it
            self.conn = None
        if self.tracer is not None:
            self._sync_counters()
            self.tracer.stop()
            self.tracer = None

    # counters -----------------------------------------------------------------------
    _final = None

    def _sync_counters(self) -> None:
        if self.tracer is not None:
            self.tracer.sync()
            self._final = (self.tracer.tally.bytes_written, self.tracer.tally.flushes)

    @property
    def bytes_written(self):
        if self.tracer is not None:
            self._sync_counters()
        return self._final[0] if self._final else None

    @property
    def flushes(self):
        if self.tracer is not None:
            self._sync_counters()
        return self._final[1] if self._final else None

    # blobs --------------------------------------------------------------------------
    def put(self, name: str, data: bytes) -> None:
        self.conn.execute("INSERT OR REPLACE INTO blobs(name, data) VALUES (?, ?)", (name, data))

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            c.executemany("INSERT OR REPLACE INTO blobs(name, data) VALUES (?, ?)", items)
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def get(self, name: str) -> bytes:
        row = self.conn.execute("SELECT data FROM blobs WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise KeyError(name)
        return row[0]

    def update(self, name: str, offset: int, data: bytes) -> None:
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            row = c.execute("SELECT rowid, length(data) FROM blobs WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise KeyError(name)
            if offset < 0 or offset + len(data) > row[1]:
                raise ValueError("update outside the blob")
            with c.blobopen("blobs", "data", row[0]) as b:
                b.seek(offset)
                b.write(data)
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def delete(self, name: str) -> None:
        cur = self.conn.execute("DELETE FROM blobs WHERE name = ?", (name,))
        if cur.rowcount == 0:
            raise KeyError(name)

    def names(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT name FROM blobs ORDER BY name")]

    def fill(self, total: int, chunk: int = 16 * MiB, byte: int = 0x5A, prefix: str = "fill/") -> None:
        block = bytes([byte]) * chunk
        items = []
        i, left = 0, total
        while left > 0:
            n = min(chunk, left)
            items.append((f"{prefix}{i:06d}", n))
            i += 1
            left -= n
        self.put_many((name, block if n == chunk else block[:n]) for name, n in items)

    # snapshots ----------------------------------------------------------------------
    def _snap(self, name: str) -> str:
        return os.path.join(self.snapdir, urllib.parse.quote(name, safe="") + ".db")

    def snapshot_create(self, name: str) -> None:
        target = self._snap(name)
        if os.path.exists(target):
            raise FileExistsError(name)
        self.conn.execute("VACUUM INTO ?", (target,))

    def snapshot_delete(self, name: str) -> None:
        os.unlink(self._snap(name))
        _fsync_dir(self.snapdir)

    def snapshots(self) -> list[str]:
        return sorted(urllib.parse.unquote(f[:-3]) for f in os.listdir(self.snapdir) if f.endswith(".db"))

    # maintenance --------------------------------------------------------------------
    def check(self) -> bool:
        return self.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    def compact(self) -> None:
        self.conn.execute("VACUUM")
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def file_size(self) -> int:
        """store.db + store.db-wal + store.db-shm + every snapshot file."""
        total = 0
        for p in (self.db, self.db + "-wal", self.db + "-shm"):
            if os.path.exists(p):
                total += os.path.getsize(p)
        for f in os.listdir(self.snapdir):
            total += os.path.getsize(os.path.join(self.snapdir, f))
        return total


# --------------------------------------------------------------------------------------
# Directory of plain files (swtpm's directory back end)
# --------------------------------------------------------------------------------------


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PlainFilesStore(Store):
    """One file per blob in `path`/blobs; replaced by write temp, fsync, rename, fsync(dir).

    Small updates rewrite the whole file the same way (swtpm always writes whole state
    files).  Snapshots are `path`/snapshots/<name>/ directories of hard links, which are
    true copies because no blob file is ever modified in place.  Counters are exact: they
    count the write(2) bytes and fsync(2) calls this class makes."""

    kind = "files"

    def __init__(self, path: str, count_io: bool = False):
        super().__init__(path, count_io)
        self.blobdir = os.path.join(self.path, "blobs")
        self.snapdir = os.path.join(self.path, "snapshots")
        self.bytes_written = 0
        self.flushes = 0

    @staticmethod
    def _fname(name: str) -> str:
        return "b." + urllib.parse.quote(name, safe="")

    @classmethod
    def create(cls, path: str, count_io: bool = False) -> "PlainFilesStore":
        path = os.path.abspath(path)
        if os.path.exists(path):
            shutil.rmtree(path)
        os.makedirs(os.path.join(path, "blobs"))
        os.makedirs(os.path.join(path, "snapshots"))
        s = cls(path, count_io)
        _fsync_dir(path)
        s.flushes += 1
        return s

    @classmethod
    def open(cls, path: str, count_io: bool = False) -> "PlainFilesStore":
        s = cls(path, count_io)
        if not os.path.isdir(s.blobdir):
            raise FileNotFoundError(s.blobdir)
        return s

    def _write_file(self, name: str, data: bytes) -> None:
        final = os.path.join(self.blobdir, self._fname(name))
        tmp = final + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                self.bytes_written += n
                view = view[n:]
            os.fsync(fd)
            self.flushes += 1
        finally:
            os.close(fd)
        os.rename(tmp, final)

    def put(self, name: str, data: bytes) -> None:
        self._write_file(name, data)
        _fsync_dir(self.blobdir)
        self.flushes += 1

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        for name, data in items:
            self._write_file(name, data)
        _fsync_dir(self.blobdir)       # one directory flush covers all the renames
        self.flushes += 1

    def get(self, name: str) -> bytes:
        try:
            with open(os.path.join(self.blobdir, self._fname(name)), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise KeyError(name) from None

    def update(self, name: str, offset: int, data: bytes) -> None:
        whole = bytearray(self.get(name))
        if offset < 0 or offset + len(data) > len(whole):
            raise ValueError("update outside the blob")
        whole[offset:offset + len(data)] = data
        self.put(name, bytes(whole))

    def delete(self, name: str) -> None:
        try:
            os.unlink(os.path.join(self.blobdir, self._fname(name)))
        except FileNotFoundError:
            raise KeyError(name) from None
        _fsync_dir(self.blobdir)
        self.flushes += 1

    def names(self) -> list[str]:
        return sorted(urllib.parse.unquote(f[2:]) for f in os.listdir(self.blobdir)
                      if f.startswith("b.") and not f.endswith(".tmp"))

    def fill(self, total: int, chunk: int = 16 * MiB, byte: int = 0x5A, prefix: str = "fill/") -> None:
        block = bytes([byte]) * chunk
        items = []
        i, left = 0, total
        while left > 0:
            n = min(chunk, left)
            items.append((f"{prefix}{i:06d}", n))
            i += 1
            left -= n
        self.put_many((name, block if n == chunk else block[:n]) for name, n in items)

    def snapshot_create(self, name: str) -> None:
        d = os.path.join(self.snapdir, urllib.parse.quote(name, safe=""))
        os.mkdir(d)
        for f in os.listdir(self.blobdir):
            if f.startswith("b.") and not f.endswith(".tmp"):
                os.link(os.path.join(self.blobdir, f), os.path.join(d, f))
        _fsync_dir(d)
        _fsync_dir(self.snapdir)
        self.flushes += 2

    def snapshot_delete(self, name: str) -> None:
        shutil.rmtree(os.path.join(self.snapdir, urllib.parse.quote(name, safe="")))
        _fsync_dir(self.snapdir)
        self.flushes += 1

    def snapshots(self) -> list[str]:
        return sorted(urllib.parse.unquote(f) for f in os.listdir(self.snapdir))

    def snapshot_get(self, snapshot: str, name: str) -> bytes:
        with open(os.path.join(self.snapdir, urllib.parse.quote(snapshot, safe=""),
                               self._fname(name)), "rb") as f:
            return f.read()

    def check(self) -> bool:
        """Plain files carry no checksums: the check reads every file (what a backup tool
        could do), and can only detect unreadable files and leftover temporaries."""
        ok = True
        for f in os.listdir(self.blobdir):
            if f.endswith(".tmp"):
                ok = False
                continue
            with open(os.path.join(self.blobdir, f), "rb") as fh:
                while fh.read(MiB):
                    pass
        return ok

    def compact(self) -> None:
        """Nothing to compact: the file system reclaims space on unlink.  Removes temporaries."""
        for f in os.listdir(self.blobdir):
            if f.endswith(".tmp"):
                os.unlink(os.path.join(self.blobdir, f))

    def file_size(self) -> int:
        """Apparent size of every blob file, counting hard-linked snapshot files once."""
        seen, total = set(), 0
        for root, _dirs, files in os.walk(self.path):
            for f in files:
                st = os.stat(os.path.join(root, f))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_size
        return total


PEERS = {"qcow2": Qcow2Store, "sqlite": SqliteStore, "files": PlainFilesStore}
