"""The stacked-tangent rules, op by op: how each aten op acts on stacked rows [P; T_1; ...; T_k]
(primal rows P, tangent slots T_j; the mechanism is ``stacked``).

    y = A x (matmul, convolution, view, sum, ...)   ->  A S on all rows
    y = A x + b (bias, eval-mode batch norm)        ->  A S, then + b on the primal rows only
    y = f(x, ...) pointwise                          ->  f(P) on the primal rows,
                                                         f'(P) * T_j on tangent slot j
    y = g(x) row-wise (softmax, layer norm, pool)    ->  torch.func.jvp of g, slot by slot

A rule is ``rule(mode, func, args, kwargs)``: ``mode`` (a ``StackedMode``) tells stacked tensors
from constants and lays rows out; the rule returns the op's result with its stacked outputs
marked (``mode.mark``), or raises ``UnsupportedOperation`` where the op would mix rows. Adding
an op is one entry in ``RULES`` (or a name in ``ELEMENTWISE`` for an activation torch does not
tag pointwise), here.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.func import jvp, vmap

from genentropy_cli.core.stacked_operands import (
    StackedMode,
    UnsupportedOperation,
    has_equal_rows,
    operand_leaves,
    shared_row,
)
from genentropy_cli.core.stacked_operands import dim_index as _dim
from genentropy_cli.core.stacked_operands import row_free as _row_free

__all__ = ["ELEMENTWISE", "RULES", "StackedMode", "UnsupportedOperation", "operand_leaves", "rule_for"]

aten = torch.ops.aten


# ---------------------------------------------------------------------- rules


def _only_first_stacked(mode: StackedMode, args, kwargs, name: str) -> torch.Tensor:
    source = args[0]
    leaves = operand_leaves(args[1:], kwargs)
    if not mode.is_stacked(source) or any(mode.is_stacked(leaf) for leaf in leaves):
        raise UnsupportedOperation(f"{name} with a stacked operand other than its input")
    return source


def _with_shared_rows(mode: StackedMode, args: tuple) -> tuple:
    """``args`` with each constant whose rows are all equal as its first row (``shared_row``),
    e.g. a label's embedding that scales or shifts the stacked rows."""
    rows = max((arg.shape[0] for arg in args if mode.is_stacked(arg) and arg.dim()), default=0)
    return tuple(arg if mode.is_stacked(arg) else shared_row(arg, rows) for arg in args)


def _structural(dim_positions: tuple[int, ...] = (), dim_lists: tuple[int, ...] = ()):
    """Ops that move, copy or linearly combine values within rows: applied to all rows.

    Arguments at ``dim_positions`` (ints) and ``dim_lists`` (lists of ints) are dimensions,
    which must not be dim 0 (the rows). Every tensor output must still have a multiple of N rows.
    """

    def rule(mode: StackedMode, func, args, kwargs):
        ndim = max(a.dim() for a in operand_leaves(args) if mode.is_stacked(a))
        for position in dim_positions:
            dims = args[position] if position < len(args) else None
            if any(_dim(d, ndim) == 0 for d in ([dims] if isinstance(dims, int) else dims or ())):
                raise UnsupportedOperation(f"{func.overloadpacket.__name__} along the batch dimension")
        for position in dim_lists:
            dims = args[position] if position < len(args) else None
            if dims is None or (isinstance(dims, (list, tuple)) and not dims):
                raise UnsupportedOperation(f"{func.overloadpacket.__name__} over all dimensions")
            if any(_dim(d, ndim) == 0 for d in ([dims] if isinstance(dims, int) else dims)):
                raise UnsupportedOperation(f"{func.overloadpacket.__name__} along the batch dimension")
        leaves = operand_leaves(args)
        if any(isinstance(leaf, torch.Tensor) and not mode.is_stacked(leaf) for leaf in leaves):
            raise UnsupportedOperation(f"{func.overloadpacket.__name__} of stacked and constant tensors")
        result = func(*args, **kwargs)
        for item in (result if isinstance(result, (tuple, list)) else [result]):
            if isinstance(item, torch.Tensor):
                if not item.is_floating_point():
                    raise UnsupportedOperation(f"{func.overloadpacket.__name__} to {item.dtype}")
                mode.mark(item)
        return result

    return rule


