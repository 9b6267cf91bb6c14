"""The transaction object and the long-lived form servers use (begin/commit/abort),
and the two public changes they need: rename and zero (hole punching).

Every change is followed by ``check``: counts must match the trees (no leak,
no under-count) after commits, aborts and failures, and after a crash at every
device write (crash states replayed by ``nvbox.crashsim``).
"""

from __future__ import annotations

import pytest

import nvbox
from nvbox.check import check_image
from nvbox.crashsim import run_crash_workload
from nvbox.errors import NvboxError

CS = 512


def code_of(fn, *args, **kwargs) -> str:
    with pytest.raises(NvboxError) as ei:
        fn(*args, **kwargs)
    return ei.value.code


def clean(img) -> None:
    result = check_image(img)
    assert result.verdict == "clean", result.to_json()


def reopened(img):
    return nvbox.open(bytes(img.dev.inner.data), "r")


@pytest.fixture
def img():
    im = nvbox.create(None, cluster_size=CS)
    im["a"] = b"A" * 3000
    im["small"] = b"s" * 10
    return im


# -- the transaction object --------------------------------------------------------------------

def test_the_with_block_still_commits_once_and_yields_the_image(img):
    g = img.generation
    with img.transaction() as t:
        assert t is img and img.in_transaction and not img.pending
        img["b"] = b"1"
        img["c"] = b"2" * 2000
        assert img.pending and img.txn.changed
        assert reopened(img).names() == ["a", "small"]      # nothing durable yet
    assert img.generation == g + 1 and not img.pending and not img.in_transaction
    assert reopened(img).names() == ["a", "b", "c", "small"]
    clean(img)


def test_begin_commit_groups_calls_and_returns_the_generation(img):
    g = img.generation
    assert img.commit() == g                # nothing open, nothing pending
    txn = img.begin()
    assert txn is img.txn and img.in_transaction and not img.pending
    assert img.commit() == g                # open but empty: no commit
    assert not img.in_transaction
    img.begin()
    for i in range(5):
        img.write("log", i * 100, bytes([i]) * 100)       # sequential: gathered
    assert img.pending and img.txn.gathered is not None
    img["b"] = b"x" * 700
    assert img.generation == g
    assert img.commit() == g + 1
    assert not img.pending and not img.in_transaction
    again = reopened(img)
    assert again["log"] == b"".join(bytes([i]) * 100 for i in range(5)) and again["b"] == b"x" * 700
    clean(img)
    img["after"] = b"1"                     # closed: back to one commit per change
    assert img.generation == g + 2


def test_abort_drops_everything_back_to_the_last_commit(img):
    g = img.generation
    img.begin()
    img["a"] = b"changed"
    img.delete("small")
    img.write("new", 0, b"n" * 5000)
    img.abort()
    assert not img.in_transaction and not img.pending and img.generation == g
    assert img["a"] == b"A" * 3000 and img.names() == ["a", "small"]
    clean(img)
    img.abort()                             # none open: nothing happens


def test_begin_and_commit_refuse_to_nest(img):
    img.begin()
    assert code_of(img.begin) == "usage.argument"
    with img.transaction():                 # joins the open one, commits nothing by itself
        img["b"] = b"1"
        assert code_of(img.commit) == "usage.argument"
        assert code_of(img.abort) == "usage.argument"
    assert img.in_transaction and img.pending
    assert code_of(img.snapshots.create, "s") == "usage.argument"
    img.commit()
    img.snapshots.create("s")
    with img.transaction():
        assert code_of(img.begin) == "usage.argument"


def test_a_failure_abandons_the_long_lived_transaction():
    """R-commit-4: a failing change drops the whole transaction, the handle is at
    the last durable commit, and no transaction stays open."""
    im = nvbox.create(None, cluster_size=CS, capacity=32 * CS)
    im["keep"] = b"k" * 1000
    g = im.generation
    im.begin()
    im["lost"] = b"1" * 600
    assert code_of(im.put, "big", b"x" * 64 * CS) == "space.exhausted"
    assert not im.in_transaction and not im.pending and im.generation == g
    assert im.names() == ["keep"]
    clean(im)
    im["next"] = b"2"                       # the handle goes on, one commit per change
    assert im.generation == g + 1
    clean(im)


