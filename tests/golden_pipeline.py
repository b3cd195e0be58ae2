"""A fixed set of CLI runs whose numbers must not move when the code is reorganised.

Each run is a command line of the installed CLI (run as ``python -m genentropy_cli``, so the
harness depends on no module path inside the package). Batch sizes and tangent chunks are
pinned: they decide which samples share a BLAS call, and so the last bits, and planning them is
not what these runs check. ``numbers`` keeps every number of a
JSON document except those that measure the machine (time, memory, batch planning).

The recorded numbers come from the code before the reorganisation (commit 1f29d5e). Record with
``python tests/golden_pipeline.py --record`` (writes ``tests/data/golden_pipeline.json``
with the platform it was recorded on); ``tests/test_golden_pipeline.py`` compares.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "data" / "golden_pipeline.json"
MODELS = ROOT / "sample_models"

COMMON = ["--device", "cpu", "--json", "--quiet"]
RUNS: dict[str, list[str]] = {
    "estimate-mlp-small": ["estimate", "mlp_small.pt", "-n", "1500", "-s", "1e-1", "-s", "1e-4", "--dtype", "float64",
                           "--batch-size", "200"],
    "estimate-half-sphere": ["estimate", "half_sphere.pt", "-n", "1500", "-s", "1e-1", "-s", "1e-4",
                             "--dtype", "float64", "--batch-size", "200"],
    "estimate-vae": ["estimate", "vae.safetensors", "-n", "150", "-s", "1e-2", "-s", "1e-4", "--dtype", "float64",
                     "--batch-size", "64", "--tangent-chunk", "16"],
    "estimate-vae-float32": ["estimate", "vae.safetensors", "-n", "150", "-s", "1e-2", "-s", "1e-4",
                             "--batch-size", "64", "--tangent-chunk", "16"],
    "sweep-half-sphere": ["sweep-scale", "half_sphere.pt", "-n", "2000", "--reference", "half-sphere",
                          "--dtype", "float64", "--batch-size", "256"],
    "compare-three": ["compare", "vae.safetensors", "vae-le-3.safetensors", "wgan.safetensors", "-n", "150",
                      "-s", "1e-2", "-s", "1e-4", "--dtype", "float64", "--batch-size", "64", "--tangent-chunk", "16"],
    "samples-vae": ["samples", "vae.safetensors", "-n", "150", "--lowest", "3", "--highest", "3",
                    "--dtype", "float64", "--batch-size", "64", "--tangent-chunk", "16"],
}
TORCHRUN_RUNS: dict[str, list[str]] = {
    "torchrun-estimate-mlp-small": ["estimate", "mlp_small.pt", "-n", "3000", "-s", "1e-1", "-s", "1e-4",
                                    "--dtype", "float64", "--batch-size", "128"],
}
FLOAT32_RUNS = {"estimate-vae-float32"}
"""Runs whose decoder computes in float32: on another CPU (other BLAS kernels) they may move
by round-off of float32, ~1e-5 relative; the float64 runs by ~1e-12."""

VOLATILE = re.compile(r"^(configuration|settings)$|seconds|memory|bytes|batch_size|tangent_chunk|per_second|world_size|calibrated|oom_retries|"
                      r"samples_computed|resumed_from|version|grid")


def command(name: str) -> list[str]:
    """The argv of run ``name`` (model names resolved in sample_models/)."""
    argv = (RUNS | TORCHRUN_RUNS)[name]
    resolved = [argv[0]] + [str(MODELS / item) if (MODELS / item).is_file() else item for item in argv[1:]]
    prefix = [sys.executable]
    if name in TORCHRUN_RUNS:
        prefix += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return prefix + ["-m", "genentropy_cli", *resolved, *COMMON]


def run(name: str) -> dict:
    environment = dict(os.environ, COLUMNS="120", NO_COLOR="1")
    finished = subprocess.run(command(name), capture_output=True, text=True, env=environment, cwd=ROOT, timeout=600)
    if finished.returncode != 0:
        raise RuntimeError(f"{name} exited {finished.returncode}: {finished.stderr[-2000:]}")
    return json.loads(finished.stdout)


def numbers(document, path: str = "") -> dict[str, float | None]:
    """Every number (and null) of a JSON document by its path, less the machine measures."""
    found: dict[str, float | None] = {}
    if isinstance(document, dict):
        for key, value in document.items():
            if not VOLATILE.search(str(key)):
                found.update(numbers(value, f"{path}.{key}"))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            found.update(numbers(value, f"{path}[{index}]"))
    elif isinstance(document, bool) or isinstance(document, str):
        pass
    elif document is None or isinstance(document, (int, float)):
        found[path] = document
    return found


def platform_fingerprint() -> dict:
    import torch

    return {"torch": torch.__version__, "machine": platform.machine(), "processor": _cpu_model(),
            "threads": torch.get_num_threads()}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def record() -> None:
    runs = {name: numbers(run(name)) for name in (*RUNS, *TORCHRUN_RUNS)}
    GOLDEN.write_text(json.dumps({"platform": platform_fingerprint(), "runs": runs}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}: {sum(len(values) for values in runs.values())} numbers in {len(runs)} runs")


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit("usage: python tests/golden_pipeline.py --record")
    record()
