"""What the case definitions build with: deterministic images, the logical-content model,
operation helpers, the base images and the Corpus writer that checks each case against the
reference (used by cases_def.py, cases_settled.py, cases_crypto.py, crash_gen.py).

Determinism
-----------
An image embeds a random ``image_uuid`` (``uuid.uuid4``), timestamps
(``time.time``: create_time, commit_time, snapshot createTime) and, when
encrypted, random salts, master keys and AEAD nonces (``os.urandom`` /
``secrets`` / ``random.SystemRandom``).  The allocator itself is deterministic.
``deterministic(seed)`` replaces, for the duration of one image build:

* ``uuid.uuid4``  -> a version-4 UUID drawn from ``random.Random(seed)``;
* ``time.time``   -> the constant ``FIXED_TIME`` (2026-01-01T00:00:00Z);
* ``os.urandom`` and ``random._urandom`` (behind ``random.SystemRandom`` and
  ``secrets``) -> bytes from the same seeded ``random.Random``, so salts,
  master keys and nonces repeat exactly.

Seeds are strings derived from the case or base-image name, so one case's bytes
do not depend on which other cases were generated before it.  Every case is
also checked here against an independent model of its logical content (a dict
of blob name -> bytes kept alongside the operations), so the corpus does not
merely echo the reference reader.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import tempfile
import time
import uuid
from pathlib import Path

import nvbox
from nvbox import adapter as ref_adapter
from nvbox.errors import NvboxError

from conformance import SUITE_VERSION

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CASES_DIR = HERE / "cases"
COVERAGE_MD = HERE / "COVERAGE.md"
SPEC = REPO / "spec" / "nvbox.md"

FIXED_TIME = 1767225600  # 2026-01-01T00:00:00Z
SEED_PREFIX = "nvbox-conformance/1"
MAX_IMAGE = 64 * 1024
GENERATOR = {"tool": "conformance/generate.py", "suite": SUITE_VERSION}

#: Reference behaviour that disagrees with a case (found while generating):
#: (case id, expected, actual).  Printed at the end; the case keeps the spec's answer.
BUGS: list = []


# -- determinism --------------------------------------------------------------------------

@contextlib.contextmanager
def deterministic(seed: str):
    """Patch every source of randomness and time the reference uses (module docstring)."""
    rng = random.Random(f"{SEED_PREFIX}:{seed}")
    saved = (uuid.uuid4, time.time, os.urandom, random._urandom)

    def urandom(n):
        return rng.randbytes(n)

    uuid.uuid4 = lambda: uuid.UUID(bytes=rng.randbytes(16), version=4)
    time.time = lambda: float(FIXED_TIME)
    os.urandom = urandom
    random._urandom = urandom
    try:
        yield rng
    finally:
        uuid.uuid4, time.time, os.urandom, random._urandom = saved


# -- a model of logical content -------------------------------------------------------------

class Model:
    """Blob name -> bytes, and snapshots, kept beside an image as it is built."""

    def __init__(self):
        self.blobs: dict[str, bytes] = {}
        self.snaps: dict[str, tuple[dict, bytes | None]] = {}

    def copy(self):
        m = Model()
        m.blobs = dict(self.blobs)
        m.snaps = dict(self.snaps)
        return m

    def apply(self, op: dict, data: bytes = b"") -> None:
        k = op["op"]
        if k == "put":
            self.blobs[op["name"]] = data
        elif k == "write":
            b = bytearray(self.blobs.get(op["name"], b""))
            off = int(op["offset"])
            if data and len(b) < off + len(data):   # a zero-length write never extends
                b.extend(bytes(off + len(data) - len(b)))
            b[off:off + len(data)] = data
            self.blobs[op["name"]] = bytes(b)
        elif k == "truncate":
            size = int(op["size"])
            self.blobs[op["name"]] = self.blobs[op["name"]][:size].ljust(size, b"\0")
        elif k == "delete":
            del self.blobs[op["name"]]
        elif k == "snapshot_create":
            meta = bytes.fromhex(op["metadata_hex"]) if "metadata_hex" in op else (
                op["metadata_text"].encode() if "metadata_text" in op else None)
            self.snaps[op["name"]] = (dict(self.blobs), meta)
        elif k == "snapshot_delete":
            del self.snaps[op["name"]]
        elif k == "snapshot_revert":
            self.blobs = dict(self.snaps[op["name"]][0])
        elif k == "snapshot_rename":
            self.snaps[op["new"]] = self.snaps.pop(op["name"])

    def logical(self, snapshot: str | None = None) -> dict:
        def blobs(d):
            return {n: {"size": str(len(v)), "sha256": hashlib.sha256(v).hexdigest()}
                    for n, v in sorted(d.items(), key=lambda kv: kv[0].encode())}
        if snapshot is not None:
            return {"format": "nvbox", "blobs": blobs(self.snaps[snapshot][0]), "snapshots": []}
        snaps = []
        for name in sorted(self.snaps, key=lambda n: n.encode()):
            d, meta = self.snaps[name]
            item = {"name": name}
            if meta:
                item["metadata_hex"] = meta.hex()
            item["blobs"] = blobs(d)
            snaps.append(item)
        return {"format": "nvbox", "blobs": blobs(self.blobs), "snapshots": snaps}


def op_data(op: dict, base_dir: Path | None = None) -> bytes:
    if "data_hex" in op:
        return bytes.fromhex(op["data_hex"])
    if "data_text" in op:
        return op["data_text"].encode()
    if "data_repeat" in op:
        return bytes([op["data_repeat"].get("byte", 0)]) * int(op["data_repeat"]["count"])
    if "data_file" in op:
        return (base_dir / op["data_file"]).read_bytes()
    return b""


def model_ops(model: Model, ops: list, files: dict | None = None) -> None:
    for op in ops:
        if op["op"] == "transaction":
            model_ops(model, op["ops"], files)
        elif op["op"] == "compact":
            pass
        else:
            data = files[op["data_file"]] if "data_file" in op else op_data(op)
            model.apply(op, data)


def pattern(n: int, salt: str = "") -> bytes:
    """n deterministic, incompressible-looking bytes."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{salt}:{i}".encode()).digest()
        i += 1
    return bytes(out[:n])


