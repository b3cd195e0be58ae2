"""Benchmark: a 4-scale sweep against a 1-scale estimate, measured in the same run.

    python benchmarks/sweep_vs_single.py [--samples 128] [--repeats 3] [--device cpu] [--width 1.0]

Both go through the public API (``estimate_entropy(scales=[1e-4])`` and ``sweep_scale`` with
Table 1's four scales) on the paper's MNIST generator (infoGAN, d = 62, random init, eval
mode), with the same latents and batch size. Runs are interleaved in ABBA order (single,
sweep, sweep, single) so that drifts in machine load hit both alike; the figures reported are
the ratios of the median wall times and of the median CPU times of this process (the steadier
one on a shared machine), end to end and per sample: decoder preparation (copy, probe, choice
of Jacobian method) is a fixed cost per run, timed alone in the same rounds and subtracted. Target (issue 3): sweep / single <= 1.15. One eigen-
decomposition of J^T J per sample serves every scale, so the extra cost is a (B, d, S) log.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from genentropy_cli import estimate_entropy, sweep_scale
from genentropy_cli.core.decoder import prepare_decoder
from genentropy_cli.core.device import resolve_device, strict_float32
from genentropy_cli.core.latents import make_latent_spec
from genentropy_cli.defaults import DEFAULT_SWEEP_SCALES
from genentropy_cli.models.architectures import InfoGANGenerator

TARGET_RATIO = 1.15


def timed(action: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process). On a shared machine the CPU time is the
    steadier measure of cost; both are reported."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    action()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def sweep_vs_single(samples: int = 128, repeats: int = 3, device: str = "cpu", width: float = 1.0,
                    batch_size: int | None = None, verbose: bool = True) -> dict:
    """Median wall and CPU times of decoder preparation alone, a 1-scale estimate and a 4-scale
    sweep; their ratio end to end, and per sample (preparation, a fixed cost, subtracted)."""
    torch_device = resolve_device(device)
    torch.manual_seed(0)
    decoder = InfoGANGenerator(width=width)
    spec = make_latent_spec(62)
    options = dict(n_samples=samples, batch_size=batch_size, device=torch_device, dtype="float32", seed=0)

    def prepare() -> object:
        with strict_float32():
            return prepare_decoder(decoder, spec, torch_device, torch.float32)

    def single() -> object:
        return estimate_entropy(decoder, spec, scales=[DEFAULT_SWEEP_SCALES[-1]], **options)

    def sweep() -> object:
        return sweep_scale(decoder, spec, scales=DEFAULT_SWEEP_SCALES, **options)

    single()  # warm-up (allocator, thread pools, first-call dispatch)
    order = (("prepare", prepare), ("single", single), ("sweep", sweep), ("sweep", sweep), ("single", single),
             ("prepare", prepare))  # ABBA, with the fixed cost measured at both ends
    wall: dict[str, list[float]] = {name: [] for name, _ in order}
    cpu: dict[str, list[float]] = {name: [] for name, _ in order}
    for repeat in range(repeats):
        for name, action in order:
            seconds, cpu_seconds = timed(action, torch_device)
            wall[name].append(seconds)
            cpu[name].append(cpu_seconds)
        if verbose:
            print(f"  round {repeat + 1}: " + "; ".join(
                f"{name} wall {'/'.join(f'{v:.2f}' for v in wall[name][-2:])} s, CPU "
                f"{'/'.join(f'{v:.2f}' for v in cpu[name][-2:])} s" for name in wall), flush=True)
    row: dict = {"architecture": f"infogan-mnist (width {width:g})", "device": str(torch_device),
                 "samples": samples, "repeats": repeats, "threads": torch.get_num_threads(), "wall": wall, "cpu": cpu}
    for kind, times in (("wall", wall), ("cpu", cpu)):
        fixed, one, four = (statistics.median(times[name]) for name in ("prepare", "single", "sweep"))
        row[kind + "_medians"] = {"prepare": fixed, "single": one, "sweep": four}
        row[kind + "_ratio"] = four / one
        row[kind + "_ratio_per_sample"] = (four - fixed) / (one - fixed)
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=128, help="latents per run (default 128)")
    parser.add_argument("--repeats", type=int, default=3, help="ABBA rounds (default 3: 6 runs of each)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=float, default=1.0, help="generator width factor (1.0 = the paper's)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the engine's automatic choice")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; sweep of "
          f"{len(DEFAULT_SWEEP_SCALES)} scales vs 1 scale, {args.samples} samples, infoGAN MNIST generator")
    row = sweep_vs_single(args.samples, args.repeats, args.device, args.width, args.batch_size)
    for kind in ("wall", "cpu"):
        medians = row[kind + "_medians"]
        print(f"{row['architecture']} on {row['device']}, {kind} time (medians): prepare {medians['prepare']:.2f} s, "
              f"single {medians['single']:.2f} s, sweep {medians['sweep']:.2f} s")
        for label, key in (("end to end", "_ratio"), ("per sample (prepare subtracted)", "_ratio_per_sample")):
            verdict = "OK" if row[kind + key] <= TARGET_RATIO else "ABOVE TARGET"
            print(f"  sweep/single {label}: {row[kind + key]:.3f} (target <= {TARGET_RATIO}) {verdict}")
    return row


if __name__ == "__main__":
    main()
