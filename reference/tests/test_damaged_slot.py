"""A damaged commit slot is reported, not silent (spec R-check-3, issue 17 part 2).

The reader still opens the other slot (R-slot-3); check, info and dump say which
slot is damaged and which generations they can read.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import nvbox
from nvbox import _format as fmt
from nvbox.check import check_image, damaged_slots
from nvbox.compact import compact_image
from nvbox.cli import cli


@pytest.fixture
def two_gens(tmp_path):
    """An image whose slots hold generations g - 1 and g; (path, g, index of g's slot)."""
    path = tmp_path / "vm.nvbox"
    with nvbox.create(str(path), cluster_size=512) as img:
        img.put("a", b"1")
        img.put("b", b"2")
        gen = img.generation
    return path, gen, 0 if gen % 2 else 1


def _poke(path, offset, value: bytes):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(value)


def test_newest_slot_damaged_is_reported_and_the_older_one_used(two_gens):
    path, gen, newest = two_gens
    _poke(path, fmt.SLOT_OFFSETS[newest] + 100, b"\xff")   # its CRC fails now
    with nvbox.open(str(path)) as img:
        assert img.generation == gen - 1 and "b" not in img   # the reader's choice is unchanged
        result = check_image(img)
    assert result.verdict == "corrupt"
    [found] = result.corruptions
    assert found["code"] == "slot.damaged"
    assert (found["slot"], found["generation"]) == ("AB"[newest], gen)
    assert (found["active_slot"], found["active_generation"]) == ("AB"[1 - newest], gen - 1)
    assert found["offset"] == fmt.SLOT_OFFSETS[newest] and "CRC" in found["reason"]


def test_zero_slot_is_not_damage_and_a_commit_clears_the_report(two_gens):
    path, gen, newest = two_gens
    _poke(path, fmt.SLOT_OFFSETS[newest], bytes(fmt.SECTOR))
    with nvbox.open(str(path)) as img:
        assert damaged_slots(img) == [] and check_image(img).verdict == "clean"
    _poke(path, fmt.SLOT_OFFSETS[newest], b"junk")
    with nvbox.open(str(path), "rw") as img:
        assert [d["slot"] for d in damaged_slots(img)] == ["AB"[newest]]
        img.put("c", b"3")          # generation gen: written to the damaged slot's place
        assert damaged_slots(img) == [] and check_image(img).verdict == "clean"


def test_older_slot_damaged_is_reported_too(two_gens):
    path, gen, newest = two_gens
    _poke(path, fmt.SLOT_OFFSETS[1 - newest] + 40, b"\x01")
    with nvbox.open(str(path)) as img:
        assert img.generation == gen
        [found] = damaged_slots(img)
    assert found["slot"] == "AB"[1 - newest] and found["generation"] == gen - 1


def test_cli_check_info_and_dump_name_the_damaged_slot(two_gens):
    path, gen, newest = two_gens
    _poke(path, fmt.SLOT_OFFSETS[newest], b"NVBXSLOX")
    runner = CliRunner()
    name = "AB"[newest]
    r = runner.invoke(cli, ["check", str(path)])
    assert r.exit_code == 2, r.output
    assert f"slot.damaged: commit slot {name} is damaged" in r.output and f"generation {gen}" in r.output
    assert "No errors were found" not in r.output
    r = runner.invoke(cli, ["check", "--output", "json", str(path)])
    doc = json.loads(r.output)
    assert r.exit_code == 2 and doc["verdict"] == "corrupt"
    assert [(c["code"], c["slot"], c["generation"], c["active_generation"]) for c in doc["corruptions"]] == [
        ("slot.damaged", name, gen, gen - 1)]
    r = runner.invoke(cli, ["info", str(path)])
    assert r.exit_code == 0 and f"damaged slot: commit slot {name} is damaged" in r.output
    doc = json.loads(runner.invoke(cli, ["info", "--output", "json", str(path)]).output)
    assert [d["slot"] for d in doc["damaged_slots"]] == [name]
    r = runner.invoke(cli, ["dump", str(path)])
    assert f"name={name} valid=False state=damaged" in r.output and "ERROR slot.damaged" in r.output


def test_compaction_is_not_refused_for_a_damaged_slot_and_its_commit_clears_it(tmp_path):
    path = tmp_path / "c.nvbox"
    with nvbox.create(str(path), cluster_size=512) as img:
        for i in range(6):
            img.put(f"b{i}", bytes([i]) * 3000)
        for i in range(5):
            img.delete(f"b{i}")
        older = 1 if img.generation % 2 else 0
    _poke(path, fmt.SLOT_OFFSETS[older] + 40, b"\x01")
    with nvbox.open(str(path), "rw") as img:
        assert len(damaged_slots(img)) == 1
        assert compact_image(img)["passes"] >= 1
        assert damaged_slots(img) == [] and check_image(img).verdict == "clean"
        assert img["b5"] == b"\x05" * 3000
