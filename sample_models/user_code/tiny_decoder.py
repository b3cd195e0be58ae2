"""A user's decoder class, loaded by import path: `import: tiny_decoder:TinyDecoder` in a spec,
with `--code-path sample_models/user_code`. It returns a tuple (image in [-1, 1], features),
as many codebases do; the spec picks the image with `output: {select: 0}` and maps
[-1, 1] to [0, 1] with `output: {range: [-1, 1]}`."""

from __future__ import annotations

import torch
from torch import nn


class TinyDecoder(nn.Module):
    def __init__(self, latent_dim: int = 2, hidden: int = 8, output_dim: int = 6):
        super().__init__()
        self.hidden = nn.Linear(latent_dim, hidden)
        self.out = nn.Linear(hidden, output_dim)

    def forward(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.tanh(self.hidden(latents.flatten(1)))
        return torch.tanh(self.out(features)), features
