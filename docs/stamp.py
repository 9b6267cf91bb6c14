"""Provenance of generated documents: the commit they were made from, and a
digest of the files that define what they report.

A generated document (docs/RELIABILITY.md, the results in benchmarks/README.md)
carries one stamp line::

    <!-- stamp: commit 1a2b3c4d5e6f; inputs sha256:...; over: a.py b.py dir/ -->

The document is *stale* when the files it lists no longer hash to the recorded
digest: the code that decides what is measured and how (the generator, the
tests or benchmarks it runs, their helpers) changed since it was made.  A
Python file counts by its syntax tree without docstrings, so a comment, a
docstring or a reformatted line leaves the document current; any other file
counts by its bytes.  A change elsewhere, in the library say, does not make it
stale: the document states the commit its numbers come from, and ``make test``
runs the same checks at every commit.  The digest is of file contents, so it
needs no git history (a shallow clone works) and does not change when a commit
is rebased.
"""

from __future__ import annotations

import ast
import hashlib
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_STAMP = re.compile(r"<!-- stamp: commit (?P<commit>\S+); inputs sha256:(?P<digest>[0-9a-f]{64}); "
                    r"over: (?P<inputs>[^>]*?) -->")


def _files(inputs) -> list[Path]:
    """The files the inputs name, a directory standing for every file below it."""
    out = []
    for rel in inputs:
        path = ROOT / rel
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        elif path.exists():
            out.append(path)
    return out


def code_of(path: Path, raw: bytes | None = None) -> bytes:
    """What of a file counts: a Python file's syntax tree without docstrings (a
    file that does not parse counts by its bytes), any other file's bytes.
    ``raw``: the file's bytes, when they come from elsewhere (an older commit)."""
    raw = path.read_bytes() if raw is None else raw
    if path.suffix != ".py":
        return raw
    try:
        tree = ast.parse(raw)
    except SyntaxError:
        return raw
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            del body[0]
    return ast.dump(tree).encode()


def digest(inputs) -> str:
    """sha256 over each input file's path (relative to the repository) and code
    (``code_of``); a missing file counts by its absence."""
    h = hashlib.sha256()
    for path in _files(inputs):
        h.update(path.relative_to(ROOT).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(code_of(path)).digest())
    return h.hexdigest()


def git(*args) -> str:
    """git's output in the repository, or '' when there is no git or no repository."""
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def commit_of(inputs) -> str:
    """HEAD's short hash, with '+changes' when the inputs differ from HEAD
    (the document was made from files not yet committed)."""
    head = git("rev-parse", "--short=12", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", *inputs)
    return head + ("+changes" if dirty else "")


def stamp(inputs) -> str:
    """The stamp line for a document made now from ``inputs`` (paths relative to the repository)."""
    inputs = list(inputs)
    return f"<!-- stamp: commit {commit_of(inputs)}; inputs sha256:{digest(inputs)}; over: {' '.join(inputs)} -->"


def read(text: str) -> dict | None:
    """{'commit', 'digest', 'inputs'} of the stamp in ``text``, or None."""
    m = _STAMP.search(text)
    if m is None:
        return None
    return {"commit": m["commit"], "digest": m["digest"], "inputs": m["inputs"].split()}


def staleness(text: str, inputs) -> str | None:
    """Why a document's text is stale against the current ``inputs``, or None when it is current."""
    found = read(text)
    if found is None:
        return "it has no stamp line"
    if found["inputs"] != list(inputs):
        return f"it was made from the inputs {found['inputs']}, the generator now reads {list(inputs)}"
    if found["digest"] == digest(inputs):
        return None
    commit = found["commit"].removesuffix("+changes")
    changed = git("diff", "--name-only", commit, "--", *inputs).split() if commit != "unknown" else []
    changed = [name for name in changed if _code_changed(commit, name)]
    return (f"its inputs changed since it was made (commit {found['commit']})"
            + (f": {', '.join(changed)}" if changed else ""))


def _code_changed(commit: str, name: str) -> bool:
    """Whether the code of file ``name`` (code_of) differs between ``commit`` and now."""
    path = ROOT / name
    try:
        old = subprocess.run(["git", "show", f"{commit}:{name}"], capture_output=True, cwd=ROOT, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return True
    if old.returncode != 0 or not path.exists():
        return True
    return code_of(path, old.stdout) != code_of(path)
