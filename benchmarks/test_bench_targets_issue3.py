"""Issue 3 targets: snapshot cost against allocated size (4 KiB clusters).

* snapshot create with 16 MiB, 256 MiB and 1 GiB of allocated blob data: the same number of
  clusters written at every size, time at 1 GiB <= 1.5x time at 16 MiB (quick mode: 16 and
  64 MiB);
* beside it `qemu-img snapshot -c` on qcow2 images with the same allocated data and cluster
  size, less its start-up (`qemu-img info` on the same image): both curves and the ratio;
* the first write to a blob after a snapshot: clusters written at most the tree depth + 3
  (see FIRST_WRITE_SLACK), and independent of the image size;
* snapshot delete: clusters freed equal to the clusters only that snapshot held, time
  proportional to them.

nvbox is measured on a freshly opened handle (cold node cache, as qemu-img is a fresh
process); the image is built by one big sequential transaction and closed first.
"""

import os
import statistics
import time

import pytest

import benchlib as B
from benchlib import GiB, KiB, MiB
import nvbox
import peers
from nvbox._visit import Visitor

SIZES = B.pick([16 * MiB, 64 * MiB], [16 * MiB, 256 * MiB, 1 * GiB])
if os.environ.get("NVBOX_BENCH_SNAP_SIZES"):      # e.g. "16M,256M,1G,4G"
    from nvbox import parse_size
    SIZES = [parse_size(x) for x in os.environ["NVBOX_BENCH_SNAP_SIZES"].split(",")]
RESULTS: dict = {}
PATCH = 4 * KiB
# The first write after a snapshot copies one path: the new data cluster, one copy of each
# directory and map node above it, and the refcount index nodes above the counts it changes
# (1 + dir_depth + map_depth + refcount_depth - 1 clusters).  The counts change in at most 3
# refcount blocks: the copied map node's children (their counts go up) may straddle two,
# and the new clusters lie in a third.  So: tree depth + 3 (measured: depth + 2).
FIRST_WRITE_SLACK = 3


def _build_nvbox(path, size, chunk=16 * MiB):
    from nvbox_store import NvboxStore
    s = NvboxStore.create(path)
    s.put("state", B.payload(MiB))
    s.fill(size, chunk=chunk)
    s.close()


@pytest.mark.parametrize("size", SIZES, ids=B.size_id)
def test_nvbox_snapshot_create(benchmark, size):
    benchmark.group = "issue 3: snapshot create (cold handle)"
    with B.workdir() as d:
        p = os.path.join(d, "i.nvbox")
        _build_nvbox(p, size)
        k = iter(range(100))
        h = {}
        per = []

        def setup():
            if "img" in h:
                per.append(dict(h["img"].stats))
                h["img"].close()
            h["img"] = nvbox.open(p, "rw")
            h["img"].reset_stats()
            return (), {}
        # 9 rounds: the first two creates after the fill grow the file (by 8 and 4 KiB,
        # and the flush then commits the new size: 1.5 to 6.5 ms against about 1.1 ms
        # once freed clusters are reused), which moved the median of 5 now and then.
        benchmark.pedantic(lambda: h["img"].snapshots.create(f"s{next(k)}"), setup=setup, rounds=9,
                           iterations=1)
        per.append(dict(h["img"].stats))
        h["img"].close()
        # warm handle: the same handle that made the image (no reopen)
        img = nvbox.open(p, "rw")
        img.snapshots.create("warmup")
        warm = []
        for i in range(5):
            t = time.perf_counter()
            img.snapshots.create(f"w{i}")
            warm.append(time.perf_counter() - t)
        img.close()
        # first write after a snapshot, on a cold handle
        img = nvbox.open(p, "rw")
        img.snapshots.create("before-write")
        img.close()
        img = nvbox.open(p, "rw")
        img.reset_stats()
        t = time.perf_counter()
        img.write("state", 3 * PATCH, b"\x77" * PATCH)
        fw_t = time.perf_counter() - t
        fw = dict(img.stats)
        geo = img.geo
        depth = img.slot.dir_depth + img.stat("state").depth + img.slot.refcount_depth
        fanout = geo.fanout        # reported: the bound used to be depth x fanout
        img.close()
        fsize = os.path.getsize(p)
    clusters = sorted({s["clusters_written"] for s in per})
    med = benchmark.stats.stats.median
    RESULTS[("nvbox", size)] = {"seconds": med, "clusters_written": clusters, "first_write": fw["clusters_written"],
                                "first_write_seconds": fw_t, "depth": depth, "fanout": fanout,
                                "warm_seconds": statistics.median(warm)}
    B.annotate(benchmark, "nvbox", "target_snapshot_create", size, clusters_written=max(clusters),
               clusters_written_all=clusters, bytes_written=max(s["device_bytes_written"] for s in per),
               flushes=max(s["device_flushes"] for s in per), clusters_read=max(s["clusters_read"] for s in per),
               warm_seconds=statistics.median(warm), file_size=fsize,
               first_write_clusters=fw["clusters_written"], first_write_seconds=fw_t,
               first_write_bytes=fw["device_bytes_written"], tree_depth=depth, fanout=fanout)
    B.target(benchmark, f"issue3 first write after snapshot ({B.size_id(size)}): clusters written",
             fw["clusters_written"], depth + FIRST_WRITE_SLACK, unit="clusters",
             note=f"bound = tree depth {depth} (dir + map + refcount levels) + {FIRST_WRITE_SLACK} "
                  "(the data cluster and up to 3 refcount blocks, less the refcount leaf level)")


