"""The Gram step's two arrangements and two eigenvalue solvers (logdet.GRAM_ARRANGEMENTS,
logdet.eigen_solver): each against closed forms at and around the size thresholds of
defaults.py, against each other to round-off, and the same numbers whatever the batch split."""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest
import torch

from genentropy_cli.core import logdet
from genentropy_cli.core.logdet import Workspace, batched_eigvalsh, eigen_solver, gram_arrangement, gram_eigenvalues
from genentropy_cli.defaults import (
    GRAM_THREAD_MIN_WORK,
    NUMPY_EIGVALSH_MAX_DIM,
    NUMPY_GRAM_MAX_DIM,
    NUMPY_GRAM_MAX_WORK,
)

THRESHOLD_DIMS = sorted({2, 16, NUMPY_EIGVALSH_MAX_DIM, NUMPY_EIGVALSH_MAX_DIM + 1, NUMPY_GRAM_MAX_DIM,
                         NUMPY_GRAM_MAX_DIM + 1})


def hadamard(size: int) -> torch.Tensor:
    """Sylvester's Hadamard matrix (size a power of 2): entries +-1, H^T H = size I exactly."""
    matrix = torch.ones(1, 1, dtype=torch.float64)
    while matrix.shape[0] < size:
        matrix = torch.cat([torch.cat([matrix, matrix], 1), torch.cat([matrix, -matrix], 1)], 0)
    return matrix


def hadamard_columns(dim: int, batch: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Columns (d, B, D) of J_b = H[:, :d] diag(sigma_b) with powers of two sigma: J^T J is
    D diag(sigma_b^2), every entry and every partial sum exact in float64, so its eigenvalues are
    exactly D sigma_b^2 (sorted). Returned with those eigenvalues, (B, d) ascending."""
    size = 1 << max(1, (dim - 1).bit_length() + 1)  # D = 2^k >= 2 d: rows to spare
    exponents = torch.arange(batch * dim).reshape(batch, dim) % 11 - 5  # sigma in 2^-5 .. 2^5
    sigma = torch.pow(2.0, exponents.double())
    jacobians = hadamard(size)[:, :dim].unsqueeze(0) * sigma.unsqueeze(1)  # (B, D, d)
    expected = (size * sigma**2).sort(dim=1).values
    return jacobians.permute(2, 0, 1).to(dtype).contiguous(), expected


def rotated_columns(dim: int, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 columns of J_b = Q_b diag(sigma_b) with orthonormal Q_b: eigenvalues sigma_b^2."""
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(batch, 3 * dim, dim, dtype=torch.float64, generator=generator))
    sigma = torch.logspace(-3, 1, dim, dtype=torch.float64).expand(batch, dim)
    return (q * sigma.unsqueeze(1)).permute(2, 0, 1).contiguous(), sigma**2


@pytest.mark.parametrize("arrangement", ["numpy", "torch"])
@pytest.mark.parametrize("dim", THRESHOLD_DIMS)
def test_exact_closed_form_either_arrangement(dim, arrangement):
    """Float32 columns with an exactly representable J^T J = D diag(sigma^2): every arrangement
    and solver returns those eigenvalues to the last bit or nearly (a diagonal matrix goes
    through LAPACK's tridiagonal reduction unchanged)."""
    columns, expected = hadamard_columns(dim, 7)
    spectrum = gram_eigenvalues(columns, workspace=Workspace(), arrangement=arrangement)
    torch.testing.assert_close(spectrum.eigenvalues, expected, rtol=1e-15, atol=0)
    assert spectrum.clipped_count == 0


@pytest.mark.parametrize("arrangement", ["numpy", "torch"])
@pytest.mark.parametrize("dim", THRESHOLD_DIMS)
def test_rotated_closed_form_either_arrangement(dim, arrangement):
    """J = Q diag(sigma), Q orthonormal: eigenvalues sigma^2 to round-off relative to the largest."""
    columns, expected = rotated_columns(dim, 5, seed=dim)
    eigenvalues = gram_eigenvalues(columns, arrangement=arrangement).eigenvalues
    largest = expected.amax(dim=1, keepdim=True)
    torch.testing.assert_close(eigenvalues / largest, expected / largest, rtol=0, atol=1e-13)


