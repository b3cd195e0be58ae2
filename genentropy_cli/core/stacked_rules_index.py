"""The stacked-tangent rules of ops that move, pick or make values within rows (``stacked_rules``
holds the registry): new axes, stacking, expanding, repeating, selecting, indexing, gathering,
scattering, constant padding, bin searches and fresh constants.

All but the last two are linear in the values they move (y = A x with A fixed by the indices):
applied to all rows they are exact forward-mode AD, provided the batch dimension stays one
dimension of its own and the indices are the same for every row of a sample. Indices computed
from the latent (a spline's bin) are discrete stacked tensors, the primal's on every row
(``stacked_operands``). A bin search (``searchsorted``, ``bucketize``) is piecewise constant:
its result is the primal's, replicated, and its derivative is zero. A fresh constant
(``zeros_like``, ``new_empty``) of stacked rows is stacked, its tangent rows zero; so is a
constant made for the whole stacked batch (all rows equal) once a stacked value is written into
it (StyleGAN3's ``eye(3).repeat([batch, 1, 1])`` filled from the latent).

These rules follow the batch dimension where leading dimensions were put before it
(``torch.stack((k, k + 1))`` of bin indices, then ``expand`` and ``gather`` of the knots, then
``unbind``, as zuko's splines do): ``lead`` is its position.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from genentropy_cli.core.stacked_operands import (
    StackedMode,
    UnsupportedOperation,
    has_equal_rows,
    is_discrete,
    operand_leaves,
    row_free,
    takes,
)
from genentropy_cli.core.stacked_operands import dim_index as _dim

__all__ = ["INDEX_RULES"]

aten = torch.ops.aten


def _stacked(mode: StackedMode, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    return [leaf for leaf in operand_leaves(args, kwargs) if mode.is_stacked(leaf)]


def _same_layout(mode: StackedMode, tensors: list[torch.Tensor], name: str) -> tuple[int, int]:
    """(lead, multiplicity) shared by ``tensors``, else UnsupportedOperation."""
    layouts = {(mode.lead(tensor), mode.multiplicity(tensor)) for tensor in tensors}
    if len(layouts) != 1:
        raise UnsupportedOperation(f"{name} of stacked tensors of different layouts")
    return layouts.pop()


def _relaid(new_lead: Callable[[StackedMode, Any, tuple, int], int]):
    """A rule for an op that moves values, dtype kept, of one stacked input (its other tensor
    arguments stacked alike): the op on all rows, the output's batch dimension at
    ``new_lead(mode, func, args, lead)`` (which raises where the op would touch it)."""

    def rule(mode: StackedMode, func, args, kwargs):
        name = func.overloadpacket.__name__
        stacked = _stacked(mode, args, kwargs)
        lead, _ = _same_layout(mode, stacked, name)
        if any(isinstance(leaf, torch.Tensor) and not mode.is_stacked(leaf) for leaf in operand_leaves(args, kwargs)):
            raise UnsupportedOperation(f"{name} of stacked and constant tensors")
        if len({is_discrete(tensor) for tensor in stacked}) != 1:
            raise UnsupportedOperation(f"{name} of float and integer tensors together")
        out_lead = new_lead(mode, func, args, lead)
        result = func(*args, **kwargs)
        for item in result if isinstance(result, (tuple, list)) else [result]:
            mode.mark(item, out_lead)
        return result

    return takes(rule, discrete=True, moved=True)


def _batch_dim_error(func) -> UnsupportedOperation:
    return UnsupportedOperation(f"{func.overloadpacket.__name__} along the batch dimension")


def _unsqueeze_lead(mode, func, args, lead: int) -> int:
    return lead + 1 if _dim(args[1], args[0].dim() + 1) <= lead else lead


def _squeeze_lead(mode, func, args, lead: int) -> int:
    source = args[0]
    dims = range(source.dim()) if len(args) < 2 else ([args[1]] if isinstance(args[1], int) else args[1])
    squeezed = {_dim(dim, source.dim()) for dim in dims if source.shape[_dim(dim, source.dim())] == 1}
    return lead - sum(1 for dim in squeezed if dim < lead)  # the batch dimension has N >= 2 rows


def _drop_lead(mode, func, args, lead: int) -> int:
    """select / unbind: removes a dimension, never the batch one."""
    dim = _dim(args[1] if len(args) > 1 else 0, args[0].dim())
    if dim == lead:
        raise _batch_dim_error(func)
    return lead - 1 if dim < lead else lead


def _slice_lead(mode, func, args, lead: int) -> int:
    """slice: along the batch dimension only the whole of it (``x[:, None]`` as traced)."""
    source, dim = args[0], _dim(args[1] if len(args) > 1 else 0, args[0].dim())
    given = list(args[2:5])
    start, end, step = given + [None, None, 1][len(given):]
    if dim == lead and not ((start or 0) == 0 and (end is None or end >= source.shape[dim]) and step == 1):
        raise _batch_dim_error(func)
    return lead


def _stack_lead(mode, func, args, lead: int) -> int:
    return lead + 1 if _dim(args[1] if len(args) > 1 else 0, args[0][0].dim() + 1) <= lead else lead


def _expand_lead(mode, func, args, lead: int) -> int:
    source, sizes = args[0], list(args[1])
    extra = len(sizes) - source.dim()
    if extra < 0 or sizes[extra + lead] not in (-1, source.shape[lead]):
        raise _batch_dim_error(func)
    return lead + extra


def _repeat_lead(mode, func, args, lead: int) -> int:
    """repeat: tiles within rows (new leading dimensions allowed), never along the batch dimension."""
    source, repeats = args[0], list(args[1])
    extra = len(repeats) - source.dim()
    if extra < 0 or repeats[extra + lead] != 1:
        raise _batch_dim_error(func)
    return lead + extra


def _same_lead(mode, func, args, lead: int) -> int:
    return lead


def _index_positions(indices: list, name: str) -> list[int]:
    """The indexed dimensions' positions: after the batch dimension, side by side (apart, numpy
    puts the indexed dimensions first, moving the batch dimension)."""
    positions = [number for number, index in enumerate(indices) if index is not None]
    if not positions:
        return positions
    if positions[0] == 0:
        raise UnsupportedOperation(f"{name} along the batch dimension")
    if positions != list(range(positions[0], positions[-1] + 1)):
        raise UnsupportedOperation(f"{name} with indices apart (moves the batch dimension)")
    return positions


def _index(mode, func, args, kwargs):
    """x[..., idx] with constant indices after the batch dimension: a linear pick."""
    source, indices = args[0], list(args[1])
    if not mode.is_stacked(source) or any(mode.is_stacked(index) for index in indices):
        raise UnsupportedOperation("index by a tensor computed from the latent")
    _index_positions(indices, "index")
    return mode.mark(func(*args, **kwargs))


def _index_select(mode, func, args, kwargs):
    source, dim, index = args[0], args[1], args[2]
    if not mode.is_stacked(source) or mode.is_stacked(index):
        raise UnsupportedOperation("index_select by a tensor computed from the latent")
    if _dim(dim, source.dim()) == 0:
        raise _batch_dim_error(func)
    return mode.mark(func(*args, **kwargs))


def _gather(mode, func, args, kwargs):
    """gather(x, dim, idx) off the batch dimension: linear in x for fixed indices; indices
    computed from the latent are the primal's (discrete); x constant: zero tangents."""
    source, dim, index = args[0], args[1], args[2]
    if mode.is_stacked(index) and not is_discrete(index):
        raise UnsupportedOperation("gather by float indices")
    stacked = [tensor for tensor in (source, index) if mode.is_stacked(tensor)]
    lead, _ = _same_layout(mode, stacked, "gather")
    constant = next((tensor for tensor in (source, index) if not mode.is_stacked(tensor)), None)
    if constant is not None and not (lead == 0 and constant.shape[0] == stacked[0].shape[0] and has_equal_rows(constant)):
        raise UnsupportedOperation("gather with a constant that differs per row")
    if _dim(dim, source.dim()) == lead:
        raise _batch_dim_error(func)
    out = mode.mark(func(*args, **kwargs), lead)
    if not mode.is_stacked(source) and not is_discrete(out):
        mode.zero_tangents(out)
    return out


