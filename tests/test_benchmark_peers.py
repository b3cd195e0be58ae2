"""The benchmark's peers compute the same Jacobians as the engine (so its table compares like with like)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from genentropy_cli.core.jacobian import flat_decoder
from genentropy_cli.core.stacked import stacked_jacobian
from genentropy_cli.models.architectures import MLPDecoder

PEERS = Path(__file__).resolve().parent.parent / "benchmarks" / "peers.py"


def load_peers():
    spec = importlib.util.spec_from_file_location("benchmark_peers", PEERS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_peer_gives_the_engines_jacobian():
    peers = load_peers()
    torch.manual_seed(0)
    decoder = MLPDecoder(5, 12, hidden=(8,), activation="tanh").double().eval()
    flat = flat_decoder(decoder, (5,))
    latents = torch.randn(3, 5, dtype=torch.float64)
    expected = stacked_jacobian(flat, latents, 2)  # (d, B, D)
    for columns in (peers.autograd_loop(flat, latents), peers.vmap_jacrev(flat, latents, chunk_size=5),
                    peers.batch_jacfwd_diagonal(flat, latents)):
        torch.testing.assert_close(columns, expected, rtol=1e-10, atol=1e-12)
    # the slice the slow peers are timed on: the first output rows
    torch.testing.assert_close(peers.autograd_loop(flat, latents, output_rows=7), expected[:, :, :7])
    torch.testing.assert_close(peers.vmap_jacrev(flat, latents, output_rows=7), expected[:, :, :7])


def test_gram_section_times_every_piece_against_the_floor(capsys):
    """``run.py --section gram`` on the MLP, one round: every piece timed, the floor is 1x, and the
    kernels' share is the sum of the J^T J and eigenvalue rows (the figure the MLP's verdict rests on)."""
    import sys

    sys.path.insert(0, str(PEERS.parent))
    try:
        spec = importlib.util.spec_from_file_location("benchmark_run", PEERS.parent / "run.py")
        run = importlib.util.module_from_spec(spec)
        sys.modules["benchmark_run"] = run  # its dataclasses look their module up
        spec.loader.exec_module(run)
        (result,) = run.gram_section(["mlp"], torch.device("cpu"), rounds=1)
    finally:
        sys.path.remove(str(PEERS.parent))
        sys.modules.pop("benchmark_run", None)
    pieces = {row["piece"]: row for row in result["pieces"]}
    assert list(pieces) == ["floor", "Jacobian", "Gram step", "float64 copy + J^T J", "J^T J alone",
                            "eigenvalues alone"]
    assert pieces["floor"]["x_floor"] == 1.0 and all(row["ms_per_sample"] > 0 for row in pieces.values())
    kernels = pieces["J^T J alone"]["x_floor"] + pieces["eigenvalues alone"]["x_floor"]
    assert result["kernels_x_floor"] == pytest.approx(kernels)
    assert "the float64 Gram step: mlp" in capsys.readouterr().out
