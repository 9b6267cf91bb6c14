"""nvbox conformance suite: the case corpus and the runner that drives any
implementation through the process protocol described in conformance/README.md.

``SUITE_VERSION`` versions the corpus content (semver: patch fixes an
expectation, minor adds cases, major changes the case or logical schema or
removes cases).  ``PROTOCOL_VERSION`` changes only when the runner <->
implementation process protocol changes.
"""

SUITE_VERSION = "1.0.0"
PROTOCOL_VERSION = "1"

__all__ = ["SUITE_VERSION", "PROTOCOL_VERSION"]
