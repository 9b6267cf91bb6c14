"""Run the invalid cases against the broken variants (conformance/variants.py).

    python -m conformance.teeth [--jobs N] [--json OUT]

Each variant runs on the cases that could notice its missing rule (``TEETH``:
globs of case ids), through the ordinary runner with ``--impl "python -m
conformance.variants VARIANT"``.  The result is a matrix case -> variants that
fail it.  The corpus has teeth when every invalid case (read-invalid, and check
cases whose verdict is not clean) fails at least one variant, and every variant
fails at least one case.  conformance/tests/test_teeth.py asserts both.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

RI = "read-invalid"

#: variant -> case-id globs it runs on.
TEETH = {
    "no-magic-check": [f"{RI}/header/*magic*", f"{RI}/header/*not-nvbox*"],
    "no-header-crc": [f"{RI}/header/*checksum*"],
    "no-version-check": [f"{RI}/header/*version*"],
    "no-header-fields": [f"{RI}/header/*length-1*", f"{RI}/header/*length-0*", f"{RI}/header/*length-5*",
                         f"{RI}/header/*refcount*", f"{RI}/header/*reserved*", f"{RI}/header/*flags*",
                         f"{RI}/header/*capacity*", f"{RI}/header/*order*"],
    "no-cluster-bits-bound": [f"{RI}/header/*cluster-bits*"],
    "no-extension-checks": [f"{RI}/header/*ext*", f"{RI}/header/*504*"],
    "no-slot-fields": [f"{RI}/slot/*field*", f"{RI}/slot/*order-field*", f"{RI}/slot/*capacity*", f"{RI}/pointer/*slot*", f"{RI}/snapshot/*count*",
                       f"{RI}/crypto/*pointer-null*"],
    "incompat-ignored": [f"{RI}/feature", f"{RI}/slot/*order-feature*"],
    "no-pointer-range": [f"{RI}/pointer/*misaligned*", f"{RI}/pointer/*past-end*", f"{RI}/pointer/*header*",
                         f"{RI}/pointer/*offset-max*", f"{RI}/pointer/*far*"],
    "no-pointer-reserved": [f"{RI}/pointer/*reserved*", f"{RI}/pointer/*null-with-crc*", f"{RI}/crypto/*trailing*",
                            f"{RI}/snapshot/*null-with-crc*"],
    "no-cycle-check": [f"{RI}/pointer/*cycle*", "check/corrupt/*map-and-data*", "check/corrupt/*blob-and-snapshot-data*",
                       "check/corrupt/*map-node-at-two-levels*"],
    "crc-unchecked": [f"{RI}/checksum", f"{RI}/slot/*tree*", "check/corrupt/*checksum*", f"{RI}/crypto/*checksum*"],
    "der-unchecked": [f"{RI}/der", f"{RI}/snapshot/*ext*", f"{RI}/snapshot/*fields*", f"{RI}/snapshot/*size-one*",
                      f"{RI}/snapshot/*utf8*", f"{RI}/snapshot/*record-*"],
    "der-minimality-unchecked": [f"{RI}/der/*length*", f"{RI}/der/*integer*", f"{RI}/snapshot/*minimal*"],
    "no-dir-node-checks": [f"{RI}/directory/*node*", f"{RI}/snapshot/*dir-node*"],
    "no-dir-order": [f"{RI}/directory/*order*"],
    "no-dir-entry-checks": [f"{RI}/directory/*entry*", "check/corrupt/*blob-count*", f"{RI}/snapshot/*width*",
                            f"{RI}/der/*utf8*"],
    "no-dir-depth": [f"{RI}/directory/*depth*"],
    "no-map-depth": [f"{RI}/map"],
    "no-map-tail": ["check/corrupt/*map-tail*"],
    "no-snapshot-table-checks": [f"{RI}/snapshot/*id*", f"{RI}/snapshot/*name*", f"{RI}/snapshot/*root*",
                                 f"{RI}/snapshot/*metadata*", f"{RI}/snapshot/*count*", f"{RI}/snapshot/*next*",
                                 "check/corrupt/*snapshot-blob-count*"],
    "no-truncation-check": [f"{RI}/truncation", f"{RI}/crypto/*truncated*"],
    "no-refcount-tree-checks": ["check/corrupt/*beyond*"],
    "older-slot": [f"{RI}/slot/*newer*", "read-valid/slot/*both-valid*"],
    "slot-generation-unchecked": [f"{RI}/slot/*parity*", f"{RI}/slot/*generation*"],
    "slot-crc-unchecked": [f"{RI}/slot/*crc*"],
    "slot-mac-unchecked": [f"{RI}/crypto/*mac*"],
    "no-slot-none-valid": [f"{RI}/slot/*both*"],
    "lookup-by-iteration": [f"{RI}/directory/*outside-branch*"],
    "no-dir-node-and-der": [f"{RI}/directory/*body-length*"],
    "no-dir-levels-lax": [f"{RI}/directory/*child-level*", f"{RI}/pointer/*dir-cycle*"],
    "no-low-key-checks": [f"{RI}/directory/*low-key*"],
    "check-does-nothing": ["check/corrupt", "check/leaks"],
    "check-open-errors-fail": ["check/corrupt/*unopenable*"],
    "check-undercount-is-leak": ["check/corrupt/*count*"],
    "check-leaks-ignored": ["check/leaks"],
    "snapshot-lookup-ignored": [f"{RI}/snapshot/*not-found*"],
    "no-auth": [f"{RI}/crypto/*auth*"],
    "no-keyslot-checks": [f"{RI}/crypto/*keyslots*"],
    "no-key-checks": [f"{RI}/crypto/*key-*"],
    "no-key-file-minimum": [f"{RI}/crypto/*key-file-short*"],
    "header-fields-reordered": [f"{RI}/header/n_header_order-*"],
    "extension-required-last": [f"{RI}/header/*ext-order-*"],
    "keyslots-before-key": [f"{RI}/crypto/*key-missing*"],
    "old-readings": [f"{RI}/der/*utf8*", f"{RI}/directory/*name-empty*", f"{RI}/directory/*low-key-16*",
                     f"{RI}/crypto/*keyslots-checksum*", f"{RI}/snapshot/*name-*", f"{RI}/snapshot/*metadata-1025*",
                     f"{RI}/snapshot/*root-width*"],
    "no-damaged-slot-report": ["check/corrupt/*slot-damaged*", "check/crypto/*slot-damaged*"],
}


#: Variants no case can catch, and why (kept out of the "every variant fails a case" rule).
UNCATCHABLE = {
    "refcount-wrap": "refcount.overflow needs a count above 65535; no operation script within the spec's limits reaches "
                     "it, and a roundtrip case cannot expect `rewrite` to fail (see COVERAGE.md, R-ref-4)",
}


def invalid_cases(cases_dir: Path) -> list[str]:
    """Case ids that a broken implementation should fail: read-invalid, and check cases
    whose verdict is not clean."""
    out = []
    for manifest in sorted(cases_dir.rglob("case.json")):
        d = json.loads(manifest.read_text())
        if d["kind"] == "read-invalid" or (d["kind"] == "check" and d["verdict"] != "clean"):
            out.append(d["id"])
    return out


def run(jobs: int = 2, cases_dir: Path = HERE / "cases", variants=None) -> dict:
    """{variant: {case id: result}} for the cases each variant runs on."""
    from conformance.runner import discover, select, split_globs
    from conformance.variants import VARIANTS
    all_ids = {c.id for c in discover(cases_dir)}
    matrix = {}
    for variant, globs in TEETH.items():
        if variants and variant not in variants:
            continue
        if variant not in VARIANTS:
            raise SystemExit(f"TEETH names unknown variant {variant}")
        chosen, _ = select(discover(cases_dir), split_globs(globs), [])
        if not chosen:
            continue   # e.g. no encrypted cases yet
        with tempfile.TemporaryDirectory() as tmp:
            report = Path(tmp) / "r.json"
            cmd = [sys.executable, "-m", "conformance", "run", "--impl",
                   f"{sys.executable} -m conformance.variants {variant}", "--cases", str(cases_dir),
                   "--jobs", str(jobs), "--json", str(report)]
            for g in globs:
                cmd += ["--run", g]
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=HERE.parent)
            doc = json.loads(report.read_text())
        matrix[variant] = {c["id"]: c["result"] for c in doc["cases"] if c["id"] in all_ids}
    return matrix


def summarise(matrix: dict, cases_dir: Path = HERE / "cases") -> tuple[list, list]:
    """(invalid cases no variant fails, variants that fail no case)."""
    failing = {"fail", "crash", "timeout"}
    caught = {cid for res in matrix.values() for cid, r in res.items() if r in failing}
    uncaught = [cid for cid in invalid_cases(cases_dir) if cid not in caught]
    toothless = [v for v, res in matrix.items() if not any(r in failing for r in res.values())]
    return uncaught, toothless


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m conformance.teeth")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--variant", action="append")
    args = ap.parse_args(argv)
    matrix = run(args.jobs, variants=args.variant)
    uncaught, toothless = summarise(matrix)
    for v, res in matrix.items():
        n = sum(1 for r in res.values() if r in ("fail", "crash", "timeout"))
        print(f"{v:28} fails {n:3} of {len(res):3} cases")
    for cid in uncaught:
        print(f"UNCAUGHT: {cid}")
    for v in toothless:
        print(f"TOOTHLESS: {v}")
    if args.json:
        args.json.write_text(json.dumps(matrix, indent=1))
    return 1 if (uncaught or (toothless and not args.variant)) else 0


if __name__ == "__main__":
    sys.exit(main())
