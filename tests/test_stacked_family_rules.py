"""The stacked-tangent rules the generator families needed (StyleGAN2-ADA, StyleGAN3, diffusers'
VAE): repeat, constant padding (also of a batch folded into the channels), vector norms, fused
scaled dot-product attention, a stacked value written into a constant made for the whole batch,
and bmm with a constant broadcast over rows carried m at a time. Each against reverse-mode
autograd, one sample at a time, in float64 (small modules of our own)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_stacked_norms import Head  # a linear map of the latent to a shape, then a body
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from genentropy_cli.core.jacobian import flat_decoder
from genentropy_cli.core.stacked import UnsupportedOperation, stacked_jacobian

aten = torch.ops.aten


def per_sample_reverse(flat_fn, latents: torch.Tensor) -> torch.Tensor:
    """(d, B, D): each sample's Jacobian by reverse mode alone (one backward pass per output)."""
    rows = [torch.autograd.functional.jacobian(lambda v: flat_fn(v[None])[0], z) for z in latents]
    return torch.stack(rows).permute(2, 0, 1)


def tiled(x: torch.Tensor) -> torch.Tensor:
    """StyleGAN's broadcast of w to every layer, x.unsqueeze(1).repeat([1, n, 1]), and a repeat with
    a new leading dimension, unbound again."""
    ws = x.unsqueeze(1).repeat([1, 3, 1]) * torch.arange(1.0, 4.0, dtype=x.dtype)[:, None]
    first, second = x.repeat([2, 1, 2]).unbind(0)
    return torch.cat([ws.flatten(1), torch.tanh(first) * second], 1)


def padded(x: torch.Tensor) -> torch.Tensor:
    """Zero insertion for upsampling (pad of a reshaped 6-d tensor), a nonzero border, a crop."""
    batch, channels, height, width = x.shape
    up = F.pad(x.reshape(batch, channels, height, 1, width, 1), [0, 1, 0, 0, 0, 1])
    up = up.reshape(batch, channels, 2 * height, 2 * width)
    border = F.pad(torch.tanh(up), [1, 2, 2, 1], value=0.75)
    return F.pad(border * border, [-1, 0, 0, -2])


def folded_padded(x: torch.Tensor) -> torch.Tensor:
    """Padding of a batch folded into the channels (upfirdn2d inside StyleGAN2's resampling conv)."""
    batch, channels, height, width = x.shape
    folded = x.reshape(1, batch * channels, height, 1, width, 1)
    folded = F.pad(folded, [0, 1, 0, 0, 0, 1], value=0.5).reshape(1, batch * channels, 2 * height, 2 * width)
    return torch.sin(folded.reshape(batch, channels, 2 * height, 2 * width))


def normalised(x: torch.Tensor) -> torch.Tensor:
    """StyleGAN3's rotation, t / ||t[:, :2]||, and norms of other orders over several dims."""
    rotation = x / x[:, :2].norm(dim=1, keepdim=True)
    return torch.cat([
        rotation,
        torch.linalg.vector_norm(x.view(-1, 2, 3), ord=1, dim=(1, 2))[:, None],
        torch.linalg.vector_norm(x.view(-1, 2, 3), ord=3, dim=2),
        torch.linalg.vector_norm(x.view(-1, 2, 3), ord=1.5, dim=-1, keepdim=True).flatten(1),
        torch.linalg.vector_norm(x.view(-1, 2, 3), ord=float("inf"), dim=1),  # through torch.func.jvp
    ], 1)


def rotation_matrices(x: torch.Tensor) -> torch.Tensor:
    """StyleGAN3's transform: eye(3) repeated for the batch, entries written from the latent's
    rotation and translation, then a product of the two (both from the latent) and a constant."""
    t = x[:, :4] / x[:, :2].norm(dim=1, keepdim=True)
    rotate = torch.eye(3, dtype=x.dtype).unsqueeze(0).repeat([x.shape[0], 1, 1])
    rotate[:, 0, 0] = t[:, 0]
    rotate[:, 0, 1] = -t[:, 1]
    rotate[:, 1, 0] = t[:, 1]
    rotate[:, 1, 1] = t[:, 0]
    shift = torch.eye(3, dtype=x.dtype).unsqueeze(0).repeat([x.shape[0], 1, 1])
    shift[:, 0, 2] = -t[:, 2]
    shift[:, 1, 2] = -t[:, 3]
    user = torch.tensor([[1.0, 0.2, 0.1], [0.0, 0.9, -0.3], [0.0, 0.0, 1.0]], dtype=x.dtype)
    return (rotate @ shift @ user.unsqueeze(0)).flatten(1)


def fourier_features(x: torch.Tensor) -> torch.Tensor:
    """StyleGAN3's input: a constant sampling grid (1, H, W, 1, 2) times per-sample frequencies
    (B, 1, 1, 2, C); matmul broadcasts the grid over the batch (bmm with a constant carried in
    blocks of H W rows)."""
    freqs = x.view(-1, 4, 2)
    grid = torch.stack(torch.meshgrid(torch.linspace(-1, 1, 3, dtype=x.dtype), torch.linspace(-1, 1, 5, dtype=x.dtype),
                                      indexing="ij"), -1)[None]
    features = (grid.unsqueeze(3) @ freqs.permute(0, 2, 1).unsqueeze(1).unsqueeze(2)).squeeze(3)
    return torch.sin(features * 2.5)


