"""The float64 Gram lower bound and the GFLOP/s figures of ``run.py``'s speed section (issue 18).

*Floor + Gram bound*: the best floor ((d + 1) plain forward passes per sample, no AD) plus the
cheapest measured float64 Gram step alone: the fastest of the arrangements below, each taking
the same precomputed float32 Jacobian columns of one engine batch to float64 J^T J and its
float64 eigenvalues, timed in the same interleaved rounds as the engine and the floors. The
numerics standard requires that step whatever the decoder's dtype, so no engine can go below
the sum; the engine's own Gram step is one of the arrangements.

*GFLOP/s*: the decoder's forward FLOPs per row (``torch.utils.flop_counter.FlopCounterMode``:
matmuls and convolutions, 2 per multiply-add) times (d + 1) rows per sample, over the measured
time per sample; against the same run's float32 matmul peak (a 2048 x 2048 matmul, timed in
the same rounds).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from genentropy_cli.core.logdet import Workspace, batched_eigvalsh, gram_eigenvalues, gram_matrices
from genentropy_cli.defaults import NUMPY_GRAM_MAX_DIM

PEAK_SIZE = 2048
PEAK_FLOPS = 2 * PEAK_SIZE**3


def gram_arrangements(columns: torch.Tensor) -> list[tuple[str, Callable[[], object], str]]:
    """(name, action, note) of every float64 Gram step arrangement on ``columns`` (d, B, D). numpy's
    only up to ``NUMPY_GRAM_MAX_DIM``: above it OpenBLAS threads inside each call (on the DCGAN
    generator, d = 100, numpy's step took 256 ms against torch's 13 ms, 2026-11-30), and its
    spinning threads slow whatever is timed after it."""
    workspace = Workspace()
    arrangements = []
    if columns.device.type == "cpu" and columns.shape[0] <= NUMPY_GRAM_MAX_DIM:
        arrangements += [
            ("Gram: numpy", lambda: gram_eigenvalues(columns, workspace=workspace, arrangement="numpy"),
             f"per thread: float64 copy, syrk, np eigvalsh (engine's for d <= {NUMPY_GRAM_MAX_DIM})"),
            ("Gram: numpy, slab 0.5 MiB", lambda: gram_eigenvalues(columns, 2**19, workspace, arrangement="numpy"),
             "the same in smaller slabs"),
        ]
    arrangements += [
        ("Gram: torch bmm + np eigvalsh", lambda: batched_eigvalsh(
            gram_matrices(columns, workspace=workspace).cpu(), "numpy"), "float64 slabs, torch.bmm; numpy's LAPACK"),
        ("Gram: torch bmm + torch eigvalsh", lambda: batched_eigvalsh(
            gram_matrices(columns, workspace=workspace).cpu(), "torch"),
         f"the engine's step before issue 18 (engine's for d > {NUMPY_GRAM_MAX_DIM})"),
    ]
    return arrangements


def flops_per_row(module: torch.nn.Module, latent_shape: tuple[int, ...], device: torch.device,
                  dtype: torch.dtype = torch.float32) -> float:
    """Forward FLOPs of one decoder row (a batch of 4 counted, divided by 4)."""
    inputs = torch.randn(4, *latent_shape, device=device, dtype=dtype)
    module = module.to(device=device, dtype=dtype).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(inputs)
    return counter.get_total_flops() / 4


def matmul_peak(device: torch.device) -> Callable[[], object]:
    """One float32 2048 x 2048 matmul: PEAK_FLOPS over its time is the run's matmul peak."""
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(PEAK_SIZE, PEAK_SIZE, generator=generator).to(device)
    right = torch.randn(PEAK_SIZE, PEAK_SIZE, generator=generator).to(device)
    return lambda: torch.mm(left, right)
