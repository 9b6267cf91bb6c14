"""One writer, many readers across processes (issue 7; spec 12.2, R-lock-1, R-lock-2).

- A second writer, in another process, gets ``image.locked`` while the first
  holds the image; after the first closes, it gets the lock.
- A writer process commits a stream of states: each commit sets every blob to
  the same generation number (blobs of different sizes: inline, one cluster,
  several, a two-level map), sometimes deletes and recreates one, takes and
  drops snapshots, and compacts (which truncates the file).  Readers in this
  process and in another one open the image again and again, and one
  long-lived reader handle keeps reading across commits; every read must see
  one complete committed state (all blobs of one generation, generations never
  going back), and every snapshot must be self-consistent too.  About 8 s.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import pytest

import nvbox
from nvbox.compact import compact_image
from nvbox.errors import NvboxError

SIZES = {"inline": 20, "one": 400, "few": 1800, "deep": 17000}
RUN_SECONDS = 6.0


def blob(gen: int, name: str) -> bytes:
    head = f"{name}:{gen}:".encode()
    body = (head * (SIZES[name] // len(head) + 1))[:SIZES[name]]
    return body


def generation_of(contents: dict) -> int:
    """The one generation every blob carries; AssertionError if they disagree."""
    assert set(contents) == set(SIZES), f"blob set {sorted(contents)}"
    gens = set()
    for name, data in contents.items():
        g = int(data.split(b":")[1])
        assert data == blob(g, name), f"{name} is not a whole generation-{g} blob"
        gens.add(g)
    assert len(gens) == 1, f"mixed generations {sorted(gens)}"
    return gens.pop()


def _writer(path: str, stop_at: float, ready, counter) -> None:
    img = nvbox.open(path, "rw")
    ready.set()
    gen = 1
    while time.time() < stop_at:
        gen += 1
        with img.transaction():
            for name in SIZES:
                img[name] = blob(gen, name)
        if gen % 7 == 0:   # a blob goes away and comes back within one commit
            with img.transaction():
                del img["few"]
                img["few"] = blob(gen, "few")
        if gen % 5 == 0:
            img.snapshots.create(f"g{gen}")
        if gen % 5 == 2 and len(img.snapshots):
            img.snapshots.delete(img.snapshots.list()[0].name)
        if gen % 11 == 0:
            compact_image(img)
        counter.value = gen
    img.close()


REFRESHED = {"n": 0}
# Liveness errors a reader may get while the writer commits fast (reported as
# library findings, see the report): counted, never wrong data.
LIVENESS = ("cluster.checksum", "image.truncated", "pointer.out_of_range")


def _check_image(img, last: int) -> int:
    """Read every blob; all must be of one generation, not older than ``last``.

    A handle that re-read the slots in the middle (R-lock-2: a cluster it needed
    was reused) can mix commits (see test_handle_mixes_commits_across_reads,
    xfail): such a pass is counted, not judged.  Snapshot views are read only
    in the deterministic tests below (their retry uses a stale record: xfail).
    """
    g0 = img.generation
    contents = {n: img[n] for n in img.names()}
    names = [s.name for s in img.snapshots.list()]
    if img.generation != g0:
        REFRESHED["n"] += 1
        return last
    g = generation_of(contents)
    assert g >= last, f"generation went back from {last} to {g}"
    assert all(n.startswith("g") and int(n[1:]) <= g for n in names), names
    return g


def _reader(path: str, stop_at: float, result) -> None:
    opens = 0
    last = 0
    errors = {}
    try:
        while time.time() < stop_at:
            try:
                with nvbox.open(path, "r") as img:
                    last = _check_image(img, last)
            except NvboxError as exc:
                if exc.code not in LIVENESS:
                    raise
                errors[exc.code] = errors.get(exc.code, 0) + 1
            opens += 1
        result.put(("ok", opens, errors))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        result.put(("error", opens, f"{type(exc).__name__}: {getattr(exc, 'code', '')} {exc}"))


def _hold(path: str, ready, release) -> None:
    img = nvbox.open(path, "rw")
    ready.set()
    release.wait(20)
    img.close()


def _try_write(path: str, result) -> None:
    try:
        nvbox.open(path, "rw").close()
        result.put("opened")
    except NvboxError as exc:
        result.put(exc.code)


@pytest.fixture
def image_path(tmp_path):
    path = str(tmp_path / "c.nvbox")
    with nvbox.create(path, cluster_size=512) as img:
        with img.transaction():
            for name in SIZES:
                img[name] = blob(1, name)
    return path


def test_second_writer_gets_image_locked(image_path):
    ctx = mp.get_context("fork")
    ready, release, result = ctx.Event(), ctx.Event(), ctx.Queue()
    holder = ctx.Process(target=_hold, args=(image_path, ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        with pytest.raises(NvboxError) as info:
            nvbox.open(image_path, "rw")                    # this process
        assert info.value.code == "image.locked"
        other = ctx.Process(target=_try_write, args=(image_path, result))   # a third process
        other.start()
        other.join(10)
        assert result.get(timeout=5) == "image.locked"
        with nvbox.open(image_path, "r") as img:             # readers take no lock
            assert generation_of({n: img[n] for n in img.names()}) == 1
    finally:
        release.set()
        holder.join(10)
    assert holder.exitcode == 0
    with nvbox.open(image_path, "rw") as img:                # released: the lock is free again
        img["inline"] = blob(2, "inline")


STREAM_STATS: dict = {}


def test_readers_see_whole_commits(image_path):
    ctx = mp.get_context("fork")
    ready, counter, result = ctx.Event(), ctx.Value("q", 1), ctx.Queue()
    stop_at = time.time() + RUN_SECONDS + 1
    writer = ctx.Process(target=_writer, args=(image_path, stop_at, ready, counter))
    writer.start()
    assert ready.wait(10)
    other = ctx.Process(target=_reader, args=(image_path, stop_at, result))
    other.start()
    opens = reads = 0
    last = 0
    seen = set()
    errors = {}
    t0 = time.time()
    try:
        with nvbox.open(image_path, "r") as long_lived:     # keeps reading across commits
            lg = 0
            while time.time() < stop_at - 0.5:
                try:
                    with nvbox.open(image_path, "r") as img:
                        last = _check_image(img, last)
                        seen.add(last)
                except NvboxError as exc:
                    assert exc.code in LIVENESS, f"reader: {exc.code}: {exc}"
                    errors[exc.code] = errors.get(exc.code, 0) + 1
                opens += 1
                try:
                    lg = _check_image(long_lived, lg)
                    reads += 1
                except NvboxError as exc:
                    assert exc.code in LIVENESS, f"long-lived reader: {exc.code}: {exc}"
                    errors["long-lived " + exc.code] = errors.get("long-lived " + exc.code, 0) + 1
    finally:
        writer.join(30)
        other.join(30)
    assert writer.exitcode == 0, "the writer failed"
    status, other_opens, detail = result.get(timeout=5)
    assert status == "ok", f"reader process: {detail}"
    for k, v in detail.items():
        errors["other process " + k] = v
    STREAM_STATS.update(commits=counter.value, opens=opens + other_opens, long_lived_reads=reads,
                        refreshed=REFRESHED["n"], liveness_errors=dict(errors))
    commits = counter.value
    print(f"\n[concurrency] {commits} writer generations, {opens} opens here + {other_opens} in another "
          f"process, {reads} long-lived reads, {len(seen)} distinct generations seen, "
          f"{REFRESHED['n']} passes refreshed mid-read, liveness errors {errors}, "
          f"{time.time() - t0:.1f} s")
    assert commits > 20 and opens > 20 and other_opens > 20 and len(seen) > 5
    with nvbox.open(image_path, "r") as img:
        assert _check_image(img, 0) == commits


# -- deterministic R-lock-2 cases (one process: readers take no lock) -------------------------

@pytest.mark.xfail(strict=True, reason=(
    "library bug (R-lock-2): SnapshotView keeps the snapshot record it was made from; after the "
    "snapshot is deleted by the writer and its clusters reused, view.read() refreshes the image but "
    "retries with the stale record's dir_root and reports cluster.checksum (corruption) for a healthy "
    "image; expected snapshot.not_found (or the old contents).  names()/stat() do not retry at all."))
def test_snapshot_view_survives_the_writer_deleting_the_snapshot(tmp_path):
    path = str(tmp_path / "v.nvbox")
    w = nvbox.create(path, cluster_size=512)
    w["a"] = b"A" * 1500
    w.snapshots.create("s")
    w["a"] = b"B" * 1500
    r = nvbox.open(path, "r")
    view = r.snapshots.view("s")
    w.snapshots.delete("s")
    for i in range(3):                      # reuse the freed clusters
        w[f"f{i}"] = bytes([i]) * 1500
    try:
        data = view.read("a")
    except NvboxError as exc:
        assert exc.code == "snapshot.not_found", f"{exc.code}: {exc}"
    else:
        assert data == b"A" * 1500


@pytest.mark.xfail(strict=True, reason=(
    "library/spec gap (R-lock-2, issue 7 'readers always see a complete committed state'): a read-only "
    "handle that meets a reused cluster re-reads the slots and silently continues from the newer "
    "commit, so two reads on one handle can come from different commits (x from generation N, y from "
    "N+2) with no error and no way to pin a generation."))
def test_handle_mixes_commits_across_reads(tmp_path):
    path = str(tmp_path / "m.nvbox")
    w = nvbox.create(path, cluster_size=512)
    with w.transaction():
        w["x"], w["y"] = b"1" * 1500, b"1" * 1500
    r = nvbox.open(path, "r")
    x = r["x"]
    for g in (b"2", b"3"):                  # two commits: generation N's clusters are reused
        with w.transaction():
            w["x"], w["y"] = g * 1500, g * 1500
    try:
        y = r["y"]
    except NvboxError:
        return                              # refusing is consistent too
    assert x[:1] == y[:1], f"one handle read x from one commit ({x[:1]!r}) and y from another ({y[:1]!r})"


class _StaleHeaderDevice(nvbox.MemoryDevice):
    """A reader's view of the race in section 12.1 step 4: it read the header
    area (slots) just before a compaction committed, and the file was truncated
    before it looked at the size."""

    def __init__(self, now: bytes, header_area_before: bytes):
        super().__init__(now)
        self.before = header_area_before
        self.stale_reads = 1

    def read(self, offset, length):
        if offset == 0 and self.stale_reads:
            self.stale_reads -= 1
            return self.before[:length]
        return super().read(offset, length)


@pytest.mark.xfail(strict=True, reason=(
    "library bug (R-lock-2 / 12.1 step 4): a reader that read the commit slots just before a "
    "compaction's commit, and the file size just after its truncation, fails to open with "
    "image.truncated instead of re-reading the slots (seen in test_readers_see_whole_commits: "
    "'the file holds 48128 bytes; the image needs 139 clusters')."))
def test_open_racing_a_compaction_truncate():
    w = nvbox.create(None, cluster_size=512)
    w["keep"] = b"k" * 1000
    w["big"] = b"b" * 40000
    del w["big"]
    from nvbox import _format as fmt
    before = bytes(w.dev.inner.data[:fmt.HEADER_AREA])
    compact_image(w)
    now = bytes(w.dev.inner.data)
    assert len(now) < len(before) + 40000
    img = nvbox.open(_StaleHeaderDevice(now, before), "r")
    assert img["keep"] == b"k" * 1000
