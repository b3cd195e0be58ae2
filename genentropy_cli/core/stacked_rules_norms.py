"""The stacked-tangent rules of layer norm and group norm in closed form (the registry is
``stacked_rules``): all k tangent slots at once, broadcast against the primal's statistics.

Over the normalized elements of one row (a layer norm's last dims, a group norm's group),
x_hat = (x - mean(x)) * rstd, and torch's forward-mode formula is

    d x_hat = rstd * t_c - x_hat * rstd * mean(x_hat * t_c),    t_c = t - mean(t)

then times the weight (the bias has no tangent). The primal's mean and rstd are the op's own
outputs on the primal rows, returned as they are.
"""

from __future__ import annotations

import torch

from genentropy_cli.core.stacked_operands import StackedMode, UnsupportedOperation, only_first_stacked

__all__ = ["NORM_RULES", "group_norm", "layer_norm"]

aten = torch.ops.aten


def _normalized_tangents(out: torch.Tensor, tangents: torch.Tensor, x_hat: torch.Tensor, rstd: torch.Tensor,
                         dims: tuple[int, ...]) -> torch.Tensor:
    """``out`` (k, *x_hat.shape) <- rstd * (t_c - x_hat * mean(x_hat * t_c)) over ``dims`` (negative)."""
    torch.sub(tangents, tangents.mean(dims, keepdim=True), out=out)  # t_c
    projection = (out * x_hat).mean(dims, keepdim=True)
    out.addcmul_(x_hat, projection, value=-1)
    return out.mul_(rstd)


def _stacked_output(mode: StackedMode, primal_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An empty stacked result and its tangent rows as (k, *primal_out.shape)."""
    out = primal_out.new_empty((primal_out.shape[0] * (mode.slots + 1), *primal_out.shape[1:]))
    out[: primal_out.shape[0]] = primal_out
    return out, out[primal_out.shape[0]:].view(mode.slots, *primal_out.shape)


def layer_norm(mode: StackedMode, func, args, kwargs):
    """aten.native_layer_norm(input, normalized_shape, weight, bias, eps) -> (out, mean, rstd),
    the module doc's formula over the last len(normalized_shape) dims."""
    source = only_first_stacked(mode, args, kwargs, "layer norm")
    normalized = len(args[1])
    if normalized >= source.dim():
        raise UnsupportedOperation("layer norm over the batch dimension")
    weight = args[2] if len(args) > 2 else None
    primal = mode.primal(source)
    primal_out, mean, rstd = func(primal, *args[1:], **kwargs)
    inverse = rstd.to(primal.dtype)
    out, tangent_out = _stacked_output(mode, primal_out)
    dims = tuple(range(-normalized, 0))
    _normalized_tangents(tangent_out, mode.tangents(source), (primal - mean.to(primal.dtype)) * inverse, inverse, dims)
    if weight is not None:
        tangent_out.mul_(weight)
    return mode.mark(out), mean, rstd


def group_norm(mode: StackedMode, func, args, kwargs):
    """aten.native_group_norm(input, weight, bias, N, C, HxW, group, eps) -> (out, mean, rstd):
    the module doc's formula over each group's C / G * HxW elements, then the weight per channel.
    N is the primal rows' batch size."""
    source = only_first_stacked(mode, args, kwargs, "group norm")
    weight, bias, _, channels, spatial, groups, eps = args[1:8]
    primal = mode.primal(source)
    batch = primal.shape[0]
    primal_out, mean, rstd = func(primal, weight, bias, batch, channels, spatial, groups, eps, **kwargs)
    grouped = primal.reshape(batch, groups, -1)
    rstd_grouped = rstd.to(primal.dtype).reshape(batch, groups, 1)
    x_hat = (grouped - mean.to(primal.dtype).reshape(batch, groups, 1)) * rstd_grouped
    out, tangent_out = _stacked_output(mode, primal_out)
    tangents = mode.tangents(source).reshape(mode.slots, batch, groups, -1)
    target = tangent_out.view(mode.slots, batch, groups, -1)
    _normalized_tangents(target, tangents, x_hat, rstd_grouped, (-1,))
    if weight is not None:
        tangent_out.mul_(weight.reshape(-1, *[1] * (primal.dim() - 2)))
    return mode.mark(out), mean, rstd


NORM_RULES = {aten.native_layer_norm: layer_norm, aten.native_group_norm: group_norm}
"""Rules by op, merged into ``stacked_rules.RULES``."""
