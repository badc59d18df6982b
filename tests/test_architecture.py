"""The package's shape: no import cycles, no reaching into another module's private names, and a
metric registry that matches what the scorers emit.

The import checks read the source with ``ast`` (nothing is imported), so they see every module,
including ones whose optional dependencies are missing here.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest

import causcell_bench

PKG = "causcell_bench"
ROOT = Path(causcell_bench.__file__).parent

# Import cycles that exist today, each an SCC of the import graph. A new cycle, or a known one
# that grows, fails; a known one that disappears fails too, so this list only ever shrinks.
KNOWN_CYCLES_MODULE_LEVEL: set[frozenset[str]] = set()
# counting deferred imports too: no cycle beyond the module-level ones
KNOWN_CYCLES_DEFERRED: set[frozenset[str]] = set(KNOWN_CYCLES_MODULE_LEVEL)

# ``from causcell_bench.x import _y`` across modules that exist today: (importer, source, name).
KNOWN_PRIVATE_IMPORTS: set[tuple[str, str, str]] = set()


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # a module of ours
    names: tuple[str, ...]  # the names of a ``from`` import; () for ``import x``
    line: int
    module_level: bool  # runs when the importer is imported (not inside a function)


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = (PKG, *path.relative_to(ROOT).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, module_level: bool) -> Iterator[tuple[ast.AST, bool]]:
    """Yield (node, module_level) for every node below ``node``. Function bodies run later, so they
    are not module level; the body of ``if TYPE_CHECKING:`` never runs at all (skipped)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for stmt in child.orelse:
                yield stmt, module_level
                yield from _walk(stmt, module_level)
            continue
        inner = module_level and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        yield child, module_level
        yield from _walk(child, inner)


def _imports(module: str, path: Path) -> list[Import]:
    is_pkg = path.name == "__init__.py"
    out = []
    for node, top in _walk(ast.parse(path.read_text(), str(path)), True):
        if isinstance(node, ast.Import):
            out += [Import(module, a.name, (), node.lineno, top) for a in node.names
                    if a.name.split(".")[0] == PKG]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importer's package
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] != PKG:
                continue
            names = tuple(a.name for a in node.names)
            # ``from pkg import submodule`` imports the submodule itself
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            rest = tuple(n for n in names if f"{target}.{n}" not in MODULES)
            out += [Import(module, s, (), node.lineno, top) for s in subs]
            if rest:
                out.append(Import(module, target, rest, node.lineno, top))
    return out


IMPORTS = [i for m, p in MODULES.items() for i in _imports(m, p)]


def _graph(module_level_only: bool) -> dict[str, dict[str, int]]:
    """importer -> {imported module: line}. Importing ``a.b.c`` first runs the ``__init__`` of ``a``
    and ``a.b``: edges to those too, except to packages that contain the importer (already being
    imported when the importer runs, so Python does not re-enter them)."""
    g: dict[str, dict[str, int]] = {m: {} for m in MODULES}
    for i in IMPORTS:
        if module_level_only and not i.module_level:
            continue
        parts = i.target.split(".")
        for k in range(1, len(parts) + 1):
            t = ".".join(parts[:k])
            own_package = i.importer.startswith(t + ".")
            if t in MODULES and t != i.importer and not own_package:
                g[i.importer].setdefault(t, i.line)
    return g


