"""Batched Jacobians of a decoder by forward-mode AD (torch.func), no per-sample loop.

For a decoder that treats the samples of a batch independently (every generator in eval
mode does), pushing the tangent e_j for every sample through ``jvp`` of the batched
decoder yields column j of every sample's Jacobian at once. ``vmap`` over the d tangent
directions (in chunks, to bound memory) gives the whole batch of Jacobians while the
primal pass runs once per chunk: in principle (d + 1) plain forward passes, measured
1.5-1.9x that on 2 CPU cores (benchmarks/RESULTS.md). The engine prefers ``stacked``, which
reaches the floor, and uses these where the stacked method has no rule for an op.
"""

from __future__ import annotations

import copy
import io
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch.func import jvp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = [
    "DecoderFn",
    "batched_jacobian",
    "copy_with_fresh_torchscript",
    "flat_decoder",
    "fresh_torchscript_copy",
    "is_torchscript",
    "replicated_jacobian",
    "reverse_mode_columns",
    "torchscript_parts",
    "torchscript_safe",
]

DecoderFn = Callable[[torch.Tensor], torch.Tensor]


def is_torchscript(decoder: object) -> bool:
    return isinstance(decoder, (torch.jit.ScriptModule, torch.jit.ScriptFunction))


def fresh_torchscript_copy(decoder: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """A reloaded copy with a new executor state.

    Forward-mode AD through a TorchScript module that has already run under the optimising
    executor returns zero tangents from then on (docs/method.md); a fresh copy, only ever called
    inside ``torchscript_safe()``, stays exact on every call.
    """
    buffer = io.BytesIO()
    torch.jit.save(decoder, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer, map_location="cpu")


def torchscript_parts(module: torch.nn.Module) -> list[torch.jit.ScriptModule]:
    """The outermost TorchScript submodules of a Python module (e.g. a wrapper around one)."""
    found: list[torch.jit.ScriptModule] = []

    def visit(node: torch.nn.Module) -> None:
        for child in node.children():
            if is_torchscript(child):
                found.append(child)
            else:
                visit(child)

    visit(module)
    return found


def copy_with_fresh_torchscript(module: torch.nn.Module) -> torch.nn.Module:
    """A deep copy in which every TorchScript part is a fresh reload (``fresh_torchscript_copy``)."""
    memo = {id(part): fresh_torchscript_copy(part) for part in torchscript_parts(module)}
    return copy.deepcopy(module, memo)


@contextmanager
def torchscript_safe() -> Iterator[None]:
    """Run TorchScript without the optimising executor (see ``fresh_torchscript_copy``)."""
    with torch.jit.optimized_execution(False):
        yield


@contextmanager
def differentiable_attention() -> Iterator[None]:
    """``F.scaled_dot_product_attention`` by its math backend (matmuls and a softmax): the fused
    kernels it picks otherwise (on a CPU, flash attention) have no forward-mode derivative, so
    torch.func's methods fail on attention blocks such as diffusers' VAE mid-block."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch without the switch: nothing to change
        yield
        return
    with sdpa_kernel([SDPBackend.MATH]):
        yield


def flat_decoder(decoder: DecoderFn, latent_shape: tuple[int, ...]) -> DecoderFn:
    """Wrap ``decoder`` to map flat (B, d) latents to flat (B, D) outputs."""

    def apply(flat_latents: torch.Tensor) -> torch.Tensor:
        batch = flat_latents.shape[0]
        output = decoder(flat_latents.reshape(batch, *latent_shape))
        return output.reshape(batch, -1)

    return apply


def batched_jacobian(
    flat_fn: DecoderFn,
    latents: torch.Tensor,
    tangent_chunk: int | None = None,
    with_outputs: bool = False,
    max_columns: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Jacobians of ``flat_fn`` at each row of ``latents`` (B, d), returned as (d, B, D).

    Entry [j, b, :] is d output / d z_j at sample b. ``tangent_chunk`` bounds how many
    tangent directions are pushed through the decoder at once (None: all d). With
    ``with_outputs`` the decoder outputs (B, D), computed on the way, come back too.
    ``max_columns`` computes only the first columns (a cheap check that the method works).
    """
    batch, dim = latents.shape
    columns_wanted = dim if max_columns is None else max(1, min(int(max_columns), dim))
    directions = torch.eye(dim, dtype=latents.dtype, device=latents.device)
    tangents = directions.unsqueeze(1).expand(dim, batch, dim)

    def column(tangent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output, output_tangent = jvp(flat_fn, (latents,), (tangent,))
        return output_tangent, output

    chunk = dim if tangent_chunk is None else max(1, min(int(tangent_chunk), dim))
    columns = outputs = None
    for first in range(0, columns_wanted, chunk):
        piece, output = vmap(column, out_dims=(0, None))(tangents[first : min(first + chunk, columns_wanted)])
        if columns is None:  # one (d, B, D) tensor filled chunk by chunk: no second copy from a cat
            columns, outputs = piece.new_empty((columns_wanted, *piece.shape[1:])), output
        columns[first : first + piece.shape[0]] = piece
        del piece
    return (columns, outputs) if with_outputs else columns


def replicated_jacobian(
    flat_fn: DecoderFn,
    latents: torch.Tensor,
    tangent_chunk: int | None = None,
    with_outputs: bool = False,
    max_columns: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Same result as ``batched_jacobian`` without vmap, for decoders with ops vmap lacks.

    The batch is repeated once per tangent direction of a chunk and pushed through one
    ``jvp``; the primal is recomputed per direction, so it costs about twice as much.
    """
    batch, dim = latents.shape
    chunk = dim if tangent_chunk is None else max(1, min(int(tangent_chunk), dim))
    columns = []
    outputs = None
    columns_wanted = dim if max_columns is None else max(1, min(int(max_columns), dim))
    for first in range(0, columns_wanted, chunk):
        count = min(chunk, columns_wanted - first)
        repeated = latents.repeat(count, 1)
        tangent = torch.zeros_like(repeated)
        rows = torch.arange(count * batch, device=latents.device)
        tangent[rows, first + rows // batch] = 1.0
        output, output_tangent = jvp(flat_fn, (repeated,), (tangent,))
        if outputs is None:
            outputs = output[:batch]
        columns.append(output_tangent.reshape(count, batch, -1))
    jacobian = torch.cat(columns, dim=0)
    return (jacobian, outputs) if with_outputs else jacobian


def reverse_mode_columns(flat_fn: DecoderFn, latents: torch.Tensor, max_columns: int) -> torch.Tensor:
    """The first ``max_columns`` Jacobian columns (k, B, D) by reverse mode alone: the reference
    the stacked method is checked against before a run, without torch.func (whose first call
    imports torch._dynamo, 1.5 s of start-up).

    Double-vjp identity: g(w) = J^T w is linear in w, so the vjp of g with cotangent e_j is
    J e_j. For a decoder that treats rows independently, one pass serves every row. Exact (the
    same derivative formulas, by the chain rule); needs ops with double backward. Fused attention
    kernels (``F.scaled_dot_product_attention`` on a CPU: flash) have none, so attention runs in
    its math form here: the same function, computed by another kernel.
    """
    inputs = latents.detach().requires_grad_(True)
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
        outputs = flat_fn(inputs)
        weights = torch.zeros_like(outputs, requires_grad=True)
        # scalar objectives: an explicit grad_outputs tensor makes autograd import sympy (0.4 s)
        (transposed,) = torch.autograd.grad((outputs * weights).sum(), inputs, create_graph=True)
        columns = []
        for column in range(max_columns):
            (jacobian_column,) = torch.autograd.grad(transposed[:, column].sum(), weights,
                                                     retain_graph=True, allow_unused=True)
            columns.append(torch.zeros_like(outputs) if jacobian_column is None else jacobian_column.detach())
    return torch.stack(columns)
