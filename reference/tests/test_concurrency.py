"""One writer, many readers across processes (issue 7; spec 12.2, R-lock-1, R-lock-2, R-lock-3).

- A second writer, in another process, gets ``image.locked`` while the first
  holds the image; after the first closes, it gets the lock.
- A writer process commits a stream of states: each commit sets every blob to
  the same generation number (blobs of different sizes: inline, one cluster,
  several, a two-level map), sometimes deletes and recreates one, takes and
  drops snapshots, and compacts (which truncates the file).  Readers in this
  process and in another one open the image again and again, and one
  long-lived reader handle keeps reading across commits; each pass reads
  everything inside ``read_transaction()`` and must see one complete committed
  state (all blobs of one generation, generations never going back), and every
  snapshot, read through its view, must be self-consistent too.  A pass may
  fail only with a liveness code (``image.changed``, ``image.busy``): counted;
  any other error and any wrong data fail the test.  The stream runs until
  the writer has made MIN_COMMITS commits, each reader MIN_OPENS passes, and
  MIN_SEEN distinct generations were read here (counted work, so that a loaded
  machine makes it longer, not failing); STREAM_BACKSTOP seconds only stop a
  stream that cannot get there.  About 3 s.
- Deterministic R-lock-2 cases: an open racing a compaction's truncation, a
  snapshot view whose snapshot the writer deletes, the semantics of single
  reads and of ``read_transaction()``, corruption versus a moving writer, and a
  reader starved by a writer (``image.busy``).
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
MIN_COMMITS = 600         # writer generations
MIN_OPENS = 400           # passes of each reader (the fresh opens here, and in the other process)
MIN_SEEN = 100            # distinct generations the readers here saw
STREAM_BACKSTOP = 300.0   # seconds: a stream still short of the counts then fails


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


def _writer(path: str, stop, ready, counter) -> None:
    img = nvbox.open(path, "rw")
    ready.set()
    gen = 1
    while not stop.is_set():
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


# Liveness errors a reader may get while the writer commits fast: the writer
# overwrote the commit a read transaction reads, or kept a read retrying until
# it gave up.  Counted; never wrong data, never a corruption code.
LIVENESS = ("image.changed", "image.busy")


def _check_image(img, last: int) -> int:
    """In one read transaction, read every blob and every snapshot's blobs: the
    blobs must be of one generation, not older than ``last``; snapshot ``gN``
    must hold generation N."""
    with img.read_transaction():
        g0 = img.generation
        contents = {n: img[n] for n in img.names()}
        snaps = {}
        for s in img.snapshots.list():
            view = img.snapshots.view(s.name)
            snaps[s.name] = {n: view[n] for n in view.names()}
        assert img.generation == g0, "the read transaction moved"
    g = generation_of(contents)
    assert g >= last, f"generation went back from {last} to {g}"
    for name, snap in snaps.items():
        assert name.startswith("g") and int(name[1:]) <= g, sorted(snaps)
        assert generation_of(snap) == int(name[1:]), f"snapshot {name}"
    return g


def _reader(path: str, stop, passes, result) -> None:
    opens = 0
    last = 0
    errors = {}
    try:
        while not stop.is_set():
            try:
                with nvbox.open(path, "r") as img:
                    last = _check_image(img, last)
            except NvboxError as exc:
                if exc.code not in LIVENESS:
                    raise
                errors[exc.code] = errors.get(exc.code, 0) + 1
            opens += 1
            passes.value = opens
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
    ready, stop, result = ctx.Event(), ctx.Event(), ctx.Queue()
    counter, other_passes = ctx.Value("q", 1), ctx.Value("q", 0)
    writer = ctx.Process(target=_writer, args=(image_path, stop, ready, counter))
    writer.start()
    assert ready.wait(10)
    other = ctx.Process(target=_reader, args=(image_path, stop, other_passes, result))
    other.start()
    opens = reads = 0
    last = 0
    seen = set()
    errors = {}

    def enough() -> bool:
        return (counter.value >= MIN_COMMITS and opens >= MIN_OPENS and other_passes.value >= MIN_OPENS
                and len(seen) >= MIN_SEEN)
    t0 = time.monotonic()       # the backstop, and the report line; no result depends on it
    try:
        with nvbox.open(image_path, "r") as long_lived:     # keeps reading across commits
            lg = 0
            while (not enough() and writer.is_alive() and other.is_alive()
                   and time.monotonic() - t0 < STREAM_BACKSTOP):
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
        stop.set()
        writer.join(30)
        other.join(30)
    assert writer.exitcode == 0, "the writer failed"
    status, other_opens, detail = result.get(timeout=5)
    assert status == "ok", f"reader process: {detail}"
    for k, v in detail.items():
        errors["other process " + k] = v
    STREAM_STATS.update(commits=counter.value, opens=opens + other_opens, long_lived_reads=reads,
                        liveness_errors=dict(errors))
    commits = counter.value
    print(f"\n[concurrency] {commits} writer generations, {opens} opens here + {other_opens} in another "
          f"process, {reads} long-lived reads, {len(seen)} distinct generations seen, "
          f"liveness errors {errors}, {time.monotonic() - t0:.1f} s")
    assert commits >= MIN_COMMITS and opens >= MIN_OPENS and other_opens >= MIN_OPENS and len(seen) >= MIN_SEEN, \
        f"the stream stopped short of its counts (a process ended, or the {STREAM_BACKSTOP:.0f} s backstop)"
    with nvbox.open(image_path, "r") as img:
        assert _check_image(img, 0) == commits


# -- deterministic R-lock-2 cases (one process: readers take no lock) -------------------------

def _two_blob_image(tmp_path, name="m.nvbox"):
    """A writer with x and y of 1500 bytes (3 clusters each) at generation 1 of theirs."""
    w = nvbox.create(str(tmp_path / name), cluster_size=512)
    with w.transaction():
        w["x"], w["y"] = b"1" * 1500, b"1" * 1500
    return w


def _commit_xy(w, g: bytes) -> None:
    with w.transaction():
        w["x"], w["y"] = g * 1500, g * 1500


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
    for call in (lambda: view.read("a"), lambda: view.names(), lambda: view.stat("a"), lambda: len(view),
                 lambda: "a" in view, view.entries):
        with pytest.raises(NvboxError) as info:
            call()
        assert info.value.code == "snapshot.not_found", f"{info.value.code}: {info.value}"
    assert r["a"] == b"B" * 1500            # the handle moved to the newest commit


def test_snapshot_view_follows_its_snapshot_to_a_newer_commit(tmp_path):
    path = str(tmp_path / "v.nvbox")
    w = nvbox.create(path, cluster_size=512)
    w["a"] = b"A" * 1500
    w.snapshots.create("s")
    r = nvbox.open(path, "r")
    view = r.snapshots.view("s")
    w.snapshots.rename("s", "t")            # the same snapshot (same id) under a new name
    for i in range(4):
        w[f"f{i}"] = bytes([i]) * 1500
    assert r.refresh()
    assert view.read("a") == b"A" * 1500 and view.names() == ["a"] and view.name == "t"
    assert view.stat("a").size == 1500 and len(view) == 1 and "a" in view and "f0" not in view
    assert [(e.name, e.size) for e in view.entries()] == [("a", 1500)]


def test_each_read_comes_from_one_commit_and_a_handle_moves_on(tmp_path):
    """Outside a read transaction: every call returns data of one complete
    commit; between calls the handle may move to a newer one (here: because it
    met a cluster the writer reused)."""
    w = _two_blob_image(tmp_path)
    r = nvbox.open(w.path, "r")
    g1 = r.generation
    assert r["x"] == b"1" * 1500
    _commit_xy(w, b"2")
    _commit_xy(w, b"3")                     # reuses generation 1's clusters (R-alloc-1)
    assert r["y"] == b"3" * 1500            # one call, one commit: the newest
    assert r.generation == g1 + 2 == w.generation
    assert r.names() == ["x", "y"] and r["x"] == b"3" * 1500


def test_read_transaction_pins_one_commit(tmp_path):
    """Inside read_transaction(): every read comes from the commit that was
    newest on entry, even after the writer committed again, as long as that
    commit's clusters are intact."""
    w = _two_blob_image(tmp_path)
    r = nvbox.open(w.path, "r")
    _commit_xy(w, b"2")                     # the handle is behind: entering moves it to the newest
    with r.read_transaction():
        g = r.generation
        assert g == w.generation
        assert r["x"] == b"2" * 1500
        _commit_xy(w, b"3")                 # frees generation g's clusters, reuses none yet
        assert r["y"] == b"2" * 1500 and r.stat("y").size == 1500 and r.names() == ["x", "y"]
        assert r.generation == g
        with pytest.raises(NvboxError) as info:
            r.refresh()                     # would break the pin
        assert info.value.code == "usage.argument"
    assert r.refresh() and r["y"] == b"3" * 1500