@pytest.mark.parametrize("dim", THRESHOLD_DIMS)
def test_the_two_solvers_agree_to_round_off(dim):
    """numpy's and torch's eigvalsh are two LAPACK builds of the same routine: the same
    eigenvalues to round-off relative to each matrix's largest, never demanded bit for bit."""
    generator = torch.Generator().manual_seed(dim)
    x = torch.randn(9, dim, 2 * dim, dtype=torch.float64, generator=generator)
    gram = x @ x.transpose(1, 2)
    by_numpy, by_torch = batched_eigvalsh(gram, "numpy"), batched_eigvalsh(gram, "torch")
    largest = by_torch.abs().amax(dim=1, keepdim=True)
    torch.testing.assert_close(by_numpy / largest, by_torch / largest, rtol=0, atol=1e-13)


def test_the_solver_and_arrangement_follow_the_thresholds():
    assert eigen_solver(NUMPY_EIGVALSH_MAX_DIM) == "numpy" and eigen_solver(NUMPY_EIGVALSH_MAX_DIM + 1) == "torch"
    assert gram_arrangement(torch.zeros(NUMPY_GRAM_MAX_DIM, 1, 3)) == "numpy"
    assert gram_arrangement(torch.zeros(NUMPY_GRAM_MAX_DIM + 1, 1, 3)) == "torch"
    output_dim = NUMPY_GRAM_MAX_WORK // NUMPY_GRAM_MAX_DIM**2  # the largest product measured
    assert gram_arrangement(torch.zeros(NUMPY_GRAM_MAX_DIM, 1, output_dim)) == "numpy"
    assert gram_arrangement(torch.zeros(NUMPY_GRAM_MAX_DIM, 1, output_dim + 1)) == "torch"


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_numpy_arrangement_is_the_same_whatever_the_split(threads):
    """Each sample's J^T J and eigenvalues come from the same syrk and syevd call on the same
    float64 copy whatever the slab, the number of threads or the batch it is in. Compared to
    round-off (1e-13 of the largest eigenvalue), not bit for bit: a BLAS may pick other kernels
    or thread inside a call on another machine, and the project promises no more than that."""
    dim, batch = 16, 3 * GRAM_THREAD_MIN_WORK // (16 * 16 * (50 + 16)) + 5
    columns = torch.randn(dim, batch, 50, generator=torch.Generator().manual_seed(5))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        whole = gram_eigenvalues(columns, slab_bytes=10**9, arrangement="numpy").eigenvalues
        variants = [gram_eigenvalues(columns, slab_bytes=slab, workspace=Workspace(), arrangement="numpy").eigenvalues
                    for slab in (1, 7 * dim * 50 * 8, None)]
        variants.append(torch.cat([gram_eigenvalues(columns[:, :11], arrangement="numpy").eigenvalues,
                                   gram_eigenvalues(columns[:, 11:], arrangement="numpy").eigenvalues]))
    finally:
        torch.set_num_threads(before)
    largest = whole.amax(dim=1, keepdim=True)
    for variant in variants:
        torch.testing.assert_close(variant / largest, whole / largest, rtol=0, atol=1e-13)


