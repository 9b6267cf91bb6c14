"""Tests of the ``nvbox`` command (nvbox.cli): every subcommand through click's
CliRunner, a few through ``python -m nvbox`` in a subprocess."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import pytest
from click.testing import CliRunner

import nvbox
from nvbox import _format as fmt
from nvbox.cli import cli, collect_files, dump_image, human_size, measure_paths


def run(*args, input=None, env=None):
    runner = CliRunner()
    return runner.invoke(cli, [str(a) for a in args], input=input, env=env, catch_exceptions=False)


def ok(*args, **kw):
    r = run(*args, **kw)
    assert r.exit_code == 0, (args, r.exit_code, r.output)
    return r


@pytest.fixture
def img(tmp_path):
    p = tmp_path / "vm.nvbox"
    ok("create", p)
    return p


@pytest.fixture
def filled(tmp_path, img):
    (tmp_path / "big.bin").write_bytes(bytes(range(256)) * 80)      # 20480 bytes: clusters
    ok("put", img, "tpm/permanent", tmp_path / "big.bin")
    ok("put", img, "nic0/eeprom", "-", input=b"eeprom")
    return img


def error_line(result):
    return result.stderr.strip().splitlines()[-1]


# -- create -----------------------------------------------------------------------------------

def test_create_defaults(tmp_path):
    p = tmp_path / "a.nvbox"
    r = ok("create", p)
    assert "fmt=nvbox" in r.output and "cluster_size=4096" in r.output and "capacity=growable" in r.output
    with nvbox.open(p) as im:
        assert im.cluster_size == 4096 and im.info()["capacity"] is None and len(im) == 0


def test_create_options(tmp_path):
    p = tmp_path / "a.nvbox"
    ok("create", "--cluster-size", "512", "--capacity", "64K", p)
    with nvbox.open(p) as im:
        assert im.cluster_size == 512 and im.info()["capacity"] == 65536


def test_create_existing_is_image_exists(tmp_path, img):
    r = run("create", img)
    assert r.exit_code == 1
    assert error_line(r).startswith("nvbox: error: image.exists: ")
    r = run("create", "--overwrite", img)
    assert r.exit_code == 0


def test_create_bad_cluster_size(tmp_path):
    r = run("create", "--cluster-size", "1000", tmp_path / "x.nvbox")
    assert r.exit_code == 1 and error_line(r).startswith("nvbox: error: usage.argument: ")


def test_create_encrypt_without_key_is_key_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("NVBOX_PASSPHRASE", raising=False)
    r = run("create", "--encrypt", tmp_path / "x.nvbox")
    assert r.exit_code == 1 and error_line(r).startswith("nvbox: error: key.missing: ")
    assert not (tmp_path / "x.nvbox").exists()


def test_key_options_exclusive(tmp_path, img):
    (tmp_path / "k").write_bytes(b"k")
    r = run("ls", "--key-file", tmp_path / "k", "--passphrase-file", tmp_path / "k", img)
    assert r.exit_code == 1 and error_line(r).startswith("nvbox: error: usage.argument: ")


def test_no_secret_on_command_line():
    r = run("create", "--help")
    assert "--passphrase " not in r.output and "--key " not in r.output
    assert "--key-file" in r.output and "--passphrase-file" in r.output


# -- put / get / rm ------------------------------------------------------------------------------

def test_put_get_roundtrip(tmp_path, filled):
    r = ok("get", filled, "tpm/permanent")
    assert r.stdout_bytes == bytes(range(256)) * 80
    ok("get", filled, "nic0/eeprom", "-o", tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == b"eeprom"


def test_put_default_stdin(img):
    ok("put", img, "x", input=b"from stdin")
    assert ok("get", img, "x").stdout_bytes == b"from stdin"


def test_get_missing_blob(filled):
    r = run("get", filled, "nope")
    assert r.exit_code == 1
    assert error_line(r) == "nvbox: error: blob.not_found: no blob named 'nope'"
    assert r.stdout_bytes == b""


def test_get_from_snapshot(tmp_path, filled):
    ok("snapshot", "create", filled, "s1")
    ok("put", filled, "nic0/eeprom", input=b"new")
    assert ok("get", filled, "nic0/eeprom", "--snapshot", "s1").stdout_bytes == b"eeprom"
    assert ok("get", filled, "nic0/eeprom").stdout_bytes == b"new"
    r = run("get", filled, "nic0/eeprom", "--snapshot", "nope")
    assert r.exit_code == 1 and error_line(r).startswith("nvbox: error: snapshot.not_found: ")


def test_put_missing_file_is_io_error(tmp_path, img):
    r = run("put", img, "x", tmp_path / "missing")
    assert r.exit_code == 1 and error_line(r).startswith("nvbox: error: io.error: ")


def test_open_missing_image(tmp_path):
    r = run("ls", tmp_path / "missing.nvbox")
    assert r.exit_code == 1 and error_line(r).startswith("nvbox: error: io.error: ")


def test_not_an_image(tmp_path):
    p = tmp_path / "junk"
    p.write_bytes(b"hello" * 1000)
    r = run("info", p)
    assert r.exit_code == 1 and error_line(r) == "nvbox: error: header.magic: not an nvbox image"
    r = run("info", "--output", "json", p)
    assert r.exit_code == 1
    assert json.loads(r.stdout) == {"error": {"code": "header.magic", "message": "not an nvbox image"}}


def test_bad_blob_name(img):
    r = run("put", img, "a\0b", input=b"x")
    assert r.exit_code == 1 and error_line(r).startswith("nvbox: error: blob.name: ")


def test_rm(filled):
    ok("rm", filled, "nic0/eeprom")
    assert ok("ls", filled).output.split() == ["tpm/permanent"]
    r = run("rm", filled, "tpm/permanent", "nope")
    assert r.exit_code == 1 and error_line(r).startswith("nvbox: error: blob.not_found: ")
    # One transaction: nothing was deleted.
    assert ok("ls", filled).output.split() == ["tpm/permanent"]


def test_readonly_image_file(tmp_path, filled):
    os.chmod(filled, 0o444)
    try:
        if os.access(filled, os.W_OK):
            pytest.skip("running as root")
        r = run("put", filled, "x", input=b"x")
        assert r.exit_code == 1 and error_line(r).startswith("nvbox: error: ")
        assert "Traceback" not in r.output
    finally:
        os.chmod(filled, 0o644)


# -- ls / info ------------------------------------------------------------------------------------

def test_ls(filled):
    assert ok("ls", filled).output.split() == ["nic0/eeprom", "tpm/permanent"]
    long = ok("ls", "-l", filled).output
    assert "20 KiB" in long and "inline" in long and "clusters, depth 1" in long and "2 blobs" in long
    doc = json.loads(ok("ls", "--output", "json", filled).stdout)
    assert doc == {"snapshot": None, "blobs": [
        {"name": "nic0/eeprom", "size": 6, "inline": True, "depth": 0},
        {"name": "tpm/permanent", "size": 20480, "inline": False, "depth": 1}]}


def test_ls_snapshot(filled):
    ok("snapshot", "create", filled, "s1")
    ok("rm", filled, "nic0/eeprom")
    assert ok("ls", filled).output.split() == ["tpm/permanent"]
    assert ok("ls", "--snapshot", "s1", filled).output.split() == ["nic0/eeprom", "tpm/permanent"]
    doc = json.loads(ok("ls", "--snapshot", "s1", "--output", "json", filled).stdout)
    assert doc["snapshot"] == "s1" and len(doc["blobs"]) == 2


def test_info(filled):
    text = ok("info", filled).output
    for needle in ("file format:", "nvbox (version 1)", "cluster size:", "4 KiB", "capacity:", "growable",
                   "generation:", "blobs:", "creator:", "nvbox-reference"):
        assert needle in text
    doc = json.loads(ok("info", "--output", "json", filled).stdout)
    assert doc["format"] == "nvbox" and doc["blob_count"] == 2 and doc["cluster_size"] == 4096
    assert doc["file_size"] == os.path.getsize(filled)
    assert doc["generation"] >= 3


def test_human_size():
    assert human_size(0) == "0 B"
    assert human_size(1023) == "1023 B"
    assert human_size(4096) == "4 KiB"
    assert human_size(1536) == "1.5 KiB"
    assert human_size(64 << 20) == "64 MiB"


# -- check ------------------------------------------------------------------------------------------

def _data_cluster_offset(path):
    doc = dump_image(str(path))
    return next(m for m in doc["cluster_maps"] if m["blob"] == "tpm/permanent")["data_clusters"][0]["offset"]


def test_check_clean(filled):
    r = run("check", filled)
    assert r.exit_code == 0 and "No errors were found on the image." in r.output
    r = run("check", "--output", "json", filled)
    doc = json.loads(r.stdout)
    assert r.exit_code == 0 and doc["verdict"] == "clean" and doc["exit_code"] == 0 and doc["leaks"] == []


def test_check_corrupt_data_cluster(filled):
    off = _data_cluster_offset(filled)
    with open(filled, "r+b") as f:
        f.seek(off + 100)
        b = f.read(1)
        f.seek(off + 100)
        f.write(bytes([b[0] ^ 0xFF]))
    r = run("check", filled)
    assert r.exit_code == 2, r.output
    assert "cluster.checksum" in r.output and "errors were found" in r.output
    r = run("check", "--output", "json", filled)
    doc = json.loads(r.stdout)
    assert r.exit_code == 2 and doc["verdict"] == "corrupt"
    assert doc["corruptions"][0]["code"] == "cluster.checksum" and doc["corruptions"][0]["offset"] == off
    # Repair refuses structural corruption and changes nothing.
    before = open(filled, "rb").read()
    r = run("check", "-r", "all", "--output", "json", filled)
    assert r.exit_code == 2 and json.loads(r.stdout)["repair_refused"]
    assert open(filled, "rb").read() == before


def _bump_refcount(path):
    with nvbox.open(path, "rw") as im:
        c = _data_cluster_offset_from(im)
        im.store.set_count(c, im.store.count(c) + 1)
        im.txn.mark_changed()
        im._commit()
    return c


def _data_cluster_offset_from(im):
    e = next(x for x in im.trees.dir_iter(im.state.dir_root, im.state.dir_depth) if x.name == "tpm/permanent")
    return im.trees.map_lookup(e.root, e.depth, 0).offset >> im.geo.cluster_bits


def test_check_leak_and_repair(filled):
    c = _bump_refcount(filled)
    r = run("check", filled)
    assert r.exit_code == 3, r.output
    assert f"Leaked cluster {c} refcount=2 reference=1" in r.output
    doc = json.loads(run("check", "--output", "json", filled).stdout)
    assert doc["verdict"] == "leaks" and doc["leaks"] == [{"cluster": c, "count": 2, "expected": 1}]
    r = run("check", "-r", "leaks", "--output", "json", filled)
    doc = json.loads(r.stdout)
    assert r.exit_code == 0 and doc["verdict"] == "clean" and doc["verdict_before_repair"] == "leaks"
    assert doc["repaired"] == [{"cluster": c, "from": 2, "to": 1}]
    assert run("check", filled).exit_code == 0


def test_check_undercount_is_corruption(filled):
    with nvbox.open(filled, "rw") as im:
        c = _data_cluster_offset_from(im)
        im.store.set_count(c, 0)
        im.txn.mark_changed()
        im._commit()
    assert run("check", filled).exit_code == 2
    r = run("check", "-r", "leaks", filled)
    assert r.exit_code == 2            # -r leaks does not raise counts
    r = run("check", "-r", "all", filled)
    assert r.exit_code == 0, r.output
    assert "were found and repaired" in r.output


def test_check_unopenable_corrupt(tmp_path, filled):
    raw = bytearray(filled.read_bytes())
    raw[0] ^= 0xFF                       # magic
    filled.write_bytes(bytes(raw))
    r = run("check", filled)
    assert r.exit_code == 2 and error_line(r).startswith("nvbox: error: header.magic: ")
    r = run("check", "--output", "json", filled)
    doc = json.loads(r.stdout)
    assert r.exit_code == 2 and doc["verdict"] == "corrupt" and doc["opened"] is False
    assert doc["error"]["code"] == "header.magic"


def test_check_both_slots_damaged(filled):
    raw = bytearray(filled.read_bytes())
    raw[512] ^= 1
    raw[1024] ^= 1
    filled.write_bytes(bytes(raw))
    r = run("check", filled)
    assert r.exit_code == 2 and "slot.none_valid" in error_line(r)


def _rewrite_header(path, version=None, incompat=None):
    raw = bytearray(path.read_bytes())
    if version is not None:
        struct.pack_into("<I", raw, 8, version)
        struct.pack_into("<I", raw, 508, fmt.crc32c(bytes(raw[:508])))
    if incompat is not None:
        for off in fmt.SLOT_OFFSETS:
            struct.pack_into("<Q", raw, off + 16, incompat)
            struct.pack_into("<I", raw, off + 508, fmt.crc32c(bytes(raw[off:off + 508])))
    path.write_bytes(bytes(raw))


def test_check_unsupported_version_is_63(filled):
    _rewrite_header(filled, version=2)
    r = run("check", filled)
    assert r.exit_code == 63 and error_line(r).startswith("nvbox: error: header.version: ")
    doc = json.loads(run("check", "--output", "json", filled).stdout)
    assert doc["verdict"] == "unsupported" and doc["exit_code"] == 63


def test_check_unknown_incompatible_feature_is_63(filled):
    _rewrite_header(filled, incompat=1 << 7)
    r = run("check", filled)
    assert r.exit_code == 63 and "feature.incompatible" in error_line(r)
    # Other commands exit 1 with the same code.
    r = run("ls", filled)
    assert r.exit_code == 1 and error_line(r).startswith("nvbox: error: feature.incompatible: ")


def test_check_missing_file_is_1(tmp_path):
    r = run("check", tmp_path / "none.nvbox")
    assert r.exit_code == 1 and error_line(r).startswith("nvbox: error: io.error: ")


def test_check_locked_for_repair(filled):
    with nvbox.open(filled, "rw"):
        r = run("check", "-r", "leaks", filled)
    assert r.exit_code == 1 and error_line(r).startswith("nvbox: error: image.locked: ")


# -- import / export ----------------------------------------------------------------------------------

def _tree(tmp_path):
    src = tmp_path / "state"
    (src / "tpm").mkdir(parents=True)
    (src / "nic0").mkdir()
    (src / "tpm" / "permanent").write_bytes(os.urandom(30000))
    (src / "tpm" / "volatile").write_bytes(b"")
    (src / "nic0" / "eeprom").write_bytes(b"\x01" * 300)
    (src / "vpd").write_bytes(b"vpd" * 2000)
    return src


def _files(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            full = os.path.join(dirpath, f)
            out[os.path.relpath(full, root).replace(os.sep, "/")] = open(full, "rb").read()
    return out


def test_import_export_roundtrip(tmp_path, img):
    src = _tree(tmp_path)
    r = ok("import", img, src)
    assert "Imported 4 blobs" in r.output
    with nvbox.open(img) as im:
        gen = im.generation
        assert sorted(im.names()) == ["nic0/eeprom", "tpm/permanent", "tpm/volatile", "vpd"]
    ok("export", img, tmp_path / "out")
    assert _files(tmp_path / "out") == _files(src)
    doc = json.loads(ok("export", "--output", "json", img, tmp_path / "out2").stdout)
    assert doc["exported"] == 4
    # import is one commit, and only of what changed: an identical re-import commits nothing
    size = os.path.getsize(img)
    doc = json.loads(ok("import", "--output", "json", img, src).stdout)
    assert doc["written"] == [] and len(doc["unchanged"]) == 4
    with nvbox.open(img) as im:
        assert im.generation == gen
    assert os.path.getsize(img) == size
    (src / "vpd").write_bytes(b"VPD" * 2000)
    doc = json.loads(ok("import", "--output", "json", img, src).stdout)
    assert doc["written"] == ["vpd"] and doc["bytes_written"] == 6000
    with nvbox.open(img) as im:
        assert im.generation == gen + 1


def test_import_is_one_transaction(tmp_path, img):
    src = _tree(tmp_path)
    (src / ("x" * 200)).mkdir()
    (src / ("x" * 200) / ("y" * 60)).write_bytes(b"bad name")   # blob.name: 261 bytes
    r = run("import", img, src)
    assert r.exit_code == 1 and error_line(r).startswith("nvbox: error: blob.name: ")
    assert ok("ls", img).output == ""


def test_export_snapshot(tmp_path, filled):
    ok("snapshot", "create", filled, "s")
    ok("rm", filled, "nic0/eeprom")
    ok("export", "--snapshot", "s", filled, tmp_path / "o")
    assert (tmp_path / "o" / "nic0" / "eeprom").read_bytes() == b"eeprom"


def test_names_that_are_not_paths_are_refused_by_put_and_the_library(tmp_path, img):
    for name in ("../escape", "/abs", "a//b", "a/", ".", "a/./b"):
        r = run("put", img, name, input=b"x")
        assert r.exit_code == 1 and error_line(r).startswith("nvbox: error: blob.name: "), name
        assert "path-safe" in error_line(r)
    with nvbox.open(img, "rw") as im:
        with pytest.raises(nvbox.NvboxError) as e:
            im["../x"] = b"x"
        assert e.value.code == "blob.name"
    assert ok("ls", img).output == ""


def test_export_reports_blobs_it_cannot_write_and_writes_the_others(tmp_path, img):
    ok("put", img, "a", input=b"x")
    ok("put", img, "a/b", input=b"y")          # 'a' is also a directory of 'a/b'
    ok("put", img, "c", input=b"z")
    r = run("export", img, tmp_path / "o")
    assert r.exit_code == 1
    assert "nvbox: error: blob.name: blob 'a' not exported" in r.stderr
    assert (tmp_path / "o" / "a" / "b").read_bytes() == b"y" and (tmp_path / "o" / "c").read_bytes() == b"z"
    doc = json.loads(run("export", "--output", "json", img, tmp_path / "o2").stdout)
    assert [f["name"] for f in doc["failed"]] == ["a"] and doc["blobs"] == ["a/b", "c"]


def test_export_damaged_blob_is_reported_and_the_others_written(tmp_path, img):
    ok("put", img, "big", input=bytes(range(256)) * 64)
    ok("put", img, "small", input=b"fine")
    with nvbox.open(img) as im:
        data_off = im.trees.map_node(_root_of(im, "big"))[0].offset
    raw = bytearray(img.read_bytes())
    raw[data_off + 5] ^= 0xFF
    img.write_bytes(bytes(raw))
    r = run("export", img, tmp_path / "o")
    assert r.exit_code == 1 and "blob 'big' not exported" in r.stderr and "cluster.checksum" in r.stderr
    assert (tmp_path / "o" / "small").read_bytes() == b"fine" and not (tmp_path / "o" / "big").exists()


def _root_of(im, name):
    e = im.trees.dir_lookup(im.state.dir_root, im.state.dir_depth, name)
    return e.root


def test_export_mode_and_mirror(tmp_path, img):
    ok("put", img, "tpm/permall", input=b"seeds")
    ok("put", img, "tpm/volatile", input=b"v")
    out = tmp_path / "state"
    (out / "stale").mkdir(parents=True)
    (out / "stale" / "old").write_bytes(b"old")
    (out / "tpm").mkdir()
    (out / "tpm" / "extra").write_bytes(b"extra")
    (out / ".lock").write_bytes(b"")                # excluded by default: kept
    (out / ".tpm.nvbox-tmp").write_bytes(b"")       # a crashed export's temporary: removed
    ok("export", img, out)
    assert (out / "stale" / "old").exists()         # without --mirror nothing is removed
    assert (out / "tpm" / "permall").stat().st_mode & 0o777 == 0o600
    doc = json.loads(ok("export", "--mirror", "--mode", "640", "--output", "json", img, out).stdout)
    assert _files(out) == {"tpm/permall": b"seeds", "tpm/volatile": b"v", ".lock": b""}
    assert doc["removed"] == [".tpm.nvbox-tmp", "stale/", "stale/old", "tpm/extra"]
    assert (out / "tpm" / "permall").stat().st_mode & 0o777 == 0o640
    assert not any(n.endswith(".nvbox-tmp") for n in os.listdir(out / "tpm"))
    r = run("export", "--mode", "999", img, out)
    assert r.exit_code == 1 and error_line(r).startswith("nvbox: error: usage.argument: ")


def test_export_mirror_restores_a_snapshot(tmp_path, img):
    ok("put", img, "tpm2-00.permall", input=b"old seeds")
    ok("snapshot", "create", img, "s")
    ok("put", img, "tpm2-00.permall", input=b"new seeds")
    ok("put", img, "tpm2-00.volatilestate", input=b"newer state")
    out = tmp_path / "state"
    ok("export", img, out)
    ok("export", "--mirror", "--snapshot", "s", img, out)
    assert _files(out) == {"tpm2-00.permall": b"old seeds"}


def test_import_excludes(tmp_path, img):
    src = tmp_path / "state"
    src.mkdir()
    for name in ("tpm2-00.permall", ".lock", "notes~", ".notes.swp", "#notes#", ".#notes", "keep.log"):
        (src / name).write_bytes(name.encode())
    doc = json.loads(ok("import", "--output", "json", img, src).stdout)
    assert doc["blobs"] == ["keep.log", "tpm2-00.permall"]
    doc = json.loads(ok("import", "--exclude", "*.log", "--output", "json", img, src).stdout)
    assert doc["blobs"] == ["tpm2-00.permall"]
    doc = json.loads(ok("import", "--no-default-excludes", "--output", "json", img, src).stdout)
    assert ".lock" in doc["blobs"] and len(doc["blobs"]) == 7
    assert "'.lock'" in ok("import", "--help").output


def test_reimport_with_a_snapshot_keeps_sharing(tmp_path):
    p = tmp_path / "s.nvbox"
    ok("create", "--cluster-size", 512, p)
    src = tmp_path / "state"
    src.mkdir()
    for i in range(8):
        (src / f"f{i}").write_bytes(os.urandom(20000))
    ok("import", p, src)
    ok("snapshot", "create", p, "held")
    size = os.path.getsize(p)
    (src / "f3").write_bytes(os.urandom(20000))
    doc = json.loads(ok("import", "--output", "json", p, src).stdout)
    assert doc["written"] == ["f3"] and len(doc["unchanged"]) == 7
    # one blob's new copy (40 clusters of 512 bytes) and some tree nodes, not eight blobs' copies
    assert os.path.getsize(p) - size < 2 * 20000


# -- measure ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cluster_size", [512, 4096])
def test_measure_is_exact(tmp_path, cluster_size):
    src = _tree(tmp_path)
    r = ok("measure", "--cluster-size", cluster_size, src)
    required = int(r.output.strip())
    doc = json.loads(ok("measure", "--cluster-size", cluster_size, "--output", "json", src).stdout)
    assert doc["required"] == required and doc["cluster_size"] == cluster_size
    minimum = doc["minimum"]
    assert minimum % cluster_size == 0 and required % cluster_size == 0 and required > minimum
    assert doc["files"] == 4 and doc["bytes"] == sum(len(v) for v in _files(src).values())

    def attempt(capacity, saves):
        p = tmp_path / f"fixed-{capacity}-{saves}.nvbox"
        ok("create", "--cluster-size", cluster_size, "--capacity", capacity, p)
        for save in range(saves):
            if save:                    # the next save of the whole state: every file changed, same sizes
                for f in _files(src):
                    path = src / f
                    path.write_bytes(bytes(b ^ 0xFF for b in path.read_bytes()))
            r = run("import", p, src)
            if r.exit_code:
                assert error_line(r).startswith("nvbox: error: space.exhausted: "), r.output
                return False
        assert run("check", p).exit_code == 0
        return True

    # MINIMUM holds the files; one cluster less cannot.
    assert attempt(minimum, 1)
    assert not attempt(minimum - cluster_size, 1)
    # REQUIRED (what is printed) holds the files and one more save of them; one cluster less cannot.
    assert attempt(required, 2)
    assert attempt(required - cluster_size, 1)
    assert not attempt(required - cluster_size, 2)


def test_measure_files_and_help(tmp_path):
    (tmp_path / "a").write_bytes(b"a" * 5000)
    (tmp_path / "b").write_bytes(b"b" * 10)
    doc = measure_paths([tmp_path / "a", tmp_path / "b"])
    assert doc["files"] == 2 and doc["bytes"] == 5010
    assert [n for n, _ in collect_files([tmp_path / "a", tmp_path / "b"])] == ["a", "b"]
    text = ok("measure", "--help").output
    assert "image_clusters" in text and "headroom" in text and "Examples" in text


def test_measure_duplicate_names(tmp_path):
    (tmp_path / "d1").mkdir()
    (tmp_path / "d2").mkdir()
    (tmp_path / "d1" / "x").write_bytes(b"1")
    (tmp_path / "d2" / "x").write_bytes(b"2")
    r = run("measure", tmp_path / "d1", tmp_path / "d2")
    assert r.exit_code == 1 and error_line(r).startswith("nvbox: error: usage.argument: ")
    r = run("measure", "--output", "json", tmp_path / "d1", tmp_path / "d2")
    assert json.loads(r.stdout)["error"]["code"] == "usage.argument"


# -- dump ------------------------------------------------------------------------------------------------

def _structs(obj):
    if isinstance(obj, dict):
        if "type" in obj and "offset" in obj:
            yield obj
        for v in obj.values():
            yield from _structs(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _structs(v)


def test_dump_json(tmp_path, filled):
    (tmp_path / "meta").write_bytes(b"{}")
    ok("snapshot", "create", "--metadata-file", tmp_path / "meta", filled, "s1")
    ok("put", filled, "after", input=b"z" * 9000)
    doc = json.loads(ok("dump", "--output", "json", filled).stdout)
    raw = filled.read_bytes()
    h = doc["header"]
    assert h["offset"] == 0 and h["fields"]["magic"] == fmt.MAGIC.hex()
    assert set(h["fields"]) == {"magic", "version", "header_length", "cluster_bits", "refcount_order", "reserved0",
                                "header_flags", "image_uuid", "capacity_clusters", "create_time", "reserved1",
                                "header_crc"}
    assert h["fields"]["header_crc"] == struct.unpack_from("<I", raw, 508)[0]
    assert h["extensions"][0]["fields"]["ext_type"] == 1 and h["extensions"][-1]["fields"]["ext_type"] == 0
    slots = doc["slots"]
    assert [s["offset"] for s in slots] == [512, 1024] and all(s["valid"] for s in slots)
    active = next(s for s in slots if s["active"])
    with nvbox.open(filled) as im:
        gen = im.generation
        slot = im.slot
    assert active["generation"] == gen and doc["active_slot"] == ("A" if gen % 2 else "B")
    f = active["fields"]
    assert set(f) == {"slot_magic", "generation", "incompatible_features", "compatible_features",
                      "autoclear_features", "image_clusters", "blob_count", "next_snapshot_id", "commit_time",
                      "refcount_depth", "dir_depth", "snaptable_depth", "reserved0", "snapshot_count",
                      "snaptable_size", "refcount_root", "dir_root", "snaptable_root", "keyslots", "reserved1",
                      "slot_mac", "slot_crc"} | ({"alloc_hint"} if hasattr(slot, "alloc_hint") else set())
    assert f["reserved1"]["all_zero"]
    assert f["slot_magic"] == b"NVBXSLOT".hex() and f["blob_count"] == 3
    assert f["dir_root"] == {"offset": slot.dir_root.offset, "crc": slot.dir_root.crc, "reserved": 0}
    assert f["keyslots"] == {"offset": 0, "crc": 0, "reserved": 0}
    # Every structure's offset is real: cluster structures are aligned and in the image.
    cs = doc["geometry"]["cluster_size"]
    for s in _structs(doc):
        if s["type"] in ("refcount_block", "refcount_index_node", "dir_node", "map_node"):
            assert s["offset"] % cs == 0 and s["offset"] // cs < slot.image_clusters
    # Directory entries: ASN.1 names, offsets point at the DER SEQUENCE tag.
    entries = [e for n in doc["directory"]["nodes"] for e in n.get("entries", [])]
    assert {e["fields"]["name"] for e in entries} >= {"tpm/permanent", "nic0/eeprom", "after"}
    for e in entries:
        assert raw[e["offset"]] == 0x30
        assert set(e["fields"]) <= {"name", "size", "content", "extensions"}
    inline = next(e for e in entries if e["fields"]["name"] == "nic0/eeprom")
    assert inline["fields"]["content"] == {"inline": b"eeprom".hex()}
    # The data blob's map: its data clusters hold the bytes.
    m = next(m for m in doc["cluster_maps"] if m["blob"] == "tpm/permanent")
    assert "active" in m["trees"] and "snapshot:s1" in m["trees"]
    first = m["data_clusters"][0]["offset"]
    assert raw[first:first + 256] == bytes(range(256))
    # Snapshot table records, by ASN.1 name, at their absolute offsets.
    rec = doc["snapshot_table"]["records"][0]
    assert rec["fields"]["name"] == "s1" and rec["fields"]["metadata"] == b"{}".hex() and rec["fields"]["id"] == 1
    assert set(rec["fields"]) >= {"id", "name", "createTime", "blobCount", "dirDepth", "dirRoot"}
    assert raw[rec["offset"]] == 0x30
    # The refcount block's counts are the image's counts.
    block = doc["refcount_tree"]["nodes"][-1]
    assert block["type"] == "refcount_block" and len(block["fields"]["counts"]) == cs // 2
    assert doc["keyslot_table"] is None and doc["errors"] == []


def test_dump_human(filled):
    text = ok("dump", filled).output
    for needle in ("header @0x0", "commit_slot @0x200", "commit_slot @0x400", "refcount_block @0x",
                   "dir_node @0x", "DirEntry @0x", "map_node @0x", "slot_magic", "header_crc"):
        assert needle in text


def test_dump_damaged_image_still_shows_header(filled):
    raw = bytearray(filled.read_bytes())
    raw[512] ^= 1
    raw[1024] ^= 1
    filled.write_bytes(bytes(raw))
    r = run("dump", "--output", "json", filled)
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert doc["error"]["code"] == "slot.none_valid"
    assert doc["header"]["fields"]["version"] == 1
    assert [s["valid"] for s in doc["slots"]] == [False, False] and doc["active_slot"] is None


def test_dump_corrupt_cluster_listed(filled):
    off = _data_cluster_offset(filled)
    dir_off = dump_image(str(filled))["directory"]["nodes"][0]["offset"]
    raw = bytearray(filled.read_bytes())
    raw[dir_off + 3] ^= 0xFF
    filled.write_bytes(bytes(raw))
    doc = dump_image(str(filled))
    assert any(e["code"] == "cluster.checksum" and e["offset"] == dir_off for e in doc["errors"])
    assert off  # the data cluster itself is no longer reachable


# -- snapshots / diff ------------------------------------------------------------------------------------

def test_snapshot_commands(tmp_path, filled):
    (tmp_path / "meta").write_bytes(b'{"why": "upgrade"}')
    ok("snapshot", "create", "--metadata-file", tmp_path / "meta", filled, "before")
    ok("put", filled, "nic0/eeprom", input=b"changed")
    ok("snapshot", "create", filled, "after")
    text = ok("snapshot", "list", filled).output
    assert "before" in text and "after" in text and "NAME" in text
    doc = json.loads(ok("snapshot", "list", "--output", "json", filled).stdout)
    assert [(s["id"], s["name"], s["blob_count"]) for s in doc["snapshots"]] == [(1, "before", 2), (2, "after", 2)]
    assert doc["snapshots"][0]["metadata_hex"] == b'{"why": "upgrade"}'.hex()
    assert doc["snapshots"][1]["metadata_hex"] is None
    ok("snapshot", "revert", filled, "before")
    assert ok("get", filled, "nic0/eeprom").stdout_bytes == b"eeprom"
    ok("snapshot", "rename", filled, "before", "v1")
    ok("snapshot", "delete", filled, "after")
    doc = json.loads(ok("snapshot", "list", "--output", "json", filled).stdout)
    assert [s["name"] for s in doc["snapshots"]] == ["v1"]
    assert run("check", filled).exit_code == 0


def test_snapshot_errors(tmp_path, filled):
    ok("snapshot", "create", filled, "s")
    r = run("snapshot", "create", filled, "s")
    assert r.exit_code == 1 and error_line(r).startswith("nvbox: error: snapshot.exists: ")
    for sub in (["revert"], ["delete"], ["rename"]):
        args = ["snapshot", *sub, filled, "nope"] + (["x"] if sub == ["rename"] else [])
        r = run(*args)
        assert r.exit_code == 1 and error_line(r).startswith("nvbox: error: snapshot.not_found: ")
    (tmp_path / "big").write_bytes(b"m" * 1025)
    r = run("snapshot", "create", "--metadata-file", tmp_path / "big", filled, "t")
    assert r.exit_code == 1 and error_line(r).startswith("nvbox: error: snapshot.metadata: ")
    r = run("snapshot", "list", "--output", "json", tmp_path / "nope.nvbox")
    assert r.exit_code == 1 and json.loads(r.stdout)["error"]["code"] == "io.error"
    assert ok("snapshot", "list", tmp_path / "x.nvbox" if False else filled).output


def test_snapshot_list_empty(img):
    assert "No snapshots." in ok("snapshot", "list", img).output
    assert json.loads(ok("snapshot", "list", "--output", "json", img).stdout) == {"snapshots": []}


def test_diff(filled):
    ok("snapshot", "create", filled, "a")
    ok("put", filled, "new", input=b"n")
    ok("rm", filled, "nic0/eeprom")
    ok("put", filled, "tpm/permanent", input=b"different")
    ok("snapshot", "create", filled, "b")
    r = run("diff", filled, "a")
    assert r.exit_code == 1 and r.output.splitlines() == ["+ new", "- nic0/eeprom", "M tpm/permanent"]
    r = run("diff", "--output", "json", filled, "a", "b")
    doc = json.loads(r.stdout)
    assert r.exit_code == 1 and doc["added"] == ["new"] and doc["removed"] == ["nic0/eeprom"]
    assert doc["changed"] == ["tpm/permanent"] and doc["equal"] is False
    assert doc["sizes"] == {"new": [None, 1], "nic0/eeprom": [6, None], "tpm/permanent": [20480, 9]}
    assert ok("diff", filled, "b").output.strip() == "No differences."
    r = run("diff", "--output", "json", filled, "zz")
    assert r.exit_code == 2 and json.loads(r.stdout)["error"]["code"] == "snapshot.not_found"


def test_diff_compares_content_not_storage(filled):
    ok("snapshot", "create", filled, "a")
    data = ok("get", filled, "tpm/permanent").stdout_bytes
    ok("put", filled, "tpm/permanent", input=data)              # the same bytes, new clusters
    assert ok("diff", filled, "a").output.strip() == "No differences."
    doc = json.loads(ok("diff", "--output", "json", filled, "a").stdout)
    assert doc["equal"] is True and doc["changed"] == [] and doc["rewritten"] == ["tpm/permanent"]
    r = run("diff", "--storage", filled, "a")
    assert r.exit_code == 1 and r.output.splitlines() == ["S tpm/permanent"]
    ok("put", filled, "tpm/permanent", input=data[:-1] + b"!")  # same size, one byte differs
    r = run("diff", filled, "a")
    assert r.exit_code == 1 and r.output.splitlines() == ["M tpm/permanent"]


# -- compact ------------------------------------------------------------------------------------------------

def test_compact(tmp_path, filled):
    if "compact" not in cli.commands:
        pytest.skip("nvbox.compact is not available")
    ok("put", filled, "tmp", input=os.urandom(100000))
    ok("rm", filled, "tmp")
    before = os.path.getsize(filled)
    doc = json.loads(ok("compact", "--output", "json", filled).stdout)
    assert doc["before"] == before and doc["after"] < before
    assert os.path.getsize(filled) == doc["after"]
    assert ok("get", filled, "nic0/eeprom").stdout_bytes == b"eeprom"
    assert run("check", filled).exit_code == 0
    assert "Compacted" in ok("compact", filled).output


def test_compact_refuses_unclean(filled):
    if "compact" not in cli.commands:
        pytest.skip("nvbox.compact is not available")
    _bump_refcount(filled)
    r = run("compact", filled)
    assert r.exit_code == 1 and error_line(r).startswith("nvbox: error: image.not_clean: ")


# -- help -------------------------------------------------------------------------------------------------

def _all_commands(group, prefix=()):
    for name, cmd in group.commands.items():
        yield prefix + (name,), cmd
        if hasattr(cmd, "commands"):
            yield from _all_commands(cmd, prefix + (name,))


def test_help_everywhere():
    assert "Examples" in ok("--help").output
    names = set()
    for path, _cmd in _all_commands(cli):
        names.add(" ".join(path))
        text = ok(*path, "--help").output
        assert "Example" in text, path
    assert {"create", "put", "get", "rm", "ls", "info", "check", "import", "export", "measure", "dump",
            "snapshot", "snapshot create", "snapshot list", "snapshot revert", "snapshot delete",
            "snapshot rename", "diff"} <= names


def test_output_json_options():
    for path in (["info"], ["ls"], ["check"], ["measure"], ["dump"], ["snapshot", "list"], ["diff"]):
        assert "--output [human|json]" in ok(*path, "--help").output, path


# -- subprocess: python -m nvbox ------------------------------------------------------------------------------

def _proc(*args, input=None):
    return subprocess.run([sys.executable, "-m", "nvbox", *map(str, args)], input=input, capture_output=True,
                          timeout=60)


def test_python_m_nvbox(tmp_path):
    p = tmp_path / "s.nvbox"
    assert _proc("create", p).returncode == 0
    assert _proc("put", p, "a/b", "-", input=b"hello").returncode == 0
    r = _proc("get", p, "a/b")
    assert r.returncode == 0 and r.stdout == b"hello"
    r = _proc("check", "--output", "json", p)
    assert r.returncode == 0 and json.loads(r.stdout)["verdict"] == "clean"


def test_python_m_nvbox_errors_are_one_line(tmp_path):
    r = _proc("get", tmp_path / "missing.nvbox", "x")
    assert r.returncode == 1 and b"Traceback" not in r.stderr
    assert r.stderr.decode().strip().splitlines() == [
        f"nvbox: error: io.error: {tmp_path / 'missing.nvbox'}: no such file"]
    p = tmp_path / "s.nvbox"
    _proc("create", p)
    raw = bytearray(p.read_bytes())
    raw[600] ^= 1
    raw[1100] ^= 1
    p.write_bytes(bytes(raw))
    r = _proc("check", p)
    assert r.returncode == 2 and b"Traceback" not in r.stderr


def test_python_m_nvbox_broken_pipe(tmp_path):
    p = tmp_path / "s.nvbox"
    _proc("create", p)
    _proc("put", p, "big", "-", input=os.urandom(1 << 20))
    cmd = f"{sys.executable} -m nvbox get {p} big | head -c 10 > /dev/null"
    r = subprocess.run(["sh", "-c", cmd], capture_output=True, timeout=60)
    assert b"Traceback" not in r.stderr


def test_export_does_not_write_through_a_symlinked_directory(tmp_path, img):
    ok("put", img, "tpm/permall", input=b"seeds")
    ok("put", img, "top", input=b"t")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "state"
    out.mkdir()
    (out / "tpm").symlink_to(elsewhere)
    r = run("export", img, out)
    assert r.exit_code == 1 and "is a symbolic link" in r.stderr
    assert list(elsewhere.iterdir()) == [] and (out / "top").read_bytes() == b"t"


def test_export_killed_halfway_leaves_each_file_old_or_new(tmp_path):
    """SIGKILL at several points of an export over an older export: every file
    holds the old or the new content, never a mix or a truncation."""
    import time
    p = tmp_path / "s.nvbox"
    ok("create", p)
    old = {f"d{i % 3}/f{i}": bytes([i]) * 300_000 for i in range(16)}
    new = {n: bytes([255 - i]) * 250_000 for i, n in enumerate(old)}
    with nvbox.open(p, "rw") as im:
        with im.transaction():
            for n, data in old.items():
                im[n] = data
        im.snapshots.create("old")
        with im.transaction():
            for n, data in new.items():
                im[n] = data
    out = tmp_path / "state"
    ok("export", "--snapshot", "old", p, out)
    def new_files():
        return sum(1 for n in old if (out / n).stat().st_size == len(new[n]))

    for written in (1, 9):            # kill once this many files are new (or when it ended)
        proc = subprocess.Popen([sys.executable, "-m", "nvbox", "export", str(p), str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while proc.poll() is None and new_files() < written and time.monotonic() < deadline:
                time.sleep(0.002)
        finally:
            if proc.poll() is None:
                proc.kill()                            # SIGKILL: no handler, no cleanup
            proc.wait(timeout=60)
        files = {n: d for n, d in _files(out).items() if not n.rsplit("/", 1)[-1].startswith(".")}
        assert set(files) == set(old)
        assert all(files[n] in (old[n], new[n]) for n in old)
        ok("export", "--snapshot", "old", p, out)
    ok("export", "--mirror", p, out)                  # also clears a killed run's temporary files
    assert _files(out) == new


@pytest.mark.parametrize("encrypted", [False, True])
def test_diff_reads_only_clusters_whose_pointers_differ(tmp_path, encrypted):
    from nvbox.compare import compare
    key = nvbox.crypto.Key.from_key_bytes(b"K" * 32) if encrypted else None
    p = tmp_path / "d.nvbox"
    with nvbox.create(p, encrypt=encrypted, key=key) as im:
        im["big"] = os.urandom(400 * 4096)
        im["same"] = b"s" * 50_000
        im.snapshots.create("a")
        im.write("big", 123 * 4096 + 7, b"!")           # one data cluster of 400 changes
        im["same"] = b"s" * 50_000                         # new clusters, the same bytes
        im.snapshots.create("b")
    with nvbox.open(p, key=key) as im:
        im.reset_stats()
        doc = compare(im, "a", "b")
        reads = im.stats["clusters_read"]
    assert doc["changed"] == ["big"] and doc["rewritten"] == ["same"] and not doc["equal"]
    # Directory and map nodes (at most 12), the 13 data clusters of 'same' on each side (equal
    # CRCs: read to compare), and of big's 800 only the changed one on each side when encrypted
    # (a plain image's differing CRCs already tell).
    assert reads <= 12 + 2 * 13 + (2 if encrypted else 0)
