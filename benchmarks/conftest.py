"""pytest configuration of the benchmark suites (test_bench_*.py).

NVBOX_BENCH=quick (default) or full selects the sizes; see benchlib.py.  The Makefile's
`make test` runs `make bench-quick` when this file exists.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)


def pytest_report_header(config):
    import benchlib
    return [f"nvbox benchmarks: NVBOX_BENCH={benchlib.MODE} strict={benchlib.STRICT} "
            f"dir={benchlib.bench_root()}"]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    import benchlib
    if not benchlib._TARGETS:
        return
    tr = terminalreporter
    tr.section("nvbox targets")
    for t in benchlib._TARGETS:
        v = t["value"]
        v = f"{v:.4g}" if isinstance(v, float) else str(v)
        lim = t["limit"]
        lim = f"{lim:.4g}" if isinstance(lim, float) else str(lim)
        tr.write_line(f"{'PASS' if t['pass'] else 'MISS'}  {t['name']}: {v} {t['unit']} "
                      f"(target {t['op']} {lim})".rstrip())
