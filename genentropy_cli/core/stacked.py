"""Jacobians from one plain forward pass over stacked rows [z; e_1; ...; e_k] ("stacked tangents").

Forward-mode AD through torch.func (``jacobian.batched_jacobian``) recomputes the primal at
the small batch once per tangent chunk, pushes the parameters' zero tangents through real
matmuls and convolutions, and copies tangents between layouts: on 2 CPU cores it costs
1.5-1.9x the floor of (d + 1) plain forward passes (benchmarks/RESULTS.md). For a decoder that treats the rows of its
batch independently, the primal batch P (B rows) and k tangent batches T_1..T_k stacked as
one batch S of N = (k + 1) B rows can go through the decoder ONCE, at the floor's speed,
provided the few ops that are not linear in their stacked input follow a rule:

    y = A x (matmul, convolution, view, sum, ...)   ->  A S on all rows
    y = A x + b (bias, eval-mode batch norm)        ->  A S, then + b on the primal rows only
    y = f(x, ...) pointwise                          ->  f(P) on the primal rows,
                                                         f'(P) * T_j on tangent slot j
    y = g(x) row-wise (softmax, layer norm, pool)    ->  torch.func.jvp of g, slot by slot

which is forward-mode AD, exact (the same formulas torch's own jvp rules use). A dispatch
mode applies the rules op by op; an op without a rule, or one that would mix rows (a
reduction over the batch, train-mode batch norm, a constant that differs per row), raises
``UnsupportedOperation`` and the caller falls back to torch.func.

A stacked tensor may carry its rows in ``m`` consecutive rows each (a view that folds the
batch with the next dimension, as ``matmul`` on (N, L, C) inputs does): its first B * m rows
are the primal.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.func import jvp, vmap
from torch.utils._python_dispatch import TorchDispatchMode

DecoderFn = Callable[[torch.Tensor], torch.Tensor]
aten = torch.ops.aten
_TAG = "_genentropy_stacked"
"""Attribute a stacked tensor carries: (the mode's token, m). A view is a new tensor object
without it, as with the weak dictionary this replaces; the tag keeps nothing alive."""


class UnsupportedOperation(RuntimeError):
    """The decoder uses an op the stacked method has no exact rule for (use torch.func)."""


def _leaves(*values: Any) -> list:
    """The tensors and scalars in op arguments: positional values, lists of them (cat, stack),
    dict values (kwargs), one level deep as aten schemas have them (cheaper than pytree)."""
    found = []
    for value in values:
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, (list, tuple)):
            for item in value:
                found.extend(item if isinstance(item, (list, tuple)) else (item,))
        else:
            found.append(value)
    return found


def _dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


def _row_free(value: Any, ndim: int) -> bool:
    """A constant that is the same for every row of an ``ndim``-dimensional stacked tensor."""
    if not isinstance(value, torch.Tensor):
        return True
    return value.dim() < ndim or (value.dim() == ndim and (value.shape[0] == 1 or value.stride(0) == 0))


class StackedRows(TorchDispatchMode):
    """Dispatch mode that runs a decoder on stacked rows with the rules of the module doc.

    ``primal_rows`` (B) and ``slots`` (k) fix the layout N = (k + 1) B. ``peak_row_bytes``
    records, per stacked row, the largest bytes one op held (inputs plus output): the
    activation footprint ``planning`` sizes batches with.
    """

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        """No torch._dynamo wrapper around ``__torch_dispatch__``: nothing is compiled in here, and
        the wrapper's first call imports torch._dynamo (seconds of start-up)."""
        return False

    def __init__(self, primal_rows: int, slots: int):
        super().__init__()
        self.primal_rows = primal_rows
        self.slots = slots
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

    def mark(self, tensor: torch.Tensor) -> torch.Tensor:
        size = tensor.shape[0] if tensor.dim() else 0
        if size == 0 or size % self.rows:
            raise UnsupportedOperation(f"an op returned {size} rows for a batch of {self.rows}: it mixes rows")
        setattr(tensor, _TAG, (self._token, size // self.rows))
        return tensor

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
        leaves = _leaves(args, kwargs)
        stacked = [leaf for leaf in leaves if self.is_stacked(leaf)]
        if not stacked:
            return func(*args, **kwargs)  # parameters, shapes, fresh constants
        packet = func.overloadpacket
        rule = _RULES.get(packet)
        if rule is None and (torch.Tag.pointwise in func.tags or packet.__name__.rstrip("_") in _ELEMENTWISE):
            rule = _pointwise
        try:
            if rule is None or "out" in func._overloadname:
                raise UnsupportedOperation(f"no stacked-tangent rule for {packet.__name__}")
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


# ---------------------------------------------------------------------- rules


def _only_first_stacked(mode: StackedRows, args, kwargs, name: str) -> torch.Tensor:
    source = args[0]
    leaves = _leaves(args[1:], kwargs)
    if not mode.is_stacked(source) or any(mode.is_stacked(leaf) for leaf in leaves):
        raise UnsupportedOperation(f"{name} with a stacked operand other than its input")
    return source


def _structural(dim_positions: tuple[int, ...] = (), dim_lists: tuple[int, ...] = ()):
    """Ops that move, copy or linearly combine values within rows: applied to all rows.

    Arguments at ``dim_positions`` (ints) and ``dim_lists`` (lists of ints) are dimensions,
    which must not be dim 0 (the rows). Every tensor output must still have a multiple of N rows.
    """

    def rule(mode: StackedRows, func, args, kwargs):
        ndim = max(a.dim() for a in _leaves(args) if mode.is_stacked(a))
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
        leaves = _leaves(args)
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

_ELEMENTWISE = frozenset(_DERIVATIVES) | {
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
    if inplace and not mode.is_stacked(args[0]):
        raise UnsupportedOperation(f"in-place {func.overloadpacket.__name__} into a constant")

    def compute(first, *rest, **options):  # an in-place op is differentiated on a copy
        return func(first.clone() if inplace else first, *rest, **options)

    if any(mode.is_stacked(leaf) for leaf in _leaves(kwargs)):
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


_VIEW_LIKE = _structural()
_RULES: dict[Any, Callable] = {
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
    aten.cat: _structural(dim_positions=(1,)), aten.stack: _structural(dim_positions=(1,)),
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
# cat/stack take a list first: the dim check above reads args[1], and every list member must be stacked.


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
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``stacked_jacobian`` with outputs, plus the largest bytes per stacked row one op held."""
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
        mode = StackedRows(batch, count)
        try:
            with torch.no_grad(), mode:
                mode.mark(rows)
                result = flat_fn(rows)
        except Exception:
            if mode.unsupported is not None:
                raise UnsupportedOperation(mode.unsupported) from None
            raise
        if not mode.is_stacked(result) or mode.multiplicity(result) != 1 or result.dim() != 2:
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
