"""The command as operators script it (issue 18): one-line errors and qemu-img's
exit statuses, info without a key, exact sizes, the map's extent table and
picture, and progress bars on a terminal only."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time

import pytest

import nvbox
from nvbox.clustermap import cluster_map
from nvbox.mappicture import BLOB_COLOURS, CATEGORY_COLOURS, legend_entries

from test_cli import ok, run



@pytest.fixture
def img(tmp_path):
    p = tmp_path / "vm.nvbox"
    ok("create", p)
    ok("put", p, "tpm/permanent", input=b"p" * 5999)
    ok("put", p, "tpm/other", input=b"o" * 6070)
    return p


# -- errors and exit statuses ---------------------------------------------------------------------

@pytest.mark.parametrize("args", [("check", "--bogus", "IMG"), ("check", "DIR"), ("bogus",), ("ls",),
                                  ("get", "IMG"), ("map", "--columns", "0", "IMG")])
def test_usage_errors_are_one_line_and_exit_1(tmp_path, img, args):
    args = [str(img) if a == "IMG" else str(tmp_path) if a == "DIR" else a for a in args]
    r = run(*args)
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nvbox: error: usage.argument: "), r.stderr
    r = run(*args, "--output", "json")
    assert r.exit_code == 1 and json.loads(r.stdout)["error"]["code"] == "usage.argument"


def test_usage_errors_one_line_in_a_subprocess(tmp_path):
    r = subprocess.run([sys.executable, "-m", "nvbox", "check", "--bogus", str(tmp_path / "x")],
                       capture_output=True, timeout=60)
    assert r.returncode == 1 and r.stdout == b""
    assert r.stderr.decode().splitlines() == [
        "nvbox: error: usage.argument: nvbox check: No such option '--bogus'. (see 'nvbox check --help')"]


def test_check_of_a_file_that_is_not_nvbox_could_not_check(tmp_path):
    other = tmp_path / "photo.jpg"
    other.write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(4000))
    r = run("check", other)
    assert r.exit_code == 1 and "is not an nvbox image" in r.stderr
    assert r.stderr.startswith("nvbox: error: header.magic: ") and "corrupt" not in r.output
    r = run("check", "--output", "json", other)
    assert r.exit_code == 1 and json.loads(r.stdout)["error"]["code"] == "header.magic"


def test_check_reports_a_damaged_refcount_tree(tmp_path):
    p = tmp_path / "r.nvbox"
    with nvbox.create(p, cluster_size=512) as im:
        im["a"] = os.urandom(5000)
        root = im.slot.refcount_root.offset
    raw = bytearray(p.read_bytes())
    raw[root + 3] ^= 0xFF
    p.write_bytes(bytes(raw))
    r = run("check", p)
    assert r.exit_code == 2 and "ERROR cluster.checksum: " in r.output and "errors were found" in r.output
    # info still shows what the header and slots say, and the damage
    r = ok("info", p)
    assert "corrupt:      yes: cluster.checksum: " in r.output and "blobs:        1" in r.output
    assert json.loads(ok("info", "--output", "json", p).stdout)["corrupt"]["code"] == "cluster.checksum"


# -- info without a key -----------------------------------------------------------------------------

def test_info_of_an_encrypted_image_without_a_key(tmp_path):
    p, k1, k2 = tmp_path / "e.nvbox", tmp_path / "k1", tmp_path / "k2"
    k1.write_bytes(b"A" * 32)
    k2.write_bytes(b"B" * 32)
    ok("create", "--encrypt", "--key-file", k1, p)
    ok("put", "--key-file", k1, p, "a", input=b"hello")
    ok("key", "add", "--key-file", k1, "--new-key-file", k2, p)
    env = {"NVBOX_PASSPHRASE": None}
    r = ok("info", p, env=env)
    assert "encrypted:    yes" in r.output and "used:         - (needs the key)" in r.output
    assert "key slots:    2 in use (keyfile, keyfile)" in r.output and "Needs the key:" in r.output
    doc = json.loads(ok("info", "--output", "json", p, env=env).stdout)
    unlocked = json.loads(ok("info", "--output", "json", "--key-file", k2, p).stdout)
    assert doc["authenticated"] is False and "used_clusters" not in doc and doc["needs_key"]
    for field in ("cluster_size", "image_clusters", "generation", "blob_count", "snapshot_count", "encrypted",
                  "capacity", "image_uuid", "key_slots"):
        assert doc[field] == unlocked[field], field
    # a wrong key is still an error
    (tmp_path / "bad").write_bytes(b"C" * 32)
    r = run("info", "--key-file", tmp_path / "bad", p)
    assert r.exit_code == 1 and r.stderr.startswith("nvbox: error: key.invalid: ")


# -- ls ------------------------------------------------------------------------------------------------

def test_ls_bytes(img):
    assert ok("ls", "-l", img).output.splitlines()[1:3] == [
        "5.9 KiB  clusters, depth 1  tpm/other", "5.9 KiB  clusters, depth 1  tpm/permanent"]
    lines = ok("ls", "-l", "--bytes", img).output.splitlines()
    assert lines[1:] == ["6070  clusters, depth 1  tpm/other", "5999  clusters, depth 1  tpm/permanent",
                         "2 blobs, 12069 bytes"]
    doc = json.loads(ok("ls", "--output", "json", img).stdout)
    assert [b["size"] for b in doc["blobs"]] == [6070, 5999]


# -- map -----------------------------------------------------------------------------------------------

def test_map_extent_table_and_json(img):
    with nvbox.open(img) as im:
        n, cs = im.slot.image_clusters, im.cluster_size
    lines = ok("map", img).output.splitlines()
    assert lines[0].split() == ["START", "LENGTH", "CLUSTERS", "WHAT"]
    assert lines[1].split()[0] == "0x0" and lines[1].split()[3] == "header"
    rows = [line.split(None, 3) for line in lines[1:-1]]
    # the extents tile the image, in order
    pos = 0
    for start, length, clusters, _what in rows:
        assert int(start, 16) == pos
        pos += int(length)
    assert pos == n * cs
    assert any(what == "blob tpm/permanent" for *_, what in rows)
    doc = json.loads(ok("map", "--output", "json", img).stdout)
    assert sum(r["bytes"] for r in doc["runs"]) == n * cs
    assert all(r["offset"] == r["start"] * cs for r in doc["runs"])


def test_map_picture_colours_and_legend(tmp_path):
    pytest.importorskip("matplotlib")
    p = tmp_path / "m.nvbox"
    with nvbox.create(p, cluster_size=512) as im:
        for i in range(14):                              # more blobs than blob colours
            im[f"b{i:02}"] = bytes([i]) * (600 * (i + 1))
        im.snapshots.create("s")
        im["b00"] = b"new" * 400
    with nvbox.open(p) as im:
        description = cluster_map(im)
    entries = legend_entries(description)
    colours = [c for _, c, _ in entries]
    assert len(colours) == len(set(colours))                      # no colour stands for two things
    assert not set(BLOB_COLOURS) & set(CATEGORY_COLOURS.values())
    assert sum(count for _, _, count in entries) == description["image_clusters"]
    assert [label for label, _, _ in entries if "other" in label] == ["5 other blobs"]
    assert {label for label, _, _ in entries} >= {"header", "refcount", "directory", "snapshot-only", "free"}
    png = tmp_path / "m.png"
    doc = json.loads(ok("map", "-o", png, "--output", "json", p).stdout)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and doc["columns"] == 64
    from PIL import Image
    with Image.open(png) as picture:
        assert picture.size[0] == 64 * doc["cell_pixels"] and picture.size[1] > doc["rows"] * doc["cell_pixels"]
        # the first cell is the header's colour
        assert picture.getpixel((0, 0))[:3] == tuple(int(CATEGORY_COLOURS["header"][i:i + 2], 16) for i in (1, 3, 5))


def test_map_picture_without_matplotlib_names_the_extra(tmp_path, img):
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from nvbox.cli import main\n"
            f"main(['map', '-o', {str(tmp_path / 'x.png')!r}, {str(img)!r}])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert r.returncode == 1 and b"nvbox[map]" in r.stderr and b"Traceback" not in r.stderr


# -- progress ------------------------------------------------------------------------------------------

def _on_a_terminal(*args, timeout=120):
    """Run ``python -m nvbox ARGS`` with stderr on a pseudo-terminal; (status, stderr text)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "nvbox", *map(str, args)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    seen, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:          # the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=10), seen.decode("utf-8", "replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        os.close(master)


