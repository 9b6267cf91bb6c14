"""``BlobIO``: a file-like view of one blob (``Image.open_blob``)."""

from __future__ import annotations

import io

from .errors import raise_code

__all__ = ["BlobIO"]


class BlobIO(io.RawIOBase):
    """A file-like view of one blob: read, write, seek, tell, truncate.

    Each write is its own commit unless made inside ``image.transaction()``.
    """

    def __init__(self, image: Image, name: str, mode: str):
        super().__init__()
        self.image, self.name, self.mode = image, name, mode
        self._pos = image.stat(name).size if mode.startswith("a") else 0

    def readable(self):
        return True

    def writable(self):
        return self.mode != "rb"

    def seekable(self):
        return True

    def readinto(self, b) -> int:
        data = self.image.read(self.name, self._pos, len(b))
        b[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def write(self, b) -> int:
        if not self.writable():
            raise_code("image.readonly", "blob handle opened read-only")
        if self.mode.startswith("a"):
            self._pos = self.image.stat(self.name).size
        data = bytes(b)
        self.image.write(self.name, self._pos, data, create=False)
        self._pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: None}[whence]
        if base is None:
            base = self.image.stat(self.name).size
        if base + offset < 0:
            raise_code("usage.argument", "seek before the start of the blob")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        self.image.truncate(self.name, size)
        return size
