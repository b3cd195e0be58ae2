"""The generator families users hold, on their real code, random weights, small configurations:
which Jacobian method the engine chooses (and why not stacked), ms per sample, x floor (one
plain forward pass over the (d + 1) B rows, as ``benchmarks/zoo.py`` defines it), and the
Jacobian's two smallest singular values against its largest (StyleGAN's mapping network
normalises z, so its Jacobian has rank d - 1).

    python benchmarks/families.py --stylegan2-repo DIR --stylegan3-repo DIR [--batch 8] [--rounds 2]

StyleGAN2-ADA and StyleGAN3 are NVlabs' code (not packages): it is imported from the clones given
on the command line, never copied here; a family whose code is absent (no repository given, or
the package not installed) is listed as skipped. On a CPU NVlabs' custom ops (bias_act,
upfirdn2d, filtered_lrelu) run their reference implementations. BigGAN is
``pytorch-pretrained-biggan``, the VAE decoder diffusers' ``AutoencoderKL`` (``vae.decode(z).sample``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import types
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import zoo  # noqa: E402  (benchmarks/zoo.py)

from genentropy_cli.core.device import resolve_device  # noqa: E402
from genentropy_cli.core.latents import make_latent_spec  # noqa: E402


class Call(nn.Module):
    """The family's generator called as its users call it, on z alone: ``call(generator, z)``."""

    def __init__(self, generator: nn.Module, call: Callable[[nn.Module, torch.Tensor], torch.Tensor]):
        super().__init__()
        self.generator, self.call = generator, call

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.call(self.generator, z)


def _labels(z: torch.Tensor, classes: int, label: int | None) -> torch.Tensor:
    """(B, classes): empty for an unconditional StyleGAN, else one class's one-hot code."""
    c = torch.zeros(z.shape[0], classes, dtype=z.dtype, device=z.device)
    if label is not None:
        c[:, label] = 1
    return c


def _nvlabs(repo: Path | None, module: str):
    """NVlabs' ``module`` imported from the clone ``repo`` (its own ``torch_utils`` and ``dnnlib``);
    None where no clone was given. Where setuptools no longer ships ``pkg_resources`` (StyleGAN3's
    conv2d_gradfix imports its ``parse_version``), packaging's parser stands in."""
    if repo is None:
        return None
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        from packaging.version import parse

        sys.modules["pkg_resources"] = types.SimpleNamespace(parse_version=parse)  # type: ignore[assignment]
    for name in [name for name in sys.modules if name.split(".")[0] in ("training", "torch_utils", "dnnlib")]:
        del sys.modules[name]  # the other clone's modules of the same names
    sys.path.insert(0, str(repo))
    try:
        return importlib.import_module(module)
    finally:
        sys.path.remove(str(repo))


def stylegan2(repo: Path | None, conditional: bool) -> tuple[nn.Module, tuple[int, ...], str] | None:
    networks = _nvlabs(repo, "training.networks")
    if networks is None:
        return None
    torch.manual_seed(0)
    classes = 10 if conditional else 0
    generator = networks.Generator(z_dim=32, c_dim=classes, w_dim=32, img_resolution=32, img_channels=3,
                                   mapping_kwargs={"num_layers": 2},
                                   synthesis_kwargs={"channel_base": 256, "channel_max": 32})
    label = 3 if conditional else None

    def call(g, z):
        return g(z, _labels(z, classes, label), truncation_psi=0.7, noise_mode="const")

    config = f"32 px, z_dim = w_dim = 32, channel_max 32, {'10 classes (one-hot, class 3)' if conditional else 'c_dim 0'}, psi 0.7, noise const"
    return Call(generator, call), (32,), config


def stylegan3(repo: Path | None, variant: str) -> tuple[nn.Module, tuple[int, ...], str] | None:
    networks = _nvlabs(repo, "training.networks_stylegan3")
    if networks is None:
        return None
    torch.manual_seed(0)
    options = {"channel_base": 1024, "channel_max": 32}
    if variant == "R":
        options.update(conv_kernel=1, use_radial_filters=True, channel_base=2048, channel_max=64)
    generator = networks.Generator(z_dim=32, c_dim=0, w_dim=32, img_resolution=32, img_channels=3,
                                   mapping_kwargs={"num_layers": 2}, **options)

    def call(g, z):
        return g(z, _labels(z, 0, None), truncation_psi=0.7, noise_mode="const")

    return Call(generator, call), (32,), f"-{variant}, 32 px, z_dim = w_dim = 32, channel_max {options['channel_max']}, psi 0.7"


