"""The closed-form stacked rules of layer norm, group norm, SiLU and GELU (``stacked_rules_norms``,
``stacked_rules_pointwise._DERIVATIVES``) against reverse-mode autograd per sample in float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from genentropy_cli.core.jacobian import flat_decoder, torchscript_safe
from genentropy_cli.core.stacked import UnsupportedOperation, stacked_jacobian
from genentropy_cli.core.stacked_rules import RULES

aten = torch.ops.aten


class Head(nn.Module):
    """Linear from the latent to ``shape`` (per sample), then ``body``, then flattened."""

    def __init__(self, latent_dim: int, shape: tuple[int, ...], body: nn.Module):
        super().__init__()
        self.shape = shape
        self.fc = nn.Linear(latent_dim, int(torch.tensor(shape).prod()))
        self.body = body

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.fc(z).view(-1, *self.shape)).flatten(1)


def _randomized(module: nn.Module) -> nn.Module:
    """Affine parameters away from (1, 0), so a missing weight factor shows."""
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.startswith("body"):
                parameter.uniform_(0.5, 1.5) if name.endswith("weight") else parameter.uniform_(-0.5, 0.5)
    return module


CASES = {
    "layernorm-1d-affine": lambda: Head(5, (3, 7), nn.LayerNorm(7)),
    "layernorm-1d-plain": lambda: Head(5, (3, 7), nn.LayerNorm(7, elementwise_affine=False)),
    "layernorm-2d-affine": lambda: Head(5, (3, 4, 5), nn.LayerNorm((4, 5))),
    "layernorm-2d-plain": lambda: Head(5, (3, 4, 5), nn.LayerNorm((4, 5), elementwise_affine=False)),
    "layernorm-flat": lambda: Head(5, (9,), nn.LayerNorm(9)),
    "groupnorm-1-group": lambda: Head(5, (4, 3, 3), nn.GroupNorm(1, 4)),
    "groupnorm-2-groups": lambda: Head(5, (4, 3, 3), nn.GroupNorm(2, 4)),
    "groupnorm-4-groups": lambda: Head(5, (4, 3, 3), nn.GroupNorm(4, 4)),
    "groupnorm-plain": lambda: Head(5, (6, 2, 5), nn.GroupNorm(3, 6, affine=False)),
    "groupnorm-1d": lambda: Head(5, (6, 5), nn.GroupNorm(2, 6)),
    "silu": lambda: Head(5, (11,), nn.SiLU()),
    "gelu": lambda: Head(5, (11,), nn.GELU()),
    "gelu-tanh": lambda: Head(5, (11,), nn.GELU(approximate="tanh")),
    "norm-stack": lambda: Head(5, (4, 3, 3), nn.Sequential(
        nn.GroupNorm(2, 4), nn.GELU(approximate="tanh"), nn.LayerNorm((3, 3)), nn.SiLU())),
}


def reference(flat_fn, latents: torch.Tensor) -> torch.Tensor:
    """(d, B, D) by reverse mode, one sample at a time."""
    rows = [torch.autograd.functional.jacobian(lambda v: flat_fn(v[None])[0], z) for z in latents]
    return torch.stack(rows).permute(2, 0, 1)


@pytest.mark.parametrize("name", list(CASES))
def test_closed_form_rules_match_reverse_mode(name):
    torch.manual_seed(1)
    module = _randomized(CASES[name]()).double().eval().requires_grad_(False)
    latents = torch.randn(4, 5, dtype=torch.float64) * 2
    expected = reference(flat_decoder(module, (5,)), latents)
    for decoder in (module, torch.jit.script(module)):  # TorchScript passes gelu's approximate positionally
        flat = flat_decoder(decoder, (5,))
        for chunk in (None, 2):
            with torchscript_safe():
                columns, outputs = stacked_jacobian(flat, latents, chunk, with_outputs=True)
            torch.testing.assert_close(columns, expected, rtol=1e-11, atol=1e-13)
            torch.testing.assert_close(outputs, flat(latents), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["layernorm-2d-affine", "groupnorm-2-groups", "gelu-tanh"])
def test_closed_form_rules_keep_float32(name):
    torch.manual_seed(1)
    module = _randomized(CASES[name]()).eval().requires_grad_(False)
    flat = flat_decoder(module, (5,))
    latents = torch.randn(3, 5)
    columns = stacked_jacobian(flat, latents)
    assert columns.dtype == torch.float32
    expected = reference(flat_decoder(module.double(), (5,)), latents.double())
    torch.testing.assert_close(columns.double(), expected, rtol=1e-4, atol=1e-5)


def test_the_norms_have_closed_form_rules_not_jvp():
    from genentropy_cli.core.stacked_rules_norms import group_norm, layer_norm

    assert RULES[aten.native_layer_norm] is layer_norm and RULES[aten.native_group_norm] is group_norm


def test_layer_norm_over_the_batch_dimension_is_refused():
    def decoder(z: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.layer_norm(z.flatten(), (z.numel(),)).view_as(z)

    with pytest.raises(UnsupportedOperation):
        stacked_jacobian(decoder, torch.randn(3, 4, dtype=torch.float64))
