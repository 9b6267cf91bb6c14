"""nvbox-conformance: run the nvbox conformance corpus against an implementation.

The implementation under test is a command (``--impl "CMD"``).  For every case
the runner appends a verb and arguments (``read``, ``check``, ``write``,
``rewrite``), runs it as a subprocess under a timeout, and judges its exit
status and JSON stdout.  Images written by the implementation are verified with
the *reference* implementation (``--reference``, default the reference
library's adapter).  conformance/README.md is the normative description of the
protocol, the case layout and every result; this module follows it.

Subcommands::

    nvbox-conformance run --impl CMD [--cases DIR] [--run GLOB]... [--skip GLOB]...
                          [--timeout S] [--expect FILE] [--json REPORT] [--reference CMD]
                          [--jobs N] [-v]
    nvbox-conformance list [--cases DIR] [--run GLOB]... [--skip GLOB]... [--long]
    nvbox-conformance validate [--cases DIR]
    nvbox-conformance coverage [--spec spec/nvbox.md] [--cases DIR] [--json] [--strict]

Case results: ``pass``, ``fail``, ``crash``, ``timeout``, ``skip``, ``xfail``
(a listed known failure that still fails), ``xpass`` (a listed known failure
that passed: the list must shrink) and ``error`` (a broken case or a broken
reference, labelled as such and never blamed on the implementation; it still
fails the run).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime as _dt
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

from conformance import PROTOCOL_VERSION, SUITE_VERSION

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
DEFAULT_CASES = HERE / "cases"
SCHEMA_DIR = HERE / "schema"
REGISTRY_PATH = HERE / "registry" / "errors.json"
DEFAULT_SPEC = REPO_ROOT / "spec" / "nvbox.md"
DEFAULT_REFERENCE = "python -m nvbox.adapter"
DEFAULT_TIMEOUT = 10.0

KINDS = ("read-valid", "read-invalid", "read-acceptable", "check", "write", "roundtrip", "crash")
VERDICTS = ("clean", "leaks", "corrupt")
KEY_ENV = "NVBOX_KEY_FILE"
PROTOCOL_ENV = "NVBOX_CONFORMANCE_PROTOCOL"
REWRITE_BLOB = "conformance/rewrite"
#: What ``rewrite`` puts: the single byte b"x".
REWRITE_BLOB_ENTRY = {"size": "1", "sha256": "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"}

EXIT_OK, EXIT_ERROR, EXIT_UNSUPPORTED = 0, 1, 3

#: Requirement ids as the spec writes them: ``[R-commit-3]``.
REQUIREMENT_RE = re.compile(r"\[(R-[a-z][a-z0-9_-]*-[0-9]+)\]")

#: Results that make the run fail.
FAILING = frozenset({"fail", "crash", "timeout", "error", "xpass"})

STDERR_KEEP = 4000  # characters of stderr kept per case in the report


# --------------------------------------------------------------------------
# Schemas, registry, cases


def _load_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f, object_pairs_hook=_no_duplicate_keys)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


class Schemas:
    """The case and logical-content validators (JSON Schema 2020-12)."""

    def __init__(self, schema_dir: Path = SCHEMA_DIR):
        try:
            import jsonschema
            from referencing import Registry, Resource
        except ImportError as exc:     # installed without the extra: say how to get it
            print(f"nvbox-conformance: {exc.name} is missing; install the runner with its dependencies: "
                  "pip install 'nvbox[conformance]'", file=sys.stderr)
            raise SystemExit(2) from exc

        case = _load_json(schema_dir / "case.schema.json")
        logical = _load_json(schema_dir / "logical.schema.json")
        registry = Registry().with_resources(
            [(s["$id"], Resource.from_contents(s)) for s in (case, logical)]
        )
        cls = jsonschema.Draft202012Validator
        cls.check_schema(case)
        cls.check_schema(logical)
        self.case = cls(case, registry=registry)
        self.logical = cls(logical, registry=registry)

    @staticmethod
    def first_error(validator, instance) -> str | None:
        errors = sorted(validator.iter_errors(instance), key=lambda e: (list(e.absolute_path), e.message))
        if not errors:
            return None
        e = errors[0]
        where = "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in e.absolute_path)
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return f"at {where}: {e.message}{more}"


def load_registry(path: Path = REGISTRY_PATH) -> set[str]:
    return set(_load_json(path)["codes"])


def code_in_registry(code: str, codes: set[str]) -> bool:
    """A code or a code group (a dotted prefix of a registered code)."""
    return code in codes or any(c.startswith(code + ".") for c in codes)


def code_matches(expected: str, actual: str) -> bool:
    """Hierarchical match: expected ``pointer`` matches ``pointer.out_of_range``."""
    return actual == expected or actual.startswith(expected + ".")


@dataclasses.dataclass
class Case:
    id: str
    dir: Path
    data: dict | None = None
    load_error: str | None = None

    @property
    def kind(self) -> str:
        if self.data and isinstance(self.data.get("kind"), str):
            return self.data["kind"]
        return self.id.split("/", 1)[0]

    def path(self, name: str) -> Path:
        return self.dir / name


def discover(cases_dir: Path) -> list[Case]:
    """Every directory below ``cases_dir`` holding a case.json, sorted by id."""
    found = []
    for manifest in sorted(cases_dir.rglob("case.json")):
        case_dir = manifest.parent
        case = Case(id=case_dir.relative_to(cases_dir).as_posix(), dir=case_dir)
        try:
            case.data = _load_json(manifest)
            if not isinstance(case.data, dict):
                raise ValueError("case.json is not a JSON object")
        except (OSError, ValueError) as exc:
            case.data, case.load_error = None, f"case.json: {exc}"
        found.append(case)
    found.sort(key=lambda c: c.id)
    return found


def _image_entries(case: Case) -> list[str]:
    d = case.data or {}
    if case.kind == "crash":
        return [entry["image"] for entry in d.get("images", [])]
    if case.kind == "write":
        return []
    return [d.get("image", "image.nvbox")]


def validate_case(case: Case, schemas: Schemas, codes: set[str]) -> list[str]:
    """Problems that make ``case`` broken (empty when it is well formed)."""
    if case.load_error:
        return [case.load_error]
    d = case.data
    problems = []
    err = Schemas.first_error(schemas.case, d)
    if err:
        return [f"case.json violates case.schema.json {err}"]
    if d["id"] != case.id:
        problems.append(f"id {d['id']!r} does not match the directory {case.id!r}")
    if d["kind"] != case.id.split("/", 1)[0]:
        problems.append(f"kind {d['kind']!r} does not match the directory {case.id.split('/', 1)[0]!r}")

    def need(name: str, what: str) -> Path | None:
        p = case.path(name)
        if not p.is_file():
            problems.append(f"missing {what} file {name}")
            return None
        return p

    def need_logical(name: str) -> None:
        p = need(name, "expected logical content")
        if p is None:
            return
        try:
            doc = _load_json(p)
        except ValueError as exc:
            problems.append(f"{name}: not JSON: {exc}")
            return
        e = Schemas.first_error(schemas.logical, doc)
        if e:
            problems.append(f"{name} violates logical.schema.json {e}")

    def need_code(code: str) -> None:
        if not code_in_registry(code, codes):
            problems.append(f"error code {code!r} is not in registry/errors.json")

    for image in _image_entries(case):
        need(image, "image")
    if "key_file" in d:
        need(d["key_file"], "key")
    kind = d["kind"]
    if kind in ("read-valid", "read-acceptable"):
        need_logical(d.get("expected", "expected.json"))
    if kind in ("read-invalid", "write") and "error" in d:
        need_code(d["error"])
    for code in d.get("accept_errors", []):
        need_code(code)
    if kind == "write":
        ops = need(d.get("ops", "ops.json"), "operation script")
        if ops is not None:
            try:
                _load_json(ops)
            except ValueError as exc:
                problems.append(f"{d.get('ops', 'ops.json')}: not JSON: {exc}")
        if "error" not in d:
            need_logical(d.get("expected", "expected.json"))
    if kind == "roundtrip":
        logical = d["expect_after_rewrite"]["logical"]
        if isinstance(logical, str):
            need_logical(logical)
            logical = _load_json(case.path(logical)) if case.path(logical).is_file() and not problems else None
        if isinstance(logical, dict) and logical.get("blobs", {}).get(REWRITE_BLOB) != REWRITE_BLOB_ENTRY:
            problems.append(f"expect_after_rewrite.logical must hold the blob {REWRITE_BLOB!r} = {REWRITE_BLOB_ENTRY}")
    if kind == "crash":
        for entry in d["images"]:
            for allowed in entry["allowed"]:
                if isinstance(allowed, str):
                    need_logical(allowed)
                else:
                    need_code(allowed["error"])
    return problems


# --------------------------------------------------------------------------
# Globs and expectations


def split_globs(values: Iterable[str] | None) -> list[str]:
    """Repeatable options that also accept comma-separated lists."""
    out = []
    for value in values or []:
        out.extend(p.strip() for p in value.split(",") if p.strip())
    return out


def glob_match(case_id: str, pattern: str) -> bool:
    """fnmatch on the whole id (``*`` also crosses ``/``); a pattern without
    wildcards also selects everything below it (``write`` selects ``write/...``)."""
    pattern = pattern.strip("/")
    return fnmatch.fnmatchcase(case_id, pattern) or case_id.startswith(pattern + "/")


def select(cases: list[Case], run: list[str], skip: list[str]) -> tuple[list[Case], set[str]]:
    """Cases matching --run (all when none given); the ids matching --skip."""
    chosen = [c for c in cases if not run or any(glob_match(c.id, g) for g in run)]
    skipped = {c.id for c in chosen if any(glob_match(c.id, g) for g in skip)}
    return chosen, skipped


@dataclasses.dataclass
class Expectation:
    pattern: str
    action: str  # "fail" or "skip"
    reason: str = ""


def load_expectations(path: Path) -> list[Expectation]:
    """Parse an expectations file.

    Text: one entry per line, ``CASE-ID-OR-GLOB fail`` (or ``skip``), a bare
    id meaning ``fail``; ``#`` starts a comment.  JSON: ``{"ID": "fail"}``, a
    list of ids, or ``{"known_failures": [ID | {"id", "reason"}],
    "skip": [ID | {"id", "reason"}]}``.
    """
    text = path.read_text(encoding="utf-8")
    out: list[Expectation] = []
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        doc = json.loads(text)

        def entries(items, action):
            for item in items:
                if isinstance(item, str):
                    out.append(Expectation(item, action))
                elif isinstance(item, dict) and isinstance(item.get("id"), str):
                    out.append(Expectation(item["id"], action, str(item.get("reason", ""))))
                else:
                    raise ValueError(f"{path}: bad expectation entry {item!r}")

        if isinstance(doc, list):
            entries(doc, "fail")
        elif isinstance(doc, dict) and ({"known_failures", "skip"} & doc.keys()):
            entries(doc.get("known_failures", []), "fail")
            entries(doc.get("skip", []), "skip")
        elif isinstance(doc, dict):
            for key, value in doc.items():
                action = value if isinstance(value, str) else (value or {}).get("expect", "fail")
                reason = "" if isinstance(value, str) else str((value or {}).get("reason", ""))
                out.append(Expectation(key, action, reason))
        else:
            raise ValueError(f"{path}: expectations must be a JSON object or list")
    else:
        for lineno, line in enumerate(text.splitlines(), 1):
            body, _, comment = line.partition("#")
            words = body.split()
            if not words:
                continue
            if len(words) > 2:
                raise ValueError(f"{path}:{lineno}: expected 'CASE-ID fail' or 'CASE-ID skip'")
            out.append(Expectation(words[0], words[1] if len(words) == 2 else "fail", comment.strip()))
    for e in out:
        if e.action not in ("fail", "skip"):
            raise ValueError(f"{path}: expectation for {e.pattern!r} must be 'fail' or 'skip', not {e.action!r}")
    return out


def expectation_for(case_id: str, expectations: list[Expectation]) -> Expectation | None:
    matches = [e for e in expectations if glob_match(case_id, e.pattern)]
    for e in matches:
        if e.action == "skip":
            return e
    return matches[0] if matches else None


# --------------------------------------------------------------------------
# Running one process


class CaseOutcome(Exception):
    """Ends a case early with a result other than pass."""

    def __init__(self, result: str, message: str):
        super().__init__(message)
        self.result = result
        self.message = message


@dataclasses.dataclass
class Reply:
    status: str  # "ok" (exit 0), "error" (exit 1), "unsupported" (exit 3)
    data: dict | None
    stderr: str

    @property
    def code(self) -> str:
        return self.data["error"]["code"] if self.status == "error" else ""


class Runner:
    """Drives one implementation (and the reference) through the corpus."""

    def __init__(
        self,
        impl: str,
        reference: str = DEFAULT_REFERENCE,
        timeout: float = DEFAULT_TIMEOUT,
        schemas: Schemas | None = None,
        codes: set[str] | None = None,
    ):
        self.impl = _command(impl)
        self.reference = _command(reference)
        self.timeout = timeout
        self.schemas = schemas or Schemas()
        self.codes = codes if codes is not None else load_registry()

    # -- processes --------------------------------------------------------

    def _call(self, argv: list[str], env: dict[str, str], role: str) -> Reply:
        """Run one protocol call.  Crashes, timeouts and protocol violations
        raise CaseOutcome (``crash``/``timeout`` for the implementation,
        ``error`` for the reference)."""
        verb = argv[len(self.impl if role == "implementation" else self.reference)]

        def bad(result: str, message: str, stderr: str = "") -> CaseOutcome:
            if role == "reference":
                result, message = "error", f"reference `{verb}` failed ({message}); the case or the reference is broken"
            else:
                message = f"`{verb}`: {message}"
            if stderr:
                message += f"\nstderr: {_tail(stderr, 600)}"
            return CaseOutcome(result, message)

        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            raise bad("crash", f"cannot execute {argv[0]!r}: {exc}")
        try:
            out, err = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            try:
                out, err = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                out, err = b"", b""
            raise bad("timeout", f"timed out after {self.timeout:g} s", err.decode("utf-8", "replace"))
        finally:
            if proc.poll() is None:  # pragma: no cover - defensive
                _kill_group(proc)
                proc.wait()
        stderr = err.decode("utf-8", "replace")
        rc = proc.returncode
        if rc < 0:
            try:
                name = signal.Signals(-rc).name
            except ValueError:
                name = f"signal {-rc}"
            raise bad("crash", f"killed by {name}", stderr)
        if rc == EXIT_UNSUPPORTED:
            data = _parse_object(out)
            detail = ""
            if isinstance(data, dict) and data.get("unsupported"):
                detail = f": {data['unsupported']}"
            if role == "reference":
                raise bad("error", f"reference reports unsupported{detail}", stderr)
            return Reply("unsupported", data if isinstance(data, dict) else None, stderr)
        if rc not in (EXIT_OK, EXIT_ERROR):
            raise bad("crash", f"exit status {rc} (only 0, 1 and 3 are allowed)", stderr)
        data = _parse_object(out)
        if not isinstance(data, dict):
            shown = out.decode("utf-8", "replace").strip()
            raise bad("crash", f"exit {rc} but stdout is not a JSON object: {data if isinstance(data, str) else _tail(shown, 200)!r}", stderr)
        if rc == EXIT_ERROR:
            error = data.get("error")
            if not (isinstance(error, dict) and isinstance(error.get("code"), str) and error["code"]):
                raise bad("crash", 'exit 1 but stdout lacks {"error": {"code": "..."}}', stderr)
            return Reply("error", data, stderr)
        return Reply("ok", data, stderr)

    def call_impl(self, ctx: "_Context", *args: str) -> Reply:
        reply = self._call(self.impl + list(args), ctx.env, "implementation")
        ctx.stderr.append(reply.stderr)
        if reply.status == "unsupported":
            detail = (reply.data or {}).get("unsupported") or (reply.data or {}).get("message") or ""
            raise CaseOutcome("skip", f"unsupported `{args[0]}`" + (f": {detail}" if detail else ""))
        return reply

    def call_reference(self, ctx: "_Context", *args: str) -> Reply:
        return self._call(self.reference + list(args), ctx.env, "reference")

    # -- judging ----------------------------------------------------------

    def logical_diff(self, expected: dict, got: dict, what: str = "content") -> str | None:
        """None if ``got`` is valid logical content equal to ``expected``."""
        err = Schemas.first_error(self.schemas.logical, got)
        if err:
            return f"{what} violates logical.schema.json {err}"
        exp_n, got_n = _normalise_logical(expected), _normalise_logical(got)
        if isinstance(got_n, str):
            return f"{what}: {got_n}"
        diff = _first_difference(exp_n, got_n, "")
        if diff is None:
            return None
        pointer, want, have = diff
        return f"{what} differs at {pointer or '/'}: expected {_short(want)}, got {_short(have)}"

    def run_case(self, case: Case) -> tuple[str, str, str]:
        """Run one case; returns (result, message, stderr)."""
        problems = validate_case(case, self.schemas, self.codes)
        if problems:
            return "error", "broken case: " + "; ".join(problems), ""
        d = case.data
        env = dict(os.environ)
        env.pop(KEY_ENV, None)
        env[PROTOCOL_ENV] = PROTOCOL_VERSION
        if "key_file" in d:
            env[KEY_ENV] = str(case.path(d["key_file"]).resolve())
        with tempfile.TemporaryDirectory(prefix="nvbox-conformance-") as tmp:
            ctx = _Context(case=case, tmp=Path(tmp), env=env)
            try:
                message = getattr(self, "_kind_" + d["kind"].replace("-", "_"))(ctx)
                result = "pass"
            except CaseOutcome as outcome:
                result, message = outcome.result, outcome.message
        return result, message, _tail("".join(ctx.stderr), STDERR_KEEP)

    def _expected_logical(self, case: Case, name: str) -> dict:
        return _load_json(case.path(name))

    def _read_args(self, ctx: "_Context", image: str) -> list[str]:
        args = ["read", str(ctx.copy(image))]
        if "snapshot" in ctx.case.data:
            args += ["--snapshot", ctx.case.data["snapshot"]]
        return args

    def _kind_read_valid(self, ctx: "_Context") -> str:
        d = ctx.case.data
        reply = self.call_impl(ctx, *self._read_args(ctx, d.get("image", "image.nvbox")))
        if reply.status == "error":
            raise CaseOutcome("fail", f"rejected a valid image with {reply.code!r}")
        self._compare(self._expected_logical(ctx.case, d.get("expected", "expected.json")), reply.data)
        return "content matches"

    def _kind_read_invalid(self, ctx: "_Context") -> str:
        d = ctx.case.data
        allowed = [d["error"]] + d.get("accept_errors", [])
        reply = self.call_impl(ctx, *self._read_args(ctx, d.get("image", "image.nvbox")))
        if reply.status == "ok":
            raise CaseOutcome("fail", f"accepted an invalid image; expected error {_codes(allowed)}")
        if not any(code_matches(a, reply.code) for a in allowed):
            raise CaseOutcome("fail", f"rejected with {reply.code!r}; expected {_codes(allowed)}")
        return f"rejected with {reply.code}"

    def _kind_read_acceptable(self, ctx: "_Context") -> str:
        d = ctx.case.data
        reply = self.call_impl(ctx, *self._read_args(ctx, d.get("image", "image.nvbox")))
        if reply.status == "ok":
            self._compare(
                self._expected_logical(ctx.case, d.get("expected", "expected.json")),
                reply.data,
                prefix="accepted (implementation-defined) but ",
            )
            return "accepted; content matches"
        if not any(code_matches(a, reply.code) for a in d["accept_errors"]):
            raise CaseOutcome("fail", f"rejected with {reply.code!r}; a rejection must use {_codes(d['accept_errors'])}")
        return f"rejected with {reply.code} (implementation-defined)"

    def _kind_check(self, ctx: "_Context") -> str:
        d = ctx.case.data
        verdict = self._verdict(self.call_impl(ctx, "check", str(ctx.copy(d.get("image", "image.nvbox")))))
        if verdict != d["verdict"]:
            raise CaseOutcome("fail", f"check verdict {verdict!r}; expected {d['verdict']!r}")
        return f"verdict {verdict}"

    def _kind_write(self, ctx: "_Context") -> str:
        d = ctx.case.data
        out = ctx.tmp / "out.nvbox"
        ops = ctx.case.path(d.get("ops", "ops.json")).resolve()
        reply = self.call_impl(ctx, "write", str(ops), str(out))
        if "error" in d:
            allowed = [d["error"]] + d.get("accept_errors", [])
            if reply.status == "ok":
                raise CaseOutcome("fail", f"the operation script succeeded; expected error {_codes(allowed)}")
            if not any(code_matches(a, reply.code) for a in allowed):
                raise CaseOutcome("fail", f"failed with {reply.code!r}; expected {_codes(allowed)}")
            return f"failed with {reply.code}"
        if reply.status == "error":
            raise CaseOutcome("fail", f"the operation script failed with {reply.code!r}")
        self._verify_output(ctx, out, self._expected_logical(ctx.case, d.get("expected", "expected.json")),
                            d.get("expect_check", ["clean"]))
        return "written image verified by the reference"

    def _kind_roundtrip(self, ctx: "_Context") -> str:
        d = ctx.case.data
        expect = d["expect_after_rewrite"]
        out = ctx.tmp / "out.nvbox"
        reply = self.call_impl(ctx, "rewrite", str(ctx.copy(d.get("image", "image.nvbox"))), str(out))
        if reply.status == "error":
            raise CaseOutcome("fail", f"rewrite failed with {reply.code!r}")
        logical = expect["logical"]
        if isinstance(logical, str):
            logical = self._expected_logical(ctx.case, logical)
        self._verify_output(ctx, out, logical, d.get("expect_check"))
        wanted = {k: v for k, v in expect.items() if k != "logical"}
        if wanted:
            info = self.call_reference(ctx, "inspect", str(out))
            if info.status != "ok":
                raise CaseOutcome("fail", f"the reference cannot inspect the rewritten image: {info.code!r}")
            for key, want in wanted.items():
                have = info.data.get(key)
                if key == "header_extensions":
                    ok = _extensions_key(want) == _extensions_key(have)
                else:
                    ok = _as_int(want) is not None and _as_int(want) == _as_int(have)
                if not ok:
                    raise CaseOutcome("fail", f"after rewrite {key} is {_short(have)}; expected {_short(want)}")
        return "rewrite preserved what it must"

    def _kind_crash(self, ctx: "_Context") -> str:
        for n, entry in enumerate(ctx.case.data["images"]):
            image = entry["image"]
            reply = self.call_impl(ctx, "read", str(ctx.copy(image, f"crash-{n}.nvbox")))
            if reply.status == "error":
                codes = [a["error"] for a in entry["allowed"] if isinstance(a, dict)]
                if not any(code_matches(c, reply.code) for c in codes):
                    raise CaseOutcome("fail", f"{image}: rejected with {reply.code!r}; allowed states are "
                                      f"{_allowed_summary(entry['allowed'])}")
            else:
                err = Schemas.first_error(self.schemas.logical, reply.data)
                if err:
                    raise CaseOutcome("fail", f"{image}: content violates logical.schema.json {err}")
                diffs = []
                for allowed in entry["allowed"]:
                    if isinstance(allowed, str):
                        diff = self.logical_diff(self._expected_logical(ctx.case, allowed), reply.data)
                        if diff is None:
                            break
                        diffs.append(f"{allowed}: {diff}")
                else:
                    raise CaseOutcome("fail", f"{image}: content is none of the allowed states ("
                                      + ("; ".join(diffs) or "only errors are allowed") + ")")
            if "check" in entry:
                verdict = self._verdict(self.call_impl(ctx, "check", str(ctx.copy(image, f"crash-{n}-check.nvbox"))))
                if verdict not in entry["check"]:
                    raise CaseOutcome("fail", f"{image}: check verdict {verdict!r}; allowed {entry['check']}")
        return f"{len(ctx.case.data['images'])} crash image(s) recovered to allowed states"

    # -- helpers ----------------------------------------------------------

    def _compare(self, expected: dict, got: dict, prefix: str = "") -> None:
        diff = self.logical_diff(expected, got)
        if diff:
            raise CaseOutcome("fail", prefix + diff)

    def _verdict(self, reply: Reply) -> str:
        if reply.status == "error":
            raise CaseOutcome("fail", f"check must report a verdict, not fail with {reply.code!r}")
        verdict = reply.data.get("verdict")
        if verdict not in VERDICTS:
            raise CaseOutcome("fail", f"check output has no valid verdict: {_short(reply.data)}")
        return verdict

    def _verify_output(self, ctx: "_Context", out: Path, expected: dict, verdicts: list[str] | None) -> None:
        if not out.is_file():
            raise CaseOutcome("fail", f"exit 0 but no image was written at OUT ({out.name})")
        ref = self.call_reference(ctx, "read", str(out))
        if ref.status == "error":
            raise CaseOutcome("fail", f"the reference cannot read the written image: {ref.code!r}")
        diff = self.logical_diff(expected, ref.data, what="content of the written image")
        if diff:
            if diff.startswith("content of the written image violates"):
                raise CaseOutcome("error", "reference `read` output " + diff)
            raise CaseOutcome("fail", diff)
        if verdicts:
            check = self.call_reference(ctx, "check", str(out))
            if check.status == "error":
                raise CaseOutcome("fail", f"the reference cannot check the written image: {check.code!r}")
            verdict = check.data.get("verdict")
            if verdict not in verdicts:
                raise CaseOutcome("fail", f"the reference check of the written image says {verdict!r}; expected {verdicts}")


@dataclasses.dataclass
class _Context:
    case: Case
    tmp: Path
    env: dict[str, str]
    stderr: list[str] = dataclasses.field(default_factory=list)

    def copy(self, name: str, as_name: str | None = None) -> Path:
        """A private copy of a case file, so no implementation can alter the corpus."""
        dst = self.tmp / (as_name or Path(name).name)
        shutil.copyfile(self.case.path(name), dst)
        return dst


def _command(cmd: str) -> list[str]:
    argv = shlex.split(cmd)
    if not argv:
        raise ValueError("empty command")
    if argv[0] == "python":  # the documented default: this interpreter
        argv[0] = sys.executable
    return argv


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except ProcessLookupError:
            pass


def _parse_object(raw: bytes) -> Any:
    """The JSON document on stdout, or an explanatory string when it is not JSON."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "stdout is not UTF-8"
    if not text.strip():
        return "stdout is empty"
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant)
    except ValueError as exc:
        return f"invalid JSON: {exc}"


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _normalise_logical(doc: dict) -> dict | str:
    snapshots = {}
    for snap in doc.get("snapshots", []):
        name = snap["name"]
        if name in snapshots:
            return f"snapshot {name!r} is listed twice"
        snapshots[name] = {"blobs": snap["blobs"], "metadata_hex": snap.get("metadata_hex", "").lower()}
    return {"format": doc.get("format"), "blobs": doc.get("blobs"), "snapshots": snapshots}