def test_readonly_handle_refuses_begin(img):
    ro = reopened(img)
    assert code_of(ro.begin) == "image.readonly"
    assert ro.commit() == ro.generation and not ro.pending


def test_close_drops_an_open_transaction(img):
    g = img.generation
    img.begin()
    img["x"] = b"1" * 900
    raw_before = bytes(img.dev.inner.data)
    img.close()
    again = nvbox.open(raw_before, "r")
    assert again.generation == g and "x" not in again


def test_key_slot_change_is_data_in_the_transaction(tmp_path):
    key = nvbox.crypto.Key.from_passphrase("pw", kdf="fast")
    other = nvbox.crypto.Key.from_passphrase("other", kdf="fast")
    im = nvbox.create(None, cluster_size=1024, encrypt=True, key=key)
    im["a"] = b"1" * 2000
    with im.transaction():
        i = im.key_slots.add(other)
        assert im.txn.keyslot_table is not None and im.txn.keyslot_table[i].in_use
        im.key_slots.remove(0)              # a second change reads the pending table
        assert len(im.key_slots) == 1
    clean(im)
    raw = bytes(im.dev.inner.data)
    assert code_of(nvbox.open, raw, key=nvbox.crypto.Key.from_passphrase("pw", kdf="fast")) == "key.invalid"
    assert nvbox.open(raw, key=other)["a"] == b"1" * 2000
    im["b"] = b"2"                          # the handle still works (it holds the master key)
    clean(im)


# -- rename ------------------------------------------------------------------------------------------

def test_rename_moves_the_entry_without_writing_data(img):
    img["big"] = b"B" * 20000
    before = img.stats["clusters_written"]
    img.rename("big", "zz/moved")
    assert img["zz/moved"] == b"B" * 20000 and "big" not in img and len(img) == 3
    # a new directory leaf and refcount block, never the 40 data clusters
    assert img.stats["clusters_written"] - before < 5
    clean(img)
    again = reopened(img)
    assert again.names() == ["a", "small", "zz/moved"]


def test_rename_replaces_or_refuses(img):
    img.rename("a", "small")
    assert img["small"] == b"A" * 3000 and img.names() == ["small"]
    clean(img)
    img["t"] = b"t" * 900
    g = img.generation
    assert code_of(img.rename, "t", "small", replace=False) == "blob.exists"
    assert code_of(img.rename, "nope", "x") == "blob.not_found"
    assert code_of(img.rename, "t", "a/../b") == "blob.name"
    assert img.generation == g and img.names() == ["small", "t"]
    img.rename("t", "t")                    # onto itself: nothing
    assert img.generation == g
    assert code_of(img.rename, "gone", "gone") == "blob.not_found"
    clean(img)


def test_rename_shares_with_a_snapshot_and_inside_a_transaction(img):
    img.snapshots.create("s")
    img.begin()
    img.write("a", 0, b"new")
    img.rename("a", "b")
    img.rename("small", "a")
    img.commit()
    assert img["b"][:4] == b"newA" and img["a"] == b"s" * 10
    assert img.snapshots.view("s")["a"] == b"A" * 3000
    clean(img)
    img.snapshots.delete("s")
    clean(img)


# -- zero --------------------------------------------------------------------------------------------

def _used(img) -> int:
    return img.info()["used_clusters"]


def test_zero_punches_whole_clusters_and_fills_partial_ones(img):
    data = bytes(range(256)) * 40                 # 10240 bytes, 20 clusters
    img["z"] = data
    used = _used(img)
    img.zero("z", 700, 5000)                        # clusters 2..10 whole, 1 and 11 partly
    want = bytearray(data)
    want[700:5700] = bytes(5000)
    assert img["z"] == bytes(want) and img.stat("z").size == len(data)
    assert _used(img) == used - 9
    clean(img)
    img.zero("z", 5700, 10 ** 9)                    # to the end (past it is ignored): the tail cluster too
    assert img["z"] == bytes(want[:5700]) + bytes(len(data) - 5700)
    assert img.stat("z").size == len(data)
    clean(img)
    img.zero("z", 0, len(data))
    assert img["z"] == bytes(len(data))
    assert _used(img) == used - 21                  # its 20 data clusters and the map node over them
    clean(img)


