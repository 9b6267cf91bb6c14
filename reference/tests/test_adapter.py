"""Tests of the conformance protocol adapter (python -m nvbox.adapter), against
conformance/README.md section 1 and the operation-script schema."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import nvbox
from nvbox import _format as fmt
from nvbox import adapter

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "conformance" / "schema"
HAVE_CRYPTO = importlib.util.find_spec("nvbox.crypto") is not None


def call(*args, env=None, monkeypatch=None, capsys=None):
    """Run the adapter in-process: (exit status, stdout document)."""
    if monkeypatch is not None:
        monkeypatch.delenv(adapter.KEY_ENV, raising=False)
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
    code = adapter.main([str(a) for a in args])
    out = capsys.readouterr().out
    return code, json.loads(out)


@pytest.fixture
def A(monkeypatch, capsys):
    return lambda *args, env=None: call(*args, env=env, monkeypatch=monkeypatch, capsys=capsys)


def sha(b):
    return hashlib.sha256(b).hexdigest()


def blob(b):
    return {"size": str(len(b)), "sha256": sha(b)}


@pytest.fixture
def image(tmp_path):
    p = tmp_path / "img.nvbox"
    with nvbox.create(p) as im:
        im["tpm/state"] = b"tpm state"
        im["uefi/vars"] = b""
        im["big"] = bytes(range(256)) * 100
        im.snapshots.create("base", metadata=b"{}")
        im["tpm/state"] = b"new"
        im.snapshots.create("pre-update")
        del im["big"]
    return p


def schema(name):
    import jsonschema
    return jsonschema.Draft202012Validator(json.loads((SCHEMAS / name).read_text()))


# -- read ---------------------------------------------------------------------------------------

def test_read(A, image):
    code, doc = A("read", image)
    assert code == 0
    assert doc == {
        "format": "nvbox",
        "blobs": {"tpm/state": blob(b"new"), "uefi/vars": blob(b"")},
        "snapshots": [
            {"name": "base", "metadata_hex": "7b7d",
             "blobs": {"big": blob(bytes(range(256)) * 100), "tpm/state": blob(b"tpm state"), "uefi/vars": blob(b"")}},
            {"name": "pre-update",
             "blobs": {"big": blob(bytes(range(256)) * 100), "tpm/state": blob(b"new"), "uefi/vars": blob(b"")}},
        ],
    }
    assert not list(schema("logical.schema.json").iter_errors(doc))


def test_read_snapshot(A, image):
    code, doc = A("read", image, "--snapshot", "base")
    assert code == 0 and doc["snapshots"] == [] and doc["blobs"]["tpm/state"] == blob(b"tpm state")
    code, doc = A("read", image, "--snapshot", "nope")
    assert code == 1 and doc["error"]["code"] == "snapshot.not_found"


def test_read_rejects_damage(A, image):
    with nvbox.open(image) as im:
        e = next(x for x in im.trees.dir_iter(im.state.dir_root, im.state.dir_depth) if x.name == "tpm/state")
        assert e.inline is not None
        snap = im.snapshots.view("base")
        big = im.trees.dir_lookup(snap.record.dir_root, snap.record.dir_depth, "big")
        off = im.trees.map_lookup(big.root, big.depth, 1).offset
    raw = bytearray(image.read_bytes())
    raw[off + 7] ^= 1                       # only a snapshot's blob: read must still reject
    image.write_bytes(bytes(raw))
    code, doc = A("read", image)
    assert code == 1 and doc["error"]["code"] == "cluster.checksum"


def test_read_not_an_image(A, tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"\0" * 4096)
    code, doc = A("read", p)
    assert code == 1 and doc["error"]["code"] == "header.magic"


def test_read_unknown_incompatible_feature(A, image):
    raw = bytearray(image.read_bytes())
    for off in fmt.SLOT_OFFSETS:
        struct.pack_into("<Q", raw, off + 16, 1 << 9)
        struct.pack_into("<I", raw, off + 508, fmt.crc32c(bytes(raw[off:off + 508])))
    image.write_bytes(bytes(raw))
    code, doc = A("read", image)
    assert code == 1 and doc["error"]["code"] == "feature.incompatible"


# -- check ---------------------------------------------------------------------------------------

def test_check_verdicts(A, image):
    code, doc = A("check", image)
    assert code == 0 and doc["verdict"] == "clean"
    with nvbox.open(image, "rw") as im:
        c = im.slot.dir_root.offset >> im.geo.cluster_bits
        im.store.set_count(c, im.store.count(c) + 3)
        im.txn.mark_changed()
        im._commit()
    code, doc = A("check", image)
    assert code == 0 and doc["verdict"] == "leaks" and doc["leaked_clusters"] == "1"
    raw = bytearray(image.read_bytes())
    raw[0] ^= 0xFF
    image.write_bytes(bytes(raw))
    code, doc = A("check", image)
    assert code == 0 and doc["verdict"] == "corrupt" and doc["opened"] is False


def test_check_corrupt_cluster(A, image):
    with nvbox.open(image) as im:
        off = im.slot.dir_root.offset
    raw = bytearray(image.read_bytes())
    raw[off + 20] ^= 0x40
    image.write_bytes(bytes(raw))
    code, doc = A("check", image)
    assert code == 0 and doc["verdict"] == "corrupt"
    assert doc["errors"][0]["code"] == "cluster.checksum"


def test_check_unsupported_version_exits_3(A, image):
    raw = bytearray(image.read_bytes())
    struct.pack_into("<I", raw, 8, 2)
    struct.pack_into("<I", raw, 508, fmt.crc32c(bytes(raw[:508])))
    image.write_bytes(bytes(raw))
    code, doc = A("check", image)
    assert code == 3 and doc["unsupported"] == "check"
    code, doc = A("read", image)
    assert code == 1 and doc["error"]["code"] == "header.version"


# -- write -------------------------------------------------------------------------------------------

SCRIPT = {
    "create": {"cluster_size": 512, "capacity": None, "encrypt": False},
    "ops": [
        {"op": "put", "name": "a", "data_hex": "00ff"},
        {"op": "put", "name": "b", "data_repeat": {"byte": 255, "count": 9000}},
        {"op": "put", "name": "c", "data_file": "c.bin", "comment": "relative to ops.json"},
        {"op": "write", "name": "a", "offset": "4", "data_text": "xy"},
        {"op": "write", "name": "new", "offset": 1000, "data_hex": "01"},
        {"op": "snapshot_create", "name": "s", "metadata_hex": "7b7d"},
        {"op": "transaction", "ops": [
            {"op": "delete", "name": "c"},
            {"op": "truncate", "name": "b", "size": 10},
        ]},
        {"op": "snapshot_create", "name": "t", "metadata_text": "meta"},
        {"op": "snapshot_rename", "name": "t", "new": "u"},
        {"op": "snapshot_create", "name": "gone"},
        {"op": "snapshot_delete", "name": "gone"},
        {"op": "put", "name": "b", "data_text": "reverted away"},
        {"op": "snapshot_revert", "name": "u"},
    ],
}


def write_script(tmp_path, script, name="ops.json"):
    d = tmp_path / "case"
    d.mkdir(exist_ok=True)
    (d / "c.bin").write_bytes(b"C" * 700)
    p = d / name
    p.write_text(json.dumps(script))
    return p


def test_script_validates_against_schema():
    assert not list(schema("ops.schema.json").iter_errors(SCRIPT))


def test_write(A, tmp_path):
    ops = write_script(tmp_path, SCRIPT)
    out = tmp_path / "out.nvbox"
    code, doc = A("write", ops, out)
    assert (code, doc) == (0, {})
    a = b"\x00\xff\x00\x00xy"
    code, doc = A("read", out)
    assert code == 0
    assert doc["blobs"] == {"a": blob(a), "b": blob(b"\xff" * 10), "new": blob(bytes(1000) + b"\x01")}
    snaps = {s["name"]: s for s in doc["snapshots"]}
    assert set(snaps) == {"s", "u"}
    assert snaps["s"]["metadata_hex"] == "7b7d" and snaps["u"]["metadata_hex"] == b"meta".hex()
    assert snaps["s"]["blobs"]["c"] == blob(b"C" * 700) and snaps["s"]["blobs"]["b"] == blob(b"\xff" * 9000)
    code, doc = A("check", out)
    assert doc["verdict"] == "clean"
    with nvbox.open(out) as im:
        assert im.cluster_size == 512


def test_write_failing_script(A, tmp_path):
    ops = write_script(tmp_path, {"ops": [{"op": "put", "name": "a", "data_hex": "00"},
                                          {"op": "delete", "name": "missing"}]})
    code, doc = A("write", ops, tmp_path / "out.nvbox")
    assert code == 1 and doc["error"]["code"] == "blob.not_found"


@pytest.mark.parametrize("op, code", [
    ({"op": "put", "name": "", "data_hex": ""}, "blob.name"),
    ({"op": "snapshot_create", "name": "x", "metadata_hex": "00" * 1025}, "snapshot.metadata"),
    ({"op": "snapshot_revert", "name": "x"}, "snapshot.not_found"),
    ({"op": "transaction", "ops": [{"op": "snapshot_create", "name": "x"}]}, "usage.argument"),
    ({"op": "frobnicate"}, "usage.argument"),
    ({"op": "put", "name": "a"}, "usage.argument"),
    ({"op": "put", "name": "a", "data_hex": "zz"}, "usage.argument"),
    ({"op": "put", "name": "a", "data_hex": "00", "extra": 1}, "usage.argument"),
])
def test_write_errors(A, tmp_path, op, code):
    ops = write_script(tmp_path, {"ops": [op]})
    status, doc = A("write", ops, tmp_path / "out.nvbox")
    assert status == 1 and doc["error"]["code"] == code


def test_write_transaction_is_atomic(A, tmp_path):
    ops = write_script(tmp_path, {"ops": [
        {"op": "put", "name": "keep", "data_text": "k"},
        {"op": "transaction", "ops": [{"op": "put", "name": "x", "data_text": "x"},
                                      {"op": "delete", "name": "nope"}]}]})
    out = tmp_path / "out.nvbox"
    status, doc = A("write", ops, out)
    assert status == 1 and doc["error"]["code"] == "blob.not_found"
    with nvbox.open(out) as im:
        assert im.names() == ["keep"]


def test_write_fixed_capacity(A, tmp_path):
    ops = write_script(tmp_path, {"create": {"capacity": "16K", "cluster_size": "512"},
                                  "ops": [{"op": "put", "name": "a", "data_repeat": {"count": 100000}}]})
    status, doc = A("write", ops, tmp_path / "out.nvbox")
    assert status == 1 and doc["error"]["code"] == "space.exhausted"


def test_write_not_json(A, tmp_path):
    p = tmp_path / "ops.json"
    p.write_text("{nope")
    status, doc = A("write", p, tmp_path / "out.nvbox")
    assert status == 1 and doc["error"]["code"] == "usage.argument"


@pytest.mark.skipif(HAVE_CRYPTO, reason="nvbox.crypto is installed")
def test_write_encrypted_without_crypto_is_unsupported(A, tmp_path):
    key = tmp_path / "key.bin"
    key.write_bytes(os.urandom(32))
    ops = write_script(tmp_path, {"create": {"encrypt": True}, "ops": []})
    status, doc = A("write", ops, tmp_path / "out.nvbox", env={"NVBOX_KEY_FILE": str(key)})
    assert status == 3 and doc["unsupported"] == "encryption"


def test_write_encrypted_without_key(A, tmp_path):
    ops = write_script(tmp_path, {"create": {"encrypt": True}, "ops": []})
    status, doc = A("write", ops, tmp_path / "out.nvbox")
    assert status == 1 and doc["error"]["code"] == "key.missing"


# -- rewrite / inspect ----------------------------------------------------------------------------------

def _add_unknown_bits(path):
    """Unknown compatible and autoclear bits, and an unknown optional header extension."""
    raw = bytearray(path.read_bytes())
    hdr = fmt.decode_header(bytes(raw[:2048]))
    exts = hdr.extensions + (fmt.Extension(0x1234, 0, bytes.fromhex("c0ffee")),)
    from dataclasses import replace
    raw[:512] = replace(hdr, extensions=exts).encode()
    for off in fmt.SLOT_OFFSETS:
        struct.pack_into("<Q", raw, off + 24, 1 << 5)    # compatible
        struct.pack_into("<Q", raw, off + 32, 1 << 3)    # autoclear
        struct.pack_into("<I", raw, off + 508, fmt.crc32c(bytes(raw[off:off + 508])))
    path.write_bytes(bytes(raw))


def test_rewrite_and_inspect(A, image, tmp_path):
    _add_unknown_bits(image)
    code, before = A("inspect", image)
    assert code == 0 and before["compatible_features"] == "0x20" and before["autoclear_features"] == "0x8"
    out = tmp_path / "out.nvbox"
    code, doc = A("rewrite", image, out)
    assert (code, doc) == (0, {})
    code, after = A("inspect", out)
    assert after["compatible_features"] == "0x20"          # kept (R-feature-2)
    assert after["autoclear_features"] == "0x0"            # cleared (R-feature-3)
    assert after["incompatible_features"] == "0x0"
    assert int(after["generation"]) == int(before["generation"]) + 1
    assert {"type": 0x1234, "required": False, "data_hex": "c0ffee"} in after["header_extensions"]
    code, content = A("read", out)
    assert content["blobs"]["conformance/rewrite"] == {
        "size": "1", "sha256": "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"}
    code, doc = A("check", out)
    assert doc["verdict"] == "clean"


def test_rewrite_damaged_input(A, tmp_path):
    p = tmp_path / "bad"
    p.write_bytes(b"x" * 100)
    code, doc = A("rewrite", p, tmp_path / "out")
    assert code == 1 and doc["error"]["code"] == "image.truncated"


# -- protocol edges ------------------------------------------------------------------------------------

def test_unknown_verb_is_unsupported(A):
    code, doc = A("frobnicate")
    assert code == 3 and doc["unsupported"] == "frobnicate"


def test_bad_arguments(A, image):
    code, doc = A("read")
    assert code == 1 and doc["error"]["code"] == "usage.argument"
    code, doc = A("read", image, "--bogus", "x")
    assert code == 1 and doc["error"]["code"] == "usage.argument"


def test_missing_image_is_rejected(A, tmp_path):
    code, doc = A("read", tmp_path / "none")
    assert code == 1 and doc["error"]["code"] == "io.error"


@pytest.mark.skipif(HAVE_CRYPTO, reason="nvbox.crypto is installed")
def test_key_env_without_crypto(A, image, tmp_path):
    key = tmp_path / "k"
    key.write_bytes(b"k" * 32)
    code, doc = A("read", image, env={"NVBOX_KEY_FILE": str(key)})
    assert code == 3


def _subprocess(*args):
    env = dict(os.environ)
    env.pop("NVBOX_KEY_FILE", None)
    env["NVBOX_CONFORMANCE_PROTOCOL"] = "1"
    return subprocess.run([sys.executable, "-m", "nvbox.adapter", *map(str, args)], stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=60, env=env)


def test_subprocess_protocol(image, tmp_path):
    r = _subprocess("read", image)
    assert r.returncode == 0 and json.loads(r.stdout)["format"] == "nvbox"
    r = _subprocess("check", image)
    assert r.returncode == 0 and json.loads(r.stdout)["verdict"] == "clean"
    r = _subprocess("read", tmp_path / "none")
    assert r.returncode == 1 and json.loads(r.stdout)["error"]["code"] == "io.error"
    ops = write_script(tmp_path, SCRIPT)
    r = _subprocess("write", ops, tmp_path / "o.nvbox")
    assert r.returncode == 0 and json.loads(r.stdout) == {}
    r = _subprocess("nope")
    assert r.returncode == 3


def test_runner_reference_roundtrip(tmp_path, image):
    """The conformance runner's own reference call works with this adapter."""
    runner = pytest.importorskip("conformance.runner")
    assert runner.DEFAULT_REFERENCE == "python -m nvbox.adapter"
