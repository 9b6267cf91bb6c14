"""Laziness: opening a 64 MiB image and reading its directory root reads only the
header area, the active slot again and the directory root's cluster."""
from __future__ import annotations

import io

from kaitaistruct import KaitaiStream

import mkimage


class CountingReader(io.RawIOBase):
    """A read-only file wrapper that counts the bytes handed out."""

    def __init__(self, f):
        self.f, self.bytes_read, self.reads = f, 0, []

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, off, whence=0):
        return self.f.seek(off, whence)

    def tell(self):
        return self.f.tell()

    def readinto(self, b):
        pos = self.f.tell()
        n = self.f.readinto(b)
        self.bytes_read += n or 0
        self.reads.append((pos, n))
        return n

    def read(self, n=-1):
        pos = self.f.tell()
        data = self.f.read(n)
        self.bytes_read += len(data)
        self.reads.append((pos, len(data)))
        return data


def test_directory_root_of_64mib_image_is_lazy(tmp_path, ksy):
    p = tmp_path / "big.nvbox"
    big = bytes(range(256)) * (60 * 4096)           # 60 MiB: a depth-2 cluster map
    info = mkimage.build(p, {"disk/big": big, "tpm/permanent": b"t" * 300})
    cs = info["cluster_size"]
    assert p.stat().st_size >= 60 * 2 ** 20
    with open(p, "rb") as f:
        r = CountingReader(f)
        img = ksy.Nvbox(KaitaiStream(r))
        names = {e.body.name.value: e.body for e in img.dir_root_node.body.entries}
        assert set(names) == {"disk/big", "tpm/permanent"}
        assert names["disk/big"].size.value == len(big)
        assert names["disk/big"].content.clusters.depth.value == 2
        # header area (2048) + the active slot re-read (512) + one directory cluster
        assert r.bytes_read <= 2048 + 512 + cs, r.reads
        # following the map to one data cluster reads 2 map nodes and 1 data cluster
        before = r.bytes_read
        node = names["disk/big"].content.clusters.root_node
        data = node.entries[0].child.entries[3].child.data
        assert data == big[3 * cs:4 * cs]
        assert r.bytes_read - before == 3 * cs, r.reads
