"""Benchmark suite: the engine against the forward-pass floor and what peers do, in one run.

    python benchmarks/run.py [--quick] [--device cpu|cuda] [--arch NAME ...] [--section NAME ...] [--json FILE]

Sections (all by default; ``--quick``: MLP and infoGAN, fewer rounds, smaller runs):

* ``speed``: per architecture, samples/s and ratios of the floor ((d + 1) plain batched forward
  passes, no AD: at the engine's batch, at the engine's rows per decoder call, and the best over
  several batch sizes, the honest baseline), the engine with its decoder in float32 and in
  float64, the engine's torch.func method with the sizes it used before (vmap over jvp),
  vmap(jacrev), the full-batch jacfwd with diagonal extraction, and the per-sample
  ``torch.autograd.functional.jacobian`` loop (few samples for the slow ones; on large outputs
  the reverse-mode peers are timed on a slice of output rows and scaled, see ``peers``). Every
  Jacobian is followed by the same float64 Gram eigenvalues. In the same rounds: every float64
  Gram step arrangement alone on one engine batch's columns and a 2048 x 2048 float32 matmul,
  for the engine against (best floor + Gram lower bound) and GFLOP/s against the matmul peak
  (``gram_bound.py``), summarised after the architectures' tables. The alternatives are timed in
  interleaved rounds, so drifts in machine load hit all alike; a figure is the fastest round
  (the least disturbed), the median round is printed beside it; ratios are to the best floor.
* ``rows``: the engine's time against its rows per decoder call (what ``CPU_CALL_BYTES`` is from).
* ``gram``: the float64 Gram step in pieces against the floor at the engine's rows per call: every
  arrangement of the whole step (the fastest is the Gram lower bound, ``gram_bound.py``), J^T J
  alone and the eigenvalues alone by torch and by numpy.
* ``latents`` (not by default): large latents (issue 22), an MLP decoder with D = 3,072 (``--output-dim``)
  at d = 16, 64, 256, 512 (``--latent-dims``): the engine as a run computes it (log-det path by
  ``logdet.log_det_path``, eigenvalues on the subsample), the same with the eigenvalues of every
  sample (the path before issue 22), the Cholesky path whatever d (the crossover), the best floor,
  the float64 Gram product alone (one ``torch.bmm`` per slab: the bound) and the engine's Gram step
  (symmetric blocks), and the Cholesky factorisations and the eigenvalues alone on one engine batch;
  engine / floor and engine / (floor + Gram product).
* ``memory``: the peak memory of one engine batch at the planned sizes next to the planner's
  model, and the whole CLI on the DCGAN generator under ``--max-memory`` (CPU: peak RSS of the
  process, VmHWM; CUDA: max_memory_allocated).
* ``scales``: a 4-scale sweep against 1 scale (``benchmarks/sweep_vs_single.py``).
* ``cli``: ``genentropy estimate -n N`` on the MNIST generator in a fresh process (start-up,
  imports, loading, output) against the engine alone (``estimate_entropy`` in this process).
* ``startup``: ``genentropy --help``, ``--version`` and an estimate's time to its first batch
  against ``python -c "import torch"``, in interleaved rounds (``benchmarks/startup.py``).
* ``zoo`` (not by default): every architecture of ``benchmarks/zoo.py`` in every form (module,
  TorchScript script and trace, ``.pt2``): the Jacobian method, why not stacked, ms/sample and the
  ratio to the floor, and the fraction that runs stacked.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import peers  # noqa: E402  (benchmarks/peers.py)
import zoo  # noqa: E402  (benchmarks/zoo.py)
from gram_bound import PEAK_FLOPS, PEAK_SIZE, flops_per_row, gram_arrangements, matmul_peak  # noqa: E402
from startup import startup_section  # noqa: E402  (benchmarks/startup.py)
from sweep_vs_single import timed  # noqa: E402  (benchmarks/sweep_vs_single.py)

from genentropy_cli import estimate_entropy
from genentropy_cli.core.decoder import prepare_decoder
from genentropy_cli.core.device import resolve_device, strict_float32
from genentropy_cli.core.latents import LatentStream, make_latent_spec
from genentropy_cli.core.logdet import (
    batched_eigvalsh,
    cholesky_half_log_det,
    eigenvalue_subsample,
    gram_arrangement,
    gram_eigenvalues,
    gram_matrices,
    log_det_path,
)
from genentropy_cli.core.methods import JACOBIAN_METHODS
from genentropy_cli.core.terms import compute_sample_terms
from genentropy_cli.defaults import CPU_GRAM_SLAB_BYTES, EIGENVALUE_SUBSAMPLE_STRIDE, NUMPY_GRAM_MAX_DIM
from genentropy_cli.models.architectures import DCGANGenerator, InfoGANGenerator, MLPDecoder
from genentropy_cli.models.loading import load_model, save_torchscript
from genentropy_cli.run.allocator import keep_freed_memory
from genentropy_cli.run.compute import plan_for
from genentropy_cli.run.memory import device_name, memory_in_use
from genentropy_cli.run.planning import batch_peak_bytes, format_bytes, rows_per_call

ARCHITECTURES = {
    "mlp": (lambda: MLPDecoder(16, 784), (16,)),
    "infogan-mnist": (lambda: InfoGANGenerator(), (62,)),
    "dcgan-64": (lambda: DCGANGenerator(), (100, 1, 1)),
}
FLOOR_BATCHES = {"mlp": (256, 1024, 4096, 16384), "infogan-mnist": (32, 128, 512, 2048), "dcgan-64": (8, 32, 64, 128)}
PEER_SAMPLES = {  # (loop samples, loop output rows, jacrev samples, jacrev output rows, jacfwd batch)
    "mlp": (8, None, 32, None, 16),
    "infogan-mnist": (2, None, 4, None, 8),
    "dcgan-64": (1, 48, 1, 384, 2),
}
SCALE = [1e-4]
PEAK_NAME = f"matmul {PEAK_SIZE} x {PEAK_SIZE}"


@dataclass
class Alternative:
    """One timed thing: ``action`` computes ``samples`` samples; ``factor`` scales its time to
    whole samples (reverse-mode peers timed on a slice of the output rows)."""

    name: str
    action: Callable[[], object]
    samples: int
    note: str = ""
    factor: float = 1.0
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def per_sample(self, kind: str = "wall") -> tuple[float, float]:
        """(best, median) seconds per sample."""
        times = self.wall if kind == "wall" else self.cpu
        scaled = [value * self.factor / self.samples for value in times]
        return min(scaled), statistics.median(scaled)


def interleave(alternatives: list[Alternative], rounds: int, device: torch.device, label: str) -> None:
    """Time every alternative once per round, the order rotated each round; one warm-up call."""
    for alternative in alternatives:
        alternative.action()
    for number in range(rounds):
        shift = number % len(alternatives)
        for alternative in alternatives[shift:] + alternatives[:shift]:
            wall, cpu = timed(alternative.action, device)
            alternative.wall.append(wall)
            alternative.cpu.append(cpu)
        print(f"  [{label}] round {number + 1}/{rounds} done", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- speed


def build(name: str, device: torch.device, dtype: torch.dtype):
    make, shape = ARCHITECTURES[name]
    torch.manual_seed(0)  # the same random weights in every run
    spec = make_latent_spec(shape)
    with strict_float32():
        return prepare_decoder(make(), spec, device, dtype), spec


def previous_plan(latent_dim: int, output_dim: int) -> tuple[int, int]:
    """The sizes the engine chose before issue 5: chunk min(d, 16), batch 512 / chunk within a
    256 MiB Jacobian budget (engine.auto_batch_size as it was)."""
    chunk = min(latent_dim, 16)
    by_memory = 256 * 2**20 // (latent_dim * output_dim * 12)
    return int(max(1, min(1024, by_memory, 512 // chunk))), chunk


def jacobian_then_gram(method: Callable[[], torch.Tensor]) -> Callable[[], object]:
    return lambda: gram_eigenvalues(method())


def speed_alternatives(name: str, device: torch.device, quick: bool) -> tuple[list[Alternative], dict]:
    prepared, spec = build(name, device, torch.float32)
    prepared64, _ = build(name, device, torch.float64)
    dim, shape = spec.dim, spec.shape
    batch, chunk = plan_for(prepared)
    batch64, chunk64 = plan_for(prepared64)
    old_batch, old_chunk = previous_plan(dim, prepared.output_dim)
    stream = LatentStream(spec, seed=0)
    largest = max(batch, old_batch, *FLOOR_BATCHES[name])
    latents = stream.range(0, largest)

    def on_device(count: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return latents[:count].to(device=device, dtype=dtype)

    engine_rows = rows_per_call(batch, chunk)
    rows_per_batch = batch * (dim + -(-dim // chunk))
    alternatives = []
    for floor_batch in sorted({batch, engine_rows, *FLOOR_BATCHES[name][: 2 if quick else None]}):
        inputs = stream.range(0, floor_batch).to(device=device, dtype=torch.float32).reshape(floor_batch, *shape)
        passes = int(min(dim + 1, max(1, -(-rows_per_batch // floor_batch))))

        def floor(inputs=inputs, passes=passes) -> None:
            with torch.no_grad():
                for _ in range(passes):
                    prepared.function(inputs)

        label = "engine's batch" if floor_batch == batch else "engine's rows/call" if floor_batch == engine_rows else ""
        alternatives.append(Alternative(f"floor, batch {floor_batch}", floor, floor_batch, label,
                                        factor=(dim + 1) / passes))

    vmap_prepared, _ = build(name, device, torch.float32)
    vmap_prepared.jacobian_method = "vmap"
    loop_samples, loop_rows, jacrev_samples, jacrev_rows, jacfwd_batch = PEER_SAMPLES[name]
    flat = prepared.flat()
    output_dim = prepared.output_dim
    alternatives += [
        Alternative("engine float32", lambda: compute_sample_terms(prepared, latents[:batch], SCALE, chunk), batch,
                    f"{prepared.jacobian_method}, batch {batch}, chunk {chunk}"),
        Alternative("engine float32, Jacobian only", lambda: JACOBIAN_METHODS[prepared.jacobian_method](
            flat, on_device(batch), chunk), batch, "the same, without the float64 Gram step"),
        Alternative("engine float64", lambda: compute_sample_terms(prepared64, latents[:batch64], SCALE, chunk64),
                    batch64, f"{prepared64.jacobian_method}, batch {batch64}, chunk {chunk64}"),
        Alternative("engine torch.func (before)",
                    lambda: compute_sample_terms(vmap_prepared, latents[:old_batch], SCALE, old_chunk), old_batch,
                    f"vmap(jvp), batch {old_batch}, chunk {old_chunk}"),
        Alternative("vmap(jacrev)", jacobian_then_gram(lambda: peers.vmap_jacrev(
            flat, on_device(jacrev_samples), jacrev_rows, chunk_size=max(1, 512 // jacrev_samples))),
            jacrev_samples, rows_note(jacrev_samples, jacrev_rows, output_dim),
            factor=output_dim / (jacrev_rows or output_dim)),
        Alternative("full-batch jacfwd, diagonal", jacobian_then_gram(lambda: peers.batch_jacfwd_diagonal(
            flat, on_device(jacfwd_batch))), jacfwd_batch, f"batch {jacfwd_batch} (cost grows with the batch)"),
        Alternative("autograd.functional.jacobian loop", jacobian_then_gram(lambda: peers.autograd_loop(
            flat, on_device(loop_samples), loop_rows)), loop_samples, rows_note(loop_samples, loop_rows, output_dim),
            factor=output_dim / (loop_rows or output_dim)),
    ]
    with strict_float32():  # one engine batch's columns, for the Gram step alone (the bound)
        columns = JACOBIAN_METHODS[prepared.jacobian_method](flat, on_device(batch), chunk)
    alternatives += [Alternative(label, action, batch, note) for label, action, note in gram_arrangements(columns)]
    alternatives.append(Alternative(PEAK_NAME, matmul_peak(device), 1, "float32, ms per call"))
    context = {"architecture": name, "latent_dim": dim, "output_dim": output_dim, "batch": batch, "chunk": chunk,
               "rows_per_call": engine_rows, "method": prepared.jacobian_method,
               "activation_bytes_per_row": prepared.activation_bytes_per_row,
               "flops_per_row": flops_per_row(ARCHITECTURES[name][0](), shape, device)}
    return alternatives, context


def rows_note(samples: int, rows: int | None, output_dim: int) -> str:
    text = f"{samples} sample{'s' if samples > 1 else ''}"
    return text if rows is None else f"{text}, {rows} of {output_dim} output rows, scaled"


def speed_section(names: list[str], device: torch.device, rounds: int, quick: bool) -> list[dict]:
    tables = []
    for name in names:
        alternatives, context = speed_alternatives(name, device, quick)
        with strict_float32():
            interleave(alternatives, rounds, device, name)
        floors = [item for item in alternatives if item.name.startswith("floor")]
        best_floor = min(floors, key=lambda item: item.per_sample()[0])
        best_floor_cpu = min(item.per_sample("cpu")[0] for item in floors)
        engine = next(item for item in alternatives if item.name == "engine float32")
        context["bound"] = gram_bound_figures(alternatives, best_floor, engine, context)
        rows = []
        for item in alternatives:
            if item.name == PEAK_NAME:
                continue
            best, median = item.per_sample()
            rows.append({"method": item.name, "note": item.note, "ms_per_sample": best * 1e3,
                         "median_ms_per_sample": median * 1e3, "samples_per_second": 1 / best,
                         "x_best_floor": best / best_floor.per_sample()[0],
                         "x_best_floor_cpu_time": item.per_sample("cpu")[0] / best_floor_cpu,
                         "engine_speedup": best / engine.per_sample()[0]})
        context.update(rows=rows, best_floor=best_floor.name, rounds=rounds)
        print_speed_table(context)
        tables.append(context)
    print_bound_summary(tables)
    return tables


def gram_bound_figures(alternatives: list[Alternative], best_floor: Alternative, engine: Alternative,
                       context: dict) -> dict:
    """Floor + Gram bound (benchmarks/gram_bound.py), the engine against it, and GFLOP/s against
    the same run's matmul peak: best rounds, and medians."""
    grams = [item for item in alternatives if item.name.startswith("Gram: ")]
    bound = min(grams, key=lambda item: item.per_sample()[0])
    peak = next(item for item in alternatives if item.name == PEAK_NAME)
    figures: dict = {"gram_bound": bound.name}
    for index, kind in enumerate(("best", "median")):
        floor_seconds, bound_seconds = best_floor.per_sample()[index], bound.per_sample()[index]
        engine_seconds, peak_seconds = engine.per_sample()[index], peak.per_sample()[index]
        flops = context["flops_per_row"] * (context["latent_dim"] + 1)
        figures[kind] = {
            "floor_ms": floor_seconds * 1e3, "gram_bound_ms": bound_seconds * 1e3,
            "engine_ms": engine_seconds * 1e3, "x_floor_plus_gram": engine_seconds / (floor_seconds + bound_seconds),
            "x_floor": engine_seconds / floor_seconds, "gflop_per_sample": flops / 1e9,
            "engine_gflops": flops / engine_seconds / 1e9, "floor_gflops": flops / floor_seconds / 1e9,
            "peak_gflops": PEAK_FLOPS / peak_seconds / 1e9}
    return figures


