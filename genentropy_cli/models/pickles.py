"""``torch.save`` pickles (``.pt``/``.pth``/``.ckpt``): state dicts safely, whole modules only on trust.

A state dict is read with ``torch.load(weights_only=True)``, which restores tensors and plain
containers and runs no code from the file. A whole pickled ``nn.Module`` cannot be read that
way: unpickling it imports and runs code the file names, so it is refused unless the user
says ``--trust-pickle`` (and then loaded with a warning).
"""

from __future__ import annotations

import pickle
import re
import types
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from genentropy_cli.errors import InputError, first_line
from genentropy_cli.models.usercode import import_paths

PICKLE_WARNING = ("loading a pickled module runs code named in {file}; do this only for files you trust, and "
                  "convert it once: genentropy convert {file} model.safetensors --trust-pickle")


MOVED_MODULES = {
    f"genentropy_cli.{old}": f"genentropy_cli.{new}" for old, new in {
        "architectures": "models.architectures", "references": "core.references", "latents": "core.latents",
        "transforms": "models.transforms", "exported": "models.exported",
    }.items()
}
"""Where classes that pickles made by genentropy 0.1 name now live (the package was split into layers)."""


class UnimportableClass(AttributeError):
    """A class a pickle names that cannot be imported: ``module.name`` as the file says, and
    what ``--class-map`` made of it (None: not mapped)."""

    def __init__(self, module: str, name: str, mapped: str | None, error: BaseException):
        super().__init__(f"{module}.{name}: {first_line(error)}")
        self.module, self.name, self.mapped, self.error = module, name, mapped, error


class _RenamingUnpickler(pickle.Unpickler):
    renamed: Mapping[str, str] = MOVED_MODULES

    def find_class(self, module: str, name: str) -> Any:
        target = self.renamed.get(f"{module}.{name}")
        if target is not None:  # one class mapped to another: "module:Class"
            where, _, attribute = target.partition(":")
        else:
            where, attribute = self.renamed.get(module, module), name
        try:
            return super().find_class(where, attribute)
        except (ImportError, AttributeError) as error:
            mapped = f"{where}:{attribute}" if (where, attribute) != (module, name) else None
            raise UnimportableClass(module, name, mapped, error) from None


def renaming_pickle(class_map: Mapping[str, str] | None = None) -> types.SimpleNamespace:
    """A pickle module for ``torch.load`` that finds moved classes: ``MOVED_MODULES`` and the
    user's ``--class-map`` (``parse_class_map``)."""
    unpickler = type("_MappedUnpickler", (_RenamingUnpickler,), {"renamed": {**MOVED_MODULES, **(class_map or {})}})
    return types.SimpleNamespace(**{name: getattr(pickle, name) for name in ("load", "loads", "dump", "dumps",
                                                                             "UnpicklingError")},
                                 Unpickler=unpickler, __name__="pickle")


def parse_class_map(entries: Sequence[str]) -> dict[str, str]:
    """``--class-map OLD=NEW`` entries as the unpickler's renames.

    ``__main__.Generator=mymodels:Generator`` maps one class (a class saved from a script or
    notebook, or a renamed one) to an importable class; ``oldpkg.nets=newpkg.nets`` maps a
    moved module (every class in it).
    """
    renamed: dict[str, str] = {}
    for entry in entries:
        old, separator, new = (part.strip() for part in str(entry).partition("="))
        module, colon, name = new.partition(":")
        parts = [*old.split("."), *module.split("."), *(name.split(".") if colon else [])]
        if not separator or not all(part.isidentifier() for part in parts) or (colon and "." not in old):
            raise InputError(f"--class-map takes OLD=NEW, e.g. __main__.Generator=mymodels:Generator (a class) or "
                             f"oldpkg.nets=newpkg.nets (a module); got {entry!r}")
        renamed[old] = new
    return renamed


def unimportable_advice(file: Path, error: UnimportableClass) -> str:
    """The refusal for a pickled class that cannot be imported, saying what makes it importable."""
    if error.mapped is not None:
        return (f"{file}: {error.module}.{error.name} is mapped to {error.mapped}, which cannot be imported "
                f"({first_line(error.error)}); add the directory that holds it with --code-path DIR")
    if error.module == "__main__":
        return (f"{file} pickles the class {error.name} of the script or notebook that saved it (module __main__), "
                "which cannot be imported as it was: copy the class into a file DIR/mymodels.py and pass "
                f"--trust-pickle --code-path DIR --class-map __main__.{error.name}=mymodels:{error.name}")
    return (f"{file} names {error.module}.{error.name}, which cannot be imported ({first_line(error.error)}): add the "
            f"directory that holds {error.module} with --code-path DIR, or if the class moved, map it with "
            f"--class-map {error.module}.{error.name}=module:Class")


def _from_main_script(file: Path, name: str) -> InputError:
    """A class pickled from ``__main__`` (the script or notebook that saved the model) is found by
    no import: it loads once the class is importable from --code-path and mapped onto."""
    short = name.rpartition(".")[2]
    return InputError(
        f"{file} holds a pickled {name}: a class defined in the script or notebook that saved it (__main__), "
        f"which no import can find; copy the class into DIR/mymodels.py and pass --trust-pickle --code-path DIR "
        f"--class-map __main__.{short}=mymodels:{short}"
    )


def _refusal(file: Path, error: BaseException) -> InputError:
    names = re.findall(r"GLOBAL ([\w.]+)", str(error))
    what = f"a pickled {names[0]}" if names else "a pickled Python object"
    flags = "--trust-pickle"
    if names and names[0].startswith("__main__."):  # saved from a script or notebook: map the class
        name = names[0].removeprefix("__main__.")
        flags = f"--trust-pickle --code-path DIR --class-map __main__.{name}=mymodels:{name}"
        what += " (defined in the script or notebook that saved it: copy the class into DIR/mymodels.py)"
    return InputError(
        f"{file} holds {what}, not just weights: unpickling it would run code from the file, so it is refused; "
        f"if you trust it, convert it once with `genentropy convert {file} model.safetensors {flags}` "
        f"(then load the .safetensors), or pass {flags}"
    )


def load_torch_save(file: Path, trust_pickle: bool = False, code_path: Sequence[str | Path] = (),
                    class_map: Mapping[str, str] | None = None) -> tuple[Any, bool]:
    """The unpickled object and whether it needed the trusted (code-running) path; ``class_map``
    renames the classes it names (``parse_class_map``)."""
    try:
        return torch.load(str(file), map_location="cpu", weights_only=True), False
    except pickle.UnpicklingError as error:
        if not trust_pickle:
            raise _refusal(file, error) from None
    except Exception as error:  # truncated or corrupt file
        raise InputError(f"{file} is not a loadable torch.save checkpoint ({first_line(error)})") from None
    with import_paths(code_path):
        try:
            return torch.load(str(file), map_location="cpu", weights_only=False,
                              pickle_module=renaming_pickle(class_map)), True
        except UnimportableClass as error:
            raise InputError(unimportable_advice(file, error)) from None
        except (ImportError, AttributeError) as error:
            found = re.search(r"Can't get attribute '([\w.]+)' on <module '[\w.]*__main__'", str(error))
            if found:
                raise _from_main_script(file, f"__main__.{found.group(1)}") from None
            raise InputError(
                f"{file} names code that cannot be imported ({first_line(error)}); add its directory with --code-path DIR"
            ) from None
        except Exception as error:
            raise InputError(f"{file} is not a loadable pickle ({first_line(error)})") from None