def _first_difference(want: Any, have: Any, pointer: str) -> tuple[str, Any, Any] | None:
    if isinstance(want, dict) and isinstance(have, dict):
        for key in sorted(set(want) | set(have)):
            sub = pointer + "/" + str(key).replace("~", "~0").replace("/", "~1")
            if key not in have:
                return sub, want[key], "(missing)"
            if key not in want:
                return sub, "(absent)", have[key]
            diff = _first_difference(want[key], have[key], sub)
            if diff:
                return diff
        return None
    if isinstance(want, list) and isinstance(have, list):
        for i, (w, h) in enumerate(zip(want, have)):
            diff = _first_difference(w, h, f"{pointer}/{i}")
            if diff:
                return diff
        if len(want) != len(have):
            return f"{pointer}/length", len(want), len(have)
        return None
    if type(want) is not type(have) or want != have:
        return pointer, want, have
    return None


def _extensions_key(exts: Any) -> list | None:
    if not isinstance(exts, list):
        return None
    key = []
    for e in exts:
        if not isinstance(e, dict):
            return None
        key.append((_as_int(e.get("type")), bool(e.get("required")), str(e.get("data_hex", "")).lower()))
    return sorted(key, key=repr)


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value, 0)
        except ValueError:
            return None
    return None


def _codes(codes: list[str]) -> str:
    return " or ".join(repr(c) for c in codes)