def _sccs(g: dict[str, dict[str, int]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[frozenset[str]] = []
    for root, edges in g.items():
        if root in index:
            continue
        work = [(root, iter(edges))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(g[w])))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.add(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(frozenset(comp))
    return out


def _describe(g: dict[str, dict[str, int]], comp: frozenset[str]) -> str:
    """A shortest cycle through ``comp``, with the import lines, for the failure message."""
    start = min(comp)
    prev: dict[str, str] = {}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in sorted(t for t in g[v] if t in comp):
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(prev[path[-1]])
                path = [*reversed(path), start]
                return " -> ".join(f"{a} (line {g[a][b]})" for a, b in pairwise(path)) + f" -> {start}"
            if w not in prev:
                prev[w] = v
                queue.append(w)
    raise AssertionError(f"{sorted(comp)} is not a cycle")


def _check_cycles(module_level_only: bool, known: set[frozenset[str]]) -> None:
    g = _graph(module_level_only)
    found = _sccs(g)
    new = [c for c in found if c not in known]
    assert not new, "import cycle(s):\n" + "\n".join(_describe(g, c) for c in new)
    gone = known - set(found)
    assert not gone, f"no longer a cycle, remove from the known list: {[sorted(c) for c in gone]}"


def test_the_scan_sees_the_package() -> None:
    # guards the checks below against passing because the walk found nothing
    assert {"causcell_bench.runner", "causcell_bench.metrics.registry", "causcell_bench.datasets"} <= set(MODULES)
    g = _graph(module_level_only=True)
    assert "causcell_bench.store" in g["causcell_bench.runner"]
    assert "causcell_bench.grid.evaluate" not in g["causcell_bench.grid.cell"]  # imported inside functions only
    assert "causcell_bench.grid.evaluate" in _graph(module_level_only=False)["causcell_bench.grid.cell"]
    # ``from causcell_bench import metrics`` is an edge to the subpackage; a submodule import also runs
    # its package's __init__
    assert "causcell_bench.metrics" in g["causcell_bench.leaderboard.common"]
    assert {"causcell_bench.datasets.spec", "causcell_bench.datasets"} <= set(g["causcell_bench.methods.base"])
    assert "causcell_bench.metrics" not in g["causcell_bench.metrics.expression"]  # its own package


def test_executors_import_the_grid_only() -> None:
    """An executor runs cells through the grid's modules: importing the runner, the CLI or another
    executor would tie the layers back together (the runner picks the executor, not the reverse)."""
    g = _graph(module_level_only=False)
    executors = [m for m in MODULES if m.startswith(f"{PKG}.grid.executors.") and not m.endswith(".base")]
    assert {f"{PKG}.grid.executors.local", f"{PKG}.grid.executors.ray"} <= set(executors)
    for ex in executors:
        banned = {t for t in g[ex] if t in (f"{PKG}.runner", f"{PKG}.api") or t.startswith(f"{PKG}.cli")
                  or (t in executors and t != ex)}
        assert not banned, f"{ex} imports {sorted(banned)}"
    assert not [t for t in g for u in g[t] if t.startswith(f"{PKG}.grid") and u == f"{PKG}.runner"]


def test_cycle_finder_finds_cycles() -> None:
    g = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}, "e": {}}
    assert _sccs(g) == [frozenset({"a", "b", "c"})]
    assert _describe(g, frozenset({"a", "b", "c"})) == "a (line 1) -> b (line 2) -> c (line 3) -> a"
    assert _sccs({"a": {"b": 1}, "b": {}}) == []


def test_no_import_cycle_at_module_level() -> None:
    """Cycles among imports that run at import time: these break depending on which module is
    imported first (a partially initialised module), so none may be added."""
    _check_cycles(True, KNOWN_CYCLES_MODULE_LEVEL)


def test_no_import_cycle_counting_deferred_imports() -> None:
    """Cycles counting imports inside functions too.

    The package defers imports into functions to keep heavy dependencies (torch, scanpy, ray) off
    the import path, not to let two modules lean on each other: a deferred import that closes a cycle
    still means neither module can be understood or tested without the other, against the one-way
    flow cli -> runner -> {datasets, methods, metrics, store, leaderboard}. So this graph is checked
    too, with today's few exceptions listed above.
    """
    _check_cycles(False, KNOWN_CYCLES_DEFERRED)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_uses() -> set[tuple[str, str, str]]:
    """(importer, source module, private name) for every private name one module takes from another:
    ``from causcell_bench.x import _y``, ``x._y`` on a module of ours bound to a name, and importing a
    ``_private`` module from outside the package that holds it."""
    out = set()
    for i in IMPORTS:
        out |= {(i.importer, i.target, n) for n in i.names if _private(n) and i.target != i.importer}
        parts = i.target.split(".")
        for k, part in enumerate(parts):
            owner = ".".join(parts[:k])
            if _private(part) and not (i.importer == owner or i.importer.startswith(owner + ".")):
                out.add((i.importer, owner, part))
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        bound: dict[str, str] = {}  # local name -> module of ours
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == PKG:
                bound |= {a.asname or a.name: f"{node.module}.{a.name}" for a in node.names
                          if f"{node.module}.{a.name}" in MODULES}
            elif isinstance(node, ast.Import):
                bound |= {a.asname: a.name for a in node.names if a.asname and a.name in MODULES}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                owner = _dotted(node.value)
                owner = bound.get(owner, owner) if owner else None
                if owner in MODULES and owner != module:
                    out.add((module, owner, node.attr))
    return out


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return f"{head}.{node.attr}" if head else None
    return None