def data_fields(data: bytes) -> dict:
    """The most compact ops.json data source for ``data``."""
    if data and data == bytes([data[0]]) * len(data) and len(data) > 16:
        return {"data_repeat": {"byte": data[0], "count": len(data)}}
    try:
        text = data.decode("ascii")
        if text.isprintable():
            return {"data_text": text}
    except UnicodeDecodeError:
        pass
    return {"data_hex": data.hex()}


def put(name, data):
    return {"op": "put", "name": name, **data_fields(data)}


def write(name, offset, data):
    return {"op": "write", "name": name, "offset": offset, **data_fields(data)}


def truncate(name, size):
    return {"op": "truncate", "name": name, "size": size}


def delete(name):
    return {"op": "delete", "name": name}


def snap(name, meta: bytes | None = None):
    op = {"op": "snapshot_create", "name": name}
    if meta is not None:
        op["metadata_hex"] = meta.hex()
    return op


def txn(*ops):
    return {"op": "transaction", "ops": list(ops)}


# -- building images ---------------------------------------------------------------------

def image_bytes(img) -> bytes:
    dev = img.counting.inner
    return bytes(dev.data)


def build(seed: str, ops: list, cluster_size: int = 512, capacity=None, encrypt=False, key=None,
          files: dict | None = None, hook=None) -> tuple[bytes, Model]:
    """Create an in-memory image, run ``ops`` through the reference adapter's
    ``run_ops`` and the model; return the bytes and the model."""
    model = Model()
    with deterministic(seed):
        img = nvbox.create(None, cluster_size=cluster_size, capacity=capacity, encrypt=encrypt, key=key)
        with tempfile.TemporaryDirectory() as tmp:
            for name, content in (files or {}).items():
                Path(tmp, name).write_bytes(content)
            ref_adapter.run_ops(img, ops, tmp)
        if hook is not None:
            hook(img)
        raw = image_bytes(img)
        img.close()
    model_ops(model, ops, files)
    return raw, model


def reference_read(raw: bytes, snapshot=None, key=None):
    """(logical content, None) or (None, error code) as the reference reads ``raw``;
    ``key`` may be a Key or the bytes of a key file (which the reference may refuse)."""
    try:
        if isinstance(key, bytes):
            key = _key_from_bytes(key)
        with nvbox.open(bytes(raw), key=key) as img:
            return ref_adapter.logical_content(img, snapshot), None
    except NvboxError as exc:
        return None, exc.code


def reference_check(raw: bytes, key=None) -> str:
    from nvbox.check import check_image
    try:
        img = nvbox.open(bytes(raw), key=key)
    except NvboxError:
        return "corrupt"
    with img:
        try:
            return check_image(img).verdict
        except NvboxError:
            return "corrupt"


def _memo(fn):
    cache = {}

    def wrapper(*args):
        if args not in cache:
            cache[args] = fn(*args)
        return cache[args]
    wrapper.__name__ = fn.__name__
    return wrapper


