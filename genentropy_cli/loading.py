"""Loading decoders from disk, with the latent spec they record about themselves.

A TorchScript file may carry a ``genentropy.json`` extra file (``save_torchscript``) with
``latent_shape`` and ``latent_distribution``, so a model can be evaluated from its path alone.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import InputError
from .latents import LatentSpec, distribution_label, make_latent_spec, parse_distribution
from .specs import build_from_spec, latent_metadata, load_state_into, read_safetensors

METADATA_FILE = "genentropy.json"
"""Name of the extra file in a TorchScript archive that records the latent spec."""

TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts")


@dataclass
class LoadedModel:
    """A decoder with what its file says about it."""

    decoder: Any
    path: str
    format: str
    metadata: dict = field(default_factory=dict)

    def describe(self) -> dict:
        return {"path": self.path, "format": self.format}


def _check_file(path: str | Path) -> Path:
    file = Path(path)
    if not file.exists():
        raise InputError(f"model file not found: {file}")
    if file.is_dir():
        raise InputError(f"{file} is a directory; give the path of a model file")
    return file


SUPPORTED_FORMATS = "TorchScript (.pt, .pth, .ts) or self-describing safetensors (.safetensors)"


def _looks_like_safetensors(file: Path) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON header."""
    with file.open("rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100 * 1024**2


def load_model(path: str | Path) -> LoadedModel:
    """Load a decoder, choosing the format by content: TorchScript archives (scripted or
    traced) or safetensors files with an embedded spec."""
    file = _check_file(path)
    if file.suffix == ".safetensors" or _looks_like_safetensors(file):
        return load_safetensors_model(file)
    if not zipfile.is_zipfile(file):
        raise InputError(f"{file} is not a model genentropy can load: expected {SUPPORTED_FORMATS}")
    return load_torchscript(file)


def load_safetensors_model(file: Path) -> LoadedModel:
    tensors, spec = read_safetensors(file)
    if spec is None:
        raise InputError(f"{file} holds weights but no spec; embed one with genentropy_cli.specs.save_safetensors")
    module = load_state_into(build_from_spec(spec), tensors, str(file))
    return LoadedModel(module, str(file), "safetensors", {**latent_metadata(spec), "spec": spec})


def load_torchscript(file: Path) -> LoadedModel:
    extra_files = {METADATA_FILE: ""}
    try:
        module = torch.jit.load(str(file), map_location="cpu", _extra_files=extra_files)
    except Exception as error:  # corrupt archive, or a zip that is not TorchScript
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"{file} is not a loadable TorchScript model ({reason})") from None
    metadata: dict = {}
    if extra_files[METADATA_FILE]:
        try:
            metadata = json.loads(extra_files[METADATA_FILE])
        except (json.JSONDecodeError, TypeError):
            raise InputError(f"{file} carries an unreadable {METADATA_FILE}; re-save it with save_torchscript") from None
    return LoadedModel(module, str(file), "torchscript", metadata)


def save_torchscript(module: torch.nn.Module | torch.jit.ScriptModule, path: str | Path,
                     latent: LatentSpec | None = None, extra: dict | None = None,
                     example: torch.Tensor | None = None) -> Path:
    """Save ``module`` as TorchScript (scripted, or traced on ``example``) recording its latent spec."""
    if isinstance(module, torch.jit.ScriptModule):
        scripted = module
    elif example is not None:
        scripted = torch.jit.trace(module.eval(), example)
    else:
        scripted = torch.jit.script(module.eval())
    metadata = dict(extra or {})
    if latent is not None:
        metadata["latent_shape"] = list(latent.shape)
        metadata["latent_distribution"] = distribution_label(latent.distribution)
    target = Path(path)
    torch.jit.save(scripted, str(target), _extra_files={METADATA_FILE: json.dumps(metadata)})
    return target


def resolve_latent_spec(
    loaded: LoadedModel,
    latent_dim: int | None = None,
    latent_shape: tuple[int, ...] | None = None,
    latent_distribution: str | None = None,
) -> tuple[LatentSpec, dict]:
    """Latent spec from flags, else from the model's metadata; also says where each part came from."""
    if latent_dim is not None and latent_shape is not None:
        raise InputError("give either --latent-dim or --latent-shape, not both")
    if latent_dim is not None and latent_dim <= 0:
        raise InputError(f"--latent-dim must be positive, got {latent_dim}")
    origin: dict = {}
    if latent_shape is not None:
        shape, origin["shape"] = tuple(latent_shape), "flag"
    elif latent_dim is not None:
        shape, origin["shape"] = (int(latent_dim),), "flag"
    elif loaded.metadata.get("latent_shape"):
        shape, origin["shape"] = tuple(int(size) for size in loaded.metadata["latent_shape"]), "metadata"
    else:
        raise InputError(
            f"{loaded.path} does not record its latent size; pass --latent-dim N or --latent-shape A,B,C"
        )
    if latent_distribution is not None:
        distribution, origin["distribution"] = parse_distribution(latent_distribution), "flag"
    elif loaded.metadata.get("latent_distribution"):
        distribution, origin["distribution"] = parse_distribution(loaded.metadata["latent_distribution"]), "metadata"
    else:
        distribution, origin["distribution"] = parse_distribution("normal"), "default"
    return make_latent_spec(shape, distribution), origin
