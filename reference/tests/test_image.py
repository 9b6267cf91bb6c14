"""The Image API, method by method: blobs, partial writes, BlobIO, transactions
[R-commit-1] [R-commit-4], read-only mode, the writer's lock [R-lock-1], fixed
capacity [R-alloc-3], feature bits [R-feature-1..3], header extensions
[R-header-11] [R-header-12], and slot choice [R-slot-3] [R-slot-4]."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import textwrap

import pytest

import nvbox
from nvbox import _format as fmt
from nvbox.blockdev import BlockDevice, MemoryDevice
from nvbox.check import check_image
from nvbox.errors import NvboxError, raise_code

from helpers import active_slot_index, fix_header_crc, image_bytes, read_active_slot, reslot



def code_of(fn, *args, **kw):
    with pytest.raises(NvboxError) as ei:
        fn(*args, **kw)
    return ei.value.code


def reopen(img, mode="rw"):
    return nvbox.open(bytes(img.dev.inner.data), mode)


def clean(img):
    r = check_image(img)
    assert r.verdict == "clean", (r.corruptions, r.leaks[:5], r.refcount_errors[:5])


@pytest.fixture(params=[512, 4096])
def img(request):
    return nvbox.create(None, cluster_size=request.param)


# -- dict-like blobs ------------------------------------------------------------------

def test_put_get_contains_len_iter(img):
    big = os.urandom(3 * img.cluster_size + 17)
    img["a"] = b"hello"
    img["tpm/permanent"] = big
    img.put("empty", b"")
    assert img["a"] == b"hello" and img["tpm/permanent"] == big and img["empty"] == b""
    assert "a" in img and "b" not in img and "" not in img and "x\0" not in img
    assert len(img) == 3
    assert list(img) == sorted(["a", "tpm/permanent", "empty"]) == img.names() == img.keys()
    assert dict(img.items()) == {"a": b"hello", "tpm/permanent": big, "empty": b""}
    assert img.get("missing") is None and img.get("missing", b"d") == b"d" and img.get("a") == b"hello"
    st = img.stat("tpm/permanent")
    assert (st.name, st.size, st.inline, st.depth) == ("tpm/permanent", len(big), False, 0 if len(big) <= img.cluster_size else 1)
    assert img.stat("a").inline
    assert {e.name for e in img.entries()} == {"a", "tpm/permanent", "empty"}
    clean(img)
    r = reopen(img, "r")
    assert r["tpm/permanent"] == big and len(r) == 3


def test_replace_and_delete(img):
    img["x"] = b"1" * 5000
    img["x"] = b"2"
    assert img["x"] == b"2" and len(img) == 1
    del img["x"]
    assert "x" not in img and len(img) == 0
    assert code_of(img.delete, "x") == "blob.not_found"
    assert code_of(img.__getitem__, "x") == "blob.not_found"
    assert code_of(img.stat, "x") == "blob.not_found"
    assert code_of(img.truncate, "x", 5) == "blob.not_found"
    assert img.slot.dir_depth == 0 and img.slot.dir_root.is_null
    clean(img)


@pytest.mark.parametrize("bad", ["", "a\0b", "n" * 256, b"\xff\xfe"])
def test_bad_names(img, bad):
    """[R-dir-3] names are 1..255 bytes of UTF-8 without NUL."""
    assert code_of(img.put, bad, b"x") == "blob.name"
    assert code_of(img.read, bad) == "blob.name"
    assert code_of(img.write, bad, 0, b"x") == "blob.name"


def test_name_limits(img):
    name = "é" * 127 + "x"   # 255 bytes
    img[name] = b"v"
    assert reopen(img)[name] == b"v"


def test_inline_boundary(img):
    """[R-dir-3] stored inline exactly when size <= inline_max."""
    m = img.geo.inline_max
    img["in"] = b"i" * m
    img["out"] = b"o" * (m + 1)
    assert img.stat("in").inline and not img.stat("out").inline
    img.truncate("out", m)
    assert img.stat("out").inline and img["out"] == b"o" * m
    img.write("in", m, b"!")
    assert not img.stat("in").inline and img["in"] == b"i" * m + b"!"
    clean(img)


def test_read_offset_length(img):
    data = os.urandom(5 * img.cluster_size + 3)
    img["b"] = data
    for off, n in [(0, 0), (0, 1), (1, 10), (img.cluster_size - 1, 2), (100, None), (len(data) - 1, 5),
                   (len(data), 5), (len(data) + 100, 5), (3, 4 * img.cluster_size)]:
        want = data[off:] if n is None else data[off:off + n]
        assert img.read("b", off, n) == want
    assert code_of(img.read, "b", -1) == "usage.argument"
    assert code_of(img.read, "b", 0, -1) == "usage.argument"


def test_partial_write_and_extend(img):
    cs = img.cluster_size
    model = bytearray(os.urandom(3 * cs))
    img["b"] = bytes(model)
    for off, n in [(5, 10), (cs - 3, 6), (0, cs), (2 * cs + 1, cs + 100), (10 * cs, 7)]:
        chunk = os.urandom(n)
        img.write("b", off, chunk)
        if off > len(model):
            model.extend(bytes(off - len(model)))
        model[off:off + n] = chunk
        assert img["b"] == bytes(model)
    img.write("new", 100, b"abc")                   # creates, zero-filled
    assert img["new"] == bytes(100) + b"abc"
    assert code_of(img.write, "nope", 0, b"x", create=False) == "blob.not_found"
    assert code_of(img.write, "b", -1, b"x") == "usage.argument"
    img.write("b", 0, b"")                         # empty write changes nothing
    assert img["b"] == bytes(model)
    clean(img)
    assert reopen(img)["b"] == bytes(model)


def test_truncate(img):
    cs = img.cluster_size
    data = os.urandom(40 * cs + 5)
    img["b"] = data
    for size in (40 * cs, 33 * cs + 1, 17 * cs, cs + 1, cs, 5, 0):
        img.truncate("b", size)
        assert img["b"] == data[:size] and img.stat("b").size == size
        clean(img)
    img.truncate("b", 3 * cs + 7)                  # extend with zeros
    assert img["b"] == bytes(3 * cs + 7)
    img["c"] = data
    img.truncate("c", 2 * cs + 1)
    img.truncate("c", 5 * cs)                      # old bytes must not reappear (R-map-3)
    assert img["c"] == data[:2 * cs + 1] + bytes(5 * cs - 2 * cs - 1)
    assert code_of(img.truncate, "c", -1) == "usage.argument"
    assert code_of(img.truncate, "c", (1 << 48) + 1) == "blob.too_large"
    clean(img)


def test_sparse_large_blob(img):
    """[R-map-2] holes read as zeros; a far write makes a deep map."""
    img.write("sparse", 1 << 30, b"end")
    assert img.stat("sparse").size == (1 << 30) + 3
    assert img.read("sparse", 0, 100) == bytes(100)
    assert img.read("sparse", 1 << 30) == b"end"
    assert img.stat("sparse").depth == img.geo.map_depth((1 << 30) + 3)
    clean(img)


def test_closed_handle(img):
    img["a"] = b"x"
    img.close()
    assert code_of(img.__getitem__, "a") == "image.closed"
    assert code_of(img.put, "a", b"y") == "image.closed"
    assert code_of(len, img) == "image.closed"
    img.close()   # idempotent


def test_create_rejects_bad_arguments(tmp_path):
    assert code_of(nvbox.create, None, cluster_size=1000) == "usage.argument"
    assert code_of(nvbox.create, None, cluster_size=256) == "usage.argument"
    assert code_of(nvbox.create, None, cluster_size=4 << 20) == "usage.argument"
    p = tmp_path / "x.nvbox"
    nvbox.create(p).close()
    assert code_of(nvbox.create, p) == "image.exists"
    assert code_of(nvbox.open, p, "w") == "usage.argument"
    assert code_of(nvbox.open, tmp_path / "missing.nvbox") == "io.error"


# -- BlobIO --------------------------------------------------------------------------

def test_blobio_read_seek(img):
    data = os.urandom(3 * img.cluster_size + 11)
    img["f"] = data
    f = img.open_blob("f")
    assert f.readable() and f.seekable() and not f.writable()
    assert f.read(10) == data[:10] and f.tell() == 10
    assert f.seek(5, io.SEEK_CUR) == 15 and f.read(3) == data[15:18]
    assert f.seek(-4, io.SEEK_END) == len(data) - 4 and f.read() == data[-4:]
    assert f.read(5) == b""
    assert f.seek(0) == 0 and f.readall() == data
    f.seek(len(data) + 50)
    assert f.read(1) == b""
    buf = bytearray(7)
    f.seek(2)
    assert f.readinto(buf) == 7 and bytes(buf) == data[2:9]
    assert code_of(f.seek, -1) == "usage.argument"
    assert code_of(f.seek, -len(data) - 1, io.SEEK_END) == "usage.argument"
    assert code_of(f.write, b"x") == "image.readonly"
    assert io.BufferedReader(img.open_blob("f")).read() == data


def test_blobio_modes(img):
    img["f"] = b"0123456789"
    with img.open_blob("f", "r+b") as f:
        assert f.writable()
        f.seek(3)
        assert f.write(b"abc") == 3 and f.tell() == 6
        f.seek(0, io.SEEK_END)
        f.write(b"XY")
    assert img["f"] == b"012abc6789XY"
    with img.open_blob("f", "wb") as f:       # truncates
        assert img["f"] == b""
        f.write(b"new")
    assert img["f"] == b"new"
    with img.open_blob("g", "wb") as f:       # creates
        f.write(b"g" * (img.cluster_size + 5))
    assert img["g"] == b"g" * (img.cluster_size + 5)
    with img.open_blob("f", "ab") as f:       # appends, wherever the position is
        assert f.tell() == 3
        f.seek(0)
        f.write(b"+1")
        f.write(b"+2")
    assert img["f"] == b"new+1+2"
    with img.open_blob("h", "ab") as f:       # append creates
        f.write(b"h")
    assert img["h"] == b"h"
    with img.open_blob("f", "r+b") as f:
        f.seek(2)
        assert f.truncate() == 2
        assert img["f"] == b"ne"
        f.truncate(6)
    assert img["f"] == b"ne" + bytes(4)
    assert code_of(img.open_blob, "missing") == "blob.not_found"
    assert code_of(img.open_blob, "missing", "r+b") == "blob.not_found"
    assert code_of(img.open_blob, "f", "rt") == "usage.argument"
    assert code_of(img.open_blob, "f", "x") == "usage.argument"
    clean(img)


def test_blobio_write_each_commits_unless_transaction(img):
    img["f"] = b""
    f = img.open_blob("f", "r+b")
    g0 = img.generation
    f.write(b"a")
    f.write(b"b")
    assert img.generation == g0 + 2
    with img.transaction():
        f.write(b"c")
        f.write(b"d")
    assert img.generation == g0 + 3 and img["f"] == b"abcd"


def test_blobio_readonly_image(tmp_path):
    p = tmp_path / "i.nvbox"
    with nvbox.create(p) as w:
        w["f"] = b"data"
    with nvbox.open(p) as r:
        assert r.open_blob("f").read() == b"data"
        assert code_of(r.open_blob, "f", "r+b") == "image.readonly"
        assert code_of(r.open_blob, "f", "wb") == "image.readonly"
        assert code_of(r.open_blob, "f", "ab") == "image.readonly"


# -- transactions ---------------------------------------------------------------------

def test_transaction_is_one_commit(img):
    img["keep"] = b"k"
    g0, c0 = img.generation, img.stats["commits"]
    with img.transaction():
        img["a"] = b"1"
        img["b"] = b"2" * 3000
        del img["keep"]
        img.write("a", 1, b"x")
        assert img["a"] == b"1x"                # visible inside
        assert img.generation == g0            # but not committed
        assert reopen(img, "r").names() == ["keep"]
    assert img.generation == g0 + 1 and img.stats["commits"] == c0 + 1
    assert reopen(img, "r").names() == ["a", "b"]
    clean(img)


class Boom(Exception):
    pass


def test_transaction_exception_rolls_back(img):
    """An exception inside the block leaves the last commit (all-or-nothing)."""
    img["a"] = b"old"
    img["big"] = b"B" * 5000
    g0 = img.generation
    before = bytes(img.dev.inner.data[:2048])
    with pytest.raises(Boom):
        with img.transaction():
            img["a"] = b"new"
            img["c"] = b"c" * 9000
            del img["big"]
            img.truncate("a", 1)
            raise Boom
    assert img.generation == g0
    assert img["a"] == b"old" and img["big"] == b"B" * 5000 and "c" not in img
    assert bytes(img.dev.inner.data[:2048]) == before      # no slot written
    clean(img)
    img["d"] = b"after"                                  # handle still usable
    assert reopen(img)["d"] == b"after"
    clean(img)


def test_transaction_nvbox_error_rolls_back(img):
    img["a"] = b"old"
    with pytest.raises(NvboxError) as ei:
        with img.transaction():
            img["a"] = b"new"
            del img["missing"]
    assert ei.value.code == "blob.not_found"
    assert img["a"] == b"old"
    clean(img)


def test_nested_transactions_join(img):
    g0 = img.generation
    with img.transaction():
        img["a"] = b"1"
        with img.transaction():
            img["b"] = b"2"
        assert img.generation == g0             # inner end does not commit
        img["c"] = b"3"
    assert img.generation == g0 + 1 and img.names() == ["a", "b", "c"]
    with pytest.raises(Boom):
        with img.transaction():
            img["d"] = b"4"
            with img.transaction():
                img["e"] = b"5"
                raise Boom
    assert img.generation == g0 + 1 and img.names() == ["a", "b", "c"]
    with pytest.raises(Boom):
        with img.transaction():
            with img.transaction():
                img["f"] = b"6"
            raise Boom                          # outer fails after inner finished
    assert "f" not in img and img.generation == g0 + 1
    clean(img)


def test_empty_transaction_commits_nothing(img):
    g0 = img.generation
    with img.transaction():
        pass
    assert img.generation == g0


def test_snapshot_ops_refused_inside_transaction(img):
    img["a"] = b"1"
    with pytest.raises(NvboxError) as ei:
        with img.transaction():
            img.snapshots.create("s")
    assert ei.value.code == "usage.argument"
    assert len(img.snapshots) == 0


# -- read-only mode ---------------------------------------------------------------------

def test_readonly_refuses_writes(tmp_path):
    p = tmp_path / "ro.nvbox"
    with nvbox.create(p) as w:
        w["a"] = b"x" * 100
        w.snapshots.create("s")
    size = os.path.getsize(p)
    before = p.read_bytes()
    with nvbox.open(p, "r") as r:
        calls = [lambda: r.put("b", b"y"), lambda: r.__setitem__("a", b"z"), lambda: r.delete("a"),
                 lambda: r.write("a", 0, b"q"), lambda: r.truncate("a", 1), lambda: r.transaction().__enter__(),
                 lambda: r.snapshots.create("t"), lambda: r.snapshots.delete("s"),
                 lambda: r.snapshots.revert("s"), lambda: r.snapshots.rename("s", "u")]
        for c in calls:
            assert code_of(c) == "image.readonly"
        assert r["a"] == b"x" * 100 and r.snapshots.view("s")["a"] == b"x" * 100
        from nvbox.check import repair_image
        assert code_of(repair_image, r) == "image.readonly"
    assert os.path.getsize(p) == size and p.read_bytes() == before
    r2 = nvbox.open(bytes(before), "r")
    assert code_of(r2.put, "b", b"y") == "image.readonly"


# -- the writer's lock --------------------------------------------------------------------

def test_second_writer_locked(tmp_path):
    """[R-lock-1] a second writer gets image.locked; readers take no lock."""
    p = tmp_path / "l.nvbox"
    w = nvbox.create(p)
    w["a"] = b"1"
    assert code_of(nvbox.open, p, "rw") == "image.locked"
    with nvbox.open(p, "r") as r:            # a reader is fine
        assert r["a"] == b"1"
    w.close()
    with nvbox.open(p, "rw") as w2:          # released on close
        w2["b"] = b"2"
        assert code_of(nvbox.open, p, "rw") == "image.locked"
    with nvbox.open(p, "rw") as w3:
        assert w3.names() == ["a", "b"]


def test_second_writer_locked_across_processes(tmp_path):
    p = tmp_path / "lp.nvbox"
    nvbox.create(p).close()
    script = textwrap.dedent(f"""
        import sys, time, nvbox
        img = nvbox.open({str(p)!r}, "rw")
        img["child"] = b"here"
        print("locked", flush=True)
        sys.stdin.readline()
        img.close()
    """)
    # the child imports the same nvbox as this process
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(nvbox.__file__))))
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "locked"
        assert code_of(nvbox.open, p, "rw") == "image.locked"
        with nvbox.open(p, "r") as r:
            assert r["child"] == b"here"
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(timeout=30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    with nvbox.open(p, "rw") as w:
        w["parent"] = b"ok"
    # and the other way round: the parent holds the lock, the child is refused
    w = nvbox.open(p, "rw")
    try:
        probe = textwrap.dedent(f"""
            import nvbox
            try:
                nvbox.open({str(p)!r}, "rw")
            except nvbox.NvboxError as e:
                print(e.code)
            else:
                print("opened")
        """)
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
        assert out.stdout.strip() == "image.locked", out.stderr
    finally:
        w.close()


# -- fixed capacity ----------------------------------------------------------------------------

def fill_until_full(img, size, prefix="b"):
    written = {}
    i = 0
    with pytest.raises(NvboxError) as ei:
        while True:
            data = os.urandom(size)
            img[f"{prefix}{i}"] = data
            written[f"{prefix}{i}"] = data
            i += 1
            assert i < 10000, "a fixed image never filled up"
    assert ei.value.code == "space.exhausted"
    return written


def test_fixed_capacity_file(tmp_path):
    """[R-alloc-3] [R-commit-4] filling a fixed image ends in space.exhausted; the
    image opens at its last commit with every earlier blob intact and clean."""
    p = tmp_path / "fixed.nvbox"
    img = nvbox.create(p, capacity="256K")
    assert img.header.capacity_clusters == 64
    written = fill_until_full(img, 10000)
    assert written, "nothing fitted"
    gen = img.generation
    assert os.path.getsize(p) == 256 * 1024
    # the handle is back at the last commit
    assert {n: img[n] for n in img.names()} == written
    clean(img)
    img.close()
    with nvbox.open(p, "rw") as again:
        assert again.generation == gen
        assert {n: again[n] for n in again.names()} == written
        clean(again)
        assert again.slot.image_clusters <= 64
        # freeing space makes room again
        first = sorted(written)[0]
        del again[first]
        again["after"] = b"z" * 5000
        clean(again)


def test_fixed_capacity_memory_large_blob_fails_cleanly():
    img = nvbox.create(None, cluster_size=512, capacity=64 * 1024)
    img["small"] = b"s" * 1000
    g = img.generation
    assert code_of(img.put, "huge", os.urandom(70 * 1024)) == "space.exhausted"
    assert img.generation == g and img.names() == ["small"] and img["small"] == b"s" * 1000
    clean(img)
    r = reopen(img)
    assert r.names() == ["small"] and r.generation == g
    # a transaction that overflows is abandoned as a whole
    with pytest.raises(NvboxError) as ei:
        with img.transaction():
            img["t1"] = b"1" * 600
            img["t2"] = os.urandom(80 * 1024)
    assert ei.value.code == "space.exhausted"
    assert img.names() == ["small"]
    clean(img)


def test_fixed_capacity_too_small():
    assert code_of(nvbox.create, None, cluster_size=4096, capacity=8192) == "space.exhausted"


# -- failed writes leave the last commit (R-commit-4) ---------------------------------------------

class FailingDevice(BlockDevice):
    """Fails every write (or flush) once armed."""

    def __init__(self, inner):
        self.inner = inner
        self.fail_writes = False
        self.fail_flush_at = None
        self.flushes = 0

    @property
    def growable(self):
        return self.inner.growable

    def read(self, o, n):
        return self.inner.read(o, n)

    def write(self, o, d):
        if self.fail_writes:
            raise_code("io.error", "injected write failure")
        self.inner.write(o, d)

    def flush(self):
        self.flushes += 1
        if self.fail_flush_at is not None and self.flushes >= self.fail_flush_at:
            raise_code("io.error", "injected flush failure")
        self.inner.flush()

    def size(self):
        return self.inner.size()

    def truncate(self, n):
        self.inner.truncate(n)


@pytest.mark.parametrize("how", ["write", "first flush", "second flush"])
def test_failed_operation_keeps_last_commit(how):
    """[R-commit-4] [R-commit-5] a failed write or flush abandons the transaction; after a
    failure at the slot's flush the handle continues from whichever slot the device holds."""
    mem = MemoryDevice()
    dev = FailingDevice(mem)
    img = nvbox.create(dev, cluster_size=512)
    img["a"] = b"A" * 3000
    img["b"] = b"b"
    g = img.generation
    snapshot_bytes = bytes(mem.data)
    if how == "write":
        dev.fail_writes = True
    else:
        dev.fail_flush_at = dev.flushes + (1 if how == "first flush" else 2)
    with pytest.raises(NvboxError) as ei:
        with img.transaction():
            img["a"] = b"Z" * 5000
            img["c"] = b"c" * 2000
            del img["b"]
    assert ei.value.code == "io.error"
    dev.fail_writes, dev.fail_flush_at = False, None
    if how != "second flush":
        # the slot was never written: the durable image is the old one
        fresh = nvbox.open(bytes(mem.data), "r")
        assert fresh.generation == g
        assert fresh["a"] == b"A" * 3000 and fresh["b"] == b"b" and "c" not in fresh
        assert bytes(mem.data[:2048]) == snapshot_bytes[:2048]
    else:
        # the slot write happened before the failing barrier: either generation is acceptable
        fresh = nvbox.open(bytes(mem.data), "r")
        assert fresh.generation in (g, g + 1)
    clean(fresh)
    # the handle is usable again and at a committed state
    if not img._closed:
        assert img.generation in (g, g + 1)
        img["d"] = b"d" * 700
        assert nvbox.open(bytes(mem.data))["d"] == b"d" * 700
        clean(img)