def test_the_two_arrangements_agree_to_round_off():
    columns = torch.randn(12, 40, 300, generator=torch.Generator().manual_seed(6))
    by_numpy = gram_eigenvalues(columns, arrangement="numpy").eigenvalues
    by_torch = gram_eigenvalues(columns, arrangement="torch").eigenvalues
    largest = by_torch.amax(dim=1, keepdim=True)
    torch.testing.assert_close(by_numpy / largest, by_torch / largest, rtol=0, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_numpy_arrangement_other_dtypes(dtype):
    """Float64 columns go through numpy as they are; half precisions (no numpy type) through
    torch's copy: the exact closed form either way (powers of two are exact in every dtype)."""
    columns, expected = hadamard_columns(6, 4, dtype)
    torch.testing.assert_close(gram_eigenvalues(columns, arrangement="numpy").eigenvalues, expected,
                               rtol=1e-15, atol=0)


@pytest.mark.filterwarnings("error")  # no numpy RuntimeWarning on stderr: the run reports the samples itself
@pytest.mark.parametrize("arrangement", ["numpy", "torch"])
def test_a_non_finite_sample_gets_nan_and_the_others_their_values(arrangement):
    """NaN, inf, and a float64 J^T J that overflows (1e200 squared): those samples' eigenvalues are
    NaN, every other sample keeps its exact closed form."""
    columns, expected = hadamard_columns(8, 7, torch.float64)
    columns[3, 2, 5] = float("nan")
    columns[0, 4, 0] = float("inf")
    columns[6, 6, 1] = 1e200
    eigenvalues = gram_eigenvalues(columns, arrangement=arrangement).eigenvalues
    broken = torch.tensor([False, False, True, False, True, False, True])
    assert torch.isnan(eigenvalues[broken]).all()
    torch.testing.assert_close(eigenvalues[~broken], expected[~broken], rtol=1e-15, atol=0)


@pytest.mark.parametrize("name", ["eigvalsh", "matmul", "copyto"])
def test_numpy_kernels_release_the_gil(name):
    """The thread split's premise: while a pool thread is inside numpy's eigvalsh, matmul or
    float32 -> float64 copy, another Python thread keeps running. Counted: the other thread's
    steps in the middle half of the call's span. With a 0.1 ms switch interval a call that held
    the GIL could let it run only for a moment after the call's start is stamped, never there."""
    generator = np.random.default_rng(7)
    if name == "eigvalsh":
        x = generator.standard_normal((4000, 16, 16))
        data = x @ x.transpose(0, 2, 1)

        def call():
            np.linalg.eigvalsh(data)
    elif name == "matmul":
        data = generator.standard_normal((200, 64, 392))

        def call():
            np.matmul(data, data.transpose(0, 2, 1))
    else:
        source = generator.standard_normal((16, 1000, 392)).astype(np.float32)
        target = np.empty((1000, 16, 392))

        def call():
            np.copyto(target, source.transpose(1, 0, 2))
    span: list[float] = []
    finished = threading.Event()

    def worker():
        span.append(time.perf_counter())
        call()
        span.append(time.perf_counter())
        finished.set()

    steps: list[float] = []
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    try:
        thread = threading.Thread(target=worker)
        thread.start()
        while not finished.is_set():
            steps.append(time.perf_counter())
        thread.join()
    finally:
        sys.setswitchinterval(interval)
    start, end = span
    quarter = (end - start) / 4
    middle = [moment for moment in steps if start + quarter < moment < end - quarter]
    assert end - start > 0.005  # long enough to tell
    assert len(middle) >= 10, f"{len(middle)} steps of the other thread inside a {end - start:.3f} s {name}"


def test_the_pool_is_what_splits_a_large_batch(monkeypatch):
    """With two threads and enough work the numpy arrangement runs its parts on the pool."""
    parts: list[int] = []
    original = logdet.run_parts
    monkeypatch.setattr(logdet, "run_parts", lambda task, batch, count, **kwargs: (parts.append(count),
                                                                                    original(task, batch, count, **kwargs)))
    torch.set_num_threads(2)  # the conftest fixture restores the session's count
    gram_eigenvalues(torch.randn(16, 2 * GRAM_THREAD_MIN_WORK // (16 * 16 * 800) + 2, 784), arrangement="numpy")
    gram_eigenvalues(torch.randn(16, 1, 784), arrangement="numpy")
    assert parts == [2, 1]
