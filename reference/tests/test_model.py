"""Model-based tests: random sequences of operations against a plain model.

A hypothesis RuleBasedStateMachine drives put, partial write, truncate, delete,
transactions (committed or aborted by an exception), reopen from the device
bytes, snapshot create/revert/delete/rename/view/diff, on growable images and
a small fixed-capacity image that runs out of space [R-alloc-3] [R-commit-4].
After every step the image must equal the model (blobs and every snapshot) and
``check`` must find it clean: no corruption, no leak, no wrong count
[R-ref-6] [R-check-1] [R-cow-1] [R-cow-2] [R-cow-3] [R-snap-1..3] [R-map-1..3].

Blob sizes cross inline_max (cluster_size / 8) and multi-level maps: with
512-byte clusters the fanout is 32, so blobs above 16 KiB have depth 2 and a
write near 600 000 makes depth 3.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import nvbox
from nvbox.check import check_image
from nvbox.errors import NvboxError
from nvbox.snapshots import diff

NAMES = st.sampled_from(["a", "b", "tpm/permanent", "nic0/eeprom", "é" * 40, "z" * 255])
SNAP_NAMES = st.sampled_from(["s1", "s2", "s3"])
SIZES = st.one_of(
    st.sampled_from([0, 1, 63, 64, 65, 511, 512, 513, 4095, 4096, 4097, 16384, 16385, 17000, 33000]),
    st.integers(0, 20000),
)
OFFSETS = st.one_of(
    st.sampled_from([0, 1, 63, 64, 65, 511, 512, 513, 4096, 16384, 16385, 600000]),
    st.integers(0, 40000),
)
SEEDS = st.integers(0, 2 ** 32 - 1)
WRITE_LENS = st.sampled_from([0, 1, 7, 64, 65, 500, 512, 513, 1500, 4096, 4097, 9000])


class Abort(Exception):
    pass


def data_for(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def apply_model(model: dict, op) -> None:
    """Apply ``op`` to a model dict (name -> bytes)."""
    kind, name, offset, size, seed = op
    if kind == "put":
        model[name] = data_for(seed, size)
    elif kind == "write":
        buf = bytearray(model.get(name, b""))
        data = data_for(seed, size)
        if data:
            if offset > len(buf):
                buf.extend(bytes(offset - len(buf)))
            buf[offset:offset + len(data)] = data
        model[name] = bytes(buf)
    elif kind == "truncate":
        buf = model[name]
        model[name] = buf[:size] + bytes(max(0, size - len(buf)))
    elif kind == "delete":
        del model[name]


def apply_image(img, op) -> None:
    kind, name, offset, size, seed = op
    if kind == "put":
        img[name] = data_for(seed, size)
    elif kind == "write":
        img.write(name, offset, data_for(seed, size))
    elif kind == "truncate":
        img.truncate(name, size)
    elif kind == "delete":
        del img[name]


OPS = st.tuples(st.sampled_from(["put", "write", "truncate", "delete"]), NAMES, OFFSETS, SIZES, SEEDS)


class ImageModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.img = None
        self.model: dict[str, bytes] = {}
        self.snaps: dict[str, dict[str, bytes]] = {}
        self.fixed = False

    @initialize(cluster_size=st.sampled_from([512, 4096]), fixed=st.booleans())
    def start(self, cluster_size, fixed):
        # The fixed image only makes sense small: 64 KiB of 512-byte clusters.
        self.fixed = fixed
        if fixed:
            self.img = nvbox.create(None, cluster_size=512, capacity=64 * 1024)
        else:
            self.img = nvbox.create(None, cluster_size=cluster_size)

    # -- helpers ---------------------------------------------------------------

    def attempt(self, fn, model_change=None):
        """Run ``fn``; on success apply ``model_change``.  A fixed image may refuse
        with space.exhausted, and then nothing may have changed."""
        gen = self.img.generation
        try:
            fn()
        except NvboxError as exc:
            if self.fixed and exc.code == "space.exhausted":
                assert self.img.generation == gen
                return False
            raise
        if model_change:
            model_change()
        return True

    def clamp(self, op):
        kind, name, offset, size, seed = op
        if kind == "write":
            size = min(size, 9000)
        if self.fixed and kind in ("put", "truncate"):
            size = min(size, 40000)
        return (kind, name, offset, size, seed)

    # -- blob rules ----------------------------------------------------------------

    @rule(name=NAMES, size=SIZES, seed=SEEDS)
    def put(self, name, size, seed):
        op = ("put", name, 0, size, seed)
        self.attempt(lambda: apply_image(self.img, op), lambda: apply_model(self.model, op))

    @rule(name=NAMES, offset=OFFSETS, n=WRITE_LENS, seed=SEEDS)
    def write(self, name, offset, n, seed):
        op = ("write", name, offset, n, seed)
        self.attempt(lambda: apply_image(self.img, op), lambda: apply_model(self.model, op))

    @rule(name=NAMES, size=SIZES)
    def truncate(self, name, size):
        op = ("truncate", name, 0, size, 0)
        if name not in self.model:
            try:
                self.img.truncate(name, size)
            except NvboxError as exc:
                assert exc.code == "blob.not_found"
            else:
                raise AssertionError("truncate of a missing blob succeeded")
            return
        self.attempt(lambda: apply_image(self.img, op), lambda: apply_model(self.model, op))

    @rule(name=NAMES)
    def delete(self, name):
        if name not in self.model:
            try:
                del self.img[name]
            except NvboxError as exc:
                assert exc.code == "blob.not_found"
            else:
                raise AssertionError("delete of a missing blob succeeded")
            return
        op = ("delete", name, 0, 0, 0)
        self.attempt(lambda: apply_image(self.img, op), lambda: apply_model(self.model, op))

    @rule(ops=st.lists(OPS, min_size=1, max_size=5), abort=st.booleans(), nested=st.booleans())
    def transaction(self, ops, abort, nested):
        staged = dict(self.model)
        plan = []
        for op in ops:
            op = self.clamp(op)
            if op[0] in ("truncate", "delete") and op[1] not in staged:
                continue
            apply_model(staged, op)
            plan.append(op)
        gen = self.img.generation

        def run():
            with self.img.transaction():
                half = len(plan) // 2
                for op in plan[:half]:
                    apply_image(self.img, op)
                if nested:
                    with self.img.transaction():
                        for op in plan[half:]:
                            apply_image(self.img, op)
                else:
                    for op in plan[half:]:
                        apply_image(self.img, op)
                if abort:
                    raise Abort

        try:
            committed = self.attempt(run)
        except Abort:
            assert self.img.generation == gen
            return
        if committed:
            self.model = staged
            assert self.img.generation == gen + (1 if plan else 0)

    @rule()
    def reopen(self):
        gen = self.img.generation
        raw = bytes(self.img.dev.inner.data)
        self.img = nvbox.open(raw, "rw")
        assert self.img.generation == gen

    # -- snapshots ------------------------------------------------------------------

    @rule(name=SNAP_NAMES, meta=st.one_of(st.none(), st.binary(max_size=16)))
    def snapshot_create(self, name, meta):
        if name in self.snaps:
            try:
                self.img.snapshots.create(name)
            except NvboxError as exc:
                assert exc.code == "snapshot.exists"
            else:
                raise AssertionError("duplicate snapshot name accepted")
            return
        if self.attempt(lambda: self.img.snapshots.create(name, meta),
                        lambda: self.snaps.__setitem__(name, dict(self.model))):
            info = [s for s in self.img.snapshots.list() if s.name == name][0]
            assert info.metadata == meta and info.blob_count == len(self.model)

    @precondition(lambda self: self.snaps)
    @rule(data=st.data())
    def snapshot_revert(self, data):
        name = data.draw(st.sampled_from(sorted(self.snaps)))
        self.attempt(lambda: self.img.snapshots.revert(name),
                     lambda: setattr(self, "model", dict(self.snaps[name])))

    @precondition(lambda self: self.snaps)
    @rule(data=st.data())
    def snapshot_delete(self, data):
        name = data.draw(st.sampled_from(sorted(self.snaps)))
        self.attempt(lambda: self.img.snapshots.delete(name), lambda: self.snaps.pop(name))

    @precondition(lambda self: self.snaps)
    @rule(data=st.data(), new=SNAP_NAMES)
    def snapshot_rename(self, data, new):
        old = data.draw(st.sampled_from(sorted(self.snaps)))
        if new != old and new in self.snaps:
            try:
                self.img.snapshots.rename(old, new)
            except NvboxError as exc:
                assert exc.code == "snapshot.exists"
            else:
                raise AssertionError("rename onto an existing snapshot accepted")
            return

        def change():
            self.snaps[new] = self.snaps.pop(old)
        self.attempt(lambda: self.img.snapshots.rename(old, new), change)

    @precondition(lambda self: self.snaps)
    @rule(data=st.data())
    def snapshot_diff(self, data):
        name = data.draw(st.sampled_from(sorted(self.snaps)))
        d = diff(self.img, name)
        old, new = self.snaps[name], self.model
        assert d["added"] == sorted(new.keys() - old.keys())
        assert d["removed"] == sorted(old.keys() - new.keys())
        really_changed = {n for n in old.keys() & new.keys() if old[n] != new[n]}
        assert really_changed <= set(d["changed"]) <= (old.keys() & new.keys())

    @rule(name=SNAP_NAMES)
    def snapshot_missing(self, name):
        if name not in self.snaps:
            for call in (lambda: self.img.snapshots.revert(name), lambda: self.img.snapshots.view(name),
                         lambda: self.img.snapshots.delete(name)):
                try:
                    call()
                except NvboxError as exc:
                    assert exc.code == "snapshot.not_found"
                else:
                    raise AssertionError("operation on a missing snapshot succeeded")

    # -- invariants --------------------------------------------------------------

    @invariant()
    def matches_model(self):
        if self.img is None:
            return
        img = self.img
        assert img.names() == sorted(self.model)
        assert len(img) == len(self.model)
        for name, data in self.model.items():
            st_ = img.stat(name)
            assert st_.size == len(data)
            assert st_.inline == (len(data) <= img.geo.inline_max)
            assert st_.depth == (0 if st_.inline else img.geo.map_depth(len(data)))
            assert img[name] == data, name
        listed = img.snapshots.list()
        assert sorted(s.name for s in listed) == sorted(self.snaps)
        assert [s.id for s in listed] == sorted(s.id for s in listed)
        for sname, content in self.snaps.items():
            view = img.snapshots.view(sname)
            assert view.names() == sorted(content)
            assert len(view) == len(content)
            for name, data in content.items():
                assert view[name] == data, (sname, name)

    @invariant()
    def check_clean(self):
        if self.img is None:
            return
        r = check_image(self.img)
        assert r.verdict == "clean", (r.corruptions, r.leaks[:5], r.refcount_errors[:5])
        if self.fixed:
            assert self.img.slot.image_clusters <= 128


ImageModel.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None,
                                        suppress_health_check=[HealthCheck.too_slow,
                                                               HealthCheck.filter_too_much,
                                                               HealthCheck.data_too_large])
TestImageModel = ImageModel.TestCase


class FixedImageModel(ImageModel):
    """Always the small fixed image, with larger blobs, to reach exhaustion often."""

    @initialize()
    def start(self):
        self.fixed = True
        self.img = nvbox.create(None, cluster_size=512, capacity=64 * 1024)

    @rule(name=NAMES, seed=SEEDS, kb=st.integers(8, 40))
    def put_large(self, name, seed, kb):
        op = ("put", name, 0, kb * 1024, seed)
        self.attempt(lambda: apply_image(self.img, op), lambda: apply_model(self.model, op))


FixedImageModel.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None,
                                             suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.filter_too_much,
                                                                    HealthCheck.data_too_large])
TestFixedImageModel = FixedImageModel.TestCase
