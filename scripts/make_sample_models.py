"""Build the small sample decoders in sample_models/ (deterministic, seconds).

    python scripts/make_sample_models.py

- half_sphere.pt, half_sphere_cdf.pt: closed-form half-sphere decoders (TorchScript).
- mlp_small.*: ONE small MLP decoder saved in every format genentropy loads (TorchScript,
  torch.export, safetensors with embedded spec, safetensors + sidecar YAML, state dict +
  sidecar YAML, and a whole pickled module that is refused without --trust-pickle).
  All give the same estimate.
- tiny_decoder.*: user code loaded by import path (--code-path sample_models/user_code).
- dcgan_tiny.safetensors: the DCGAN 64x64 generator (latent 100x1x1, tanh output) with ngf=2.

The trained decoders (VAE, GANs) come from scripts/train_sample_models.py instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from genentropy_cli.core.latents import make_latent_spec
from genentropy_cli.core.references import HALF_SPHERE_ENTROPY, HalfSphereGaussianCDF, HalfSphereRadial
from genentropy_cli.models.exported import save_exported
from genentropy_cli.models.loading import save_torchscript
from genentropy_cli.models.specs import build_from_spec, save_safetensors, save_weights, write_spec_file

SAMPLE_DIR = ROOT / "sample_models"

MLP_SMALL_SPEC = {
    "architecture": "mlp",
    "kwargs": {"latent_dim": 3, "output_dim": 8, "hidden": [16], "activation": "tanh", "output_activation": "sigmoid"},
    "latent": {"shape": [3], "distribution": "uniform"},
}
TINY_DECODER_SPEC = {
    "import": "tiny_decoder:TinyDecoder",
    "kwargs": {"latent_dim": 2, "hidden": 8, "output_dim": 6},
    "latent": {"shape": [2], "distribution": "normal"},
    "output": {"select": 0, "range": [-1, 1]},
}
DCGAN_TINY_SPEC = {
    "architecture": "dcgan-64",
    "kwargs": {"latent_dim": 100, "ngf": 2, "nc": 3},
    "latent": {"shape": [100, 1, 1], "distribution": "normal"},
}


def write_mlp_small(directory: Path) -> list[Path]:
    """The same MLP decoder in every format."""
    torch.manual_seed(0)
    module = build_from_spec(MLP_SMALL_SPEC).eval()
    latent = make_latent_spec(MLP_SMALL_SPEC["latent"]["shape"], MLP_SMALL_SPEC["latent"]["distribution"])
    pickled = directory / "mlp_small_pickled.pth"
    torch.save(module, pickled)  # its sidecar gives the latent, and the kwargs convert needs
    write_spec_file({key: MLP_SMALL_SPEC[key] for key in ("kwargs", "latent")}, pickled.with_suffix(".yaml"))
    recorded = {"spec": {key: MLP_SMALL_SPEC[key] for key in ("architecture", "kwargs")}}  # lets convert rebuild it
    return [
        save_torchscript(module, directory / "mlp_small.pt", latent=latent, extra=recorded),
        save_exported(module, directory / "mlp_small.pt2", latent=latent, extra=recorded),
        save_safetensors(module, directory / "mlp_small.safetensors", MLP_SMALL_SPEC),
        save_weights(module, directory / "mlp_small_weights.safetensors", MLP_SMALL_SPEC),
        save_weights(module, directory / "mlp_small_state.pth", MLP_SMALL_SPEC),
        pickled,
    ]


def write_tiny_decoder(directory: Path) -> list[Path]:
    torch.manual_seed(1)
    module = build_from_spec(TINY_DECODER_SPEC, code_path=[directory / "user_code"]).eval()
    return [save_weights(module, directory / "tiny_decoder.safetensors", TINY_DECODER_SPEC)]


def write_dcgan_tiny(directory: Path) -> list[Path]:
    torch.manual_seed(2)
    module = build_from_spec(DCGAN_TINY_SPEC).eval()
    return [save_safetensors(module, directory / "dcgan_tiny.safetensors", DCGAN_TINY_SPEC)]


def main() -> None:
    SAMPLE_DIR.mkdir(exist_ok=True)
    written = [save_torchscript(
        HalfSphereRadial(), SAMPLE_DIR / "half_sphere.pt", latent=make_latent_spec(2, "normal"),
        extra={"description": "Table 1 radial map R^2 -> lower half-sphere", "true_entropy": HALF_SPHERE_ENTROPY},
    )]
    written.append(save_torchscript(
        HalfSphereGaussianCDF(), SAMPLE_DIR / "half_sphere_cdf.pt", latent=make_latent_spec(2, "normal"),
        extra={"description": "Gaussian-CDF map R^2 -> lower half-sphere (h = -Phi(z1), phi = 2 pi Phi(z2))",
               "true_entropy": HALF_SPHERE_ENTROPY},
    ))
    written += write_mlp_small(SAMPLE_DIR) + write_tiny_decoder(SAMPLE_DIR) + write_dcgan_tiny(SAMPLE_DIR)
    for path in written:
        print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
