"""torch.export programs (``.pt2``): saved with a dynamic batch dimension, run through an adapter.

A program is code: ``torch.export.load`` unpickles parts of the file, so load only programs
from sources you trust. ``save_exported`` exports in eval mode with the batch dimension
dynamic and records the latent spec in a ``genentropy.json`` extra file.

The engine's batched Jacobian (vmap over jvp of the batched decoder) runs on the exported
graph as on the module it came from; what the graph cannot do is switch mode (``.eval()``
raises on it), so ``ExportedDecoder`` keeps the mode it was exported in.

A conditional decoder g(z, y) is exported with its label as a second input (positional, or a
keyword such as ``c``); the program's signature then says how the label is passed, and its
dtype and shape what it is (int64 (B,): an index; float (B, K): one-hot over K classes).
"""

from __future__ import annotations

import copy
import inspect
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genentropy_cli.core.labels import POSITIONAL, LabelSpec
from genentropy_cli.core.latents import LatentSpec
from genentropy_cli.errors import InputError, first_line
from genentropy_cli.models.metadata import METADATA_FILE, metadata_record, parse_metadata

PT2_SUFFIX = ".pt2"


class ExportedDecoder(nn.Module):
    """A loaded torch.export program as a decoder: (B, *latent_shape) -> (B, ...).

    ``train()``/``eval()`` leave the graph as exported (eval mode: ``load_exported`` refuses
    programs exported in training mode).
    """

    def __init__(self, program_module: nn.Module):
        super().__init__()
        self.program = program_module

    def train(self, mode: bool = True) -> "ExportedDecoder":
        return self

    def __deepcopy__(self, memo: dict) -> "ExportedDecoder":
        """The engine's private copy, without torch's deprecation notice from copying the graph."""
        clone = ExportedDecoder.__new__(ExportedDecoder)
        memo[id(self)] = clone
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return clone

    def forward(self, latents: torch.Tensor, *labels: Any, **keyword_labels: Any) -> torch.Tensor:
        return self.program(latents, *labels, **keyword_labels)


def save_exported(module: nn.Module, path: str | Path, latent: LatentSpec, extra: dict | None = None,
                  example: torch.Tensor | None = None, label: LabelSpec | None = None) -> Path:
    """Export ``module`` in eval mode with a dynamic batch dimension and save it as ``.pt2``
    (with ``label``: a conditional decoder, its label a second input as the spec says)."""
    module = module.eval()
    if example is None:
        example = torch.zeros(2, *latent.shape, dtype=next(module.parameters(), torch.zeros(())).dtype)
    batch = torch.export.Dim("batch")
    if label is None:
        program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    else:
        labels = label.labels(label.chosen[0], example.shape[0], example.device, example.dtype)
        if label.argument == POSITIONAL:
            program = torch.export.export(module, (example, labels), dynamic_shapes=({0: batch}, {0: batch}))
        else:
            first = next(iter(inspect.signature(module.forward).parameters))
            program = torch.export.export(module, (example,), kwargs={label.argument: labels},
                                          dynamic_shapes={first: {0: batch}, label.argument: {0: batch}})
    target = Path(path)
    record = metadata_record(latent, extra, label)
    torch.export.save(program, str(target), extra_files={METADATA_FILE: json.dumps(record)})
    return target


def _input_values(program: torch.export.ExportedProgram) -> list[tuple[str, Any]]:
    """The program's user inputs: (name, example value; a fake tensor with int or SymInt sizes)."""
    values = {node.name: node.meta.get("val") for node in program.graph.nodes if node.op == "placeholder"}
    return [(name, values.get(name)) for name in program.graph_signature.user_inputs]


def _label_argument(program: torch.export.ExportedProgram, name: str) -> str:
    """How the second input is passed: ``position`` or its keyword, from the call signature."""
    try:
        spec = program.call_spec.in_spec
        positional, keywords = spec.children() if hasattr(spec, "children") else spec.children_specs
        return name if positional.num_children == 1 and name in list(keywords.context) else POSITIONAL
    except (AttributeError, TypeError, ValueError):
        return POSITIONAL


def _label_inference(program: torch.export.ExportedProgram, inputs: list[tuple[str, Any]]) -> dict:
    """What a two-input program's signature says of its label: argument, format, and the class
    count of a one-hot input (as ``label_*`` metadata)."""
    name, value = inputs[1]
    found: dict = {"label_argument": _label_argument(program, name)}
    if isinstance(value, torch.Tensor) and value.dim() >= 1:
        if not value.is_floating_point() and value.dim() == 1:
            found["label_format"] = "index"
        elif value.is_floating_point() and value.dim() == 2:
            found["label_format"] = "onehot"
            if isinstance(value.shape[1], int):
                found["label_num_classes"] = int(value.shape[1])
    return found


def _training_mode_ops(program: torch.export.ExportedProgram) -> list[str]:
    """What in the graph behaves as in training mode: batch norm on batch statistics, active
    dropout, updated buffers. Such a decoder's output depends on the rest of the batch."""
    found = [f"it updates buffer {name}" for name in program.graph_signature.buffers_to_mutate.values()]
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        name = str(node.target)
        if "batch_norm" in name and ("legit.default" in name or (len(node.args) > 5 and node.args[5] is True)):
            found.append("batch norm uses batch statistics")
        elif "dropout" in name and len(node.args) > 2 and node.args[2] is True:
            found.append("dropout is active")
    return found


def load_exported(file: Path) -> tuple[ExportedDecoder, dict, dict]:
    """The decoder, its recorded metadata, and where each metadata entry came from.

    The latent shape, when ``genentropy.json`` does not record it, is read from the
    program's input signature (origin ``program``).
    """
    extra_files = {METADATA_FILE: ""}
    try:
        program = torch.export.load(str(file), extra_files=extra_files)
    except Exception as error:  # corrupt archive, or a different format inside
        raise InputError(f"{file} is not a loadable torch.export program ({first_line(error)})") from None
    metadata = parse_metadata(extra_files[METADATA_FILE], file)
    origins = {key: "metadata" for key in metadata}
    training = _training_mode_ops(program)
    if training:
        raise InputError(
            f"{file} was exported in training mode ({training[0]}); call model.eval() before torch.export.export"
        )
    inputs = _input_values(program)
    shape = tuple(inputs[0][1].shape) if inputs and isinstance(inputs[0][1], torch.Tensor) else None
    if shape is not None and len(shape) >= 2 and len(inputs) <= 2:
        if isinstance(shape[0], int):
            raise InputError(
                f"{file} was exported with a fixed batch size of {shape[0]}; re-export it with a dynamic batch "
                "dimension: dynamic_shapes=({0: torch.export.Dim('batch')},) (genentropy_cli.models.exported.save_exported)"
            )
        if "latent_shape" not in metadata and all(isinstance(size, int) for size in shape[1:]):
            metadata["latent_shape"] = [int(size) for size in shape[1:]]
            origins["latent_shape"] = "program"
    if len(inputs) == 2:
        for key, value in _label_inference(program, inputs).items():
            if key not in metadata:
                metadata[key], origins[key] = value, "program"
    return ExportedDecoder(program.module()), metadata, origins
