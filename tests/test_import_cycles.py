"""No import cycles among the modules of comet_jax.

Every `import` and `from ... import` statement of every module counts, at the top level or
inside a function (a lazy import hides a cycle from Python, not from the design). Relative
imports are resolved; `from pkg import name` imports the module `pkg.name` when there is
one. The module graph must have no strongly connected component of more than one module."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "comet_jax"


def modules(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under package_dir (a package is its
    __init__.py)."""
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def resolve(module: str | None, level: int, importer: str, is_package: bool) -> str:
    """The absolute name of `from <level dots><module> import ...` written in `importer`."""
    if not level:
        return module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def imported_names(tree: ast.AST, importer: str, is_package: bool) -> set[str]:
    """Every dotted name the module may import (modules and, for `from m import x`, m.x)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = resolve(node.module, node.level, importer, is_package)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports."""
    mods = modules(package_dir)
    graph = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        deps = imported_names(tree, name, path.name == "__init__.py")
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative). Only
    written imports are edges: `import a.b` is an edge to a.b, not to the package a that Python
    also runs first (a package is a node like any module: `from a import X` is an edge to it)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[v])
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
    return found


def describe(component: list[str], graph: dict[str, set[str]]) -> str:
    """'a -> b, b -> a': the imports inside one cycle."""
    members = set(component)
    return ", ".join(f"{m} -> {d}" for m in component for d in sorted(graph[m] & members))


def test_the_graph_sees_every_kind_of_import(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .sub import b  # lazy, still an edge\n")
    (pkg / "sub" / "__init__.py").write_text("from . import d\n")  # relative to the package itself
    (pkg / "sub" / "b.py").write_text("from ..a import f\n")
    (pkg / "sub" / "c.py").write_text("import pkg.sub.b\nimport os\nfrom pkg.sub import d as e\n")
    (pkg / "sub" / "d.py").write_text("")
    graph = import_graph(pkg)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.sub", "pkg.sub.b"}, "pkg.sub": {"pkg.sub.d"},
                     "pkg.sub.b": {"pkg.a"}, "pkg.sub.c": {"pkg.sub", "pkg.sub.b", "pkg.sub.d"},
                     "pkg.sub.d": set()}
    assert cycles(graph) == [["pkg.a", "pkg.sub.b"]]
    assert describe(["pkg.a", "pkg.sub.b"], graph) == "pkg.a -> pkg.sub.b, pkg.sub.b -> pkg.a"


def test_comet_jax_has_no_import_cycles():
    graph = import_graph(ROOT / PACKAGE)
    assert len(graph) > 50 and "comet_jax.train.trainer" in graph  # the walk found the package
    found = cycles(graph)
    assert not found, "import cycles in comet_jax (make the dependency go one way):\n" + "\n".join(
        describe(c, graph) for c in found)