def _percentages(text, label):
    return [int(part.split("%")[0].split()[-1]) for part in text.split(label)[1:] if "%" in part]


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    """A 512-byte-cluster image and a 4.5 MiB directory: more clusters and bytes
    than the bars' thresholds (nvbox.cmdline.PROGRESS_*)."""
    root = tmp_path_factory.mktemp("large")
    src = root / "state"
    src.mkdir()
    for i in range(3):
        (src / f"f{i}").write_bytes(os.urandom(1536 << 10))
    p = root / "l.nvbox"
    ok("create", "--cluster-size", 512, p)
    return p, src


def test_progress_bars_move_and_reach_100_on_a_terminal(tmp_path, large):
    p, src = large
    status, text = _on_a_terminal("import", p, src)
    assert status == 0 and _percentages(text, "importing")[-1] == 100
    for args, label in ((("check", p), "checking"), (("map", p), "mapping"),
                        (("export", p, tmp_path / "out"), "exporting")):
        status, text = _on_a_terminal(*args)
        seen = _percentages(text, label)
        assert status == 0 and seen[-1] == 100 and len(set(seen)) > 1, (args, text[-300:])
    ok("put", p, "junk", input=os.urandom(1 << 20))
    ok("rm", p, "junk")
    status, text = _on_a_terminal("compact", p)
    seen = _percentages(text, "compacting")
    # The bar moves through the check and the pass's walk, not only at the end.
    assert status == 0 and seen[-1] == 100 and len(set(seen) - {0, 100}) >= 2, text[-300:]


def test_no_progress_bar_without_a_terminal(large):
    p, _ = large
    r = subprocess.run([sys.executable, "-m", "nvbox", "check", str(p)], capture_output=True, timeout=120)
    assert r.returncode == 0 and r.stderr == b""
