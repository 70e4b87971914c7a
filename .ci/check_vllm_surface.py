"""Check the vLLM plugin against a vLLM release without importing it: every vLLM name the plugin imports exists, and
every vLLM method it overrides, calls on a vLLM base class or wraps keeps a signature the plugin's code fits.

    python .ci/check_vllm_surface.py SOURCE [--plugin DIR]

SOURCE is a vLLM wheel (``pip download --no-deps vllm==X``), or a folder that holds the ``vllm`` package (an
installed site-packages). Only the Python sources are parsed (``ast``): no GPU, no vLLM dependencies. Prints one
line per checked item and exits 1 when one fails, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import ast
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

PLUGIN = Path(__file__).resolve().parents[1] / "src" / "transformers_parrot" / "vllm"
# vLLM's model protocol (what the engine calls on every model class), checked like a base class of the plugin's model
MODEL_PROTOCOLS = ("vllm.model_executor.models.interfaces_base.VllmModelForTextGeneration",)
# methods vLLM calls with keyword arguments only (it builds models as `model_class(vllm_config=..., prefix=...)`)
KEYWORD_CALLS = frozenset({"__init__"})
# methods the plugin wraps on a vLLM class: (class, methods, parameters that must stay positional before the
# keyword-only ones); see transformers_parrot/vllm/prompts.py
WRAPPED = (("vllm.renderers.base.BaseRenderer", ("_process_tokens", "_process_tokens_async"), ("self", "prompt")),)


class Source:
    """The Python files of one vLLM release, parsed on demand."""

    def __init__(self, path: Path):
        if path.is_file() and path.suffix == ".whl":
            archive = zipfile.ZipFile(path)
            self._names = {n for n in archive.namelist() if n.endswith(".py")}
            self._read = lambda name: archive.read(name).decode("utf-8")
            self.label = path.name
        elif (path / "vllm" / "__init__.py").is_file():
            self._names = {str(p.relative_to(path)) for p in (path / "vllm").rglob("*.py")}
            self._read = lambda name: (path / name).read_text(encoding="utf-8")
            self.label = str(path)
        else:
            raise ValueError(f"{path}: not a vLLM wheel (.whl) nor a folder holding the vllm package")
        if "vllm/__init__.py" not in self._names:
            raise ValueError(f"{path}: holds no vllm/__init__.py")
        self._trees: dict[str, ast.Module | None] = {}

    def file_of(self, module: str) -> str | None:
        base = module.replace(".", "/")
        for name in (f"{base}.py", f"{base}/__init__.py"):
            if name in self._names:
                return name
        return None

    def tree(self, module: str) -> ast.Module | None:
        if module not in self._trees:
            name = self.file_of(module)
            self._trees[module] = ast.parse(self._read(name)) if name else None
        return self._trees[module]


@dataclass
class Found:
    """Where a name resolved: a class or function definition (node) in a module, or a module, or a lazy export."""

    module: str
    node: ast.AST | None = None
    kind: str = "definition"


def _absolute(module: str, level: int, target: str | None, is_package: bool) -> str:
    if not level:
        return target or ""
    parts = module.split(".")
    parts = parts if is_package else parts[:-1]
    parts = parts[: len(parts) - (level - 1)]
    return ".".join(parts + ([target] if target else []))


def _module_statements(body: list[ast.stmt]):
    """A module's statements, also those under `if` / `try` (not inside functions or classes)."""
    for node in body:
        yield node
        if isinstance(node, ast.If):
            yield from _module_statements(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            yield from _module_statements(
                node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
            )


def resolve(source: Source, module: str, name: str, depth: int = 0) -> Found | None:
    """Find `name` in `module`: a definition, a re-export (followed), a submodule or a lazy `MODULE_ATTRS` entry."""
    if depth > 20:
        return None
    tree = source.tree(module)
    if tree is None:
        return None
    is_package = source.file_of(module).endswith("__init__.py")
    found: Found | None = None
    for node in _module_statements(tree.body):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return Found(module, node)
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                found = found or Found(module, node, "assignment")
    for node in ast.walk(tree):  # re-exports, also under `if TYPE_CHECKING:` / try blocks
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    origin = _absolute(module, node.level, node.module, is_package)
                    result = resolve(source, origin, alias.name, depth + 1)
                    if result is None and source.file_of(f"{origin}.{alias.name}"):
                        result = Found(f"{origin}.{alias.name}", kind="module")
                    if result is not None:
                        return result
    if found is not None:
        return found
    if source.file_of(f"{module}.{name}"):
        return Found(f"{module}.{name}", kind="module")
    for node in tree.body:  # vllm/__init__.py: MODULE_ATTRS = {"LLM": ".entrypoints.llm:LLM", ...}
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            for key, value in zip(node.value.keys, node.value.values):
                if isinstance(key, ast.Constant) and key.value == name and isinstance(value, ast.Constant):
                    target, _, attr = str(value.value).partition(":")
                    origin = _absolute(module, len(target) - len(target.lstrip(".")), target.lstrip("."), is_package)
                    return resolve(source, origin, attr, depth + 1)
    return None


def _base_expr_name(expr: ast.expr) -> str | None:
    if isinstance(expr, ast.Subscript):  # Generic[...] bases, e.g. BaseDummyInputsBuilder[Info]
        expr = expr.value
    if isinstance(expr, ast.Name):
        return expr.id
    if isinstance(expr, ast.Attribute):
        return ast.unparse(expr)
    return None


def class_chain(source: Source, found: Found) -> list[Found]:
    """`found` (a vLLM class) and its vLLM base classes, depth first (an approximation of the MRO)."""
    chain, todo, seen = [], [found], set()
    while todo:
        item = todo.pop(0)
        if not isinstance(item.node, ast.ClassDef) or (item.module, item.node.name) in seen:
            continue
        seen.add((item.module, item.node.name))
        chain.append(item)
        for base in item.node.bases:
            name = _base_expr_name(base)
            if name and "." not in name:
                parent = resolve(source, item.module, name)
                if parent is not None:
                    todo.append(parent)
    return chain


def find_member(source: Source, chain: list[Found], name: str) -> tuple[Found, ast.AST] | None:
    """The method, class attribute or `self.<name> = ...` assignment that defines `name` in the class chain."""
    for item in chain:
        for node in item.node.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
                return item, node
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
                return item, node
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                return item, node
    for item in chain:
        for node in ast.walk(item.node):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and node.attr == name
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
            ):
                return item, node
    return None


