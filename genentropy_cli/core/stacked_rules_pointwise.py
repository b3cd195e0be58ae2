"""The stacked-tangent rules of nonlinear ops (``stacked_rules`` holds the registry): elementwise
ops, and ops that act on each row alone.

    y = f(x, ...) pointwise                          ->  f(P) on the primal rows,
                                                         f'(P) * T_j on tangent slot j
    y = g(x) row-wise (softmax, pool, pad)           ->  torch.func.jvp of g, slot by slot

An integer or boolean operand computed from the latent (a mask: ``stacked_operands``) enters
f as the constant it is at the primal; an integer or boolean result (a comparison) is the
primal's, replicated on every row; a float result of discrete operands alone has zero tangents.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch.func import jvp, vmap

from genentropy_cli.core.stacked_operands import (
    StackedMode,
    UnsupportedOperation,
    is_discrete,
    only_first_stacked,
    operand_leaves,
    row_free,
    takes,
    with_shared_rows,
)
from genentropy_cli.core.stacked_operands import dim_index as _dim
from genentropy_cli.core.stacked_partials import closed_form_partials

__all__ = ["ELEMENTWISE", "pointwise", "rowwise"]

aten = torch.ops.aten


def _leaky_relu_derivative(x: torch.Tensor, y: torch.Tensor, slope: float = 0.01, *rest: Any,
                           **options: Any) -> torch.Tensor:
    return torch.where(x > 0, torch.ones_like(x), torch.full_like(x, slope))


def _silu_derivative(x: torch.Tensor, y: torch.Tensor, *rest: Any, **options: Any) -> torch.Tensor:
    """y = x s(x), s the sigmoid: y' = s + y (1 - s)."""
    s = torch.sigmoid(x)
    return s + y * (1 - s)


def _gelu_derivative(x: torch.Tensor, y: torch.Tensor, *rest: Any, approximate: str = "none",
                     **options: Any) -> torch.Tensor:
    """approximate='none': y = x Phi(x), y' = Phi(x) + x phi(x). approximate='tanh':
    y = x (1 + tanh u) / 2 with u = sqrt(2/pi) (x + 0.044715 x^3),
    y' = (1 + tanh u) / 2 + x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2) / 2."""
    approximate = rest[0] if rest else approximate
    if approximate == "tanh":
        beta, kappa = math.sqrt(2 / math.pi), 0.044715
        squared = x * x
        inner = torch.tanh(beta * x * (1 + kappa * squared))
        return 0.5 * (1 + inner) + 0.5 * beta * x * (1 - inner * inner) * (1 + 3 * kappa * squared)
    if approximate != "none":
        raise UnsupportedOperation(f"gelu with approximate={approximate!r}")
    cdf = 0.5 * (1 + torch.erf(x * math.sqrt(0.5)))
    return cdf + x * torch.exp(-0.5 * x * x) * (1 / math.sqrt(2 * math.pi))


_DERIVATIVES: dict[str, Callable[..., torch.Tensor]] = {
    "relu": lambda x, y, *rest, **options: (x > 0).to(x.dtype),
    "sigmoid": lambda x, y, *rest, **options: y * (1 - y),
    "tanh": lambda x, y, *rest, **options: 1 - y * y,
    "exp": lambda x, y, *rest, **options: y,
    "leaky_relu": _leaky_relu_derivative,
    "silu": _silu_derivative,
    "gelu": _gelu_derivative,
}
"""f'(x) from the input x and output y (and the op's other arguments, positional and keyword),
as torch's own derivative formulas have them; every other pointwise op by ``stacked_partials``, else jvp."""

ELEMENTWISE = frozenset(_DERIVATIVES) | {
    "elu", "celu", "selu", "gelu", "silu", "mish", "softplus", "hardtanh", "hardswish", "hardsigmoid", "threshold",
    "_prelu_kernel"}
"""Elementwise activations that older torch releases (2.11) leave without ``Tag.pointwise`` (and
PReLU's kernel, which no release tags: its weight broadcasts over the channels)."""


def _is_inplace(func) -> bool:
    """An op that writes into its first argument: tagged so where torch has ``Tag.inplace`` (not
    2.11, which the project's ``torch>=2.3`` admits), else named so (relu_, add_)."""
    tag = getattr(torch.Tag, "inplace", None)
    return (tag is not None and tag in func.tags) or func.overloadpacket.__name__.endswith("_")


def _operands(mode: StackedMode, args: tuple, kwargs: dict, name: str) -> tuple[list, list[int]]:
    """The operands at the primal (stacked ones as their primal rows) and the positions of the
    differentiable (floating-point) stacked ones; refuses layouts that would mix rows."""
    if any(mode.is_stacked(leaf) for leaf in operand_leaves(kwargs)):
        raise UnsupportedOperation(f"{name} with a stacked keyword argument")
    stacked = [index for index, arg in enumerate(args) if mode.is_stacked(arg)]
    multiplicities = {mode.multiplicity(args[index]) for index in stacked}
    ndim = max(args[index].dim() for index in stacked)
    if len(multiplicities) != 1 or any(arg.dim() != ndim for arg in (args[i] for i in stacked)):
        raise UnsupportedOperation(f"{name} of stacked tensors of different layouts")
    if not all(row_free(arg, ndim) for index, arg in enumerate(args) if index not in stacked):
        raise UnsupportedOperation(f"{name} with a constant that differs per row")
    primals = [mode.primal(arg) if index in stacked else arg for index, arg in enumerate(args)]
    return primals, [index for index in stacked if not is_discrete(args[index])]


