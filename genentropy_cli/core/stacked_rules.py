"""The stacked-tangent rules, op by op: how each aten op acts on stacked rows [P; T_1; ...; T_k]
(primal rows P, tangent slots T_j; the mechanism is ``stacked``).

    y = A x (matmul, convolution, view, sum, ...)   ->  A S on all rows
    y = A x + b (bias, eval-mode batch norm)        ->  A S, then + b on the primal rows only
    y = f(x, ...) pointwise                          ->  f(P) on the primal rows,
                                                         f'(P) * T_j on tangent slot j
    y = g(x) row-wise (softmax, pool)                ->  torch.func.jvp of g, slot by slot
    y = layer or group norm of x, ||x||_p            ->  closed form, all slots at once
    y = A B, both stacked (attention's bmm)          ->  P_A P_B; T_A,j P_B + P_A T_B,j
    y = softmax(scale Q K^T + M) V (fused attention) ->  closed form, all slots at once

A rule is ``rule(mode, func, args, kwargs)``: ``mode`` (a ``StackedMode``) tells stacked tensors
from constants and lays rows out; the rule returns the op's result with its stacked outputs
marked (``mode.mark``), or raises ``UnsupportedOperation`` where the op would mix rows. Adding
an op is one entry in ``RULES`` (or a name in ``ELEMENTWISE`` for an activation torch does not
tag pointwise). This module is the registry and holds the rules of linear maps and moves within
rows; the others are by kind in ``stacked_rules_pointwise`` (elementwise, row-wise),
``stacked_rules_norms`` (layer and group norm, vector norms in closed form),
``stacked_rules_attention`` (fused scaled dot-product attention), ``stacked_rules_index`` (new axes,
indexing, gathers, writes, bin searches, fresh constants) and
``stacked_rules_folded`` (a batch folded into the channels: StyleGAN2's grouped convolution).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from genentropy_cli.core.stacked_operands import (
    StackedMode,
    UnsupportedOperation,
    broadcast_shape,
    has_equal_blocks,
    has_equal_rows,
    is_discrete,
    only_first_stacked,
    operand_leaves,
    takes,
    with_shared_rows,
)
from genentropy_cli.core.stacked_operands import dim_index as _dim
from genentropy_cli.core.stacked_operands import row_free as _row_free
from genentropy_cli.core.stacked_rules_attention import ATTENTION_RULES
from genentropy_cli.core.stacked_rules_folded import FOLDED_RULES, folded_convolution, is_folded
from genentropy_cli.core.stacked_rules_index import INDEX_RULES
from genentropy_cli.core.stacked_rules_norms import NORM_RULES
from genentropy_cli.core.stacked_rules_pointwise import ELEMENTWISE, pointwise, rowwise

__all__ = ["ELEMENTWISE", "RULES", "StackedMode", "UnsupportedOperation", "operand_leaves", "rule_for"]

aten = torch.ops.aten


# ---------------------------------------------------------------------- rules


def _structural(dim_positions: tuple[int, ...] = (), dim_lists: tuple[int, ...] = ()):
    """Ops that move, copy or linearly combine values within rows: applied to all rows.

    Arguments at ``dim_positions`` (ints) and ``dim_lists`` (lists of ints) are dimensions,
    which must not be dim 0 (the rows). Every tensor output must still have a multiple of N rows.
    Discrete inputs give discrete outputs (replicated rows stay so); a conversion between float
    and discrete (``_to_copy``) replicates the primal rows (to discrete) or zeroes the tangents.
    """

    def rule(mode: StackedMode, func, args, kwargs):
        name = func.overloadpacket.__name__
        stacked = [leaf for leaf in operand_leaves(args) if mode.is_stacked(leaf)]
        ndim = max(a.dim() for a in stacked)
        for position in dim_positions:
            dims = args[position] if position < len(args) else None
            if any(_dim(d, ndim) == 0 for d in ([dims] if isinstance(dims, int) else dims or ())):
                raise UnsupportedOperation(f"{name} along the batch dimension")
        for position in dim_lists:
            dims = args[position] if position < len(args) else None
            if dims is None or (isinstance(dims, (list, tuple)) and not dims):
                raise UnsupportedOperation(f"{name} over all dimensions, the batch's included (it mixes the rows "
                                           "of a batch)")
            if any(_dim(d, ndim) == 0 for d in ([dims] if isinstance(dims, int) else dims)):
                raise UnsupportedOperation(f"{name} along the batch dimension")
        if any(isinstance(leaf, torch.Tensor) and not mode.is_stacked(leaf) for leaf in operand_leaves(args)):
            raise UnsupportedOperation(f"{name} of stacked and constant tensors")
        discrete = {is_discrete(leaf) for leaf in stacked}
        if len(discrete) != 1:
            raise UnsupportedOperation(f"{name} of float and integer tensors together")
        result = func(*args, **kwargs)
        for item in (result if isinstance(result, (tuple, list)) else [result]):
            if isinstance(item, torch.Tensor):
                if item.is_complex() or (is_discrete(item) not in discrete and func.overloadpacket is not aten._to_copy):
                    raise UnsupportedOperation(f"{name} to {item.dtype}")
                mode.mark(item)
                if is_discrete(item) not in discrete:  # a conversion: no derivative either way
                    mode.replicate(item) if is_discrete(item) else mode.zero_tangents(item)
        return result

    return takes(rule, discrete=True)


def _permute(mode, func, args, kwargs):
    source = only_first_stacked(mode, args, kwargs, "permute")
    if _dim(args[1][0], source.dim()) != 0:
        raise UnsupportedOperation("permute moves the batch dimension")
    return mode.mark(func(*args, **kwargs))


def _transpose(mode, func, args, kwargs):
    source = only_first_stacked(mode, args, kwargs, "transpose")
    if 0 in (_dim(args[1], source.dim()), _dim(args[2], source.dim())):
        raise UnsupportedOperation("transpose moves the batch dimension")
    return mode.mark(func(*args, **kwargs))


def _rows_apart(mode: StackedMode, source: torch.Tensor, columns: int,
                primal: Callable[[torch.Tensor, torch.Tensor], None],
                tangent: Callable[[torch.Tensor, torch.Tensor], None]) -> torch.Tensor:
    """A matrix product of stacked rows (N m, columns): ``primal(rows, out)`` on the primal rows (the
    op as the decoder calls it), ``tangent(rows, out)`` (its linear part) on the tangent rows.

    Apart because a GEMM rounds by its row count (its kernel and blocking change with it): one
    product over all (k + 1) B rows leaves the primal rows a last bit off a plain forward pass of
    B rows, a ReLU input within round-off of 0 can cross it and take the kink's other one-sided
    derivative, and the probe check against reverse mode then refuses exact rules (NVlabs'
    StyleGAN2 at 256 px and w_dim 512: 4 of its 4 million leaky-ReLU inputs on the probe). Apart,
    the primal rows are the plain forward pass's, bit for bit."""
    out = source.new_empty((source.shape[0], columns))
    width = mode.primal_rows * mode.multiplicity(source)
    primal(source[:width], out[:width])
    tangent(source[width:], out[width:])
    return mode.mark(out)


