"""benchmarks/report.py: a missed count target fails the report, a missed timing
ratio does not; the README's results section is current (docs/stamp.py)."""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import report  # noqa: E402
import stamp  # noqa: E402  (report.py puts docs/ on the path)

README = os.path.join(HERE, "..", "README.md")


def _raw(tmp_path, *targets) -> str:
    """A pytest-benchmark JSON file holding one benchmark with ``targets``."""
    bench = {"group": "g", "name": "test_x", "stats": {"median": 0.001, "mean": 0.001, "min": 0.001,
                                                     "max": 0.001, "rounds": 1},
             "extra_info": {"system": "nvbox", "workload": "target_x", "mode": "quick", "targets": list(targets)}}
    path = tmp_path / "raw.json"
    path.write_text(json.dumps({"version": "5", "datetime": "2026-12-04T00:00:00", "benchmarks": [bench]}))
    return str(path)


def _target(name, kind, ok):
    return {"name": name, "value": 5 if ok else 9, "limit": 6, "op": "<=", "unit": "clusters", "pass": ok,
            "kind": kind}


def _report(tmp_path, *targets, readme=None) -> int:
    args = [_raw(tmp_path, *targets), "--outdir", str(tmp_path), "--no-plots", "--name", "t"]
    return report.main(args + (["--readme", readme] if readme else ["--no-readme"]))


def test_a_missed_count_fails_the_report(tmp_path):
    assert _report(tmp_path, _target("a", "count", True), _target("b", "timing", True)) == 0
    assert _report(tmp_path, _target("a", "count", True), _target("b", "timing", False)) == 0
    assert _report(tmp_path, _target("a", "count", False), _target("b", "timing", True)) == 1
    saved = json.loads((tmp_path / "t.json").read_text())
    assert [(t["name"], t["kind"], t["pass"]) for t in saved["targets"]] == [("a", "count", False),
                                                                             ("b", "timing", True)]


def test_the_results_section_is_stamped(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n## Results\n\n" + report.START + "\nold\n" + report.END + "\n")
    assert _report(tmp_path, _target("a", "count", True), readme=str(readme)) == 0
    text = readme.read_text()
    assert "old" not in text and "| a | count | 5 clusters | <= 6 | pass |" in text
    assert stamp.staleness(text, report.INPUTS) is None


def test_readme_results_are_current():
    with open(README) as f:
        why = stamp.staleness(f.read(), report.INPUTS)
    assert why is None, (f"benchmarks/README.md's results are stale: {why}.  Rerun the benchmarks and the "
                         "report: make bench (or see the README's Results section for the runs it combines)")