def _finish(mode: StackedMode, args: tuple, out: torch.Tensor, inplace: bool, name: str) -> torch.Tensor:
    """The stacked result, written into the op's target for an in-place op."""
    if not inplace:
        return mode.mark(out)
    if args[0].shape != out.shape:
        raise UnsupportedOperation(f"in-place {name} that broadcasts its target")
    args[0].copy_(out)  # every operand was read before the target changes
    return args[0]


def _without_tangents(mode: StackedMode, value: torch.Tensor) -> torch.Tensor:
    """All rows of a value with no derivative: discrete, the primal's on every row; else zero tangents."""
    out = value.new_empty((value.shape[0] * (mode.slots + 1), *value.shape[1:]))
    out[: value.shape[0]] = value
    rest = out[value.shape[0]:].view(mode.slots, *value.shape)
    rest.copy_(value.expand_as(rest)) if is_discrete(value) else rest.zero_()
    return out


def pointwise(mode: StackedMode, func, args, kwargs):
    """y = f(x_1, ..., x_n) elementwise: primal rows f(P); tangent rows sum_i df/dx_i(P) * T_i.

    Each partial derivative df/dx_i(P) is the jvp of f in x_i with a tangent of ones
    (exact for an elementwise f), computed once at the primal and broadcast over the k slots.
    Discrete operands (masks) enter as their primal values; a discrete result is replicated.
    """
    name = func.overloadpacket.__name__
    inplace = _is_inplace(func)
    args = with_shared_rows(mode, args)
    if inplace and not mode.is_stacked(args[0]):
        raise UnsupportedOperation(f"in-place {name} into a constant")

    def compute(first, *rest, **options):  # an in-place op is differentiated on a copy
        return func(first.clone() if inplace else first, *rest, **options)

    primals, positions = _operands(mode, args, kwargs, name)
    if not positions:  # discrete operands alone (k + 1, k < bins): no derivative
        return _finish(mode, args, _without_tangents(mode, compute(*primals, **kwargs)), inplace, name)
    closed_form = _DERIVATIVES.get(name.rstrip("_")) if positions == [0] else None

    def partial(index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if closed_form is not None:  # the common activations, without jvp's per-call overhead
            value = compute(*primals, **kwargs)
            return value, closed_form(primals[0], value, *primals[1:], **kwargs)

        def along(value):
            return compute(*primals[:index], value, *primals[index + 1:], **kwargs)

        # a compact copy: jvp allocates zeros as large as its primal's whole storage (all N rows),
        # and an expanded primal would alias
        at = primals[index].clone(memory_format=torch.contiguous_format)
        return jvp(along, (at,), (torch.ones_like(at),))

    try:
        with mode.transforms_enabled():
            pairs = (closed_form_partials(name, positions, primals, kwargs, compute)  # no jvp (torch._dynamo)
                     or [partial(index) for index in positions])
    except Exception as error:  # no derivative to take
        raise UnsupportedOperation(f"{name}: {error}") from None
    primal_out = pairs[0][0]
    if is_discrete(primal_out):  # a comparison: the primal's mask on every row
        return _finish(mode, args, _without_tangents(mode, primal_out), inplace, name)
    if not primal_out.is_floating_point():
        raise UnsupportedOperation(f"{name} returns {primal_out.dtype}, not a differentiable value")
    if inplace and positions == [0] and args[0].shape[1:] == primal_out.shape[1:]:  # ReLU(inplace=True): no new buffer
        mode.tangents(args[0]).mul_(pairs[0][1])
        mode.primal(args[0]).copy_(primal_out)
        return args[0]
    out = primal_out.new_empty((primal_out.shape[0] * (mode.slots + 1), *primal_out.shape[1:]))
    tangent_out = out[primal_out.shape[0]:].view(mode.slots, *primal_out.shape)
    for number, (index, (_, derivative)) in enumerate(zip(positions, pairs)):
        if number == 0:
            torch.mul(mode.tangents(args[index]), derivative, out=tangent_out)
        else:
            tangent_out.addcmul_(mode.tangents(args[index]), derivative)
    out[: primal_out.shape[0]] = primal_out
    return _finish(mode, args, out, inplace, name)


def rowwise(mode: StackedMode, func, args, kwargs):
    """A nonlinear op that acts on each row alone (softmax over features, pooling, padding):
    torch.func.jvp of the op at the primal, vmapped over the k slots (layer and group norm have
    closed forms in ``stacked_rules_norms``)."""
    source = only_first_stacked(mode, args, kwargs, func.overloadpacket.__name__)
    if func.overloadpacket in (aten._softmax, aten._log_softmax, aten._safe_softmax) and _dim(args[1], source.dim()) == 0:
        raise UnsupportedOperation("softmax over the batch dimension")
    rest = args[1:]

    def apply(value):
        result = func(value, *rest, **kwargs)
        return result[0] if isinstance(result, (tuple, list)) else result

    at = mode.primal(source).clone(memory_format=torch.contiguous_format)  # see _pointwise

    def push(tangent):
        return jvp(apply, (at,), (tangent,))

    with mode.transforms_enabled():
        primal_out, tangent_out = vmap(push, out_dims=(None, 0))(mode.tangents(source))
    out = mode.mark(mode.assemble(primal_out, tangent_out))
    full = func(at, *rest, **kwargs)
    return (out, *full[1:]) if isinstance(full, (tuple, list)) else out


takes(pointwise, discrete=True)  # masks enter as constants, comparisons are replicated