def _mm(mode, func, args, kwargs):
    source, weight = only_first_stacked(mode, args, kwargs, "mm"), args[1]

    def product(rows: torch.Tensor, out: torch.Tensor) -> None:
        torch.mm(rows, weight, out=out)

    return _rows_apart(mode, source, weight.shape[1], product, product)


def _bmm(mode, func, args, kwargs):
    """bmm with one constant operand that is the same matrix for every row (an expanded weight,
    as matmul makes of (N, L, C) @ W), or the same m matrices for each stacked row carried in m
    rows (a broadcast grid): linear in the stacked one. Of two stacked operands (attention's
    q k^T), the product rule as torch's jvp has it: d(A B) = dA B + A dB."""
    first, second = args[0], args[1]
    if mode.is_stacked(first) != mode.is_stacked(second):
        constant, stacked = (second, first) if mode.is_stacked(first) else (first, second)
        if _row_free(constant, 3) or (constant.shape[0] == stacked.shape[0] and has_equal_blocks(
                constant, mode.primal_rows * (mode.slots + 1))):  # the same m matrices for every stacked row
            return mode.mark(func(first, second))
        raise UnsupportedOperation("bmm with a different matrix per row")
    if mode.multiplicity(first) != mode.multiplicity(second):
        raise UnsupportedOperation("bmm of stacked tensors of different layouts")
    left, right = mode.primal(first), mode.primal(second)
    out = first.new_empty((first.shape[0], first.shape[1], second.shape[2]))
    torch.bmm(left, right, out=out[: left.shape[0]])
    tangents = out[left.shape[0]:].view(mode.slots, left.shape[0], *out.shape[1:])
    torch.add(torch.matmul(mode.tangents(first), right), torch.matmul(left, mode.tangents(second)), out=tangents)
    return mode.mark(out)


