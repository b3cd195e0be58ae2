"""torch.export programs (``.pt2``): saved with a dynamic batch dimension, run through an adapter.

A program is code: ``torch.export.load`` unpickles parts of the file, so load only programs
from sources you trust. ``save_exported`` exports in eval mode with the batch dimension
dynamic and records the latent spec in a ``genentropy.json`` extra file.

The engine's batched Jacobian (vmap over jvp of the batched decoder) runs on the exported
graph as on the module it came from; what the graph cannot do is switch mode (``.eval()``
raises on it), so ``ExportedDecoder`` keeps the mode it was exported in.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import torch
from torch import nn

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

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.program(latents)


def save_exported(module: nn.Module, path: str | Path, latent: LatentSpec, extra: dict | None = None,
                  example: torch.Tensor | None = None) -> Path:
    """Export ``module`` in eval mode with a dynamic batch dimension and save it as ``.pt2``."""
    module = module.eval()
    if example is None:
        example = torch.zeros(2, *latent.shape, dtype=next(module.parameters(), torch.zeros(())).dtype)
    batch = torch.export.Dim("batch")
    program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    target = Path(path)
    torch.export.save(program, str(target), extra_files={METADATA_FILE: json.dumps(metadata_record(latent, extra))})
    return target


def _input_shape(program: torch.export.ExportedProgram) -> tuple | None:
    """The shape of the program's single tensor input, entries int (static) or SymInt."""
    names = list(program.graph_signature.user_inputs)
    if len(names) != 1:
        return None
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name == names[0] and isinstance(node.meta.get("val"), torch.Tensor):
            return tuple(node.meta["val"].shape)
    return None


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
    shape = _input_shape(program)
    if shape is not None and len(shape) >= 2:
        if isinstance(shape[0], int):
            raise InputError(
                f"{file} was exported with a fixed batch size of {shape[0]}; re-export it with a dynamic batch "
                "dimension: dynamic_shapes=({0: torch.export.Dim('batch')},) (genentropy_cli.models.exported.save_exported)"
            )
        if "latent_shape" not in metadata and all(isinstance(size, int) for size in shape[1:]):
            metadata["latent_shape"] = [int(size) for size in shape[1:]]
            origins["latent_shape"] = "program"
    return ExportedDecoder(program.module()), metadata, origins