def _permute(mode, func, args, kwargs):
    source = _only_first_stacked(mode, args, kwargs, "permute")
    if _dim(args[1][0], source.dim()) != 0:
        raise UnsupportedOperation("permute moves the batch dimension")
    return mode.mark(func(*args, **kwargs))


def _transpose(mode, func, args, kwargs):
    source = _only_first_stacked(mode, args, kwargs, "transpose")
    if 0 in (_dim(args[1], source.dim()), _dim(args[2], source.dim())):
        raise UnsupportedOperation("transpose moves the batch dimension")
    return mode.mark(func(*args, **kwargs))


def _unsqueeze(mode, func, args, kwargs):
    source = _only_first_stacked(mode, args, kwargs, "unsqueeze")
    if _dim(args[1], source.dim() + 1) == 0:
        raise UnsupportedOperation("unsqueeze before the batch dimension")
    return mode.mark(func(*args, **kwargs))


def _expand(mode, func, args, kwargs):
    source = _only_first_stacked(mode, args, kwargs, "expand")
    sizes = list(args[1])
    if len(sizes) != source.dim() or sizes[0] not in (-1, source.shape[0]):
        raise UnsupportedOperation("expand along the batch dimension")
    return mode.mark(func(*args, **kwargs))


def _mm(mode, func, args, kwargs):
    source = _only_first_stacked(mode, args, kwargs, "mm")
    return mode.mark(func(source, args[1]))


def _bmm(mode, func, args, kwargs):
    """bmm with one constant operand that is the same matrix for every row (an expanded weight,
    as matmul makes of (N, L, C) @ W): linear in the stacked one."""
    first, second = args[0], args[1]
    if mode.is_stacked(first) != mode.is_stacked(second):
        constant = second if mode.is_stacked(first) else first
        if _row_free(constant, 3):
            return mode.mark(func(first, second))
    raise UnsupportedOperation("bmm of two stacked tensors, or with a different matrix per row")


def _addmm(mode, func, args, kwargs):
    bias, source, weight = args[0], args[1], args[2]
    beta, alpha = kwargs.get("beta", 1), kwargs.get("alpha", 1)
    if mode.is_stacked(bias) or mode.is_stacked(weight) or not mode.is_stacked(source) or not _row_free(bias, 2):
        raise UnsupportedOperation("addmm with a stacked bias or weight")
    out = torch.mm(source, weight)
    if alpha != 1:
        out.mul_(alpha)
    mode.primal(mode.mark(out)).add_(bias, alpha=beta)
    return out


def _add_bias(out: torch.Tensor, bias: torch.Tensor | None, primal_rows: int) -> None:
    if bias is not None:
        out[:primal_rows] += bias.reshape(1, -1, *([1] * (out.dim() - 2)))


def _convolution(mode, func, args, kwargs):
    source = _only_first_stacked(mode, args, kwargs, "convolution")
    weight, bias = args[1], args[2]
    out = mode.mark(func(source, weight, None, *args[3:], **kwargs))
    _add_bias(out, bias, mode.primal_rows * mode.multiplicity(out))
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
    source = _only_first_stacked(mode, args, kwargs, "batch norm")
    weight, bias, mean, var, _momentum, eps = args[1:7]
    out = _batch_norm_affine(mode, source, weight, bias, mean, var, eps)
    empty = source.new_empty((0,))
    return out, empty, empty


def _native_batch_norm(mode, func, args, kwargs):
    source = _only_first_stacked(mode, args, kwargs, "batch norm")
    weight, bias, mean, var, training, _momentum, eps = args[1:8]
    if training or mean is None or var is None:
        raise UnsupportedOperation("batch norm in training mode mixes the rows of a batch (use eval mode)")
    out = _batch_norm_affine(mode, source, weight, bias, mean, var, eps)
    empty = source.new_empty((0,))
    return (out, *[empty] * (len(func._schema.returns) - 1))  # cuDNN's adds a reserve buffer


