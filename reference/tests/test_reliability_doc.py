"""docs/RELIABILITY.md is current: made from the files that define what it
measures as they are now (docs/stamp.py says what "stale" means)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "docs"))

import reliability_report  # noqa: E402
import stamp  # noqa: E402

DOC = ROOT / "docs" / "RELIABILITY.md"


def test_reliability_report_is_current():
    why = stamp.staleness(DOC.read_text(), reliability_report.INPUTS)
    assert why is None, f"docs/RELIABILITY.md is stale: {why}.  Regenerate it: make reliability-report"


def test_a_changed_input_makes_a_document_stale():
    """The check has teeth: the stamp of the current inputs passes, the same stamp
    with another digest or another input list does not."""
    current = stamp.stamp(reliability_report.INPUTS)
    assert stamp.staleness(current, reliability_report.INPUTS) is None
    digest = stamp.read(current)["digest"]
    other = current.replace(digest, ("1" if digest[0] == "0" else "0") + digest[1:])
    assert "inputs changed since it was made" in stamp.staleness(other, reliability_report.INPUTS)
    assert "the generator now reads" in stamp.staleness(current, reliability_report.INPUTS[1:])
    assert stamp.staleness("# no stamp\n", reliability_report.INPUTS) == "it has no stamp line"


def test_only_code_counts_in_a_python_input(tmp_path):
    """Docstrings, comments and layout do not make a document stale; code does."""
    versions = {
        "a.py": '"""One docstring."""\n\ndef f(x):\n    """Doubles."""\n    return 2 * x  # twice\n',
        "b.py": '"""Another docstring, longer."""\n\n\ndef f(x):\n    return 2 * x\n',
        "c.py": '"""One docstring."""\n\ndef f(x):\n    """Doubles."""\n    return 3 * x  # twice\n',
    }
    for name, text in versions.items():
        (tmp_path / name).write_text(text)
    code = {name: stamp.code_of(tmp_path / name) for name in versions}
    assert code["a.py"] == code["b.py"] != code["c.py"]