def _index_put(mode, func, args, kwargs):
    """x[..., idx] = v (accumulate: +=) with constant indices after the batch dimension: linear
    in (x, v); a constant v lands on the primal rows, zeros (no derivative) on the tangent rows."""
    target, indices, values = args[0], list(args[1]), args[2]
    accumulate = args[3] if len(args) > 3 else kwargs.get("accumulate", False)
    if not mode.is_stacked(target) or any(mode.is_stacked(index) for index in indices):
        raise UnsupportedOperation("index_put into a constant, or at indices computed from the latent")
    _index_positions(indices, "index_put")
    if mode.is_stacked(values):
        if is_discrete(values) != is_discrete(target) or mode.multiplicity(values) != mode.multiplicity(target):
            raise UnsupportedOperation("index_put of values laid out unlike its target")
        return mode.mark(func(*args, **kwargs))
    if not row_free(values, target.dim()):
        raise UnsupportedOperation("index_put of a constant that differs per row")
    if is_discrete(target):  # the same constant on every row
        return mode.mark(func(*args, **kwargs))
    out = target if func.overloadpacket is aten.index_put_ else mode.mark(target.clone())
    width = mode.primal_rows * mode.multiplicity(out)
    aten.index_put_(out[:width], indices, values, accumulate)
    if not accumulate:
        aten.index_put_(out[width:], indices, torch.zeros_like(values), False)
    return out


