"""Closed-form partial derivatives of the elementwise ops the bundled decoders use (mul, div,
sqrt, expm1, erf, sin, cos, log, ...), for the generic pointwise stacked rule
(``stacked_rules_pointwise.pointwise``): y = f(x_1, ..., x_n), tangent rows sum_i df/dx_i(P) T_i.

Why not ``torch.func.jvp`` here: forward-mode AD of a binary op whose other operand carries no
tangent (``a * b`` differentiated in ``a``) runs torch's Python reference (``torch._refs.mul``),
whose first call imports ``torch._dynamo``: 3-4 s of start-up on a 2-core CPU for a decoder that
multiplies two tensors computed from the latent (the half-sphere decoder). The formulas are
torch's own derivative formulas (``tools/autograd/derivatives.yaml``), checked against reverse
mode in ``tests/test_stacked_partials.py``. An op not listed here goes to ``jvp`` as before.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

__all__ = ["PARTIALS", "closed_form_partials"]

Partial = Callable[[int, list[torch.Tensor], torch.Tensor], torch.Tensor]
"""(index of the operand, operands at the primal, the op's value there) -> df/dx_index."""


def _mul(index: int, operands: list[torch.Tensor], value: torch.Tensor) -> torch.Tensor:
    """y = a b: dy/da = b, dy/db = a."""
    return operands[1 - index]


def _div(index: int, operands: list[torch.Tensor], value: torch.Tensor) -> torch.Tensor:
    """y = a / b: dy/da = 1 / b, dy/db = -a / b^2 = -y / b."""
    return torch.reciprocal(operands[1]) if index == 0 else -value / operands[1]


def _unary(derivative: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> tuple[int, Partial]:
    """A one-operand op: f'(x) from x and y = f(x)."""
    return 1, lambda index, operands, value: derivative(operands[0], value)


PARTIALS: dict[str, tuple[int, Partial]] = {
    "mul": (2, _mul),
    "div": (2, _div),
    "sqrt": _unary(lambda x, y: 0.5 / y),
    "rsqrt": _unary(lambda x, y: -0.5 * y * y * y),
    "expm1": _unary(lambda x, y: y + 1),
    "log": _unary(lambda x, y: torch.reciprocal(x)),
    "log1p": _unary(lambda x, y: torch.reciprocal(1 + x)),
    "sin": _unary(lambda x, y: torch.cos(x)),
    "cos": _unary(lambda x, y: -torch.sin(x)),
    "erf": _unary(lambda x, y: (2 / math.sqrt(math.pi)) * torch.exp(-x * x)),
    "reciprocal": _unary(lambda x, y: -y * y),
}
"""(number of operands, df/dx_i) by the op's name (an in-place op's trailing ``_`` dropped)."""


def closed_form_partials(name: str, positions: list[int], operands: list, kwargs: dict,
                         compute: Callable[..., torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """[(y, df/dx_i) for i in positions] as ``jvp`` with a tangent of ones gives them: y = f at the
    primal (computed once), each derivative in y's dtype and broadcastable to y's shape. None where
    the op has no closed form here, or takes an option (a division's rounding mode: piecewise constant)."""
    arity, partial = PARTIALS.get(name.rstrip("_"), (0, None))
    if partial is None or len(operands) != arity or any(value is not None for value in kwargs.values()):
        return None
    value = compute(*operands, **kwargs)
    if not value.is_floating_point():
        return None
    at = [torch.as_tensor(operand, device=value.device).to(value.dtype) for operand in operands]  # promoted as the op did
    return [(value, partial(index, at, value)) for index in positions]
