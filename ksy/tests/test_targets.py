"""The descriptors in more than one Kaitai target.

The generated JavaScript parser (npm `kaitai-struct` runtime, run by node) reads
every image of the conformance corpus exactly as the generated Python one does
(tests/walk.js and tests/summary.py follow every lazy instance and compare what
they read, or the rule that stopped them), and so do images larger than 256
clusters and blobs of 2^40 bytes and more, written by the reference library.
Every target the compiler offers builds with `make build TARGET=...`.

The generated Java, C++, C#, Ruby, PHP, Lua and Go parsers are compiled and run the
same way when their runtimes are at hand (CI cannot fetch them: their registries
are out of reach there): KAITAI_JAVA_RUNTIME names a checkout of
kaitai_struct_java_runtime 0.11, KAITAI_CPP_RUNTIME one of
kaitai_struct_cpp_stl_runtime 0.11, KAITAI_CSHARP_RUNTIME one of kaitai_struct_csharp_runtime 0.11 (built with mono),
KAITAI_RUBY_RUNTIME, KAITAI_PHP_RUNTIME, KAITAI_LUA_RUNTIME and KAITAI_GO_RUNTIME ones
of the Ruby, PHP, Lua and Go runtimes 0.11. What may differ there, and why, is in OTHER_TARGETS.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from kaitaistruct import KaitaiStream

import summary

KSY_DIR = Path(__file__).resolve().parents[1]
CASES = KSY_DIR.parent / "conformance" / "cases"
JS_BUILD = KSY_DIR / "build" / "javascript"
WALK_JS = Path(__file__).resolve().parent / "walk.js"
# The one corpus image the descriptors read differently from a conforming reader, by
# design: its newer slot is torn (bad slot_crc), which only a CRC check can see.
CRC_ONLY = {"read-valid/slot/y_slot_newer-torn-older-valid/image.nvbox"}

# Images that JavaScript rejects at a later field than Python, because a value it
# checks lies past 2^53, where kaitai-struct's JavaScript runtime (u8 as a Number)
# cannot hold it exactly.  Both still reject the image with the same error class.
JS_PAST_2_53 = {
    # A data cluster read as a map node (the node is named at two levels): its first
    # "pointer" has offset 0xc60328f7d9921b43, which rounds to a multiple of 2048 as
    # a double, so the alignment check (seq/0) passes in JavaScript and the range
    # check (seq/1) rejects it instead.
    "check/corrupt/k_corrupt_map-node-at-two-levels/image.nvbox": ("/types/pointer/seq/0", "/types/pointer/seq/1"),
}


def _make(*args):
    proc = subprocess.run(["make", "-s", "-C", str(KSY_DIR), *args, f"PY={sys.executable}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"make {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def js_build(ksy):
    _make("build", "TARGET=javascript")
    assert (JS_BUILD / "Nvbox.js").is_file() and (JS_BUILD / "NvboxDer.js").is_file()
    return JS_BUILD


def run_walker(cmd, paths, cwd=None):
    proc = subprocess.run(cmd, input="\n".join(map(str, paths)), cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stderr[-2000:]}"
    return json.loads(proc.stdout)


def js_outcomes(paths):
    return run_walker(["node", str(WALK_JS), str(JS_BUILD)], paths)


def py_outcomes(ksy, paths):
    def parse(p):
        return ksy.Nvbox(KaitaiStream(io.BytesIO(Path(p).read_bytes())))
    return {str(p): summary.outcome(parse, p) for p in paths}


def test_javascript_reads_the_corpus_like_python(ksy, js_build):
    paths = sorted(CASES.rglob("*.nvbox"))
    assert len(paths) > 300
    py, js = py_outcomes(ksy, paths), js_outcomes(paths)
    def same(p):
        rel = Path(p).relative_to(CASES).as_posix()
        if rel in JS_PAST_2_53:
            py_path, js_path = JS_PAST_2_53[rel]
            return py[p] == {**js[p], "path": py_path} and js[p]["path"] == js_path
        return py[p] == js[p]
    differ = [p for p in py if not same(p)]
    assert not differ, "\n".join(f"{p}:\n  python {py[p]}\n  js     {js[p]}" for p in differ[:5])
    # The walk has teeth: every read-valid image but the CRC-only one is read whole, and
    # the read-invalid cases the descriptors can see are rejected.
    for p in paths:
        rel = p.relative_to(CASES).as_posix()
        if rel.startswith("read-valid/") and rel not in CRC_ONLY:
            assert "error" not in py[str(p)], (rel, py[str(p)])
    rejected = sum("error" in py[str(p)] for p in paths if p.relative_to(CASES).parts[0] == "read-invalid")
    assert rejected >= 170, rejected
    # the gaps issue 17 found, each closed by a rule of its own
    for case, rule in GAPS.items():
        assert py[str(CASES / case / "image.nvbox")].get("path") == rule, case


GAPS = {
    "read-invalid/header/n_header_ext-bytes-after-end": "/types/header_extension/seq/4",
    "read-invalid/der/n_der_cluster-map-extra-element": "/types/cluster_map/seq/2",
    "read-invalid/pointer/n_pointer_map-cycle": "/types/map_ref/seq/0",
}


nvbox_ref = pytest.importorskip("nvbox", reason="reference package `nvbox` not importable")


def _large_images(tmp):
    """Images a 32-bit expression gets wrong, written by the reference library (sparse)."""
    rng = random.Random(17)
    out = {}
    # 512-byte clusters, > 256 clusters (JavaScript's 1 << 40 was 256): a two-level refcount
    # tree and depth-2 maps.
    p = tmp / "many-clusters-512.nvbox"
    with nvbox_ref.create(str(p), cluster_size=512) as im:
        im["big"] = rng.randbytes(300_000)
        for i in range(40):
            im[f"dev{i:02}/state"] = rng.randbytes(i * 37)
        im.snapshots.create("s1")
        im["after"] = b"a" * 5000
    out["many-clusters"] = p
    # 4 KiB clusters: blobs of 2^40, 2^40 + 3 and 2^48 bytes (the limit), with data near
    # their ends, so the DER sizes take 6 and 7 bytes and the maps are 4 and 5 levels deep.
    p = tmp / "huge-blobs-4k.nvbox"
    with nvbox_ref.create(str(p), cluster_size=4096) as im:
        im["tpm/permanent"] = b"\x01" * 100
        im["sparse/2^40"] = b""
        im.truncate("sparse/2^40", 2 ** 40)
        im.write("sparse/2^40", 2 ** 40 - 4096 - 5, b"end of a terabyte")
        im.write("sparse/2^40+3", 2 ** 40, b"abc")
        im.write("sparse/2^48", 2 ** 48 - 10, b"0123456789")
        im.write("sparse/2^48", 2 ** 33 + 7, b"middle")
    out["huge-blobs"] = p
    # 512-byte clusters and a 2^40-byte blob: a map 7 levels deep (fanout 32).
    p = tmp / "deep-map-512.nvbox"
    with nvbox_ref.create(str(p), cluster_size=512) as im:
        im.write("deep", 2 ** 40 - 1, b"z")
        im.write("deep", 12345, b"early")
    out["deep-map"] = p
    return out


def test_javascript_reads_large_images_like_python(ksy, js_build, tmp_path):
    images = _large_images(tmp_path)
    # Damaged copies the old descriptors accepted in JavaScript: incompatible bit 63
    # (a `>>` became `>>>`), image_clusters of 2^40 + 1 (`1 << 40` was 256 there).
    raw = bytearray(images["many-clusters"].read_bytes())
    slot = 512 if struct.unpack_from("<Q", raw, 512 + 8)[0] > struct.unpack_from("<Q", raw, 1024 + 8)[0] else 1024
    for name, off, value in [("bit63", 16, 1 << 63), ("clusters-2^40+1", 40, 2 ** 40 + 1)]:
        bad = bytearray(raw)
        struct.pack_into("<Q", bad, slot + off, value)
        images[name] = tmp_path / f"{name}.nvbox"
        images[name].write_bytes(bad)
    paths = sorted(images.values())
    py, js = py_outcomes(ksy, paths), js_outcomes(paths)
    for name, p in images.items():
        assert py[str(p)] == js[str(p)], (name, py[str(p)], js[str(p)])
    many = py[str(images["many-clusters"])]
    assert many["image_clusters"] > 256 and len(many["blobs"]) == 42, many.get("error")
    assert max(int(c) for c in many["refcounts"]) > 256
    huge = {b["name"]: b for b in py[str(images["huge-blobs"])]["blobs"]}
    assert {n: b["size"] for n, b in huge.items() if n.startswith("sparse")} == {
        "sparse/2^40": 2 ** 40, "sparse/2^40+3": 2 ** 40 + 3, "sparse/2^48": 2 ** 48}
    assert (huge["sparse/2^40"]["depth"], huge["sparse/2^48"]["depth"]) == (4, 5)
    # the stored clusters sit at the logical indexes the writes chose
    assert [c[0] for c in huge["sparse/2^48"]["clusters"]] == [(2 ** 33 + 7) // 4096, (2 ** 48 - 10) // 4096]
    deep = py[str(images["deep-map"])]["blobs"][0]
    assert deep["depth"] == 7 and [c[0] for c in deep["clusters"]] == [12345 // 512, (2 ** 40 - 1) // 512]
    for name in ("bit63", "clusters-2^40+1"):
        assert py[str(images[name])]["error"] == "ValidationExprError", name


# Every language kaitai-struct-compiler 0.11.0 offers (checked against the compiler below).
TARGETS = ["construct", "cpp_stl", "csharp", "go", "graphviz", "html", "java", "javascript", "lua",
           "nim", "perl", "php", "python", "ruby", "rust"]


def test_targets_are_the_compilers_languages(ksy):
    proc = subprocess.run(["node", "-e", "process.stdout.write(JSON.stringify("
                           "require('kaitai-struct-compiler').languages))"],
                          cwd=KSY_DIR, capture_output=True, text=True, timeout=60)
    assert sorted(json.loads(proc.stdout)) == TARGETS


@pytest.mark.parametrize("target", [t for t in TARGETS if t not in ("python", "javascript")])
def test_every_target_builds(ksy, target, tmp_path):
    """`make build TARGET=...` for every language the compiler offers (the generated code
    of the others is compiled and run by hand, see ksy/README.md)."""
    proc = _make("build", f"TARGET={target}")
    out = KSY_DIR / "build" / target
    files = [f for f in out.rglob("*") if f.is_file()]
    assert files and all(f.stat().st_size > 0 for f in files), target
    if target in ("nim", "perl"):      # backends that cannot generate some checks (README)
        assert "checks of nvbox left out" in proc.stderr
    else:
        assert "left out" not in proc.stderr


def _runtime(var):
    path = os.environ.get(var)
    if not path:
        pytest.skip(f"{var} is not set (the runtime cannot be installed from the registries CI reaches)")
    return Path(path)


def _java_walker(tmp):
    runtime = _runtime("KAITAI_JAVA_RUNTIME")
    if not shutil.which("javac"):
        pytest.skip("javac is not installed")
    _make("build", "TARGET=java")
    classes = tmp / "classes"
    sources = [*map(str, (runtime / "src" / "main" / "java").rglob("*.java")),
               *map(str, (KSY_DIR / "build" / "java").glob("*.java")),
               str(Path(__file__).resolve().parent / "java" / "Walk.java")]
    proc = subprocess.run(["javac", "-nowarn", "-d", str(classes), *sources],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return ["java", "-cp", str(classes), "Walk"]


def _cpp_walker(tmp):
    runtime = _runtime("KAITAI_CPP_RUNTIME")
    _make("build", "TARGET=cpp_stl")
    gen = KSY_DIR / "build" / "cpp_stl"
    exe = tmp / "walk"
    proc = subprocess.run(["g++", "-std=c++11", "-O1", f"-I{runtime}", f"-I{gen}", "-DKS_STR_ENCODING_ICONV",
                           str(gen / "nvbox.cpp"), str(gen / "nvbox_der.cpp"),
                           str(runtime / "kaitai" / "kaitaistream.cpp"),
                           str(Path(__file__).resolve().parent / "cpp" / "walk.cpp"), "-o", str(exe), "-lcrypto"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [str(exe)]


def _csharp_walker(tmp):
    runtime = _runtime("KAITAI_CSHARP_RUNTIME")
    if not (shutil.which("mcs") and shutil.which("mono")):
        pytest.skip("mono's mcs and mono are not installed")
    _make("build", "TARGET=csharp")
    exe = tmp / "walk.exe"
    proc = subprocess.run(["mcs", f"-out:{exe}", str(runtime / "KaitaiStream.cs"), str(runtime / "KaitaiStruct.cs"),
                           *map(str, (KSY_DIR / "build" / "csharp").glob("*.cs")),
                           str(Path(__file__).resolve().parent / "csharp" / "Walk.cs")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return ["mono", str(exe)]


def _ruby_walker(tmp):
    runtime = _runtime("KAITAI_RUBY_RUNTIME")
    if not shutil.which("ruby"):
        pytest.skip("ruby is not installed")
    _make("build", "TARGET=ruby")
    return ["ruby", "-I", str(runtime / "lib"), "-I", str(KSY_DIR / "build" / "ruby"),
            str(Path(__file__).resolve().parent / "ruby" / "walk.rb")]


def _php_walker(tmp):
    runtime = _runtime("KAITAI_PHP_RUNTIME")
    if not shutil.which("php"):
        pytest.skip("php is not installed")
    _make("build", "TARGET=php")
    return ["php", str(Path(__file__).resolve().parent / "php" / "walk.php"), str(runtime / "lib"),
            str(KSY_DIR / "build" / "php")]


def _lua_walker(tmp):
    runtime = _runtime("KAITAI_LUA_RUNTIME")
    if not shutil.which("lua5.3"):
        pytest.skip("lua5.3 is not installed")
    _make("build", "TARGET=lua")
    lua_path = f"{runtime}/?.lua;{KSY_DIR / 'build' / 'lua'}/?.lua"
    return ["env", f"LUA_PATH={lua_path}", "lua5.3", str(Path(__file__).resolve().parent / "lua" / "walk.lua")]


def _go_walker(tmp):
    runtime = _runtime("KAITAI_GO_RUNTIME")
    if not shutil.which("go"):
        pytest.skip("go is not installed")
    _make("build", "TARGET=go")
    # GOPATH mode (no module downloads): src/nvbox is the generated package, the runtime
    # sits at its import path, golang.org/x/text comes from Debian's golang-golang-x-text-dev.
    gopath = tmp / "gopath"
    (gopath / "src" / "github.com" / "kaitai-io").mkdir(parents=True)
    (gopath / "src" / "github.com" / "kaitai-io" / "kaitai_struct_go_runtime").symlink_to(runtime)
    (gopath / "src" / "nvbox").symlink_to(KSY_DIR / "build" / "go")
    (gopath / "src" / "walk").mkdir()
    shutil.copy(Path(__file__).resolve().parent / "go" / "walk.go", gopath / "src" / "walk")
    exe = tmp / "walk-go"
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": f"{gopath}:/usr/share/gocode",
           "GOCACHE": str(tmp / "gocache"), "GOFLAGS": ""}
    proc = subprocess.run(["go", "build", "-o", str(exe), "."], cwd=gopath / "src" / "walk", env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [str(exe)]


def test_nim_compiles(ksy, tmp_path):
    """The generated Nim (built without its `valid: expr` checks) compiles; there is no Nim
    walker, so it is not run."""
    runtime = _runtime("KAITAI_NIM_RUNTIME")
    if not shutil.which("nim"):
        pytest.skip("nim is not installed")
    _make("build", "TARGET=nim")
    proc = subprocess.run(["nim", "c", "--hints:off", "--warnings:off", f"--nimcache:{tmp_path / 'cache'}",
                           f"--path:{runtime}", f"-o:{tmp_path / 'nvbox'}", str(KSY_DIR / "build" / "nim" / "nvbox.nim")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _hashed(v):
    """The walk.lua output with its "hex:" cluster bytes hashed as summary.py does."""
    if isinstance(v, str) and v.startswith("hex:"):
        return hashlib.sha256(bytes.fromhex(v[4:])).hexdigest()[:16]
    if isinstance(v, list):
        return [_hashed(x) for x in v]
    if isinstance(v, dict):
        return {k: _hashed(x) for k, x in v.items()}
    return v


# (walker, its decoder lets bad UTF-8 through, its errors name the rule): Java's and .NET's
# decoders replace bad UTF-8, the Lua runtime's lets some through (overlong forms,
# surrogates, a truncated sequence); the Lua code raises validation errors without a srcPath.
OTHER_TARGETS = {"java": (_java_walker, True, True), "cpp_stl": (_cpp_walker, False, True),
                 "csharp": (_csharp_walker, True, True), "ruby": (_ruby_walker, False, True),
                 "php": (_php_walker, False, True), "lua": (_lua_walker, True, False),
                 "go": (_go_walker, False, True)}


@pytest.mark.parametrize("target", sorted(OTHER_TARGETS))
def test_other_targets_read_like_python(ksy, target, tmp_path):
    walker, lenient_utf8, names_rule = OTHER_TARGETS[target]
    cmd = walker(tmp_path)
    paths = sorted(CASES.rglob("*.nvbox")) + sorted(_large_images(tmp_path).values())
    py, other = py_outcomes(ksy, paths), _hashed(run_walker(cmd, paths))
    if not names_rule:
        py = {p: {k: v for k, v in o.items() if k != "path"} for p, o in py.items()}
    differ = [p for p in py if py[p] != other[p] and not (lenient_utf8 and py[p] == {"error": "utf8"})]
    assert not differ, "\n".join(f"{p}:\n  python {py[p]}\n  {target} {other[p]}" for p in differ[:5])
