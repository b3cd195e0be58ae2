"""What the batch loop computes: one decoder, or several on common sample indices.

A ``DecoderWork`` is one decoder prepared on the device with its latent stream (its own seed)
and its batch sizes. A ``Workload`` is the decoders a run computes for every sample index i:
one for ``estimate``/``sweep-scale``/``samples``, several for ``compare``, whose rows are then
``PairedRows`` (every model's h_i and every pair's difference on the same i). The loop asks the
workload for rows of a batch of indices and never needs to know how many decoders there are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from genentropy_cli.core.decoder import PreparedDecoder, prepare_decoder
from genentropy_cli.core.device import resolve_dtype
from genentropy_cli.core.invariance import radial_collapse
from genentropy_cli.core.latents import LatentSpec, LatentStream, distribution_label
from genentropy_cli.core.logdet import LogDetTally, log_det_path
from genentropy_cli.core.terms import SampleTerms
from genentropy_cli.defaults import INVARIANCE_PROBE_LATENTS
from genentropy_cli.errors import EstimationError, first_line
from genentropy_cli.run.allocator import release_freed_memory
from genentropy_cli.run.checkpoint import decoder_fingerprint
from genentropy_cli.run.compute import AdaptiveSizes, compute_terms_retrying, plan_for
from genentropy_cli.run.distributed import ProcessGroup
from genentropy_cli.run.hooks import BatchCallback, LogCallback
from genentropy_cli.run.memory import FirstBatchCalibration
from genentropy_cli.run.options import EstimateOptions
from genentropy_cli.run.planning import BatchPlan, batch_peak_bytes
from genentropy_cli.run.precision import PrecisionProbe, measure_precision
from genentropy_cli.run.rows import PairedRows, SampleRows

__all__ = ["DecoderWork", "Segments", "Workload"]

Segments = list[tuple[int, int, int]]
"""A batch as (block, start, stop) spans of the latent stream, in sample order."""


@dataclass
class DecoderWork:
    """One decoder prepared on the device (eval mode, no parameter gradients, its dtype), its
    seeded latent stream and its batch sizes (halved by out-of-memory retries)."""

    decoder: Any
    spec: LatentSpec
    seed: int
    prepared: PreparedDecoder
    stream: LatentStream
    sizes: AdaptiveSizes
    name: str | None = None
    probe: PrecisionProbe | None = None
    collapse: dict | None = None
    """Whether the decoder always collapses the radial latent direction (``core.invariance``)."""

    @classmethod
    def prepare(cls, decoder: Any, spec: LatentSpec, seed: int, options: EstimateOptions, device: torch.device,
                name: str | None = None, computed: Any = None) -> "DecoderWork":
        """``computed``: what runs instead of a private copy of ``decoder``, already one
        (``core.decoder.private_copy``), e.g. a class-bound view of a copy all classes share;
        ``decoder`` stays what identifies the member and what the precision probe copies."""
        dtype = resolve_dtype(options.dtype)
        prepared = (prepare_decoder(decoder, spec, device, dtype) if computed is None
                    else prepare_decoder(computed, spec, device, dtype, copy=False))
        stream = LatentStream(spec, seed)
        with prepared.context(method="forward-mode"):
            collapse = radial_collapse(prepared.flat(), stream.range(0, INVARIANCE_PROBE_LATENTS).to(
                device=device, dtype=dtype))
        return cls(decoder, spec, int(seed), prepared, stream,
                   AdaptiveSizes(*plan_for(prepared, options.max_memory, batch_size=options.batch_size,
                                           tangent_chunk=options.tangent_chunk)), name, collapse=collapse)

    def replan(self, options: EstimateOptions) -> None:
        """Plan the sizes again (after the precision probe freed its copy of the decoder)."""
        self.sizes = AdaptiveSizes(*plan_for(self.prepared, options.max_memory, batch_size=options.batch_size,
                                             tangent_chunk=options.tangent_chunk))

    def measure_precision(self, options: EstimateOptions, group: ProcessGroup) -> None:
        """The float64 check of the decoder dtype on the first ``probe_samples`` samples (rank 0
        computes, every rank gets it); under --max-memory the copy's batches get their own plan
        within the cap, and the run's batches are planned again once the copy is gone."""
        count = min(options.probe_samples, options.num_samples)
        if self.probe is not None or count == 0:
            return
        max_memory = options.max_memory

        def plan_precise(precise: PreparedDecoder) -> BatchPlan:
            if max_memory is not None:
                release_freed_memory()  # the copy's bytes count as in use, freed ones do not
            return plan_for(precise, max_memory, tangent_chunk=self.sizes.chunk)

        def calibration(planned: int) -> FirstBatchCalibration:
            return FirstBatchCalibration(max_memory, self.prepared.device, planned, fixed=options.batch_size is not None)

        self.probe = group.run_on_main(lambda: measure_precision(
            self.decoder, self.prepared, self.stream.range(0, count), options.scales, self.sizes.chunk,
            batch_size=self.sizes.batch, plan=plan_precise, calibration=calibration))
        if max_memory is not None and self.sizes.oom_retries == 0:
            release_freed_memory()
            self.replan(options)

    def latents(self, segments: Segments) -> torch.Tensor:
        return torch.cat([self.stream.block(block)[start:stop] for block, start, stop in segments])

    def terms(self, latents: torch.Tensor, indices: np.ndarray, scales: Sequence[float],
              log: LogCallback, every_eigenvalue: bool = False) -> SampleTerms:
        """h_i's pieces for these samples (an out-of-memory error halves the batch, nothing skipped)."""
        try:
            return compute_terms_retrying(self.prepared, latents, indices, scales, self.sizes, log, every_eigenvalue)
        except RuntimeError as error:
            who = self.name or "the decoder"
            raise EstimationError(f"{who} failed on samples {indices[0]}..{indices[-1]} ({first_line(error)})") from error

    def identity(self) -> dict:
        """What a checkpoint records of this decoder: its weights' fingerprint and latent spec."""
        return {"model": decoder_fingerprint(self.decoder), "latent_shape": list(self.spec.shape),
                "latent_distribution": distribution_label(self.spec.distribution)}

    def diagnostics(self) -> dict:
        prepared, sizes = self.prepared, self.sizes
        return {
            "jacobian_method": prepared.jacobian_method,
            "jacobian_method_note": prepared.method_note,
            "activation_bytes_per_row": prepared.activation_bytes_per_row,
            "planned_peak_bytes": batch_peak_bytes(
                self.spec.dim, prepared.output_dim, prepared.dtype.itemsize, sizes.initial_batch, sizes.initial_chunk,
                prepared.activation_bytes_per_row or 0, prepared.jacobian_method),
            "torchscript": prepared.torchscript,
            "always_collapsed": self.collapse,
        }


