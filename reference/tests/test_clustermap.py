"""nvbox map: every cluster classified, sharing with snapshots shown, PNG drawn."""

import json

import nvbox
from click.testing import CliRunner
from nvbox.cli import cli
from nvbox.clustermap import cluster_map


def _image(tmp_path):
    path = tmp_path / "m.nvbox"
    img = nvbox.create(path, cluster_size=512)
    img["kept"] = bytes(range(256)) * 40          # 20 clusters, unchanged after the snapshot
    img["changed"] = b"\x01" * 5000
    img["gone"] = b"\x02" * 3000
    img.snapshots.create("s")
    img["changed"] = b"\x03" * 5000
    del img["gone"]
    return path, img


def test_every_cluster_classified_and_totals_add_up(tmp_path):
    _, img = _image(tmp_path)
    d = cluster_map(img)
    assert sum(r["length"] for r in d["runs"]) == d["image_clusters"] == img.slot.image_clusters
    assert sum(d["totals"].values()) == d["image_clusters"]
    assert d["totals"]["header"] == img.geo.header_clusters
    owners = {r["owner"] for r in d["runs"] if r["category"] == "blob"}
    assert owners == {"kept", "changed"}
    # 'gone' and the old 'changed' live only in the snapshot.
    assert d["totals"]["snapshot-only"] >= 6 + 10
    # 'kept' (20 data clusters and its map node) is reachable from both.
    shared = sum(r["length"] for r in d["runs"] if r["shared"])
    assert shared >= 21
    assert all(r["owner"] == "kept" for r in d["runs"] if r["shared"] and r["category"] == "blob")
    used = sum(1 for c in range(img.slot.image_clusters) if img.store.durable_count(c))
    assert d["totals"].get("free", 0) == d["image_clusters"] - used


def test_cli_png_and_json(tmp_path):
    path, img = _image(tmp_path)
    img.close()
    png = tmp_path / "map.png"
    r = CliRunner().invoke(cli, ["map", str(path), "-o", str(png)])
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = CliRunner().invoke(cli, ["map", "--output", "json", str(path)])
    doc = json.loads(r.stdout)
    assert doc["verdict"] == "clean" and doc["runs"][0]["category"] == "header"