def conditional_norm(x: torch.Tensor) -> torch.Tensor:
    """BigGAN's conditional batch norm: a feature map times a per-channel scale computed from the
    same latent (a product of two stacked tensors, broadcast), plus an offset."""
    features, scale = x[:, :12].view(-1, 3, 2, 2), x[:, 12:15].view(-1, 3, 1, 1)
    return (torch.tanh(features) - 0.1) * (1 + scale) + scale * scale


class Attention(nn.Module):
    """Self-attention with F.scaled_dot_product_attention (as diffusers' VAE mid-block calls it),
    optionally with a mask, causal, a scale, or a key and value fixed (cross-attention to a constant)."""

    def __init__(self, channels: int = 4, heads: int = 2, mask: str | None = None, causal: bool = False,
                 scale: float | None = None, fixed_context: bool = False):
        super().__init__()
        self.heads, self.causal, self.scale, self.fixed = heads, causal, scale, fixed_context
        self.project = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)
        generator = torch.Generator().manual_seed(3)
        tokens = 5
        self.register_buffer("context", torch.randn(1, heads, tokens, channels // heads, generator=generator))
        if mask == "bool":
            self.register_buffer("mask", torch.rand(tokens, tokens, generator=generator) > 0.3)
            self.mask.fill_diagonal_(True)
        elif mask == "float":
            self.register_buffer("mask", torch.randn(tokens, tokens, generator=generator))
        else:
            self.mask = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, channels = x.shape
        q, k, v = (part.transpose(1, 2) for part in self.project(x).view(batch, tokens, 3, self.heads, -1).unbind(2))
        if self.fixed:
            k = v = self.context.to(x.dtype).expand(batch, -1, -1, -1)  # the same for every row
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, is_causal=self.causal, scale=self.scale)
        return self.out(y.transpose(1, 2).reshape(batch, tokens, channels)) + x


CASES = {
    "repeat": lambda: Head(5, (6,), tiled),
    "constant-pad": lambda: Head(5, (2, 3, 2), padded),
    "constant-pad-folded": lambda: Head(5, (2, 3, 2), folded_padded),
    "vector-norm": lambda: Head(5, (6,), normalised),
    "product-of-stacked": lambda: Head(5, (15,), conditional_norm),
    "written-constant": lambda: Head(5, (4,), rotation_matrices),
    "bmm-broadcast-grid": lambda: Head(5, (8,), fourier_features),
    "attention": lambda: Head(6, (5, 4), Attention()),
    "attention-bool-mask": lambda: Head(6, (5, 4), Attention(mask="bool")),
    "attention-float-mask-scale": lambda: Head(6, (5, 4), Attention(mask="float", scale=0.3)),
    "attention-causal": lambda: Head(6, (5, 4), Attention(causal=True)),
    "attention-fixed-key-value": lambda: Head(6, (5, 4), Attention(fixed_context=True)),
}


class _Seen(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.overloadpacket)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", list(CASES))
def test_family_rules_match_per_sample_reverse_mode(name):
    torch.manual_seed(0)
    module = CASES[name]().double().eval().requires_grad_(False)
    latent_dim = module.fc.in_features
    latents = torch.randn(3, latent_dim, dtype=torch.float64)
    flat = flat_decoder(module, (latent_dim,))
    expected = per_sample_reverse(flat, latents)
    for chunk in (None, 2):
        columns, outputs = stacked_jacobian(flat, latents, chunk, with_outputs=True)
        torch.testing.assert_close(columns, expected, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(outputs, flat(latents), rtol=1e-12, atol=1e-14)


def test_attention_runs_the_fused_kernel_the_rule_covers():
    """On a CPU, F.scaled_dot_product_attention dispatches to the fused flash kernel (the op the
    rule is registered for), in float32 and float64: the case above exercises the rule."""
    module = CASES["attention"]().eval().requires_grad_(False)
    for dtype in (torch.float32, torch.float64):
        seen = _Seen()
        with torch.no_grad(), seen:
            module.to(dtype)(torch.randn(2, 6, dtype=dtype))
        assert aten._scaled_dot_product_flash_attention_for_cpu in seen.ops


def test_attention_rule_keeps_float32_within_round_off():
    torch.manual_seed(0)
    module = CASES["attention-causal"]().eval().requires_grad_(False)
    latents = torch.randn(3, 6)
    exact = per_sample_reverse(flat_decoder(module.double(), (6,)), latents.double())
    columns = stacked_jacobian(flat_decoder(module.float(), (6,)), latents)
    assert float((columns.double() - exact).abs().max()) <= 1e-5 * float(exact.abs().max())


def _repeat_along_batch(z):
    return z.repeat([2, 1])


def _pad_the_batch(z):
    return F.pad(z, [0, 0, 1, 0])


def _norm_over_batch(z):
    return z * torch.linalg.vector_norm(z, dim=0)


def _write_into_a_per_row_constant(z):
    target = torch.arange(z.shape[0], dtype=z.dtype)[:, None].repeat([1, 3])  # rows differ
    target[:, 0] = z[:, 0]
    return target


def _batch_wide_mean(z):
    """StyleGAN3's style normalisation, s * rsqrt(mean(s^2)) over the whole batch."""
    return z * z.square().mean().rsqrt()


@pytest.mark.parametrize("function", [_repeat_along_batch, _pad_the_batch, _norm_over_batch,
                                      _write_into_a_per_row_constant, _batch_wide_mean])
def test_the_new_rules_refuse_what_would_mix_rows(function):
    with pytest.raises(UnsupportedOperation):
        stacked_jacobian(function, torch.randn(3, 4, dtype=torch.float64))
