"""The package's layers, read from its import graph (module-level and function-level imports, parsed with ast):
no import cycle between modules, the Hub remote-code files (`models/parrot/`) import only torch, transformers (with
its numpy, PIL and optional torchvision), the standard library and each other, and the leaf modules import nothing from the package."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = "transformers_parrot"
ROOT = Path(__file__).resolve().parents[1] / "src" / PACKAGE
CORE = f"{PACKAGE}.models.parrot"
LEAVES = (f"{PACKAGE}.cli_utils", f"{PACKAGE}.languages", f"{PACKAGE}.benchmark_specs")
# numpy, PIL: what transformers' image processors use; torchvision: probed for transformers' image-processor backend
CORE_THIRD_PARTY = {"torch", "transformers", "numpy", "PIL", "torchvision"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of every module `path` imports, wherever the import statement is (functions included)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module
            names.add(target)
            # `from . import runner` imports a module; `from .data import X` imports the module `data`
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


def _graph() -> dict[str, set[str]]:
    """{module: package modules it imports} over src/transformers_parrot (a name that is an attribute is dropped)."""
    modules = {_module_name(path): path for path in ROOT.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        graph[name] = {target for target in _imports(path) if target in modules and target != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None. A package's `__init__` importing its own
    submodules is not an edge back: importing `a.b` runs `a/__init__` first, so `a.b -> a` is not a cycle."""
    edges = {m: {t for t in targets if not m.startswith(f"{t}.")} for m, targets in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_import_graph_is_read():
    graph = _graph()
    assert f"{CORE}.modeling_parrot" in graph[PACKAGE]
    assert f"{CORE}.configuration_parrot" in graph[f"{CORE}.modeling_parrot"]
    assert f"{PACKAGE}.languages" in graph[f"{PACKAGE}.chat.examples"]
    # function-level imports count too
    assert f"{PACKAGE}.modelcard" in graph[f"{PACKAGE}.conversion.converter"]


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "a.x": {"a"}, "a.y": {"a.x"}}) is None


def test_no_import_cycle():
    cycle = _cycle(_graph())
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


@pytest.mark.parametrize("path", sorted((ROOT / "models" / "parrot").glob("*.py")), ids=lambda p: p.name)
def test_remote_code_imports_only_torch_transformers_and_each_other(path):
    stdlib = sys.stdlib_module_names
    wrong = set()
    for target in _imports(path):
        top = target.split(".")[0]
        if target.startswith(f"{PACKAGE}."):
            if not target.startswith(f"{CORE}.") and target != CORE:
                wrong.add(target)
        elif top not in stdlib and top not in CORE_THIRD_PARTY and top != "__future__":
            wrong.add(target)
    assert not wrong, f"{path.name} imports {sorted(wrong)}"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    absolute = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0]
    assert not [m for m in absolute if m and m.startswith(PACKAGE)], "remote code must import its siblings relatively"


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaf_modules_import_nothing_from_the_package(leaf):
    graph = _graph()
    assert leaf in graph
    assert graph[leaf] == set(), f"{leaf} imports {sorted(graph[leaf])}"