def print_bound_summary(tables: list[dict]) -> None:
    print("\n### engine against (best floor + float64 Gram lower bound), and GFLOP/s against the run's matmul peak\n")
    print("| architecture | engine ms/sample | best floor | Gram bound (fastest arrangement) | engine / (floor + Gram) "
          "| engine / floor | GFLOP/sample | engine GFLOP/s | floor GFLOP/s | matmul peak GFLOP/s | engine % of peak |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for table in tables:
        best, median = table["bound"]["best"], table["bound"]["median"]
        print(f"| {table['architecture']} | {best['engine_ms']:.4g} ({median['engine_ms']:.4g}) | "
              f"{best['floor_ms']:.4g} ({median['floor_ms']:.4g}) | {best['gram_bound_ms']:.4g} "
              f"({median['gram_bound_ms']:.4g}), {table['bound']['gram_bound'].removeprefix('Gram: ')} | "
              f"**{best['x_floor_plus_gram']:.3f}** ({median['x_floor_plus_gram']:.3f}) | {best['x_floor']:.3f} "
              f"({median['x_floor']:.3f}) | {best['gflop_per_sample']:.4g} | {best['engine_gflops']:.1f} "
              f"({median['engine_gflops']:.1f}) | {best['floor_gflops']:.1f} | {best['peak_gflops']:.1f} "
              f"({median['peak_gflops']:.1f}) | {100 * best['engine_gflops'] / best['peak_gflops']:.0f}% |")
    print("\n(best round; median round in brackets; ms per sample. Gram bound: the fastest float64 Gram step "
          "arrangement on one engine batch's precomputed columns, benchmarks/gram_bound.py; target: engine <= 1.15 x "
          "(floor + Gram bound))", flush=True)


def print_speed_table(table: dict) -> None:
    print(f"\n### {table['architecture']} (d = {table['latent_dim']}, D = {table['output_dim']}); engine: "
          f"{table['method']}, batch {table['batch']}, tangent chunk {table['chunk']}, "
          f"{table['rows_per_call']} rows per call\n")
    print("| method | setting | ms/sample (best) | median | samples/s | x best floor | x best floor (CPU time) "
          "| engine faster by |")
    print("|---|---|---|---|---|---|---|---|")
    for row in table["rows"]:
        print(f"| {row['method']} | {row['note']} | {row['ms_per_sample']:.3f} | {row['median_ms_per_sample']:.3f} | "
              f"{row['samples_per_second']:.1f} | {row['x_best_floor']:.2f} | {row['x_best_floor_cpu_time']:.2f} | "
              f"{row['engine_speedup']:.1f}x |")
    print(f"\nbest floor: {table['best_floor']}; {table['rounds']} interleaved rounds", flush=True)


# ----------------------------------------------------------------------------- rows per call


def rows_section(names: list[str], device: torch.device, rounds: int) -> list[dict]:
    """The engine at several (batch, chunk): per-sample time against rows per call."""
    results = []
    for name in names:
        prepared, spec = build(name, device, torch.float32)
        planned = plan_for(prepared)
        dim = spec.dim
        sizes = {(max(1, b), dim) for b in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
                 if rows_per_call(b, dim) * (prepared.activation_bytes_per_row or 1) <= 512 * 2**20}
        sizes |= {(1, k) for k in (8, 16, 32) if k < dim} | {tuple(planned)}
        latents = LatentStream(spec, seed=0).range(0, max(b for b, _ in sizes))
        alternatives = [Alternative(f"batch {b}, chunk {k}", lambda b=b, k=k: compute_sample_terms(
            prepared, latents[:b], SCALE, k), b, str(rows_per_call(b, k))) for b, k in sorted(sizes)]
        with strict_float32():
            interleave(alternatives, rounds, device, f"{name} rows")
        best = min(item.per_sample()[0] for item in alternatives)
        print(f"\n### rows per call: {name} (activation bytes per row {prepared.activation_bytes_per_row}; "
              f"planned batch {planned[0]}, chunk {planned[1]})\n")
        print("| batch, chunk | rows/call | MiB of activations/call | ms/sample (best) | x fastest |")
        print("|---|---|---|---|---|")
        rows = []
        for item in alternatives:
            rows_count = int(item.note)
            mib = rows_count * (prepared.activation_bytes_per_row or 0) / 2**20
            seconds = item.per_sample()[0]
            rows.append({"setting": item.name, "rows": rows_count, "activation_mib": mib, "ms_per_sample": seconds * 1e3})
            print(f"| {item.name} | {rows_count} | {mib:.1f} | {seconds * 1e3:.3f} | {seconds / best:.2f} |")
        results.append({"architecture": name, "rows": rows, "planned": list(planned)})
    return results


# ----------------------------------------------------------------------------- the Gram step


def gram_section(names: list[str], device: torch.device, rounds: int) -> list[dict]:
    """The float64 Gram step in pieces on the engine's batch, against the floor at the engine's
    rows per call: every arrangement of the whole step (benchmarks/gram_bound.py; the fastest is
    the Gram lower bound) and the kernels alone."""
    results = []
    for name in names:
        prepared, spec = build(name, device, torch.float32)
        batch, chunk = plan_for(prepared)
        dim, flat = spec.dim, prepared.flat()
        latents = LatentStream(spec, seed=0).range(0, batch).to(device=device, dtype=torch.float32)
        rows = rows_per_call(batch, chunk)
        floor_inputs = LatentStream(spec, seed=1).range(0, rows).to(device=device, dtype=torch.float32)
        floor_inputs = floor_inputs.reshape(rows, *spec.shape)
        with strict_float32():
            columns = JACOBIAN_METHODS[prepared.jacobian_method](flat, latents, chunk)
            in_float64 = columns.permute(1, 0, 2).to(torch.float64, memory_format=torch.contiguous_format)  # (B, d, D)
            gram = gram_matrices(columns, workspace=prepared.workspace).cpu()
        matrices = in_float64.cpu().numpy()

        def floor() -> None:
            with torch.no_grad():
                prepared.function(floor_inputs)

        alternatives = [  # the floor: one call of the engine's rows, scaled to (d + 1) rows per sample
            Alternative("floor", floor, batch, f"(d + 1) forward passes of the batch, {rows} rows per call",
                        factor=(dim + 1) / (chunk + 1)),
            Alternative("Jacobian", lambda: JACOBIAN_METHODS[prepared.jacobian_method](flat, latents, chunk), batch,
                        f"{prepared.jacobian_method}, chunk {chunk}"),
            Alternative("Gram step", lambda: gram_eigenvalues(columns, workspace=prepared.workspace), batch,
                        f"what the engine runs ({gram_arrangement(columns)} arrangement)"),
            *(Alternative(label, action, batch, note) for label, action, note in gram_arrangements(columns)),
            Alternative("torch: float64 copy + J^T J", lambda: gram_matrices(columns, workspace=prepared.workspace),
                        batch, "gram_matrices"),
            Alternative("J^T J alone, torch.bmm", lambda: torch.bmm(in_float64, in_float64.transpose(1, 2)), batch,
                        "on a float64 (B, d, D) copy made beforehand"),
            Alternative("eigenvalues alone, torch", lambda: batched_eigvalsh(gram, "torch"), batch,
                        f"{batch} x ({dim} x {dim}), split over the threads"),
        ]
        if dim <= NUMPY_GRAM_MAX_DIM:  # above, OpenBLAS threads inside each call (gram_bound.gram_arrangements)
            alternatives += [
                Alternative("J^T J alone, numpy syrk", lambda: np.matmul(matrices, matrices.transpose(0, 2, 1)),
                            batch, "on the same float64 copy, one thread"),
                Alternative("eigenvalues alone, numpy", lambda: batched_eigvalsh(gram, "numpy"), batch, "split alike"),
            ]
        with strict_float32():
            interleave(alternatives, rounds, device, f"{name} gram")
        floor_seconds = alternatives[0].per_sample()[0]
        print(f"\n### the float64 Gram step: {name} (d = {dim}, D = {prepared.output_dim}, batch {batch})\n")
        print("| piece | setting | ms/sample (best) | median | x floor |")
        print("|---|---|---|---|---|")
        table = []
        for item in alternatives:
            seconds, median = item.per_sample()
            table.append({"piece": item.name, "ms_per_sample": seconds * 1e3, "median_ms_per_sample": median * 1e3,
                          "x_floor": seconds / floor_seconds})
            print(f"| {item.name} | {item.note} | {seconds * 1e3:.4f} | {median * 1e3:.4f} | "
                  f"{seconds / floor_seconds:.3f} |")
        bound = min((item for item in alternatives if item.name.startswith("Gram: ")), key=lambda item: item.per_sample()[0])
        print(f"\nGram lower bound: {bound.name} ({bound.per_sample()[0] / floor_seconds:.3f} x floor)", flush=True)
        results.append({"architecture": name, "batch": batch, "chunk": chunk, "pieces": table,
                        "gram_bound": bound.name, "gram_bound_x_floor": bound.per_sample()[0] / floor_seconds})
    return results


# ----------------------------------------------------------------------------- large latents

LATENT_DIMS = (16, 64, 256, 512)
LATENT_OUTPUT_DIM = 3072
LATENT_FLOOR_ROWS = (1024, 4096, 16384)


def plain_gram_product(columns: torch.Tensor) -> torch.Tensor:
    """J^T J in float64 as one product per sample: the float64 copy (b, d, D) of a cache-sized slab
    and one ``torch.bmm``, with no use of its symmetry (the bound the engine is held to)."""
    dim, batch, output_dim = columns.shape
    gram = torch.empty((batch, dim, dim), dtype=torch.float64)
    step = max(1, CPU_GRAM_SLAB_BYTES // (dim * output_dim * 8))
    for first in range(0, batch, step):
        slab = columns[:, first:first + step].permute(1, 0, 2).to(torch.float64, memory_format=torch.contiguous_format)
        torch.bmm(slab, slab.transpose(1, 2), out=gram[first:first + step])
    return gram


def latents_section(dims: list[int], output_dim: int, device: torch.device, rounds: int,
                    hidden: tuple[int, ...] = (256, 256)) -> list[dict]:
    """Per latent size d, an MLP decoder R^d -> R^D (``hidden`` layers): the engine against the best
    floor and against (best floor + the float64 Gram product J^T J alone), in interleaved rounds.
    The engine computes consecutive batches of a multiple of ``EIGENVALUE_SUBSAMPLE_STRIDE``
    samples from sample 0, so that its eigenvalue subsample is the share a run takes."""

    results = []
    for dim in dims:
        torch.manual_seed(0)
        spec = make_latent_spec((dim,))
        with strict_float32():
            prepared = prepare_decoder(MLPDecoder(dim, output_dim, hidden), spec, device, torch.float32)
        batch, chunk = plan_for(prepared)
        stride = EIGENVALUE_SUBSAMPLE_STRIDE
        samples = max(batch, stride) if max(batch, stride) % stride == 0 else (max(batch, stride) // stride + 1) * stride
        latents = LatentStream(spec, seed=0).range(0, samples)
        starts = range(0, samples, batch)

        def engine(every: bool = False, path: str | None = None) -> None:
            for start in starts:
                stop = min(samples, start + batch)
                wanted = None if every else eigenvalue_subsample(range(start, stop))
                compute_sample_terms(prepared, latents[start:stop], SCALE, chunk, wanted, path)

        with strict_float32():
            columns = JACOBIAN_METHODS[prepared.jacobian_method](prepared.flat(), latents[:batch].to(device=device, dtype=torch.float32),
                                                               chunk)
            gram = gram_matrices(columns, workspace=prepared.workspace).cpu()
        alternatives = []
        for rows in sorted({rows_per_call(batch, chunk), *LATENT_FLOOR_ROWS}):
            inputs = LatentStream(spec, seed=1).range(0, rows).to(device=device, dtype=torch.float32)

            def floor(inputs=inputs) -> None:
                with torch.no_grad():
                    prepared.function(inputs)

            alternatives.append(Alternative(f"floor, {rows} rows per call", floor, rows, "(d + 1) forward rows per sample",
                                            factor=dim + 1))
        path = log_det_path(dim, SCALE)
        alternatives += [
            Alternative("engine", engine, samples, f"as a run: {path} path, batch {batch}, chunk {chunk}"),
            Alternative("engine, eigenvalues of every sample", lambda: engine(every=True), samples,
                        "the log-det path before issue 22"),
            Alternative("engine, Cholesky path", lambda: engine(path="cholesky"), samples,
                        "the Cholesky path whatever d (the crossover)"),
            Alternative("Gram product alone", lambda: plain_gram_product(columns), batch,
                        "float64 copy + J^T J by one torch.bmm per slab (the bound)"),
            Alternative("Gram step alone", lambda: gram_matrices(columns, workspace=prepared.workspace), batch,
                        "the engine's: float64 copy + symmetric blocks (gram_matrices)"),
            Alternative("Cholesky alone", lambda: cholesky_half_log_det(gram, SCALE), batch,
                        f"{len(SCALE)} scale(s), by 2 x 2 blocks (cholesky_half_log_det)"),
            Alternative("eigenvalues alone", lambda: batched_eigvalsh(gram), batch, "split over the threads"),
        ]
        with strict_float32():
            interleave(alternatives, rounds, device, f"latents d={dim}")
        floors = [item for item in alternatives if item.name.startswith("floor")]
        best_floor = min(floors, key=lambda item: item.per_sample()[0])
        named = {item.name: item for item in alternatives}
        floor_ms, gram_ms = best_floor.per_sample()[0] * 1e3, named["Gram product alone"].per_sample()[0] * 1e3
        floor_cpu = min(item.per_sample("cpu")[0] for item in floors) * 1e3
        gram_cpu = named["Gram product alone"].per_sample("cpu")[0] * 1e3
        step_ms = named["Gram step alone"].per_sample()[0] * 1e3
        row = {"latent_dim": dim, "output_dim": output_dim, "hidden": list(hidden), "batch": batch, "chunk": chunk, "path": path,
               "best_floor": best_floor.name, "rounds": rounds,
               "ms_per_sample": {item.name: item.per_sample()[0] * 1e3 for item in alternatives},
               "median_ms_per_sample": {item.name: item.per_sample()[1] * 1e3 for item in alternatives},
               "cpu_ms_per_sample": {item.name: item.per_sample("cpu")[0] * 1e3 for item in alternatives}}
        for name in ("engine", "engine, eigenvalues of every sample", "engine, Cholesky path"):
            engine_ms, engine_cpu = row["ms_per_sample"][name], row["cpu_ms_per_sample"][name]
            row[name] = {"x_floor": engine_ms / floor_ms, "x_floor_plus_gram": engine_ms / (floor_ms + gram_ms),
                         "x_floor_plus_gram_step": engine_ms / (floor_ms + step_ms),
                         "x_floor_plus_gram_cpu_time": engine_cpu / (floor_cpu + gram_cpu)}
        results.append(row)
        print(f"\n### large latents: MLP d = {dim}, D = {output_dim}, hidden {list(hidden)}; batch {batch}, chunk {chunk}, {path} path\n")
        print("| piece | setting | ms/sample (best) | median | x best floor | CPU ms/sample (best) |")
        print("|---|---|---|---|---|---|")
        for item in alternatives:
            best, median = item.per_sample()
            print(f"| {item.name} | {item.note} | {best * 1e3:.3f} | {median * 1e3:.3f} | {best * 1e3 / floor_ms:.3f} | "
                  f"{item.per_sample('cpu')[0] * 1e3:.3f} |")
        print(flush=True)
    print("\n### large latents: engine / floor and engine / (floor + float64 Gram product), same run\n")
    print("| d | path | engine / floor | engine / (floor + Gram) | before (eigenvalues of every sample) / floor "
          "| before / (floor + Gram) | Cholesky path whatever d / floor | the same / (floor + Gram) "
          "| engine / (floor + Gram), CPU time | before, CPU time | engine / (floor + the engine's Gram step) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in results:
        now, before = row["engine"], row["engine, eigenvalues of every sample"]
        forced = row["engine, Cholesky path"]
        print(f"| {row['latent_dim']} | {row['path']} | {now['x_floor']:.2f} | **{now['x_floor_plus_gram']:.2f}** | "
              f"{before['x_floor']:.2f} | {before['x_floor_plus_gram']:.2f} | {forced['x_floor']:.2f} | "
              f"{forced['x_floor_plus_gram']:.2f} | {now['x_floor_plus_gram_cpu_time']:.2f} | "
              f"{before['x_floor_plus_gram_cpu_time']:.2f} | {now['x_floor_plus_gram_step']:.2f} |")
    print("\n(best of the interleaved rounds, ms per sample; Gram: the float64 J^T J alone on one engine batch's "
          "columns as one product per sample; the engine's Gram step: the same by symmetric blocks; CPU time: the "
          "process's, all threads)")
    print(flush=True)
    return results


# ----------------------------------------------------------------------------- memory


def peak_resident_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak_resident() -> None:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def measure_one_batch(name: str, device_name_: str) -> dict:
    """Child process: one engine batch at the planned sizes; its peak memory above the baseline."""
    keep_freed_memory()  # as the engine runs
    device = resolve_device(device_name_)
    prepared, spec = build(name, device, torch.float32)
    batch, chunk = plan_for(prepared)
    latents = LatentStream(spec, seed=0).range(0, batch)
    with strict_float32():
        if device.type == "cuda":  # allocations only: after a warm-up batch (kernels, workspaces)
            compute_sample_terms(prepared, latents, SCALE, chunk)
            torch.cuda.reset_peak_memory_stats(device)
            baseline = torch.cuda.memory_allocated(device)
        else:  # resident memory: from before the first batch, which is when the process grows (freed
            # memory is kept for reuse, so a later batch would find its memory already resident)
            reset_peak_resident()
            baseline = memory_in_use(device)
        for _ in range(2):
            compute_sample_terms(prepared, latents, SCALE, chunk)
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_resident_bytes()
    model = batch_peak_bytes(spec.dim, prepared.output_dim, 4, batch, chunk, prepared.activation_bytes_per_row or 0,
                             prepared.jacobian_method)
    return {"architecture": name, "batch": batch, "chunk": chunk, "baseline_bytes": baseline,
            "batch_peak_bytes": peak - baseline, "model_bytes": model}


def run_child(arguments: list[str]) -> tuple[dict | None, float, int, str]:
    """(the JSON it printed, wall seconds, exit status, stderr) of a Python subprocess."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, *arguments], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    stdout, stderr = child.communicate()
    wall = time.perf_counter() - started
    try:
        document = json.loads(stdout) if stdout.strip() else None
    except json.JSONDecodeError:
        document = None
    if child.returncode != 0:
        print(f"  child failed ({child.returncode}): {stderr.strip().splitlines()[-1] if stderr.strip() else ''}", file=sys.stderr)
    return document, wall, child.returncode, stderr


def memory_section(names: list[str], device: torch.device, quick: bool, workdir: Path) -> dict:
    batches = []
    print("\n### peak memory of one engine batch (planned sizes), measured in a fresh process\n")
    print("| architecture | batch, chunk | measured peak above baseline | memory model | baseline (process) |")
    print("|---|---|---|---|---|")
    for name in names:
        document, _, code, _ = run_child([str(Path(__file__)), "--child-batch-peak", name, "--device", str(device)])
        if document is None:
            continue
        batches.append(document)
        print(f"| {name} | {document['batch']}, {document['chunk']} | {format_bytes(document['batch_peak_bytes'])} | "
              f"{format_bytes(document['model_bytes'])} | {format_bytes(document['baseline_bytes'])} |", flush=True)
    runs = []
    if "dcgan-64" in names or not quick:
        runs = max_memory_runs(device, quick, workdir)
    return {"batches": batches, "cli_runs": runs}


def max_memory_runs(device: torch.device, quick: bool, workdir: Path) -> list[dict]:
    """The CLI on the DCGAN generator under --max-memory 2GB (and, for contrast, a large batch
    without it); the child's own peak memory from its JSON diagnostics."""
    torch.manual_seed(0)
    path = save_torchscript(DCGANGenerator().eval(), workdir / "dcgan64.pt", latent=make_latent_spec((100, 1, 1)))
    settings = [("--max-memory 2GB", ["--max-memory", "2GB", "-n", "8"]),
                ("--max-memory 2GB --batch-size 32", ["--max-memory", "2GB", "--batch-size", "32", "-n", "32",
                                                      "--probe-samples", "0"])]
    if not quick:
        settings.append(("--batch-size 32 --tangent-chunk 100 (no cap, for contrast)",
                         ["--batch-size", "32", "--tangent-chunk", "100", "-n", "32", "--probe-samples", "0"]))
    print("\n### the CLI on the DCGAN generator (64x64, latent (100, 1, 1), D = 12288) under --max-memory\n")
    print("| options | batch, chunk | peak memory (whole process) | GB | under 2 GB | wall s |")
    print("|---|---|---|---|---|---|")
    runs = []
    for label, options in settings:
        document, wall, code, _ = run_child(["-m", "genentropy_cli", "estimate", str(path), "--device", str(device),
                                             "--json", "--quiet", *options])
        if document is None:
            continue
        diagnostics = document["diagnostics"]
        peak = diagnostics["peak_memory_bytes"]
        runs.append({"options": label, "batch": diagnostics["batch_size"], "chunk": diagnostics["tangent_chunk"],
                     "peak_bytes": peak, "peak_kind": diagnostics["peak_memory_kind"], "wall_seconds": wall,
                     "planned_peak_bytes": diagnostics.get("planned_peak_bytes")})
        print(f"| {label} | {diagnostics['batch_size']}, {diagnostics['tangent_chunk']} | {format_bytes(peak)} "
              f"({diagnostics['peak_memory_kind']}) | {peak / 1e9:.2f} | {'yes' if peak < 2 * 10**9 else 'no'} | "
              f"{wall:.0f} |", flush=True)
    return runs


# ----------------------------------------------------------------------------- scales and CLI


def scales_section(device: torch.device, quick: bool) -> dict:
    from sweep_vs_single import sweep_vs_single  # benchmarks/sweep_vs_single.py (issue 3)

    row = sweep_vs_single(samples=64 if quick else 256, repeats=2 if quick else 3, device=str(device), verbose=False)
    print("\n### 4-scale sweep vs 1 scale (infoGAN MNIST generator, benchmarks/sweep_vs_single.py)\n")
    print("| time | sweep / single, end to end | per sample (preparation subtracted) |")
    print("|---|---|---|")
    for kind in ("wall", "cpu"):
        print(f"| {kind} | {row[kind + '_ratio']:.3f} | {row[kind + '_ratio_per_sample']:.3f} |", flush=True)
    return row


def cli_section(device: torch.device, quick: bool, workdir: Path) -> dict:
    """CLI end to end against the engine alone, ABBA order, same model file and settings."""
    samples = 200 if quick else 2000
    torch.manual_seed(0)
    path = save_torchscript(InfoGANGenerator().eval(), workdir / "infogan.pt", latent=make_latent_spec(62))
    loaded = load_model(path)
    spec = make_latent_spec(62)

    def engine() -> float:
        started = time.perf_counter()
        estimate_entropy(loaded.decoder, spec, n_samples=samples, device=device, log=lambda message: None)
        return time.perf_counter() - started

    inside: list[float] = []  # CLI wall less its sampling loop (its JSON): start-up, loading, setup, output
    own: list[float] = []  # ... less the setup too, which the engine alone pays as well: what the CLI adds

    def cli() -> float:
        document, wall, code, _ = run_child(["-m", "genentropy_cli", "estimate", str(path), "-n", str(samples),
                                             "--device", str(device), "--json", "--quiet"])
        if code != 0 or document is None:
            return float("nan")
        diagnostics = document["diagnostics"]
        inside.append(wall - diagnostics["elapsed_seconds_total"])
        own.append(inside[-1] - diagnostics["setup_seconds"])
        return wall

    times: dict[str, list[float]] = {"engine": [], "cli": []}
    for label, action in (("engine", engine), ("cli", cli), ("cli", cli), ("engine", engine)):
        times[label].append(action())
        print(f"  [cli] {label}: {times[label][-1]:.1f} s", file=sys.stderr, flush=True)
    engine_time, cli_time = statistics.median(times["engine"]), statistics.median(times["cli"])
    overhead = (cli_time - engine_time) / engine_time
    start_up = statistics.median(inside) if inside else float("nan")
    added = [seconds / (wall - seconds) for seconds, wall in zip(own, times["cli"])]
    print(f"\n### CLI end to end vs the engine alone: `genentropy estimate infogan.pt -n {samples}`\n")
    print("| engine alone (estimate_entropy) s | CLI (fresh process) s | overhead | CLI wall less its sampling loop s "
          "(start-up, loading, decoder setup, output) | the same less the setup s (what the CLI adds) "
          "| that / the same CLI run's engine part | target |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {engine_time:.1f} | {cli_time:.1f} | {100 * overhead:.1f}% | {start_up:.2f} | "
          f"{', '.join(f'{seconds:.2f}' for seconds in own)} | {', '.join(f'{100 * ratio:.1f}%' for ratio in added)} "
          "| < 10% |", flush=True)
    print("\n(medians of 2 runs each, ABBA order; the first two columns differ by the machine's drift between runs "
          "as well. The last three are measured within each CLI run, so drift cannot enter: the CLI adds its "
          "start-up, loading and output to what `estimate_entropy` does (setup_seconds + the sampling loop); "
          "the last column divides it by that engine part of the same run)", flush=True)
    return {"samples": samples, "engine_seconds": times["engine"], "cli_seconds": times["cli"], "overhead": overhead,
            "cli_start_up_seconds": inside, "cli_added_seconds": own, "cli_added_fraction": added}


# ----------------------------------------------------------------------------- main

SECTIONS = ("speed", "memory", "scales", "cli", "startup", "rows", "gram", "zoo", "latents")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="MLP and infoGAN, fewer rounds, smaller runs")
    parser.add_argument("--arch", nargs="*", default=None, choices=list(ARCHITECTURES))
    parser.add_argument("--section", nargs="*", default=None, choices=SECTIONS,
                        help="default: all but rows, gram, zoo and latents (rows: the rows-per-call sweep, long; "
                             "gram: the Gram step in pieces; zoo: every architecture and file format; "
                             "latents: the MLP at large d, --latent-dims)")
    parser.add_argument("--latent-dims", type=int, nargs="+", default=list(LATENT_DIMS),
                        help=f"latents section: the MLP's latent sizes (default {' '.join(map(str, LATENT_DIMS))})")
    parser.add_argument("--output-dim", type=int, default=LATENT_OUTPUT_DIM,
                        help=f"latents section: the MLP's output size (default {LATENT_OUTPUT_DIM})")
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256],
                        help="latents section: the MLP's hidden widths (default 256 256)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; --quick 3)")
    parser.add_argument("--json", default=None, help="also write every figure to this JSON file")
    parser.add_argument("--child-batch-peak", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_batch_peak:
        print(json.dumps(measure_one_batch(args.child_batch_peak, args.device)))
        return {}
    device = resolve_device(args.device)
    # the engine keeps freed memory for reuse (allocator.py); set it before anything is timed, so
    # that the floor and the peers run under the same allocator as the engine
    kept = keep_freed_memory()
    names = args.arch or (["mlp", "infogan-mnist"] if args.quick else list(ARCHITECTURES))
    sections = args.section or [section for section in SECTIONS if section not in ("rows", "gram", "zoo", "latents")]
    rounds = args.rounds or (3 if args.quick else 5)
    header = {"torch": torch.__version__, "device": device_name(device), "threads": torch.get_num_threads(),
              "date": time.strftime("%Y-%m-%d"), "quick": args.quick, "keep_freed_memory": kept}
    print(f"torch {header['torch']}, {header['device']}, {header['threads']} threads, {header['date']}; "
          f"freed memory kept for reuse (allocator.py): {'yes' if kept else 'no'}")
    results: dict = {"header": header}
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        if "speed" in sections:
            results["speed"] = speed_section(names, device, rounds, args.quick)
        if "rows" in sections:
            results["rows"] = rows_section(names, device, rounds)
        if "gram" in sections:
            results["gram"] = gram_section(names, device, rounds)
        if "memory" in sections:
            results["memory"] = memory_section(names, device, args.quick, workdir)
        if "scales" in sections:
            results["scales"] = scales_section(device, args.quick)
        if "cli" in sections:
            results["cli"] = cli_section(device, args.quick, workdir)
        if "startup" in sections:
            results["startup"] = startup_section(rounds, args.quick)
        if "zoo" in sections:
            results["zoo"] = zoo.zoo_section(device, min(rounds, 3))
        if "latents" in sections:
            results["latents"] = latents_section(args.latent_dims, args.output_dim, device, rounds, tuple(args.hidden))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return results


if __name__ == "__main__":
    main()