# -- feature bits -------------------------------------------------------------------------------

def test_unknown_compatible_bits_kept_autoclear_cleared():
    """[R-feature-2] [R-feature-3]"""
    img = nvbox.create(None)
    img["a"] = b"1"
    raw = reslot(image_bytes(img), compatible_features=(1 << 5) | (1 << 63), autoclear_features=(1 << 3) | (1 << 40))
    r = nvbox.open(bytes(raw), "r")
    assert r["a"] == b"1" and r.slot.compatible_features == (1 << 5) | (1 << 63)
    w = nvbox.open(bytes(raw), "rw")
    w["b"] = b"2"
    s = read_active_slot(w.dev.inner.data)
    assert s.generation == r.generation + 1
    assert s.compatible_features == (1 << 5) | (1 << 63)
    assert s.autoclear_features == 0
    w["c"] = b"3"
    s = read_active_slot(w.dev.inner.data)
    assert s.compatible_features == (1 << 5) | (1 << 63) and s.autoclear_features == 0
    clean(w)


@pytest.mark.parametrize("bit", [1, 7, 63])
def test_unknown_incompatible_bit_refused(bit):
    """[R-feature-1]"""
    img = nvbox.create(None)
    img["a"] = b"1"
    raw = reslot(image_bytes(img), incompatible_features=1 << bit)
    assert code_of(nvbox.open, bytes(raw), "r") == "feature.incompatible"
    assert code_of(nvbox.open, bytes(raw), "rw") == "feature.incompatible"


