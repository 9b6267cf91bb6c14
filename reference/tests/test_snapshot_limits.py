"""Issue 3: the snapshot limits end in clear errors, never a wrapped counter
[R-snap-5] [R-ref-4], and repair rebuilds broken counts without touching data
[R-check-2]."""

from __future__ import annotations

import struct

import pytest

import nvbox
from nvbox import _format as fmt
from nvbox.check import check_image, repair_image
from nvbox.errors import NvboxError

from test_malformed import CS, base, blob_chain, open_base, refcount_chain, reseal


def contents(img):
    return {n: img[n] for n in img.names()}, {s.name: {n: img.snapshots.view(s.name)[n]
                                                         for n in img.snapshots.view(s.name).names()}
                                               for s in img.snapshots.list()}


def test_snapshot_limit_is_a_clear_error():
    img = nvbox.create(None, cluster_size=4096)
    img["a"] = b"x" * 5000
    for i in range(fmt.MAX_SNAPSHOTS):
        img.snapshots.create(f"s{i}")
    before = bytes(img.dev.inner.data)
    with pytest.raises(NvboxError) as ei:
        img.snapshots.create("one-too-many")
    assert ei.value.code == "snapshot.limit"
    assert bytes(img.dev.inner.data) == before          # nothing written
    assert len(img.snapshots) == fmt.MAX_SNAPSHOTS and check_image(img).verdict == "clean"
    img.snapshots.delete("s0")
    img.snapshots.create("one-too-many")                 # room again after a delete


def test_refcount_overflow_is_a_clear_error(monkeypatch):
    """Within the spec's limits no count reaches 65535 (1024 snapshots), so the
    bound is lowered to 3 to reach it; the check is the same code."""
    monkeypatch.setattr(fmt, "MAX_REFCOUNT", 3)
    img = nvbox.create(None, cluster_size=512)
    img["a"] = b"x" * 3000
    img.snapshots.create("s1")
    img.snapshots.create("s2")
    want = contents(img)
    before = bytes(img.dev.inner.data)
    with pytest.raises(NvboxError) as ei:
        img.snapshots.create("s3")                       # the shared root would reach 4
    assert ei.value.code == "refcount.overflow"
    assert bytes(img.dev.inner.data)[:fmt.HEADER_AREA] == before[:fmt.HEADER_AREA]   # no commit
    assert contents(img) == want and check_image(img).verdict == "clean"


@pytest.mark.parametrize("count", [0, 2, 7])
def test_repair_rebuilds_counts_without_touching_data(count):
    """A live data cluster's count set to 0 (corruption), 2 or 7 (leaks) behind the
    writer's back; repair all makes the image clean and every blob and snapshot
    reads as before."""
    img = open_base()
    want = contents(img)
    raw = base()
    chain = refcount_chain(img, 0)
    data = blob_chain(img, "small", 0)[-1] // CS
    struct.pack_into("<H", raw, chain[-1] + 2 * data, count)
    reseal(raw, chain)
    broken = nvbox.open(bytes(raw), "rw")
    assert check_image(broken).verdict == ("corrupt" if count == 0 else "leaks")
    if count == 0:
        assert repair_image(broken, mode="leaks").verdict == "corrupt"   # leaks mode leaves under-counts
        assert check_image(broken).verdict == "corrupt"
    result = repair_image(broken, mode="all")
    assert result.repaired
    assert check_image(broken).verdict == "clean"
    assert contents(broken) == want
    again = nvbox.open(bytes(broken.dev.inner.data), "r")
    assert check_image(again).verdict == "clean" and contents(again) == want
