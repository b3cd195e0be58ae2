"""The Cholesky log-determinant, 1/2 log det(G + s^2 I) = sum_j log L_jj for float64 Gram matrices G
(``logdet``'s ``cholesky`` path), by 2 x 2 blocks down to LAPACK's ``potrf``."""

from __future__ import annotations

from typing import Sequence

import torch

from genentropy_cli.core.threads import run_parts, split_parts
from genentropy_cli.defaults import CHOLESKY_LEAF_DIM, EIGVALSH_THREAD_MIN_WORK

__all__ = ["cholesky_half_log_det", "cholesky_in_place"]


def cholesky_in_place(matrices: torch.Tensor) -> torch.Tensor:
    """Overwrite the lower triangle of each SPD matrix of a float64 stack (b, n, n) with its
    Cholesky factor L; return (b,) bool, True where it exists (LAPACK's info == 0 for every
    block). Above ``CHOLESKY_LEAF_DIM`` by 2 x 2 blocks: with A = [[P, Q^T], [Q, R]],
    L = [[L_P, 0], [X^T, L_S]] where L_P = chol(P), X = L_P^-1 Q^T and L_S = chol(R - X^T X),
    recursively: the same factor as one potrf, in a triangular solve and a matrix product that
    BLAS runs near its peak (MKL's potrf took 1.8x as long at n = 512, defaults.py). Reads the
    lower triangle only; the strict upper triangle is left unspecified. Extra memory: the solve's
    (b, n/2, n/2)."""
    size = matrices.shape[-1]
    if size <= CHOLESKY_LEAF_DIM:
        factor, info = torch.linalg.cholesky_ex(matrices)
        matrices.copy_(factor)
        return info == 0
    half = size // 2
    top_exists = cholesky_in_place(matrices[:, :half, :half])
    solved = torch.linalg.solve_triangular(matrices[:, :half, :half], matrices[:, half:, :half].transpose(1, 2),
                                           upper=False)
    matrices[:, half:, :half] = solved.transpose(1, 2)
    matrices[:, half:, half:].baddbmm_(solved.transpose(1, 2), solved, alpha=-1)
    del solved
    return top_exists & cholesky_in_place(matrices[:, half:, half:])


def cholesky_half_log_det(gram: torch.Tensor, scales: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_j log L_jj = 1/2 log det(G + s^2 I) for CPU float64 G (B, d, d) and every scale, by
    ``cholesky_in_place`` (LAPACK's potrf on blocks of at most ``CHOLESKY_LEAF_DIM``); and (B,) bool,
    True where every scale's factorisation succeeded and gave a finite value. Up to
    ``CHOLESKY_LEAF_DIM`` a batch with enough work is split over the intra-op threads, as
    ``batched_eigvalsh``; larger matrices run on the calling thread, where BLAS threads the blocks'
    products (torch's kernels run from the pool's threads left later calls on the main thread up to
    5x slower here, as their threads compete for the cores). The shifted copy, factorised in
    place, and the blocks' solve (at most 1.25 B d^2 floats) are freed on return, not kept in a ``Workspace``: the memory plan counts them
    in the Gram step only (``planning.batch_peak_bytes``), not beside the next batch's decoder calls."""
    batch, dim = gram.shape[0], gram.shape[-1]
    result = gram.new_empty((batch, len(scales)))
    succeeded = torch.ones(batch, dtype=torch.bool)

    def factorise(first: int, last: int, part: int) -> None:
        shifted = torch.empty_like(gram[first:last])
        for column, scale in enumerate(scales):
            shifted.copy_(gram[first:last])
            shifted.diagonal(dim1=-2, dim2=-1).add_(float(scale) ** 2)
            exists = cholesky_in_place(shifted)
            values = shifted.diagonal(dim1=-2, dim2=-1).log().sum(dim=-1)
            result[first:last, column] = values
            succeeded[first:last] &= exists & torch.isfinite(values)

    small = dim <= CHOLESKY_LEAF_DIM
    run_parts(factorise, batch, split_parts(batch, batch * dim**3, EIGVALSH_THREAD_MIN_WORK) if small else 1,
               torch_kernels=True)
    return result, succeeded
