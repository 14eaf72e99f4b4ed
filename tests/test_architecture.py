"""The package's import graph: no cycles (function-level imports included), and the low
layers (io, patches, augment, metrics, instances, normalize) import nothing above them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medseg"
LOW_LAYERS = ("io", "patches", "augment", "metrics", "instances", "normalize")
"""Modules that the rest of medseg builds on (ARCHITECTURE.md section 1)."""
FOUNDATION = ("typing", "options", "_validate", "_limits", "_dicom", "_errors", "_files")
"""What everyone may import: types, vocabularies, shared checks, no algorithms."""


def _modules(package: Path) -> dict[str, Path]:
    out = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the medseg modules it imports, at any depth of its code (function-level
    imports too). ``from medseg import x`` counts as importing ``medseg.x``; the lazy
    name table of ``medseg/__init__.py`` is not an import."""
    modules = _modules(package)

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                if target.startswith("medseg"):
                    found = known(target)
                    if found and found != name and found != "medseg":
                        graph[name].add(found)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _layer(name: str) -> str:
    return name.split(".")[1] if name.count(".") else name


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """``a -> b`` for every low-layer module importing a module above the low layers."""
    allowed = set(LOW_LAYERS) | set(FOUNDATION)
    return sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if _layer(module) in LOW_LAYERS
        for target in targets
        if _layer(target) not in allowed
    )


def test_the_import_graph_has_no_cycles():
    assert cycles(import_graph()) == []


def test_low_layers_import_nothing_above_them():
    assert layer_violations(import_graph()) == []


def test_the_checks_find_a_cycle_and_an_inverted_layer(tmp_path):
    """The test above can fail: a package with a function-level cycle and an io module that
    imports the predictor."""
    package = tmp_path / "medseg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "io.py").write_text("def f():\n    from medseg.predict import g\n")
    (package / "predict.py").write_text("from medseg import io\n\ndef g():\n    pass\n")
    graph = import_graph(package)
    assert graph["medseg.io"] == {"medseg.predict"}
    assert cycles(graph) == [["medseg.io", "medseg.predict"]]
    assert layer_violations(graph) == ["medseg.io -> medseg.predict"]


@pytest.mark.parametrize("name", ["io", "patches", "instances", "metrics", "normalize"])
def test_low_layers_exist(name):
    assert any(_layer(m) == name for m in import_graph())


FAMILIES = {
    "api": ("results", "_api_inputs"),
    "batch": ("_batch_jobs", "_batch_tasks", "_batch_plan"),
    "cohort": ("_cohort_tables", "tissue_stats"),
    "checkpoint": ("_checkpoint_settings",),
    "export": ("_export_checks", "_export_convert"),
    "manifest": ("_manifest_types", "_manifest_parse", "_manifest_checks"),
    "predict": ("_inference", "_predict_volume", "_predict_objects"),
    "train": ("train_step", "validation", "_train_log"),
}
"""A concept split for size: its front module and the modules it re-exports from
(ARCHITECTURE.md section 1). A package (``io/``, ``augment/``, ``metrics/``, ``models/``)
is one family too."""


def _family(module: str) -> str:
    layer = _layer(module)
    for front, parts in FAMILIES.items():
        if layer in parts:
            return front
    return layer


def private_imports(package: Path = PACKAGE) -> list[str]:
    """``importer <- module._name`` for every private name imported across families."""
    modules = _modules(package)
    found = []
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module):
                continue
            if not node.module.startswith("medseg"):
                continue
            for alias in node.names:
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                if not private or f"{node.module}.{alias.name}" in modules:
                    continue  # a public name, or a private module (_limits, _dicom)
                if _family(node.module) != _family(name):
                    found.append(f"{name} <- {node.module}.{alias.name}")
    return sorted(found)


def test_no_private_name_is_imported_across_families():
    assert private_imports() == []


def test_the_private_name_check_finds_one(tmp_path):
    package = tmp_path / "medseg"
    (package / "io").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "io" / "__init__.py").write_text("from medseg.io._png import _read_png\n")
    (package / "io" / "_png.py").write_text("def _read_png():\n    pass\n")
    (package / "report.py").write_text("def f():\n    from medseg.io._png import _read_png\n")
    assert private_imports(package) == ["medseg.report <- medseg.io._png._read_png"]


MAX_MODULE_LINES = 800
"""ARCHITECTURE.md section 1: past about 600 lines a module usually holds two concepts."""


def test_no_module_is_over_the_line_limit():
    sizes = {
        name: len(path.read_text(encoding="utf-8").splitlines())
        for name, path in _modules(PACKAGE).items()
    }
    assert {n: s for n, s in sizes.items() if s > MAX_MODULE_LINES} == {}


def test_the_type_checking_block_lists_every_lazy_export():
    """What editors and mypy see (the TYPE_CHECKING imports of medseg/__init__.py) is what
    ``medseg.<name>`` gives at run time (its lazy ``_EXPORTS`` table): same names, same
    modules."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    typed = {}
    exports = {}
    for node in tree.body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.module
                typed.update({a.name: imp.module for a in imp.names})
        if isinstance(node, ast.AnnAssign | ast.Assign):
            target = node.target if isinstance(node, ast.AnnAssign) else node.targets[0]
            if getattr(target, "id", None) == "_EXPORTS":
                exports = ast.literal_eval(node.value)
    assert exports and typed == exports
