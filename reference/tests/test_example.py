"""spec/example.md is kept current: regenerating it must give the same text.

The annotated example image is produced by spec/make_example.py from the
reference library.  Any change to the on-disk layout, to the reference's
allocation order or to the spec's field names shows up here as a stale
document; rerun ``python spec/make_example.py`` and review the diff.

When dumpasn1 or openssl is installed (``make tools``), the DER decodes shown in
the document are also checked against the real tools.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

import nvbox
from nvbox import _format as fmt

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "spec" / "make_example.py"


def _load():
    spec = importlib.util.spec_from_file_location("nvbox_make_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example():
    return _load()


def test_example_md_is_current(example):
    expected = example.render()
    current = (ROOT / "spec" / "example.md").read_text(encoding="utf-8")
    assert current == expected, "spec/example.md is stale: run `python spec/make_example.py` and commit the result"


def test_generation_is_deterministic(example):
    assert example.build() == example.build()


def test_example_image_opens_and_checks_clean(example):
    raw, after = example.build()
    for image_bytes in (raw, after):
        with nvbox.open(image_bytes) as img:
            assert img["uefi/vars"] == bytes(range(256)) * 5
            assert [s.name for s in img.snapshots.list()] == ["factory"]
    from nvbox.check import check_image
    for image_bytes in (raw, after):
        with nvbox.open(image_bytes) as img:
            assert check_image(img).verdict == "clean"   # the document says `nvbox check` finds it clean


def _dir_body(example, raw):
    walk = example.Walk(raw)
    leaf = walk.cluster(walk.slot.dir_root.offset // example.CLUSTER_SIZE)
    length = int.from_bytes(leaf[8:12], "little")
    return leaf[16:16 + length], walk


def _snapshot_table(walk):
    s = walk.slot
    return walk.read_map(s.snaptable_root, s.snaptable_depth, s.snaptable_size)


@pytest.mark.skipif(shutil.which("dumpasn1") is None, reason="dumpasn1 is not installed (make tools)")
def test_dumpasn1_agrees_with_the_document(example, tmp_path):
    raw, _ = example.build()
    body, walk = _dir_body(example, raw)
    for der_bytes in (body, _snapshot_table(walk)):
        path = tmp_path / "value.der"
        path.write_bytes(der_bytes)
        run = subprocess.run(["dumpasn1", str(path)], capture_output=True, text=True, check=True)
        lines = [line.rstrip() for line in run.stdout.splitlines()]
        lines = [line for line in lines if line and "warnings" not in line]
        assert lines == [line.rstrip() for line in example.dumpasn1(der_bytes)]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_openssl_parses_the_directory_body(example, tmp_path):
    raw, _ = example.build()
    body, _ = _dir_body(example, raw)
    path = tmp_path / "body.der"
    path.write_bytes(body)
    run = subprocess.run(["openssl", "asn1parse", "-inform", "DER", "-i", "-in", str(path)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "UTF8STRING        :uefi/vars" in run.stdout
    assert "cont [ 1 ]" in run.stdout


def test_every_structure_is_fully_labelled(example):
    """Listing.done() asserts exact coverage; a gap must raise, not pass silently."""
    raw, _ = example.build()
    listing = example.Listing(raw, 0, 16)
    listing.field(0, 8, "magic")
    with pytest.raises(AssertionError):
        listing.done()
    assert fmt.MAGIC == raw[:8]
