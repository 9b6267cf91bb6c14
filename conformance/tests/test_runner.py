"""Tests of the conformance runner against a fake case tree and a fake
implementation.

The fake "image" format is a JSON file that states what a reader must see
(``logical``), which error it must raise (``error``), its check verdict and
header properties.  The fake implementation reads it honestly in mode
``good`` and misbehaves in the other modes; it also serves as the reference.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conformance import PROTOCOL_VERSION, SUITE_VERSION
from conformance import make_registry, runner

PY = sys.executable

FAKE_IMPL = r'''
import hashlib, json, os, signal, sys, time

mode, verb, *args = sys.argv[1:]

def out(obj, rc=0):
    print(json.dumps(obj))
    sys.exit(rc)

def err(code):
    if mode == "noerrorobj":
        out({"oops": code}, 1)
    out({"error": {"code": code, "message": "fake " + code}}, 1)

def blob(text):
    return {"size": str(len(text.encode())), "sha256": hashlib.sha256(text.encode()).hexdigest()}

if mode == "crash":
    sys.exit(2)
if mode == "segv":
    os.kill(os.getpid(), signal.SIGSEGV)
if mode == "hang":
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "hang.pid"), "w") as f:
        f.write(str(os.getpid()))
    time.sleep(60)
if mode == "badjson":
    print("{not json")
    sys.exit(0)
if mode == "unsupported" and verb in ("write", "rewrite"):
    out({"unsupported": verb}, 3)

def load(path):
    with open(path) as f:
        img = json.load(f)
    if img.get("key") is not None:
        key_file = os.environ.get("NVBOX_KEY_FILE")
        if mode == "nokey" or not key_file:
            err("key.missing")
        with open(key_file) as f:
            if f.read().strip() != img["key"]:
                err("key.invalid")
    return img

EMPTY = {"format": "nvbox", "blobs": {}, "snapshots": []}

if verb == "read":
    img = load(args[0])
    if "error" in img and mode != "lenient":
        err("header.magic" if mode == "wrongcode" else img["error"])
    if "acceptable_error" in img and mode in ("strict", "wrongcode"):
        err("header.magic" if mode == "wrongcode" else img["acceptable_error"])
    logical = img.get("logical", EMPTY)
    if mode == "crashmix" and "mixed" in img:
        logical = img["mixed"]
    if mode == "numbers":
        for b in logical["blobs"].values():
            b["size"] = int(b["size"])
    if "--snapshot" in args:
        name = args[args.index("--snapshot") + 1]
        for snap in logical["snapshots"]:
            if snap["name"] == name:
                out({"format": "nvbox", "blobs": snap["blobs"], "snapshots": []})
        err("snapshot.not_found")
    out(logical)

if verb == "check":
    img = load(args[0])
    out({"verdict": "clean" if mode == "wrongverdict" else img.get("verdict", "clean")})

if verb == "write":
    with open(args[0]) as f:
        ops = json.load(f)
    if "fail" in ops:
        err(ops["fail"])
    blobs = {name: blob(text) for name, text in ops["put"].items()}
    if mode == "badwrite":
        blobs.pop(sorted(blobs)[0])
    with open(args[1], "w") as f:
        json.dump({"logical": {"format": "nvbox", "blobs": blobs, "snapshots": []}}, f)
    out({})

if verb == "rewrite":
    img = load(args[0])
    img["logical"]["blobs"]["conformance/rewrite"] = blob("x")
    if mode == "dropext":
        img["header_extensions"] = []
    with open(args[1], "w") as f:
        json.dump(img, f)
    out({})

if verb == "inspect":
    img = load(args[0])
    out({"compatible_features": img.get("compatible_features", "0x0"), "autoclear_features": "0x0",
         "incompatible_features": "0x0", "header_extensions": img.get("header_extensions", []),
         "generation": "7"})

err("usage.argument")
'''


def blob(text: str) -> dict:
    data = text.encode()
    return {"size": str(len(data)), "sha256": hashlib.sha256(data).hexdigest()}


def logical(blobs: dict[str, str], snapshots: dict[str, dict[str, str]] | None = None) -> dict:
    return {
        "format": "nvbox",
        "blobs": {k: blob(v) for k, v in blobs.items()},
        "snapshots": [{"name": n, "blobs": {k: blob(v) for k, v in b.items()}} for n, b in (snapshots or {}).items()],
    }


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))


def make_case(root: Path, case_id: str, manifest: dict, files: dict[str, object]) -> Path:
    d = root / case_id
    d.mkdir(parents=True)
    write_json(d / "case.json", {"id": case_id, "kind": case_id.split("/")[0],
                                 "description": f"fake case {case_id}", "spec": ["R-fake-1"], **manifest})
    for name, content in files.items():
        if isinstance(content, str):
            (d / name).write_text(content)
        else:
            write_json(d / name, content)
    return d


CURRENT = logical({"tpm/state": "tpm bytes", "uefi/vars": "vars"}, {"base": {"tpm/state": "old tpm"}})
BEFORE = logical({"a": "1"})
AFTER = logical({"a": "1", "b": "2"})
REWRITTEN = logical({"a": "1", "conformance/rewrite": "x"})

ALL_IDS = [
    "check/refcount/k_leaked-cluster",
    "crash/commit/c_torn-slot",
    "read-acceptable/header/i_unknown-compat",
    "read-invalid/pointer/n_out-of-range",
    "read-valid/blob/y_two-blobs",
    "read-valid/crypto/y_encrypted",
    "read-valid/snapshot/y_snapshot-view",
    "roundtrip/header/r_unknown-extension",
    "write/blob/w_put-two",
    "write/snapshot/w_duplicate-name",
]


def build_tree(root: Path) -> Path:
    make_case(root, "read-valid/blob/y_two-blobs", {},
              {"image.nvbox": {"logical": CURRENT}, "expected.json": CURRENT})
    make_case(root, "read-valid/snapshot/y_snapshot-view", {"snapshot": "base"},
              {"image.nvbox": {"logical": CURRENT}, "expected.json": logical({"tpm/state": "old tpm"})})
    make_case(root, "read-valid/crypto/y_encrypted", {"key_file": "key.txt", "flags": ["Encrypted"]},
              {"image.nvbox": {"logical": BEFORE, "key": "sekrit"}, "expected.json": BEFORE, "key.txt": "sekrit\n"})
    make_case(root, "read-invalid/pointer/n_out-of-range", {"error": "pointer"},
              {"image.nvbox": {"error": "pointer.out_of_range"}})
    make_case(root, "read-acceptable/header/i_unknown-compat",
              {"flags": ["UnknownCompatBit"], "accept_errors": ["header.field"]},
              {"image.nvbox": {"logical": BEFORE, "acceptable_error": "header.field"}, "expected.json": BEFORE})
    make_case(root, "check/refcount/k_leaked-cluster", {"verdict": "leaks"},
              {"image.nvbox": {"logical": BEFORE, "verdict": "leaks"}})
    make_case(root, "write/blob/w_put-two", {},
              {"ops.json": {"put": {"a": "1", "b": "2"}}, "expected.json": AFTER})
    make_case(root, "write/snapshot/w_duplicate-name", {"error": "snapshot.exists"},
              {"ops.json": {"fail": "snapshot.exists"}})
    make_case(root, "roundtrip/header/r_unknown-extension",
              {"expect_after_rewrite": {
                  "logical": REWRITTEN, "compatible_features": "0x8000", "autoclear_features": "0x0",
                  "header_extensions": [{"type": "0x7e57", "required": False, "data_hex": "c0ffee"}]}},
              {"image.nvbox": {"logical": BEFORE, "compatible_features": "0x8000",
                               "header_extensions": [{"type": 32343, "required": False, "data_hex": "C0FFEE"}]}})
    make_case(root, "crash/commit/c_torn-slot",
              {"images": [
                  {"image": "crash-0.nvbox", "allowed": ["before.json", "after.json"], "check": ["clean", "leaks"]},
                  {"image": "crash-1.nvbox", "allowed": ["before.json", "after.json"]},
                  {"image": "crash-2.nvbox", "allowed": ["before.json", {"error": "header"}]},
              ]},
              {"crash-0.nvbox": {"logical": BEFORE, "verdict": "leaks"},
               "crash-1.nvbox": {"logical": AFTER, "mixed": logical({"b": "2"})},
               "crash-2.nvbox": {"error": "header.checksum"},
               "before.json": BEFORE, "after.json": AFTER})
    return root


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("conformance")
    fake = base / "fake_impl.py"
    fake.write_text(FAKE_IMPL)
    cases = build_tree(base / "cases")
    return base, fake, cases


def impl(fake: Path, mode: str) -> str:
    return f"{PY} {fake} {mode}"


def run(env, mode="good", *extra, reference_mode="good"):
    base, fake, cases = env
    report = base / f"report-{mode}-{time.monotonic_ns()}.json"
    rc = runner.main(["run", "--impl", impl(fake, mode), "--reference", impl(fake, reference_mode),
                      "--cases", str(cases), "--json", str(report), *extra])
    data = json.loads(report.read_text()) if report.exists() else None
    return rc, data


def results(report) -> dict[str, str]:
    return {c["id"]: c["result"] for c in report["cases"]}


# -- the good implementation ------------------------------------------------


def test_good_implementation_passes_everything(env, capsys):
    rc, report = run(env, "good")
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.strip().splitlines()[-1] == "10 passed, 0 failed, 0 skipped"
    assert set(results(report).values()) == {"pass"}
    assert [c["id"] for c in report["cases"]] == ALL_IDS
    assert report["suite_version"] == SUITE_VERSION and report["protocol_version"] == PROTOCOL_VERSION
    assert report["summary"]["passed"] == 10 and report["summary"]["failed"] == 0
    for case in report["cases"]:
        assert set(case) >= {"id", "kind", "result", "duration", "message"}
        assert case["duration"] >= 0 and case["kind"] == case["id"].split("/")[0]


def test_report_messages_explain_outcomes(env):
    _, report = run(env, "strict")
    by_id = {c["id"]: c for c in report["cases"]}
    acc = by_id["read-acceptable/header/i_unknown-compat"]
    assert acc["result"] == "pass" and "rejected with header.field" in acc["message"]
    assert by_id["read-invalid/pointer/n_out-of-range"]["message"] == "rejected with pointer.out_of_range"


def test_parallel_and_serial_agree(env):
    _, serial = run(env, "wrongcode", "--jobs", "1")
    _, parallel = run(env, "wrongcode", "--jobs", "8")
    assert results(serial) == results(parallel)


# -- crashes always fail ----------------------------------------------------


@pytest.mark.parametrize("mode, needle", [
    ("crash", "exit status 2"),
    ("segv", "SIGSEGV"),
    ("badjson", "not a JSON object"),
    ("noerrorobj", '{"error": {"code"'),
])
def test_crashes_fail_every_case_they_touch(env, capsys, mode, needle):
    rc, report = run(env, mode)
    assert rc == 1
    res = results(report)
    if mode == "noerrorobj":  # only cases where the implementation reports an error crash
        crashed = {"read-invalid/pointer/n_out-of-range", "write/snapshot/w_duplicate-name", "crash/commit/c_torn-slot"}
        assert {i for i, r in res.items() if r == "crash"} == crashed
        assert all(r == "pass" for i, r in res.items() if i not in crashed)
    else:
        # A crash is never a rejection: the invalid-image case crashes too.
        assert set(res.values()) == {"crash"}
    msg = {c["id"]: c["message"] for c in report["cases"]}["read-invalid/pointer/n_out-of-range"]
    assert needle in msg
    assert capsys.readouterr().out.strip().splitlines()[-1].endswith("0 skipped")


def test_timeout_kills_the_implementation(env):
    """The hanging implementation is reported as a timeout and is gone afterwards
    (killed, not waited for: unkilled it would sleep 60 s and then exit without
    an answer, which is no timeout)."""
    pid_file = env[1].parent / "hang.pid"
    rc, report = run(env, "hang", "--run", "read-valid/blob/*", "--timeout", "0.5")
    assert rc == 1
    assert results(report) == {"read-valid/blob/y_two-blobs": "timeout"}
    assert "timed out after 0.5 s" in report["cases"][0]["message"]
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


def test_exit_status_other_than_0_1_3_is_a_crash(env, tmp_path):
    base, fake, cases = env
    script = tmp_path / "exit5.py"
    script.write_text("import sys; print('{}'); sys.exit(5)\n")
    report = tmp_path / "r.json"
    rc = runner.main(["run", "--impl", f"{PY} {script}", "--cases", str(cases), "--run", "read-valid/blob/*",
                      "--json", str(report)])
    assert rc == 1
    case = json.loads(report.read_text())["cases"][0]
    assert case["result"] == "crash" and "exit status 5" in case["message"]


def test_missing_executable_is_a_crash(env, tmp_path):
    _, _, cases = env
    report = tmp_path / "r.json"
    rc = runner.main(["run", "--impl", str(tmp_path / "no-such-impl"), "--cases", str(cases),
                      "--run", "check", "--json", str(report)])
    assert rc == 1
    assert json.loads(report.read_text())["cases"][0]["result"] == "crash"


# -- wrong answers ----------------------------------------------------------


@pytest.mark.parametrize("mode, failing, needle", [
    ("wrongcode", {"read-invalid/pointer/n_out-of-range", "read-acceptable/header/i_unknown-compat"}, "header.magic"),
    ("lenient", {"read-invalid/pointer/n_out-of-range", "crash/commit/c_torn-slot"}, "accepted an invalid image"),
    ("wrongverdict", {"check/refcount/k_leaked-cluster"}, "check verdict 'clean'; expected 'leaks'"),
    ("nokey", {"read-valid/crypto/y_encrypted"}, "key.missing"),
    ("badwrite", {"write/blob/w_put-two"}, "content of the written image differs at /blobs/a"),
    ("dropext", {"roundtrip/header/r_unknown-extension"}, "header_extensions"),
    ("crashmix", {"crash/commit/c_torn-slot"}, "crash-1.nvbox: content is none of the allowed states"),
    ("numbers", {"read-valid/blob/y_two-blobs", "read-valid/crypto/y_encrypted",
                 "read-acceptable/header/i_unknown-compat", "crash/commit/c_torn-slot"},
     "violates logical.schema.json at /blobs/tpm~1state/size: 9 is not of type 'string'"),
])
def test_wrong_answers_fail_exactly_the_right_cases(env, capsys, mode, failing, needle):
    rc, report = run(env, mode)
    assert rc == 1
    res = results(report)
    assert {i for i, r in res.items() if r != "pass"} == failing
    assert all(res[i] == "fail" for i in failing)
    messages = " | ".join(c["message"] for c in report["cases"] if c["id"] in failing)
    assert needle in messages
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == f"{10 - len(failing)} passed, {len(failing)} failed, 0 skipped"
    for i in failing:
        assert f"FAIL: {i}" in out


def test_unsupported_verbs_are_skipped(env, capsys):
    rc, report = run(env, "unsupported")
    assert rc == 0
    res = results(report)
    assert {i for i, r in res.items() if r == "skip"} == {
        "write/blob/w_put-two", "write/snapshot/w_duplicate-name", "roundtrip/header/r_unknown-extension"}
    assert capsys.readouterr().out.strip().splitlines()[-1] == "7 passed, 0 failed, 3 skipped"


def test_broken_reference_is_labelled_not_blamed(env, capsys):
    rc, report = run(env, "good", "--run", "write/blob/*", reference_mode="crash")
    assert rc == 1
    case = report["cases"][0]
    assert case["result"] == "error"
    assert "reference `read` failed" in case["message"]
    assert "ERROR (broken case or reference)" in capsys.readouterr().out


def test_outer_key_env_does_not_leak(env, monkeypatch):
    monkeypatch.setenv("NVBOX_KEY_FILE", "/nonexistent/key")
    _, report = run(env, "good")
    assert set(results(report).values()) == {"pass"}


def test_corpus_files_are_not_modified(env):
    _, fake, cases = env
    before = {p: p.read_bytes() for p in cases.rglob("*") if p.is_file()}
    run(env, "good")
    assert before == {p: p.read_bytes() for p in cases.rglob("*") if p.is_file()}


# -- selection --------------------------------------------------------------


def test_run_and_skip_globs(env, capsys):
    _, report = run(env, "good", "--run", "read-*")
    assert sorted(results(report)) == [i for i in ALL_IDS if i.startswith("read-")]
    _, report = run(env, "good", "--run", "read-valid", "--skip", "*/crypto/*,*snapshot*")
    assert results(report) == {"read-valid/blob/y_two-blobs": "pass", "read-valid/crypto/y_encrypted": "skip",
                               "read-valid/snapshot/y_snapshot-view": "skip"}
    _, report = run(env, "good", "--run", "write/*", "--run", "check/refcount/k_leaked-cluster")
    assert sorted(results(report)) == ["check/refcount/k_leaked-cluster", "write/blob/w_put-two",
                                       "write/snapshot/w_duplicate-name"]
    capsys.readouterr()
    base, fake, cases = env
    assert runner.main(["run", "--impl", impl(fake, "good"), "--cases", str(cases), "--run", "nothing*"]) == 2


def test_list(env, capsys):
    _, _, cases = env
    assert runner.main(["list", "--cases", str(cases)]) == 0
    assert capsys.readouterr().out.split() == ALL_IDS
    assert runner.main(["list", "--cases", str(cases), "--run", "*crash*", "--long"]) == 0
    assert capsys.readouterr().out == "crash/commit/c_torn-slot\tcrash\tfake case crash/commit/c_torn-slot\n"


# -- expectations -----------------------------------------------------------


def test_expected_failure_keeps_run_green(env, tmp_path, capsys):
    exp = tmp_path / "expect.txt"
    exp.write_text("# known failures of the wrongcode impl\n"
                   "read-invalid/pointer/n_out-of-range fail  # reports header.magic\n"
                   "read-acceptable/header/*  fail\n")
    rc, report = run(env, "wrongcode", "--expect", str(exp))
    assert rc == 0
    res = results(report)
    assert res["read-invalid/pointer/n_out-of-range"] == "xfail"
    assert res["read-acceptable/header/i_unknown-compat"] == "xfail"
    assert report["summary"] == {"passed": 8, "failed": 0, "skipped": 0, "expected_failures": 2, "total": 10,
                                 "by_result": {"pass": 8, "fail": 0, "crash": 0, "timeout": 0, "error": 0,
                                               "skip": 0, "xfail": 2, "xpass": 0}}
    assert capsys.readouterr().out.strip().splitlines()[-1] == "8 passed, 0 failed, 0 skipped, 2 expected failures"


def test_expected_failure_that_passes_fails_the_run(env, tmp_path, capsys):
    exp = tmp_path / "expect.json"
    exp.write_text(json.dumps({"read-invalid/pointer/n_out-of-range": "fail", "check/refcount/k_leaked-cluster": "skip"}))
    rc, report = run(env, "good", "--expect", str(exp))
    assert rc == 1
    res = results(report)
    assert res["read-invalid/pointer/n_out-of-range"] == "xpass"
    assert res["check/refcount/k_leaked-cluster"] == "skip"
    out = capsys.readouterr().out
    assert "UNEXPECTED PASS: read-invalid/pointer/n_out-of-range" in out
    assert out.strip().splitlines()[-1] == "8 passed, 1 failed, 1 skipped"


def test_structured_json_expectations_and_crash_as_expected_failure(env, tmp_path):
    exp = tmp_path / "expect.json"
    exp.write_text(json.dumps({"known_failures": [{"id": "*", "reason": "segfaults"}], "skip": ["write/*"]}))
    rc, report = run(env, "segv", "--expect", str(exp))
    assert rc == 0
    res = results(report)
    assert {i for i, r in res.items() if r == "skip"} == {"write/blob/w_put-two", "write/snapshot/w_duplicate-name"}
    assert {r for i, r in res.items() if not i.startswith("write/")} == {"xfail"}
    assert all(c["expected_failure"] for c in report["cases"] if c["result"] == "xfail")


def test_bad_expectations_file_is_a_usage_error(env, tmp_path):
    exp = tmp_path / "expect.txt"
    exp.write_text("read-valid/blob/y_two-blobs maybe\n")
    assert run(env, "good", "--expect", str(exp))[0] == 2


def test_load_expectations_forms(tmp_path):
    p = tmp_path / "e.txt"
    p.write_text("a/b/c\nd/e/f fail\n\n# x\ng/h/* skip # flaky\n")
    got = runner.load_expectations(p)
    assert [(e.pattern, e.action, e.reason) for e in got] == [
        ("a/b/c", "fail", ""), ("d/e/f", "fail", ""), ("g/h/*", "skip", "flaky")]
    p.write_text('["a/b/c"]')
    assert [(e.pattern, e.action) for e in runner.load_expectations(p)] == [("a/b/c", "fail")]


# -- broken cases, validate -------------------------------------------------


@pytest.fixture
def broken_tree(env, tmp_path):
    root = build_tree(tmp_path / "cases")
    make_case(root, "read-invalid/pointer/n_unknown-code", {"error": "pointer.bogus"}, {"image.nvbox": {"error": "x"}})
    make_case(root, "read-valid/blob/y_missing-image", {}, {"expected.json": BEFORE})
    make_case(root, "read-acceptable/header/i_no-flags", {"accept_errors": ["header"]},
              {"image.nvbox": {"logical": BEFORE}, "expected.json": BEFORE})
    d = make_case(root, "check/refcount/k_wrong-id", {"verdict": "clean"}, {"image.nvbox": {"logical": BEFORE}})
    data = json.loads((d / "case.json").read_text())
    data["id"] = "check/refcount/k_other"
    write_json(d / "case.json", data)
    make_case(root, "read-valid/blob/y_bad-expected", {},
              {"image.nvbox": {"logical": BEFORE}, "expected.json": {"format": "nvbox", "blobs": {"a": {"size": 1}}}})
    make_case(root, "roundtrip/header/r_forgot-rewrite-blob", {"expect_after_rewrite": {"logical": BEFORE}},
              {"image.nvbox": {"logical": BEFORE}})
    make_case(root, "write/blob/w_typo-field", {"expectd": "x.json"},
              {"ops.json": {"put": {}}, "expected.json": logical({})})
    return root


BROKEN = {
    "read-invalid/pointer/n_unknown-code": "'pointer.bogus' is not in registry",
    "read-valid/blob/y_missing-image": "missing image file image.nvbox",
    "read-acceptable/header/i_no-flags": "case.schema.json",
    "check/refcount/k_wrong-id": "does not match the directory",
    "read-valid/blob/y_bad-expected": "expected.json violates logical.schema.json",
    "roundtrip/header/r_forgot-rewrite-blob": "conformance/rewrite",
    "write/blob/w_typo-field": "expectd",
}


def test_validate_good_tree(env, capsys):
    _, _, cases = env
    assert runner.main(["validate", "--cases", str(cases)]) == 0
    assert "10 of 10 cases valid" in capsys.readouterr().out


def test_validate_reports_broken_cases(broken_tree, capsys):
    assert runner.main(["validate", "--cases", str(broken_tree)]) == 1
    out = capsys.readouterr().out
    for case_id, needle in BROKEN.items():
        section = out.split(case_id + ":", 1)[1].split("\n", 2)[1]
        assert needle in section, (case_id, section)
    assert "10 of 17 cases valid" in out


def test_runner_labels_broken_cases_as_errors(env, broken_tree):
    _, fake, _ = env
    report_path = broken_tree.parent / "r.json"
    rc = runner.main(["run", "--impl", impl(fake, "good"), "--reference", impl(fake, "good"),
                      "--cases", str(broken_tree), "--json", str(report_path)])
    assert rc == 1
    res = {c["id"]: c for c in json.loads(report_path.read_text())["cases"]}
    for case_id in BROKEN:
        assert res[case_id]["result"] == "error"
        assert res[case_id]["message"].startswith("broken case: ")
    assert sum(c["result"] == "pass" for c in res.values()) == 10


# -- coverage ---------------------------------------------------------------


def test_spec_requirement_parser():
    text = ("A slot is valid iff [R-commit-3] ... [R-header-12] and [R-dir-4]. Again [R-commit-3].\n"
            "Not ids: R-commit-5, [R-Commit-6], [R-commit], [X-commit-1], [R-dir-4a]\n"
            "Hyphenated areas: [R-key-slot-2]")
    assert runner.spec_requirements(text) == ["R-commit-3", "R-header-12", "R-dir-4", "R-key-slot-2"]


def test_coverage(env, tmp_path, capsys):
    root = tmp_path / "cases"
    make_case(root, "read-valid/blob/y_one", {"spec": ["R-commit-1", "R-dir-4"]},
              {"image.nvbox": {"logical": BEFORE}, "expected.json": BEFORE})
    make_case(root, "check/x/k_two", {"spec": ["R-commit-1"], "verdict": "clean"}, {"image.nvbox": {"logical": BEFORE}})
    spec = tmp_path / "nvbox.md"
    spec.write_text("# nvbox\n[R-commit-1] must.\n[R-commit-2] must.\n[R-header-12] must.\n")
    assert runner.main(["coverage", "--spec", str(spec), "--cases", str(root)]) == 0
    out = capsys.readouterr().out
    assert "3 requirements" in out and "2 uncited" in out
    assert "uncited: R-commit-2\nuncited: R-header-12\n" in out
    assert "unknown: R-dir-4" in out
    assert runner.main(["coverage", "--spec", str(spec), "--cases", str(root), "--strict"]) == 1
    capsys.readouterr()
    assert runner.main(["coverage", "--spec", str(spec), "--cases", str(root), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["uncovered"] == ["R-commit-2", "R-header-12"]
    assert doc["cases_per_requirement"] == {"R-commit-1": 2, "R-commit-2": 0, "R-header-12": 0}
    assert doc["unknown"] == {"R-dir-4": ["read-valid/blob/y_one"]}


# -- schemas and registry ---------------------------------------------------


def test_schemas_are_valid_and_strict():
    schemas = runner.Schemas()
    assert runner.Schemas.first_error(schemas.logical, CURRENT) is None
    bad = json.loads(json.dumps(CURRENT))
    bad["blobs"]["tpm/state"]["size"] = 9
    assert "size" in runner.Schemas.first_error(schemas.logical, bad)
    for value in ("007", "-1", "1.0", "123456789012345678901"):
        bad["blobs"]["tpm/state"]["size"] = value
        assert runner.Schemas.first_error(schemas.logical, bad) is not None, value
    ok_case = {"id": "read-invalid/a/n_b", "kind": "read-invalid", "description": "d", "spec": ["R-commit-3"],
               "error": "pointer"}
    assert runner.Schemas.first_error(schemas.case, ok_case) is None
    for mutation in ({"spec": []}, {"spec": ["commit-3"]}, {"error": "Pointer"}, {"image": "../x"},
                     {"image": "/etc/passwd"}, {"kind": "read"}, {"verdict": "clean"}):
        assert runner.Schemas.first_error(schemas.case, {**ok_case, **mutation}) is not None, mutation
    missing_error = dict(ok_case)
    del missing_error["error"]
    assert runner.Schemas.first_error(schemas.case, missing_error) is not None


def test_registry_matches_errors_py():
    assert make_registry.main(["--check"]) == 0
    codes = make_registry.load_error_codes()
    registry = json.loads(make_registry.REGISTRY.read_text())
    assert set(registry["codes"]) == set(codes)
    assert registry["codes"]["pointer.out_of_range"]["class"] == "PointerOutOfRangeError"
    assert runner.code_in_registry("pointer", set(codes))
    assert not runner.code_in_registry("point", set(codes))
    assert runner.code_matches("pointer", "pointer.out_of_range")
    assert not runner.code_matches("pointer", "pointers.x")


def test_logical_diff_is_order_insensitive_for_snapshots():
    r = runner.Runner(f"{PY} -c pass")
    a = logical({"x": "1"}, {"s1": {"x": "0"}, "s2": {}})
    b = dict(a, snapshots=list(reversed(a["snapshots"])))
    assert r.logical_diff(a, b) is None
    b["snapshots"][0] = {**b["snapshots"][0], "metadata_hex": ""}
    assert r.logical_diff(a, b) is None
    b["snapshots"][0] = {**b["snapshots"][0], "metadata_hex": "00"}
    assert "differs at /snapshots/s2/metadata_hex" in r.logical_diff(a, b)
    dup = dict(a, snapshots=a["snapshots"] + a["snapshots"][:1])
    assert "listed twice" in r.logical_diff(a, dup)


def test_python_dash_m_entry_point(env):
    base, fake, cases = env
    proc = subprocess.run([PY, "-m", "conformance", "run", "--impl", impl(fake, "good"), "--cases", str(cases),
                           "--reference", impl(fake, "good")], capture_output=True, text=True, timeout=120,
                          cwd=Path(runner.__file__).parent.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "10 passed, 0 failed, 0 skipped"
    proc = subprocess.run([PY, "-m", "conformance", "--version"], capture_output=True, text=True, timeout=60)
    assert SUITE_VERSION in proc.stdout
