"""The stacked-tangent rules of layer norm and group norm in closed form (the registry is
``stacked_rules``): all k tangent slots at once, broadcast against the primal's statistics.

Over the normalized elements of one row (a layer norm's last dims, a group norm's group),
x_hat = (x - mean(x)) * rstd, and torch's forward-mode formula is

    d x_hat = rstd * t_c - x_hat * rstd * mean(x_hat * t_c),    t_c = t - mean(t)

then times the weight (the bias has no tangent). The primal's mean and rstd are the op's own
outputs on the primal rows, returned as they are.

A vector norm n = ||x||_p over dims within a row (StyleGAN3's rotation, n = ||t[:, :2]||) has,
for a finite p >= 1, dn = sum(|x|^(p - 1) sign(x) t) / n^(p - 1) (p = 2: <x, t> / n), and 0
where n = 0, as torch's jvp has it; other orders go through torch.func.jvp (``rowwise``).
"""

from __future__ import annotations

import math

import torch

from genentropy_cli.core.stacked_operands import StackedMode, UnsupportedOperation, only_first_stacked
from genentropy_cli.core.stacked_operands import dim_index as _dim
from genentropy_cli.core.stacked_rules_pointwise import rowwise

__all__ = ["NORM_RULES", "group_norm", "layer_norm", "vector_norm"]

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


def vector_norm(mode: StackedMode, func, args, kwargs):
    """aten.linalg_vector_norm(x, ord, dim, keepdim, dtype) over dims off the batch dimension:
    the module doc's closed form for a finite ord >= 1, else ``rowwise``."""
    source = only_first_stacked(mode, args, kwargs, "vector norm")
    order = float(args[1]) if len(args) > 1 else float(kwargs.get("ord", 2))
    dims = args[2] if len(args) > 2 else kwargs.get("dim")
    keepdim = args[3] if len(args) > 3 else kwargs.get("keepdim", False)
    dims = [dims] if isinstance(dims, int) else dims
    if not dims or any(_dim(dim, source.dim()) == 0 for dim in dims):
        raise UnsupportedOperation("vector norm over the batch dimension")
    if not (math.isfinite(order) and order >= 1):
        return rowwise(mode, func, args, kwargs)
    dims = [_dim(dim, source.dim()) - source.dim() for dim in dims]  # negative: the same on the (k, ...) tangents
    primal = mode.primal(source)
    primal_out = func(primal, *args[1:], **kwargs)
    norm = primal_out if keepdim else primal_out.reshape(
        [1 if index - primal.dim() in dims else size for index, size in enumerate(primal.shape)])
    factor = primal.sign() if order == 1 else primal.abs().pow(order - 1).mul_(primal.sign()).div_(
        norm.pow(order - 1).to(primal.dtype))
    tangents = (mode.tangents(source) * factor).sum(dims, keepdim=keepdim).to(primal_out.dtype)
    if order != 1:
        tangents.masked_fill_(primal_out == 0, 0)
    out, tangent_out = _stacked_output(mode, primal_out)
    tangent_out.copy_(tangents)
    return mode.mark(out)


NORM_RULES = {aten.native_layer_norm: layer_norm, aten.native_group_norm: group_norm,
              aten.linalg_vector_norm: vector_norm}
"""Rules by op, merged into ``stacked_rules.RULES``."""