def _linear_combination(mode, func, args, kwargs):
    """add/sub of two stacked tensors (rows line up), or with a constant on the primal rows."""
    args = _with_shared_rows(mode, args)
    first, second = args[0], args[1]
    alpha = kwargs.get("alpha", 1)
    if mode.is_stacked(first) and mode.is_stacked(second):
        if mode.multiplicity(first) != mode.multiplicity(second) or first.shape != second.shape:
            return _pointwise(mode, func, args, kwargs)
        return mode.mark(func(*args, **kwargs))
    stacked, constant = (first, second) if mode.is_stacked(first) else (second, first)
    if not _row_free(constant, stacked.dim()) or torch.broadcast_shapes(
            stacked.shape, getattr(constant, "shape", ())) != stacked.shape:
        return _pointwise(mode, func, args, kwargs)
    sign = -1 if func.overloadpacket is aten.sub else 1
    if stacked is first:
        out = mode.mark(stacked.clone())
        mode.primal(out).add_(constant, alpha=sign * alpha)
    else:  # constant (+/-) alpha * stacked
        out = mode.mark(stacked * (sign * alpha))
        mode.primal(out).add_(constant)
    return out


def _scaling(mode, func, args, kwargs):
    """mul/div by a constant: linear in the stacked operand."""
    args = _with_shared_rows(mode, args)
    first, second = args[0], args[1]
    if kwargs.get("rounding_mode") is not None:  # floor/trunc division: piecewise constant
        return _pointwise(mode, func, args, kwargs)
    if mode.is_stacked(first) and not mode.is_stacked(second) and _row_free(second, first.dim()):
        if torch.broadcast_shapes(first.shape, getattr(second, "shape", ())) == first.shape:
            return mode.mark(func(*args, **kwargs))
    if (func.overloadpacket is aten.mul and mode.is_stacked(second) and not mode.is_stacked(first)
            and _row_free(first, second.dim())
            and torch.broadcast_shapes(second.shape, getattr(first, "shape", ())) == second.shape):
        return mode.mark(func(*args, **kwargs))
    return _pointwise(mode, func, args, kwargs)


def _leaky_relu_derivative(x: torch.Tensor, y: torch.Tensor, slope: float = 0.01, *rest: Any) -> torch.Tensor:
    return torch.where(x > 0, torch.ones_like(x), torch.full_like(x, slope))


_DERIVATIVES: dict[str, Callable[..., torch.Tensor]] = {
    "relu": lambda x, y, *rest: (x > 0).to(x.dtype),
    "sigmoid": lambda x, y, *rest: y * (1 - y),
    "tanh": lambda x, y, *rest: 1 - y * y,
    "exp": lambda x, y, *rest: y,
    "leaky_relu": _leaky_relu_derivative,
}
"""f'(x) from the input x and output y (and the op's other arguments), as torch's own
derivative formulas have them; every other pointwise op is differentiated by jvp."""

ELEMENTWISE = frozenset(_DERIVATIVES) | {
    "elu", "celu", "selu", "gelu", "silu", "mish", "softplus", "hardtanh", "hardswish", "hardsigmoid", "threshold"}
"""Elementwise activations that older torch releases (2.11) leave without ``Tag.pointwise``."""


def _is_inplace(func) -> bool:
    """An op that writes into its first argument: tagged so where torch has ``Tag.inplace`` (not
    2.11, which the project's ``torch>=2.3`` admits), else named so (relu_, add_)."""
    tag = getattr(torch.Tag, "inplace", None)
    return (tag is not None and tag in func.tags) or func.overloadpacket.__name__.endswith("_")