def test_read_transaction_refuses_to_switch_commits(tmp_path):
    """The fix of 'a handle mixes commits across reads': once the writer reused
    a cluster of the pinned commit, a read raises image.changed (a liveness
    error, not corruption) instead of continuing from another commit; running
    the block again reads the newest commit."""
    w = _two_blob_image(tmp_path)
    r = nvbox.open(w.path, "r")
    with pytest.raises(NvboxError) as info:
        with r.read_transaction():
            g = r.generation
            x = r["x"]
            for c in (b"2", b"3"):          # two commits: generation g's clusters are reused
                _commit_xy(w, c)
            try:
                r["y"]
            finally:
                assert r.generation == g    # never moved inside the block
    assert info.value.code == "image.changed" and info.value.kind == "state", str(info.value)
    assert x == b"1" * 1500
    with r.read_transaction():              # run it again: one commit, the newest
        assert (r["x"], r["y"]) == (b"3" * 1500, b"3" * 1500)
        with r.read_transaction():          # nested blocks join the outer one
            assert r.generation == w.generation


def _damage_cluster_of(w, name):
    """Flip a byte of the first data cluster of blob ``name`` in the file."""
    e = w.trees.dir_lookup(w.state.dir_root, w.state.dir_depth, name)
    ptr = w.trees.map_lookup(e.root, e.depth, 0)
    with open(w.path, "r+b") as f:
        f.seek(ptr.offset + 7)
        b = f.read(1)
        f.seek(ptr.offset + 7)
        f.write(bytes([b[0] ^ 0xFF]))