# -- header extensions ------------------------------------------------------------------------

def add_extension(raw, ext_type, flags, data) -> bytearray:
    raw = bytearray(raw)
    h = fmt.decode_header(bytes(raw[:2048]))
    pos = h.header_length
    for e in h.extensions:
        pos += 8 + (len(e.ext_data) + 7) // 8 * 8
    struct.pack_into("<HHI", raw, pos, ext_type, flags, len(data))
    raw[pos + 8:pos + 8 + len(data)] = data
    fix_header_crc(raw)
    return raw


def test_unknown_optional_extension_ignored_and_preserved():
    """[R-header-12]"""
    img = nvbox.create(None)
    img["a"] = b"1"
    raw = add_extension(image_bytes(img), 999, 0, b"future!")
    w = nvbox.open(bytes(raw), "rw")
    assert w["a"] == b"1"
    assert any(e.ext_type == 999 and e.ext_data == b"future!" for e in w.header.extensions)
    header = bytes(raw[:512])
    w["b"] = b"2"
    w.snapshots.create("s")
    del w["a"]
    assert bytes(w.dev.inner.data[:512]) == header       # the header is never rewritten [R-header-1]
    r = nvbox.open(bytes(w.dev.inner.data), "r")
    assert [e.ext_type for e in r.header.extensions] == [1, 999]


