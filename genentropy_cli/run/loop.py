"""The run loop behind ``estimate_entropy``: batches, retries, ranks, checkpoints, stopping.

One iteration: every rank computes its next batch (latent blocks dealt round-robin, see
``distributed``), an out-of-memory error halving the batch (then the tangent chunk) and
retrying the same samples; the ranks exchange their rows; each rank records them in its
``RunLedger``, which advances the frontier in global sample order (non-finite check, target
standard error, per-sample rows) and merges whole blocks in block order. Rank 0 writes the
per-sample file and, every ``checkpoint_every`` seconds, the checkpoint. The loop ends when
every sample is used, the target is met, or an interrupt asked to stop (partial result).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from genentropy_cli.run.allocator import release_freed_memory, reusing_freed_memory
from genentropy_cli.run.checkpoint import check_same_settings, decoder_fingerprint, load_checkpoint, save_checkpoint
from genentropy_cli.run.distributed import (
    ProcessGroup,
    deal_round_robin,
    join_process_group,
    launched_by_torchrun,
    raise_shared_error,
    rank_device,
    shareable_error,
)
from genentropy_cli.run.batches import SpanBatcher
from genentropy_cli.run.hooks import LogCallback, RunHooks
from genentropy_cli.run.options import EstimateOptions
from genentropy_cli.run.results import EntropyResult, estimates_from_moments
from genentropy_cli.core.decoder import PreparedDecoder, prepare_decoder
from genentropy_cli.core.terms import SampleTerms, compute_sample_terms
from genentropy_cli.errors import first_line
from genentropy_cli.core.device import resolve_device, resolve_dtype, strict_float32
from genentropy_cli.errors import EstimationError, GenentropyError
from genentropy_cli.run.interrupts import InterruptFlag, graceful_interrupts
from genentropy_cli.core.latents import LatentSpec, LatentStream, distribution_label
from genentropy_cli.run.ledger import RunLedger, SampleRows
from genentropy_cli.run.memory import (
    FirstBatchCalibration,
    device_memory_budget,
    device_name,
    is_out_of_memory,
    memory_in_use,
    peak_memory,
    release_cached_memory,
    reset_peak_memory,
)
from genentropy_cli.run.planning import BatchPlan, batch_peak_bytes, format_bytes, plan_batch
from genentropy_cli.run.per_sample import PerSampleWriter
from genentropy_cli.run.precision import PrecisionProbe, dtype_name, measure_precision, probe_warning
from genentropy_cli.run.stopping import STOP_INTERRUPTED, STOP_NUM_SAMPLES, STOP_TARGET_STDERR

@dataclass
class AdaptiveSizes:
    """Batch size and tangent chunk, halved by out-of-memory retries."""

    batch: int
    chunk: int
    initial_batch: int = field(init=False)
    initial_chunk: int = field(init=False)
    oom_retries: int = 0

    def __post_init__(self) -> None:
        self.initial_batch, self.initial_chunk = self.batch, self.chunk


def plan_for(prepared: PreparedDecoder, max_memory: int | None = None, *, dtype: torch.dtype | None = None,
             batch_size: int | None = None, tangent_chunk: int | None = None) -> BatchPlan:
    """Batch size and tangent chunk for ``prepared`` run in ``dtype`` (default its own):
    ``planning.plan_batch`` within ``max_memory`` less what is in use now, else within the
    device's default budget, for the decoder's measured activation bytes per row."""
    dtype = dtype or prepared.dtype
    row_bytes = prepared.activation_bytes_per_row
    if row_bytes and dtype != prepared.dtype:
        row_bytes = row_bytes * dtype.itemsize // prepared.dtype.itemsize
    return plan_batch(
        prepared.latent.dim, prepared.output_dim, dtype, prepared.device, max_memory,
        activation_bytes_per_row=row_bytes,
        memory_in_use=memory_in_use(prepared.device) if max_memory is not None else 0,
        working_memory=device_memory_budget(prepared.device), batch_size=batch_size,
        tangent_chunk=tangent_chunk, method=prepared.jacobian_method,
    )


def over_memory_cap(peak_bytes: int, max_memory: int | None) -> str | None:
    """The warning when the measured peak went over ``--max-memory`` (the planner's memory model
    is an estimate: kernel workspaces and allocator slack are not in it), else None."""
    if max_memory is None or peak_bytes <= max_memory:
        return None
    return (f"peak memory {format_bytes(peak_bytes)} went over --max-memory {format_bytes(max_memory)}: the "
            "planner underestimated this decoder; give a lower --max-memory or a smaller --batch-size")


def compute_terms_retrying(prepared: PreparedDecoder, latents: torch.Tensor, indices: np.ndarray,
                           scales: Sequence[float], sizes: AdaptiveSizes, log: LogCallback) -> SampleTerms:
    """``compute_sample_terms`` for a batch; an out-of-memory error halves the batch (then the
    tangent chunk), computes the same samples again, and keeps the smaller size for later
    batches. Nothing is skipped: the terms are those of every sample of the batch."""
    try:
        return compute_sample_terms(prepared, latents, scales, sizes.chunk)
    except RuntimeError as error:
        if not is_out_of_memory(error):
            raise
    release_cached_memory(prepared.device)  # outside the except: the traceback holds tensors
    sizes.oom_retries += 1
    count = latents.shape[0]
    where = f"samples {indices[0]}..{indices[-1]} (batch {count}, tangent chunk {sizes.chunk})"
    if count > 1:
        half = (count + 1) // 2
        sizes.batch = min(sizes.batch, half)
        log(f"out of memory on {where}; retrying them in batches of {half}")
        return SampleTerms.concat([
            compute_terms_retrying(prepared, latents[:half], indices[:half], scales, sizes, log),
            compute_terms_retrying(prepared, latents[half:], indices[half:], scales, sizes, log),
        ])
    if sizes.chunk > 1:
        sizes.chunk = max(1, sizes.chunk // 2)
        log(f"out of memory on {where}; retrying with tangent chunk {sizes.chunk}")
        return compute_terms_retrying(prepared, latents, indices, scales, sizes, log)
    raise EstimationError(f"out of memory on {where} even with batch size 1 and tangent chunk 1; "
                          "use a device with more memory, or --device cpu")


@dataclass
class BatchMessage:
    """What one rank reports after an iteration (exchanged between ranks)."""

    records: list[tuple[int, int, SampleRows]] = field(default_factory=list)
    clipped: int = 0
    computed: int = 0
    done: bool = False
    interrupted: bool = False
    error: tuple[int, str] | None = None  # (exit code, message)


def _fail_from(messages: Sequence[BatchMessage]) -> None:
    for message in messages:
        if message.error is not None:
            raise_shared_error(message.error)


class EstimateRun:
    """One call of ``estimate_entropy`` on one rank (see the module docstring)."""

    def __init__(self, decoder: Any, spec: LatentSpec, options: EstimateOptions, hooks: RunHooks,
                 device: torch.device, group: ProcessGroup, interrupt: InterruptFlag):
        created = time.perf_counter()
        self.decoder, self.spec, self.scales = decoder, spec, options.scales
        self.num_samples, self.seed, self.options, self.group = options.num_samples, options.seed, options, group
        self.hooks, self.interrupt = hooks, interrupt
        self.progress = hooks.progress if group.is_main else None
        self.log = self._ranked(hooks.notify)
        self.prepared = prepare_decoder(decoder, spec, device, resolve_dtype(options.dtype))
        self.requested_batch_size = options.batch_size
        self.sizes = AdaptiveSizes(*plan_for(self.prepared, options.max_memory, batch_size=options.batch_size,
                                             tangent_chunk=options.tangent_chunk))
        self.stream = LatentStream(spec, self.seed)
        self.ledger = RunLedger(self.num_samples, self.stream.block_size, self.scales,
                                skip_nonfinite=options.skip_nonfinite,
                                target_stderr=options.target_stderr, min_samples=options.min_samples)
        self.probe: PrecisionProbe | None = None
        self.writer: PerSampleWriter | None = None
        self.computed = 0  # samples computed in this call, all ranks
        self.computed_before = 0  # ... in the runs this one resumes
        self.elapsed_before = 0.0
        self.resumed_from = 0
        self.interrupted = False
        self._defining_settings: dict | None = None
        self.calibration: FirstBatchCalibration | None = None
        self.setup_seconds = time.perf_counter() - created  # decoder copy, probes, batch planning

    def _ranked(self, log: LogCallback) -> LogCallback:
        if self.group.world_size == 1:
            return log
        return lambda message: log(f"[rank {self.group.rank}] {message}")

    # ------------------------------------------------------------------ settings and resume

    def defining_settings(self) -> dict:
        """The settings a checkpoint must share with the run that resumes it."""
        if self._defining_settings is None:
            self._defining_settings = self._collect_defining_settings()
        return self._defining_settings

    def _collect_defining_settings(self) -> dict:
        settings = {
            "model": decoder_fingerprint(self.decoder),
            "latent_shape": list(self.spec.shape),
            "latent_distribution": distribution_label(self.spec.distribution),
            **self.options.checkpoint_settings(),
            "latent_block_size": self.stream.block_size,
        }
        return json.loads(json.dumps(settings))

    def resume(self) -> int | None:
        """Load the checkpoint (rank 0 reads, all ranks get it); the per-sample file offset."""
        path = self.options.checkpoint
        if path is None:
            return None
        loaded = self.group.run_on_main(lambda: load_checkpoint(path))
        if loaded is None:
            return None
        saved_settings, meta, arrays = loaded
        check_same_settings(path, saved_settings, self.defining_settings())
        self.ledger.restore(meta["ledger"], arrays)
        self.probe = PrecisionProbe.from_state(meta["probe"]) if meta["probe"] else None
        self.computed_before = int(meta["samples_computed"])
        self.elapsed_before = float(meta["elapsed_seconds"])
        self.resumed_from = sum(self.ledger.recorded(block) for block in range(self.ledger.num_blocks))
        if self.ledger.stop_at is not None:
            self.resumed_from = self.ledger.stop_at
        return meta["per_sample_offset"]

    def save(self, elapsed: float) -> None:
        if self.options.checkpoint is None or not self.group.is_main:
            return
        ledger_meta, arrays = self.ledger.to_state()
        meta = {
            "ledger": ledger_meta,
            "probe": self.probe.to_state() if self.probe else None,
            "per_sample_offset": self.writer.sync() if self.writer else None,
            "samples_computed": self.computed_before + self.computed,
            "elapsed_seconds": self.elapsed_before + elapsed,
            "finished": self.ledger.finished,
        }
        save_checkpoint(self.options.checkpoint, self.defining_settings(), meta, arrays)

    # ------------------------------------------------------------------ the loop

    def measure_precision(self) -> None:
        count = min(int(self.options.probe_samples), self.num_samples)
        if self.probe is not None or count == 0:
            return
        max_memory = self.options.max_memory

        def plan_precise(precise: PreparedDecoder) -> BatchPlan:
            """The float64 copy holds twice the bytes per row: its own plan within the same cap,
            made once the copy exists (its bytes count as in use, freed ones do not)."""
            if max_memory is not None:
                release_freed_memory()
            return plan_for(precise, max_memory, tangent_chunk=self.sizes.chunk)

        def calibration(planned: int) -> FirstBatchCalibration:
            return FirstBatchCalibration(max_memory, self.prepared.device, planned,
                                         fixed=self.requested_batch_size is not None)

        self.probe = self.group.run_on_main(lambda: measure_precision(
            self.decoder, self.prepared, self.stream.range(0, count), self.scales, self.sizes.chunk,
            batch_size=self.sizes.batch, plan=plan_precise, calibration=calibration))
        if max_memory is not None and self.sizes.oom_retries == 0:
            # the copy is gone: hand its freed memory back, so that what is in use is what is live,
            # and plan the run's batches within the cap from there
            release_freed_memory()
            self.sizes = AdaptiveSizes(*plan_for(self.prepared, max_memory, batch_size=self.requested_batch_size,
                                                 tangent_chunk=self.options.tangent_chunk))

    def next_message(self, batcher: SpanBatcher) -> BatchMessage:
        """Compute this rank's next batch (none once its share is done or a stop was asked)."""
        if self.interrupt.requested or batcher.empty:
            return BatchMessage(done=batcher.empty, interrupted=self.interrupt.requested)
        calibration = self.calibration
        segments = batcher.take(calibration.first_size() if calibration.active else self.sizes.batch)
        size = self.stream.block_size
        indices = np.concatenate([np.arange(block * size + start, block * size + stop) for block, start, stop in segments])
        latents = torch.cat([self.stream.block(block)[start:stop] for block, start, stop in segments])
        try:
            try:
                def compute() -> SampleTerms:
                    return compute_terms_retrying(self.prepared, latents, indices, self.scales, self.sizes, self.log)

                terms = calibration.run(len(indices), compute) if calibration.active else compute()
                if calibration.calibrated is not None and calibration.calibrated < self.sizes.batch:
                    self.sizes.batch = calibration.calibrated
            except RuntimeError as error:
                raise EstimationError(
                    f"the decoder failed on samples {indices[0]}..{indices[-1]} ({first_line(error)})"
                ) from error
        except GenentropyError as error:
            if self.group.world_size == 1:
                raise
            return BatchMessage(done=True, error=shareable_error(error))
        if self.hooks.on_batch is not None:
            self.hooks.on_batch(indices, latents, terms)
        rows = SampleRows.from_terms(terms, self.scales)
        records, position = [], 0
        for block, start, stop in segments:
            records.append((block, start, rows.slice(position, position + stop - start)))
            position += stop - start
        return BatchMessage(records, terms.clipped_eigenvalues, len(indices), batcher.empty, self.interrupt.requested)

    def apply(self, messages: Sequence[BatchMessage]) -> None:
        _fail_from(messages)
        for message in messages:
            for block, start, rows in message.records:
                self.ledger.record(block, start, rows)
            self.ledger.clipped_eigenvalues += message.clipped
            self.computed += message.computed
        for emitted in self.ledger.advance():
            if self.writer is not None:
                latents = None
                if self.options.save_latents:
                    latents = self.writer_stream.range(emitted.first_index, emitted.first_index + len(emitted.rows)).numpy()
                self.writer.write(emitted.first_index, emitted.rows, latents)

    def loop(self, started: float) -> None:
        self.calibration = FirstBatchCalibration(self.options.max_memory, self.prepared.device, self.sizes.batch,
                                                 fixed=self.requested_batch_size is not None)
        spans = deal_round_robin(self.ledger.remaining_spans(), self.group.rank, self.group.world_size)
        batcher = SpanBatcher(spans)
        last_save = time.monotonic()
        while not self.ledger.finished:
            messages = self.group.exchange(self.next_message(batcher))
            self.apply(messages)
            if self.progress is not None:
                done = min(self.num_samples, self.resumed_from + self.computed)
                self.progress(done, self.num_samples, self.ledger.running_mean().tolist())
            if any(message.interrupted for message in messages):
                self.interrupted = not self.ledger.finished
                break
            if all(message.done for message in messages):
                break
            if time.monotonic() - last_save >= self.options.checkpoint_every:
                self.save(time.perf_counter() - started)
                last_save = time.monotonic()

    def execute(self) -> EntropyResult:
        started = time.perf_counter()
        reset_peak_memory(self.prepared.device)
        offset = self.resume()
        self.measure_precision()
        if self.options.per_sample is not None and self.group.is_main:
            self.writer = PerSampleWriter(self.options.per_sample, self.scales, self.spec.dim, self.options.save_latents)
            self.writer_stream = LatentStream(self.spec, self.seed)
            self.writer.open(offset)
        try:
            self.loop(started)
            elapsed = time.perf_counter() - started
            self.save(elapsed)
            if self.writer is not None:
                self.writer.finish(keep_rows_file=self.interrupted)
        except KeyboardInterrupt:  # a second Ctrl-C, or no handlers installed: keep what is done
            self.save(time.perf_counter() - started)
            raise
        finally:
            if self.writer is not None:
                self.writer.close()
        return self.result(elapsed)

    # ------------------------------------------------------------------ the result

    def result(self, elapsed: float) -> EntropyResult:
        ledger = self.ledger
        if self.interrupted:
            moments, summary, _ = ledger.snapshot()
            reason = STOP_INTERRUPTED
        else:
            moments, summary = ledger.prefix, ledger.summary
            reason = STOP_TARGET_STDERR if ledger.stop_at is not None else STOP_NUM_SAMPLES
            if moments.count == 0:
                raise EstimationError("no finite samples were left to estimate from")
        estimates = estimates_from_moments(self.scales, moments)
        probe_report = None
        if self.probe is not None:
            probe_report = self.probe.report(self.scales, [item.stderr for item in estimates])
            note = probe_warning(probe_report)
            if note and self.group.is_main:
                self.hooks.notify(note)
        prepared, sizes = self.prepared, self.sizes
        peak = peak_memory(prepared.device)
        over_cap = over_memory_cap(peak["peak_memory_bytes"], self.options.max_memory)
        if over_cap:
            self.log(over_cap)
        settings = {
            **self.options.settings(),
            "batch_size": sizes.initial_batch,
            "tangent_chunk": sizes.initial_chunk,
            "device": str(prepared.device),
            "world_size": self.group.world_size,
        }
        diagnostics = {
            "jacobian_method": prepared.jacobian_method,
            "jacobian_method_note": prepared.method_note,
            "activation_bytes_per_row": prepared.activation_bytes_per_row,
            "planned_peak_bytes": batch_peak_bytes(
                self.spec.dim, prepared.output_dim, prepared.dtype.itemsize, sizes.initial_batch, sizes.initial_chunk,
                prepared.activation_bytes_per_row or 0, prepared.jacobian_method),
            "torchscript": prepared.torchscript,
            "clipped_eigenvalues": ledger.clipped_eigenvalues,
            **summary.diagnostics(self.scales),
            "num_nonfinite": summary.num_nonfinite,
            "latent_block_size": self.stream.block_size,
            "device_name": device_name(prepared.device),
            "decoder_dtype": dtype_name(prepared.dtype),
            "batch_size": sizes.initial_batch,
            "batch_size_final": sizes.batch,
            "batch_size_calibrated": self.calibration.calibrated if self.calibration else None,
            "tangent_chunk": sizes.initial_chunk,
            "tangent_chunk_final": sizes.chunk,
            "oom_retries": sizes.oom_retries,
            **peak,
            "max_memory_exceeded": bool(over_cap),
            "world_size": self.group.world_size,
            "samples_computed": self.computed,
            "resumed_from_samples": self.resumed_from,
            "elapsed_seconds_total": self.elapsed_before + elapsed,
            "setup_seconds": self.setup_seconds,
        }
        return EntropyResult(
            estimates=estimates,
            latent=self.spec,
            output_dim=prepared.output_dim,
            output_shape=prepared.output_shape,
            settings=settings,
            elapsed_seconds=elapsed,
            num_nonfinite=summary.num_nonfinite,
            nonfinite_indices=list(summary.nonfinite_indices),
            diagnostics=diagnostics,
            partial=self.interrupted,
            stop_reason=reason,
            precision_probe=probe_report,
            samples_computed=self.computed,
        )


def run_estimate(decoder: Any, spec: LatentSpec, options: EstimateOptions, hooks: RunHooks) -> EntropyResult:
    """Join the process group (under torchrun), then run with TF32 off and signals handled."""
    wanted = options.device
    if options.distributed is not False and launched_by_torchrun():
        wanted = rank_device(str(options.device), int(os.environ.get("LOCAL_RANK", "0")))
    torch_device = resolve_device(wanted)
    group = join_process_group(torch_device, options.distributed)
    try:
        # batches reuse freed memory instead of page-faulting it in again (allocator.py)
        with strict_float32(), reusing_freed_memory(), \
                graceful_interrupts(options.handle_signals, hooks.notify) as interrupt:
            return EstimateRun(decoder, spec, options, hooks, torch_device, group, interrupt).execute()
    finally:
        group.close()
