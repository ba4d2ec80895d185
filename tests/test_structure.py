"""The package structure: imports point down the layers, no import cycle between packages, and no import of a
groupconv module inside a function (a late import hides a cycle instead of removing it).

Every module under src/groupconv is parsed with `ast` (imports at the top of a module and inside functions,
relative imports resolved), nothing is imported. A package may import its own modules and any package of a
lower layer; never one of its own layer or above.

The layers, bottom to top:

   -1  environment            the process's environment variables (no torch: `import groupconv` reads it first)
    0  ops, data              the functional ops, their backends and the process's memory allocator setting;
                              datasets: neither needs another groupconv package
    1  nn, signal             modules on the ops; 1-D/2-D signal convolution on the ops
    2  models                 the model zoo, built from nn
    3  groupconv              the package's own __init__: the public names of ops, nn, models and signal
    4  analysis, distributed, cost, profiling, correlation and drawings of models and layers; filter groups
       export, inference      across processes (torch.distributed); a model as ONNX, TorchScript or an
                              ExportedProgram; a model prepared for fast eval-mode forwards; none uses another
    5  train, benchmarks      the training loop (may use analysis); the benchmarks (time ops, nn, models
                              with analysis's timing); neither uses the other
    6  cli                    the `groupconv` command, over all of the above
    7  __main__               `python -m groupconv`
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src"
ROOT = "groupconv"

LAYERS = {
    "environment": -1,
    "ops": 0, "data": 0,
    "nn": 1, "signal": 1,
    "models": 2,
    ROOT: 3,
    "analysis": 4, "distributed": 4, "export": 4, "inference": 4,
    "train": 5, "benchmarks": 5,
    "cli": 6,
    "__main__": 7,
}

# Function-level imports of groupconv modules that are allowed, each with its reason, as
# {(importing module, imported module): (the package edge whose presence justifies it, or None, reason)}.
# An exception whose justifying edge has gone is reported as stale: move the import to the top. None: the
# imported module is the one place that imports a heavy optional third-party package at its top.
FUNCTION_LEVEL_EXCEPTIONS = {
    ("groupconv.ops.backends.triton.backend", "groupconv.ops.backends.triton.kernels"): (
        None,
        "kernels.py imports triton (optional, about a second to import, may fail on a machine without a GPU "
        "driver); the backend imports it on first use, so `import groupconv` works without triton"),
    ("groupconv.ops.custom_ops.onnx", "groupconv.ops.custom_ops.onnx_script"): (
        None,
        "onnx_script.py imports onnxscript (optional, about two seconds to import); the ONNX translations import it "
        "when torch's dynamo exporter loads its own, so `import groupconv` works without onnxscript"),
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. groupconv.train.loop
    target: str  # the imported groupconv module, e.g. groupconv.analysis
    line: int
    in_function: bool

    def __str__(self) -> str:
        where = "inside a function" if self.in_function else "at the top"
        return f"{self.module} (line {self.line}, {where}) imports {self.target}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.lru_cache(maxsize=None)
def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted((SOURCE / ROOT).rglob("*.py"))}


def package_of(module: str) -> str:
    """The top-level package (or module) of groupconv that `module` belongs to: groupconv.train.loop -> train."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


def resolve(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The modules an import statement names, relative imports resolved; `from P import name` counts as P.name
    where that is a module, else as P."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level == 0:
        base = node.module
    else:
        is_package = modules()[module].name == "__init__.py"
        package = module.split(".")
        if not is_package:
            package.pop()
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([node.module] if node.module else []))
    named = [f"{base}.{alias.name}" for alias in node.names]
    return [name if name in modules() else base for name in named]


class ImportCollector(ast.NodeVisitor):
    def __init__(self, module: str):
        self.module, self.depth, self.imports = module, 0, []

    def visit_FunctionDef(self, node) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef
    visit_Lambda = visit_FunctionDef

    def visit_Import(self, node) -> None:
        self._add(node)

    def visit_ImportFrom(self, node) -> None:
        self._add(node)

    def _add(self, node) -> None:
        for target in dict.fromkeys(resolve(self.module, node)):
            if target == ROOT or target.startswith(ROOT + "."):
                self.imports.append(Import(self.module, target, node.lineno, self.depth > 0))


