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
from typing import Any, Sequence

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


class _RenamingUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(MOVED_MODULES.get(module, module), name)


RENAMING_PICKLE = types.SimpleNamespace(**{name: getattr(pickle, name) for name in ("load", "loads", "dump", "dumps",
                                                                                       "UnpicklingError")},
                                        Unpickler=_RenamingUnpickler, __name__="pickle")
"""A pickle module for ``torch.load`` that finds moved classes (``MOVED_MODULES``)."""


def _from_main_script(file: Path, name: str) -> InputError:
    """A class pickled from ``__main__`` (the script that saved the model) is found by no import:
    neither --trust-pickle nor --code-path can bring it back."""
    return InputError(
        f"{file} holds a pickled {name}: a class defined in the script that saved it (__main__), which no "
        f"import can find, so no option here can load it; the class must be importable: move it into a module "
        f"(e.g. mymodels.py), and either save the model again from there or save its state_dict with a spec "
        f"naming import: mymodels:{name.rpartition('.')[2]}, then pass --code-path DIR (the folder of mymodels.py)"
    )


def _refusal(file: Path, error: BaseException) -> InputError:
    names = re.findall(r"GLOBAL ([\w.]+)", str(error))
    if names and names[0].startswith("__main__."):
        return _from_main_script(file, names[0])
    what = f"a pickled {names[0]}" if names else "a pickled Python object"
    return InputError(
        f"{file} holds {what}, not just weights: unpickling it would run code from the file, so it is refused; "
        f"if you trust it, convert it once with `genentropy convert {file} model.safetensors --trust-pickle` "
        "(then load the .safetensors), or pass --trust-pickle"
    )


def load_torch_save(file: Path, trust_pickle: bool = False, code_path: Sequence[str | Path] = ()) -> tuple[Any, bool]:
    """The unpickled object and whether it needed the trusted (code-running) path."""
    try:
        return torch.load(str(file), map_location="cpu", weights_only=True), False
    except pickle.UnpicklingError as error:
        if not trust_pickle:
            raise _refusal(file, error) from None
    except Exception as error:  # truncated or corrupt file
        raise InputError(f"{file} is not a loadable torch.save checkpoint ({first_line(error)})") from None
    with import_paths(code_path):
        try:
            return torch.load(str(file), map_location="cpu", weights_only=False, pickle_module=RENAMING_PICKLE), True
        except (ImportError, AttributeError) as error:
            found = re.search(r"Can't get attribute '([\w.]+)' on <module '[\w.]*__main__'", str(error))
            if found:
                raise _from_main_script(file, f"__main__.{found.group(1)}") from None
            raise InputError(
                f"{file} names code that cannot be imported ({first_line(error)}); add its directory with --code-path DIR"
            ) from None
        except Exception as error:
            raise InputError(f"{file} is not a loadable pickle ({first_line(error)})") from None