def _addmm(mode, func, args, kwargs):
    bias, source, weight = args[0], args[1], args[2]
    beta, alpha = kwargs.get("beta", 1), kwargs.get("alpha", 1)
    if mode.is_stacked(bias) or mode.is_stacked(weight) or not mode.is_stacked(source) or not _row_free(bias, 2):
        raise UnsupportedOperation("addmm with a stacked bias or weight")
    width = mode.primal_rows * mode.multiplicity(source)
    shared = bias if bias.dim() < 2 or bias.shape[0] == 1 else bias[:width]  # else expanded over the rows

    def affine(rows: torch.Tensor, out: torch.Tensor) -> None:
        torch.addmm(shared, rows, weight, beta=beta, alpha=alpha, out=out)

    def linear(rows: torch.Tensor, out: torch.Tensor) -> None:
        torch.mm(rows, weight, out=out)
        if alpha != 1:
            out.mul_(alpha)

    return _rows_apart(mode, source, weight.shape[1], affine, linear)


def _add_bias(out: torch.Tensor, bias: torch.Tensor | None, primal_rows: int) -> None:
    if bias is not None:
        out[:primal_rows] += bias.reshape(1, -1, *([1] * (out.dim() - 2)))


def _convolution(mode, func, args, kwargs):
    if is_folded(mode, args):  # StyleGAN2's per-sample weights over a folded batch
        return folded_convolution(mode, func, args, kwargs)
    source = only_first_stacked(mode, args, kwargs, "convolution")
    if mode.lead(source):
        raise UnsupportedOperation("convolution of a tensor whose batch dimension was moved")
    weight, bias = args[1], args[2]
    out = mode.mark(func(source, weight, None, *args[3:], **kwargs))
    _add_bias(out, bias, mode.primal_rows * mode.multiplicity(out))
    if mode.exact_primal:  # the tangent rows as a run has them; the primal rows with the bias inside the kernel
        mode.primal(out).copy_(func(mode.primal(source), weight, bias, *args[3:], **kwargs))
    return out


def _batch_norm_affine(mode, source, weight, bias, mean, var, eps) -> torch.Tensor:
    """Eval-mode batch norm is the per-channel affine map x * scale + shift."""
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    shape = (1, -1, *([1] * (source.dim() - 2)))
    out = mode.mark(source * scale.reshape(shape).to(source.dtype))
    mode.primal(out).add_(shift.reshape(shape).to(source.dtype))
    return out


def _batch_norm_no_training(mode, func, args, kwargs):
    source = only_first_stacked(mode, args, kwargs, "batch norm")
    weight, bias, mean, var, _momentum, eps = args[1:7]
    out = _batch_norm_affine(mode, source, weight, bias, mean, var, eps)
    if mode.exact_primal:
        mode.primal(out).copy_(func(mode.primal(source), *args[1:], **kwargs)[0])
    empty = source.new_empty((0,))
    return out, empty, empty


def _native_batch_norm(mode, func, args, kwargs):
    source = only_first_stacked(mode, args, kwargs, "batch norm")
    weight, bias, mean, var, training, _momentum, eps = args[1:8]
    if training or mean is None or var is None:
        raise UnsupportedOperation("batch norm in training mode mixes the rows of a batch (use eval mode)")
    out = _batch_norm_affine(mode, source, weight, bias, mean, var, eps)
    if mode.exact_primal:
        mode.primal(out).copy_(func(mode.primal(source), *args[1:], **kwargs)[0])
    empty = source.new_empty((0,))
    return (out, *[empty] * (len(func._schema.returns) - 1))  # cuDNN's adds a reserve buffer


