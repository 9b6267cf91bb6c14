"""The report at the end of a test session: the totals the reliability modules
counted (crash states, injected faults, fuzz inputs).

Each of those modules has a ``summary()`` that returns lines for what it ran in
this session (none when it did not run).  Printing them here, after every test,
keeps the report out of the test list: no print-only test, nothing that depends
on the order tests run in.
"""

import sys

REPORTING_MODULES = ("test_crash", "test_faults", "test_fuzz", "fuse_helpers")


def pytest_terminal_summary(terminalreporter):
    sections = []
    for name in REPORTING_MODULES:
        module = sys.modules.get(name)
        lines = module.summary() if module is not None else []
        if lines:
            sections.append((name.removeprefix("test_"), lines))
    if not sections:
        return
    terminalreporter.section("nvbox reliability totals")
    for area, lines in sections:
        for line in lines:
            terminalreporter.write_line(f"[{area}] {line}")
