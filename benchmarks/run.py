"""Benchmarks: the engine's per-sample time against the forward-pass floor, in one run.

    python benchmarks/run.py [--quick] [--device cpu|cuda] [--arch infogan-mnist ...]

The floor is the time of (d + 1) plain batched forward passes (no AD) at the engine's
batch size; a ratio of 1.0 means the Jacobian costs nothing beyond the passes it needs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from genentropy_cli.architectures import DCGANGenerator, InfoGANGenerator, MLPDecoder
from genentropy_cli.engine import (
    compute_sample_terms,
    prepare_decoder,
    resolve_device,
    resolve_work_sizes,
    strict_float32,
)
from genentropy_cli.latents import LatentStream, make_latent_spec

ARCHITECTURES = {
    "mlp": (lambda: MLPDecoder(16, 784), (16,)),
    "infogan-mnist": (lambda: InfoGANGenerator(), (62,)),
    "dcgan-64": (lambda: DCGANGenerator(), (100, 1, 1)),
}


def timed(action, repeats: int) -> float:
    """Median wall time of ``repeats`` calls after one warm-up call."""
    action()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        action()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def engine_vs_floor(name: str, device: torch.device, dtype: torch.dtype, repeats: int) -> dict:
    build, shape = ARCHITECTURES[name]
    torch.manual_seed(0)
    spec = make_latent_spec(shape)
    with strict_float32():
        prepared = prepare_decoder(build(), spec, device, dtype)
        batch, chunk = resolve_work_sizes(spec.dim, prepared.output_dim, dtype, device)
        latents = LatentStream(spec, seed=0).range(0, batch)
        inputs = latents.to(device=device, dtype=dtype).reshape(batch, *shape)

        def floor() -> None:
            with torch.no_grad():
                for _ in range(spec.dim + 1):
                    prepared.function(inputs)

        def engine() -> None:
            compute_sample_terms(prepared, latents, [1e-4], chunk)

        floor_time, engine_time = [], []
        for _ in range(repeats):  # interleaved, so drifts in machine load hit both alike
            floor_time.append(timed(floor, 1))
            engine_time.append(timed(engine, 1))
    floor_per_sample = statistics.median(floor_time) / batch
    engine_per_sample = statistics.median(engine_time) / batch
    return {
        "architecture": name, "dtype": str(dtype).removeprefix("torch."), "batch": batch, "tangent_chunk": chunk,
        "floor_ms": floor_per_sample * 1e3, "engine_ms": engine_per_sample * 1e3,
        "ratio": engine_per_sample / floor_per_sample,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, MLP and infoGAN only")
    parser.add_argument("--arch", nargs="*", default=None, choices=list(ARCHITECTURES))
    args = parser.parse_args()
    device = resolve_device(args.device)
    names = args.arch or (["mlp", "infogan-mnist"] if args.quick else list(ARCHITECTURES))
    repeats = 3 if args.quick else 7
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    print(f"{'architecture':<14} {'dtype':<8} {'batch':>5} {'chunk':>5} {'floor ms/sample':>16} "
          f"{'engine ms/sample':>17} {'engine/floor':>12}")
    for name in names:
        row = engine_vs_floor(name, device, torch.float32, repeats)
        print(f"{row['architecture']:<14} {row['dtype']:<8} {row['batch']:>5} {row['tangent_chunk']:>5} "
              f"{row['floor_ms']:>16.3f} {row['engine_ms']:>17.3f} {row['ratio']:>12.2f}", flush=True)


if __name__ == "__main__":
    main()