# -- base images -----------------------------------------------------------------------------

def base_ops(cs: int) -> list:
    im = min(cs // 8, 1024)
    return [
        put("a/inline", pattern(min(20, im), "a")),
        put("b/one", pattern(im + 100, "b")),                   # one data cluster (depth 0)
        put("c/multi", pattern(cs * 5 + 77, "c")),              # a level-1 map, partial last cluster
        put("d/empty", b""),
        put("e/two", pattern(cs + 1, "e")),
    ]


@_memo
def base(cs: int = 512):
    return build(f"base-{cs}", base_ops(cs), cs)


@_memo
def base_snap(cs: int = 512):
    ops = base_ops(cs) + [snap("s1", b"{\"vm\":\"boot\"}"), put("b/one", pattern(300, "b2")),
                          delete("e/two"), put("f/new", pattern(40, "f"))]
    return build(f"base-snap-{cs}", ops, cs)


@_memo
def base_deep(cs: int = 512, n: int = 60):
    ops = [put(f"dev{i:03d}/state", pattern(40 + i % 20, f"deep{i}")) for i in range(n)]
    return build(f"base-deep-{cs}-{n}", ops, cs)


@_memo
def base_sparse(cs: int = 512, offset: int = 20000):
    ops = [put("small", b"hello"), write("sparse", offset, pattern(cs + 10, "sp"))]
    return build(f"base-sparse-{cs}-{offset}", ops, cs)


@_memo
def base_two_gens(cs: int = 512):
    """An image whose two slots are both valid: generation g-1 and g."""
    return build(f"two-gens-{cs}", base_ops(cs) + [put("z/last", pattern(30, "z"))], cs)


def add_refcount_level(img) -> None:
    """Commit once with one more refcount level than needed (a valid, deeper tree)."""
    with img._change():
        img.store._add_refcount_level()


@_memo
def base_refdepth2(cs: int = 512):
    return build(f"refdepth2-{cs}", base_ops(cs), cs, hook=add_refcount_level)


# -- the corpus ------------------------------------------------------------------------------

class Corpus:
    def __init__(self, out: Path):
        self.out = out
        self.ids: list[str] = []
        self.manifests: dict[str, dict] = {}

    def _write(self, cid: str, manifest: dict, files: dict) -> None:
        assert cid not in self.manifests, f"duplicate case {cid}"
        d = self.out / cid
        d.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            p = d / name
            p.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, (dict, list)):
                content = dumps(content)
            if isinstance(content, str):
                content = content.encode()
            if name.endswith(".nvbox"):
                assert len(content) <= MAX_IMAGE, f"{cid}/{name}: {len(content)} bytes, above 64 KiB"
            p.write_bytes(content)
        (d / "case.json").write_bytes(dumps(manifest))
        self.ids.append(cid)
        self.manifests[cid] = manifest

    def manifest(self, kind, area, name, description, spec, **extra) -> tuple[str, dict]:
        cid = f"{kind}/{area}/{name}"
        m = {"id": cid, "kind": kind, "description": description, "spec": list(dict.fromkeys(spec)), "since": SUITE_VERSION}
        for k, v in extra.items():
            if v is not None:
                m[k] = v
        m["generator"] = dict(GENERATOR)
        return cid, m

    # -- kinds --------------------------------------------------------------------

    def read_valid(self, area, name, description, spec, raw, expected, snapshot=None, flags=None,
                   key_file: bytes | None = None, key=None):
        cid, m = self.manifest("read-valid", area, name, description, spec, flags=flags, snapshot=snapshot,
                               key_file="key.bin" if key_file else None)
        got, err = reference_read(raw, snapshot, key)
        if got != expected:
            BUGS.append((cid, "reads as expected.json", f"error {err}" if err else "different content"))
        files = {"image.nvbox": raw, "expected.json": expected}
        if key_file:
            files["key.bin"] = key_file
        self._write(cid, m, files)

    def read_invalid(self, area, name, description, spec, raw, error, accept=None, snapshot=None, flags=None,
                     key_file: bytes | None = None, key=None, notes=None):
        cid, m = self.manifest("read-invalid", area, name, description, spec, flags=flags, snapshot=snapshot,
                               error=error, accept_errors=accept, key_file="key.bin" if key_file else None,
                               notes=notes)
        got, err = reference_read(raw, snapshot, key)
        allowed = [error] + (accept or [])
        if err is None or not any(err == a or err.startswith(a + ".") for a in allowed):
            BUGS.append((cid, f"error {error}", f"error {err}" if err else "accepted"))
        files = {"image.nvbox": raw}
        if key_file:
            files["key.bin"] = key_file
        self._write(cid, m, files)

    def read_acceptable(self, area, name, description, spec, raw, expected, accept, flags, notes=None, snapshot=None):
        cid, m = self.manifest("read-acceptable", area, name, description, spec, flags=flags, snapshot=snapshot,
                               accept_errors=accept, notes=notes)
        got, err = reference_read(raw, snapshot)
        if not (got == expected or (err and any(err == a or err.startswith(a + ".") for a in accept))):
            BUGS.append((cid, f"content or error {accept}", f"error {err}" if err else "different content"))
        self._write(cid, m, {"image.nvbox": raw, "expected.json": expected})

    def check(self, area, name, description, spec, raw, verdict, notes=None, key_file: bytes | None = None):
        cid, m = self.manifest("check", area, name, description, spec, verdict=verdict, notes=notes,
                               key_file="key.bin" if key_file else None)
        got = reference_check(raw, _key_from_bytes(key_file) if key_file else None)
        if got != verdict:
            BUGS.append((cid, f"verdict {verdict}", f"verdict {got}"))
        files = {"image.nvbox": raw}
        if key_file:
            files["key.bin"] = key_file
        self._write(cid, m, files)

    def write(self, area, name, description, spec, ops, create=None, error=None, accept=None,
              expect_check=None, files=None, key_file: bytes | None = None, flags=None):
        cid, m = self.manifest("write", area, name, description, spec, flags=flags, error=error,
                               accept_errors=accept, expect_check=expect_check,
                               key_file="key.bin" if key_file else None)
        script = {"create": create} if create else {}
        script["ops"] = ops
        out = {"ops.json": script}
        out.update(files or {})
        if key_file:
            out["key.bin"] = key_file
        create = create or {}
        try:
            key = _key_from_bytes(key_file) if key_file else None   # a key file the reference refuses
            raw, model = build(cid, ops, create.get("cluster_size", 4096), create.get("capacity"),
                               create.get("encrypt", False), key, files)
            got_err = None
        except NvboxError as exc:
            got_err, raw, model = exc.code, None, None
        if error is not None:
            if got_err is None or not any(got_err == a or got_err.startswith(a + ".") for a in [error] + (accept or [])):
                BUGS.append((cid, f"script fails with {error}", f"error {got_err}" if got_err else "succeeded"))
        else:
            if got_err is not None:
                raise RuntimeError(f"{cid}: the reference fails the script with {got_err}")
            expected = model.logical()
            got, err = reference_read(raw, key=key)
            if got != expected:
                BUGS.append((cid, "written image reads as the model", f"error {err}" if err else "different content"))
            verdict = reference_check(raw, key)
            if verdict not in (expect_check or ["clean"]):
                BUGS.append((cid, f"check {expect_check or ['clean']}", f"check {verdict}"))
            out["expected.json"] = expected
        self._write(cid, m, out)

    def roundtrip(self, area, name, description, spec, raw, expected_before, expect: dict, expect_check=None,
                  flags=None, key_file: bytes | None = None):
        cid, m = self.manifest("roundtrip", area, name, description, spec, flags=flags, expect_check=expect_check,
                               key_file="key.bin" if key_file else None)
        logical = json.loads(json.dumps(expected_before))
        logical["blobs"][ref_adapter.REWRITE_BLOB] = {
            "size": "1", "sha256": hashlib.sha256(ref_adapter.REWRITE_DATA).hexdigest()}
        logical["blobs"] = dict(sorted(logical["blobs"].items(), key=lambda kv: kv[0].encode()))
        m["expect_after_rewrite"] = dict({"logical": "expected-after.json"}, **expect)
        m["generator"] = m.pop("generator")
        files = {"image.nvbox": raw, "expected-after.json": logical}
        if key_file:
            files["key.bin"] = key_file
        self._write(cid, m, files)

    def crash(self, area, name, description, spec, images: list, states: dict, notes=None):
        cid, m = self.manifest("crash", area, name, description, spec, images=images, notes=notes)
        m["generator"] = m.pop("generator")
        files = {}
        for entry, raw in zip(images, states.pop("__images__")):
            files[entry["image"]] = raw
        for sname, doc in states.items():
            files[f"states/{sname}.json"] = doc
        self._write(cid, m, files)


def dumps(obj) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _key_from_bytes(key_bytes: bytes):
    from nvbox import crypto
    return crypto.Key.from_key_bytes(key_bytes)


def have_crypto() -> bool:
    try:
        from nvbox import crypto  # noqa: F401
        return hasattr(crypto, "Key")
    except ImportError:
        return False