def _primal_search(mode, func, args, kwargs):
    """searchsorted / bucketize: the bins of the primal rows, replicated (zero derivative)."""
    stacked = _stacked(mode, args, kwargs)
    lead, multiplicity = _same_layout(mode, stacked, func.overloadpacket.__name__)
    ndim = max(tensor.dim() for tensor in stacked)
    if lead or any(leaf.dim() > 1 and not row_free(leaf, ndim) for leaf in operand_leaves(args, kwargs)
                   if isinstance(leaf, torch.Tensor) and not mode.is_stacked(leaf)):  # 1-D: for every row alike
        raise UnsupportedOperation(f"{func.overloadpacket.__name__} with boundaries that differ per row")
    value = func(*[mode.primal(arg) if mode.is_stacked(arg) else arg for arg in args], **kwargs)
    if value.dim() == 0 or value.shape[0] != mode.primal_rows * multiplicity:
        raise UnsupportedOperation(f"{func.overloadpacket.__name__} that mixes rows")
    out = value.new_empty((value.shape[0] * (mode.slots + 1), *value.shape[1:]))
    out[: value.shape[0]] = value
    return mode.replicate(mode.mark(out))


def _adopted(mode: StackedMode, target: torch.Tensor) -> bool:
    """Make a constant that a stacked value is written into stacked, where that is exact: a float
    tensor made for the whole stacked batch, one row per stacked row and all rows equal (StyleGAN3's
    ``eye(3).repeat([batch, 1, 1])``, then ``m[:, 0, 0] = t[:, 0]``), written through a view that
    keeps its rows. Its tangent rows become zeros (a constant has no derivative) before the write."""
    base = target if target._base is None else target._base
    rows = mode.primal_rows * (mode.slots + 1)
    if not (target.is_floating_point() and base.dtype == target.dtype and target.dim() and base.dim()
            and target.shape[0] == base.shape[0] == rows and target.stride(0) == base.stride(0)
            and 0 <= target.storage_offset() - base.storage_offset() < base.stride(0) and has_equal_rows(base)):
        return False
    mode.zero_tangents(mode.mark(base))
    mode.mark(target)
    return True