def _linear_combination(mode, func, args, kwargs):
    """add/sub of two stacked tensors (rows line up), or with a constant on the primal rows."""
    args = with_shared_rows(mode, args)
    first, second = args[0], args[1]
    alpha = kwargs.get("alpha", 1)
    if is_discrete(first) or is_discrete(second):
        return pointwise(mode, func, args, kwargs)
    if mode.is_stacked(first) and mode.is_stacked(second):
        if mode.multiplicity(first) != mode.multiplicity(second) or first.shape != second.shape:
            return pointwise(mode, func, args, kwargs)
        return mode.mark(func(*args, **kwargs))
    stacked, constant = (first, second) if mode.is_stacked(first) else (second, first)
    if not _row_free(constant, stacked.dim()) or broadcast_shape(
            stacked.shape, getattr(constant, "shape", ())) != stacked.shape:
        return pointwise(mode, func, args, kwargs)
    sign = -1 if func.overloadpacket is aten.sub else 1
    if stacked is first:
        out = mode.mark(stacked.clone())
        mode.primal(out).add_(constant, alpha=sign * alpha)
    else:  # constant (+/-) alpha * stacked
        out = mode.mark(stacked * (sign * alpha))
        mode.primal(out).add_(constant)
    return out


def _product(mode: StackedMode, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """a * b, both stacked (BigGAN's conditional batch norm: x times a scale computed from z):
    P_a P_b on the primal rows, T_a,j P_b + P_a T_b,j on slot j (the product rule, all slots at once)."""
    left, right = mode.primal(first), mode.primal(second)
    primal_out = left * right
    out = primal_out.new_empty((primal_out.shape[0] * (mode.slots + 1), *primal_out.shape[1:]))
    out[: primal_out.shape[0]] = primal_out
    tangents = out[primal_out.shape[0]:].view(mode.slots, *primal_out.shape)
    torch.mul(mode.tangents(first), right, out=tangents)
    tangents.addcmul_(left, mode.tangents(second))
    return mode.mark(out)


def _scaling(mode, func, args, kwargs):
    """mul/div by a constant: linear in the stacked operand."""
    args = with_shared_rows(mode, args)
    first, second = args[0], args[1]
    if kwargs.get("rounding_mode") is not None or is_discrete(first) or is_discrete(second):  # piecewise constant
        return pointwise(mode, func, args, kwargs)
    if mode.is_stacked(first) and not mode.is_stacked(second) and _row_free(second, first.dim()):
        if broadcast_shape(first.shape, getattr(second, "shape", ())) == first.shape:
            return mode.mark(func(*args, **kwargs))
    if (func.overloadpacket is aten.mul and mode.is_stacked(first) and mode.is_stacked(second)
            and mode.multiplicity(first) == mode.multiplicity(second) and first.dim() == second.dim()):
        return _product(mode, first, second)
    if (func.overloadpacket is aten.mul and mode.is_stacked(second) and not mode.is_stacked(first)
            and _row_free(first, second.dim())
            and broadcast_shape(second.shape, getattr(first, "shape", ())) == second.shape):
        return mode.mark(func(*args, **kwargs))
    return pointwise(mode, func, args, kwargs)


_CAT_OF_STACKED = _structural(dim_positions=(1,))


def _cat(mode, func, args, kwargs):
    """cat of stacked tensors, or of stacked tensors and constants whose rows are all equal (a
    class label's one-hot code or embedding beside the latent): the constant's columns hold its
    values on the primal rows and zeros on the tangent rows (a constant has no derivative)."""
    tensors = list(args[0])
    if all(mode.is_stacked(item) for item in tensors):
        return _CAT_OF_STACKED(mode, func, args, kwargs)
    stacked = [item for item in tensors if mode.is_stacked(item)]
    rows, ndim = stacked[0].shape[0], stacked[0].dim()
    dim = _dim(args[1] if len(args) > 1 else kwargs.get("dim", 0), ndim)
    if dim == 0:
        raise UnsupportedOperation("cat along the batch dimension")
    constants = [item for item in tensors if not mode.is_stacked(item)]
    if len({mode.multiplicity(item) for item in stacked}) != 1 or not all(
            isinstance(item, torch.Tensor) and item.dim() == ndim and item.shape[0] == rows and has_equal_rows(item)
            for item in constants):
        raise UnsupportedOperation("cat of stacked rows and a constant that differs per row")
    out = mode.mark(func(*args, **kwargs))
    if out.is_complex() or {is_discrete(item) for item in stacked} != {is_discrete(out)}:
        raise UnsupportedOperation(f"cat to {out.dtype}")
    if is_discrete(out):  # the constants' values on every row, like the stacked (replicated) ones
        return out
    tangent_rows, offset = out[mode.primal_rows * mode.multiplicity(out):], 0
    for item in tensors:
        if not mode.is_stacked(item):
            tangent_rows.narrow(dim, offset, item.shape[dim]).zero_()
        offset += item.shape[dim]
    return out


_VIEW_LIKE = _structural()
RULES: dict[Any, Callable] = {
    # moves and copies within rows (the row count is checked on the output); more in stacked_rules_index
    aten._to_copy: _VIEW_LIKE, aten.contiguous: _VIEW_LIKE, aten.pixel_shuffle: _VIEW_LIKE, aten.pixel_unshuffle: _VIEW_LIKE, aten.neg: _VIEW_LIKE,
    aten.upsample_nearest1d: _VIEW_LIKE, aten.upsample_nearest2d: _VIEW_LIKE, aten.upsample_nearest3d: _VIEW_LIKE,
    aten.upsample_bilinear2d: _VIEW_LIKE, aten.upsample_linear1d: _VIEW_LIKE, aten.upsample_trilinear3d: _VIEW_LIKE,
    aten.upsample_bicubic2d: _VIEW_LIKE, aten.avg_pool1d: _VIEW_LIKE, aten.avg_pool2d: _VIEW_LIKE,
    aten.avg_pool3d: _VIEW_LIKE, aten._adaptive_avg_pool2d: _VIEW_LIKE, aten.reflection_pad1d: _VIEW_LIKE,
    aten.reflection_pad2d: _VIEW_LIKE, aten.replication_pad1d: _VIEW_LIKE, aten.replication_pad2d: _VIEW_LIKE,
    aten.permute: takes(_permute, discrete=True), aten.transpose: takes(_transpose, discrete=True),
    aten.split: _structural(dim_positions=(2,)), aten.split_with_sizes: _structural(dim_positions=(2,)),
    aten.narrow: _structural(dim_positions=(1,)), aten.flip: _structural(dim_lists=(1,)),
    aten.cumsum: _structural(dim_positions=(1,)),
    aten.cat: takes(_cat, discrete=True),
    aten.sum: _structural(dim_lists=(1,)), aten.mean: _structural(dim_lists=(1,)),
    # linear maps with constant weights; affine ones add their bias to the primal rows only
    aten.mm: _mm, aten.bmm: _bmm, aten.addmm: _addmm,
    aten.convolution: takes(_convolution, moved=True), aten._convolution: takes(_convolution, moved=True),  # traced
    aten._native_batch_norm_legit_no_training: _batch_norm_no_training,
    aten.native_batch_norm: _native_batch_norm,
    aten.cudnn_batch_norm: _native_batch_norm,  # what eval-mode batch norm runs on CUDA
    aten.miopen_batch_norm: _native_batch_norm,  # ... and on ROCm
    aten.add: takes(_linear_combination, discrete=True), aten.sub: takes(_linear_combination, discrete=True),
    aten.mul: takes(_scaling, discrete=True), aten.div: takes(_scaling, discrete=True),
    # nonlinear but row by row
    aten._softmax: rowwise, aten._log_softmax: rowwise, aten._safe_softmax: rowwise, aten.max_pool2d_with_indices: rowwise,
    **NORM_RULES,  # layer and group norm in closed form, vector norms
    **ATTENTION_RULES,  # fused scaled dot-product attention
    # new axes, selections, indexing, bin searches, fresh constants
    **INDEX_RULES, **FOLDED_RULES,
}
"""Rules by op; other ops tagged pointwise get ``pointwise``; anything else is unsupported."""


def rule_for(func) -> Callable | None:
    """The rule for an aten overload: its entry in ``RULES``, else the pointwise rule for an
    elementwise op, else None (unsupported; so is any ``out=`` overload)."""
    if "out" in func._overloadname:
        return None
    packet = func.overloadpacket
    rule = RULES.get(packet)
    if rule is None and (torch.Tag.pointwise in func.tags or packet.__name__.rstrip("_") in ELEMENTWISE):
        rule = pointwise
    return rule
