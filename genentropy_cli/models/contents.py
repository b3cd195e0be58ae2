"""What a checkpoint holds, for ``inspect``: its sub-models and the rest, with the lines that choose each.

A training checkpoint is more than a model (``selection.py``): ``contents`` lists the
candidate sub-models (each state dict, each of its name prefixes, each pickled module) with
their tensor and value counts, the ``--select`` flag and the spec's ``weights:`` line for each,
and whether it fits the spec's architecture (names and shapes) when a spec names one; then
the other entries (optimiser states, epoch counters, hyper-parameters).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import torch

from genentropy_cli.errors import InputError
from genentropy_cli.models.formats import LoadRequest, ModelFormat, ModelSource, detect_format
from genentropy_cli.models.hub import HubModel, fetch_hub_model, is_hub_url
from genentropy_cli.models.pickles import parse_class_map
from genentropy_cli.models.resolve import ModelOptions
from genentropy_cli.models.selection import (
    find_candidates,
    is_optimizer_state,
    is_state_dict,
    matching_candidates,
    spec_weights,
)
from genentropy_cli.models.specs import (
    build_from_spec,
    find_sidecar,
    has_architecture,
    read_spec_file,
)

MAX_OTHER_ENTRIES = 40
OTHER_DEPTH = 2
"""Other entries are listed down to this depth (``hyper_parameters.lr``); deeper ones are summarised."""
VALUE_WIDTH = 40


def _other_entries(value: Any, key: str = "", depth: int = 0) -> Iterator[dict]:
    """The entries that are not sub-models: optimiser states, numbers, strings, lone tensors."""
    if is_state_dict(value) or isinstance(value, torch.nn.Module):
        return
    if is_optimizer_state(value):
        tensors = [item for state in value["state"].values() if isinstance(state, dict)
                   for item in state.values() if isinstance(item, torch.Tensor)]
        yield {"key": key, "kind": "optimiser state", "detail": f"{len(value['param_groups'])} parameter group(s), "
                                                                 f"{len(tensors)} tensors"}
    elif isinstance(value, (dict, list, tuple)) and value and depth < OTHER_DEPTH:
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for name, item in items:
            yield from _other_entries(item, f"{key}.{name}" if key else str(name), depth + 1)
    elif isinstance(value, torch.Tensor):
        yield {"key": key, "kind": "tensor", "detail": "x".join(str(size) for size in value.shape) or "scalar"}
    elif isinstance(value, (dict, list, tuple)):
        yield {"key": key, "kind": type(value).__name__, "detail": f"{len(value)} entries"}
    else:
        text = repr(value)
        yield {"key": key, "kind": type(value).__name__,
               "detail": text if len(text) <= VALUE_WIDTH else text[:VALUE_WIDTH - 3] + "..."}


def _read_tree(file: Path, model_format: ModelFormat, options: ModelOptions) -> Any:
    """The file's tree of weights, read by its format (``ModelFormat.read_tree``)."""
    assert model_format.read_tree is not None
    request = LoadRequest(None, tuple(options.code_path), options.trust_pickle, options.select,
                          parse_class_map(options.class_map))
    return model_format.read_tree(ModelSource(file), request)


def _expected_state(file: Path, options: ModelOptions, remote: HubModel | None) -> tuple[dict | None, str]:
    """The state dict of the spec's architecture (None without one), and its strip_prefix."""
    if options.spec is not None:
        spec_file: Path | None = Path(options.spec)
    else:
        spec_file = remote.spec_file if remote is not None else find_sidecar(file)
    spec = read_spec_file(spec_file) if spec_file is not None else None
    if remote is not None:
        spec = remote.complete_spec(spec)
    if spec is None or not has_architecture(spec):
        return None, ""
    try:
        module = build_from_spec(spec, tuple(options.code_path))
    except InputError:
        return None, ""
    return module.state_dict(), str((spec.get("weights") or {}).get("strip_prefix") or "")


def checkpoint_contents(options: ModelOptions) -> dict | None:
    """The sub-models and other entries of a checkpoint or safetensors file (None for other formats)."""
    remote = fetch_hub_model(str(options.path)) if is_hub_url(options.path) else None
    file = remote.file if remote is not None else Path(options.path)
    if not file.is_file():
        return None
    model_format = detect_format(file)
    if not model_format.selectable:
        return None
    tree = _read_tree(file, model_format, options)
    expected, strip_prefix = _expected_state(file, options, remote)
    fitting = {candidate.select for candidate in matching_candidates(tree, expected, strip_prefix)} \
        if expected is not None else None
    candidates = [{
        "select": candidate.select, "key": candidate.key, "prefix": candidate.prefix, "kind": candidate.kind,
        "class": candidate.class_name, "tensors": candidate.tensors, "values": candidate.values,
        "fits_spec": None if fitting is None else candidate.select in fitting,
        "spec_lines": f"weights: {spec_weights(candidate)}" if candidate.weights else None,
    } for candidate in find_candidates(tree)]
    others = list(_other_entries(tree))
    return {"format": model_format.name, "candidates": candidates, "other_entries": others[:MAX_OTHER_ENTRIES],
            "other_entries_not_shown": max(0, len(others) - MAX_OTHER_ENTRIES)}