@pytest.mark.skipif(not peers.have_qemu(), reason="qemu-img/qemu-io not installed")
@pytest.mark.parametrize("size", SIZES, ids=B.size_id)
def test_qcow2_snapshot_create(benchmark, size):
    benchmark.group = "issue 3: snapshot create, qemu-img snapshot -c"
    with B.workdir() as d:
        s = B.create("qcow2", d)          # 4 KiB clusters, like nvbox
        try:
            s.put("state", B.payload(MiB))
            s.fill(size)
            k = iter(range(100))
            benchmark.pedantic(lambda: s.snapshot_create(f"s{next(k)}"), rounds=3, iterations=1)
            startup = statistics.median(s.startup_time() for _ in range(7))
            fsize = s.file_size()
        finally:
            s.close()
    med = benchmark.stats.stats.median
    RESULTS[("qcow2", size)] = {"seconds": med, "startup": startup, "net": max(med - startup, 1e-9)}
    B.annotate(benchmark, "qcow2", "target_snapshot_create", size, startup_seconds=startup,
               net_seconds=med - startup, file_size=fsize, cluster_size=4096)


def _reach(img, root, depth):
    """Cluster indices reachable from a directory root (directory, maps, data): the tree visitor's."""
    if not depth:
        return set()
    walk = Visitor(img.store.read_raw, img.geo, img.slot.image_clusters)
    return {r.cluster for r in walk.directory(root, depth, "reach")}


def _used(img):
    st = img.store
    return {c for c in range(img.slot.image_clusters) if st.durable_count(c)}


DELETE_SIZES = B.pick([1 * MiB, 4 * MiB, 16 * MiB], [4 * MiB, 16 * MiB, 64 * MiB, 256 * MiB])