@functools.lru_cache(maxsize=None)
def all_imports() -> tuple[Import, ...]:
    found = []
    for module, path in modules().items():
        collector = ImportCollector(module)
        collector.visit(ast.parse(path.read_text(), filename=str(path)))
        found += collector.imports
    return tuple(found)


def package_edges() -> dict[str, set[str]]:
    edges = {package: set() for package in LAYERS}
    for imp in all_imports():
        source, target = package_of(imp.module), package_of(imp.target)
        if source != target:
            edges.setdefault(source, set()).add(target)
    return edges


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, pending = set(), [start]
    while pending:
        for nxt in edges.get(pending.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                pending.append(nxt)
    return seen


def packages() -> list[str]:
    return sorted({package_of(module) for module in modules()})


# ---------------------------------------------------------------- the rules, one test per package


def test_every_package_has_a_layer():
    missing = [package for package in packages() if package not in LAYERS]
    assert not missing, f"place {missing} in LAYERS (and in this file's docstring)"


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_no_import_cycle_goes_through_this_package(package):
    """Every cycle has an edge that does not point down; it is reported under the package that makes it."""
    edges = package_edges()
    closing = sorted(target for target in edges.get(package, ()) if package in reachable(edges, target)
                     and LAYERS[target] >= LAYERS[package])
    assert not closing, (f"{package} imports {closing}, which import {package} back: "
                         + "; ".join(str(imp) for imp in all_imports()
                                     if package_of(imp.module) == package and package_of(imp.target) in closing))


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_imports_point_down_the_layers(package):
    upward = [str(imp) for imp in all_imports() if package_of(imp.module) == package
              and package_of(imp.target) != package and LAYERS[package_of(imp.target)] >= LAYERS[package]]
    assert not upward, f"{package} (layer {LAYERS[package]}) imports its own layer or above:\n" + "\n".join(upward)


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_no_groupconv_import_inside_a_function(package):
    edges = package_edges()
    late = []
    for imp in all_imports():
        if not imp.in_function or package_of(imp.module) != package:
            continue
        exception = FUNCTION_LEVEL_EXCEPTIONS.get((imp.module, imp.target))
        if exception is not None and (exception[0] is None or exception[0][1] in edges.get(exception[0][0], ())):
            continue
        late.append(str(imp))
    assert not late, "import these at the top of their module:\n" + "\n".join(late)


def test_function_level_exceptions_are_still_needed():
    edges = package_edges()
    stale = [f"{module} -> {target}" for (module, target), (edge, _) in FUNCTION_LEVEL_EXCEPTIONS.items()
             if edge is not None and edge[1] not in edges.get(edge[0], ())]
    stale += [f"{module} -> {target}" for module, target in FUNCTION_LEVEL_EXCEPTIONS
              if not any(imp.module == module and imp.target == target for imp in all_imports())]
    assert not stale, f"no longer needed (move the import to the top, drop the exception): {stale}"


# ---------------------------------------------------------------- the checker itself


def test_relative_imports_resolve_to_the_modules_they_name():
    assert resolve("groupconv.train.loop", ast.parse("from ..analysis import count_parameters").body[0]) == [
        "groupconv.analysis"]
    assert resolve("groupconv.train.loop", ast.parse("from .config import TrainConfig").body[0]) == [
        "groupconv.train.config"]
    assert resolve("groupconv.models", ast.parse("from . import alexnet, registry").body[0]) == [
        "groupconv.models.alexnet", "groupconv.models.registry"]
    assert resolve("groupconv.benchmarks.shapes", ast.parse("from .. import nn as gnn").body[0]) == ["groupconv.nn"]
    assert resolve("groupconv.cli", ast.parse("import groupconv.ops.dispatch").body[0]) == ["groupconv.ops.dispatch"]


def test_the_checker_sees_function_level_and_upward_imports():
    collector = ImportCollector("groupconv.models.registry")
    collector.visit(ast.parse("import torch\nfrom .common import width_suffix\n"
                              "def f():\n    from ..train import train\n"))
    found = {(imp.target, imp.in_function) for imp in collector.imports}
    assert found == {("groupconv.models.common", False), ("groupconv.train", True)}
    assert LAYERS[package_of("groupconv.train")] > LAYERS[package_of("groupconv.models.registry")]
    assert reachable({"a": {"b"}, "b": {"a"}}, "a") == {"a", "b"}
