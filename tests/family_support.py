"""Small models of the families users hold, saved as their own code saves them, and the
reference per-sample terms computed on the original module with reverse-mode autograd.

- StyleGAN2-ADA / StyleGAN3: ``family_code/tinystylegan.py`` (our own module following NVlabs'
  conventions), written as a plain pickle of the training snapshot dict;
- BigGAN: ``pytorch_pretrained_biggan.BigGAN`` (a test extra), saved as its folder (config.json,
  pytorch_model.bin), with batch-norm statistics calibrated so that its outputs are not saturated;
- diffusers: ``AutoencoderKL`` (a test extra), saved with ``save_pretrained``.
"""

from __future__ import annotations

import importlib
import math
import pickle
import sys
from pathlib import Path
from typing import Callable

import torch

FAMILY_CODE = Path(__file__).parent / "family_code"


def stylegan_module():
    """``tinystylegan`` imported as a top-level module (as a pickle names it), from family_code/."""
    if str(FAMILY_CODE) not in sys.path:
        sys.path.insert(0, str(FAMILY_CODE))
    return importlib.import_module("tinystylegan")


def write_stylegan_snapshot(path: Path, c_dim: int = 0, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    module = stylegan_module()
    module.write_snapshot(path, module.TinyStyleGenerator(z_dim=6, c_dim=c_dim, w_dim=8, img_resolution=8))
    return path


def read_snapshot_generator(path: Path) -> torch.nn.Module:
    stylegan_module()
    with open(path, "rb") as handle:
        return pickle.load(handle)["G_ema"]


def write_biggan_folder(folder: Path, seed: int = 0) -> Path:
    """A small random BigGAN (32 px, z of 8, 5 classes) as pytorch-pretrained-biggan stores one."""
    from pytorch_pretrained_biggan import BigGAN, BigGANConfig
    from pytorch_pretrained_biggan.model import BigGANBatchNorm

    torch.manual_seed(seed)
    config = BigGANConfig(output_dim=32, z_dim=8, class_embed_dim=8, channel_width=4, num_classes=5,
                          layers=[(False, 16, 16), (True, 16, 8), (True, 8, 4), (True, 4, 2), (False, 2, 1)],
                          attention_layer_position=2)
    model = BigGAN(config).eval()
    with torch.no_grad():
        model.generator.layers[2].gamma.fill_(0.5)  # the attention block contributes
        model.generator.bn.weight.fill_(1.0)  # left uninitialised by the package (trained weights fill it)
        model.generator.bn.bias.zero_()

        def calibrate(norm, inputs):  # stored statistics as training would leave them
            norm.running_means.copy_(inputs[0].mean(dim=(0, 2, 3)).expand_as(norm.running_means))
            norm.running_vars.copy_(inputs[0].var(dim=(0, 2, 3)).expand_as(norm.running_vars))

        hooks = [norm.register_forward_pre_hook(calibrate) for norm in model.modules()
                 if isinstance(norm, BigGANBatchNorm)]
        model(torch.randn(64, 8), torch.eye(5)[torch.arange(64) % 5], 1.0)
        for hook in hooks:
            hook.remove()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(config.to_json_string())
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


def read_biggan(folder: Path) -> torch.nn.Module:
    from pytorch_pretrained_biggan import BigGAN, BigGANConfig

    model = BigGAN(BigGANConfig.from_json_file(str(folder / "config.json"))).eval()
    model.load_state_dict(torch.load(folder / "pytorch_model.bin", weights_only=True))
    return model


def write_vae_folder(folder: Path, seed: int = 0, attention: bool = True) -> Path:
    """A small random AutoencoderKL (16 px images, 2x8x8 latents) saved as diffusers saves one."""
    import diffusers

    torch.manual_seed(seed)
    vae = diffusers.AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=2, sample_size=16,
                                  norm_num_groups=4, layers_per_block=1, mid_block_add_attention=attention)
    vae.save_pretrained(str(folder))
    return folder


def reverse_mode_jacobian(function: Callable[[torch.Tensor], torch.Tensor], point: torch.Tensor) -> torch.Tensor:
    """J (D, d) at one latent by reverse mode only: g(u) = J^T u by one backward pass, then column
    j as the derivative of <g(u), e_j> with respect to u (a second backward pass): 2 d passes
    instead of D, where D is large; torch's row-by-row jacobian where double backward is missing."""
    latent = point.detach().clone().requires_grad_(True)
    outputs = function(latent.unsqueeze(0)).reshape(-1)
    probe = torch.zeros_like(outputs, requires_grad=True)
    try:
        (pulled,) = torch.autograd.grad(outputs, latent, probe, create_graph=True)
        columns = [torch.autograd.grad(pulled, probe, basis, retain_graph=True)[0]
                   for basis in torch.eye(latent.numel(), dtype=latent.dtype)]
        return torch.stack(columns, dim=1)
    except RuntimeError:
        return torch.autograd.functional.jacobian(lambda z: function(z.unsqueeze(0)).reshape(-1), point.detach())


def reference_terms(function: Callable[[torch.Tensor], torch.Tensor], latents: torch.Tensor,
                    scale: float) -> torch.Tensor:
    """h_i = -log N(z_i; 0, I) + 1/2 log det(J^T J + s^2 I), J by reverse mode on a float32 module
    (``reverse_mode_jacobian``), the log-det in float64."""
    terms = []
    for latent in latents:
        point = latent.to(torch.float32)
        jacobian = reverse_mode_jacobian(function, point).reshape(-1, point.numel()).double()
        gram = jacobian.T @ jacobian + scale**2 * torch.eye(point.numel(), dtype=torch.float64)
        neg_log_density = 0.5 * float(latent.double().square().sum()) + 0.5 * point.numel() * math.log(2 * math.pi)
        terms.append(neg_log_density + 0.5 * float(torch.linalg.slogdet(gram)[1]))
    return torch.tensor(terms, dtype=torch.float64)