def _pointwise(mode, func, args, kwargs):
    """y = f(x_1, ..., x_n) elementwise: primal rows f(P); tangent rows sum_i df/dx_i(P) * T_i.

    Each partial derivative df/dx_i(P) is the jvp of f in x_i with a tangent of ones
    (exact for an elementwise f), computed once at the primal and broadcast over the k slots.
    """
    inplace = _is_inplace(func)
    args = _with_shared_rows(mode, args)
    if inplace and not mode.is_stacked(args[0]):
        raise UnsupportedOperation(f"in-place {func.overloadpacket.__name__} into a constant")

    def compute(first, *rest, **options):  # an in-place op is differentiated on a copy
        return func(first.clone() if inplace else first, *rest, **options)

    if any(mode.is_stacked(leaf) for leaf in operand_leaves(kwargs)):
        raise UnsupportedOperation(f"{func.overloadpacket.__name__} with a stacked keyword argument")
    positions = [index for index, arg in enumerate(args) if mode.is_stacked(arg)]
    multiplicities = {mode.multiplicity(args[index]) for index in positions}
    ndim = max(args[index].dim() for index in positions)
    if len(multiplicities) != 1 or any(arg.dim() != ndim for arg in (args[i] for i in positions)):
        raise UnsupportedOperation(f"{func.overloadpacket.__name__} of stacked tensors of different layouts")
    if not all(_row_free(arg, ndim) for index, arg in enumerate(args) if index not in positions):
        raise UnsupportedOperation(f"{func.overloadpacket.__name__} with a constant that differs per row")
    primals = [mode.primal(arg) if index in positions else arg for index, arg in enumerate(args)]

    closed_form = _DERIVATIVES.get(func.overloadpacket.__name__.rstrip("_")) if positions == [0] else None

    def partial(index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if closed_form is not None:  # the common activations, without jvp's per-call overhead
            value = compute(*primals, **kwargs)
            return value, closed_form(primals[0], value, *primals[1:])

        def along(value):
            return compute(*primals[:index], value, *primals[index + 1:], **kwargs)

        # a compact copy: jvp allocates zeros as large as its primal's whole storage (all N rows),
        # and an expanded primal would alias
        at = primals[index].clone(memory_format=torch.contiguous_format)
        return jvp(along, (at,), (torch.ones_like(at),))

    try:
        with mode.transforms_enabled():
            pairs = [partial(index) for index in positions]
    except Exception as error:  # e.g. comparisons: no derivative to take
        raise UnsupportedOperation(f"{func.overloadpacket.__name__}: {error}") from None
    primal_out = pairs[0][0]
    if not primal_out.is_floating_point():
        raise UnsupportedOperation(f"{func.overloadpacket.__name__} returns {primal_out.dtype}, not a differentiable value")
    if inplace and args[0].shape != (primal_out.shape[0] * (mode.slots + 1), *primal_out.shape[1:]):
        raise UnsupportedOperation(f"in-place {func.overloadpacket.__name__} that broadcasts its target")
    if inplace and len(positions) == 1:  # the common case (ReLU(inplace=True)): no new buffer
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
    if inplace:  # several stacked operands: all tangents were read before the target changes
        args[0].copy_(out)
        return args[0]
    return mode.mark(out)


def _rowwise(mode, func, args, kwargs):
    """A nonlinear op that acts on each row alone (softmax over features, layer/group norm,
    pooling, padding): torch.func.jvp of the op at the primal, vmapped over the k slots."""
    source = _only_first_stacked(mode, args, kwargs, func.overloadpacket.__name__)
    if func.overloadpacket in (aten._softmax, aten._log_softmax) and _dim(args[1], source.dim()) == 0:
        raise UnsupportedOperation("softmax over the batch dimension")
    rest = args[1:]
    if func.overloadpacket is aten.native_group_norm:  # takes the batch size as an argument
        rest = (*args[1:3], mode.primal(source).shape[0], *args[4:])

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
    if not out.is_floating_point():
        raise UnsupportedOperation(f"cat to {out.dtype}")
    tangent_rows, offset = out[mode.primal_rows * mode.multiplicity(out):], 0
    for item in tensors:
        if not mode.is_stacked(item):
            tangent_rows.narrow(dim, offset, item.shape[dim]).zero_()
        offset += item.shape[dim]
    return out


_VIEW_LIKE = _structural()
RULES: dict[Any, Callable] = {
    # moves and copies within rows (the row count is checked on the output)
    aten.view: _VIEW_LIKE, aten._unsafe_view: _VIEW_LIKE, aten.reshape: _VIEW_LIKE, aten.alias: _VIEW_LIKE,
    aten.detach: _VIEW_LIKE, aten.clone: _VIEW_LIKE, aten._to_copy: _VIEW_LIKE, aten.contiguous: _VIEW_LIKE,
    aten.pixel_shuffle: _VIEW_LIKE, aten.pixel_unshuffle: _VIEW_LIKE, aten.neg: _VIEW_LIKE,
    aten.upsample_nearest1d: _VIEW_LIKE, aten.upsample_nearest2d: _VIEW_LIKE, aten.upsample_nearest3d: _VIEW_LIKE,
    aten.upsample_bilinear2d: _VIEW_LIKE, aten.upsample_linear1d: _VIEW_LIKE, aten.upsample_trilinear3d: _VIEW_LIKE,
    aten.upsample_bicubic2d: _VIEW_LIKE, aten.avg_pool1d: _VIEW_LIKE, aten.avg_pool2d: _VIEW_LIKE,
    aten.avg_pool3d: _VIEW_LIKE, aten._adaptive_avg_pool2d: _VIEW_LIKE, aten.reflection_pad1d: _VIEW_LIKE,
    aten.reflection_pad2d: _VIEW_LIKE, aten.replication_pad1d: _VIEW_LIKE, aten.replication_pad2d: _VIEW_LIKE,
    aten.permute: _permute, aten.transpose: _transpose, aten.unsqueeze: _unsqueeze, aten.expand: _expand,
    aten.squeeze: _structural(dim_positions=(1,)), aten.slice: _structural(dim_positions=(1,)),
    aten.select: _structural(dim_positions=(1,)), aten.split: _structural(dim_positions=(2,)),
    aten.split_with_sizes: _structural(dim_positions=(2,)), aten.unbind: _structural(dim_positions=(1,)),
    aten.narrow: _structural(dim_positions=(1,)), aten.flip: _structural(dim_lists=(1,)),
    aten.cat: _cat, aten.stack: _structural(dim_positions=(1,)),
    aten.sum: _structural(dim_lists=(1,)), aten.mean: _structural(dim_lists=(1,)),
    # linear maps with constant weights; affine ones add their bias to the primal rows only
    aten.mm: _mm, aten.bmm: _bmm, aten.addmm: _addmm, aten.convolution: _convolution,
    aten._native_batch_norm_legit_no_training: _batch_norm_no_training,
    aten.native_batch_norm: _native_batch_norm,
    aten.cudnn_batch_norm: _native_batch_norm,  # what eval-mode batch norm runs on CUDA
    aten.miopen_batch_norm: _native_batch_norm,  # ... and on ROCm
    aten.add: _linear_combination, aten.sub: _linear_combination,
    aten.mul: _scaling, aten.div: _scaling,
    # nonlinear but row by row
    aten._softmax: _rowwise, aten._log_softmax: _rowwise, aten.native_layer_norm: _rowwise,
    aten.native_group_norm: _rowwise, aten.max_pool2d_with_indices: _rowwise, aten.constant_pad_nd: _rowwise,
}
"""Rules by op; other ops tagged pointwise get ``_pointwise``; anything else is unsupported."""
# stack takes a list first: the dim check above reads args[1], and every list member must be stacked.


def rule_for(func) -> Callable | None:
    """The rule for an aten overload: its entry in ``RULES``, else the pointwise rule for an
    elementwise op, else None (unsupported; so is any ``out=`` overload)."""
    if "out" in func._overloadname:
        return None
    packet = func.overloadpacket
    rule = RULES.get(packet)
    if rule is None and (torch.Tag.pointwise in func.tags or packet.__name__.rstrip("_") in ELEMENTWISE):
        rule = _pointwise
    return rule
