"""Precision benchmark: the decoder in float32 (TF32 off) vs float64, in one run.

    python benchmarks/precision.py [--device cuda] [-n 4096] [--repeats 3] [--arch infogan-mnist]

For each dtype: samples/s of whole estimates (median of interleaved repeats, precision probe
off so both time the same work), the estimate and its standard error; then the float32 -
float64 difference in float64 standard errors (same seed, so the same latents) next to what
the precision probe reports from the first 128 samples. The default architecture is the
paper's MNIST generator (infoGAN's; randomly initialised weights, seeded: the repository ships
no trained MNIST weights with this script).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from genentropy_cli import estimate_entropy
from genentropy_cli.core.device import resolve_device
from genentropy_cli.models.architectures import DCGANGenerator, InfoGANGenerator, MLPDecoder
from genentropy_cli.run.memory import device_name

ARCHITECTURES = {
    "mlp": (lambda: MLPDecoder(16, 784), (16,)),
    "infogan-mnist": (lambda: InfoGANGenerator(), (62,)),
    "dcgan-64": (lambda: DCGANGenerator(), (100, 1, 1)),
}
DTYPES = ("float64", "float32")


def compare(name: str, device: str, num_samples: int, scales: list[float], repeats: int) -> dict:
    build, shape = ARCHITECTURES[name]
    torch.manual_seed(0)
    decoder = build()
    common = dict(scales=scales, n_samples=num_samples, device=device, seed=0, log=lambda message: None)
    speeds: dict[str, list[float]] = {dtype: [] for dtype in DTYPES}
    results = {}
    for _ in range(repeats):  # interleaved, so drifts in machine load hit both alike
        for dtype in DTYPES:
            result = estimate_entropy(decoder, shape, dtype=dtype, probe_samples=0, **common)
            speeds[dtype].append(result.samples_per_second)
            results[dtype] = result
    probe = estimate_entropy(decoder, shape, dtype="float32", n_samples=min(num_samples, 128),
                             **{key: value for key, value in common.items() if key != "n_samples"}).precision_probe
    reference, low = results["float64"], results["float32"]
    return {
        "architecture": name,
        "speed": {dtype: statistics.median(values) for dtype, values in speeds.items()},
        "rows": [
            {
                "scale": high.scale,
                "float64": high.entropy,
                "float32": single.entropy,
                "stderr": high.stderr,
                "difference_in_stderr": (single.entropy - high.entropy) / high.stderr,
                "probe_difference": difference,
            }
            for high, single, difference in zip(reference.estimates, low.estimates, probe["difference"])
        ],
        "batch_size": reference.settings["batch_size"],
        "tangent_chunk": reference.settings["tangent_chunk"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("-n", "--num-samples", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=float, action="append", default=None)
    parser.add_argument("--arch", default="infogan-mnist", choices=list(ARCHITECTURES))
    args = parser.parse_args()
    device = resolve_device(args.device)
    scales = args.scale or [1e-1, 1e-4]
    row = compare(args.arch, str(device), args.num_samples, scales, args.repeats)
    speed = row["speed"]
    print(f"torch {torch.__version__}, device {device} ({device_name(device)}), {args.arch}, N = {args.num_samples}, "
          f"batch {row['batch_size']}, tangent chunk {row['tangent_chunk']}, TF32 off")
    print(f"samples/s: float64 {speed['float64']:,.1f}, float32 {speed['float32']:,.1f}, "
          f"float32/float64 speed ratio {speed['float32'] / speed['float64']:.2f}")
    print("| s | H float64 | H float32 | stderr | (H32 - H64) / stderr | probe: mean h32 - h64 (first 128) |")
    print("|---|---|---|---|---|---|")
    for item in row["rows"]:
        print(f"| {item['scale']:g} | {item['float64']:.4f} | {item['float32']:.4f} | {item['stderr']:.2g} | "
              f"{item['difference_in_stderr']:+.2e} | {item['probe_difference']:+.2e} |")


if __name__ == "__main__":
    main()
