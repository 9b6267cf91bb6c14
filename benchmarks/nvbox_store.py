"""nvbox behind the benchmark `Store` interface (see peers.py and PEERS.md).

    s = NvboxStore.create(path, count_io=False, cluster_size=4096, encrypt=False, key=None)
    s = NvboxStore.open(path, count_io=False, key=None)

`path` is the image file (as for Qcow2Store).  Every `put`/`update`/`delete` is one
nvbox commit (write the new clusters, flush, write the commit slot, flush); `put_many` and
`fill` are one transaction, so one commit.  Snapshots are nvbox's own.

Counters.  nvbox runs in this process, so there is no child to strace.  The image is
opened on a `nvbox.CountingDevice` wrapped around the `FileDevice`, created here before the
library sees the file, so that every `pwrite` the library makes (including the ones
`nvbox.create` makes before it returns) passes through the counter.  That counter sits
below the library's own CountingDevice, so `img.reset_stats()` does not reset it.  `bytes_written` is the
sum of the bytes handed to `os.pwrite` and `flushes` the number of `fdatasync` calls:
exactly the calls PEERS.md counts with strace for the other peers.
`tests/test_nvbox_store.py::test_device_counters_agree_with_strace` shows that an strace of
this process gives the same two numbers.  Counting is free, so the counters are always
kept (as for PlainFilesStore); `count_io` is accepted for symmetry.

`stats()` adds the library's own counters (clusters written and read, commits).
"""

from __future__ import annotations

import os
import sys
from typing import Iterable

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
try:
    import nvbox  # installed in the venv (pip install -e .)
except ImportError:  # pragma: no cover - a bare checkout
    sys.path.insert(0, os.path.join(_HERE, "..", "reference"))
    import nvbox

from nvbox.blockdev import CountingDevice, FileDevice  # noqa: E402
from nvbox.errors import NvboxError  # noqa: E402

from peers import MiB, Store  # noqa: E402


def have_crypto() -> tuple[bool, str]:
    """(available, reason): whether nvbox.crypto can create encrypted images."""
    try:
        from nvbox import crypto  # noqa: F401
    except ImportError as exc:
        return False, f"nvbox.crypto is not in the library yet ({exc})"
    if not hasattr(crypto, "Key"):
        return False, "nvbox.crypto has no Key class yet"
    return True, ""


def make_key(passphrase: bytes = b"benchmark passphrase"):
    """A key for encrypted images, with the cheapest KDF the library offers."""
    from nvbox import crypto
    Key = crypto.Key
    for kwargs in ({"kdf": "fast"}, {}):
        try:
            return Key.from_passphrase(passphrase, **kwargs)
        except TypeError:
            continue
    raise RuntimeError("nvbox.crypto.Key.from_passphrase has an unexpected signature")


