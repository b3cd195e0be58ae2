"""A small generator of our own that follows the calling conventions and the op paths of NVlabs'
StyleGAN2-ADA code (written here from its published description, not copied): the tests run it
where the real code (not a package) cannot be installed.

Conventions: attributes ``z_dim``, ``c_dim``, ``w_dim``, ``num_ws``, ``img_resolution``;
``forward(z, c, truncation_psi=1, truncation_cutoff=None, noise_mode='random')`` with ``c`` an
empty (B, 0) tensor when unconditional, a one-hot (B, c_dim) one otherwise.

Op paths the stacked method meets in the real code: the mapping network normalises the second
moment of z (and of the label embedding), so the output does not change along z itself (the
Jacobian has rank d - 1); w is broadcast to every layer by ``unsqueeze(1).repeat``; truncation
is ``w_avg.lerp(w, psi)`` written into the first ``cutoff`` layers; the constant input is
repeated for the batch; modulated convolutions demodulate per sample and run as ONE grouped
convolution over the batch folded into the channels (transposed and strided for the upsampling
layer); upsampling filters insert zeros by padding a reshaped 6-d tensor, then convolve depthwise
(as the reference ``upfirdn2d`` does); noise is a per-layer constant buffer (``noise_mode='const'``),
fresh normal noise (``'random'``) or none (``'none'``), times a learned strength; bias and leaky
ReLU with gain sqrt(2) (``bias_act``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["StyleGANLike"]

_LRELU_GAIN = math.sqrt(2)


def second_moment_normalised(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) over each row's features."""
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


def biased_lrelu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU (slope 0.2) of x + bias (per channel), times sqrt(2)."""
    shape = [1, -1] + [1] * (x.dim() - 2)
    return F.leaky_relu(x + bias.reshape(shape), 0.2) * _LRELU_GAIN


def low_pass(x: torch.Tensor, taps: torch.Tensor, pad: tuple[int, int], gain: float = 1) -> torch.Tensor:
    """Pad, then a separable low-pass filter (taps outer taps, normalised to ``gain``) as one
    depthwise convolution over x's channels: also over a batch folded into the channels."""
    channels = x.shape[1]
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    kernel = (taps[:, None] * taps[None, :]) * gain / taps.sum() ** 2
    kernel = kernel[None, None].repeat([channels, 1, 1, 1])
    return F.conv2d(x, kernel.to(x.dtype), groups=channels)


def zero_insert_filter(x: torch.Tensor, taps: torch.Tensor, pad: tuple[int, int]) -> torch.Tensor:
    """Upsample x2 by inserting zeros (pad of a 6-d view), then ``low_pass`` with gain 4."""
    batch, channels, height, width = x.shape
    x = F.pad(x.reshape(batch, channels, height, 1, width, 1), [0, 1, 0, 0, 0, 1])
    return low_pass(x.reshape(batch, channels, 2 * height, 2 * width), taps, pad, gain=4)


