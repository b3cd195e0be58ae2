"""Shared pieces of the long-run tests: small decoders, model files, subprocess helpers."""

from __future__ import annotations

import json
import math
import os
import re
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


GLOO_UNAVAILABLE = re.compile(r"DistNetworkError|DistStoreError|RendezvousError|Gloo connectFullMesh failed|"
                              r"gloo.*(not available|unsupported)", re.IGNORECASE)
"""torchrun's process group cannot start on this machine at all: the torchrun tests are skipped."""
ADDRESS_IN_USE = re.compile(r"Address already in use|EADDRINUSE", re.IGNORECASE)
"""A port taken between torchrun choosing it and binding it (another test, another program):
transient, so the launch is retried, never skipped."""
LAUNCH_ATTEMPTS = 3


def run_torchrun(*arguments: str, processes: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node N ARGUMENTS`` (``-m genentropy_cli ...`` or a script).
    Each launch binds a fresh free port for its rendezvous, so an "address already in use" is
    retried (another port) up to ``LAUNCH_ATTEMPTS`` times before the result is returned."""
    for _ in range(LAUNCH_ATTEMPTS):
        launched = run_subprocess("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                                  *arguments, timeout=timeout)
        if launched.returncode == 0 or not ADDRESS_IN_USE.search(launched.stderr):
            break
    return launched


def skip_without_gloo(launched: subprocess.CompletedProcess) -> None:
    """Skip the calling test where gloo cannot start here (not for a busy port: that was retried)."""
    found = GLOO_UNAVAILABLE.search(launched.stderr) if launched.returncode != 0 else None
    if found and not ADDRESS_IN_USE.search(launched.stderr):
        import pytest

        pytest.skip(f"the gloo backend cannot start here: {found.group(0)}")


def run_interrupted(signal_name: str, after_batches: int, *cli_arguments: str,
                    timeout: float = 120) -> subprocess.CompletedProcess:
    """The CLI in a subprocess that receives ``signal_name`` after its ``after_batches``-th batch
    (``NAME*2``: twice, hung in between; see interrupt_harness)."""
    return run_subprocess(HARNESS, signal_name, after_batches, "--", *cli_arguments, timeout=timeout)


def parse_json(text: str) -> dict:
    return json.loads(text)


def interrupt_then_resume(monkeypatch, decoder, latent, checkpoint: Path, after_batches: int, first: dict,
                          second: dict, **common):
    """``estimate_entropy`` with ``first``'s settings, stopped by a SIGTERM after its
    ``after_batches``-th batch (a partial result, the checkpoint saved), then run again from the
    checkpoint with ``second``'s settings: (partial, resumed)."""
    from interrupt_harness import signalling_after

    import genentropy_cli.run.compute as runner
    from genentropy_cli import estimate_entropy

    with monkeypatch.context() as patched:
        patched.setattr(runner, "compute_sample_terms",
                        signalling_after(runner.compute_sample_terms, "SIGTERM", after_batches))
        partial = estimate_entropy(decoder, latent, checkpoint=checkpoint, handle_signals=True, **first, **common)
    resumed = estimate_entropy(decoder, latent, checkpoint=checkpoint, **second, **common)
    return partial, resumed
