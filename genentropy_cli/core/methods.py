"""The Jacobian methods, in one table: what computes the columns, what a call costs in memory,
and the order in which they are tried.

Every method returns the Jacobian columns (d, B, D) of a flat decoder (B, d) -> (B, D), and
its outputs with ``with_outputs``. A method is called under ``torch.no_grad()``: all of them
are forward-mode AD (dual numbers, or the stacked rows' own rules), which grad mode does not
affect, so no autograd graph is built even for a plain callable around a module whose
parameters require grad (it would hold every activation, and the Gram step's ``bmm(out=...)``
refuses tensors that require grad).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from genentropy_cli.core.jacobian import DecoderFn, batched_jacobian, replicated_jacobian
from genentropy_cli.core.stacked import stacked_jacobian

__all__ = ["FALLBACK_ORDER", "JACOBIAN_METHODS", "JacobianMethod", "jacobian_memory_factor", "jacobian_method"]


@dataclass(frozen=True)
class JacobianMethod:
    """One way to compute Jacobian columns; calling it runs ``compute`` without autograd."""

    name: str
    compute: Callable[..., torch.Tensor | tuple[torch.Tensor, torch.Tensor]]
    """(flat_fn, latents, tangent_chunk=None, with_outputs=False, max_columns=None) -> columns[, outputs]"""
    memory_factor: int
    """A decoder call's live activations as a multiple of the plain forward pass's on as many rows
    (torch.func moves tangents between layouts: 2)."""
    holds_chunk_columns: bool
    """Each tangent chunk's columns are held apart before being copied into the Jacobian."""
    needs_reference: bool
    """Exact only where its rules cover the decoder's ops: compared with an AD reference on probe
    latents before use. The others are torch.func's forward-mode AD, tried in table order."""

    def __call__(self, flat_fn: DecoderFn, latents: torch.Tensor, tangent_chunk: int | None = None,
                 with_outputs: bool = False, max_columns: int | None = None):
        with torch.no_grad():
            return self.compute(flat_fn, latents, tangent_chunk, with_outputs=with_outputs, max_columns=max_columns)


JACOBIAN_METHODS: dict[str, JacobianMethod] = {method.name: method for method in (
    JacobianMethod("stacked", stacked_jacobian, memory_factor=1, holds_chunk_columns=False, needs_reference=True),
    JacobianMethod("vmap", batched_jacobian, memory_factor=2, holds_chunk_columns=True, needs_reference=False),
    JacobianMethod("replicated", replicated_jacobian, memory_factor=2, holds_chunk_columns=True,
                   needs_reference=False),
)}
"""In order of preference. stacked: one plain forward pass over stacked primal and tangent rows
(``stacked``), the fastest; vmap: torch.func jvp under vmap; replicated: jvp on a repeated batch
(for decoders with ops vmap lacks), about twice vmap's time."""

FALLBACK_ORDER: tuple[str, ...] = tuple(name for name, method in JACOBIAN_METHODS.items()
                                        if not method.needs_reference)
"""The methods tried, in this order, where the stacked method is not used: the first that runs wins."""


def jacobian_method(name: str) -> JacobianMethod:
    """The table's entry for ``name`` (KeyError naming the methods otherwise)."""
    try:
        return JACOBIAN_METHODS[name]
    except KeyError:
        raise KeyError(f"unknown Jacobian method {name!r}; one of {', '.join(JACOBIAN_METHODS)}") from None


def jacobian_memory_factor(name: str) -> int:
    """A call's live activations under method ``name``, as a multiple of a plain forward pass's."""
    return jacobian_method(name).memory_factor