def test_zero_inside_one_cluster_and_over_holes(img):
    img["sparse"] = b""
    img.truncate("sparse", 8 * CS)                 # all holes
    used = _used(img)
    img.zero("sparse", 10, 3 * CS)                 # nothing to write: holes stay holes
    assert _used(img) == used and img["sparse"] == bytes(8 * CS)
    img.write("sparse", CS, b"q" * CS)
    img.zero("sparse", CS + 5, 10)
    assert img.read("sparse", CS, CS) == b"q" * 5 + bytes(10) + b"q" * (CS - 15)
    clean(img)


def test_zero_inline_extend_and_errors(img):
    img.zero("small", 2, 3)
    assert img["small"] == b"ss" + bytes(3) + b"sssss"
    img.zero("small", 8, 100)
    assert img["small"] == b"ss" + bytes(3) + b"sss" + bytes(2)
    img.zero("small", 5, 20, extend=True)
    assert img["small"] == b"ss" + bytes(23) and img.stat("small").inline
    img.zero("a", 2000, 10000, extend=True)
    assert img.stat("a").size == 12000 and img["a"] == b"A" * 2000 + bytes(10000)
    clean(img)
    assert code_of(img.zero, "nope", 0, 1) == "blob.not_found"
    assert code_of(img.zero, "a", -1, 1) == "usage.argument"
    assert code_of(img.zero, "a", 0, -1) == "usage.argument"
    assert code_of(img.zero, "a", 0, 1 << 62, extend=True) == "blob.too_large"


def test_zero_keeps_a_snapshots_clusters(img):
    img["z"] = b"z" * (6 * CS)
    img.snapshots.create("s")
    used = _used(img)
    img.zero("z", 0, 6 * CS)
    assert _used(img) >= used                     # shared with the snapshot: nothing freed
    assert img.snapshots.view("s")["z"] == b"z" * (6 * CS)
    clean(img)
    img.snapshots.delete("s")
    clean(img)


# -- crashes -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("what", ["rename", "zero", "long-lived"])
def test_crash_at_any_point_leaves_the_old_or_the_new_state_with_exact_counts(what):
    """R-commit-2: whatever part of the writes reached the medium, the image
    opens as the old or the new commit, and check finds the counts exact."""
    before = {}

    def setup(dev):
        im = nvbox.create(dev, cluster_size=CS)
        im["a"] = bytes(range(256)) * 24
        im["b"] = b"b" * 1500
        before.update({n: im[n] for n in im.names()})
        im.close()

    def operation(dev):
        im = nvbox.open(dev, "rw")
        if what == "rename":
            im.rename("a", "b")
        elif what == "zero":
            im.zero("a", 100, 5000)
        else:
            im.begin()
            im.zero("b", 0, 1500)
            im.rename("b", "c")
            im.write("a", 6000, b"tail")
            im.commit()
        after = {n: im[n] for n in im.names()}
        im.close()
        return after

    seen = []

    def check_state(state):
        im = nvbox.open(state.image, "r")
        seen.append({n: im[n] for n in im.names()})
        result = check_image(im)
        # Counts exact; the only finding a crash may leave is the slot it tore (R-check-3).
        assert not result.leaks and not result.refcount_errors, result.to_json()
        assert all(c["code"] == "slot.damaged" for c in result.corruptions), result.corruptions

    stats = run_crash_workload(setup, operation, check_state, max_exhaustive=6, samples=24)
    assert stats.result != before
    assert all(content in (before, stats.result) for content in seen)
    assert before in seen and stats.result in seen


def test_a_write_that_may_create_a_blob_follows_puts_name_rule():
    # put refused names that export and the mount cannot turn into paths; a write
    # that creates the blob must refuse them too, before touching the transaction.
    img = nvbox.create(None)
    img.put("keep", b"1")
    img.begin()
    img.write("pending", 0, b"2")
    for bad in ("../x", "/abs", "a//b", "a/"):
        with pytest.raises(nvbox.NvboxError) as exc:
            img.write(bad, 0, b"x")
        assert exc.value.code == "blob.name"
    assert img.in_transaction and img.pending       # the open transaction survived
    img.commit()
    assert img.names() == ["keep", "pending"]