def test_unknown_required_extension_refused():
    """[R-header-11]"""
    img = nvbox.create(None)
    raw = add_extension(image_bytes(img), 999, 1, b"must know")
    assert code_of(nvbox.open, bytes(raw), "r") == "header.extension_required"


def test_header_never_rewritten(img):
    h = bytes(img.dev.inner.data[:512])
    img["a"] = os.urandom(9000)
    img.snapshots.create("s")
    img.truncate("a", 3)
    assert bytes(img.dev.inner.data[:512]) == h


# -- slot choice ---------------------------------------------------------------------------------

def test_slots_alternate(img):
    """[R-slot-1] generation g goes to slot A if odd, B if even."""
    for i in range(4):
        img[f"k{i}"] = b"v"
        raw = img.dev.inner.data
        g = img.generation
        assert active_slot_index(raw) == (0 if g % 2 else 1)
        off = fmt.SLOT_OFFSETS[0 if g % 2 else 1]
        assert struct.unpack_from("<Q", raw, off + 8)[0] == g


def test_newer_slot_wins_even_when_its_tree_is_damaged():
    """[R-slot-3] [R-slot-4] the older slot is never chosen when the newer is valid."""
    img = nvbox.create(None, cluster_size=512)
    img["a"] = b"old" * 100
    img["a"] = b"new" * 100
    raw = image_bytes(img)
    g = img.generation
    # damage a cluster that only the newest tree reaches: its directory root
    off = img.slot.dir_root.offset
    raw[off + 20] ^= 0xFF
    r = nvbox.open(bytes(raw), "r")
    assert r.generation == g
    assert code_of(r.__getitem__, "a") == "cluster.checksum"
    res = check_image(r)
    assert res.verdict == "corrupt" and any(c["code"] == "cluster.checksum" for c in res.corruptions)