def test_damage_is_reported_as_damage_when_no_commit_came(tmp_path):
    """A checksum error while the slots stay the same is the image's, inside
    a read transaction or not: no retry turns it into a liveness error."""
    w = _two_blob_image(tmp_path)
    _damage_cluster_of(w, "y")
    r = nvbox.open(w.path, "r")
    assert r["x"] == b"1" * 1500
    for pinned in (False, True):
        with pytest.raises(NvboxError) as info:
            if pinned:
                with r.read_transaction():
                    r["y"]
            else:
                r["y"]
        assert info.value.code == "cluster.checksum"


def test_reader_starved_by_the_writer_gets_image_busy(tmp_path, monkeypatch):
    """A writer that commits twice during every attempt of a read: the read
    gives up with image.busy after the bounded retries, not with a corruption
    code; once the writer pauses, the same handle reads fine."""
    import nvbox.image as image_mod
    monkeypatch.setattr(image_mod, "_pause", lambda attempt: None)
    w = nvbox.create(None, cluster_size=512)
    w["x"] = b"0" * 1500
    gen = [0]

    class Busy(nvbox.MemoryDevice):
        active = True

        def read(self, offset, length):
            if self.active and offset >= 2048:          # a cluster, not the header area
                for _ in range(2):
                    gen[0] += 1
                    w["x"] = str(gen[0] % 10).encode() * 1500
            return w.dev.inner.read(offset, length)

        def size(self):
            return w.dev.inner.size()

    dev = Busy()
    r = nvbox.open(dev, "r")
    with pytest.raises(NvboxError) as info:
        r["x"]
    assert info.value.code == "image.busy" and info.value.kind == "state", str(info.value)
    assert gen[0] >= 2 * image_mod._READ_ATTEMPTS
    dev.active = False
    assert r["x"] == str(gen[0] % 10).encode() * 1500


