"""The decoder's activation bytes per row, metered on a plain forward pass (for batch planning).
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["METER_ROWS", "activation_bytes_per_row"]

METER_ROWS = 13
"""Rows of the plain forward pass ``activation_bytes_per_row`` meters: a prime, so that few
weight shapes are mistaken for batch-carrying tensors."""


class _RowBytesMeter(TorchDispatchMode):
    """The largest bytes one op holds in batch-carrying tensors (inputs plus outputs), per row."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        """No torch._dynamo wrapper around ``__torch_dispatch__``: nothing is compiled in here, and
        the wrapper's first call imports torch._dynamo (seconds of start-up)."""
        return False

    def __init__(self, rows: int):
        super().__init__()
        self.rows, self.peak = rows, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        leaves = tree_flatten((args, kwargs, result))[0]
        held = sum(leaf.numel() * leaf.element_size() for leaf in leaves
                   if isinstance(leaf, torch.Tensor) and leaf.dim() and leaf.shape[0] % self.rows == 0)
        self.peak = max(self.peak, held // self.rows)
        return result


def activation_bytes_per_row(flat_fn, probe: torch.Tensor) -> int:
    """Meter a plain forward pass of ``flat_fn`` on ``METER_ROWS`` rows built from ``probe``."""
    rows = probe[torch.arange(METER_ROWS, device=probe.device) % probe.shape[0]]
    meter = _RowBytesMeter(METER_ROWS)
    with torch.no_grad(), meter:
        flat_fn(rows)
    return meter.peak
