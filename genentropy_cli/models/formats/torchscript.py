"""TorchScript archives (``.pt``, ``.pth``, ``.ts``; scripted or traced), optionally carrying a
``genentropy.json`` extra file with ``latent_shape``, ``latent_distribution``, ``label``, ``call``."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from genentropy_cli.core.labels import LabelSpec
from genentropy_cli.core.latents import LatentSpec
from genentropy_cli.errors import InputError, first_line
from genentropy_cli.models.formats import ModelFormat, ModelSource, register_format
from genentropy_cli.models.loaded import LoadedModel
from genentropy_cli.models.metadata import METADATA_FILE, metadata_record, parse_metadata

__all__ = ["TORCHSCRIPT_SUFFIXES", "load_torchscript", "save_torchscript"]

TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts")


def looks_like_torchscript(source: ModelSource) -> bool:
    leaves = source.zip_leaves
    if leaves is None:
        return False
    if "archive_format" in leaves or any(name.startswith("models/") for name in leaves):
        return False  # a torch.export program
    if "constants.pkl" in leaves or any(name.startswith("code/") for name in leaves):
        return True
    return source.suffix in TORCHSCRIPT_SUFFIXES and "data.pkl" not in leaves  # its loader names what is wrong


def load_torchscript(file: Path) -> LoadedModel:
    extra_files = {METADATA_FILE: ""}
    try:
        module = torch.jit.load(str(file), map_location="cpu", _extra_files=extra_files)
    except Exception as error:  # corrupt archive, or a zip that is not TorchScript
        raise InputError(f"{file} is not a loadable TorchScript model ({first_line(error)})") from None
    metadata = parse_metadata(extra_files[METADATA_FILE], file)
    return LoadedModel(module, str(file), "torchscript", metadata, {key: "metadata" for key in metadata})


def save_torchscript(module: torch.nn.Module | torch.jit.ScriptModule, path: str | Path,
                     latent: LatentSpec | None = None, extra: dict | None = None,
                     example: torch.Tensor | None = None, label: LabelSpec | None = None) -> Path:
    """Save ``module`` as TorchScript (scripted, or traced on ``example``) recording its latent
    spec (and with ``label`` a conditional decoder's label input, traced with a positional label)."""
    if isinstance(module, torch.jit.ScriptModule):
        scripted = module
    elif example is not None:
        inputs = example if label is None else (
            example, label.labels(label.chosen[0], example.shape[0], example.device, example.dtype))
        scripted = torch.jit.trace(module.eval(), inputs)
    else:
        scripted = torch.jit.script(module.eval())
    target = Path(path)
    record = metadata_record(latent, extra, label)
    torch.jit.save(scripted, str(target), _extra_files={METADATA_FILE: json.dumps(record)})
    return target


register_format(ModelFormat("torchscript", "TorchScript (.pt, .pth, .ts)", looks_like_torchscript,
                            lambda source, request: load_torchscript(source.path), runs_code=True))