@dataclass
class Workload:
    """The decoders computed on every sample index; their rows, and what identifies them."""

    members: list[DecoderWork]
    scales: tuple[float, ...]
    pairs: tuple[tuple[int, int], ...] = ()
    paired: bool = False
    """True for several models (``PairedRows``), even of one model; False: one decoder's ``SampleRows``."""
    extra_identity: dict = field(default_factory=dict)
    """More settings a checkpoint must share (compare: names, shared latents)."""
    combinations: tuple[tuple[float, ...], ...] = ()
    """Weights of the members' weighted sums, columns after the pairs' (``PairedRows``)."""
    every_eigenvalue: bool = False
    """Take every sample's eigenvalues (the ``eigenvalues`` log-det path): for callers that need
    each row's collapsed counts (``sweep-scale``); else the Cholesky path where it pays."""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(member.name or f"model {index + 1}" for index, member in enumerate(self.members))

    @property
    def block_size(self) -> int:
        return self.members[0].stream.block_size

    @property
    def device(self) -> torch.device:
        return self.members[0].prepared.device

    @property
    def batch_size(self) -> int:
        """Every decoder walks the same batches: the smallest planned batch."""
        return min(member.sizes.batch for member in self.members)

    def limit_batch(self, size: int) -> None:
        for member in self.members:
            member.sizes.batch = min(member.sizes.batch, size)

    def rows_template(self) -> SampleRows | PairedRows:
        if self.paired:
            return PairedRows.empty(len(self.members), len(self.scales), self.pairs, self.names, self.combinations)
        return SampleRows.empty(len(self.scales))

    def log_det_path(self) -> str | list[str]:
        """The log-determinant path (``logdet.log_det_path``): one, or one per decoder where they differ."""
        paths = ["eigenvalues" if self.every_eigenvalue else log_det_path(member.spec.dim, self.scales)
                 for member in self.members]
        return paths[0] if len(set(paths)) == 1 else paths

    def compute(self, segments: Segments, indices: np.ndarray, log: LogCallback,
                on_batch: BatchCallback | None = None) -> tuple[SampleRows | PairedRows, int, LogDetTally]:
        """The rows of these samples, the count of eigenvalues clipped at zero and which
        log-determinant path gave how many samples."""
        parts, clipped, tally = [], 0, LogDetTally()
        for member in self.members:
            latents = member.latents(segments)
            terms = member.terms(latents, indices, self.scales, log, self.every_eigenvalue)
            if on_batch is not None and not self.paired:
                on_batch(indices, latents, terms)
            clipped += terms.clipped_eigenvalues
            if terms.log_det is not None:
                tally.add(terms.log_det)
            parts.append(SampleRows.from_terms(terms, self.scales))
        if not self.paired:
            return parts[0], clipped, tally
        return PairedRows(tuple(parts), self.pairs, self.names, self.combinations), clipped, tally

    def identity(self) -> dict:
        """The decoders' part of the settings a checkpoint must share with its resumption."""
        if not self.paired:
            return self.members[0].identity()
        combined = {"combinations": [list(weights) for weights in self.combinations]} if self.combinations else {}
        return {"models": [{**member.identity(), "name": name, "latent_seed": member.seed}
                           for member, name in zip(self.members, self.names)], **combined, **self.extra_identity}
