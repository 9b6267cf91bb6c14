"""The allocator's scan for free clusters is bounded per transaction [R-alloc-1]
[R-alloc-6]: a small commit on a big, full image reads a few refcount blocks
(upwards from alloc_hint, then down from the end of the image), not all of
them, yet reuses the space earlier commits freed (the image does not creep),
leaves a correct alloc_hint, and still finds every free cluster when the image
cannot grow (fixed capacity) or when compacting.
"""

from __future__ import annotations

import nvbox
from nvbox import _store
from nvbox.check import check_image
from nvbox.compact import compact_image

CS = 512                       # 256 counts per refcount block: many blocks, small files
KiB = 1024


def _full_image(path, blocks: int = 80):
    """An image whose refcount tree has about ``blocks`` full blocks."""
    img = nvbox.create(str(path), cluster_size=CS)
    with img.transaction():
        img.put("state", b"s" * 64 * KiB)
        img.put("bulk", bytes(range(256)) * (blocks * 256 * CS // 256))
    img.close()


def _free_inside(img) -> int:
    st = img.store
    return sum(1 for c in range(st.geo.header_clusters, img.slot.image_clusters) if st.durable_count(c) == 0)


def test_small_commits_read_few_blocks_and_reuse_space(tmp_path):
    path = tmp_path / "full.nvbox"
    _full_image(path)
    with nvbox.open(str(path), "r") as img:
        blocks = -(-img.slot.image_clusters // img.geo.counts_per_block)
    assert blocks > 70
    sizes, reads = [], []
    for i in range(40):
        with nvbox.open(str(path), "rw") as img:           # cold: only alloc_hint is known
            img.reset_stats()
            if i % 2:
                img.write("state", (i * CS) % (64 * KiB), b"w" * CS)
            else:
                img.snapshots.create(f"s{i}")
                img.snapshots.delete(f"s{i}")
            reads.append(img.stats["clusters_read"])
            sizes.append(img.slot.image_clusters)
    # Bounded reads (two commits per open here: each scans its budget, the tail
    # and reads its tree paths), not every refcount block as a full scan would.
    assert max(reads) <= 2 * (_store._SCAN_BLOCKS + _store._TAIL_BLOCKS) + 20 < blocks / 2
    # What each commit frees, a later one reuses: the image stays put.
    assert sizes[-1] - sizes[0] <= 8
    with nvbox.open(str(path), "r") as img:
        assert _free_inside(img) <= 16
        assert check_image(img).verdict == "clean"      # alloc_hint never above a free cluster


def test_fixed_image_finds_free_clusters_past_the_budget(tmp_path):
    """With no room to grow, every block is scanned before space.exhausted: here
    the only hole big enough lies past the upward budget from alloc_hint (a
    small low hole) and before the tail blocks."""
    path = tmp_path / "fixed.nvbox"
    img = nvbox.create(str(path), cluster_size=CS, capacity=4 * 1024 * KiB)
    with img.transaction():
        img.put("head", b"h" * 64 * KiB)
        img.put("low", b"l" * 2 * CS)                  # freed below: the hint lands here
        img.put("filler", b"f" * 1024 * KiB)           # 8 full refcount blocks
        img.put("middle", b"m" * 1024 * KiB)           # freed below: the hole that fits
        img.put("tail", b"t" * 512 * KiB)
    free_clusters = img.header.capacity_clusters - img.slot.image_clusters
    with img.transaction():     # fill most of the rest (data plus its map nodes)
        img.put("grow", b"g" * (free_clusters * 85 // 100) * CS)
    assert img.header.capacity_clusters - img.slot.image_clusters < 900 * KiB // CS
    with img.transaction():
        img.delete("low")
        img.delete("middle")
    img.close()
    with nvbox.open(str(path), "rw") as img:
        per = img.geo.counts_per_block
        assert img.slot.alloc_hint < per                 # the low hole
        img.put("again", b"a" * 900 * KiB)            # only fits in the middle hole
        assert img.get("again") == b"a" * 900 * KiB
        assert check_image(img).verdict == "clean"


def test_compaction_is_not_limited_by_the_scan_budget(tmp_path):
    path = tmp_path / "c.nvbox"
    _full_image(path)
    with nvbox.open(str(path), "rw") as img:
        img.delete("bulk")
        img.put("late", b"l" * 16 * KiB)
        before = img.slot.image_clusters
        compact_image(img)
        assert img.slot.image_clusters < before // 4
        assert img.store.scan_limit == _store._SCAN_BLOCKS
        assert img.get("late") == b"l" * 16 * KiB
        assert check_image(img).verdict == "clean"


def test_a_run_of_candidates_stops_at_a_cluster_in_use(tmp_path):
    """allocate_many takes consecutive free clusters as one run, checked in bulk;
    a cluster of the run that is in use after all is not taken, and the run is
    cut there (the rest is judged one by one)."""
    with nvbox.create(tmp_path / "a.nvbox", cluster_size=4096) as img:
        img.write("keep", 0, b"k" * 4096)
        img.write("gone", 0, b"g" * 64 * 1024)
        img.delete("gone")          # its 16 data clusters are free after this commit
        # abort() reloads the durable state into a new store: each transaction
        # below starts from the same state, so ask img.store each time.
        img.begin()
        probe = img.store.allocate_many(16)
        img.abort()
        free_run = max(probe, key=lambda r: r[1])
        assert free_run[1] >= 8, free_run       # a run long enough to cut
        blocked = free_run[0] + 3
        img.begin()
        store = img.store
        store.set_count(blocked, 1)             # in use after all (as a repair could find)
        runs = store.allocate_many(16)
        taken = [c for first, n in runs for c in range(first, first + n)]
        assert blocked not in taken
        assert len(taken) == len(set(taken)) == 16
        assert (free_run[0], 3) in runs         # the bulk run stops right before it
        assert sorted(taken) == [c for first, n in probe for c in range(first, first + n)
                                 if c != blocked] + [max(taken)]   # nothing else skipped
        assert all(store.count(c) == 1 for c in taken)
        img.abort()
        assert check_image(img).verdict == "clean"
