"""The closed-form partial derivatives of the generic pointwise rule (``core/stacked_partials.py``)
against reverse-mode autograd per sample in float64, and that they keep ``torch._dynamo`` (which
forward-mode AD of ``a * b`` imports) out of the process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genentropy_cli.core.jacobian import flat_decoder, torchscript_safe
from genentropy_cli.core.stacked import stacked_jacobian
from genentropy_cli.core.stacked_partials import PARTIALS, closed_form_partials

ROOT = Path(__file__).resolve().parents[1]
WEIGHT = torch.linspace(0.5, 1.5, 4, dtype=torch.float64)


def _features(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two (B, 4) tensors computed from the latent, the second positive."""
    a = z @ torch.tensor([[1.0, -0.5, 0.3, 0.8], [0.2, 0.7, -1.1, 0.4]], dtype=z.dtype)
    return a, torch.exp(0.3 * a.flip(1)) + 0.5


CASES = {  # every op of PARTIALS, with stacked, broadcast, masked, scalar and in-place operands
    "mul-both-stacked": lambda z: torch.mul(*_features(z)),
    "mul-square": lambda z: _features(z)[0] * _features(z)[0],
    "mul-broadcast-row": lambda z: _features(z)[0][:, :1] * WEIGHT.to(z.dtype),
    "mul-by-mask": lambda z: _features(z)[0] * (_features(z)[0] > 0),
    "mul-inplace": lambda z: _features(z)[0].mul_(_features(z)[1]),
    "div-both-stacked": lambda z: torch.div(*_features(z)),
    "div-constant-by-stacked": lambda z: WEIGHT.to(z.dtype) / _features(z)[1],
    "div-broadcast": lambda z: _features(z)[0] / _features(z)[1][:, :1],
    "div-inplace": lambda z: _features(z)[0].div_(_features(z)[1]),
    "sqrt": lambda z: torch.sqrt(_features(z)[1]),
    "rsqrt": lambda z: torch.rsqrt(_features(z)[1]),
    "expm1": lambda z: torch.expm1(_features(z)[0]),
    "log": lambda z: torch.log(_features(z)[1]),
    "log1p": lambda z: torch.log1p(_features(z)[1]),
    "sin": lambda z: torch.sin(_features(z)[0]),
    "cos": lambda z: torch.cos(_features(z)[0]),
    "erf": lambda z: torch.erf(_features(z)[0]),
    "reciprocal": lambda z: torch.reciprocal(_features(z)[1]),
}


PRODUCT_RULE_CASES = {"mul-both-stacked", "mul-square"}
"""A product of two stacked operands has a closed-form rule of its own (stacked_rules: d(ab) =
a db + b da, BigGAN's conditional batch norm), which runs before the pointwise partials."""


def _reference(decoder, latents: torch.Tensor) -> torch.Tensor:
    """(d, B, D) by reverse mode, one sample at a time."""
    rows = [torch.autograd.functional.jacobian(lambda v: decoder(v[None])[0], z) for z in latents]
    return torch.stack(rows).permute(2, 0, 1)


def test_every_closed_form_has_a_case():
    assert {name.split("-")[0] for name in CASES} == set(PARTIALS)


@pytest.mark.parametrize("name", list(CASES))
def test_closed_form_partials_match_reverse_mode(name, monkeypatch):
    import genentropy_cli.core.stacked_rules_pointwise as pointwise

    used = []

    def spy(op, *args):
        found = closed_form_partials(op, *args)
        used.extend([op.rstrip("_")] if found is not None else [])
        return found

    monkeypatch.setattr(pointwise, "closed_form_partials", spy)
    decoder = CASES[name]
    latents = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    expected = _reference(decoder, latents)
    for chunk in (None, 1):
        with torchscript_safe():
            columns, outputs = stacked_jacobian(flat_decoder(decoder, (2,)), latents, chunk, with_outputs=True)
        torch.testing.assert_close(columns, expected, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(outputs, decoder(latents), rtol=1e-13, atol=1e-15)
    if name not in PRODUCT_RULE_CASES:
        assert name.split("-")[0] in used  # the case reached the closed form, not jvp


def test_float32_stays_float32():
    latents = torch.randn(3, 2)
    columns = stacked_jacobian(flat_decoder(CASES["div-both-stacked"], (2,)), latents)
    assert columns.dtype == torch.float32
    expected = _reference(CASES["div-both-stacked"], latents.double())
    torch.testing.assert_close(columns.double(), expected, rtol=1e-4, atol=1e-5)


def test_a_rounding_division_is_left_to_jvp():
    """div with a rounding mode is piecewise constant: no closed form here, zero tangents from jvp."""
    x = torch.tensor([1.5, -2.5], dtype=torch.float64)
    assert closed_form_partials("div", [0], [x, x], {"rounding_mode": "floor"}, torch.div) is None
    assert closed_form_partials("atan2", [0], [x, x], {}, torch.atan2) is None


def test_the_half_sphere_decoder_runs_without_torch_dynamo():
    """Its mul and div of two latent-dependent tensors went through forward-mode AD, whose
    Python reference for mul imports torch._dynamo (3-4 s of start-up)."""
    code = ("import sys, torch; from genentropy_cli.core.jacobian import flat_decoder; "
            "from genentropy_cli.core.stacked import stacked_jacobian; "
            "decoder = torch.jit.load('sample_models/half_sphere.pt'); "
            "stacked_jacobian(flat_decoder(decoder, (2,)), torch.randn(4, 2)); "
            "print('torch._dynamo' in sys.modules)")
    finished = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.split() == ["False"]


def test_broadcast_shape_is_torchs_rule():
    """``broadcast_shape`` stands in for ``torch.broadcast_shapes`` (which imports sympy): the same
    shapes, the same refusals."""
    from itertools import product

    from genentropy_cli.core.stacked_operands import broadcast_shape

    shapes = [(), (1,), (3,), (2, 1), (2, 3), (1, 3), (4, 1, 1), (4, 2, 3), (0,), (2, 0)]
    for first, second in product(shapes, repeat=2):
        try:
            expected = tuple(torch.broadcast_shapes(first, second))
        except RuntimeError:
            with pytest.raises(RuntimeError):
                broadcast_shape(first, second)
        else:
            assert broadcast_shape(first, second) == expected, (first, second)
