"""``torch.save`` files (``.pt``/``.pth``/``.ckpt``): state dicts and training checkpoints built
with a spec's architecture, whole pickled modules only under ``--trust-pickle`` (``pickles.py``).
A StyleGAN-style snapshot (a dict holding ``G_ema``) gives ``G_ema`` when nothing is selected."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from genentropy_cli.errors import InputError
from genentropy_cli.models.formats import LoadRequest, ModelFormat, ModelSource, register_format
from genentropy_cli.models.formats.building import build_decoder, missing_spec, select_weights
from genentropy_cli.models.loaded import LoadedModel
from genentropy_cli.models.pickles import PICKLE_WARNING, load_torch_save
from genentropy_cli.models.selection import find_candidates
from genentropy_cli.models.specs import has_architecture

__all__ = ["EMA_GENERATOR_KEY", "loaded_from_content"]

LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
"""The first bytes of torch.save's legacy (non-zip) format: a pickled magic number."""

EMA_GENERATOR_KEY = "G_ema"
"""The generator NVlabs' training loops snapshot beside G and D (the moving average of G's weights,
what their generate scripts and released models use)."""


def looks_like_torch_save(source: ModelSource) -> bool:
    leaves = source.zip_leaves
    if leaves is not None:
        return "data.pkl" in leaves
    return source.head(len(LEGACY_TORCH_MAGIC)) == LEGACY_TORCH_MAGIC


def _default_selection(content: Any, request: LoadRequest) -> tuple[str | None, str | None]:
    """``--select``, else ``G_ema`` for a snapshot dict holding that module (with the note saying so)."""
    if request.select is not None or (request.spec or {}).get("weights"):
        return request.select, None
    if isinstance(content, Mapping) and isinstance(content.get(EMA_GENERATOR_KEY), torch.nn.Module):
        others = [str(key) for key, value in content.items()
                  if isinstance(value, torch.nn.Module) and key != EMA_GENERATOR_KEY]
        beside = f" (beside {', '.join(others)})" if others else ""
        return EMA_GENERATOR_KEY, (f"using {EMA_GENERATOR_KEY}{beside}: the moving average of the generator's weights, "
                                   f"which StyleGAN's own scripts sample from; pass --select G for the raw generator")
    return None, None


def loaded_from_content(file: Path, content: Any, trusted: bool, request: LoadRequest, format_name: str) -> LoadedModel:
    """The decoder in an unpickled object: a module as it is (trusted), a sub-model chosen by
    ``--select`` (or ``G_ema``), or a state dict built with the spec's architecture."""
    select, note = _default_selection(content, request)
    if isinstance(content, torch.nn.Module) and select is None:
        chosen, selection = content, {}
    else:
        try:
            chosen, selection = select_weights(content, request.spec, select, str(file), request.code_path)
        except InputError:
            if has_architecture(request.spec) or select is not None or any(
                    candidate.kind == "module" for candidate in find_candidates(content)):
                raise
            raise missing_spec(file, "a training checkpoint") from None
    if isinstance(chosen, torch.nn.Module):
        loaded = LoadedModel(chosen, str(file), format_name, selection=selection)
        loaded.warnings.append(PICKLE_WARNING.format(file=file))
    else:
        if not has_architecture(request.spec):
            raise missing_spec(file, "a state dict")
        assert request.spec is not None
        decoder = build_decoder(request.spec, chosen, str(file), request.code_path, content, selection)
        loaded = LoadedModel(decoder, str(file), "state-dict", spec=request.spec, selection=selection)
        if trusted:
            loaded.warnings.append(PICKLE_WARNING.format(file=file))
    if note:
        loaded.notes.append(note)
    return loaded


def _read(source: ModelSource, request: LoadRequest) -> tuple[object, bool]:
    return load_torch_save(source.path, request.trust_pickle, request.code_path, request.class_map)


def load_torch_save_model(source: ModelSource, request: LoadRequest) -> LoadedModel:
    content, trusted = _read(source, request)
    return loaded_from_content(source.path, content, trusted, request, "pickle")


register_format(ModelFormat("checkpoint", "a torch.save state dict or checkpoint with a spec (.pt, .pth, .ckpt)",
                            looks_like_torch_save, load_torch_save_model, runs_code=True,
                            read_tree=lambda source, request: _read(source, request)[0]))
