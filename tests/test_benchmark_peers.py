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


def load_run():
    """benchmarks/run.py as a module (its sibling modules importable while it loads)."""
    import sys

    sys.path.insert(0, str(PEERS.parent))
    try:
        spec = importlib.util.spec_from_file_location("benchmark_run", PEERS.parent / "run.py")
        run = importlib.util.module_from_spec(spec)
        sys.modules["benchmark_run"] = run  # its dataclasses look their module up
        spec.loader.exec_module(run)
    finally:
        sys.path.remove(str(PEERS.parent))
    return run


@pytest.fixture
def run_module():
    import sys

    yield load_run()
    sys.modules.pop("benchmark_run", None)


def test_gram_section_times_every_piece_against_the_floor(capsys, run_module):
    """``run.py --section gram`` on the MLP, one round: every piece timed, the floor is 1x, and the
    Gram lower bound is the fastest arrangement of the whole step."""
    (result,) = run_module.gram_section(["mlp"], torch.device("cpu"), rounds=1)
    pieces = {row["piece"]: row for row in result["pieces"]}
    arrangements = [name for name in pieces if name.startswith("Gram: ")]
    assert list(pieces)[:3] == ["floor", "Jacobian", "Gram step"] and len(arrangements) == 4
    assert {"J^T J alone, torch.bmm", "J^T J alone, numpy syrk", "eigenvalues alone, numpy",
            "eigenvalues alone, torch"} <= set(pieces)
    assert pieces["floor"]["x_floor"] == 1.0 and all(row["ms_per_sample"] > 0 for row in pieces.values())
    assert result["gram_bound_x_floor"] == min(pieces[name]["x_floor"] for name in arrangements)
    assert "the float64 Gram step: mlp" in capsys.readouterr().out


def test_the_bound_and_gflops_arithmetic(run_module):
    """engine / (floor + fastest Gram arrangement), GFLOP/s = FLOPs per row x (d + 1) / seconds, and
    the peak from the 2048^3 matmul: on made-up timings, against the figures worked out by hand."""
    alternative = run_module.Alternative

    def timed(name: str, seconds: list[float], samples: int = 10) -> object:
        return alternative(name, lambda: None, samples, wall=seconds, cpu=seconds)

    floor, engine = timed("floor, batch 10", [1.0, 2.0, 3.0]), timed("engine float32", [1.5, 2.5, 3.5])
    grams = [timed("Gram: a", [0.4, 0.5, 0.6]), timed("Gram: b", [0.2, 0.9, 0.9])]
    peak = timed(run_module.PEAK_NAME, [0.1, 0.2, 0.2], samples=1)
    context = {"flops_per_row": 1e9, "latent_dim": 4}
    figures = run_module.gram_bound_figures([floor, engine, *grams, peak], floor, engine, context)
    assert figures["gram_bound"] == "Gram: b"
    best = figures["best"]
    assert best["x_floor_plus_gram"] == pytest.approx(0.15 / (0.1 + 0.02))
    assert best["engine_gflops"] == pytest.approx(5e9 / 0.15 / 1e9)
    assert best["peak_gflops"] == pytest.approx(2 * 2048**3 / 0.1 / 1e9)
    assert figures["median"]["x_floor_plus_gram"] == pytest.approx(0.25 / (0.2 + 0.09))


def test_flops_per_row_of_a_linear_decoder(run_module):
    """A d -> D linear layer: 2 d D FLOPs per row (one multiply and one add per weight)."""
    gram_bound = sys_module("gram_bound")
    assert gram_bound.flops_per_row(torch.nn.Linear(5, 7), (5,), torch.device("cpu")) == 2 * 5 * 7


def test_every_gram_arrangement_gives_the_closed_form(run_module):
    """J_b = Q diag(sigma) with orthonormal float64 Q (exactly float32 after rounding Q first):
    every arrangement the bound is the minimum of computes J^T J's eigenvalues."""
    gram_bound = sys_module("gram_bound")
    generator = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(3, 40, 6, dtype=torch.float64, generator=generator))
    jacobians = (q * torch.logspace(-2, 1, 6, dtype=torch.float64)).float()  # (B, D, d) in float32
    columns = jacobians.permute(2, 0, 1).contiguous()
    exact = torch.linalg.eigvalsh(jacobians.double().transpose(1, 2) @ jacobians.double())
    for name, action, _ in gram_bound.gram_arrangements(columns):
        result = action()
        eigenvalues = result.eigenvalues if hasattr(result, "eigenvalues") else result
        largest = exact.amax(dim=1, keepdim=True)  # round-off is relative to the largest eigenvalue
        torch.testing.assert_close(eigenvalues / largest, exact / largest, rtol=0, atol=1e-13, msg=name)


def sys_module(name: str):
    import sys

    return sys.modules[name]