@dataclass(frozen=True)
class Signature:
    positional: tuple[tuple[str, bool], ...]  # (name, has default), self included
    keyword_only: tuple[tuple[str, bool], ...]
    var_positional: bool
    var_keyword: bool

    @classmethod
    def of(cls, node: ast.FunctionDef | ast.AsyncFunctionDef) -> Signature:
        args = node.args
        positional = [*args.posonlyargs, *args.args]
        first_default = len(positional) - len(args.defaults)
        return cls(
            tuple((a.arg, i >= first_default) for i, a in enumerate(positional)),
            tuple((a.arg, d is not None) for a, d in zip(args.kwonlyargs, args.kw_defaults)),
            args.vararg is not None,
            args.kwarg is not None,
        )

    def __str__(self) -> str:
        parts = [n + ("=…" if d else "") for n, d in self.positional]
        if self.var_positional or self.keyword_only:
            parts.append("*" if not self.var_positional else "*args")
        parts += [n + ("=…" if d else "") for n, d in self.keyword_only]
        parts += ["**kwargs"] if self.var_keyword else []
        return f"({', '.join(parts)})"


def override_problems(base: Signature, ours: Signature, by_keyword: bool = False) -> list[str]:
    """Why `ours` cannot stand in for `base`: every call vLLM makes by `base` must bind to `ours` the same way.

    `by_keyword`: vLLM passes the method's parameters by name (model constructors:
    `model_class(vllm_config=..., prefix=...)`), so a positional parameter may be keyword-only here.
    """
    problems = []
    ours_pos = [n for n, _ in ours.positional]
    ours_kw = dict(ours.keyword_only)
    base_names = {n for n, _ in base.positional} | dict(base.keyword_only).keys()
    for index, (name, _) in enumerate(base.positional):
        if by_keyword and name not in ours_pos and (name in ours_kw or ours.var_keyword):
            continue
        if index < len(ours_pos):
            if ours_pos[index] != name:
                problems.append(f"positional parameter {index} is {name!r} in vLLM, {ours_pos[index]!r} here")
        elif not ours.var_positional:
            problems.append(f"vLLM passes {name!r}, which this override does not take")
    for name, has_default in ours.positional[len(base.positional) :]:
        if not has_default and name not in base_names:
            problems.append(f"this override requires {name!r}, which vLLM does not pass")
    ours_names = set(ours_pos) | ours_kw.keys()
    for name, _ in base.keyword_only:
        if name not in ours_names and not ours.var_keyword:
            problems.append(f"vLLM passes keyword {name!r}, which this override does not take")
    for name, has_default in ours.keyword_only:
        if not has_default and name not in base_names:
            problems.append(f"this override requires keyword {name!r}, which vLLM does not pass")
    if base.var_keyword and not ours.var_keyword:
        problems.append("vLLM's method takes **kwargs, this override does not")
    return problems


@dataclass
class PluginModule:
    name: str  # e.g. "processing"
    tree: ast.Module
    vllm_imports: dict[str, tuple[str, str]]  # local name -> (vllm module, name)