def biggan() -> tuple[nn.Module, tuple[int, ...], str] | None:
    if importlib.util.find_spec("pytorch_pretrained_biggan") is None:
        return None
    from pytorch_pretrained_biggan import BigGAN, BigGANConfig

    torch.manual_seed(0)
    config = BigGANConfig(output_dim=64, z_dim=32, class_embed_dim=32, channel_width=4, num_classes=10,
                          layers=[(False, 16, 16), (True, 16, 8), (True, 8, 4), (True, 4, 2), (True, 2, 1)],
                          attention_layer_position=3)
    generator = BigGAN(config)
    with torch.no_grad():  # the unconditional batch norm's weight and bias are left uninitialised
        for name, parameter in generator.named_parameters():
            if name.endswith("generator.bn.weight"):
                parameter.uniform_(0.5, 1.5)
            elif name.endswith("generator.bn.bias"):
                parameter.uniform_(-0.5, 0.5)
            elif name.endswith("gamma"):
                parameter.fill_(0.7)
        for name, buffer in generator.named_buffers():
            if name.endswith("running_means"):
                buffer.normal_(0, 0.1)
            elif name.endswith("running_vars"):
                buffer.uniform_(0.5, 1.5)
        generator.train()  # spectral norm's power iteration runs in train mode only
        for _ in range(20):
            generator(torch.randn(2, 32), torch.eye(10)[:2], 0.4)
    generator.eval()

    def call(g, z):
        return g(z, _labels(z, 10, 3), 0.4)

    return Call(generator, call), (32,), "64 px, z_dim 32, channel width 4, attention at 32 px, class 3, truncation 0.4"


def autoencoder_kl() -> tuple[nn.Module, tuple[int, ...], str] | None:
    if importlib.util.find_spec("diffusers") is None:
        return None
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(32, 64), latent_channels=4, sample_size=32, norm_num_groups=16,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)

    def call(g, z):
        return g.decode(z).sample

    return Call(vae, call), (4, 8, 8), "block_out_channels (32, 64), latent 4x8x8 (d = 256) -> 3x16x16"


def families(args: argparse.Namespace) -> dict[str, Callable[[], tuple | None]]:
    return {
        "StyleGAN2-ADA, unconditional": lambda: stylegan2(args.stylegan2_repo, False),
        "StyleGAN2-ADA, conditional": lambda: stylegan2(args.stylegan2_repo, True),
        "StyleGAN3-T": lambda: stylegan3(args.stylegan3_repo, "T"),
        "StyleGAN3-R": lambda: stylegan3(args.stylegan3_repo, "R"),
        "BigGAN": biggan,
        "AutoencoderKL decoder": autoencoder_kl,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stylegan2-repo", type=Path, help="a clone of NVlabs/stylegan2-ada-pytorch")
    parser.add_argument("--stylegan3-repo", type=Path, help="a clone of NVlabs/stylegan3")
    parser.add_argument("--batch", type=int, default=8, help="at most this many samples per Jacobian call")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", action="append", help="a family's name (repeatable)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}", file=sys.stderr)
    print("| family | config | method (why not stacked) | d | D | B | ms/sample | floor ms/sample | x floor "
          "| s_d / s_1 | s_(d-1) / s_1 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, build in families(args).items():
        if args.only and name not in args.only:
            continue
        built = build()
        if built is None:
            print(f"| {name} | skipped: code absent | | | | | | | | | |", flush=True)
            continue
        decoder, shape, config = built
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            row, _, columns = zoo.time_decoder(decoder, make_latent_spec(shape), device, args.rounds, args.batch)
        singular = torch.linalg.svdvals(columns[:, 0].double().T)  # the first sample's J (D, d)
        method = row["method"] + (f" ({row['reason']})" if row["reason"] else "")
        print(f"| {name} | {config} | {method} | {row['latent_dim']} | {row['output_dim']} | {row['batch']} | "
              f"{row['ms_per_sample']:.1f} | {row['floor_ms_per_sample']:.1f} | {row['x_floor']:.2f} | "
              f"{float(singular[-1] / singular[0]):.1e} | {float(singular[-2] / singular[0]):.1e} |", flush=True)
    print(f"\nfloat32; ms per sample of the Jacobian (d columns) at the engine's planned batch, at most "
          f"{args.batch}; best of {args.rounds} interleaved rounds; x floor: against one plain forward pass over "
          f"(d + 1) B rows; s_i: singular values of the first sample's Jacobian, largest s_1.")


if __name__ == "__main__":
    main()