def test_torn_newer_slot_opens_older_generation():
    """[R-slot-2] [R-slot-3] a torn (zeroed) newer slot: open at the older generation."""
    img = nvbox.create(None, cluster_size=512)
    img["a"] = b"one"
    g_old = img.generation
    img["a"] = b"two"
    img["b"] = b"bb"
    g_new = img.generation
    assert g_new == g_old + 2
    raw = image_bytes(img)
    new_idx = active_slot_index(raw)
    # the slot holding g_old + 1 was overwritten by g_new... older valid slot is g_new - 1
    off = fmt.SLOT_OFFSETS[new_idx]
    for torn in (bytes(512), bytes(256) + bytes(raw[off + 256:off + 512])):
        t = bytearray(raw)
        t[off:off + 512] = torn
        r = nvbox.open(bytes(t), "r")
        assert r.generation == g_new - 1
        assert r["a"] == b"two" and "b" not in r
        if any(torn):   # half written: a damaged slot, which check reports (R-check-3)
            assert [c["code"] for c in check_image(r).corruptions] == ["slot.damaged"]
        else:
            clean(r)
    # a single flipped bit in the newer slot: the same
    t = bytearray(raw)
    t[off + 100] ^= 1
    assert nvbox.open(bytes(t), "r").generation == g_new - 1
    # both slots gone: slot.none_valid
    t[fmt.SLOT_OFFSETS[1 - new_idx] + 8] ^= 1
    assert code_of(nvbox.open, bytes(t), "r") == "slot.none_valid"


