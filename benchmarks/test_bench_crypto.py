"""Issue 8: encrypted against plain nvbox images (put, get, 4 KiB update in 1 MiB)."""

import pytest

import benchlib as B
from benchlib import KiB, MiB
from nvbox_store import have_crypto

OK, WHY = have_crypto()
pytestmark = pytest.mark.skipif(not OK, reason=WHY or "nvbox.crypto unavailable")

SIZES = B.pick([4 * KiB, 1 * MiB], [64, 4 * KiB, 64 * KiB, 1 * MiB, 16 * MiB])


def _create(d, encrypted):
    return B.create("nvbox", d, tag="enc" if encrypted else "plain", encrypt=encrypted)


@pytest.mark.parametrize("size", SIZES, ids=B.size_id)
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
@pytest.mark.parametrize("op", ["put", "get", "update"])
def test_crypto(benchmark, op, encrypted, size):
    if op == "update" and size < MiB:
        pytest.skip("the update workload is 4 KiB inside blobs of 1 MiB and more")
    system = "nvbox-encrypted" if encrypted else "nvbox"
    benchmark.group = f"crypto {op} {B.size_id(size)}"
    data = B.payload(size)
    with B.workdir() as d:
        s = _create(d, encrypted)
        try:
            s.put("blob", data)
            n = iter(range(10 ** 6))
            fn = {"put": lambda: s.put(f"b/{next(n)}", data),
                  "get": lambda: s.get("blob"),
                  "update": lambda: s.update("blob", 4 * KiB * (next(n) % 16), b"u" * 4 * KiB)}[op]
            if op == "get":
                s.drop_caches()
            b0, f0 = s.bytes_written, s.flushes
            benchmark.pedantic(fn, rounds=5, iterations=1, warmup_rounds=0)
            per = {"bytes_written": (s.bytes_written - b0) / 5, "flushes": (s.flushes - f0) / 5}
            B.annotate(benchmark, system, f"crypto_{op}", size, file_size=s.file_size(), **per)
        finally:
            s.close()