class NvboxStore(Store):
    """An nvbox image file, driven through the public library API in this process."""

    kind = "nvbox"

    def __init__(self, path: str, count_io: bool = False):
        super().__init__(path, count_io)
        self.img = None
        self.dev: CountingDevice | None = None
        self._base_bytes = 0     # counts of devices closed earlier (reopen, compact)
        self._base_flushes = 0

    # construction -------------------------------------------------------------------
    @classmethod
    def create(cls, path: str, count_io: bool = False, cluster_size: int = 4096,
               encrypt: bool = False, key=None) -> "NvboxStore":
        s = cls(path, count_io)
        if os.path.exists(s.path):
            os.unlink(s.path)
        if encrypt and key is None:
            key = make_key()
        s.dev = CountingDevice(FileDevice(s.path, writable=True, create=True))
        # The outer CountingDevice is the library's (img.stats, img.reset_stats); the inner
        # one is ours and is never reset, so reset_stats() cannot disturb our counters.
        s.img = nvbox.create(CountingDevice(s.dev), cluster_size=cluster_size, encrypt=encrypt, key=key)
        s.img.path = s.path
        s._key = key
        return s

    @classmethod
    def open(cls, path: str, count_io: bool = False, key=None) -> "NvboxStore":
        s = cls(path, count_io)
        if not os.path.exists(s.path):
            raise FileNotFoundError(s.path)
        s._key = key
        s._open()
        return s

    def _open(self) -> None:
        self.dev = CountingDevice(FileDevice(self.path, writable=True))
        try:
            self.img = nvbox.open(CountingDevice(self.dev), "rw", key=self._key)
        except BaseException:
            self.dev.close()
            raise
        self.img.path = self.path

    def close(self) -> None:
        if self.img is not None:
            self._fold_counters()
            self.img.close()
            self.img = None

    def _fold_counters(self) -> None:
        st = self.dev.stats
        self._base_bytes += st.bytes_written
        self._base_flushes += st.flushes
        st.reset()

    # counters -----------------------------------------------------------------------
    @property
    def bytes_written(self) -> int:
        return self._base_bytes + (self.dev.stats.bytes_written if self.dev else 0)

    @property
    def flushes(self) -> int:
        return self._base_flushes + (self.dev.stats.flushes if self.dev else 0)

    def stats(self) -> dict:
        """The library's counters for this handle (clusters written/read, commits, ...)."""
        return dict(self.img.stats)

    # blobs --------------------------------------------------------------------------
    def put(self, name: str, data: bytes) -> None:
        self.img.put(name, data)

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        img = self.img
        with img.transaction():
            for name, data in items:
                img.put(name, data)

    def get(self, name: str) -> bytes:
        try:
            return self.img.read(name)
        except NvboxError as exc:
            if exc.code == "blob.not_found":
                raise KeyError(name) from None
            raise

    def update(self, name: str, offset: int, data: bytes) -> None:
        try:
            size = self.img.stat(name).size
        except NvboxError as exc:
            if exc.code == "blob.not_found":
                raise KeyError(name) from None
            raise
        if offset < 0 or offset + len(data) > size:
            raise ValueError("update outside the blob")
        self.img.write(name, offset, data, create=False)

    def delete(self, name: str) -> None:
        try:
            self.img.delete(name)
        except NvboxError as exc:
            if exc.code == "blob.not_found":
                raise KeyError(name) from None
            raise

    def names(self) -> list[str]:
        return self.img.names()

    def fill(self, total: int, chunk: int = 16 * MiB, byte: int = 0x5A, prefix: str = "fill/",
             per_commit: int = 1 << 40) -> None:
        """`total` bytes as `chunk`-byte blobs, written as big sequential writes in one
        transaction (or one per `per_commit` bytes)."""
        block = bytes([byte]) * chunk
        i, left = 0, total
        img = self.img
        while left > 0:
            with img.transaction():
                done = 0
                while left > 0 and done < per_commit:
                    n = min(chunk, left)
                    img.put(f"{prefix}{i:06d}", block if n == chunk else block[:n])
                    i += 1
                    left -= n
                    done += n

    # snapshots ----------------------------------------------------------------------
    def snapshot_create(self, name: str) -> None:
        self.img.snapshots.create(name)

    def snapshot_delete(self, name: str) -> None:
        self.img.snapshots.delete(name)

    def snapshots(self) -> list[str]:
        return sorted(s.name for s in self.img.snapshots.list())

    def snapshot_get(self, snapshot: str, name: str) -> bytes:
        return self.img.snapshots.view(snapshot)[name]

    # maintenance --------------------------------------------------------------------
    def check(self) -> bool:
        from nvbox.check import check_image
        return check_image(self.img).verdict == "clean"

    def compact(self) -> dict:
        from nvbox.compact import compact_image
        return compact_image(self.img)

    def file_size(self) -> int:
        return os.path.getsize(self.path)

    def drop_caches(self) -> None:
        """Forget the decoded-node cache, so the next reads go to the file."""
        self.img.store._cache.clear()
