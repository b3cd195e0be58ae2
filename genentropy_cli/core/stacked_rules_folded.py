"""The stacked-tangent rules for a batch folded into another dimension (``stacked_rules`` holds the
registry): reshapes that move the rows' blocks, and the grouped convolution that StyleGAN2's
modulated convolution runs on them.

StyleGAN2 (the official code and its ports) folds the batch into the channels,
x.reshape(1, B C, H, W), and convolves with a per-sample weight w (B O, C, k, k) in B groups: one
convolution for every sample's own weights. A reshape keeps each row's values one block, in
order, so the folded tensor is still stacked: its batch dimension is dim 1 (``lead``) with C
entries per row. The convolution is bilinear in (x, w), and its forward-mode derivative is
torch's own: d conv(x, w) = conv(dx, w) + conv(x, dw), group by group: on the primal rows
conv(P_x, P_w); on tangent slot j conv(T_x,j, P_w) + conv(P_x, T_w,j).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from genentropy_cli.core.stacked_operands import StackedMode, UnsupportedOperation, has_equal_blocks, takes

__all__ = ["FOLDED_RULES", "folded_convolution", "is_folded"]

aten = torch.ops.aten


def _reshape(mode: StackedMode, func, args, kwargs):
    """view / reshape: each row's values stay one block, so the output's batch dimension is the
    first after as many leading entries as the input had before its own (then any size-1 dims);
    it must hold whole rows (a multiple of N entries), else the reshape splits rows."""
    source = args[0]
    if any(isinstance(leaf, torch.Tensor) and leaf is not source for leaf in args[1:]):
        raise UnsupportedOperation(f"{func.overloadpacket.__name__} with a tensor argument")
    lead = mode.lead(source)
    outer = math.prod(source.shape[:lead])
    result = func(*args, **kwargs)
    if result.dtype != source.dtype:
        raise UnsupportedOperation(f"{func.overloadpacket.__name__} to {result.dtype}")
    position, covered = 0, 1
    while covered < outer and position < result.dim():
        covered *= result.shape[position]
        position += 1
    while position < result.dim() - 1 and result.shape[position] == 1 and covered == outer:
        position += 1
    if covered != outer:
        raise UnsupportedOperation(f"{func.overloadpacket.__name__} that splits the batch dimension")
    return mode.mark(result, position)


def folded_convolution(mode: StackedMode, func, args, kwargs):
    """A grouped convolution of a folded input (1, N C, ...) with per-row weights (N O, C/g, ...)
    in N g groups (or one of the two shared by every row): the product rule, group by group."""
    if len(args) < 9:
        raise UnsupportedOperation("convolution without its positional arguments")
    source, weight, bias, groups = args[0], args[1], args[2], args[8]
    rows = mode.primal_rows * (mode.slots + 1)
    if mode.is_stacked(bias) or groups % rows or (mode.is_stacked(source) and (
            source.shape[0] != 1 or mode.lead(source) != 1)) or (mode.is_stacked(weight) and mode.lead(weight)):
        raise UnsupportedOperation("convolution with a stacked weight other than a grouped one over a folded batch")
    if not mode.is_stacked(source) and not (source.shape[0] == 1 and has_equal_blocks(source, rows)):
        raise UnsupportedOperation("convolution of a constant input that differs per row")
    if not all(has_equal_blocks(value, rows) for value in (weight, bias) if value is not None and not mode.is_stacked(value)):
        raise UnsupportedOperation("convolution with a folded weight or bias that differs per row")
    primal_groups, slots = groups // rows * mode.primal_rows, mode.slots
    rest = list(args[3:])
    rest[5] = primal_groups  # args[8], groups, is rest[5]
    source_width, weight_width = source.shape[1] // rows * mode.primal_rows, weight.shape[0] // rows * mode.primal_rows
    source_primal, weight_primal = source.narrow(1, 0, source_width), weight[:weight_width]
    primal = func(source_primal, weight_primal, None, *rest, **kwargs)
    rest[5] = primal_groups * slots
    tangent = None
    if mode.is_stacked(weight):
        tangent = func(source_primal.repeat(1, slots, *[1] * (source.dim() - 2)), weight[weight_width:], None,
                       *rest, **kwargs)
    if mode.is_stacked(source):
        pushed = func(source.narrow(1, source_width, source_width * slots),
                      weight_primal.repeat(slots, *[1] * (weight.dim() - 1)), None, *rest, **kwargs)
        tangent = pushed if tangent is None else tangent.add_(pushed)
    out = mode.mark(torch.cat([primal, tangent], 1), 1)
    if bias is not None:
        out.narrow(1, 0, primal.shape[1]).add_(bias[: primal.shape[1]].reshape(1, -1, *[1] * (out.dim() - 2)))
    return out


def is_folded(mode: StackedMode, args: tuple) -> bool:
    """Whether a convolution's stacked operands are a folded batch and per-row weights
    (``folded_convolution``), not a batch of rows and a shared weight."""
    return mode.is_stacked(args[1]) or (mode.is_stacked(args[0]) and mode.lead(args[0]) == 1)


FOLDED_RULES: dict[Any, Callable] = {
    aten.view: takes(_reshape, discrete=True, moved=True),
    aten._unsafe_view: takes(_reshape, discrete=True, moved=True),
    aten.reshape: takes(_reshape, discrete=True, moved=True),
}
"""Rules by op, merged into ``stacked_rules.RULES``; convolutions come here through
``stacked_rules``'s convolution rule (``is_folded``)."""
