"""Weights-only formats (safetensors, torch.save state dicts) build their decoder from a spec's
architecture: the shared steps, with refusals that name the sub-model or spec that fits."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from genentropy_cli.errors import InputError
from genentropy_cli.models.selection import matching_candidates, select_submodel, spec_weights
from genentropy_cli.models.specs import build_for_weights, build_from_spec, has_architecture

__all__ = ["build_decoder", "missing_spec", "select_weights"]


def _fit_hint(spec: dict, content: Any, code_path: Sequence[str | Path], selection: Mapping | None) -> str:
    """'; the tensors at X fit it: pass --select X ...' when a sub-model of the checkpoint
    ``content`` has exactly the names and shapes of the spec's architecture, else ''."""
    try:
        with torch.device("meta"):  # names and shapes only: nothing allocated, however large the kwargs
            expected = build_from_spec(spec, code_path).state_dict()
    except Exception:  # code that cannot run on the meta device: no hint rather than a real allocation
        return ""
    fits = matching_candidates(content, expected, str((selection or {}).get("strip_prefix") or ""))
    if not fits:
        return ""
    if not fits[0].select:
        return "; the whole file fits the spec's architecture: drop --select (and the spec's weights: key, prefix)"
    return (f"; the tensors at {fits[0].select} fit the spec's architecture: pass --select {fits[0].select} "
            f"(or weights: {spec_weights(fits[0])} in the spec)")


def build_decoder(spec: dict, tensors: dict[str, torch.Tensor], source: str, code_path: Sequence[str | Path],
                  content: Any = None, selection: Mapping | None = None):
    """The spec's architecture with ``tensors`` loaded; when they do not fit and another
    sub-model of the checkpoint ``content`` does, the refusal names the selection that fits."""
    try:
        return build_for_weights(spec, tensors, source, code_path)
    except InputError as error:
        hint = "" if content is None else _fit_hint(spec, content, code_path, selection)
        if not hint:
            raise
        raise InputError(f"{error}{hint}") from None


def select_weights(content: Any, spec: dict | None, select: str | None, source: str,
                   code_path: Sequence[str | Path]) -> tuple[Any, dict]:
    """``selection.select_submodel``; where the file holds several sub-models and one fits the
    spec's architecture, the refusal names it."""
    try:
        return select_submodel(content, (spec or {}).get("weights"), select, source)
    except InputError as error:
        hint = _fit_hint(spec, content, code_path, (spec or {}).get("weights")) if has_architecture(spec) else ""
        if not hint:
            raise
        raise InputError(f"{error}{hint}") from None


def missing_spec(file: Path, what: str) -> InputError:
    """The refusal for weights that come without a spec saying which architecture they fit."""
    choose = (f", with weights: naming its sub-model (`genentropy inspect {file}` lists them and the spec lines "
              "for each)" if what == "a training checkpoint" else "")
    return InputError(
        f"{file} holds {what} but no spec saying which architecture the weights belong to; put "
        f"{file.with_suffix('.yaml').name} beside it or pass --spec FILE (architecture or import, kwargs, latent){choose}"
    )