def _allowed_summary(allowed: list) -> str:
    return ", ".join(a if isinstance(a, str) else f"error {a['error']}" for a in allowed)


def _short(value: Any, limit: int = 160) -> str:
    if isinstance(value, str) and value in ("(missing)", "(absent)"):
        text = value
    else:
        text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tail(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


# --------------------------------------------------------------------------
# The run command


@dataclasses.dataclass
class CaseResult:
    id: str
    kind: str
    result: str
    duration: float
    message: str
    stderr: str = ""
    expected_failure: bool = False

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def run_suite(
    runner: Runner,
    cases: list[Case],
    skipped: set[str],
    expectations: list[Expectation],
    jobs: int,
    progress=None,
) -> list[CaseResult]:
    def one(case: Case) -> CaseResult:
        exp = expectation_for(case.id, expectations)
        if case.id in skipped:
            return CaseResult(case.id, case.kind, "skip", 0.0, "skipped by --skip")
        if exp is not None and exp.action == "skip":
            return CaseResult(case.id, case.kind, "skip", 0.0, "skipped by the expectations file"
                              + (f": {exp.reason}" if exp.reason else ""))
        start = time.monotonic()
        try:
            result, message, stderr = runner.run_case(case)
        except Exception as exc:  # a bug in the runner or an unreadable case file
            result, message, stderr = "error", f"runner error: {type(exc).__name__}: {exc}", ""
        duration = time.monotonic() - start
        res = CaseResult(case.id, case.kind, result, round(duration, 4), message, stderr)
        if exp is not None:
            res.expected_failure = True
            if result == "pass":
                res.result = "xpass"
                res.message = ("unexpected pass: listed as a known failure but passes; "
                               "remove it from the expectations file")
            elif result in ("fail", "crash", "timeout"):
                res.message = f"expected failure ({result}): {message}"
                res.result = "xfail"
        if progress:
            progress(res)
        return res

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = list(pool.map(one, cases))
    return results


def summarise(results: list[CaseResult]) -> dict:
    counts = {r: 0 for r in ("pass", "fail", "crash", "timeout", "error", "skip", "xfail", "xpass")}
    for r in results:
        counts[r.result] = counts.get(r.result, 0) + 1
    return {
        "passed": counts["pass"],
        "failed": sum(counts[r] for r in FAILING),
        "skipped": counts["skip"],
        "expected_failures": counts["xfail"],
        "total": len(results),
        "by_result": counts,
    }


def summary_line(summary: dict) -> str:
    line = f"{summary['passed']} passed, {summary['failed']} failed, {summary['skipped']} skipped"
    if summary["expected_failures"]:
        n = summary["expected_failures"]
        line += f", {n} expected failure" + ("s" if n != 1 else "")
    return line


def _cmd_run(args: argparse.Namespace) -> int:
    cases_dir = Path(args.cases)
    if not cases_dir.is_dir():
        print(f"nvbox-conformance: no cases directory {cases_dir}", file=sys.stderr)
        return 2
    all_cases = discover(cases_dir)
    chosen, skipped = select(all_cases, split_globs(args.run), split_globs(args.skip))
    if not chosen:
        print("nvbox-conformance: no case matches the selection", file=sys.stderr)
        return 2
    expectations: list[Expectation] = []
    if args.expect:
        try:
            expectations = load_expectations(Path(args.expect))
        except (OSError, ValueError) as exc:
            print(f"nvbox-conformance: cannot read expectations: {exc}", file=sys.stderr)
            return 2
        for e in expectations:
            if not any(glob_match(c.id, e.pattern) for c in all_cases):
                print(f"warning: expectation {e.pattern!r} matches no case", file=sys.stderr)
    try:
        runner = Runner(args.impl, args.reference, args.timeout, codes=load_registry(Path(args.registry)))
    except (OSError, ValueError) as exc:
        print(f"nvbox-conformance: {exc}", file=sys.stderr)
        return 2

    def progress(res: CaseResult) -> None:
        if args.verbose:
            print(f"{res.result.upper():8} {res.id} ({res.duration:.2f} s)", flush=True)

    started = _dt.datetime.now(_dt.timezone.utc)
    t0 = time.monotonic()
    results = run_suite(runner, chosen, skipped, expectations, args.jobs, progress)
    elapsed = time.monotonic() - t0
    summary = summarise(results)

    for res in results:
        if res.result in FAILING or (args.verbose and res.result in ("skip", "xfail")):
            label = {"error": "ERROR (broken case or reference)", "xpass": "UNEXPECTED PASS"}.get(res.result, res.result.upper())
            print(f"{label}: {res.id}\n    " + res.message.replace("\n", "\n    "))
    if args.json:
        report = {
            "suite_version": SUITE_VERSION,
            "protocol_version": PROTOCOL_VERSION,
            "implementation": args.impl,
            "reference": args.reference,
            "cases_dir": str(cases_dir.resolve()),
            "expectations": str(Path(args.expect).resolve()) if args.expect else None,
            "selection": {"run": split_globs(args.run), "skip": split_globs(args.skip)},
            "timeout": args.timeout,
            "jobs": args.jobs,
            "started_at": started.isoformat(timespec="seconds"),
            "duration": round(elapsed, 3),
            "summary": summary,
            "cases": [r.to_json() for r in results],
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(summary_line(summary) + f" ({elapsed:.1f} s)" * bool(args.verbose))
    return 1 if summary["failed"] else 0


# --------------------------------------------------------------------------
# list, validate, coverage


def _cmd_list(args: argparse.Namespace) -> int:
    cases_dir = Path(args.cases)
    if not cases_dir.is_dir():
        print(f"nvbox-conformance: no cases directory {cases_dir}", file=sys.stderr)
        return 2
    chosen, skipped = select(discover(cases_dir), split_globs(args.run), split_globs(args.skip))
    for case in chosen:
        if case.id in skipped:
            continue
        if args.long:
            desc = (case.data or {}).get("description", case.load_error or "")
            print(f"{case.id}\t{case.kind}\t{desc}")
        else:
            print(case.id)
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    cases_dir = Path(args.cases)
    if not cases_dir.is_dir():
        print(f"nvbox-conformance: no cases directory {cases_dir}", file=sys.stderr)
        return 2
    schemas, codes = Schemas(), load_registry(Path(args.registry))
    cases = discover(cases_dir)
    bad = 0
    for case in cases:
        problems = validate_case(case, schemas, codes)
        if problems:
            bad += 1
            print(f"{case.id}:\n" + "".join(f"    {p}\n" for p in problems), end="")
    # case.json files must sit exactly three levels below cases/ (<kind>/<area>/<name>).
    for case in cases:
        if case.id.count("/") != 2:
            bad += 1
            print(f"{case.id}: a case directory must be <kind>/<area>/<name>")
    print(f"{len(cases) - bad} of {len(cases)} cases valid")
    return 1 if bad else 0


def spec_requirements(text: str) -> list[str]:
    """Requirement ids ``[R-xxx-N]`` in spec text, in order of first appearance."""
    seen: dict[str, None] = {}
    for m in REQUIREMENT_RE.finditer(text):
        seen.setdefault(m.group(1), None)
    return list(seen)


def _cmd_coverage(args: argparse.Namespace) -> int:
    spec_path = Path(args.spec)
    try:
        required = spec_requirements(spec_path.read_text(encoding="utf-8"))
    except OSError as exc:
        print(f"nvbox-conformance: cannot read the spec: {exc}", file=sys.stderr)
        return 2
    cases_dir = Path(args.cases)
    cases = discover(cases_dir) if cases_dir.is_dir() else []
    cited: dict[str, list[str]] = {}
    for case in cases:
        spec = (case.data or {}).get("spec", [])
        for rid in spec if isinstance(spec, list) else []:
            cited.setdefault(str(rid), []).append(case.id)
    uncovered = [r for r in required if r not in cited]
    unknown = sorted(r for r in cited if r not in set(required))
    if args.json:
        print(json.dumps({
            "spec": str(spec_path),
            "requirements": len(required),
            "covered": len(required) - len(uncovered),
            "uncovered": uncovered,
            "unknown": {r: cited[r] for r in unknown},
            "cases_per_requirement": {r: len(cited.get(r, [])) for r in required},
        }, indent=2))
    else:
        print(f"{len(required)} requirements in {spec_path}, {len(required) - len(uncovered)} cited by "
              f"{len(cases)} cases, {len(uncovered)} uncited")
        for r in uncovered:
            print(f"uncited: {r}")
        for r in unknown:
            print(f"unknown: {r} (cited by {', '.join(cited[r][:3])}{', ...' if len(cited[r]) > 3 else ''}) "
                  "is not in the spec")
    return 1 if args.strict and (uncovered or unknown) else 0


# --------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nvbox-conformance",
        description=f"nvbox conformance runner (suite {SUITE_VERSION}, protocol {PROTOCOL_VERSION}); "
        "see conformance/README.md",
    )
    parser.add_argument("--version", action="version",
                        version=f"nvbox-conformance suite {SUITE_VERSION} protocol {PROTOCOL_VERSION}")
    sub = parser.add_subparsers(dest="command", required=True)

    def cases_opt(p):
        p.add_argument("--cases", default=str(DEFAULT_CASES), metavar="DIR",
                       help="case tree (default: the corpus next to this package)")

    def registry_opt(p):
        p.add_argument("--registry", default=str(REGISTRY_PATH), metavar="FILE", help=argparse.SUPPRESS)

    def select_opts(p):
        p.add_argument("--run", action="append", metavar="GLOB",
                       help="run only case ids matching GLOB (repeatable, comma lists; '*' crosses '/')")
        p.add_argument("--skip", action="append", metavar="GLOB", help="skip case ids matching GLOB (repeatable)")

    run = sub.add_parser("run", help="run the corpus against an implementation")
    run.add_argument("--impl", required=True, metavar="CMD", help="implementation command (shell-style words)")
    cases_opt(run)
    select_opts(run)
    run.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                     help="limit for each process the runner starts (default: %(default)g)")
    run.add_argument("--expect", metavar="FILE", help="expectations file: known failures (and skips)")
    run.add_argument("--json", metavar="REPORT.json", help="write a JSON report")
    run.add_argument("--reference", default=DEFAULT_REFERENCE, metavar="CMD",
                     help="reference implementation used to verify written images (default: %(default)s, "
                     "'python' meaning the runner's own interpreter)")
    run.add_argument("--jobs", "-j", type=int, default=os.cpu_count() or 1, metavar="N",
                     help="cases run in parallel (default: number of CPUs)")
    run.add_argument("--verbose", "-v", action="store_true", help="print every case's result")
    registry_opt(run)
    run.set_defaults(func=_cmd_run)

    lst = sub.add_parser("list", help="print the selected case ids")
    cases_opt(lst)
    select_opts(lst)
    lst.add_argument("--long", action="store_true", help="also print kind and description")
    lst.set_defaults(func=_cmd_list)

    val = sub.add_parser("validate", help="check every case.json against the schema and its files")
    cases_opt(val)
    registry_opt(val)
    val.set_defaults(func=_cmd_validate)

    cov = sub.add_parser("coverage", help="requirement ids of the spec that no case cites")
    cov.add_argument("--spec", default=str(DEFAULT_SPEC), metavar="FILE", help="spec markdown (default: spec/nvbox.md)")
    cases_opt(cov)
    cov.add_argument("--json", action="store_true", help="print a JSON report")
    cov.add_argument("--strict", action="store_true", help="exit 1 if a requirement is uncited or a case cites an unknown id")
    cov.set_defaults(func=_cmd_coverage)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