def test_reopen_after_torn_slot_then_write():
    """After falling back to generation g, the next commit is g + 1 and wins."""
    img = nvbox.create(None)
    img["a"] = b"1"
    img["a"] = b"2"
    raw = image_bytes(img)
    off = fmt.SLOT_OFFSETS[active_slot_index(raw)]
    raw[off:off + 512] = bytes(512)
    w = nvbox.open(bytes(raw), "rw")
    g = w.generation
    w["a"] = b"3"
    assert w.generation == g + 1
    r = reopen(w, "r")
    assert r["a"] == b"3" and r.generation == g + 1
    clean(r)


def test_image_truncated_file():
    """[R-conv-6] a file shorter than image_clusters clusters is image.truncated."""
    img = nvbox.create(None)
    img["a"] = os.urandom(10000)
    raw = image_bytes(img)
    assert code_of(nvbox.open, bytes(raw[:-1]), "r") == "image.truncated"
    assert nvbox.open(bytes(raw) + bytes(5000), "r")["a"] == img["a"]   # longer is fine


def test_info_and_parse_size(img):
    img["x"] = b"1"
    info = img.info()
    assert info["format"] == "nvbox" and info["blob_count"] == 1 and info["cluster_size"] == img.cluster_size
    assert info["generation"] == img.generation and info["encrypted"] is False
    assert nvbox.parse_size("64M") == 64 << 20 and nvbox.parse_size("4k") == 4096 and nvbox.parse_size(12) == 12
    assert nvbox.parse_size("1GiB") == 1 << 30
    assert code_of(nvbox.parse_size, "lots") == "usage.argument"


