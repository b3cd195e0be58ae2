"""The package's shape, read from its source with ``ast`` (nothing is imported):

* no import cycle between modules (imports inside functions count too);
* layers: a module imports only from its own layer or lower ones,
  base {defaults, errors, envelope, trust, version} < core < run < models < jobs < cli;
  ``genentropy_cli/__init__.py`` (the public API) and ``__main__.py`` are the top, exempt;
* typer, rich, click and matplotlib only inside ``cli/``;
* ``core/`` imports only torch, numpy, the standard library and base/core modules;
* the base modules import only the standard library and each other (help and ``--version`` read
  them without loading torch: ``tests/test_startup.py``);
* no module over ``MAX_MODULE_LINES`` lines, no function or method over ``MAX_FUNCTION_LINES``
  (from its ``def`` line to its last line);
* every ``core/`` module lists its public names in ``__all__``.

What breaks a rule today in a package others are rewriting is listed in ``KNOWN_OFFENDERS``
with its measured size; anything else breaking a rule fails, and so does an entry that no
longer breaks one (delete it: the list only shrinks).
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest

PACKAGE = "genentropy_cli"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE

BASE_MODULES = frozenset({"defaults", "errors", "envelope", "trust", "version"})
LAYERS = ("base", "core", "run", "models", "jobs", "cli")
"""Lowest first: a module may import from its own layer and those before it."""
TOP_MODULES = frozenset({PACKAGE, f"{PACKAGE}.__main__"})
"""The public API and ``python -m``: above every layer, exempt from the layering rule."""

INTERFACE_PACKAGES = frozenset({"typer", "rich", "click", "matplotlib"})
"""Only ``cli/`` may import these: the library runs without a terminal or a plot."""
CORE_THIRD_PARTY = frozenset({"torch", "numpy"})
"""``core/`` is numerics: these, the standard library, base and core modules, nothing else."""

MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80

# Rule breakers in packages being rewritten by others (run/, jobs/, cli/), with the size measured
# when the rule came in: an entry may not grow, and must go once its item complies. Keys:
#   "module <path>"                  lines of a module over MAX_MODULE_LINES
#   "function <path>::<qualname>"    lines of a function or method over MAX_FUNCTION_LINES
#   "import <module> -> <imported>"  an import that breaks the layering or package rules (size 0)
# core/ and models/ may have no entry (``test_known_offenders_are_only_in_packages_being_rewritten``).
KNOWN_OFFENDERS: dict[str, int] = {}
OFFENDERS_ALLOWED_UNDER = ("run", "jobs", "cli")


@dataclass(frozen=True)
class Module:
    name: str  # dotted: genentropy_cli.core.latents (a package: its own name)
    path: Path
    tree: ast.Module
    lines: int

    @property
    def relative(self) -> str:
        return self.path.relative_to(PACKAGE_DIR.parent).as_posix()


@lru_cache(maxsize=None)
def modules() -> dict[str, Module]:
    found = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        text = path.read_text(encoding="utf-8")
        found[".".join(parts)] = Module(".".join(parts), path, ast.parse(text, str(path)), len(text.splitlines()))
    return found


def layer(name: str) -> str:
    """The layer of an internal module: base, core, ..., cli, or top."""
    if name in TOP_MODULES:
        return "top"
    first = name.split(".")[1]
    if first in BASE_MODULES:
        return "base"
    assert first in LAYERS, f"{name} is in no layer: add it to LAYERS or BASE_MODULES"
    return first


def rank(name: str) -> int:
    kind = layer(name)
    return len(LAYERS) if kind == "top" else LAYERS.index(kind)


def internal(dotted: str) -> str:
    """The module a dotted name under the package stands for (its longest known prefix)."""
    parts = dotted.split(".")
    while ".".join(parts) not in modules():
        parts.pop()
    return ".".join(parts)


def _absolute(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.name.split(".")
    if module.path.name != "__init__.py":
        package.pop()
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


@lru_cache(maxsize=None)
def imports(name: str) -> tuple[tuple[str, int], ...]:
    return imports_of(modules()[name])


def imports_of(module: Module) -> tuple[tuple[str, int], ...]:
    """(imported name, line) for every import of a module, at module level or inside functions.
    Internal names are resolved to modules (``from genentropy_cli.core import logdet`` is the module
    logdet); external ones are cut to their top-level package."""
    found = []
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules() else source
                       for alias in node.names]
        else:
            continue
        for target in targets:
            top = target.split(".")[0]
            found.append((internal(target) if top == PACKAGE else top, node.lineno))
    return tuple(sorted(set(found), key=lambda item: (item[1], item[0])))


def import_edges() -> dict[str, set[str]]:
    return {name: {target for target, _ in imports(name) if target.split(".")[0] == PACKAGE and target != name}
            for name in modules()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            successor = next(stack[-1], None)
            if successor is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(successor) == 1:
                return path[path.index(successor):] + [successor]
            elif successor not in state:
                state[successor] = 1
                path.append(successor)
                stack.append(iter(sorted(graph.get(successor, ()))))
    return None


def import_violations() -> dict[str, str]:
    """Imports that break the layering, interface or core rules: key -> why."""
    found = {}
    stdlib = sys.stdlib_module_names
    for name, module in modules().items():
        for target, line in imports(name):
            where = f"{module.relative}:{line}"
            key = f"import {name} -> {target}"
            if target.split(".")[0] == PACKAGE:
                if layer(name) != "top" and rank(target) > rank(name):
                    found[key] = f"{where}: {layer(name)} imports the higher layer {layer(target)}"
                elif layer(name) == "core" and layer(target) not in ("base", "core"):
                    found[key] = f"{where}: core imports {target}"
            elif target in INTERFACE_PACKAGES and layer(name) != "cli":
                found[key] = f"{where}: {target} outside cli/"
            elif layer(name) == "core" and target not in CORE_THIRD_PARTY and target not in stdlib:
                found[key] = f"{where}: core imports {target} (only torch, numpy and the standard library)"
            elif layer(name) == "base" and target not in stdlib:
                found[key] = f"{where}: base imports {target} (only the standard library: start-up reads it)"
    return found


def _functions(body: list[ast.stmt], prefix: str = ""):
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield f"{prefix}{node.name}", node
            yield from _functions(node.body, f"{prefix}{node.name}.<locals>.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node.body, f"{prefix}{node.name}.")
        elif hasattr(node, "body"):  # functions under if/try/with at any level
            for field in ("body", "orelse", "finalbody", "handlers"):
                yield from _functions(getattr(node, field, []) or [], prefix)


def size_violations() -> dict[str, int]:
    """Modules over MAX_MODULE_LINES and functions over MAX_FUNCTION_LINES: key -> lines."""
    found = {}
    for module in modules().values():
        if module.lines > MAX_MODULE_LINES:
            found[f"module {module.relative}"] = module.lines
        for qualname, node in _functions(module.tree.body):
            length = node.end_lineno - node.lineno + 1  # from ``def`` (decorators excluded) to the end
            if length > MAX_FUNCTION_LINES:
                found[f"function {module.relative}::{qualname}"] = length
    return found


def all_violations() -> dict[str, int]:
    return {**{key: 0 for key in import_violations()}, **size_violations()}


# ---------------------------------------------------------------------- tests


def test_every_module_is_in_a_layer():
    assert len(modules()) > 30
    for name in modules():
        assert layer(name) in (*LAYERS, "top")


def test_no_import_cycle():
    cycle = find_cycle(import_edges())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_respect_layers_and_packages():
    reasons = import_violations()
    new = {key: why for key, why in reasons.items() if key not in KNOWN_OFFENDERS}
    assert not new, "imports that break the architecture:\n" + "\n".join(new.values())


def test_modules_and_functions_stay_small():
    sizes = size_violations()
    new = {key: lines for key, lines in sizes.items() if key not in KNOWN_OFFENDERS}
    grown = {key: (lines, KNOWN_OFFENDERS[key]) for key, lines in sizes.items()
             if key in KNOWN_OFFENDERS and lines > KNOWN_OFFENDERS[key]}
    assert not new, f"over {MAX_MODULE_LINES} lines a module / {MAX_FUNCTION_LINES} a function (split it):\n" + "\n".join(
        f"{key}: {lines} lines" for key, lines in new.items())
    assert not grown, "allow-listed offenders grew (lines now, allowed):\n" + "\n".join(
        f"{key}: {sizes}" for key, sizes in grown.items())


def test_known_offenders_still_offend():
    """An entry whose item now complies must be deleted, so the list cannot go stale."""
    stale = sorted(set(KNOWN_OFFENDERS) - set(all_violations()))
    assert not stale, "no longer offenders; delete from KNOWN_OFFENDERS:\n" + "\n".join(stale)


def test_known_offenders_are_only_in_packages_being_rewritten():
    for key in KNOWN_OFFENDERS:
        subject = key.split(" ", 1)[1].replace("/", ".")
        assert subject.split(".")[1] in OFFENDERS_ALLOWED_UNDER, key


def _defined_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(target.id for target in targets if isinstance(target, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


def _declared_all(tree: ast.Module) -> list[str] | None:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return None


def test_core_modules_declare_their_public_names():
    for name, module in modules().items():
        if layer(name) != "core" or module.path.name == "__init__.py":
            continue
        declared = _declared_all(module.tree)
        assert declared, f"{module.relative} has no __all__"
        assert not set(declared) - _defined_names(module.tree), f"{module.relative}: __all__ names what it lacks"


# ---------------------------------------------------------------------- the checker itself


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b", "d"}, "b": set(), "d": {"e"}, "e": {"d"}}, ["d", "e", "d"]),
])
def test_find_cycle(graph, expected):
    assert find_cycle(graph) == expected


def test_a_base_module_importing_a_third_party_package_is_refused(monkeypatch):
    source = "import json\nimport numpy\n"
    fake = Module(f"{PACKAGE}.defaults", PACKAGE_DIR / "defaults.py", ast.parse(source), 2)
    monkeypatch.setitem(modules(), fake.name, fake)
    imports.cache_clear()
    try:
        assert import_violations() == {
            f"import {PACKAGE}.defaults -> numpy": "genentropy_cli/defaults.py:2: base imports numpy "
                                                   "(only the standard library: start-up reads it)"}
    finally:
        imports.cache_clear()


def test_function_level_and_relative_imports_are_seen():
    source = (
        "import numpy.linalg\n"
        "from . import logdet\n"
        "from ..run import planning\n"
        "def later():\n"
        "    from genentropy_cli.core.latents import LatentSpec\n"
        "    import rich.console\n"
    )
    fake = Module(f"{PACKAGE}.core.fake", PACKAGE_DIR / "core" / "fake.py", ast.parse(source), 6)
    assert [target for target, _ in imports_of(fake)] == [
        "numpy", f"{PACKAGE}.core.logdet", f"{PACKAGE}.run.planning", f"{PACKAGE}.core.latents", "rich"]
