"""The long crash exploration (``make crash-full``): at least 1,000,000 crash states.

Runs every workload of ``test_crash.full_plan()`` (every single operation,
every pair and every triple of the B3 vocabulary on the small, multi-level and
encrypted base images, exhaustive epochs up to 12 writes, 256 sampled subsets
beyond, two seeds) over a process pool, checking each crash state exactly as
the CI test does.  Prints the totals; exit status 1 on any finding.

    NVBOX_CRASH=full python reference/tests/crash_full.py [--jobs N] [--count-only] [--limit N]

``--count-only`` enumerates the plan's crash states without checking them (a
few seconds).  ``--limit`` runs the first N workloads only.  ``--json PATH``
writes the totals for reliability_report.py, with the commit they were run at.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs"))
os.environ.setdefault("NVBOX_CRASH", "full")

import stamp  # noqa: E402
import test_crash as tc  # noqa: E402


def _run(item):
    tree, seq, kw = item
    out = tc.run_workload(tree, seq, raise_first=False, **kw)
    return out.states, out.distinct, out.torn, out.findings


def _count(item):
    tree, seq, kw = item
    return tc.count_workload(tree, seq, **kw)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--count-only", action="store_true")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    plan = tc.full_plan()
    if args.limit:
        plan = plan[:args.limit]
    t0 = time.perf_counter()
    commit = stamp.git("rev-parse", "--short=12", "HEAD") or None
    with mp.get_context("fork").Pool(args.jobs) as pool:
        if args.count_only:
            total = sum(pool.imap_unordered(_count, plan, chunksize=8))
            print(f"[crash-full] plan: {len(plan)} workloads, {total} crash states "
                  f"(counted in {time.perf_counter() - t0:.1f} s)")
            return 0
        states = distinct = torn = 0
        findings = []

        def save(done):
            # Written as the run goes, so an interrupted run (the multi-level tail
            # takes hours on 2 cores) still leaves what it explored.
            if args.json:
                with open(args.json, "w") as fh:
                    json.dump({"workloads": done, "planned": len(plan), "states": states, "distinct": distinct,
                               "torn": torn, "seconds": round(time.perf_counter() - t0, 1),
                               "complete": done == len(plan), "commit": commit, "findings": findings}, fh,
                              indent=1)
        for i, (s, d, t, f) in enumerate(pool.imap_unordered(_run, plan, chunksize=1), 1):
            states, distinct, torn = states + s, distinct + d, torn + t
            findings += f
            if i % 200 == 0 or (i > len(plan) - 1000 and i % 20 == 0):
                print(f"  {i}/{len(plan)} workloads, {states} states, {len(findings)} findings, "
                      f"{time.perf_counter() - t0:.0f} s", flush=True)
                save(i)
    secs = time.perf_counter() - t0
    print(f"[crash-full] workloads {len(plan)}, crash states {states} (distinct images {distinct}, "
          f"torn {torn}), {secs:.0f} s, findings {len(findings)}")
    for f in findings[:50]:
        print("  FINDING", f)
    save(len(plan))
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
