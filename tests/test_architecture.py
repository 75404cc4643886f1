"""The package's import layers (docs/architecture.md): no import cycle, and no module importing a higher layer.

Every ``import`` of an intrs module is read from the source with ``ast``, function-level imports included (an
import deferred into a function to dodge a cycle is still a dependency). Nothing is imported or run.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "intrs"

# Low to high. A module may import its own layer and the layers below it, never one above.
LAYERS: list[tuple[str, set[str]]] = [
    ("foundations", {"errors", "choices", "progress", "files", "rng", "tables", "about", "threads"}),
    ("below smoothing", {"data", "models", "discrete", "noise", "confidence", "certificate", "intmodel", "engine", "kernels",
                         "torch_engine", "devices", "quant", "checkpoint", "training", "attacks", "tflite_export",
                         "onnx_export"}),
    ("smoothing", {"smoothing"}),
    ("runs", {"systems", "certification", "results", "scaleout", "c_export", "deploy"}),
    ("experiments and reports", {"experiments", "report", "bench", "demo"}),
    ("command line", {"cli"}),
]
LAYER_OF = {module: rank for rank, (_, modules) in enumerate(LAYERS) for module in modules}


def module_names() -> list[str]:
    return sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def intrs_imports(module: str) -> set[str]:
    """The intrs modules ``module`` imports anywhere in its source (top level or inside functions)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(), filename=f"{module}.py")
    names = set(module_names())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "intrs" and len(parts) > 1:
                    found.add(parts[1])
        elif isinstance(node, ast.ImportFrom):
            if node.level > 1:
                raise AssertionError(f"{module}: a relative import above the package ({'.' * node.level})")
            if node.level == 1:
                target = node.module
            elif node.module and node.module.split(".")[0] == "intrs":
                target = ".".join(node.module.split(".")[1:]) or None
            else:
                continue
            if target:  # from .x import y, from intrs.x import y
                found.add(target.split(".")[0])
            else:  # from . import x, from intrs import x: a submodule, or a name of the package root
                found.update(alias.name for alias in node.names if alias.name in names)
    found.discard(module)
    return found


def import_graph() -> dict[str, set[str]]:
    return {module: intrs_imports(module) for module in module_names()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (a list of modules, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_every_module_has_a_layer():
    missing = [m for m in module_names() if m not in LAYER_OF]
    stale = sorted(set(LAYER_OF) - set(module_names()))
    assert not missing, f"place these modules in a layer here and in docs/architecture.md: {missing}"
    assert not stale, f"these modules are listed in a layer but do not exist: {stale}"


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_imports_a_higher_layer():
    upward = [f"{module} ({LAYERS[LAYER_OF[module]][0]}) imports {dep} ({LAYERS[LAYER_OF[dep]][0]})"
              for module, deps in import_graph().items() for dep in sorted(deps)
              if module in LAYER_OF and dep in LAYER_OF and LAYER_OF[dep] > LAYER_OF[module]]
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_the_package_root_imports_nothing_eagerly():
    """``import intrs`` stays cheap: the root names each public name's home and imports it on first use."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    top = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert not top, "intrs/__init__.py imports at its top level"


def test_the_checker_sees_cycles_and_function_level_imports():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert "choices" in intrs_imports("report")  # report reads EXPERIMENTS from choices
    assert "engine" in intrs_imports("experiments")  # "from . import engine" inside run_pgd_linf
