"""The one batch loop every job runs: batches, retries, ranks, checkpoints, stopping.

One iteration: every rank computes its next batch of its ``Workload`` (latent blocks dealt
round-robin, see ``distributed``), an out-of-memory error halving the batch (then the tangent
chunk) and retrying the same samples; the ranks exchange their rows; each rank records them in
its ``RunLedger``, which advances the frontier in global sample order (non-finite check, target
standard error, per-sample rows, the ``on_rows`` hook) and merges whole blocks in block order.
Rank 0 writes the per-sample file and, every ``checkpoint_every`` seconds, the checkpoint. The
loop ends when every sample is used, the target is met, or an interrupt asked to stop (a
partial outcome). ``estimate``, ``sweep-scale``, ``compare`` and ``samples`` all run it, so
each gets every run option.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from genentropy_cli.core.device import resolve_device, strict_float32
from genentropy_cli.core.latents import LatentStream
from genentropy_cli.core.logdet import LogDetTally
from genentropy_cli.core.stats import RunningMoments
from genentropy_cli.defaults import FORESIGHT_SECONDS
from genentropy_cli.errors import EstimationError, GenentropyError, InputError, first_line
from genentropy_cli.run.allocator import reusing_freed_memory
from genentropy_cli.run.batches import SpanBatcher
from genentropy_cli.run.checkpoint import check_same_settings, load_checkpoint, save_checkpoint
from genentropy_cli.run.compute import over_memory_cap
from genentropy_cli.run.distributed import (
    ProcessGroup,
    deal_round_robin,
    join_process_group,
    launched_by_torchrun,
    raise_shared_error,
    rank_device,
    shareable_error,
)
from genentropy_cli.run.files import check_output_targets
from genentropy_cli.run.hooks import LogCallback, RunHooks
from genentropy_cli.run.interrupts import InterruptFlag, graceful_interrupts
from genentropy_cli.run.ledger import RunLedger
from genentropy_cli.run.memory import FirstBatchCalibration, device_name, peak_memory, reset_peak_memory
from genentropy_cli.run.options import EstimateOptions
from genentropy_cli.run.per_sample import PerSampleWriter, output_files
from genentropy_cli.run.planning import run_time_note
from genentropy_cli.run.precision import PrecisionProbe, dtype_name, probe_warning
from genentropy_cli.run.rows import PairedSummary, SampleSummary, never_finite_note
from genentropy_cli.run.stopping import STOP_INTERRUPTED, STOP_NUM_SAMPLES, STOP_TARGET_STDERR
from genentropy_cli.run.trace import trace_first_batch
from genentropy_cli.run.workload import Workload

__all__ = ["BatchLoop", "LoopOutcome", "rank_torch_device", "run_loop", "shared_process_group"]


@dataclass
class BatchMessage:
    """What one rank reports after an iteration (exchanged between ranks)."""

    records: list[tuple[int, int, Any]] = field(default_factory=list)
    clipped: int = 0
    log_det: LogDetTally | None = None
    computed: int = 0
    done: bool = False
    interrupted: bool = False
    error: tuple[int, str] | None = None  # (exit code, message)


@dataclass
class LoopOutcome:
    """What a finished (or interrupted) loop hands to its job: the moments of every statistics
    column, the summary, why it stopped, and the settings and diagnostics of the run."""

    workload: Workload
    moments: RunningMoments
    summary: SampleSummary | PairedSummary
    stop_reason: str
    partial: bool
    elapsed_seconds: float
    samples_computed: int
    probe_reports: list[dict | None]
    settings: dict
    diagnostics: dict


class BatchLoop:
    """One run of a ``Workload`` on one rank (see the module docstring)."""

    def __init__(self, workload: Workload, options: EstimateOptions, hooks: RunHooks, group: ProcessGroup,
                 interrupt: InterruptFlag, setup_started: float):
        self.workload, self.options, self.hooks, self.group = workload, options, hooks, group
        self.scales, self.num_samples = options.scales, options.num_samples
        self.interrupt = interrupt
        self.progress = hooks.progress if group.is_main else None
        self.log = self._ranked(hooks.notify)
        self.ledger = RunLedger(self.num_samples, workload.block_size, self.scales,
                                skip_nonfinite=options.skip_nonfinite, target_stderr=options.target_stderr,
                                min_samples=options.min_samples, rows_template=workload.rows_template())
        self.writer: PerSampleWriter | None = None
        self.computed = 0  # samples computed in this call, all ranks
        self.computed_before = 0  # ... in the runs this one resumes
        self.elapsed_before = 0.0
        self.resumed_from = 0
        self.interrupted = False
        self.checkpoint_failed = False
        self.per_sample_error: str | None = None
        self.calibration: FirstBatchCalibration | None = None
        self.first_batch: tuple[float, int] | None = None  # (when it ended, samples computed by then)
        self.foreseen = False
        self._defining_settings: dict | None = None
        self.setup_seconds = time.perf_counter() - setup_started  # decoder copies, probes, batch planning

    def _ranked(self, log: LogCallback) -> LogCallback:
        if self.group.world_size == 1:
            return log
        return lambda message: log(f"[rank {self.group.rank}] {message}")

    # ------------------------------------------------------------------ settings and resume

    def defining_settings(self) -> dict:
        """The settings a checkpoint must share with the run that resumes it."""
        if self._defining_settings is None:
            settings = {**self.workload.identity(), **self.options.checkpoint_settings(),
                        "latent_block_size": self.workload.block_size}
            self._defining_settings = json.loads(json.dumps(settings))
        return self._defining_settings

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
        try:
            self.ledger.restore(meta["ledger"], arrays)
            probes = meta["probes"] if "probes" in meta else [meta["probe"]]
            for member, state in zip(self.workload.members, probes):
                member.probe = PrecisionProbe.from_state(state) if state else None
            self.computed_before = int(meta["samples_computed"])
            self.elapsed_before = float(meta["elapsed_seconds"])
            offset = meta["per_sample_offset"]
            if self.computed_before < self.ledger.recorded_total() or not 0 <= self.elapsed_before < math.inf \
                    or not (offset is None or (type(offset) is int and offset >= 0)):
                raise ValueError("its run counters (samples computed, time, per-sample offset) do not fit its rows")
        except (KeyError, ValueError, TypeError, IndexError) as error:
            raise InputError(f"checkpoint {path} holds a state no run can have left ({first_line(error)}); "
                             "delete it to start over, or choose another --checkpoint file") from None
        self.resumed_from = self.ledger.recorded_total()
        if self.ledger.stop_at is not None:
            self.resumed_from = self.ledger.stop_at
        return meta["per_sample_offset"]

    def save(self, elapsed: float) -> None:
        if self.options.checkpoint is None or not self.group.is_main:
            return
        ledger_meta, arrays = self.ledger.to_state()
        probes = [member.probe.to_state() if member.probe else None for member in self.workload.members]
        meta = {
            "ledger": ledger_meta,
            **({"probes": probes} if self.workload.paired else {"probe": probes[0]}),
            "per_sample_offset": self.writing_rows(self.writer.sync) if self.writer else None,
            "samples_computed": self.computed_before + self.computed,
            "elapsed_seconds": self.elapsed_before + elapsed,
            "finished": self.ledger.finished,
        }
        try:
            save_checkpoint(self.options.checkpoint, self.defining_settings(), meta, arrays)
        except OSError as error:  # a full disk must not cost the run: it goes on, and says so once
            if not self.checkpoint_failed:
                self.log(f"could not write the checkpoint {self.options.checkpoint} ({error.strerror or error}); "
                         "the run goes on, but cannot be resumed from it")
            self.checkpoint_failed = True

    # ------------------------------------------------------------------ the loop

    def measure_precision(self) -> None:
        """The float64 check of the decoder dtype on the first samples, for every decoder."""
        for member in self.workload.members:
            member.measure_precision(self.options, self.group)

    def next_message(self, batcher: SpanBatcher) -> BatchMessage:
        """Compute this rank's next batch (none once its share is done or a stop was asked)."""
        if self.interrupt.requested or batcher.empty:
            return BatchMessage(done=batcher.empty, interrupted=self.interrupt.requested)
        calibration, workload = self.calibration, self.workload
        segments = batcher.take(calibration.first_size() if calibration.active else workload.batch_size)
        size = workload.block_size
        indices = np.concatenate([np.arange(block * size + start, block * size + stop) for block, start, stop in segments])
        try:
            def compute():
                return workload.compute(segments, indices, self.log, self.hooks.on_batch)

            rows, clipped, log_det = calibration.run(len(indices), compute) if calibration.active else compute()
            if calibration.calibrated is not None:
                workload.limit_batch(calibration.calibrated)
        except GenentropyError as error:
            if self.group.world_size == 1:
                raise
            return BatchMessage(done=True, error=shareable_error(error))
        records, position = [], 0
        for block, start, stop in segments:
            records.append((block, start, rows.slice(position, position + stop - start)))
            position += stop - start
        return BatchMessage(records, clipped, log_det, len(indices), batcher.empty, self.interrupt.requested)

    def apply(self, messages: Sequence[BatchMessage]) -> None:
        for message in messages:
            if message.error is not None:
                raise_shared_error(message.error)
        for message in messages:
            for block, start, rows in message.records:
                self.ledger.record(block, start, rows)
            self.ledger.clipped_eigenvalues += message.clipped
            if message.log_det is not None:
                self.ledger.log_det.add(message.log_det)
            self.computed += message.computed
        for emitted in self.ledger.advance():
            if self.hooks.on_rows is not None:
                self.hooks.on_rows(emitted.first_index, emitted.rows)
            if self.writer is not None:
                latents = None
                if self.options.save_latents:
                    stream = self.writer_stream
                    latents = stream.range(emitted.first_index, emitted.first_index + len(emitted.rows)).numpy()
                self.writing_rows(self.writer.write, emitted.first_index, emitted.rows, latents)

    def writing_rows(self, action: Callable[..., Any], *arguments: Any) -> Any:
        """A per-sample file operation; where it fails (a full disk, ``ulimit -f``) the run goes
        on without the file, says so, and records it (``per_sample_error``: the CLI then exits 1)."""
        try:
            return action(*arguments)
        except OSError as error:
            self.per_sample_error = f"could not write {self.options.per_sample} ({error.strerror or error})"
            self.log(f"{self.per_sample_error}: the per-sample file is incomplete; the estimate goes on")
            writer, self.writer = self.writer, None
            if writer is not None:
                writer.close(discard=True)
            return None

    def loop(self, started: float) -> None:
        self.calibration = FirstBatchCalibration(self.options.max_memory, self.workload.device,
                                                 self.workload.batch_size, fixed=self.options.batch_size is not None)
        spans = deal_round_robin(self.ledger.remaining_spans(), self.group.rank, self.group.world_size)
        batcher = SpanBatcher(spans)
        last_save = time.monotonic()
        loop_started = time.perf_counter()
        trace_first_batch()  # GENENTROPY_TRACE_STARTUP: when the first batch starts (benchmarks/startup.py)
        while not self.ledger.finished:
            messages = self.group.exchange(self.next_message(batcher))
            self.apply(messages)
            if self.progress is not None:
                done = min(self.num_samples, self.resumed_from + self.computed)
                self.progress(done, self.num_samples, self.ledger.running_mean().tolist())
            self.foresee(loop_started)
            if any(message.interrupted for message in messages):
                self.interrupted = not self.ledger.finished
                break
            if all(message.done for message in messages):
                break
            if time.monotonic() - last_save >= self.options.checkpoint_every:
                self.save(time.perf_counter() - started)
                last_save = time.monotonic()

    def foresee(self, loop_started: float) -> None:
        """Once, after the first batches: where the run is expected to take over
        ``LONG_RUN_SECONDS``, a note with the ``-n`` or ``--target-stderr`` that would finish in
        about a minute (``planning.run_time_note``). The rate is measured after the first batch
        (which pays one-off costs: page faults, caches) over ``FORESIGHT_SECONDS`` or as many
        samples again, or on the first batch alone where that took ``FORESIGHT_SECONDS`` or more.
        Rank 0 alone; not with --target-stderr (the run already stops in time)."""
        if self.foreseen or not self.group.is_main or self.options.target_stderr is not None:
            return
        now = time.perf_counter()
        if self.first_batch is None:
            self.first_batch = (now, self.computed)
            if now - loop_started < FORESIGHT_SECONDS:
                return
            since, computed = loop_started, self.computed
        else:
            since, computed = self.first_batch[0], self.computed - self.first_batch[1]
            if computed <= 0 or (now - since < FORESIGHT_SECONDS and computed < self.first_batch[1]):
                return
        self.foreseen = True
        remaining = self.num_samples - min(self.num_samples, self.resumed_from + self.computed)
        moments = self.ledger.snapshot()[0]
        std = float(np.nanmax(moments.std)) if moments.count >= 2 else None
        note = run_time_note(remaining, (now - since) / computed, std)
        if note is not None:
            self.log(note)

    def open_writer(self, offset: int | None) -> None:
        if self.options.per_sample is None or not self.group.is_main:
            return
        first = self.workload.members[0]
        self.writer = PerSampleWriter(self.options.per_sample, self.scales, first.spec.dim, self.options.save_latents,
                                      self.ledger.rows_template.record_fields())
        self.writer_stream = LatentStream(first.spec, first.seed)
        self.writer.open(offset)

    def execute(self) -> LoopOutcome:
        started = time.perf_counter()
        reset_peak_memory(self.workload.device)
        offset = self.resume()
        announce_stage(self.hooks, "float64 precision probe")
        self.measure_precision()
        self.open_writer(offset)
        announce_stage(self.hooks, "first batch")
        try:
            self.loop(started)
            elapsed = time.perf_counter() - started
            self.save(elapsed)
            if self.writer is not None:
                self.writing_rows(self.writer.finish, self.interrupted)
        except KeyboardInterrupt:  # a second Ctrl-C, or no handlers installed: keep what is done
            self.save(time.perf_counter() - started)
            raise
        finally:
            if self.writer is not None:
                self.writer.close()
        return self.outcome(elapsed)

    # ------------------------------------------------------------------ the outcome

    def outcome(self, elapsed: float) -> LoopOutcome:
        ledger = self.ledger
        if self.interrupted:
            moments, summary, _ = ledger.snapshot()
            reason = STOP_INTERRUPTED
        else:
            moments, summary = ledger.prefix, ledger.summary
            reason = STOP_TARGET_STDERR if ledger.stop_at is not None else STOP_NUM_SAMPLES
            if moments.count == 0:
                raise EstimationError("no finite samples were left to estimate from"
                                      + never_finite_note(ledger.summary, self.workload.names))
        stderr = np.full(moments.mean.shape, np.nan) if moments.count < 2 else moments.stderr
        reports = []
        for index, member in enumerate(self.workload.members):
            columns = slice(index * len(self.scales), (index + 1) * len(self.scales))
            report = member.probe.report(self.scales, stderr[columns].tolist()) if member.probe else None
            note = probe_warning(report)
            if note and self.group.is_main:
                self.hooks.notify(f"{member.name}: {note}" if self.workload.paired else note)
            reports.append(report)
        return LoopOutcome(self.workload, moments, summary, reason, self.interrupted, elapsed, self.computed, reports,
                           self.settings(), self.diagnostics(summary, elapsed))

    def settings(self) -> dict:
        """The options, and what the run resolved from them."""
        first = self.workload.members[0]
        return {**self.options.settings(), "batch_size": self.workload_initial_batch(),
                "tangent_chunk": first.sizes.initial_chunk, "device": str(self.workload.device),
                "dtype": dtype_name(first.prepared.dtype), "world_size": self.group.world_size}

    def workload_initial_batch(self) -> int:
        return min(member.sizes.initial_batch for member in self.workload.members)

    def diagnostics(self, summary: SampleSummary | PairedSummary, elapsed: float) -> dict:
        members, device = self.workload.members, self.workload.device
        peak = peak_memory(device)
        over_cap = over_memory_cap(peak["peak_memory_bytes"], self.options.max_memory)
        if over_cap:
            self.log(over_cap)
        decoder = members[0].diagnostics() if not self.workload.paired else {}
        return {
            **decoder,
            "clipped_eigenvalues": self.ledger.clipped_eigenvalues,
            "log_det": {"path": self.workload.log_det_path(), **self.ledger.log_det.to_dict()},
            **summary.diagnostics(self.scales),
            "num_nonfinite": summary.num_nonfinite,
            "latent_block_size": self.workload.block_size,
            "device_name": device_name(device),
            "decoder_dtype": dtype_name(members[0].prepared.dtype),
            "batch_size": self.workload_initial_batch(),
            "batch_size_final": self.workload.batch_size,
            "batch_size_calibrated": self.calibration.calibrated if self.calibration else None,
            "tangent_chunk": members[0].sizes.initial_chunk,
            "tangent_chunk_final": min(member.sizes.chunk for member in members),
            "oom_retries": sum(member.sizes.oom_retries for member in members),
            **peak,
            "max_memory_exceeded": bool(over_cap),
            "world_size": self.group.world_size,
            "samples_computed": self.computed,
            "resumed_from_samples": self.resumed_from,
            "elapsed_seconds_total": self.elapsed_before + elapsed,
            "setup_seconds": self.setup_seconds,
            **({"per_sample_error": self.per_sample_error} if self.per_sample_error else {}),
        }


