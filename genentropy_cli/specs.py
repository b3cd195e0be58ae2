"""Model specs: what builds a decoder from weights, and self-describing safetensors files.

A spec is a small mapping (YAML or JSON):

    architecture: infogan-mnist          # a built-in name (architectures.ARCHITECTURES)
    kwargs: {latent_dim: 62, width: 0.25}
    latent: {shape: [62], distribution: uniform}

``save_safetensors`` embeds it as JSON in the safetensors ``__metadata__`` (whose values
must be strings) under ``genentropy_spec``, so one file describes itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .architectures import ARCHITECTURES
from .errors import InputError

SPEC_METADATA_KEY = "genentropy_spec"


def build_from_spec(spec: dict) -> torch.nn.Module:
    """Instantiate the architecture a spec names, with its keyword arguments."""
    name = spec.get("architecture")
    if name not in ARCHITECTURES:
        raise InputError(
            f"the spec names an unknown architecture {name!r}; built-ins are {', '.join(sorted(ARCHITECTURES))}"
        )
    kwargs = dict(spec.get("kwargs") or {})
    try:
        return ARCHITECTURES[name](**kwargs)
    except TypeError as error:
        raise InputError(f"the spec's kwargs do not fit architecture {name!r}: {error}") from None


def latent_metadata(spec: dict) -> dict:
    """The spec's latent section in the form ``loading.resolve_latent_spec`` reads."""
    latent = spec.get("latent") or {}
    metadata: dict[str, Any] = {}
    if "shape" in latent:
        shape = latent["shape"]
        metadata["latent_shape"] = [int(shape)] if isinstance(shape, int) else [int(size) for size in shape]
    if "distribution" in latent:
        metadata["latent_distribution"] = str(latent["distribution"])
    return metadata


def save_safetensors(module: torch.nn.Module, path: str | Path, spec: dict) -> Path:
    """Write the module's state dict plus the embedded spec; the file then loads by itself."""
    state = {name: tensor.detach().clone().contiguous() for name, tensor in module.state_dict().items()}
    target = Path(path)
    save_file(state, str(target), metadata={SPEC_METADATA_KEY: json.dumps(spec, sort_keys=True)})
    return target


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """The tensors and the embedded spec (None if absent) of a safetensors file."""
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise InputError(f"{path} is not a readable safetensors file ({error})") from None
    text = metadata.get(SPEC_METADATA_KEY)
    if text is None:
        return tensors, None
    try:
        return tensors, json.loads(text)
    except json.JSONDecodeError:
        raise InputError(f"{path} carries an unreadable embedded spec ({SPEC_METADATA_KEY})") from None


def load_state_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> torch.nn.Module:
    """Load weights strictly, naming the tensors that do not match the architecture."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong_shape = sorted(name for name in set(expected) & set(tensors) if expected[name].shape != tensors[name].shape)
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
        if wrong_shape:
            parts.append("wrong shape " + ", ".join(
                f"{name} {tuple(tensors[name].shape)} vs {tuple(expected[name].shape)}" for name in wrong_shape[:5]))
        raise InputError(f"the weights in {source} do not match the architecture: {'; '.join(parts)}")
    module.load_state_dict({name: tensor.to(expected[name].dtype) for name, tensor in tensors.items()})
    return module.eval()
