"""Fixtures for the Kaitai descriptor tests.

`ksy` compiles the descriptors once per session (``make -C ksy build``, which runs
``npm ci`` when ksy/node_modules is missing) and imports the generated Python. A
missing node or npm is a failure, not a skip: CI installs them.
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

KSY_DIR = Path(__file__).resolve().parents[1]
REPO = KSY_DIR.parent
BUILD = KSY_DIR / "build" / "python"
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def ksy():
    """The generated `nvbox` module (with `nvbox_der` importable beside it)."""
    proc = subprocess.run(["make", "-s", "-C", str(KSY_DIR), "build", f"PY={sys.executable}"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"compiling the descriptors failed (rc {proc.returncode}):\n"
                    f"{proc.stdout}\n{proc.stderr}")
    for name in ("nvbox.py", "nvbox_der.py"):
        if not (BUILD / name).is_file():
            pytest.fail(f"compiler output missing: {BUILD / name}")
    # The generated module is called `nvbox`, like the reference package: load it under
    # that name from build/python without shadowing the reference for other tests.
    saved = {k: sys.modules.pop(k) for k in ("nvbox", "nvbox_der") if k in sys.modules}
    sys.path.insert(0, str(BUILD))
    try:
        mod = importlib.import_module("nvbox")
        importlib.import_module("nvbox_der")
    finally:
        sys.path.remove(str(BUILD))
        sys.modules.pop("nvbox", None)
        sys.modules.pop("nvbox_der", None)
        sys.modules.update(saved)
    assert hasattr(mod, "Nvbox"), mod.__file__
    return mod


@pytest.fixture
def parse(ksy):
    """parse(path_or_bytes) -> generated Nvbox object."""
    from kaitaistruct import KaitaiStream
    import io

    def _parse(src):
        if isinstance(src, (bytes, bytearray)):
            return ksy.Nvbox(KaitaiStream(io.BytesIO(bytes(src))))
        return ksy.Nvbox(KaitaiStream(open(src, "rb")))
    return _parse
