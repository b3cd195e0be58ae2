"""``estimate_entropy``: the Python API of ``genentropy estimate``."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from genentropy_cli.core.labels import LabelSpec
from genentropy_cli.core.latents import LatentDistribution, LatentSpec, make_latent_spec
from genentropy_cli.errors import InputError
from genentropy_cli.jobs.conditional import (
    ConditionalResult,
    as_label_spec,
    check_conditional_run,
    conditional_result,
    conditional_workload,
)
from genentropy_cli.run.hooks import BatchCallback, ProgressCallback, RowsCallback, RunHooks
from genentropy_cli.run.loop import LoopOutcome, run_loop
from genentropy_cli.run.options import EstimateOptions, options_from
from genentropy_cli.run.results import EntropyResult, estimates_from_moments
from genentropy_cli.run.workload import DecoderWork, Workload

__all__ = ["entropy_result", "estimate_entropy", "run_estimate"]


def estimate_entropy(
    decoder: Any,
    latent: LatentSpec | int | Sequence[int],
    scales: Sequence[float] | None = None,
    n_samples: int | None = None,
    *,
    options: EstimateOptions | None = None,
    latent_distribution: str | LatentDistribution | None = None,
    labels: LabelSpec | int | None = None,
    progress: ProgressCallback | None = None,
    log: Callable[[str], None] | None = None,
    on_batch: BatchCallback | None = None,
    on_rows: RowsCallback | None = None,
    every_eigenvalue: bool = False,
    **settings: Any,
) -> EntropyResult | ConditionalResult:
    """Estimate the differential entropy of ``decoder``'s output distribution (nats):

        H_s = (1/N) sum_i [ -log p(z_i) + 1/2 log det(J(z_i)^T J(z_i) + s^2 I) ]

    ``decoder`` maps a batch of latents shaped (B, *latent_shape) to outputs (B, ...), which
    are flattened to D; a ``torch.nn.Module`` or any callable. ``latent`` is a LatentSpec, a
    dimension or a shape (standard normal unless ``latent_distribution`` says otherwise).

    The run's settings are an ``EstimateOptions`` (``options``), or its fields as keyword
    arguments (``n_samples`` for ``num_samples``), which override ``options``: ``batch_size``,
    ``device``, ``dtype``, ``seed``, ``skip_nonfinite``, ``tangent_chunk``, ``max_memory``,
    ``target_stderr``, ``min_samples``, ``checkpoint``, ``checkpoint_every``, ``per_sample``,
    ``save_latents``, ``probe_samples``, ``distributed``, ``handle_signals``. Same seed, same
    answer: sample i's latent depends only on (seed, i), whatever the batch size, device,
    process count or interruption.

    ``progress(done, total, running_means)`` is called after every batch; ``log`` receives run
    notes (out-of-memory retries, the precision warning; default ``warnings.warn``);
    ``on_batch(indices, latents, terms)`` sees each batch this process computes;
    ``on_rows(first_index, rows)`` every sample's rows in sample order, on every process.

    ``every_eigenvalue``: take the eigenvalues of J^T J of every sample (the ``eigenvalues``
    log-det path), so that each row's collapsed counts and singular values are known; by default a
    run with d >= ``CHOLESKY_MIN_DIM`` and at most ``CHOLESKY_MAX_SCALES`` scales takes its
    log-determinants by Cholesky and the eigenvalues on every 16th sample (docs/performance.md).

    ``labels`` (a ``LabelSpec``, or a class count) makes it a conditional decoder g(z, y): a
    module or any callable of (z, y) (or of z and a keyword label). Every chosen class is then
    estimated on the same latents and a ``ConditionalResult`` returned: H(X|y) per class, their
    paired differences, H(X|Y), H(Y) and the bounds of the mixture entropy (docs/conditional.md).
    """
    given = {"scales": scales, "num_samples": n_samples}
    run_options = options_from(options, **{key: value for key, value in given.items() if value is not None},
                               **settings)
    if latent_distribution is not None and not isinstance(latent, LatentSpec):
        spec = make_latent_spec(latent, latent_distribution)
    else:
        spec = make_latent_spec(latent)
    hooks = RunHooks(progress=progress, log=log, on_batch=on_batch, on_rows=on_rows)
    return run_estimate(decoder, spec, None if labels is None else as_label_spec(labels), run_options, hooks,
                        every_eigenvalue=every_eigenvalue)


def run_estimate(decoder: Any, spec: LatentSpec, label: LabelSpec | None, options: EstimateOptions,
                 hooks: RunHooks, every_eigenvalue: bool = False) -> EntropyResult | ConditionalResult:
    """One decoder's run (``estimate_entropy`` after its arguments are read; ``track`` runs each
    checkpoint through it): every chosen class of a conditional decoder, else the decoder alone."""
    if label is not None:
        if hooks.on_batch is not None:
            raise InputError("on_batch sees one decoder's batches; a conditional run has one per class: use on_rows")
        notes = check_conditional_run(label, options)
        outcome = run_loop(lambda device: conditional_workload(decoder, spec, label, options, device,
                                                               every_eigenvalue=every_eigenvalue), options, hooks)
        return conditional_result(outcome, label, notes)
    outcome = run_loop(lambda device: Workload([DecoderWork.prepare(decoder, spec, options.seed, options, device)],
                                               options.scales, every_eigenvalue=every_eigenvalue), options, hooks)
    return entropy_result(outcome)


def entropy_result(outcome: LoopOutcome) -> EntropyResult:
    """The estimate per scale from one decoder's loop outcome."""
    member = outcome.workload.members[0]
    summary = outcome.summary
    return EntropyResult(
        estimates=estimates_from_moments(outcome.workload.scales, outcome.moments),
        latent=member.spec,
        output_dim=member.prepared.output_dim,
        output_shape=member.prepared.output_shape,
        settings=outcome.settings,
        elapsed_seconds=outcome.elapsed_seconds,
        num_nonfinite=summary.num_nonfinite,
        nonfinite_indices=list(summary.nonfinite_indices),
        diagnostics=outcome.diagnostics,
        partial=outcome.partial,
        stop_reason=outcome.stop_reason,
        precision_probe=outcome.probe_reports[0],
        samples_computed=outcome.samples_computed,
    )
