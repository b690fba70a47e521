"""The package's shape: no import cycles in lmctrack/ (every import counts, module-level and
inside functions: a lazy import only hides a cycle until the function runs), small modules, and
names that say their layer."""

from __future__ import annotations

import ast
from pathlib import Path

import lmctrack

ROOT = Path(lmctrack.__file__).parent


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(source: str, name: str, package: str, modules: set[str]) -> set[str]:
    """The lmctrack modules that module `name` (in `package`) imports anywhere in `source`,
    TYPE_CHECKING blocks included; `from pkg import name` counts as importing pkg.name when that
    is a module, else pkg. The module's own packages are left out (importing a.b runs
    a/__init__ first, but a.b importing from a is no cycle of ours)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in modules else base)
    return {m for m in found if m in modules and m != name and not name.startswith(m + ".")}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(ROOT.rglob("*.py"))
    modules = {_module(p) for p in paths}
    graph = {}
    for path in paths:
        name = _module(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = _imports(path.read_text(), name, package, modules)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of modules (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_detector_finds_cycles_and_lazy_relative_and_type_checking_imports():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    modules = {
        "lmctrack.store",
        "lmctrack.store.core",
        "lmctrack.execution.local",
        "lmctrack.engine.train",
    }
    source = (
        "import os\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from lmctrack.execution.local import TrainJob\n"
        "def f():\n    from lmctrack.engine import train\n    from .core import Store\n"
    )
    found = _imports(source, "lmctrack.store.runs", "lmctrack.store", modules)
    assert found == {"lmctrack.execution.local", "lmctrack.engine.train", "lmctrack.store.core"}


def test_lmctrack_has_no_import_cycle():
    graph = import_graph()
    assert "lmctrack.workflows.fork" in graph and graph["lmctrack.workflows.fork"]
    assert cycles(graph) == []


def test_no_module_is_over_400_lines():
    long = {
        str(path.relative_to(ROOT)): n
        for path in ROOT.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > 400
    }
    assert long == {}


def test_no_workflow_module_shares_an_engine_modules_name():
    """workflows/ composes the engine; a shared name (train, interpolate, ...) hides which is
    which at every import."""
    workflows = {p.stem for p in (ROOT / "workflows").glob("*.py")} - {"__init__"}
    engine = {p.stem for p in (ROOT / "engine").rglob("*.py")} | {
        p.name for p in (ROOT / "engine").iterdir() if p.is_dir()
    }
    assert workflows & engine == set()


# The layers from the bottom; a module imports its own layer's modules or lower layers' only, and
# the packages of one layer do not import each other. The pyfunc loader belongs with the store.
LAYERS = [
    ["errors"],
    ["config"],
    ["engine"],
    ["execution", "results", "store"],
    ["workflows"],
    ["api"],
    ["cli"],
    ["__main__", ""],  # `python -m lmctrack`, and the package's lazy API names
]
PLACE = {"mlflow_model": "store"}


def package(module: str) -> str:
    """The top-level part of lmctrack a module belongs to ('' for lmctrack itself)."""
    first = module.split(".")[1] if "." in module else ""
    return PLACE.get(first, first)


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    rank = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    found = []
    for module, imported in graph.items():
        a = package(module)
        for other in sorted(imported):
            b = package(other)
            if a == b:
                continue
            if a not in rank or b not in rank:
                found.append(f"{module} -> {other}: a package outside the layers")
            elif rank[b] > rank[a]:
                found.append(f"{module} -> {other}: imports a higher layer")
            elif rank[b] == rank[a]:
                found.append(f"{module} -> {other}: imports a sibling of its layer")
    return found


def test_the_layering_check_finds_upward_sideways_and_unknown_imports():
    graph = {
        "lmctrack.engine.train": {"lmctrack.store.core", "lmctrack.config.params"},
        "lmctrack.results.plots": {"lmctrack.execution.local", "lmctrack.engine.interpolate"},
        "lmctrack.store.runs": {"lmctrack.mlflow_model", "lmctrack.helpers"},
        "lmctrack.cli.commands": {"lmctrack.api.paper", "lmctrack.errors"},
    }
    assert layering_violations(graph) == [
        "lmctrack.engine.train -> lmctrack.store.core: imports a higher layer",
        "lmctrack.results.plots -> lmctrack.execution.local: imports a sibling of its layer",
        "lmctrack.store.runs -> lmctrack.helpers: a package outside the layers",
    ]


def test_every_import_goes_down_the_layers():
    assert layering_violations(import_graph()) == []


def test_the_top_of_the_package_is_its_layers():
    entries = sorted(p.name for p in ROOT.iterdir() if p.name != "__pycache__")
    assert len(entries) <= 14, entries
    assert {p.name for p in ROOT.iterdir() if p.is_dir()} - {"__pycache__"} == {
        name for layer in LAYERS for name in layer
    } - {"errors", "__main__", ""}


def test_the_engine_knows_no_mlflow_and_no_store():
    """The engine is pure PyTorch: it can be used, tested and read without a tracking store."""
    found = []
    for path in (ROOT / "engine").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            found += [
                f"{path.relative_to(ROOT)}: {n}"
                for n in names
                if n.split(".")[0] == "mlflow" or n.startswith("lmctrack.store")
            ]
    assert found == []
