"""Build the closed-form sample decoders in sample_models/ (deterministic, seconds).

    python scripts/make_sample_models.py

The trained decoders (VAE, GANs) come from scripts/train_sample_models.py instead.
"""

from __future__ import annotations

from pathlib import Path

import torch

from genentropy_cli.latents import make_latent_spec
from genentropy_cli.loading import save_torchscript
from genentropy_cli.references import HALF_SPHERE_ENTROPY, HalfSphereGaussianCDF, HalfSphereRadial

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_models"


def main() -> None:
    SAMPLE_DIR.mkdir(exist_ok=True)
    save_torchscript(
        HalfSphereRadial(), SAMPLE_DIR / "half_sphere.pt", latent=make_latent_spec(2, "normal"),
        extra={"description": "Table 1 radial map R^2 -> lower half-sphere", "true_entropy": HALF_SPHERE_ENTROPY},
    )
    print(f"wrote {SAMPLE_DIR / 'half_sphere.pt'}")
    save_torchscript(
        HalfSphereGaussianCDF(), SAMPLE_DIR / "half_sphere_cdf.pt", latent=make_latent_spec(2, "normal"),
        extra={"description": "Gaussian-CDF map R^2 -> lower half-sphere (h = -Phi(z1), phi = 2 pi Phi(z2))",
               "true_entropy": HALF_SPHERE_ENTROPY},
    )
    print(f"wrote {SAMPLE_DIR / 'half_sphere_cdf.pt'}")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
