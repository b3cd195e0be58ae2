"""The stacked-tangent rule of fused scaled dot-product attention (``stacked_rules`` holds the
registry): ``F.scaled_dot_product_attention`` as the backend runs it (on a CPU
``_scaled_dot_product_flash_attention_for_cpu``, on CUDA the flash, memory-efficient or cuDNN
kernel), as diffusers' attention blocks call it.

With S = scale Q K^T + M (M the mask: added where float, -inf where a boolean mask is False or
above the diagonal for ``is_causal``), A = softmax(S) row by row and O = A V, forward mode is

    dS = scale (dQ K^T + Q dK^T),    dA = A * (dS - sum(A * dS, -1)),    dO = dA V + A dV

on every tangent slot at once against the primal's A (torch's own jvp formulas for matmul and
softmax, composed). The primal rows are the fused kernel's own output; the op's other outputs
(log-sum-exp, random-number state) are the primal rows' alone, as an inference call leaves
them unused. Dropout (training) and grouped-query heads are refused.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from genentropy_cli.core.stacked_operands import StackedMode, UnsupportedOperation, row_free

__all__ = ["ATTENTION_RULES", "attention"]

aten = torch.ops.aten


def _bound(func, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The op's arguments by schema name, defaults filled in."""
    values = {}
    for position, argument in enumerate(func._schema.arguments):
        if position < len(args):
            values[argument.name] = args[position]
        elif argument.name in kwargs:
            values[argument.name] = kwargs[argument.name]
        else:
            values[argument.name] = argument.default_value if argument.has_default_value() else None
    return values


def _scores_mask(mask: torch.Tensor | None, causal: bool, rows: int, columns: int,
                 like: torch.Tensor) -> torch.Tensor | None:
    """The additive mask M of the scores (0 or -inf where masked), None where nothing is masked."""
    additive = None
    if mask is not None:
        additive = mask.to(like.dtype) if mask.is_floating_point() else torch.zeros(
            mask.shape, dtype=like.dtype, device=like.device).masked_fill_(~mask, float("-inf"))
    if causal:
        above = torch.ones(rows, columns, dtype=torch.bool, device=like.device).triu_(1)
        causal_mask = torch.zeros(rows, columns, dtype=like.dtype, device=like.device).masked_fill_(above, float("-inf"))
        additive = causal_mask if additive is None else additive + causal_mask
    return additive


def attention(mode: StackedMode, func, args, kwargs):
    """Fused attention of stacked (or shared, constant) query, key and value: the module doc's formulas."""
    options = _bound(func, args, kwargs)
    query, key, value = options["query"], options["key"], options["value"]
    mask = options.get("attn_mask", options.get("attn_bias"))
    name = func.overloadpacket.__name__
    if options.get("dropout_p") or any(options.get(extra) is not None for extra in ("q_descale", "dropout_mask")):
        raise UnsupportedOperation(f"{name} with dropout or quantized inputs")
    stacked = [tensor for tensor in (query, key, value) if mode.is_stacked(tensor)]
    ndim = max(tensor.dim() for tensor in stacked)
    if (mode.is_stacked(mask) or len({mode.multiplicity(tensor) for tensor in stacked}) != 1
            or any(mode.lead(tensor) for tensor in stacked)
            or not all(row_free(tensor, ndim) for tensor in (query, key, value, mask) if not mode.is_stacked(tensor))):
        raise UnsupportedOperation(f"{name} with a mask computed from the latent, or a constant that differs per row")
    if min(query.dim(), key.dim()) >= 4 and 1 not in (query.shape[-3], key.shape[-3]) and query.shape[-3] != key.shape[-3]:
        raise UnsupportedOperation(f"{name} with grouped-query heads")
    width = mode.primal_rows * mode.multiplicity(stacked[0])

    def at_primal(value: Any) -> Any:
        """A stacked operand's primal rows; a constant expanded to every row, as many rows as they."""
        if mode.is_stacked(value):
            return mode.primal(value)
        if isinstance(value, torch.Tensor) and value.dim() == ndim and value.shape[0] > 1:
            return value[:1].expand(width, *value.shape[1:])
        return value

    result = func(*[at_primal(arg) for arg in args], **{key_: at_primal(arg) for key_, arg in kwargs.items()})
    primal_out = result[0]
    q, k, v = (at_primal(tensor) for tensor in (query, key, value))
    mask = at_primal(mask)
    scale = options.get("scale") or q.shape[-1] ** -0.5
    scores = torch.matmul(q, k.transpose(-2, -1)).mul_(scale)
    additive = _scores_mask(mask, bool(options.get("is_causal")), q.shape[-2], k.shape[-2], scores)
    if additive is not None:
        scores = scores + additive
    weights = torch.softmax(scores, -1)
    d_scores = None
    if mode.is_stacked(query):
        d_scores = torch.matmul(mode.tangents(query), k.transpose(-2, -1))
    if mode.is_stacked(key):
        pushed = torch.matmul(q, mode.tangents(key).transpose(-2, -1))
        d_scores = pushed if d_scores is None else d_scores.add_(pushed)
    out = primal_out.new_empty((primal_out.shape[0] * (mode.slots + 1), *primal_out.shape[1:]))
    out[: primal_out.shape[0]] = primal_out
    tangent_out = out[primal_out.shape[0]:].view(mode.slots, *primal_out.shape)
    tangent_out.zero_()
    if d_scores is not None:
        d_scores.mul_(scale)
        d_weights = weights * (d_scores - (weights * d_scores).sum(-1, keepdim=True))
        tangent_out.add_(torch.matmul(d_weights, v))
    if mode.is_stacked(value):
        tangent_out.add_(torch.matmul(weights, mode.tangents(value)))
    return (mode.mark(out), *result[1:])


ATTENTION_RULES: dict[Any, Callable] = {
    getattr(aten, name): attention for name in (
        "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention")
    if hasattr(aten, name)
}
"""Rules by op, merged into ``stacked_rules.RULES``."""