def test_encrypted_reader_follows_commits_without_unlocking_again(tmp_path, monkeypatch):
    """An encrypted reader moving to a newer commit keeps its master key (the
    new slot's MAC proves it): no key derivation per refresh."""
    from nvbox import crypto
    key = crypto.Key.from_passphrase("pass", kdf="fast")
    w = nvbox.create(str(tmp_path / "e.nvbox"), cluster_size=1024, encrypt=True, key=key)
    w["x"] = b"1" * 3000
    w.snapshots.create("s")
    r = nvbox.open(w.path, "r", key=key)
    view = r.snapshots.view("s")
    unlocks = []
    real = crypto.unlock
    monkeypatch.setattr(crypto, "unlock", lambda *a: unlocks.append(1) or real(*a))
    w.snapshots.delete("s")
    for g in b"234":
        w["x"] = bytes([g]) * 3000
    assert r["x"] == b"4" * 3000 and r.generation == w.generation
    with pytest.raises(NvboxError) as info:
        view.read("x")
    assert info.value.code == "snapshot.not_found"
    assert unlocks == []


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


def _compacted():
    w = nvbox.create(None, cluster_size=512)
    w["keep"] = b"k" * 1000
    w["big"] = b"b" * 40000
    del w["big"]
    from nvbox import _format as fmt
    before = bytes(w.dev.inner.data[:fmt.HEADER_AREA])
    compact_image(w)
    now = bytes(w.dev.inner.data)
    assert len(now) < len(before) + 40000
    return before, now


def test_open_racing_a_compaction_truncate():
    before, now = _compacted()
    img = nvbox.open(_StaleHeaderDevice(now, before), "r")
    assert img["keep"] == b"k" * 1000


def test_open_of_a_truncated_image_is_still_image_truncated():
    """The retry is for slots that change: with the same slots, a short file is damage."""
    before, now = _compacted()
    from nvbox import _format as fmt
    with pytest.raises(NvboxError) as info:
        nvbox.open(before + now[fmt.HEADER_AREA:], "r")   # the old slots, the file after the truncation
    assert info.value.code == "image.truncated"



class _FlappingHeaderDevice(nvbox.MemoryDevice):
    """Every read of the header area returns the slots from before a compaction,
    and differs from the previous one (a byte of the ignored header-area tail
    flips): what a reader sees while a writer keeps committing faster than it
    can open."""

    def __init__(self, now: bytes, header_area_before: bytes):
        super().__init__(now)
        self.before, self.reads = bytearray(header_area_before), 0

    def read(self, offset, length):
        if offset == 0:
            self.reads += 1
            self.before[2000] = self.reads & 0xFF
            return bytes(self.before[:length])
        return super().read(offset, length)


def test_open_starved_by_the_writer_gets_image_busy(monkeypatch):
    """[R-lock-3] Opening retries while the slots keep changing, then gives up
    with image.busy (liveness), not image.truncated (damage)."""
    import nvbox.image as image_mod
    monkeypatch.setattr(image_mod, "_pause", lambda attempt: None)
    before, now = _compacted()
    dev = _FlappingHeaderDevice(now, before)
    with pytest.raises(NvboxError) as info:
        nvbox.open(dev, "r")
    assert info.value.code == "image.busy", str(info.value)
    assert dev.reads == image_mod._READ_ATTEMPTS + 1
