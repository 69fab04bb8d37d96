"""The import graph of our packages follows the layering rule and has no cycles.

Every ``.py`` file under our package directories is parsed with ``ast`` (nothing
is imported), and every ``import`` / ``from ... import`` is collected at any
depth: at module level, inside functions and methods, and under
``if TYPE_CHECKING:``. An import hidden inside a function is still a
dependency, so it counts for the layering rule and for the package-level cycle
check. The module-level cycle check counts only the imports that run when the
module is first imported (module body, class bodies, top-level ``if``/``try``
blocks; not function bodies and not ``TYPE_CHECKING`` blocks), since those are
the cycles that break at import time.

benchmarks/ and tests/ may import anything; they are not checked.
"""

from __future__ import annotations

import ast
import functools
import itertools
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# The layering rule. A package may import itself and the packages listed for it,
# nothing else of ours (third-party packages and the standard library are always
# allowed). Lower layers never import higher ones, and only streamrec (plus
# benchmarks/ and tests/, which are not checked) may import evaluation or streamrec.
ALLOWED_IMPORTS: dict[str, tuple[str, ...]] = {
    "core": (),
    "producer": ("core",),
    "offline": ("core", "producer"),
    "consumer": ("core", "producer"),
    "serving": ("core", "producer", "offline", "consumer"),
    "evaluation": ("core", "producer", "offline", "consumer", "serving"),
    "streamrec": ("core", "producer", "offline", "consumer", "serving", "evaluation"),
}
OURS = frozenset(ALLOWED_IMPORTS)
# Top-level directories that are not packages under the rule.
UNCHECKED_DIRS = frozenset({"benchmarks", "tests", "docs"})


@dataclass(frozen=True)
class Import:
    """One imported module of ours, as written in one file."""

    path: str  # repo-relative, e.g. "serving/app.py"
    line: int
    source: str  # importing module, e.g. "serving.app"
    target: str  # imported module, e.g. "offline.index"
    eager: bool  # runs at import time: not in a function, not under TYPE_CHECKING

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class Tree:
    modules: frozenset[str]  # every module of ours, e.g. "serving", "serving.app"
    paths: frozenset[str]  # every parsed file, repo-relative
    imports: tuple[Import, ...]  # imports of our packages only


def top(module: str) -> str:
    return module.partition(".")[0]


