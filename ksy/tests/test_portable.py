"""Constructs that some Kaitai targets compile wrongly or not at all, kept out of ksy/.

Each rule names the target that got it wrong with kaitai-struct-compiler 0.11 (issue 17):

- integer literals of 2^31 or more, and shifts of anything but a small literal: 32-bit
  in JavaScript (`1 << 40` is 256), Java and C#, 0 in C++; `>>` becomes `>>>` in JavaScript;
- unary minus (`-x % 8`): negates an unsigned value (Rust);
- names that are keywords of a target (`inline` in C++, `end` in Lua), or classes Java
  generated code uses unqualified (`Integer`);
- a member named like a type or enum of its scope (`header` and type `header`: C#);
- an `enum:` on an integer whose set of values is open (Java and Lua give null for the
  others): only with `valid: in-enum: true`;
- `switch-on` types: over `_io.size` or a DER value (Java cannot switch on `long`), with
  cases u1..u8/b24..b56 (a 32-bit type in Java and C++) or `str` alone (C++ and Go reference
  a field that does not exist), and in C++ any switch-typed attribute (deleted uninitialized
  when a read fails);
- `==`/`!=` between two computed values (instances): Java compares the boxed objects;
- `valid: expr` that does not use `_` (Go: `_it` declared and not used), or on a conditional
  integer field (C# declares it non-nullable), zero-size fields;
- `valid` on an instance (it is cached before it is checked).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

KSY_DIR = Path(__file__).resolve().parents[1]

KEYWORDS = {
    # Java
    *"""abstract assert boolean break byte case catch char class const continue default do double
    else enum extends final finally float for goto if implements import instanceof int interface
    long native new package private protected public return short static strictfp super switch
    synchronized this throw throws transient try void volatile while true false null var record
    yield""".split(),
    # C++
    *"""alignas alignof and and_eq asm auto bitand bitor bool char16_t char32_t compl constexpr
    const_cast decltype delete dynamic_cast explicit export extern friend inline mutable namespace
    noexcept not not_eq nullptr operator or or_eq register reinterpret_cast signed sizeof
    static_assert static_cast struct template thread_local typedef typeid typename union unsigned
    using virtual wchar_t xor xor_eq""".split(),
    # C#
    *"""as base checked decimal delegate event fixed foreach implicit in internal is lock object
    out override params readonly ref sbyte sealed stackalloc string typeof uint ulong unchecked
    unsafe ushort""".split(),
    # Go
    *"chan defer fallthrough func go map range select type".split(),
    # Rust
    *"""crate fn impl let loop match mod move mut pub self trait unsafe use where async await dyn
    become box macro priv unsized""".split(),
    # Lua
    *"elseif end function local nil repeat then until".split(),
    # Nim
    *"""addr bind block cast concept converter discard distinct div elif except from include
    isnot iterator method mixin notin of proc ptr raise shl shr tuple when""".split(),
    # Python
    *"def del global lambda nonlocal pass with".split(),
}
# Classes that generated code names unqualified (Java's java.lang, C#'s System).
CLASS_NAMES = {"integer", "long", "short", "byte", "boolean", "character", "string", "object",
               "number", "math", "system", "class", "void", "enum", "record", "error",
               "exception", "thread", "runtime", "process", "iterable", "array", "list", "type",
               "attribute", "int32", "int64", "uint32", "uint64", "buffer", "kaitaistream",
               "kaitaistruct"}
# Attributes that are not members a target has to name (the runtime's own).
BUILTIN = {"size", "length", "to_i", "to_s", "eof", "pos", "as", "first", "last", "_io",
           "_root", "_parent", "_"}
EXPR_KEYS = ("valid", "if", "size", "pos", "repeat-expr", "repeat-until", "value", "io")
LIMIT = 2 ** 31


def descriptors():
    out = {}
    for f in sorted((KSY_DIR / "build" / "json").glob("*.json")):
        out[f.stem] = json.loads(f.read_text(encoding="utf-8"))
    return out


@pytest.fixture(scope="module")
def docs(ksy):
    found = descriptors()
    assert set(found) >= {p.stem for p in KSY_DIR.glob("*.ksy")}
    return found


def types_of(doc):
    """(path, type dict) for the root and every nested type."""
    todo = [(doc["meta"]["id"], doc)]
    while todo:
        path, t = todo.pop()
        yield path, t
        for name, sub in (t.get("types") or {}).items():
            todo.append((f"{path}/{name}", sub))


def attributes(t):
    """(kind, id, attr) of every seq field, instance and parameter of one type."""
    for a in t.get("seq") or []:
        yield "seq", a.get("id"), a
    for name, a in (t.get("instances") or {}).items():
        yield "instance", name, a
    for p in t.get("params") or []:
        yield "param", p.get("id"), p


def expressions(a):
    """Every expression of one attribute, with a label."""
    for key in EXPR_KEYS:
        v = a.get(key)
        if isinstance(v, (str, int)) and not isinstance(v, bool):
            yield key, v
        elif key == "valid" and isinstance(v, dict):
            for k, e in v.items():
                if k == "any-of":
                    for x in e:
                        yield "valid/any-of", x
                elif k != "in-enum":
                    yield f"valid/{k}", e
    ty = a.get("type")
    if isinstance(ty, str) and "(" in ty:
        yield "type args", ty[ty.index("("):]
    elif isinstance(ty, dict):
        yield "switch-on", ty["switch-on"]
        for case, target in ty.get("cases", {}).items():
            yield "case", case
            if "(" in target:
                yield "case args", target[target.index("("):]


def all_expressions(docs):
    for doc in docs.values():
        for path, t in types_of(doc):
            for kind, name, a in attributes(t):
                for label, e in expressions(a):
                    yield f"{path}/{name} {label}", e


TOKEN = re.compile(r"\s*(0x[0-9a-fA-F_]+|0b[01_]+|\d[\d_]*|[A-Za-z_]\w*(?:::\w+)*|"
                   r"\.as<\w+>|<<|>>|<=|>=|==|!=|[-+*/%<>()\[\]?:.,~&|^!])")


def tokens(expr):
    return TOKEN.findall(str(expr))


def int_value(tok):
    try:
        return int(tok.replace("_", ""), 0)
    except ValueError:
        return None


def test_no_literal_or_shift_past_32_bits(docs):
    bad = []
    for where, e in all_expressions(docs):
        if isinstance(e, int):
            if abs(e) >= LIMIT:
                bad.append((where, e))
            continue
        toks = tokens(e)
        for i, tok in enumerate(toks):
            v = int_value(tok) if tok[0].isdigit() else None
            if v is not None and v >= LIMIT:
                bad.append((where, tok))
            if tok in ("<<", ">>"):
                left = int_value(toks[i - 1]) if i and toks[i - 1][0].isdigit() else None
                count = int_value(toks[i + 1]) if i + 1 < len(toks) and toks[i + 1][0].isdigit() else None
                if left is None or left >= LIMIT or (i >= 2 and toks[i - 2] not in OPEN) \
                        or (count is not None and count >= 31):
                    bad.append((where, f"shift of {' '.join(toks[max(0, i - 2):i + 2])}"))
    assert not bad, bad


OPEN = {"(", "[", ",", "?", ":", "and", "or", "not", "<=", ">=", "==", "!=", "<", ">"}
UNARY_BEFORE = OPEN | {"+", "-", "*", "/", "%", "&", "|", "^", "<<", ">>"}


def test_no_unary_minus(docs):
    bad = []
    for where, e in all_expressions(docs):
        if isinstance(e, int):
            if e < 0:
                bad.append((where, e))
            continue
        toks = tokens(e)
        for i, tok in enumerate(toks):
            if tok == "-" and (i == 0 or toks[i - 1] in UNARY_BEFORE):
                bad.append((where, e))
    assert not bad, bad


def names(docs):
    """(where, name) of every type, enum, enum value, field, instance and parameter."""
    for doc in docs.values():
        for path, t in types_of(doc):
            yield path, path.rsplit("/", 1)[-1]
            for kind, name, a in attributes(t):
                yield f"{path} {kind}", name
            for ename, values in (t.get("enums") or {}).items():
                yield f"{path} enum", ename
                for v in values.values():
                    yield f"{path} enum {ename}", v["id"] if isinstance(v, dict) else v


def test_no_target_keywords(docs):
    bad = [(w, n) for w, n in names(docs) if n.lower() in KEYWORDS]
    types = [n for doc in docs.values() for path, _ in types_of(doc) for n in [path.rsplit("/", 1)[-1]]]
    bad += [("type", n) for n in types if n.replace("_", "").lower() in CLASS_NAMES]
    assert not bad, bad


def pascal(name):
    return "".join(p[:1].upper() + p[1:] for p in name.split("_"))


def test_no_member_named_like_a_type_of_its_scope(docs):
    bad = []
    for doc in docs.values():
        for path, t in types_of(doc):
            scope = {pascal(n) for n in (t.get("types") or {})} | {pascal(n) for n in (t.get("enums") or {})}
            scope.add(pascal(path.rsplit("/", 1)[-1]))
            for kind, name, _ in attributes(t):
                if pascal(name) in scope:
                    bad.append((path, kind, name))
    assert not bad, bad


def test_enums_only_on_closed_sets(docs):
    bad = []
    for doc in docs.values():
        for path, t in types_of(doc):
            for kind, name, a in attributes(t):
                if "enum" in a and not (isinstance(a.get("valid"), dict) and a["valid"].get("in-enum")):
                    bad.append((path, name, a["enum"]))
    assert not bad, bad


def test_no_switch_types(docs):
    """No `switch-on` types at all: besides the faults above (a `long` switch in Java over
    `_io.size` or a DER value, a 32-bit common type of u1..u8/b24..b56 cases in Java and C++,
    a lone `str` case that C++ and Go reference as an undeclared field), the C++ code of a
    switch-typed field or instance leaves its pointer uninitialized and deletes it when a read
    fails: a truncated image crashed the generated C++ parser. Levels are parameters of one
    type instead (`map_node`, `refcount_node`)."""
    bad = []
    for doc in docs.values():
        for path, t in types_of(doc):
            for kind, name, a in attributes(t):
                if isinstance(a.get("type"), dict):
                    bad.append((path, name, a["type"].get("switch-on")))
    assert not bad, bad


def instance_names(docs):
    return {name for doc in docs.values() for _, t in types_of(doc)
            for kind, name, _ in attributes(t) if kind == "instance"} - BUILTIN


BOUNDARY = {"(", ")", ",", "?", ":", "and", "or", "not", "==", "!=", "<", ">", "<=", ">=", "[", "]"}


def operand(toks, i, step):
    """The tokens of the operand of the comparison at toks[i], going left (-1) or right (+1)."""
    out, depth, j = [], 0, i + step
    while 0 <= j < len(toks):
        tok = toks[j]
        if tok in ("(", "[") if step > 0 else tok in (")", "]"):
            depth += 1
        elif tok in (")", "]") if step > 0 else tok in ("(", "["):
            if depth == 0:
                break
            depth -= 1
        elif depth == 0 and tok in BOUNDARY:
            break
        out.append(tok)
        j += step
    return out if step > 0 else out[::-1]


def is_boxed(op, instances):
    """A bare path ending in an instance: a boxed Integer/Long in Java."""
    if not op or any(t in ("+", "-", "*", "/", "%", "&", "|", "^", "<<", ">>") for t in op):
        return False
    if op[-1].startswith(".as<"):
        return False
    words = [t for t in op if re.fullmatch(r"[A-Za-z_]\w*", t)]
    return bool(words) and words[-1] in instances


def test_no_comparison_of_two_instances(docs):
    instances = instance_names(docs)
    bad = []
    for where, e in all_expressions(docs):
        if isinstance(e, int):
            continue
        toks = tokens(e)
        for i, tok in enumerate(toks):
            if tok in ("==", "!=") and is_boxed(operand(toks, i, -1), instances) \
                    and is_boxed(operand(toks, i, +1), instances):
                bad.append((where, " ".join(operand(toks, i, -1) + [tok] + operand(toks, i, +1))))
    assert not bad, bad


def test_valid_expr_uses_its_value_and_no_zero_size_fields(docs):
    bad = []
    for doc in docs.values():
        for path, t in types_of(doc):
            for kind, name, a in attributes(t):
                v = a.get("valid")
                if kind == "instance" and v is not None:
                    bad.append((path, name, "valid on an instance"))
                if isinstance(v, dict) and "expr" in v and "_" not in tokens(v["expr"]) \
                        and not any(t.startswith("_.") for t in tokens(v["expr"])):
                    bad.append((path, name, "valid: expr without _"))
                if isinstance(v, dict) and "expr" in v and "if" in a and "repeat" not in a \
                        and re.fullmatch(r"[usb]\d+", str(a.get("type"))):
                    bad.append((path, name, "valid: expr on a conditional integer (nullable in C#)"))
                if kind == "seq" and a.get("size") == 0:
                    bad.append((path, name, "zero-size field"))
    assert not bad, bad


# The scanner itself finds what the issue found (each rule on a one-line example).
@pytest.mark.parametrize("rule,doc", [
    (test_no_literal_or_shift_past_32_bits, {"seq": [{"id": "a", "type": "u8", "valid": {"max": "(1 << 40)"}}]}),
    (test_no_literal_or_shift_past_32_bits, {"seq": [{"id": "a", "type": "u8", "valid": {"expr": "(_ >> 1) == 0"}}]}),
    (test_no_literal_or_shift_past_32_bits, {"seq": [{"id": "a", "type": "u8", "valid": {"max": 281474976710656}}]}),
    (test_no_unary_minus, {"seq": [{"id": "a", "type": "u1", "repeat": "expr", "repeat-expr": "-b % 8"}]}),
    (test_no_target_keywords, {"seq": [{"id": "inline", "size": 1}]}),
    (test_no_target_keywords, {"types": {"integer": {"seq": []}}}),
    (test_no_target_keywords, {"enums": {"e": {"0": "end"}}}),
    (test_no_member_named_like_a_type_of_its_scope, {"seq": [{"id": "header", "type": "header"}],
                                                     "types": {"header": {"seq": []}}}),
    (test_enums_only_on_closed_sets, {"seq": [{"id": "tag", "type": "u1", "enum": "tag"}]}),
    (test_no_switch_types, {"instances": {"v": {"pos": 0, "type": {"switch-on": "_io.size",
                                                                     "cases": {"1": "u1", "2": "u2"}}}}}),
    (test_no_switch_types, {"seq": [{"id": "d", "size": 1, "type": {"switch-on": "t", "cases": {"1": "str"}}}]}),
    (test_no_comparison_of_two_instances, {"seq": [{"id": "c", "type": "b", "valid": {"expr": "_.len.value == size.value"}}],
                                           "instances": {"value": {"value": 1}}}),
    (test_valid_expr_uses_its_value_and_no_zero_size_fields, {"seq": [{"id": "check", "size": 0,
                                                                       "valid": {"expr": "a == b"}}]}),
    (test_valid_expr_uses_its_value_and_no_zero_size_fields, {"seq": [{"id": "r", "type": "u4", "if": "x",
                                                                       "valid": {"expr": "_ == 0"}}]}),
    (test_valid_expr_uses_its_value_and_no_zero_size_fields, {"instances": {"s": {"pos": 0, "size": 1,
                                                                                  "valid": {"expr": "_.size == 1"}}}}),
])
def test_scanner_finds_the_known_faults(rule, doc):
    doc = {"meta": {"id": "example"}, **doc}
    with pytest.raises(AssertionError):
        rule({"example": doc})
