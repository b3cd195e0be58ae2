"""Jacobians from one plain forward pass over stacked rows [z; e_1; ...; e_k] ("stacked tangents").

Forward-mode AD through torch.func (``jacobian.batched_jacobian``) recomputes the primal at
the small batch once per tangent chunk, pushes the parameters' zero tangents through real
matmuls and convolutions, and copies tangents between layouts: on 2 CPU cores it costs
1.5-1.9x the floor of (d + 1) plain forward passes (benchmarks/RESULTS.md). For a decoder
that treats the rows of its batch independently, the primal batch P (B rows) and k tangent
batches T_1..T_k stacked as one batch S of N = (k + 1) B rows can go through the decoder
ONCE, at the floor's speed, provided the few ops that are not linear in their stacked input
follow a rule (``stacked_rules``: A S on all rows for a linear map, a bias on the primal rows
only, f'(P) * T_j for a pointwise f, torch.func.jvp slot by slot for a row-wise op): that is
forward-mode AD, exact (the same formulas torch's own jvp rules use).

This module is the mechanism: a dispatch mode that applies the rules op by op. An op without
a rule, or one that would mix rows (a reduction over the batch, train-mode batch norm, a
constant that differs per row), raises ``UnsupportedOperation`` and the caller falls back to
torch.func.

A stacked tensor may carry its rows in ``m`` consecutive rows each (a view that folds the
batch with the next dimension, as ``matmul`` on (N, L, C) inputs does): its first B * m rows
are the primal. Its batch dimension may be dim ``lead`` > 0 (after ``torch.stack(..., dim=0)``,
an ``expand`` with new leading dimensions, or a reshape that folds the batch into the channels);
an integer or boolean stacked tensor carries the primal's values on every row
(``stacked_operands``). Only rules that say they take these (``stacked_operands.takes``) get them.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from genentropy_cli.core.stacked_operands import is_discrete
from genentropy_cli.core.stacked_rules import UnsupportedOperation, operand_leaves, rule_for

__all__ = ["DecoderFn", "StackedRows", "UnsupportedOperation", "stacked_jacobian", "stacked_jacobian_profiled"]

DecoderFn = Callable[[torch.Tensor], torch.Tensor]
_TAG = "_genentropy_stacked"
"""Attribute a stacked tensor carries: (the mode's token, m, lead). A view is a new tensor object
without it, as with the weak dictionary this replaces; the tag keeps nothing alive."""


class StackedRows(TorchDispatchMode):
    """Dispatch mode that runs a decoder on stacked rows with the rules of the module doc.

    ``primal_rows`` (B) and ``slots`` (k) fix the layout N = (k + 1) B. ``exact_primal``: rules
    whose primal rows may round otherwise than the op as the decoder calls it (a convolution's bias
    added apart, batch norm as scale and shift) compute every row as in a run, then overwrite the
    primal rows by that op, so that they are a plain forward pass's bit for bit while the tangent
    rows stay a run's (the probe check: a ReLU input within round-off of 0 must take the
    reference's side of the kink, and the check must still see the run's rules). ``peak_row_bytes``
    records, per stacked row, the largest bytes one op held (inputs plus output): the
    activation footprint ``planning`` sizes batches with.
    """

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        """No torch._dynamo wrapper around ``__torch_dispatch__``: nothing is compiled in here, and
        the wrapper's first call imports torch._dynamo (seconds of start-up)."""
        return False

    def __init__(self, primal_rows: int, slots: int, exact_primal: bool = False):
        super().__init__()
        self.primal_rows = primal_rows
        self.slots = slots
        self.exact_primal = exact_primal
        self.rows = primal_rows * (slots + 1)
        self._token = object()  # tags this call's stacked tensors (``_TAG`` attribute: cheaper than a weak dict)
        self.peak_row_bytes = 0
        self._outside_keys = None
        self.unsupported: str | None = None

    def __enter__(self):
        self._outside_keys = (torch._C._dispatch_tls_local_include_set(), torch._C._dispatch_tls_local_exclude_set())
        return super().__enter__()

    def transforms_enabled(self):
        """Inside ``__torch_dispatch__`` autograd and functorch keys are switched off; rules
        that take derivatives with ``torch.func.jvp`` restore the dispatch keys of the caller."""
        return torch._C._ForceDispatchKeyGuard(*self._outside_keys)

    # ------------------------------------------------------------------ bookkeeping

    def mark(self, tensor: torch.Tensor, lead: int = 0) -> torch.Tensor:
        size = tensor.shape[lead] if tensor.dim() > lead else 0
        if size == 0 or size % self.rows:
            raise UnsupportedOperation(f"an op returned {size} rows for a batch of {self.rows}: it mixes rows")
        setattr(tensor, _TAG, (self._token, size // self.rows, lead))
        return tensor

    def lead(self, tensor: torch.Tensor) -> int:
        """The batch dimension: 0, or the number of leading dimensions put before it."""
        return getattr(tensor, _TAG)[2]

    def is_stacked(self, value: Any) -> bool:
        tag = getattr(value, _TAG, None) if isinstance(value, torch.Tensor) else None
        return tag is not None and tag[0] is self._token

    def multiplicity(self, tensor: torch.Tensor) -> int:
        """m: the tensor carries each stacked row in m consecutive rows."""
        return getattr(tensor, _TAG)[1]

    def primal(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor[: self.primal_rows * self.multiplicity(tensor)]

    def tangents(self, tensor: torch.Tensor) -> torch.Tensor:
        """Tangent rows as (k, B * m, ...)."""
        width = self.primal_rows * self.multiplicity(tensor)
        return tensor[width:].unflatten(0, (self.slots, width))

    def _tangent_block(self, tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lead = self.lead(tensor)
        width = self.primal_rows * self.multiplicity(tensor)
        return tensor.narrow(lead, 0, width), tensor.narrow(lead, width, width * self.slots)

    def replicate(self, tensor: torch.Tensor) -> torch.Tensor:
        """The primal rows copied onto every tangent slot (a discrete value: no derivative)."""
        primal, rest = self._tangent_block(tensor)
        lead = self.lead(tensor)
        rest.unflatten(lead, (self.slots, primal.shape[lead])).copy_(primal.unsqueeze(lead))
        return tensor

    def zero_tangents(self, tensor: torch.Tensor) -> torch.Tensor:
        """Zero tangent rows: the value does not depend on the latent."""
        self._tangent_block(tensor)[1].zero_()
        return tensor

    def assemble(self, primal: torch.Tensor, tangents: torch.Tensor) -> torch.Tensor:
        """Stack a primal (B m, ...) and tangents (k, B m, ...) into one (N m, ...) tensor."""
        out = torch.empty((primal.shape[0] * (self.slots + 1), *primal.shape[1:]), dtype=primal.dtype,
                          device=primal.device)
        out[: primal.shape[0]] = primal
        out[primal.shape[0]:].view(tangents.shape).copy_(tangents)
        return out

    # ------------------------------------------------------------------ dispatch

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves = operand_leaves(args, kwargs)
        stacked = [leaf for leaf in leaves if self.is_stacked(leaf)]
        if not stacked:
            return func(*args, **kwargs)  # parameters, shapes, fresh constants
        rule = rule_for(func)
        try:
            name = func.overloadpacket.__name__
            if rule is None:
                raise UnsupportedOperation(f"no stacked-tangent rule for {name}")
            if not getattr(rule, "takes_discrete", False) and any(is_discrete(leaf) for leaf in stacked):
                raise UnsupportedOperation(f"{name} of an integer or boolean tensor computed from the latent")
            if not getattr(rule, "takes_moved", False) and any(self.lead(leaf) for leaf in stacked):
                raise UnsupportedOperation(f"{name} of a tensor whose batch dimension was moved")
            result = rule(self, func, args, kwargs)
        except UnsupportedOperation as error:  # TorchScript rewraps errors: remember ours
            self.unsupported = str(error)
            raise
        first = result[0] if isinstance(result, (tuple, list)) else result
        if isinstance(first, torch.Tensor) and first.dim():
            held = sum(t.numel() * t.element_size() for t in stacked) + sum(
                t.numel() * t.element_size() for t in (result if isinstance(result, (tuple, list)) else [result])
                if isinstance(t, torch.Tensor))
            self.peak_row_bytes = max(self.peak_row_bytes, held // self.rows)
        return result


def stacked_jacobian(
    flat_fn: DecoderFn,
    latents: torch.Tensor,
    tangent_chunk: int | None = None,
    with_outputs: bool = False,
    max_columns: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Jacobians of ``flat_fn`` at each row of ``latents`` (B, d) as (d, B, D), like
    ``jacobian.batched_jacobian``: per chunk of k tangent directions, one decoder call on
    (k + 1) B stacked rows (``max_columns``: only the first columns). Raises
    ``UnsupportedOperation`` where a rule is missing."""
    columns, outputs, _ = stacked_jacobian_profiled(flat_fn, latents, tangent_chunk, max_columns)
    return (columns, outputs) if with_outputs else columns


def stacked_jacobian_profiled(
    flat_fn: DecoderFn,
    latents: torch.Tensor,
    tangent_chunk: int | None = None,
    max_columns: int | None = None,
    exact_primal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``stacked_jacobian`` with outputs, plus the largest bytes per stacked row one op held
    (``exact_primal``: see ``StackedRows``)."""
    batch, dim = latents.shape
    wanted = dim if max_columns is None else max(1, min(int(max_columns), dim))
    chunk = wanted if tangent_chunk is None else max(1, min(int(tangent_chunk), wanted))
    columns = outputs = None
    peak_row_bytes = 0
    for first in range(0, wanted, chunk):
        count = min(chunk, wanted - first)
        rows = latents.new_zeros(((count + 1) * batch, dim))
        rows[:batch] = latents
        slots = rows[batch:].view(count, batch, dim)
        slots[torch.arange(count, device=latents.device), :, first + torch.arange(count, device=latents.device)] = 1
        mode = StackedRows(batch, count, exact_primal)
        try:
            with torch.no_grad(), mode:
                mode.mark(rows)
                result = flat_fn(rows)
        except Exception:
            if mode.unsupported is not None:
                raise UnsupportedOperation(mode.unsupported) from None
            raise
        if (not mode.is_stacked(result) or mode.multiplicity(result) != 1 or mode.lead(result) or result.dim() != 2
                or is_discrete(result)):
            raise UnsupportedOperation("the decoder's output does not follow its input row by row")
        peak_row_bytes = max(peak_row_bytes, mode.peak_row_bytes)
        if count == wanted:  # one call: the decoder's output rows are the Jacobian, no copy
            return result[batch:].view(count, batch, -1), result[:batch], peak_row_bytes
        if columns is None:
            columns = result.new_empty((wanted, batch, result.shape[1]))
            outputs = result[:batch].clone()
        columns[first : first + count] = result[batch:].view(count, batch, -1)
        del result, rows, slots
    return columns, outputs, peak_row_bytes