def module_name(rel: Path) -> tuple[str, bool]:
    """Dotted module name of a repo-relative file, and whether it is a package's __init__."""
    parts = list(rel.with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


class _Collector(ast.NodeVisitor):
    """Collects (line, resolved target, names, eager) for every import in a module."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.package = module if is_package else module.rpartition(".")[0]
        self.found: list[tuple[int, str, tuple[str, ...], bool]] = []
        self._lazy = 0  # depth of function bodies / TYPE_CHECKING blocks

    def _lazily(self, nodes: Iterable[ast.AST]) -> None:
        self._lazy += 1
        for node in nodes:
            self.visit(node)
        self._lazy -= 1

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._lazily(node.body)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._lazily(node.body)

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self._lazily(node.body)
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append((node.lineno, alias.name, (), self._lazy == 0))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".") if self.package else []
            if node.level - 1 > len(base):
                raise AssertionError(f"line {node.lineno}: relative import beyond the top level")
            base = base[: len(base) - (node.level - 1)]
            target = ".".join([*base, *([node.module] if node.module else [])])
        else:
            target = node.module or ""
        names = tuple(alias.name for alias in node.names if alias.name != "*")
        self.found.append((node.lineno, target, names, self._lazy == 0))


def collect(
    source: str, path: str, module: str, is_package: bool, modules: frozenset[str]
) -> list[Import]:
    """The imports of our packages in one file's source, resolved against `modules`."""
    collector = _Collector(module, is_package)
    collector.visit(ast.parse(source, filename=path))
    found: list[Import] = []
    for line, target, names, eager in collector.found:
        if top(target) not in OURS:
            continue
        # `from package import name` imports the module package.name where that is a module.
        submodules = [f"{target}.{name}" for name in names if f"{target}.{name}" in modules]
        if not submodules or len(submodules) < len(names):
            found.append(Import(path, line, module, target, eager))
        found.extend(Import(path, line, module, sub, eager) for sub in submodules)
    return found


def package_dirs() -> list[Path]:
    """Top-level directories of the repo that hold Python files, other than the unchecked ones."""
    return sorted(
        child
        for child in REPO.iterdir()
        if child.is_dir()
        and not child.name.startswith(".")
        and child.name not in UNCHECKED_DIRS
        and not child.name.endswith(".egg-info")
        and any(child.rglob("*.py"))
    )


@functools.cache
def walk() -> Tree:
    files: dict[str, tuple[Path, str, bool]] = {}
    for name in sorted(OURS):
        for file in sorted((REPO / name).rglob("*.py")):
            rel = file.relative_to(REPO)
            if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
                continue
            module, is_package = module_name(rel)
            files[rel.as_posix()] = (file, module, is_package)
    modules = frozenset(module for _, module, _ in files.values())
    imports: list[Import] = []
    for rel_path, (file, module, is_package) in files.items():
        source = file.read_text(encoding="utf-8")
        imports.extend(collect(source, rel_path, module, is_package, modules))
    return Tree(modules, frozenset(files), tuple(imports))


def _adjacency(graph: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    """Sorted adjacency lists over every node named in `graph`, without self-loops."""
    adjacency: dict[str, list[str]] = {}
    for node, targets in graph.items():
        adjacency.setdefault(node, [])
        for target in targets:
            adjacency.setdefault(target, [])
            if target != node:
                adjacency[node].append(target)
    for targets in adjacency.values():
        targets.sort()
    return adjacency


def tangles(graph: Mapping[str, Iterable[str]]) -> list[set[str]]:
    """The strongly connected components with more than one node (Tarjan, iterative)."""
    adjacency = _adjacency(graph)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[set[str]] = []
    for root in sorted(adjacency):
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if i < len(adjacency[node]):
                work.append((node, i + 1))
                nxt = adjacency[node][i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: set[str] = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(component)
    return components


def _shortest_cycle(adjacency: Mapping[str, list[str]], tangle: set[str]) -> list[str]:
    """A shortest cycle through the smallest node of `tangle`, as [a, b, ..., a] (BFS)."""
    start = min(tangle)
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if start in adjacency[node]:
            path = [node]
            while path[-1] != start:
                path.append(previous[path[-1]])
            return [*reversed(path), start]
        for nxt in adjacency[node]:
            if nxt in tangle and nxt not in previous and nxt != start:
                previous[nxt] = node
                queue.append(nxt)
    raise AssertionError(f"no cycle in the component {sorted(tangle)}")


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """One cycle per strongly connected component, as a path [a, b, ..., a].

    Self-loops are ignored. Each cycle is a shortest one through the smallest
    node of its component, so the answer is deterministic.
    """
    adjacency = _adjacency(graph)
    return sorted(_shortest_cycle(adjacency, tangle) for tangle in tangles(graph))


def describe_cycles(
    graph: Mapping[str, Iterable[str]], witnesses: Mapping[tuple[str, str], Import]
) -> list[str]:
    """Each cycle with the file:line of one import per edge, and the rest of its tangle."""
    adjacency = _adjacency(graph)
    lines = []
    for tangle in sorted(tangles(graph), key=min):
        cycle = _shortest_cycle(adjacency, tangle)
        steps = "; ".join(
            f"{witnesses[a, b].where} imports {witnesses[a, b].target}"
            for a, b in itertools.pairwise(cycle)
        )
        lines.append(f"{' -> '.join(cycle)} ({steps})")
        if len(tangle) > len(cycle) - 1:
            lines.append(f"    (more cycles among: {', '.join(sorted(tangle))})")
    return lines


# --- the rule on the real tree -------------------------------------------------------------


def test_no_package_imports_against_the_layering_rule() -> None:
    violations = []
    for imp in walk().imports:
        src, dst = top(imp.source), top(imp.target)
        allowed = ALLOWED_IMPORTS[src]
        if dst != src and dst not in allowed:
            may = f"only {', '.join(allowed)}" if allowed else "no other package of ours"
            violations.append(f"{imp.where} imports {imp.target}: {src} may import {may}")
    assert not violations, "wrong-way imports:\n" + "\n".join(violations)


def test_no_import_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = {}
    witnesses: dict[tuple[str, str], Import] = {}
    for imp in walk().imports:
        src, dst = top(imp.source), top(imp.target)
        graph.setdefault(src, set()).add(dst)
        witnesses.setdefault((src, dst), imp)
    cycles = describe_cycles(graph, witnesses)
    assert not cycles, "package import cycles (any depth):\n" + "\n".join(cycles)


def test_no_import_cycle_between_modules_at_import_time() -> None:
    tree = walk()
    graph: dict[str, set[str]] = {}
    witnesses: dict[tuple[str, str], Import] = {}
    for imp in tree.imports:
        if not imp.eager:
            continue
        # `import a.b.c` where a.b.c is a name, not a module: the module is the longest prefix.
        target = imp.target
        while target not in tree.modules and "." in target:
            target = target.rpartition(".")[0]
        if target not in tree.modules:
            continue
        graph.setdefault(imp.source, set()).add(target)
        witnesses.setdefault((imp.source, target), imp)
    cycles = describe_cycles(graph, witnesses)
    assert not cycles, "module-level import cycles:\n" + "\n".join(cycles)


# --- the walker and the table are not vacuous -----------------------------------------------


def test_the_walker_sees_the_files_and_edges_it_should() -> None:
    tree = walk()
    assert {"consumer/worker.py", "serving/app.py", "core/events.py"} <= tree.paths
    assert {"consumer.worker", "serving.app", "serving"} <= tree.modules
    edges = {(top(imp.source), top(imp.target)) for imp in tree.imports}
    assert {("consumer", "core"), ("serving", "offline"), ("consumer", "producer")} <= edges
    # Function-level imports are collected too (streamrec's CLI imports lazily).
    assert any(not imp.eager for imp in tree.imports)


def test_the_table_covers_every_package_and_is_layered() -> None:
    assert [path.name for path in package_dirs()] == sorted(OURS)
    for package, allowed in ALLOWED_IMPORTS.items():
        assert set(allowed) <= OURS - {package}, package
    assert find_cycles(ALLOWED_IMPORTS) == []
    importers_of_top = {p for p, allowed in ALLOWED_IMPORTS.items() if "evaluation" in allowed}
    assert importers_of_top == {"streamrec"}
    assert not any("streamrec" in allowed for allowed in ALLOWED_IMPORTS.values())


def test_collect_finds_imports_at_any_depth_and_resolves_them() -> None:
    source = "\n".join(
        [
            "from typing import TYPE_CHECKING",  # 1: not ours
            "import os, core.events",  # 2
            "from . import blend, helper",  # 3: blend is a module, helper a name
            "from .reader import ReadSpec",  # 4
            "from ..consumer.logic import step",  # 5
            "if TYPE_CHECKING:",  # 6
            "    from serving.state import AppState",  # 7
            "else:",  # 8
            "    import producer",  # 9
            "def f() -> None:",  # 10
            "    import streamrec.local.stack",  # 11
            "class C:",  # 12
            "    from offline import index",  # 13
            "    def m(self) -> None:",  # 14
            "        from evaluation.tune import x",  # 15
        ]
    )
    modules = frozenset(
        {"serving", "serving.blend", "serving.reader", "serving.state", "offline", "offline.index"}
    )
    found = collect(source, "serving/app.py", "serving.app", False, modules)
    assert [(imp.line, imp.target, imp.eager) for imp in found] == [
        (2, "core.events", True),
        (3, "serving", True),
        (3, "serving.blend", True),
        (4, "serving.reader", True),
        (5, "consumer.logic", True),
        (7, "serving.state", False),
        (9, "producer", True),
        (11, "streamrec.local.stack", False),
        (13, "offline.index", True),
        (15, "evaluation.tune", False),
    ]
    # In a package's __init__, `.` is the package itself.
    found = collect("from .app import x", "serving/__init__.py", "serving", True, modules)
    assert [imp.target for imp in found] == ["serving.app"]


def test_find_cycles_on_known_graphs() -> None:
    assert find_cycles({"a": ["b"], "b": ["c"], "c": ["a"]}) == [["a", "b", "c", "a"]]
    assert find_cycles({"c": ["a"], "b": ["c"], "a": ["b"]}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": ["b", "c"], "b": ["c", "d"], "c": ["d"], "d": []}) == []
    assert find_cycles({"a": ["a", "b"], "b": ["b"]}) == []  # self-loops are not cycles
    # Two separate cycles, one of them reached only through a DAG edge; the shortest is reported.
    graph = {"a": ["b"], "b": ["a", "x"], "x": ["y"], "y": ["z", "x"], "z": ["x"]}
    assert find_cycles(graph) == [["a", "b", "a"], ["x", "y", "x"]]
