"""The reverse-mode reference the stacked method is checked against, and what it saves: a run
on the stacked method never imports torch._dynamo (torch.func's first call does, 1.5 s)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from genentropy_cli.core.decoder import fallback_method, prepare_decoder
from genentropy_cli.core.jacobian import batched_jacobian, flat_decoder, reverse_mode_columns
from genentropy_cli.core.latents import make_latent_spec
from genentropy_cli.core.methods import FALLBACK_ORDER, JACOBIAN_METHODS, jacobian_memory_factor
from genentropy_cli.models.architectures import DCGANGenerator, InfoGANGenerator, MLPDecoder


@pytest.mark.parametrize("make, shape", [
    (lambda: MLPDecoder(5, 30, hidden=(12,), activation="gelu"), (5,)),
    (lambda: InfoGANGenerator(width=0.25), (62,)),
    (lambda: DCGANGenerator(latent_dim=7, ngf=2), (7, 1, 1)),
])
def test_reverse_mode_columns_equal_forward_mode(make, shape):
    torch.manual_seed(0)
    decoder = make().double().eval()
    flat = flat_decoder(decoder, shape)
    latents = torch.randn(3, shape[0], dtype=torch.float64)
    expected = batched_jacobian(flat, latents, 4, max_columns=4)
    torch.testing.assert_close(reverse_mode_columns(flat, latents, 4), expected, rtol=1e-12, atol=1e-14)


def test_reverse_mode_columns_of_a_linear_map_are_its_columns():
    weight = torch.randn(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    columns = reverse_mode_columns(lambda z: z @ weight, torch.randn(4, 3, dtype=torch.float64), 3)
    torch.testing.assert_close(columns, weight.unsqueeze(1).expand(3, 4, 8), rtol=0, atol=0)


def test_a_decoder_that_ignores_part_of_its_input_has_zero_columns():
    columns = reverse_mode_columns(lambda z: torch.cat([z[:, :1], z[:, :1] ** 2], dim=1), torch.ones(2, 2), 2)
    assert torch.equal(columns[1], torch.zeros(2, 2))
    torch.testing.assert_close(columns[0], torch.tensor([[1.0, 2.0], [1.0, 2.0]]))


def test_the_method_table_orders_methods_and_builds_no_autograd_graph():
    assert list(JACOBIAN_METHODS) == ["stacked", "vmap", "replicated"] and FALLBACK_ORDER == ("vmap", "replicated")
    assert [jacobian_memory_factor(name) for name in JACOBIAN_METHODS] == [1, 2, 2]
    with pytest.raises(KeyError, match="one of stacked, vmap, replicated"):
        jacobian_memory_factor("reverse")
    trainable = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Tanh()).double()  # parameters require grad
    latents = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    expected = reverse_mode_columns(trainable, latents, 3)
    for method in JACOBIAN_METHODS.values():
        columns, outputs = method(trainable, latents, 2, with_outputs=True)
        assert not columns.requires_grad and not outputs.requires_grad, method.name
        torch.testing.assert_close(columns, expected, rtol=1e-12, atol=1e-14)


def test_the_fallback_method_is_found_on_first_need():
    prepared = prepare_decoder(MLPDecoder(4, 9, hidden=(6,)).eval(), make_latent_spec(4), torch.device("cpu"),
                               torch.float64)
    assert prepared.jacobian_method == "stacked"
    assert prepared.fallback_method is None
    assert fallback_method(prepared) == "vmap" == prepared.fallback_method


STARTUP = """
import sys, torch
from genentropy_cli import estimate_entropy
from genentropy_cli.models.architectures import InfoGANGenerator
result = estimate_entropy(InfoGANGenerator(width=0.25).eval(), 62, n_samples=8, probe_samples=4, log=lambda m: None,
                          device="cpu")
print(result.diagnostics["jacobian_method"], "torch._dynamo" in sys.modules)
"""


def test_a_stacked_run_does_not_import_torch_dynamo():
    output = subprocess.run([sys.executable, "-c", textwrap.dedent(STARTUP)], capture_output=True, text=True,
                            check=True).stdout.split()
    assert output == ["stacked", "False"]