def announce_stage(hooks: RunHooks, stage: str) -> None:
    """Name the stage a run is in before its first count, where the progress callback takes it
    (``ProgressCallback``'s optional ``stage``: the command line's bar shows it)."""
    stage_callback = getattr(hooks.progress, "stage", None)
    if stage_callback is not None:
        stage_callback(stage)


def rank_torch_device(options: EstimateOptions) -> torch.device:
    """This process's device: ``options.device``, under torchrun the one of its local rank."""
    wanted = options.device
    if options.distributed is not False and launched_by_torchrun():
        wanted = rank_device(str(options.device), int(os.environ.get("LOCAL_RANK", "0")))
    return resolve_device(wanted)


@contextmanager
def shared_process_group(options: EstimateOptions) -> Iterator[ProcessGroup]:
    """One process group for several runs one after another (``track``'s checkpoints): joined
    once (under torchrun), each run joins it as an initialised group, closed after the last."""
    group = join_process_group(rank_torch_device(options), options.distributed)
    try:
        yield group
    finally:
        group.close()


def run_loop(make_workload: Callable[[torch.device], Workload], options: EstimateOptions,
             hooks: RunHooks) -> LoopOutcome:
    """Join the process group (under torchrun), build the workload on this rank's device and
    run it, with TF32 off, freed memory kept for reuse and signals handled. The checkpoint and
    per-sample paths are checked first: no work is done that could not be saved."""
    check_output_targets({"--checkpoint": options.checkpoint, **output_files(options.per_sample)})
    torch_device = rank_torch_device(options)
    group = join_process_group(torch_device, options.distributed)
    try:
        # batches reuse freed memory instead of page-faulting it in again (allocator.py)
        signals = nullcontext(hooks.interrupt) if hooks.interrupt is not None else \
            graceful_interrupts(options.handle_signals, hooks.notify)
        with strict_float32(), reusing_freed_memory(), signals as interrupt:
            started = time.perf_counter()
            announce_stage(hooks, "checking the decoder")  # the Jacobian method's probe, row independence
            workload = make_workload(torch_device)
            return BatchLoop(workload, options, hooks, group, interrupt, started).execute()
    finally:
        group.close()
