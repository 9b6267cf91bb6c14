"""The conformance protocol adapter of the reference implementation.

    python -m nvbox.adapter read    IMAGE [--snapshot NAME]
    python -m nvbox.adapter check   IMAGE
    python -m nvbox.adapter write   OPS.json OUT
    python -m nvbox.adapter rewrite IMAGE OUT
    python -m nvbox.adapter inspect IMAGE

The protocol is conformance/README.md section 1: one JSON object on stdout;
exit 0 success, 1 rejected (``{"error": {"code", "message"}}``), 3 unsupported.
Keys come from the file named by ``NVBOX_KEY_FILE``.  The operation-script format
of ``write`` is conformance/schema/ops.schema.json (README section 11).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import traceback

import nvbox

from . import crypto
from .check import check_image
from .compact import compact_image
from .errors import NvboxError, raise_code

__all__ = ["main", "logical_content", "run_ops", "load_ops", "EXIT_OK", "EXIT_REJECTED", "EXIT_UNSUPPORTED"]

EXIT_OK, EXIT_REJECTED, EXIT_UNSUPPORTED = 0, 1, 3
KEY_ENV = "NVBOX_KEY_FILE"
REWRITE_BLOB, REWRITE_DATA = "conformance/rewrite", b"x"
_CHUNK = 1 << 20


class Unsupported(Exception):
    """The adapter lacks what the case needs (exit 3)."""

    def __init__(self, what, message):
        super().__init__(message)
        self.what, self.message = what, message


def _key():
    path = os.environ.get(KEY_ENV)
    if not path:
        return None
    return crypto.Key.from_key_file(path)


def _open(path, mode="r"):
    return nvbox.open(path, mode, key=_key())


# -- read ------------------------------------------------------------------------------------

def _blob(reader, name, size) -> dict:
    h = hashlib.sha256()
    for offset in range(0, size, _CHUNK):
        chunk = reader.read(name, offset, min(_CHUNK, size - offset))
        if len(chunk) != min(_CHUNK, size - offset):
            raise_code("map.tail", f"blob {name!r} read short")
        h.update(chunk)
    return {"size": str(size), "sha256": h.hexdigest()}


def _blobs(img, reader, dir_root, dir_depth) -> dict:
    out = {}
    for e in img.trees.dir_iter(dir_root, dir_depth):
        out[e.name] = _blob(reader, e.name, e.size)
    return dict(sorted(out.items(), key=lambda kv: kv[0].encode("utf-8")))


def logical_content(img, snapshot=None) -> dict:
    """The canonical logical content (conformance/README.md section 2), every byte verified."""
    snaps = img.snapshots
    if snapshot is not None:
        view = snaps.view(snapshot)
        r = view.record
        return {"format": "nvbox", "blobs": _blobs(img, view, r.dir_root, r.dir_depth), "snapshots": []}
    doc = {"format": "nvbox", "blobs": _blobs(img, img, img.state.dir_root, img.state.dir_depth), "snapshots": []}
    for info in sorted(snaps.list(), key=lambda s: s.name.encode("utf-8")):
        view = snaps.view(info.name)
        r = view.record
        item = {"name": info.name}
        if info.metadata:
            item["metadata_hex"] = info.metadata.hex()
        item["blobs"] = _blobs(img, view, r.dir_root, r.dir_depth)
        doc["snapshots"].append(item)
    return doc


def verb_read(args):
    if len(args) not in (1, 3) or (len(args) == 3 and args[1] != "--snapshot"):
        raise_code("usage.argument", "usage: read IMAGE [--snapshot NAME]")
    with _open(args[0]) as img:
        return logical_content(img, args[2] if len(args) == 3 else None)


# -- check -----------------------------------------------------------------------------------

def verb_check(args):
    if len(args) != 1:
        raise_code("usage.argument", "usage: check IMAGE")
    try:
        img = _open(args[0])
    except NvboxError as exc:
        if exc.kind == "corrupt":
            return {"verdict": "corrupt", "opened": False, "errors": [exc.to_json()]}
        if exc.kind == "unsupported":
            raise Unsupported("check", f"{exc.code}: {exc.message}") from None
        raise
    with img:
        try:
            result = check_image(img)
        except NvboxError as exc:
            if exc.kind != "corrupt":
                raise
            return {"verdict": "corrupt", "opened": True, "errors": [exc.to_json()]}
    doc = result.to_json()
    return {"verdict": doc["verdict"], "opened": True, "errors": doc["corruptions"] + [
        {"code": "refcount.tree", "message": f"cluster {e['cluster']}: count {e['count']}, expected {e['expected']}"}
        for e in doc["refcount_errors"]], "leaked_clusters": str(doc["leaked_clusters"]),
        "clusters_checked": str(doc["clusters_checked"])}


# -- write: the operation script ---------------------------------------------------------------

def _bad(message):
    raise_code("usage.argument", f"ops.json: {message}")


def _int(v, what, minimum=0):
    if isinstance(v, bool):
        _bad(f"{what} must be an integer")
    if isinstance(v, str) and v.isdigit() and (v == "0" or not v.startswith("0")):
        v = int(v)
    if not isinstance(v, int) or v < minimum:
        _bad(f"{what} must be an integer >= {minimum} (or a decimal string)")
    return v


def _data(op, base_dir, required=True) -> bytes:
    """The bytes an operation carries: data_hex, data_text, data_repeat or data_file."""
    keys = [k for k in ("data_hex", "data_text", "data_repeat", "data_file") if k in op]
    if len(keys) > 1:
        _bad(f"{op.get('op')}: give one of data_hex, data_text, data_repeat, data_file")
    if not keys:
        if required:
            _bad(f"{op.get('op')}: needs data_hex, data_text, data_repeat or data_file")
        return b""
    k = keys[0]
    v = op[k]
    if k == "data_hex":
        if not isinstance(v, str):
            _bad("data_hex must be a string")
        try:
            return bytes.fromhex(v)
        except ValueError:
            _bad("data_hex is not hexadecimal")
    if k == "data_text":
        if not isinstance(v, str):
            _bad("data_text must be a string")
        return v.encode("utf-8")
    if k == "data_repeat":
        if not isinstance(v, dict) or set(v) - {"byte", "count"} or "count" not in v:
            _bad("data_repeat is {\"byte\": 0..255, \"count\": N}")
        byte = _int(v.get("byte", 0), "data_repeat.byte")
        if byte > 255:
            _bad("data_repeat.byte above 255")
        return bytes([byte]) * _int(v["count"], "data_repeat.count")
    if not isinstance(v, str) or not v:
        _bad("data_file must be a path")
    with open(os.path.join(base_dir, v), "rb") as f:
        return f.read()


def _name(op, key="name"):
    v = op.get(key)
    if not isinstance(v, str):
        _bad(f"{op.get('op')}: {key} must be a string")
    return v


def _metadata(op):
    if "metadata_hex" in op and "metadata_text" in op:
        _bad("snapshot_create: give metadata_hex or metadata_text, not both")
    if "metadata_hex" in op:
        try:
            return bytes.fromhex(op["metadata_hex"])
        except (TypeError, ValueError):
            _bad("metadata_hex is not hexadecimal")
    if "metadata_text" in op:
        if not isinstance(op["metadata_text"], str):
            _bad("metadata_text must be a string")
        return op["metadata_text"].encode("utf-8")
    return None


_FIELDS = {
    "put": {"name", "data_hex", "data_text", "data_repeat", "data_file"},
    "write": {"name", "offset", "data_hex", "data_text", "data_repeat", "data_file"},
    "truncate": {"name", "size"},
    "delete": {"name"},
    "snapshot_create": {"name", "metadata_hex", "metadata_text"},
    "snapshot_delete": {"name"},
    "snapshot_revert": {"name"},
    "snapshot_rename": {"name", "new"},
    "transaction": {"ops"},
    "compact": set(),
}


def run_ops(img, ops, base_dir=".") -> None:
    """Run a list of operations on an open image (see conformance/schema/ops.schema.json)."""
    if not isinstance(ops, list):
        _bad("ops must be a list")
    for i, op in enumerate(ops):
        if not isinstance(op, dict) or not isinstance(op.get("op"), str):
            _bad(f"operation {i} must be an object with an \"op\"")
        kind = op["op"]
        if kind not in _FIELDS:
            _bad(f"operation {i}: unknown op {kind!r}")
        extra = set(op) - _FIELDS[kind] - {"op", "comment"}
        if extra:
            _bad(f"operation {i} ({kind}): unknown fields {sorted(extra)}")
        if kind == "put":
            img.put(_name(op), _data(op, base_dir))
        elif kind == "write":
            img.write(_name(op), _int(op.get("offset"), "write.offset"), _data(op, base_dir))
        elif kind == "truncate":
            img.truncate(_name(op), _int(op.get("size"), "truncate.size"))
        elif kind == "delete":
            img.delete(_name(op))
        elif kind == "snapshot_create":
            img.snapshots.create(_name(op), metadata=_metadata(op))
        elif kind == "snapshot_delete":
            img.snapshots.delete(_name(op))
        elif kind == "snapshot_revert":
            img.snapshots.revert(_name(op))
        elif kind == "snapshot_rename":
            img.snapshots.rename(_name(op), _name(op, "new"))
        elif kind == "transaction":
            with img.transaction():
                run_ops(img, op.get("ops"), base_dir)
        elif kind == "compact":
            compact_image(img)


def load_ops(path) -> dict:
    with open(path, "rb") as f:
        try:
            doc = json.loads(f.read().decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            _bad(f"not JSON: {exc}")
    if not isinstance(doc, dict):
        _bad("the script must be a JSON object")
    extra = set(doc) - {"create", "ops", "comment", "$schema"}
    if extra:
        _bad(f"unknown top-level fields {sorted(extra)}")
    create = doc.get("create", {})
    if not isinstance(create, dict) or set(create) - {"cluster_size", "capacity", "encrypt"}:
        _bad("create is {\"cluster_size\", \"capacity\", \"encrypt\"}")
    return doc


def verb_write(args):
    if len(args) != 2:
        raise_code("usage.argument", "usage: write OPS.json OUT")
    ops_path, out = args
    doc = load_ops(ops_path)
    create = doc.get("create", {})
    cluster_size = _int(create.get("cluster_size", 4096), "create.cluster_size", 1)
    capacity = create.get("capacity")
    if capacity is not None and not isinstance(capacity, str):
        capacity = _int(capacity, "create.capacity", 1)
    encrypt = create.get("encrypt", False)
    if not isinstance(encrypt, bool):
        _bad("create.encrypt must be true or false")
    key = None
    if encrypt:
        key = _key()
        if key is None:
            raise_code("key.missing", f"an encrypted image needs {KEY_ENV}")
    with nvbox.create(out, cluster_size=cluster_size, capacity=capacity, encrypt=encrypt, key=key) as img:
        run_ops(img, doc.get("ops", []), os.path.dirname(os.path.abspath(ops_path)))
    return {}


# -- rewrite / inspect -------------------------------------------------------------------------

def verb_rewrite(args):
    if len(args) != 2:
        raise_code("usage.argument", "usage: rewrite IMAGE OUT")
    shutil.copyfile(args[0], args[1])
    with _open(args[1], "rw") as img:
        img[REWRITE_BLOB] = REWRITE_DATA
    return {}


def verb_inspect(args):
    if len(args) != 1:
        raise_code("usage.argument", "usage: inspect IMAGE")
    with _open(args[0]) as img:
        slot, header = img.slot, img.header
        return {
            "compatible_features": f"0x{slot.compatible_features:x}",
            "autoclear_features": f"0x{slot.autoclear_features:x}",
            "incompatible_features": f"0x{slot.incompatible_features:x}",
            "generation": str(slot.generation),
            "header_extensions": [{"type": e.ext_type, "required": bool(e.ext_flags & 1), "data_hex": e.ext_data.hex()}
                                  for e in header.extensions],
            "cluster_size": str(img.geo.cluster_size),
            "image_clusters": str(slot.image_clusters),
            "capacity_clusters": str(header.capacity_clusters),
            "blob_count": str(slot.blob_count),
            "snapshot_count": str(slot.snapshot_count),
            "encrypted": slot.encrypted,
        }


VERBS = {"read": verb_read, "check": verb_check, "write": verb_write, "rewrite": verb_rewrite,
         "inspect": verb_inspect}


def _emit(doc) -> None:
    sys.stdout.write(json.dumps(doc, ensure_ascii=True, sort_keys=False) + "\n")
    sys.stdout.flush()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stderr.write(__doc__)
        _emit({"unsupported": "usage", "message": "give a verb: " + ", ".join(VERBS)})
        return EXIT_UNSUPPORTED
    verb, args = argv[0], argv[1:]
    fn = VERBS.get(verb)
    if fn is None:
        _emit({"unsupported": verb, "message": f"unknown verb {verb!r}"})
        return EXIT_UNSUPPORTED
    try:
        doc = fn(args)
    except Unsupported as exc:
        _emit({"unsupported": exc.what, "message": exc.message})
        return EXIT_UNSUPPORTED
    except NvboxError as exc:
        _emit({"error": exc.to_json()})
        return EXIT_REJECTED
    except OSError as exc:
        msg = f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)
        _emit({"error": {"code": "io.error", "message": msg}})
        return EXIT_REJECTED
    _emit(doc)
    return EXIT_OK


def _entry() -> None:
    try:
        code = main()
    except KeyboardInterrupt:
        code = 130
    except Exception:  # noqa: BLE001 - a bug: report it as a crash, never as a rejection
        traceback.print_exc()
        code = 70
    sys.exit(code)


if __name__ == "__main__":
    _entry()
