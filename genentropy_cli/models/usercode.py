"""Importing a spec's ``import: package.module:Class``: only from directories the user names.

Importing a module runs its top-level code, so genentropy imports a spec's class from two
places only:

* genentropy's own package (``genentropy_cli.models.architectures:MLPDecoder``): no user code;
* the ``--code-path`` directories: the module's top-level package must be found in one of them
  (never on ``sys.path``, in the working directory, or among the modules already loaded).

A spec file, a sidecar or a safetensors file's embedded spec cannot make genentropy run code
from anywhere else, whatever it names. docs/safety.md states the whole trust model.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator, Sequence

import torch

from genentropy_cli.errors import InputError, first_line

BUILTIN_PACKAGE = "genentropy_cli"
"""``import:`` targets inside this package are genentropy's own classes: no user code runs."""

IMPORT_TARGET = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
"""``package.module:Class`` (absolute module path, dotted attribute)."""

_IMPORTED_FROM_CODE_PATH: dict[str, tuple[str, ...]] = {}
"""Top-level modules this process imported from --code-path directories (and from which ones):
another run of the same process (tests, the Python API) may import the same name from another
directory, which then replaces them."""


def check_import_target(target: Any, source: str = "the spec") -> str:
    """``target`` if it reads ``package.module:Class`` (absolute, dotted names), else an InputError."""
    if not isinstance(target, str) or not IMPORT_TARGET.match(target.strip()):
        raise InputError(f"{source}: import takes an absolute 'package.module:ClassName' (no relative '.module', "
                         f"no spaces), got {target!r}")
    return target.strip()


def code_directories(directories: Sequence[str | Path]) -> list[Path]:
    """The --code-path directories, resolved; one that is not a directory is an InputError."""
    folders = []
    for directory in directories:
        folder = Path(directory)
        if not folder.is_dir():
            raise InputError(f"--code-path {folder} is not a directory")
        folders.append(folder.resolve())
    return folders


@contextmanager
def import_paths(directories: Sequence[str | Path] = ()) -> Iterator[None]:
    """Put ``--code-path`` directories first on ``sys.path`` while user code is imported."""
    added = []
    for folder in code_directories(directories):
        text = str(folder)
        if text not in sys.path:
            sys.path.insert(0, text)
            added.append(text)
    try:
        yield
    finally:
        for text in added:
            if text in sys.path:
                sys.path.remove(text)


def _located_in(module: ModuleType, folders: Sequence[Path]) -> bool:
    """Whether the module's file (a namespace package: its folders) lies in one of ``folders``."""
    places = [getattr(module, "__file__", None), *list(getattr(module, "__path__", []) or [])]
    for place in filter(None, places):
        resolved = Path(place).resolve()
        if any(resolved == folder or folder in resolved.parents for folder in folders):
            return True
    return False


def _forget(top: str) -> None:
    for name in [name for name in sys.modules if name == top or name.startswith(top + ".")]:
        del sys.modules[name]


def import_user_module(module_name: str, target: str, code_path: Sequence[str | Path]) -> ModuleType:
    """Import ``module_name`` from the --code-path directories only (see the module docstring)."""
    folders = code_directories(code_path)
    top = module_name.split(".")[0]
    if not folders:
        raise InputError(
            f"spec import {target!r} would run the Python module {top}; genentropy imports a spec's code only "
            f"from directories you name: pass --code-path DIR (the directory that holds {top}), for code you trust"
        )
    if importlib.machinery.PathFinder.find_spec(top, [str(folder) for folder in folders]) is None:
        raise InputError(f"cannot import {module_name} for spec import {target!r}: no module {top} in --code-path "
                         f"{', '.join(str(folder) for folder in folders)}; add the directory that holds it with "
                         "--code-path DIR")
    loaded = sys.modules.get(top)
    if loaded is not None and not _located_in(loaded, folders):
        if top not in _IMPORTED_FROM_CODE_PATH:
            raise InputError(f"spec import {target!r}: a module named {top} is already loaded from elsewhere "
                             f"({getattr(loaded, '__file__', None) or 'built in'}), so the one in --code-path would "
                             "not be used; rename your module")
        _forget(top)  # imported earlier in this process from another --code-path directory
    with import_paths(folders):
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise InputError(f"cannot import {module_name} for spec import {target!r} ({first_line(error)}); "
                             "add the directory that holds it with --code-path DIR") from None
    _IMPORTED_FROM_CODE_PATH[top] = tuple(str(folder) for folder in folders)
    if not _located_in(module, folders):
        raise InputError(f"spec import {target!r}: {module_name} did not come from --code-path")
    return module


def import_class(target: str, code_path: Sequence[str | Path] = ()) -> type[torch.nn.Module]:
    """The ``nn.Module`` subclass that ``package.module:ClassName`` names, from genentropy's own
    package or the ``--code-path`` directories."""
    module_name, _, attribute = check_import_target(target).partition(":")
    if module_name == BUILTIN_PACKAGE or module_name.startswith(BUILTIN_PACKAGE + "."):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise InputError(f"spec import {target!r}: genentropy has no module {module_name}") from None
    else:
        module = import_user_module(module_name, target, code_path)
    found: Any = module
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise InputError(f"module {module_name} has no {attribute!r} (spec import {target!r})")
        found = getattr(found, part)
    if not (isinstance(found, type) and issubclass(found, torch.nn.Module)):
        raise InputError(f"spec import {target!r} is not a torch.nn.Module subclass")
    return found