def modulated_convolution(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool,
                          up_taps: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample weights weight * styles (demodulated to unit norm per output channel), applied as
    one grouped convolution of the batch folded into the channels; with ``up_taps``: a stride-2
    transposed convolution, then ``low_pass`` on the folded batch, as the upsampling layer runs it."""
    batch = x.shape[0]
    out_channels, in_channels, size, _ = weight.shape
    per_sample = weight.unsqueeze(0) * styles.reshape(batch, 1, -1, 1, 1)
    if demodulate:
        per_sample = per_sample * (per_sample.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt().reshape(batch, -1, 1, 1, 1)
    folded = x.reshape(1, -1, *x.shape[2:])
    if up_taps is not None:
        kernel = per_sample.transpose(1, 2).reshape(batch * in_channels, out_channels, size, size)
        out = low_pass(F.conv_transpose2d(folded, kernel, stride=2, groups=batch), up_taps, (1, 1), gain=4)
    else:
        kernel = per_sample.reshape(batch * out_channels, in_channels, size, size)
        out = F.conv2d(folded, kernel, padding=size // 2, groups=batch)
    return out.reshape(batch, -1, *out.shape[2:])


class StyledLayer(nn.Module):
    """Affine style from w, modulated convolution, noise, bias and leaky ReLU."""

    def __init__(self, w_dim: int, in_channels: int, out_channels: int, resolution: int, up: bool):
        super().__init__()
        self.up = up
        self.affine = nn.Linear(w_dim, in_channels)
        nn.init.ones_(self.affine.bias)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.randn(out_channels) * 0.1)
        self.noise_strength = nn.Parameter(torch.tensor(0.3))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.register_buffer("taps", torch.tensor([1.0, 3.0, 3.0, 1.0]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str) -> torch.Tensor:
        x = modulated_convolution(x, self.weight, self.affine(w), demodulate=True,
                                  up_taps=self.taps if self.up else None)
        if noise_mode == "random":
            x = x + torch.randn(x.shape[0], 1, *x.shape[2:], dtype=x.dtype) * self.noise_strength
        elif noise_mode == "const":
            x = x + self.noise_const.to(x.dtype) * self.noise_strength
        return biased_lrelu(x, self.bias)


class StyleGANLike(nn.Module):
    """Mapping network (normalised z, optional label embedding, leaky-ReLU layers, w_avg for
    truncation) and a synthesis network from a learned 4x4 constant up to ``img_resolution``."""

    def __init__(self, z_dim: int = 8, c_dim: int = 0, w_dim: int = 8, img_resolution: int = 8,
                 channels: int = 4, mapping_layers: int = 2, img_channels: int = 3):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.img_resolution = z_dim, c_dim, w_dim, img_resolution
        self.embed = nn.Linear(c_dim, w_dim) if c_dim else None
        self.mapping_layers = nn.ModuleList(
            nn.Linear((z_dim + (w_dim if c_dim else 0)) if index == 0 else w_dim, w_dim) for index in range(mapping_layers))
        self.register_buffer("w_avg", torch.randn(w_dim) * 0.2)
        self.const = nn.Parameter(torch.randn(channels, 4, 4))
        layers, resolution = [StyledLayer(w_dim, channels, channels, 4, up=False)], 4
        while resolution < img_resolution:
            resolution *= 2
            layers += [StyledLayer(w_dim, channels, channels, resolution, up=True),
                       StyledLayer(w_dim, channels, channels, resolution, up=False)]
        self.layers = nn.ModuleList(layers)
        self.to_rgb_affine = nn.Linear(w_dim, channels)
        self.to_rgb = nn.Parameter(torch.randn(img_channels, channels, 1, 1))
        self.register_buffer("taps", torch.tensor([1.0, 3.0, 3.0, 1.0]))
        self.num_ws = len(self.layers) + 1

    def mapping(self, z: torch.Tensor, c: torch.Tensor, truncation_psi: float = 1,
                truncation_cutoff: int | None = None) -> torch.Tensor:
        """(B, num_ws, w_dim): w broadcast to every layer, truncated towards w_avg."""
        x = second_moment_normalised(z)
        if self.c_dim:
            x = torch.cat([x, second_moment_normalised(self.embed(c.to(z.dtype)))], dim=1)
        for layer in self.mapping_layers:
            x = F.leaky_relu(layer(x), 0.2) * _LRELU_GAIN
        ws = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            ws[:, :cutoff] = self.w_avg.to(ws.dtype).lerp(ws[:, :cutoff], truncation_psi)
        return ws

    def forward(self, z: torch.Tensor, c: torch.Tensor, truncation_psi: float = 1,
                truncation_cutoff: int | None = None, noise_mode: str = "random") -> torch.Tensor:
        ws = self.mapping(z, c, truncation_psi, truncation_cutoff)
        x = self.const.to(z.dtype).unsqueeze(0).repeat([z.shape[0], 1, 1, 1])
        image = None
        for index, layer in enumerate(self.layers):
            x = layer(x, ws[:, index], noise_mode)
            if layer.up and image is not None:
                image = zero_insert_filter(image, self.taps, (2, 1))
            if not layer.up:
                rgb = modulated_convolution(x, self.to_rgb, self.to_rgb_affine(ws[:, -1]) / math.sqrt(x.shape[1]),
                                            demodulate=False)
                image = rgb if image is None else image + rgb
        return image
