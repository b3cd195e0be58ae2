"""What the estimator assumes of a decoder, checked on two probe latents before a run.

The batched Jacobian (one pass of a batch of latents, or of many copies of one latent with
tangents) is each sample's own Jacobian only if the decoder maps every row of a batch by itself,
the same way every time. Three checks, each a refusal naming its cause, never a silently wrong
number:

* deterministic: two calls on the same latents give the same outputs (no noise or dropout
  inside ``forward``: its Jacobian would be random, and reruns would differ);
* shape: one latent gives one output of the shape two give (no ``squeeze`` of the batch);
* rows apart: a latent's output is the same alone, beside another latent, and in the other
  order (no ``x - x.mean(0)``, no batch statistics).

"The same" means within round-off of the decoder's dtype (``tolerance``): other batch sizes may
take other BLAS kernels, whose last bits differ.
"""

from __future__ import annotations

from typing import Callable

import torch

from genentropy_cli.errors import InputError, first_line

__all__ = ["check_rows_independent", "relative_difference"]


def relative_difference(candidate: torch.Tensor, reference: torch.Tensor) -> float:
    """max |candidate - reference| / max |reference| over finite entries; inf where the shapes or
    the places of non-finite entries differ."""
    if candidate.shape != reference.shape:
        return float("inf")
    finite = torch.isfinite(reference)
    if not torch.equal(finite, torch.isfinite(candidate)):
        return float("inf")
    if not bool(finite.any()):
        return 0.0
    scale = float(reference[finite].abs().max())
    difference = float((candidate[finite] - reference[finite]).abs().max())
    return difference / max(scale, 1e-300)


def check_rows_independent(decode: Callable[[torch.Tensor], torch.Tensor], latents: torch.Tensor,
                           tolerance: float) -> None:
    """Refuse (InputError) a decoder that is random, whose output shape depends on the batch
    size, or that mixes the rows of a batch, judged on ``latents`` (two distinct rows)."""
    with torch.no_grad():
        first = decode(latents)
        again = decode(latents)
        difference = relative_difference(again, first)
        if difference > tolerance:
            raise InputError(
                f"the decoder is not deterministic: two calls on the same latents differ by {difference:.2g} "
                "(relative); noise or dropout inside forward() makes its Jacobian random and every run different: "
                "make the output a function of the latent alone (eval mode, no sampling in forward; a decoder with a "
                "noise switch takes it as a constant keyword, e.g. --call-kwarg noise_mode=const)"
            )
        try:
            alone = [decode(latents[index:index + 1]) for index in range(latents.shape[0])]
        except Exception as error:
            raise InputError(
                f"the decoder runs on two latents but fails on one ({first_line(error)}): its output depends on the "
                "batch (a batch-norm layer in training mode?); call model.eval(), each output must depend on its "
                "own latent only"
            ) from None
        shapes = {tuple(output.shape) for output in alone}
        if shapes != {(1, *first.shape[1:])}:
            raise InputError(
                f"the decoder's output shape depends on the batch size: {tuple(first.shape)} for "
                f"{latents.shape[0]} latents but {sorted(shapes)[0]} for one (a squeeze() or reshape of the batch "
                "dimension?); it must map (B, ...) latents to (B, ...) outputs for every B"
            )
        swapped = decode(latents.flip(0)).flip(0)
        difference = max(relative_difference(torch.cat(alone), first), relative_difference(swapped, first))
        if difference > tolerance:
            raise InputError(
                f"the decoder mixes the rows of a batch: a latent's output changes by {difference:.2g} (relative) "
                "with the other latents beside it (e.g. x - x.mean(0), batch statistics, a batch-norm layer in "
                "training mode); each output must depend on its own latent only, so the estimate would be wrong "
                "at every batch size"
            )
