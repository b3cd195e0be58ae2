"""Shared pieces of the long-run tests: small decoders, model files, subprocess helpers."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from genentropy_cli.core.latents import LatentStream, make_latent_spec
from genentropy_cli.core.references import LinearDecoder, matrix_with_singular_values
from genentropy_cli.models.loading import save_torchscript

ROOT = Path(__file__).resolve().parent.parent
HARNESS = Path(__file__).resolve().parent / "interrupt_harness.py"


def small_mlp(latent_dim: int = 4, output_dim: int = 12, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(latent_dim, 16), torch.nn.Tanh(), torch.nn.Linear(16, output_dim))


def save_small_mlp(path: Path, latent_dim: int = 4) -> Path:
    save_torchscript(small_mlp(latent_dim), path, latent=make_latent_spec(latent_dim))
    return path


def linear_decoder(singular_values, output_dim: int = 8, seed: int = 0) -> LinearDecoder:
    return LinearDecoder(matrix_with_singular_values(singular_values, output_dim, seed))


def normal_neg_log_density(latents: torch.Tensor) -> np.ndarray:
    """-log N(z; 0, I), written out here rather than taken from the package."""
    dim = latents.shape[1]
    return (0.5 * (latents * latents).sum(dim=1) + 0.5 * dim * math.log(2 * math.pi)).numpy()


def linear_terms(singular_values, scales, num_samples: int, seed: int = 0) -> np.ndarray:
    """Closed-form h_i of a linear decoder with z ~ N(0, I): -log p(z_i) + 1/2 sum log(sigma^2 + s^2)."""
    latents = LatentStream(make_latent_spec(len(singular_values)), seed).range(0, num_samples)
    constant = [0.5 * sum(math.log(sigma**2 + scale**2) for sigma in singular_values) for scale in scales]
    return normal_neg_log_density(latents)[:, None] + np.asarray(constant)[None, :]


def relative_difference(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


def entropies(document_or_result) -> list[float]:
    if isinstance(document_or_result, dict):
        return [item["entropy"] for item in document_or_result["estimates"]]
    return [item.entropy for item in document_or_result.estimates]


def assert_same_estimates(ours, theirs, tolerance: float = 1e-12) -> None:
    for a, b in zip(entropies(ours), entropies(theirs), strict=True):
        assert relative_difference(a, b) <= tolerance, (a, b)


def run_subprocess(*arguments: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a Python command line with this worktree first on the import path."""
    environment = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, *[str(argument) for argument in arguments]], capture_output=True,
                          text=True, timeout=timeout, env=environment, cwd=ROOT)


def run_interrupted(signal_name: str, after_batches: int, *cli_arguments: str) -> subprocess.CompletedProcess:
    """The CLI in a subprocess that receives ``signal_name`` after its ``after_batches``-th batch."""
    return run_subprocess(HARNESS, signal_name, after_batches, "--", *cli_arguments)


def parse_json(text: str) -> dict:
    return json.loads(text)
