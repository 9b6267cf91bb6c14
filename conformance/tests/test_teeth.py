"""The corpus has teeth: every invalid case fails at least one deliberately broken
variant of the reference (conformance/variants.py), and every variant fails at
least one case (conformance/teeth.py holds the variant -> cases mapping).
"""

from __future__ import annotations

from conformance import teeth


def test_every_invalid_case_and_every_variant_bites():
    matrix = teeth.run(jobs=2)
    uncaught, toothless = teeth.summarise(matrix)
    assert not uncaught, "invalid cases no variant fails:\n" + "\n".join(uncaught)
    assert not toothless, "variants no case fails:\n" + "\n".join(toothless)
    assert not set(teeth.UNCATCHABLE) & set(matrix)
