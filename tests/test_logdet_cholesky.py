"""The Cholesky log-determinant path (issue 22): closed forms, agreement with the eigenvalue path,
fallbacks, the eigenvalue subsample, batch-size independence and memory plans for large d.

Closed form: J = U diag(sigma) V^T with orthonormal U (D x d), V (d x d) has
1/2 log det(J^T J + s^2 I) = 1/2 sum_j log(sigma_j^2 + s^2) whatever U and V.
Round-off: J^T J is formed in float64 with an error of about d u ||J||^2 in each eigenvalue
(u = 2^-53), and either path adds an error of the same order, so a log-determinant may move by
about 1/2 sum_j d u ||J||^2 / (sigma_j^2 + s^2); the tolerances below are that bound times 10.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genentropy_cli import estimate_entropy
from genentropy_cli.core.logdet import (
    LogDetTally,
    cholesky_half_log_det,
    cholesky_in_place,
    eigenvalue_subsample,
    gram_log_determinants,
    log_det_path,
)
from genentropy_cli.defaults import (
    CHOLESKY_LEAF_DIM,
    CHOLESKY_MAX_SCALES,
    CHOLESKY_MIN_DIM,
    EIGENVALUE_SUBSAMPLE_STRIDE,
)
from genentropy_cli.run.planning import batch_peak_bytes, plan_batch

UNIT_ROUNDOFF = 2.0**-53


def columns_with_singular_values(singular_values: torch.Tensor, output_dim: int, seed: int) -> torch.Tensor:
    """Jacobian columns (d, 1, D), float64, of J = U diag(sigma) V^T with random orthonormal U, V."""
    generator = torch.Generator().manual_seed(seed)
    dim = singular_values.numel()
    left, _ = torch.linalg.qr(torch.randn(output_dim, dim, generator=generator, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    jacobian = left @ torch.diag(singular_values) @ right.T
    return jacobian.T.unsqueeze(1).contiguous()


def closed_form(singular_values: torch.Tensor, scales) -> torch.Tensor:
    return torch.tensor([0.5 * float(torch.log(singular_values**2 + scale**2).sum()) for scale in scales],
                        dtype=torch.float64)


def round_off_bound(singular_values: torch.Tensor, scale: float) -> float:
    dim = singular_values.numel()
    largest = float(singular_values.max()) ** 2
    return 10 * 0.5 * dim * UNIT_ROUNDOFF * largest * float((1 / (singular_values**2 + scale**2)).sum())


def test_the_path_rule_follows_the_named_constants():
    assert log_det_path(CHOLESKY_MIN_DIM, [1e-4]) == "cholesky"
    assert log_det_path(CHOLESKY_MIN_DIM - 1, [1e-4]) == "eigenvalues"
    assert log_det_path(512, [1e-4] * CHOLESKY_MAX_SCALES) == "cholesky"
    assert log_det_path(512, [1e-4] * (CHOLESKY_MAX_SCALES + 1)) == "eigenvalues"  # a sweep keeps the eigenvalues
    assert log_det_path(512, [0.0]) == "eigenvalues"  # J^T J alone may be singular


def test_the_eigenvalue_subsample_depends_on_the_index_only():
    indices = np.arange(5 * EIGENVALUE_SUBSAMPLE_STRIDE)
    whole = eigenvalue_subsample(indices)
    pieces = torch.cat([eigenvalue_subsample(indices[start:start + 7]) for start in range(0, len(indices), 7)])
    assert torch.equal(whole, pieces) and bool(whole[0]) and int(whole.sum()) == 5


@pytest.mark.parametrize("rank_deficient", [False, True])
@pytest.mark.parametrize("path", ["cholesky", "eigenvalues"])
def test_both_paths_give_the_closed_form(path, rank_deficient):
    dim, output_dim, scales = 96, 130, [1e-2, 1e-1]
    singular_values = torch.logspace(-3, 1, dim, dtype=torch.float64)
    if rank_deficient:
        singular_values[:17] = 0.0
    columns = torch.cat([columns_with_singular_values(singular_values, output_dim, seed) for seed in range(3)], dim=1)
    result = gram_log_determinants(columns, scales, torch.tensor([True, False, False]), path=path)
    expected = closed_form(singular_values, scales)
    tolerance = round_off_bound(singular_values, scales[0])
    assert tolerance < 1e-5  # the check is tight: the values are about -100
    for sample in range(3):
        torch.testing.assert_close(result.half_log_det[sample], expected, rtol=0, atol=tolerance)
    if path == "cholesky":
        assert result.tally == LogDetTally(cholesky=3, checked=1, max_difference=result.tally.max_difference)
        assert result.tally.max_difference <= 2 * tolerance
        assert result.has_eigenvalues.tolist() == [True, False, False]
        assert torch.isnan(result.eigenvalues[1:]).all()
    else:
        assert result.tally == LogDetTally(eigenvalues=3) and bool(result.has_eigenvalues.all())
    torch.testing.assert_close(result.eigenvalues[0], torch.sort(singular_values**2).values, rtol=0,
                               atol=tolerance * 1e-4)


def test_float32_jacobians_give_the_same_numbers_on_both_paths():
    generator = torch.Generator().manual_seed(3)
    columns = torch.randn(80, 6, 400, generator=generator)  # (d, B, D) float32, as a decoder gives them
    scales = [1e-4]
    by_cholesky = gram_log_determinants(columns, scales, torch.zeros(6, dtype=torch.bool), path="cholesky")
    by_eigenvalues = gram_log_determinants(columns, scales, None)
    torch.testing.assert_close(by_cholesky.half_log_det, by_eigenvalues.half_log_det, rtol=1e-12, atol=0)


def test_a_failed_factorisation_falls_back_to_the_eigenvalues():
    """Two equal columns of norm 1e10: J^T J + s^2 I rounds to a singular matrix in float64
    (1e20 + 1e-8 == 1e20), so LAPACK's potrf stops (info > 0); the eigenvalues 0, 2e20, 1, 1
    are exact and give the closed form."""
    jacobian = torch.zeros(5, 4, dtype=torch.float64)
    jacobian[0, 0] = jacobian[0, 1] = 1e10
    jacobian[1, 2] = jacobian[2, 3] = 1.0
    healthy = columns_with_singular_values(torch.linspace(1, 2, 4, dtype=torch.float64), 5, seed=0)
    columns = torch.cat([jacobian.T.unsqueeze(1), healthy], dim=1)
    scale = 1e-4
    values, succeeded = cholesky_half_log_det(torch.stack([jacobian.T @ jacobian]), [scale])
    assert not bool(succeeded[0])
    result = gram_log_determinants(columns, [scale], torch.zeros(2, dtype=torch.bool), path="cholesky")
    expected = 0.5 * (math.log(scale**2) + math.log(2e20) + 2 * math.log(1 + scale**2))
    assert result.half_log_det[0, 0].item() == pytest.approx(expected, rel=1e-12)
    assert result.has_eigenvalues.tolist() == [True, False]
    assert result.tally == LogDetTally(cholesky=1, eigenvalues=1, fallbacks=1, checked=0, max_difference=0.0)


def test_a_non_finite_jacobian_is_a_non_finite_term_not_a_fallback():
    columns = torch.randn(70, 3, 90, dtype=torch.float64)
    columns[5, 1, 7] = math.nan
    result = gram_log_determinants(columns, [1e-4], torch.zeros(3, dtype=torch.bool), path="cholesky")
    assert torch.isnan(result.half_log_det[1]).all() and torch.isfinite(result.half_log_det[[0, 2]]).all()
    assert result.tally.fallbacks == 0 and result.tally.eigenvalues == 1


class Linear(torch.nn.Module):
    """x = A z: J = A everywhere, so H = d/2 log(2 pi e) + 1/2 log det(A^T A + s^2 I) exactly."""

    def __init__(self, matrix: torch.Tensor) -> None:
        super().__init__()
        self.matrix = torch.nn.Parameter(matrix, requires_grad=False)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return latents @ self.matrix.T


def linear_decoder(singular_values: torch.Tensor, output_dim: int, seed: int = 0) -> Linear:
    columns = columns_with_singular_values(singular_values, output_dim, seed)
    return Linear(columns[:, 0, :].T.to(torch.float32))


def test_the_run_takes_the_cholesky_path_and_the_same_seed_gives_the_same_answer_whatever_the_batch():
    dim = CHOLESKY_MIN_DIM + 7
    torch.manual_seed(0)
    decoder = torch.nn.Sequential(torch.nn.Linear(dim, 120), torch.nn.Tanh(), torch.nn.Linear(120, 150))
    kwargs = dict(n_samples=2 * EIGENVALUE_SUBSAMPLE_STRIDE + 3, seed=4, probe_samples=0)
    rows = {}
    results = {}
    for batch in (5, 64):
        collected = []
        results[batch] = estimate_entropy(decoder, dim, batch_size=batch,
                                          on_rows=lambda first, r, out=collected: out.append((first, r)), **kwargs)
        rows[batch] = np.concatenate([r.terms for _, r in sorted(collected, key=lambda item: item[0])])
    np.testing.assert_allclose(rows[5], rows[64], rtol=1e-12, atol=0)
    for result in results.values():
        log_det = result.diagnostics["log_det"]
        assert log_det["path"] == "cholesky" and log_det["cholesky_samples"] == kwargs["n_samples"]
        assert log_det["checked_samples"] == 3 and log_det["max_check_difference"] < 1e-8
        assert result.diagnostics["singular_value_samples"] == 3  # samples 0, 16, 32
        assert result.diagnostics["clipped_eigenvalues"] == 0
    eigen = estimate_entropy(decoder, dim, scales=[1e-4] * 4, batch_size=64, **kwargs)
    assert eigen.diagnostics["log_det"]["path"] == "eigenvalues"
    assert eigen.diagnostics["singular_value_samples"] == kwargs["n_samples"]
    assert eigen.estimates[0].entropy == pytest.approx(results[64].estimates[0].entropy, rel=1e-12)


@pytest.mark.parametrize("dim", [1024])
def test_a_large_latent_runs_within_max_memory_and_gives_the_closed_form(dim):
    singular_values = torch.linspace(0.5, 2.0, dim, dtype=torch.float64)
    decoder = linear_decoder(singular_values, dim + 64)
    cap = 2 * 10**9
    rows = []
    result = estimate_entropy(decoder, dim, n_samples=3, seed=0, probe_samples=0, max_memory=cap,
                              on_rows=lambda first, piece: rows.append(piece))
    diagnostics = result.diagnostics
    assert diagnostics["planned_peak_bytes"] <= cap and diagnostics["max_memory_exceeded"] is False
    assert diagnostics["log_det"]["path"] == "cholesky"
    # float32 A: its singular values are those above to about 1e-7 relative, so the closed form
    # is that of A as stored (float64 singular values of the float32 matrix)
    stored = torch.linalg.svdvals(decoder.matrix.double())
    half_log_det = np.concatenate([piece.terms[:, 0] - piece.neg_log_density for piece in rows])
    assert len(half_log_det) == 3  # h_i - (-log p(z_i)): the same closed form for every sample
    np.testing.assert_allclose(half_log_det, float(closed_form(stored, [1e-4])[0]), rtol=1e-10)


@pytest.mark.parametrize("dim", [1024, 2048, 4096])
@pytest.mark.parametrize("cap", [2 * 10**9, 8 * 10**9])
def test_large_latents_are_planned_within_max_memory(dim, cap):
    """StyleGAN- and VAE-sized latents: the plan's modelled peak (Jacobian, one call's
    activations, or the Gram step with its Cholesky copies: 3 B d^2 float64) stays under the cap."""
    output_dim = 3 * 64 * 64
    row_bytes = 4 * 4 * output_dim
    batch, chunk = plan_batch(dim, output_dim, torch.float32, "cpu", cap, activation_bytes_per_row=row_bytes,
                              memory_in_use=300 * 2**20)
    peak = batch_peak_bytes(dim, output_dim, 4, batch, chunk, row_bytes)
    assert 300 * 2**20 + peak <= cap
    assert peak >= 3 * batch * dim * dim * 8  # the Gram step's float64 matrices are in the model
    assert batch >= 1 and chunk >= 1



def test_sweep_scale_keeps_every_samples_eigenvalues_for_its_collapsed_counts():
    from genentropy_cli import sweep_scale

    dim = CHOLESKY_MIN_DIM + 1
    torch.manual_seed(1)
    decoder = torch.nn.Sequential(torch.nn.Linear(dim, 100), torch.nn.Tanh(), torch.nn.Linear(100, 120))
    sweep = sweep_scale(decoder, dim, scales=[1e-1, 1e-4], n_samples=20, seed=0, probe_samples=0)
    assert sweep.result.diagnostics["log_det"]["path"] == "eigenvalues"
    assert sweep.result.diagnostics["singular_value_samples"] == 20
    assert sweep.result.diagnostics["log_det"]["eigenvalue_samples"] == 20


def test_the_cost_model_counts_what_docs_performance_states():
    """docs/performance.md, Cost model: d + 1 rows, 2 d^2 D Gram FLOPs, S d^3/3 Cholesky FLOPs plus
    4/3 d^3 on every 16th sample; 4/3 d^3 on the eigenvalue path."""
    from genentropy_cli.run.planning import sample_cost

    large = sample_cost(512, 3072, 2)
    assert large.log_det_path == "cholesky" and large.forward_rows == 513
    assert large.gram_flops == 2 * 512 * 512 * 3072
    assert large.log_det_flops == pytest.approx(2 * 512**3 / 3 + 4 / 3 * 512**3 / EIGENVALUE_SUBSAMPLE_STRIDE)
    small = sample_cost(16, 784)
    assert small.log_det_path == "eigenvalues" and small.log_det_flops == pytest.approx(4 / 3 * 16**3)
    assert large.seconds(1e-3, 1e9, 1e9) == pytest.approx(0.513 + (large.gram_flops + large.log_det_flops) / 1e9)


def test_the_cli_records_the_path_and_marks_the_rows_without_eigenvalues(run_cli, tmp_path):
    """J = A with singular values 0.5..2 (none below s = 1e-4): a collapsed count of 0 on the
    subsample (samples 0 and 16), -1 elsewhere; h_i - (-log p(z_i)) the closed form for every sample."""
    from genentropy_cli.core.latents import make_latent_spec
    from genentropy_cli.models.loading import save_torchscript

    dim = CHOLESKY_MIN_DIM
    singular_values = torch.linspace(0.5, 2.0, dim, dtype=torch.float64)
    model, rows_path = tmp_path / "linear.pt", tmp_path / "rows.npy"
    decoder = linear_decoder(singular_values, dim + 5)
    save_torchscript(decoder, model, latent=make_latent_spec(dim))
    result = run_cli("estimate", model, "-n", "20", "--batch-size", "7", "--probe-samples", "0", "--json",
                     "--per-sample", rows_path)
    assert result.exit_code == 0, result.stderr
    document = result.json()
    assert document["diagnostics"]["log_det"]["path"] == "cholesky"
    assert document["diagnostics"]["singular_value_samples"] == 2
    assert document["diagnostics"]["mean_collapsed_directions"] == {"0.0001": 0.0}
    rows = np.load(rows_path)
    expected_collapsed = np.where(np.arange(20) % EIGENVALUE_SUBSAMPLE_STRIDE == 0, 0, -1)
    assert np.array_equal(rows["collapsed"][:, 0], expected_collapsed)
    stored = torch.linalg.svdvals(decoder.matrix.double())
    np.testing.assert_allclose(rows["h"][:, 0] - rows["neg_log_density"], float(closed_form(stored, [1e-4])[0]),
                               rtol=1e-10)
    table = run_cli("estimate", model, "-n", "20", "--probe-samples", "0")
    assert table.exit_code == 0 and "Cholesky of J^T J + s^2 I" in table.stdout


@pytest.mark.parametrize("change, message", [
    (lambda meta: meta["summary"].update(eigen_count=meta["summary"]["count"] + 1), "samples with eigenvalues"),
    (lambda meta: meta["log_det"].update(cholesky_fallbacks=-1), "log-determinant counters"),
    (lambda meta: meta["log_det"].update(max_check_difference=float("nan")), "log-determinant counters"),
])
def test_a_checkpoint_whose_log_det_counters_cannot_come_from_a_run_is_refused(change, message):
    from genentropy_cli.run.ledger import RunLedger
    from genentropy_cli.run.rows import SampleRows

    def ledger() -> RunLedger:
        return RunLedger(8, 4, [1e-4])

    source = ledger()
    rows = SampleRows(np.zeros((8, 1)), np.zeros(8), np.array([[0]] + [[-1]] * 7), np.full(8, np.nan), np.full(8, np.nan))
    rows.sigma_min[0] = rows.sigma_max[0] = 1.0
    source.record(0, 0, rows.slice(0, 4))
    source.record(1, 0, rows.slice(4, 8))
    list(source.advance())
    source.log_det = LogDetTally(cholesky=8, checked=1, max_difference=1e-12)
    meta, arrays = source.to_state()
    assert meta["summary"]["eigen_count"] == 1  # only sample 0 had eigenvalues
    restored = ledger()
    restored.restore(meta, arrays)  # the state as written is accepted
    assert restored.log_det == source.log_det and restored.summary.eigen_count == 1
    change(meta)
    with pytest.raises(ValueError, match=message):
        ledger().restore(meta, arrays)


@pytest.mark.parametrize("dim", [CHOLESKY_LEAF_DIM + 1, 2 * CHOLESKY_LEAF_DIM, 301])
def test_the_blocked_factor_is_lapacks_factor(dim):
    """2 x 2 blocks down to CHOLESKY_LEAF_DIM give the factor one potrf gives (odd sizes split
    unevenly), reading the lower triangle only."""
    generator = torch.Generator().manual_seed(dim)
    jacobian = torch.randn(dim + 40, dim, generator=generator, dtype=torch.float64)
    matrices = torch.stack([jacobian.T @ jacobian, jacobian.T @ jacobian + torch.eye(dim, dtype=torch.float64)])
    factor = matrices.tril()  # the upper triangle is never read
    exists = cholesky_in_place(factor)
    torch.testing.assert_close(factor.tril(), torch.linalg.cholesky(matrices), rtol=1e-10, atol=1e-10)
    assert exists.tolist() == [True, True]


def test_a_block_that_is_not_positive_definite_is_reported():
    """Positive definite leading block, indefinite Schur complement: the factor does not exist,
    and cholesky_half_log_det marks the sample failed rather than giving a number."""
    dim = 3 * CHOLESKY_LEAF_DIM
    healthy = torch.eye(dim, dtype=torch.float64)
    broken = torch.eye(dim, dtype=torch.float64)
    broken[-1, -1] = -1.0
    values, succeeded = cholesky_half_log_det(torch.stack([healthy, broken]), [1e-3])
    assert succeeded.tolist() == [True, False]
    assert values[0, 0].item() == pytest.approx(0.5 * dim * math.log(1 + 1e-6), rel=1e-12)
    assert not cholesky_in_place(broken.unsqueeze(0)).item()
