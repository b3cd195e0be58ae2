"""A zoo of real generator architectures, each in the four forms users hand over, for the tests
(tests/test_zoo.py) and the benchmark (``benchmarks/run.py --section zoo``).

Forms: ``module`` (the ``nn.Module`` itself, as the Python API takes it), ``script``
(``torch.jit.script``), ``trace`` (``torch.jit.trace``) and ``pt2`` (``torch.export``); the last
three are saved to a file and read back through the project's own loader (``load_model``), the
way a user's file is. A form that cannot be produced (``torch.jit.script`` of a zuko flow, of a
parametrized module) is ``FormUnavailable`` with the reason, never skipped in silence.

Every architecture is small (CPU tests on 2 cores) and written the way real implementations
write it: infoGAN/DCGAN (models/architectures.py), residual generators with ``nn.Upsample`` and
with ``nn.PixelShuffle``, SAGAN self-attention, StyleGAN2 modulated convolution (fused: the
batch folded into the channels of a grouped convolution, as the official code does it; and
non-fused), LayerNorm+SiLU, GroupNorm+GELU, spectral norm, a hand-written masked affine
coupling flow, and zuko's MAF, NSF and RealNVP (the decoder is the flow's inverse, latent to
data) where zuko is installed.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from genentropy_cli.core.decoder import prepare_decoder
from genentropy_cli.core.device import strict_float32
from genentropy_cli.core.latents import LatentSpec, LatentStream, make_latent_spec
from genentropy_cli.models.architectures import DCGANGenerator, InfoGANGenerator, MLPDecoder
from genentropy_cli.models.exported import save_exported
from genentropy_cli.models.loading import load_model, resolve_latent_spec, save_torchscript
from genentropy_cli.run.compute import plan_for

FORMS = ("module", "script", "trace", "pt2")


class FormUnavailable(Exception):
    """The form cannot be produced from this architecture (the message says why)."""


# ----------------------------------------------------------------------------- architectures


class UpsampleBlock(nn.Module):
    """SNGAN/BigGAN residual up-block: BN, ReLU, Upsample x2, conv 3x3, BN, ReLU, conv 3x3, plus
    an upsampled 1x1-conv shortcut."""

    def __init__(self, channels: int, mode: str = "nearest"):
        super().__init__()
        options = {} if mode == "nearest" else {"align_corners": False}
        self.main = nn.Sequential(
            nn.BatchNorm2d(channels), nn.ReLU(), nn.Upsample(scale_factor=2, mode=mode, **options),
            nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1))
        self.skip = nn.Sequential(nn.Upsample(scale_factor=2, mode=mode, **options), nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + self.skip(x)


class ResidualUpsampleGenerator(nn.Module):
    """Linear to 4x4, two residual up-blocks (nearest, then bilinear) to 16x16, BN, ReLU, conv, tanh."""

    def __init__(self, latent_dim: int = 6, channels: int = 8):
        super().__init__()
        self.channels = channels
        self.fc = nn.Linear(latent_dim, channels * 16)
        self.blocks = nn.Sequential(UpsampleBlock(channels), UpsampleBlock(channels, "bilinear"))
        self.out = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, 1, 3, padding=1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(self.fc(z).view(-1, self.channels, 4, 4)))


class PixelShuffleGenerator(nn.Module):
    """Sub-pixel generator (SRGAN/ESPCN-style): Linear to 4x4, residual conv block with PReLU,
    then twice conv to 4C channels, PixelShuffle x2, LeakyReLU; conv, sigmoid."""

    def __init__(self, latent_dim: int = 6, channels: int = 8):
        super().__init__()
        self.channels = channels
        self.fc = nn.Linear(latent_dim, channels * 16)
        self.res = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.PReLU(channels),
                                 nn.Conv2d(channels, channels, 3, padding=1))
        self.up = nn.Sequential(*[layer for _ in range(2) for layer in (
            nn.Conv2d(channels, 4 * channels, 3, padding=1), nn.PixelShuffle(2), nn.LeakyReLU(0.2))])
        self.out = nn.Sequential(nn.Conv2d(channels, 1, 3, padding=1), nn.Sigmoid())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(-1, self.channels, 4, 4)
        return self.out(self.up(h + self.res(h)))


class SelfAttention(nn.Module):
    """SAGAN's self-attention (Zhang et al. 2019): 1x1-conv query/key/value, softmax(q^T k),
    value times attention, gamma-weighted residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.query = nn.Conv2d(channels, max(1, channels // 8), 1)
        self.key = nn.Conv2d(channels, max(1, channels // 8), 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.tensor(0.7))  # trained SAGANs have gamma away from its initial 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        query = self.query(x).view(batch, -1, height * width).permute(0, 2, 1)
        key = self.key(x).view(batch, -1, height * width)
        attention = torch.softmax(torch.bmm(query, key), dim=-1)
        value = self.value(x).view(batch, -1, height * width)
        out = torch.bmm(value, attention.permute(0, 2, 1)).view(batch, channels, height, width)
        return self.gamma * out + x


class SAGANGenerator(nn.Module):
    """Linear to 4x4, deconv to 8x8 (BN, ReLU), self-attention, deconv to 16x16, tanh."""

    def __init__(self, latent_dim: int = 6, channels: int = 16):
        super().__init__()
        self.channels = channels
        self.fc = nn.Linear(latent_dim, channels * 16)
        self.up = nn.Sequential(nn.ConvTranspose2d(channels, channels, 4, 2, 1), nn.BatchNorm2d(channels), nn.ReLU())
        self.attention = SelfAttention(channels)
        self.out = nn.Sequential(nn.ConvTranspose2d(channels, 1, 4, 2, 1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.attention(self.up(self.fc(z).view(-1, self.channels, 4, 4))))


class ModulatedConv2d(nn.Module):
    """StyleGAN2's modulated convolution: w' = w * s (per input channel), demodulated by
    1 / sqrt(sum w'^2 + eps) per output channel. ``fused``: the official form, the batch folded
    into the channels of one grouped convolution; else modulate the input, convolve, demodulate
    the output (the same function)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, style_dim: int, demodulate: bool = True,
                 fused: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel) / math.sqrt(in_channels * kernel**2))
        self.affine = nn.Linear(style_dim, in_channels)
        nn.init.ones_(self.affine.bias)
        self.bias = nn.Parameter(torch.randn(out_channels) * 0.1)
        self.demodulate, self.fused, self.kernel, self.padding = demodulate, fused, kernel, kernel // 2

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        style = self.affine(w)
        batch, channels, height, width = x.shape
        if self.fused:
            weight = self.weight[None] * style[:, None, :, None, None]
            if self.demodulate:
                weight = weight * torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8)[:, :, None, None, None]
            weight = weight.reshape(-1, channels, self.kernel, self.kernel)
            out = F.conv2d(x.reshape(1, -1, height, width), weight, padding=self.padding, groups=batch)
            out = out.reshape(batch, -1, height, width)
        else:
            out = F.conv2d(x * style[:, :, None, None], self.weight, padding=self.padding)
            if self.demodulate:
                squares = (self.weight[None] * style[:, None, :, None, None]).pow(2).sum([2, 3, 4])
                out = out * torch.rsqrt(squares + 1e-8)[:, :, None, None]
        return out + self.bias[None, :, None, None]


class StyleGenerator(nn.Module):
    """StyleGAN2-style: mapping MLP z -> w (pixel norm, LeakyReLU 0.2), learned 4x4 constant,
    modulated 3x3 conv, bilinear x2, modulated 3x3 conv, modulated 1x1 toRGB (no demodulation)."""

    def __init__(self, latent_dim: int = 6, channels: int = 8, fused: bool = True):
        super().__init__()
        self.mapping = nn.Sequential(nn.Linear(latent_dim, 16), nn.LeakyReLU(0.2), nn.Linear(16, 16), nn.LeakyReLU(0.2))
        self.const = nn.Parameter(torch.randn(1, channels, 4, 4))
        self.conv1 = ModulatedConv2d(channels, channels, 3, 16, fused=fused)
        self.conv2 = ModulatedConv2d(channels, channels, 3, 16, fused=fused)
        self.to_rgb = ModulatedConv2d(channels, 1, 1, 16, demodulate=False, fused=fused)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z * torch.rsqrt(z.pow(2).mean(dim=1, keepdim=True) + 1e-8)
        w = self.mapping(z)
        x = self.const.expand(z.shape[0], -1, -1, -1)
        x = F.leaky_relu(self.conv1(x, w), 0.2) * math.sqrt(2)
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        x = F.leaky_relu(self.conv2(x, w), 0.2) * math.sqrt(2)
        return self.to_rgb(x, w)


class LayerNormSiLU(nn.Module):
    """Transformer-style MLP decoder: Linear, LayerNorm, SiLU, twice, then Linear."""

    def __init__(self, latent_dim: int = 6, width: int = 32, output_dim: int = 48):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, width), nn.LayerNorm(width), nn.SiLU(),
                                 nn.Linear(width, width), nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, output_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class GroupNormGELU(nn.Module):
    """Diffusion-decoder-style conv stack: Linear to 8x8, conv, GroupNorm, GELU, conv, GroupNorm,
    GELU (tanh approximation), conv."""

    def __init__(self, latent_dim: int = 6, channels: int = 8):
        super().__init__()
        self.channels = channels
        self.fc = nn.Linear(latent_dim, channels * 64)
        self.net = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(2, channels), nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(4, channels), nn.GELU(approximate="tanh"),
            nn.Conv2d(channels, 1, 3, padding=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(z).view(-1, self.channels, 8, 8))


def spectral_norm_generator(latent_dim: int = 6, channels: int = 8) -> nn.Module:
    """An SNGAN-style generator whose every layer is under ``parametrizations.spectral_norm``
    (eval mode: the weight is divided by the sigma its stored vectors give)."""
    sn = nn.utils.parametrizations.spectral_norm
    return nn.Sequential(
        sn(nn.Linear(latent_dim, channels * 16)), nn.ReLU(), nn.Unflatten(1, (channels, 4, 4)),
        sn(nn.ConvTranspose2d(channels, channels, 4, 2, 1)), nn.ReLU(),
        sn(nn.ConvTranspose2d(channels, 1, 4, 2, 1)), nn.Tanh())


class MaskedAffineCoupling(nn.Module):
    """RealNVP coupling, latent to data: x = m*z + (1-m)*(z*exp(s) + t), (s, t) = net(m*z), then a
    fixed permutation of the features (indexing) and a where() that keeps the masked half."""

    def __init__(self, dim: int, parity: int):
        super().__init__()
        self.register_buffer("mask", (torch.arange(dim) % 2 == parity).to(torch.get_default_dtype()))
        self.register_buffer("permutation", torch.randperm(dim))
        self.net = nn.Sequential(nn.Linear(dim, 16), nn.Tanh(), nn.Linear(16, 2 * dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        kept = z * self.mask
        log_scale, shift = self.net(kept).chunk(2, dim=-1)
        moved = z * torch.exp(torch.tanh(log_scale)) + shift
        out = torch.where(self.mask > 0, z, moved)
        return out[:, self.permutation]


def coupling_flow(dim: int = 6) -> nn.Module:
    return nn.Sequential(*[MaskedAffineCoupling(dim, parity % 2) for parity in range(3)])


class ZukoInverse(nn.Module):
    """A zuko flow as a decoder: its transform's inverse, from the base (latent) to data."""

    def __init__(self, flow: nn.Module):
        super().__init__()
        self.flow = flow

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.flow().transform.inv(z)


def zuko_flow(kind: str, dim: int = 4) -> nn.Module:
    """MAF, NSF or RealNVP from zuko.flows (skip: ImportError without zuko)."""
    import zuko

    make = {"maf": zuko.flows.MAF, "nsf": zuko.flows.NSF, "realnvp": zuko.flows.RealNVP}[kind]
    flow = make(features=dim, transforms=2, hidden_features=(16, 16))
    with torch.no_grad():  # trained flows are far from the identity their initialisation is near
        for parameter in flow.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    return ZukoInverse(flow)


@dataclass(frozen=True)
class Architecture:
    build: Callable[[], nn.Module]
    latent_shape: tuple[int, ...]
    needs: str | None = None
    """A package the architecture needs (tests skip it without), or None."""


ZOO: dict[str, Architecture] = {
    "mlp": Architecture(lambda: MLPDecoder(6, 48, hidden=(32, 32)), (6,)),
    "infogan": Architecture(lambda: InfoGANGenerator(latent_dim=6, width=0.05), (6,)),
    "dcgan": Architecture(lambda: DCGANGenerator(latent_dim=6, ngf=2, nc=1), (6, 1, 1)),
    "resnet-upsample": Architecture(ResidualUpsampleGenerator, (6,)),
    "resnet-pixelshuffle": Architecture(PixelShuffleGenerator, (6,)),
    "sagan": Architecture(SAGANGenerator, (6,)),
    "stylegan-fused": Architecture(lambda: StyleGenerator(fused=True), (6,)),
    "stylegan": Architecture(lambda: StyleGenerator(fused=False), (6,)),
    "layernorm-silu": Architecture(LayerNormSiLU, (6,)),
    "groupnorm-gelu": Architecture(GroupNormGELU, (6,)),
    "spectral-norm": Architecture(spectral_norm_generator, (6,)),
    "coupling": Architecture(coupling_flow, (6,)),
    "zuko-maf": Architecture(lambda: zuko_flow("maf"), (4,), needs="zuko"),
    "zuko-nsf": Architecture(lambda: zuko_flow("nsf"), (4,), needs="zuko"),
    "zuko-realnvp": Architecture(lambda: zuko_flow("realnvp"), (4,), needs="zuko"),
}
"""Name -> architecture: its builder and latent shape."""


def build(name: str, dtype: torch.dtype = torch.float64) -> nn.Module:
    """The architecture with seeded random weights, batch-norm statistics away from the identity,
    in eval mode and ``dtype``."""
    torch.manual_seed(0)
    module = ZOO[name].build()
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                layer.running_mean.uniform_(-0.3, 0.3)
                layer.running_var.uniform_(0.5, 2.0)
    return module.to(dtype).eval()


def _save(module: nn.Module, form: str, path: Path, spec: LatentSpec, example: torch.Tensor) -> None:
    if form == "script":
        save_torchscript(torch.jit.script(module), path, spec)
    elif form == "trace":
        save_torchscript(module, path, spec, example=example)
    elif form == "pt2":
        save_exported(module, path, spec, example=example)
    else:
        raise ValueError(f"unknown form {form!r}; one of {', '.join(FORMS)}")


def produce(name: str, form: str, folder: Path, dtype: torch.dtype = torch.float64) -> tuple[nn.Module, nn.Module, LatentSpec]:
    """(the original module, the decoder in ``form`` as a user's file loads, its latent spec).
    Raises ``FormUnavailable`` where the form cannot be made."""
    module = build(name, dtype)
    spec = make_latent_spec(ZOO[name].latent_shape)
    if form == "module":
        return module, module, spec
    path = Path(folder) / f"{name}-{form}{'.pt2' if form == 'pt2' else '.pt'}"
    example = torch.randn(3, *spec.shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's and exporter's notices
            _save(module, form, path, spec, example)
    except ValueError:
        raise
    except Exception as error:
        raise FormUnavailable(f"{type(error).__name__}: {str(error).strip().splitlines()[0][:160]}") from None
    loaded = load_model(path)
    latent, _ = resolve_latent_spec(loaded)
    try:  # a traced graph may have fixed the batch size (StyleGAN2's groups=batch)
        with torch.no_grad():
            loaded.decoder(torch.zeros(2, *latent.shape, dtype=dtype))
    except Exception as error:
        raise FormUnavailable(f"the file runs only at the batch size it was made with ({type(error).__name__})") from None
    return module, loaded.decoder, latent


def scratch_folder() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="genentropy-zoo-")


# ----------------------------------------------------------------------------- benchmark section


def _best_seconds(actions: dict[str, Callable[[], object]], rounds: int,
                  device: torch.device) -> dict[str, tuple[float, float]]:
    """Per action, the fastest of ``rounds`` interleaved timings (wall and CPU seconds per call),
    one warm-up call each. A timing repeats the actions until the first lasts 20 ms (at most 20
    calls): on a shared machine short calls measure the scheduler more than the decoder."""
    warm = []
    for action in actions.values():
        start = time.perf_counter()
        action()
        warm.append(time.perf_counter() - start)
    repeats = int(min(20, max(1, math.ceil(0.02 / max(warm[0], 1e-6)))))
    best = {name: (math.inf, math.inf) for name in actions}
    for number in range(rounds):
        names = list(actions)
        for name in names[number % len(names):] + names[: number % len(names)]:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(repeats):
                actions[name]()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            wall, cpu = (time.perf_counter() - wall) / repeats, (time.process_time() - cpu) / repeats
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


BENCHMARK_BATCH = 256
"""The zoo section's largest batch (the engine's plan, where smaller): a few minutes for the whole zoo."""


def measure(name: str, form: str, folder: Path, device: torch.device, rounds: int, batch: int | None = None) -> dict:
    """One row of the zoo table: ``time_decoder`` of the architecture in ``form``."""
    row = {"architecture": name, "form": form}
    try:
        _, decoder, spec = produce(name, form, folder, torch.float32)
    except FormUnavailable as error:
        return {**row, "method": "form unavailable", "reason": str(error)}
    return {**row, **time_decoder(decoder, spec, device, rounds, batch)[0]}


def time_decoder(decoder, spec: LatentSpec, device: torch.device, rounds: int,
                 batch: int | None = None) -> tuple[dict, "object", torch.Tensor]:
    """The method the engine chose for ``decoder`` (and why not stacked), its Jacobian's ms per
    sample in float32 at the engine's planned batch, at most ``batch`` (default
    ``BENCHMARK_BATCH``), and tangent chunk, and its ratio to the floor: one plain forward pass of
    the same decoder over the (d + 1) B rows the Jacobian needs. Also returns the prepared
    decoder and the last Jacobian (d, B, D)."""
    with strict_float32():
        prepared = prepare_decoder(decoder, spec, device, torch.float32)
        plan = plan_for(prepared)
        batch, chunk = min(plan.batch_size, batch or BENCHMARK_BATCH), plan.tangent_chunk
        latents = LatentStream(spec, seed=0).range(0, batch)
        rows = torch.cat([latents] * (spec.dim + 1)).to(device=device, dtype=torch.float32)
        rows = rows.reshape(-1, *spec.shape)
        last = {}

        def floor() -> None:
            with torch.no_grad(), prepared.context():
                prepared.function(rows)

        def engine() -> None:
            last["columns"] = prepared.jacobian(latents, chunk)[0]

        best = _best_seconds({"floor": floor, "engine": engine}, rounds, device)
    (engine_wall, engine_cpu), (floor_wall, floor_cpu) = best["engine"], best["floor"]
    return ({"method": prepared.jacobian_method, "reason": prepared.method_note, "latent_dim": spec.dim,
             "output_dim": prepared.output_dim, "batch": batch, "chunk": chunk,
             "ms_per_sample": engine_wall * 1e3 / batch, "floor_ms_per_sample": floor_wall * 1e3 / batch,
             "x_floor": engine_wall / floor_wall, "x_floor_cpu_time": engine_cpu / floor_cpu},
            prepared, last["columns"])


def zoo_section(device: torch.device, rounds: int = 3, batch: int | None = None) -> dict:
    """Every (architecture, form) of the zoo: method, reason, ms/sample, ratio to the floor; and
    the fraction of the forms that can be made which run stacked. Prints a Markdown table."""
    table = []
    with scratch_folder() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and export notices
        for name, architecture in ZOO.items():
            if architecture.needs is not None and importlib.util.find_spec(architecture.needs) is None:
                table += [{"architecture": name, "form": form, "method": "not measured",
                           "reason": f"{architecture.needs} is not installed"} for form in FORMS]
                continue
            for form in FORMS:
                table.append(measure(name, form, Path(folder), device, rounds, batch))
                print(f"  [zoo] {name} {form}: {table[-1]['method']}", file=sys.stderr, flush=True)
    made = [row for row in table if "x_floor" in row]
    stacked = sum(row["method"] == "stacked" for row in made)
    print(f"\n### zoo: {stacked} of {len(made)} forms that can be made run stacked "
          f"({100 * stacked / max(1, len(made)):.0f}%); float32, the engine's planned batch B (at most "
          f"{batch or BENCHMARK_BATCH}) and tangent chunk, "
          f"best of {rounds} interleaved rounds; floor: one plain forward pass over (d + 1) B rows\n")
    print("| architecture | form | method | reason | d | D | B | ms/sample | floor ms/sample | x floor "
          "| x floor (CPU time) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in table:
        if "x_floor" in row:
            print(f"| {row['architecture']} | {row['form']} | {row['method']} | {row['reason'] or ''} | "
                  f"{row['latent_dim']} | {row['output_dim']} | {row['batch']} | {row['ms_per_sample']:.4f} | "
                  f"{row['floor_ms_per_sample']:.4f} | {row['x_floor']:.2f} | {row['x_floor_cpu_time']:.2f} |")
        else:
            print(f"| {row['architecture']} | {row['form']} | {row['method']} | {row['reason']} | | | | | | | |")
    return {"rows": table, "stacked": stacked, "made": len(made), "rounds": rounds}
