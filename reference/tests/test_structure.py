"""The library's structure, measured from its source (issue 14).

* Private state stays private: ``obj._name`` where ``obj`` is not ``self`` (or
  ``cls``) is counted over every module of reference/nvbox; at most
  ``MAX_PRIVATE_ACCESSES``, and each one carries a comment on its line saying why.
* No import cycles in reference/nvbox or conformance, imports inside functions
  included: the graph of imports between the project's own modules is printed
  and must be acyclic.
* No module of reference/nvbox is longer than ``MAX_LINES``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"nvbox": ROOT / "reference" / "nvbox", "conformance": ROOT / "conformance"}
MAX_PRIVATE_ACCESSES = 5
MAX_LINES = 800
# Names that start with "_" but are a module's documented public API.
DOCUMENTED = {("os", "_exit")}      # ends a forked child without the parent's cleanup (os docs)


def _modules() -> dict[str, Path]:
    """Every module of the packages: dotted name -> file (a package is its __init__)."""
    found = {}
    for package, base in PACKAGES.items():
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base).with_suffix("")
            parts = [package, *rel.parts]
            if parts[-1] == "__init__":
                parts.pop()
            if any(p in ("tests", "build") for p in parts):
                continue    # test suites and generated code are not the library
            found[".".join(parts)] = path
    return found


def private_accesses() -> list[tuple[str, int, str, str]]:
    """(file, line, expression, source line) for each ``obj._name`` with obj not self/cls."""
    out = []
    for name, path in _modules().items():
        if name.split(".")[0] != "nvbox":
            continue
        source = path.read_text()
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") or node.attr.startswith("__"):
                continue
            base = node.value
            if isinstance(base, ast.Name) and (base.id in ("self", "cls") or (base.id, node.attr) in DOCUMENTED):
                continue
            out.append((str(path.relative_to(ROOT)), node.lineno, ast.unparse(node), lines[node.lineno - 1]))
    return out


def test_private_accesses_are_few_and_explained():
    found = private_accesses()
    for file, line, expr, _ in found:
        print(f"{file}:{line}: {expr}")
    print(f"{len(found)} private accesses across objects (at most {MAX_PRIVATE_ACCESSES})")
    assert len(found) <= MAX_PRIVATE_ACCESSES
    unexplained = [f"{file}:{line}: {expr}" for file, line, expr, text in found if "#" not in text]
    assert not unexplained, "each private access needs a comment on its line saying why"


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module name a ``from ... import`` names (before its imported names)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[:len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (at module level or in a function)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node)
                # ``from pkg import name``: the submodule pkg.name if there is one, else pkg.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                while target and target not in modules:     # ``import a.b.c`` of a non-module tail
                    target = target.rpartition(".")[0]
                # Importing a.b.c runs a/__init__ and a/b/__init__ first, unless they
                # are packages this module is in (those are already being imported).
                parts = target.split(".")
                for n in range(1, len(parts) + 1):
                    step = ".".join(parts[:n])
                    if step in modules and step != module and not module.startswith(step + "."):
                        graph[module].add(step)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    graph = import_graph()
    for module in sorted(graph):
        print(f"{module} -> {', '.join(sorted(graph[module])) or '(nothing of the project)'}")
    assert not cycles(graph), cycles(graph)


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert "nvbox._format" in graph["nvbox.image"]           # from . import _format as fmt
    assert "nvbox.crypto" in graph["nvbox.image"]
    assert "nvbox._seal" in graph["nvbox.crypto"]
    assert "nvbox.check" in graph["nvbox.adapter"]
    assert "conformance.runner" in graph["conformance.generate"]        # imported inside a function
    assert "nvbox.live" in graph["nvbox.cli"]                # its import of nvbox.live.commands runs live/__init__
    assert "nvbox.cli" not in graph["nvbox.cli.blobs"]       # its own package: being imported already


def test_no_module_is_longer_than_800_lines():
    lengths = {name: len(path.read_text().splitlines()) for name, path in _modules().items()
               if name.split(".")[0] == "nvbox"}
    longest = max(lengths, key=lengths.get)
    print(f"longest: {longest} ({lengths[longest]} lines)")
    assert not {n: k for n, k in lengths.items() if k > MAX_LINES}