def test_no_module_takes_another_modules_private_names() -> None:
    found = _private_uses()
    new = found - KNOWN_PRIVATE_IMPORTS
    assert not new, "private names used across modules (make them public, or keep them at home):\n" + "\n".join(
        f"{m} uses {src}.{n}" for m, src, n in sorted(new))
    gone = KNOWN_PRIVATE_IMPORTS - found
    assert not gone, f"fixed, remove from KNOWN_PRIVATE_IMPORTS: {sorted(gone)}"


def test_private_name_check_catches_the_ray_bug_pattern(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scan sees both ways of reaching in: a from-import and an attribute on an imported module
    (``runner._SPLITS`` from the Ray executor is how the split-cache bug hid)."""
    src = ("from causcell_bench.store import _hidden\n"
           "def f():\n    from causcell_bench import runner\n    return runner._cache\n")
    fake = "causcell_bench.fake_module"
    monkeypatch.setitem(MODULES, fake, tmp_path / "fake_module.py")
    (tmp_path / "fake_module.py").write_text(src)
    monkeypatch.setattr(sys.modules[__name__], "IMPORTS", [*IMPORTS, *_imports(fake, tmp_path / "fake_module.py")])
    found = _private_uses()
    assert (fake, "causcell_bench.store", "_hidden") in found
    assert (fake, "causcell_bench.runner", "_cache") in found


# --- (c) the metric registry against what the pipeline emits --------------------------------------


@pytest.fixture(scope="module")
def emitted_metrics(tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    """Every metric one grid cell emits: the negative control has every capability, and an OOD fold
    of the synthetic data has fine labels, ground-truth counterfactuals and held-out populations,
    so each scorer (disentanglement, reconstruction, truth, populations) runs."""
    from causcell_bench.config import RunConfig
    from causcell_bench.datasets import make_splits
    from causcell_bench.grid.cell import evaluate_cell
    from causcell_bench.grid.data import DATA_CACHE
    from causcell_bench.grid.record import CellKey

    cfg = RunConfig(datasets=["synthetic"], methods=["negative_control"], n_folds=3, folds=[0],
                    settings=["OOD"], dataset_kwargs={"n_cells": 300, "n_genes": 60}, device="cpu")
    adata, spec = DATA_CACHE.data("synthetic", cfg)
    DATA_CACHE.seed_splits("synthetic", cfg, "OOD", make_splits(adata, spec, "OOD", n_folds=3, seed=0))
    try:
        key = CellKey("synthetic", "negative_control", "OOD", 0, 0)
        return evaluate_cell(cfg, key, tmp_path_factory.mktemp("no-run"))["metrics"]
    finally:
        DATA_CACHE.clear()


def test_every_emitted_metric_is_registered(emitted_metrics: dict[str, float]) -> None:
    from causcell_bench.metrics import METRICS, base_name

    assert len(emitted_metrics) > 50
    unknown = sorted({base_name(n) for n in emitted_metrics} - set(METRICS))
    assert not unknown, f"emitted but not declared in the metric registry: {unknown}"


def test_every_registered_metric_is_emitted(emitted_metrics: dict[str, float]) -> None:
    """A declared metric that no scorer emits is a dead row in ``list metrics`` and the docs."""
    from causcell_bench.metrics import METRICS, base_name

    dead = sorted(set(METRICS) - {base_name(n) for n in emitted_metrics})
    assert not dead, f"declared but never emitted by a grid cell: {dead}"


def test_each_metric_names_the_function_that_computes_it() -> None:
    from causcell_bench.metrics import METRICS

    for info in METRICS.values():
        module, _, qualname = info.defined_in.rpartition(".")
        assert module in MODULES, info
        assert callable(getattr(importlib.import_module(module), qualname, None)), info


def test_metric_docs_list_every_registered_metric() -> None:
    """docs/metrics.md carries the table docs/gen_metrics.py prints from the registry."""
    docs = Path(__file__).resolve().parents[1] / "docs"
    spec = importlib.util.spec_from_file_location("gen_metrics", docs / "gen_metrics.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.table() in (docs / "metrics.md").read_text(), (
        "docs/metrics.md is out of date: paste the output of `python docs/gen_metrics.py` over its table")