@pytest.mark.parametrize("changed", DELETE_SIZES, ids=B.size_id)
def test_nvbox_snapshot_delete(benchmark, changed):
    """A snapshot, then `changed` bytes of blobs overwritten, so the snapshot alone holds
    them; deleting it must free exactly those clusters (plus its own metadata)."""
    benchmark.group = "issue 3: snapshot delete (nvbox)"
    with B.workdir() as d:
        p = os.path.join(d, "i.nvbox")
        total = max(64 * MiB, changed * 2)
        _build_nvbox(p, total, chunk=MiB)
        info = {}

        def setup():
            img = nvbox.open(p, "rw")
            img.snapshots.create("victim")
            new = B.payload(MiB, seed=9)
            with img.transaction():
                for i in range(changed // MiB):
                    img[f"fill/{i:06d}"] = new
            rec = img.snapshots._find("victim")
            only = _reach(img, rec.dir_root, rec.dir_depth) - _reach(img, img.state.dir_root, img.state.dir_depth)
            info["victim"] = _reach(img, rec.dir_root, rec.dir_depth)
            info["exclusive"] = only
            info["used_before"] = _used(img)
            img.close()
            img = nvbox.open(p, "rw")       # cold handle
            img.reset_stats()
            info["img"] = img
            return (), {}
        benchmark.pedantic(lambda: info["img"].snapshots.delete("victim"), setup=setup, rounds=1, iterations=1)
        img = info["img"]
        stats = dict(img.stats)
        used_after = _used(img)
        img.close()
    freed = info["used_before"] - used_after
    excl = info["exclusive"]
    freed_data = freed & info["victim"]
    meta = len(freed - info["victim"])
    t = benchmark.stats.stats.median
    RESULTS[("delete", changed)] = {"seconds": t, "exclusive": len(excl), "freed": len(freed)}
    B.annotate(benchmark, "nvbox", "target_snapshot_delete", changed, exclusive_clusters=len(excl),
               freed_clusters=len(freed), freed_from_snapshot=len(freed_data), freed_metadata=meta,
               us_per_freed_cluster=t / max(1, len(freed)) * 1e6, clusters_written=stats["clusters_written"],
               clusters_read=stats["clusters_read"], bytes_written=stats["device_bytes_written"],
               flushes=stats["device_flushes"])
    B.target(benchmark, f"issue3 snapshot delete ({B.size_id(changed)} changed): freed snapshot clusters "
             "minus clusters only it held", len(freed_data ^ excl), 0, op="==", unit="clusters",
             note=f"{len(excl)} exclusive, {len(freed_data)} freed from it, {meta} old metadata copies freed")


def test_issue3_summary(benchmark):
    """Cross-size targets, from the measurements above (same session)."""
    benchmark.group = "issue 3: summary"
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    nv = {s: RESULTS[("nvbox", s)] for s in SIZES if ("nvbox", s) in RESULTS}
    if len(nv) < 2:
        pytest.skip("needs the snapshot-create measurements of this session")
    lo, hi = min(nv), max(nv)
    curves = []
    for s in sorted(nv):
        row = {"size": s, "nvbox_seconds": nv[s]["seconds"], "nvbox_clusters": nv[s]["clusters_written"],
               "nvbox_warm_seconds": nv[s]["warm_seconds"], "first_write_clusters": nv[s]["first_write"]}
        q = RESULTS.get(("qcow2", s))
        if q:
            row.update(qcow2_seconds=q["seconds"], qcow2_startup=q["startup"], qcow2_net=q["net"],
                       ratio_nvbox_over_qcow2_net=nv[s]["seconds"] / q["net"])
        curves.append(row)
    dels = [{"changed": c, **RESULTS[("delete", c)]} for c in DELETE_SIZES if ("delete", c) in RESULTS]
    B.annotate(benchmark, "nvbox", "issue3_summary", None, curves=curves, deletes=dels)
    allc = {c for s in nv for c in nv[s]["clusters_written"]}
    B.target(benchmark, "issue3 snapshot create: distinct clusters-written counts across sizes",
             len(allc), 1, op="==", note=f"counts seen: {sorted(allc)}")
    B.target(benchmark, f"issue3 snapshot create time {B.size_id(hi)} / {B.size_id(lo)}",
             round(nv[hi]["seconds"] / nv[lo]["seconds"], 3), 1.5, timing=True)
    fw = {nv[s]["first_write"] for s in nv}
    B.target(benchmark, "issue3 first write after snapshot: distinct clusters-written counts across sizes",
             len(fw), 1, op="==", note=f"counts seen: {sorted(fw)}")
    if len(dels) >= 2:
        per = [d["seconds"] / max(1, d["freed"]) for d in dels]
        B.target(benchmark, "issue3 snapshot delete: time per freed cluster, largest / smallest change",
                 round(per[-1] / per[0], 3), 2.0, timing=True,
                 note="proportional time gives ~1 (fixed commit cost makes small deletes dearer per cluster)")
