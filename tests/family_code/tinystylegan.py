"""A small generator of our own that follows the conventions of NVlabs' StyleGAN2-ADA / StyleGAN3
code, for tests (their code is no package and is not copied here):

- attributes ``z_dim``, ``c_dim``, ``w_dim``, ``img_resolution``, ``img_channels``; submodules
  ``mapping`` and ``synthesis``;
- ``forward(z, c, truncation_psi=1, truncation_cutoff=None, noise_mode="random")``; ``c`` is a
  one-hot (B, c_dim) label, or may be None when ``c_dim == 0``;
- the mapping network scales z to unit second moment (so the output never depends on |z|: one
  latent direction always collapses), truncation pulls w toward a stored average;
- the synthesis network modulates and demodulates its convolution weights by w and adds per-pixel
  noise scaled by a learned ``noise_strength``: random noise (``noise_mode="random"``), a stored
  constant (``"const"``) or none (``"none"``);
- checks its inputs with asserts and runs in float32 only, as theirs does;
- training writes a plain ``pickle.dump`` of ``{"G", "D", "G_ema", "augment_pipe", "training_set_kwargs"}``
  (``write_snapshot``).
"""

from __future__ import annotations

import copy
import pickle

import torch
from torch import nn
from torch.nn import functional as F


def unit_second_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class Mapping(nn.Module):
    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.embed = nn.Linear(c_dim, w_dim) if c_dim > 0 else None
        self.fc0 = nn.Linear(z_dim, w_dim)
        self.fc1 = nn.Linear(w_dim * (2 if c_dim > 0 else 1), w_dim)
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, c: torch.Tensor | None, truncation_psi: float = 1.0) -> torch.Tensor:
        assert z.dtype == torch.float32 and z.shape[1] == self.z_dim
        x = F.leaky_relu(self.fc0(unit_second_moment(z)), 0.2)
        if self.c_dim > 0:
            assert c is not None and c.shape[1] == self.c_dim
            x = torch.cat([x, unit_second_moment(self.embed(c.to(torch.float32)))], dim=1)
        w = F.leaky_relu(self.fc1(x), 0.2)
        if truncation_psi != 1:
            w = self.w_avg.lerp(w, truncation_psi)
        return w.unsqueeze(1).repeat([1, self.num_ws, 1])


class StyledConv(nn.Module):
    def __init__(self, w_dim: int, channels_in: int, channels_out: int, resolution: int):
        super().__init__()
        self.affine = nn.Linear(w_dim, channels_in)
        nn.init.ones_(self.affine.bias)
        self.weight = nn.Parameter(torch.randn(channels_out, channels_in, 3, 3))
        self.bias = nn.Parameter(torch.zeros(channels_out))
        self.noise_strength = nn.Parameter(torch.tensor(0.1))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.resolution = resolution

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str) -> torch.Tensor:
        batch = x.shape[0]
        styles = self.affine(w)  # (B, C_in)
        weight = self.weight.unsqueeze(0) * styles.reshape(batch, 1, -1, 1, 1)
        weight = weight * (weight.square().sum(dim=[2, 3, 4], keepdim=True) + 1e-8).rsqrt()  # demodulate
        grouped = weight.reshape(-1, *weight.shape[2:])
        x = F.conv2d(x.reshape(1, -1, *x.shape[2:]), grouped, padding=1, groups=batch)
        x = x.reshape(batch, -1, *x.shape[2:])
        if noise_mode == "random":
            x = x + torch.randn(batch, 1, self.resolution, self.resolution, device=x.device) * self.noise_strength
        elif noise_mode == "const":
            x = x + self.noise_const * self.noise_strength
        return F.leaky_relu(x + self.bias.reshape(1, -1, 1, 1), 0.2)


class Synthesis(nn.Module):
    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channels: int = 8):
        super().__init__()
        self.const = nn.Parameter(torch.randn(channels, img_resolution // 2, img_resolution // 2))
        self.conv0 = StyledConv(w_dim, channels, channels, img_resolution // 2)
        self.conv1 = StyledConv(w_dim, channels, channels, img_resolution)
        self.to_rgb = nn.Conv2d(channels, img_channels, 1)
        self.num_ws = 2

    def forward(self, ws: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        assert ws.shape[1] == self.num_ws
        x = self.const.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
        x = self.conv0(x, ws[:, 0], noise_mode)
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.conv1(x, ws[:, 1], noise_mode)
        return torch.tanh(self.to_rgb(x))


class TinyStyleGenerator(nn.Module):
    def __init__(self, z_dim: int = 8, c_dim: int = 0, w_dim: int = 8, img_resolution: int = 8,
                 img_channels: int = 1):
        super().__init__()
        self.init_kwargs = {"z_dim": z_dim, "c_dim": c_dim, "w_dim": w_dim, "img_resolution": img_resolution,
                            "img_channels": img_channels}  # as NVlabs' persistence records a module's arguments
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = Synthesis(w_dim, img_resolution, img_channels)
        self.mapping = Mapping(z_dim, c_dim, w_dim, self.synthesis.num_ws)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None, truncation_psi: float = 1,
                truncation_cutoff: int | None = None, noise_mode: str = "random") -> torch.Tensor:
        ws = self.mapping(z, c, truncation_psi=truncation_psi)
        return self.synthesis(ws, noise_mode=noise_mode)


class TinyDiscriminator(nn.Module):
    def __init__(self, img_resolution: int = 8, img_channels: int = 1):
        super().__init__()
        self.score = nn.Linear(img_resolution * img_resolution * img_channels, 1)

    def forward(self, img: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        return self.score(img.flatten(1))


def write_snapshot(path, generator: TinyStyleGenerator) -> None:
    """What a StyleGAN training loop writes: a plain pickle of a dict."""
    snapshot = {"training_set_kwargs": {"resolution": generator.img_resolution},
                "G": generator, "D": TinyDiscriminator(generator.img_resolution, generator.img_channels),
                "G_ema": copy.deepcopy(generator).eval().requires_grad_(False), "augment_pipe": None}
    with open(path, "wb") as handle:
        pickle.dump(snapshot, handle)