def _write(mode, func, args, kwargs):
    """fill_ / zero_ / copy_ into stacked rows: a stacked source (laid out alike) on every row; a
    constant on the primal rows, zeros (no derivative) on the tangent rows. A stacked source
    written into a constant made for the whole batch makes it stacked (``_adopted``)."""
    target = args[0]
    source = args[1] if len(args) > 1 else None
    if (not mode.is_stacked(target) and mode.is_stacked(source) and not mode.lead(source)
            and mode.multiplicity(source) == 1 and _adopted(mode, target)):
        return func(*args, **kwargs)
    if not mode.is_stacked(target) or mode.lead(target):
        raise UnsupportedOperation(f"{func.overloadpacket.__name__} into a constant")
    if mode.is_stacked(source):
        if (mode.lead(source), mode.multiplicity(source), is_discrete(source)) != (0, mode.multiplicity(target),
                                                                                  is_discrete(target)):
            raise UnsupportedOperation(f"{func.overloadpacket.__name__} of a tensor laid out unlike its target")
        return func(*args, **kwargs)
    if not row_free(source, target.dim()):
        raise UnsupportedOperation(f"{func.overloadpacket.__name__} of a constant that differs per row")
    if is_discrete(target) or source is None:  # the same value on every row
        return func(*args, **kwargs)
    func(target[: mode.primal_rows * mode.multiplicity(target)], *args[1:], **kwargs)
    return mode.zero_tangents(target)


def _constant_pad(mode, func, args, kwargs):
    """constant_pad_nd(x, pad, value) off the batch dimension: x's values moved within rows (linear),
    plus ``value`` in the border on the primal rows only (the border's tangent is zero)."""
    source = args[0]
    pad, value = list(args[1]), args[2] if len(args) > 2 else kwargs.get("value", 0)
    lead = mode.lead(source)
    if is_discrete(source) or source.dim() - len(pad) // 2 <= lead:
        raise UnsupportedOperation("constant_pad_nd along the batch dimension, or of an integer tensor")
    out = mode.mark(func(source, pad, 0), lead)
    if value:
        width = mode.primal_rows * mode.multiplicity(source)
        out.narrow(lead, 0, width).copy_(func(source.narrow(lead, 0, width), pad, value))
    return out


_RANDOM = frozenset({"rand_like", "randn_like", "randint_like"})


def _fresh(mode, func, args, kwargs):
    """zeros_like / ones_like / full_like / empty_like of stacked rows, or new_zeros / new_empty / ...
    with their row count: a constant, stacked with zero tangent rows; of another shape, a plain constant."""
    name = func.overloadpacket.__name__
    if name in _RANDOM:
        raise UnsupportedOperation(f"{name}: random values")
    out = func(*args, **kwargs)
    lead = mode.lead(args[0]) if name.endswith("_like") else 0
    if out.dim() <= lead or out.shape[lead] % (mode.primal_rows * (mode.slots + 1)):
        return out
    mode.mark(out, lead)
    return out if is_discrete(out) else mode.zero_tangents(out)


INDEX_RULES: dict[Any, Callable] = {
    aten.unsqueeze: _relaid(_unsqueeze_lead), aten.squeeze: _relaid(_squeeze_lead),
    aten.select: _relaid(_drop_lead), aten.unbind: _relaid(_drop_lead), aten.slice: _relaid(_slice_lead),
    aten.stack: _relaid(_stack_lead), aten.expand: _relaid(_expand_lead),
    aten.repeat: _relaid(_repeat_lead), aten.constant_pad_nd: takes(_constant_pad, moved=True),
    aten.alias: _relaid(_same_lead), aten.detach: _relaid(_same_lead), aten.clone: _relaid(_same_lead),
    aten.index: takes(_index, discrete=True), aten.index_select: takes(_index_select, discrete=True),
    aten.gather: takes(_gather, discrete=True, moved=True),
    aten.index_put: takes(_index_put, discrete=True), aten.index_put_: takes(_index_put, discrete=True),
    aten.fill_: takes(_write, discrete=True), aten.zero_: takes(_write, discrete=True),
    aten.copy_: takes(_write, discrete=True),
    aten.searchsorted: takes(_primal_search, discrete=True), aten.bucketize: takes(_primal_search, discrete=True),
    **{getattr(aten, name): takes(_fresh, discrete=True, moved=True) for name in (
        "zeros_like", "ones_like", "full_like", "empty_like", "new_zeros", "new_ones", "new_full", "new_empty",
        *_RANDOM)},
}
"""Rules by op, merged into ``stacked_rules.RULES``."""