def read_plugin(plugin: Path) -> list[PluginModule]:
    modules = []
    for path in sorted(plugin.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imports = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "vllm":
                for alias in node.names:
                    imports[alias.asname or alias.name] = (node.module, alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "vllm":
                        imports[alias.asname or alias.name] = (alias.name, "")
        modules.append(PluginModule(path.stem, tree, imports))
    return modules


def _self_attributes(cls: ast.ClassDef) -> tuple[set[str], set[str]]:
    """Attributes read on `self` / `cls` in a class body, and those the class defines or assigns itself."""
    used, own = set(), set()
    for node in cls.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            own.add(node.name)
        elif isinstance(node, ast.Assign):
            own |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            own.add(node.target.id)
    for node in ast.walk(cls):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            (own if isinstance(node.ctx, ast.Store) else used).add(node.attr)
    return used, own


def check(source: Source, plugin: Path) -> list[tuple[bool, str]]:
    results: list[tuple[bool, str]] = []
    modules = read_plugin(plugin)
    for module in modules:
        for vllm_module, name in sorted(module.vllm_imports.values()):
            what = f"{vllm_module}.{name}" if name else vllm_module
            if not name:
                ok = source.file_of(vllm_module) is not None
            else:
                ok = resolve(source, vllm_module, name) is not None
            results.append((ok, f"import {what} ({module.name}.py)"))

    for module in modules:
        for cls in (n for n in module.tree.body if isinstance(n, ast.ClassDef)):
            bases = []
            for base in cls.bases:
                name = _base_expr_name(base)
                if name in module.vllm_imports:
                    found = resolve(source, *module.vllm_imports[name])
                    if found is not None:
                        bases.append(found)
            if any(n in {"SupportsMultiModal"} for n in map(_base_expr_name, cls.bases)):
                for protocol in MODEL_PROTOCOLS:
                    mod, _, name = protocol.rpartition(".")
                    found = resolve(source, mod, name)
                    results.append((found is not None, f"model protocol {protocol} ({cls.name})"))
                    bases += [found] if found else []
            if not bases:
                continue
            chain = [item for base in bases for item in class_chain(source, base)]
            for node in cls.body:
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                member = find_member(source, chain, node.name)
                if member is None or not isinstance(member[1], (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue  # the plugin's own method
                owner, base_node = member
                base_sig, ours = Signature.of(base_node), Signature.of(node)
                problems = override_problems(base_sig, ours, by_keyword=node.name in KEYWORD_CALLS)
                label = (
                    f"{cls.name}.{node.name}{ours} overrides {owner.module}.{owner.node.name}.{node.name}{base_sig}"
                )
                results.append((not problems, label + ("" if not problems else ": " + "; ".join(problems))))
            used, own = _self_attributes(cls)
            for attr in sorted(used - own):
                member = find_member(source, chain, attr)
                if member is None and _is_torch_module_attribute(cls, module, attr):
                    continue
                results.append((member is not None, f"{cls.name}: self.{attr} is defined by its vLLM base classes"))
        # attributes read on imported vLLM classes, e.g. MultiModalFieldConfig.batched
        for node in ast.walk(module.tree):
            if not (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and isinstance(node.ctx, ast.Load)
                and module.vllm_imports.get(node.value.id, ("", ""))[1]
            ):
                continue
            found = resolve(source, *module.vllm_imports[node.value.id])
            if found is not None and isinstance(found.node, ast.ClassDef):
                member = find_member(source, class_chain(source, found), node.attr)
                results.append((member is not None, f"{node.value.id}.{node.attr} ({module.name}.py)"))

    for qualified, methods, positional in WRAPPED:
        mod, _, name = qualified.rpartition(".")
        found = resolve(source, mod, name)
        for method in methods:
            member = find_member(source, class_chain(source, found), method) if found else None
            ok = member is not None and isinstance(member[1], (ast.FunctionDef, ast.AsyncFunctionDef))
            detail = ""
            if ok:
                signature = Signature.of(member[1])
                ok = tuple(n for n, _ in signature.positional) == positional
                detail = f"{signature}"
            results.append((ok, f"wrapped {qualified}.{method}{detail}, positional {positional}"))
    return sorted(set(results), key=lambda r: r[1])


def _is_torch_module_attribute(cls: ast.ClassDef, module: PluginModule, attr: str) -> bool:
    """`self.<attr>` of a class that also derives from torch's nn.Module (e.g. `self.modules`)."""
    if not any(_base_expr_name(b) in ("nn.Module", "torch.nn.Module", "Module") for b in cls.bases):
        return False
    from torch import nn

    return hasattr(nn.Module, attr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="check_vllm_surface", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a vLLM wheel or a folder holding the vllm package")
    parser.add_argument("--plugin", type=Path, default=PLUGIN, help="the plugin's folder (default: %(default)s)")
    args = parser.parse_args(argv)
    if not args.source.exists():
        parser.error(f"source: {args.source} does not exist")
    if not (args.plugin / "__init__.py").is_file():
        parser.error(f"--plugin: {args.plugin} holds no __init__.py")
    try:
        source = Source(args.source)
    except (ValueError, zipfile.BadZipFile) as error:
        parser.error(f"source: {error}")
    results = check(source, args.plugin)
    for ok, line in results:
        print(("ok   " if ok else "FAIL ") + line)
    failed = sum(not ok for ok, _ in results)
    print(f"vLLM surface of the plugin against {source.label}: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