@pytest.mark.parametrize("cluster_size", [512, 4096])
def test_info_used_clusters_counts_every_nonzero_durable_count(cluster_size):
    # info() counts a refcount block at a time; the definition is one cluster at a time.
    def by_cluster(img):
        return sum(1 for c in range(img.slot.image_clusters) if img.store.durable_count(c))

    img = nvbox.create(None, cluster_size)
    seen = []
    for step in range(6):
        with img.transaction():
            for i in range(40):
                img[f"b{step}-{i}"] = os.urandom(cluster_size * (1 + (i * 7) % 9))
        if step % 2:
            img.snapshots.create(f"s{step}")
        for i in range(0, 40, 3):
            del img[f"b{step}-{i}"]
        info = img.info()
        assert info["used_clusters"] == by_cluster(img)
        assert info["free_clusters"] == info["image_clusters"] - info["used_clusters"]
        seen.append((img.slot.refcount_depth, info["used_clusters"]))
    assert max(d for d, _ in seen) >= (2 if cluster_size == 512 else 1)     # multi-level trees too
    # Uncommitted changes are not counted: info() reports the durable image.
    with img.transaction():
        img["pending"] = os.urandom(cluster_size * 20)
        assert img.info()["used_clusters"] == seen[-1][1]


@pytest.mark.parametrize("failing", ["delete", "truncate", "write-no-create"])
def test_a_failed_lookup_in_an_empty_directory_inside_a_transaction_commits_a_valid_image(tmp_path, failing):
    # The lookup made an empty root leaf for a possible insert; before the fix
    # the commit wrote it, and the image could no longer be read (directory.node).
    from nvbox.check import check_image
    path = tmp_path / "e.nvbox"
    with nvbox.create(path, cluster_size=4096) as img:
        with img.transaction():
            img["x"] = b"1"
            del img["x"]
            call = {"delete": lambda: img.delete("y"), "truncate": lambda: img.truncate("y", 3),
                    "write-no-create": lambda: img.write("y", 0, b"z", create=False)}[failing]
            with pytest.raises(nvbox.NvboxError) as ei:
                call()
            assert ei.value.code == "blob.not_found"
        assert img.names() == [] and img.slot.dir_depth == 0
    with nvbox.open(path) as img:
        assert img.names() == [] and check_image(img).verdict == "clean"
