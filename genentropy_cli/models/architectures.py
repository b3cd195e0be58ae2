"""Built-in generator architectures that specs can name (and benchmarks and tests use)."""

from __future__ import annotations

import torch
from torch import nn


class MLPDecoder(nn.Module):
    """Fully connected decoder: latent -> hidden layers (activation) -> output (optional squash)."""

    def __init__(self, latent_dim: int = 16, output_dim: int = 784, hidden: tuple[int, ...] | list[int] = (256, 256),
                 activation: str = "relu", output_activation: str = "sigmoid"):
        super().__init__()
        layers: list[nn.Module] = []
        width = latent_dim
        for size in hidden:
            layers += [nn.Linear(width, int(size)), _activation(activation)]
            width = int(size)
        layers.append(nn.Linear(width, output_dim))
        if output_activation != "none":
            layers.append(_activation(output_activation))
        self.net = nn.Sequential(*layers)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.net(latents.flatten(1))


class InfoGANGenerator(nn.Module):
    """The paper's MNIST generator (infoGAN's): FC 1024 -> BN -> ReLU -> FC 7*7*128 -> BN ->
    ReLU -> deconv 4x4/2 to 14x14x64 -> BN -> ReLU -> deconv 4x4/2 to 28x28x1 -> sigmoid.

    ``width`` scales every hidden width (1.0 is the paper's; 0.25 a narrower variant).
    """

    def __init__(self, latent_dim: int = 62, width: float = 1.0, output_channels: int = 1):
        super().__init__()
        fc_width = max(1, int(round(1024 * width)))
        channels = max(1, int(round(128 * width)))
        half_channels = max(1, int(round(64 * width)))
        self.channels = channels
        self.fc = nn.Sequential(
            nn.Linear(latent_dim, fc_width), nn.BatchNorm1d(fc_width), nn.ReLU(),
            nn.Linear(fc_width, 7 * 7 * channels), nn.BatchNorm1d(7 * 7 * channels), nn.ReLU(),
        )
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(channels, half_channels, 4, 2, 1), nn.BatchNorm2d(half_channels), nn.ReLU(),
            nn.ConvTranspose2d(half_channels, output_channels, 4, 2, 1), nn.Sigmoid(),
        )

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        hidden = self.fc(latents.flatten(1))
        return self.deconv(hidden.view(-1, self.channels, 7, 7))


class ConditionalInfoGANGenerator(nn.Module):
    """A class-conditional infoGAN MNIST generator (the conditional GAN/VAE decoders of Lee's
    collection): ``InfoGANGenerator`` on the latent and the class's one-hot code side by side,
    x = G([z; onehot(y)]). ``forward(z, y)`` takes class numbers (int64 (B,)) or one-hot rows
    (float (B, K)): both label formats give the same outputs."""

    def __init__(self, latent_dim: int = 62, num_classes: int = 10, width: float = 1.0, output_channels: int = 1):
        super().__init__()
        self.num_classes = num_classes
        self.generator = InfoGANGenerator(latent_dim + num_classes, width, output_channels)

    def forward(self, latents: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not labels.is_floating_point():
            labels = nn.functional.one_hot(labels, self.num_classes).to(latents.dtype)
        return self.generator(torch.cat([latents.flatten(1), labels.to(latents.dtype)], 1))


class DCGANGenerator(nn.Module):
    """The DCGAN 64x64 generator (Radford et al.; PyTorch example): latent (nz, 1, 1) ->
    4x4x8ngf -> 8x8x4ngf -> 16x16x2ngf -> 32x32xngf -> 64x64xnc, tanh output."""

    def __init__(self, latent_dim: int = 100, ngf: int = 64, nc: int = 3):
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(latent_dim, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh(),
        )

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.dim() == 2:
            latents = latents[:, :, None, None]
        return self.main(latents)


def _activation(name: str) -> nn.Module:
    table = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU, "elu": nn.ELU,
             "leaky_relu": nn.LeakyReLU, "softplus": nn.Softplus}
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(table)}")
    return table[name]()


ARCHITECTURES: dict[str, type[nn.Module]] = {
    "mlp": MLPDecoder,
    "infogan-mnist": InfoGANGenerator,
    "infogan-mnist-conditional": ConditionalInfoGANGenerator,
    "dcgan-64": DCGANGenerator,
}
"""Names a spec's ``architecture`` may use, with the class each builds."""
