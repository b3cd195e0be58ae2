"""What users would otherwise write to get per-sample Jacobians (the benchmark's peers).

Each function maps a batch of flat latents (B, d) to Jacobian columns (d, B, D) like the
engine's, so that all of them then share the same float64 Gram step. ``flat_fn`` maps
(B, d) -> (B, D) (``PreparedDecoder.flat()``: eval mode, no parameter gradients).

* ``autograd_loop``: ``torch.autograd.functional.jacobian`` per sample in a Python loop
  (reverse mode, one backward pass per output coordinate), as public code for GAN metrics
  and injective flows does;
* ``vmap_jacrev``: ``torch.func.vmap(torch.func.jacrev(f))`` over the batch (reverse mode,
  D cotangents per sample, ``chunk_size`` of them at a time);
* ``batch_jacfwd_diagonal``: ``torch.func.jacfwd`` of the whole batched decoder, (B, D, B, d),
  then its diagonal blocks: B d tangents through a batch of B, cost growing with B^2.

``output_rows`` restricts a peer to the first rows of the output, for the slow reverse-mode
peers on large outputs: their cost is one backward pass per output row, so the time for m of
the D rows, times D / m, is the full time (within the share of the one forward pass, < 1/m).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.func import jacfwd, jacrev, vmap

FlatFn = Callable[[torch.Tensor], torch.Tensor]


def per_sample(flat_fn: FlatFn, output_rows: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """z (d,) -> the decoder's output (D,) (its first ``output_rows`` entries)."""

    def one(latent: torch.Tensor) -> torch.Tensor:
        output = flat_fn(latent.unsqueeze(0))[0]
        return output if output_rows is None else output[:output_rows]

    return one


def autograd_loop(flat_fn: FlatFn, latents: torch.Tensor, output_rows: int | None = None) -> torch.Tensor:
    one = per_sample(flat_fn, output_rows)
    rows = [torch.autograd.functional.jacobian(one, latent) for latent in latents]  # each (D, d)
    return torch.stack(rows).permute(2, 0, 1)


def vmap_jacrev(flat_fn: FlatFn, latents: torch.Tensor, output_rows: int | None = None,
                chunk_size: int | None = None) -> torch.Tensor:
    jacobians = vmap(jacrev(per_sample(flat_fn, output_rows), chunk_size=chunk_size))(latents)  # (B, D, d)
    return jacobians.permute(2, 0, 1)


def batch_jacfwd_diagonal(flat_fn: FlatFn, latents: torch.Tensor) -> torch.Tensor:
    full = jacfwd(flat_fn)(latents)  # (B, D, B, d): every output against every latent
    diagonal = torch.diagonal(full, dim1=0, dim2=2)  # (D, d, B)
    return diagonal.permute(1, 2, 0)
