"""Labelled image grids of decoder outputs (matplotlib, from the ``plot`` extra, imported lazily)."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from genentropy_cli.errors import InputError

GRID_COLUMNS = 8
"""Images per row before a section wraps."""


def as_images(outputs: torch.Tensor, output_shape: Sequence[int]) -> tuple[np.ndarray, str]:
    """Decoder outputs (B, *output_shape) as (B, H, W) or (B, H, W, 3) arrays in [0, 1], and a
    note on the intensity mapping: [0, 1] as is, [-1, 1] (tanh) shifted, else min-max per image."""
    shape = tuple(int(size) for size in output_shape)
    batch = outputs.detach().to(torch.float64).cpu().numpy().reshape(-1, *shape)
    if len(shape) == 3 and shape[0] in (1, 3):
        images = batch[:, 0] if shape[0] == 1 else batch.transpose(0, 2, 3, 1)
    elif len(shape) == 3 and shape[2] in (1, 3):
        images = batch[..., 0] if shape[2] == 1 else batch
    elif len(shape) == 2:
        images = batch
    elif len(shape) == 1 and math.isqrt(shape[0]) ** 2 == shape[0]:
        side = math.isqrt(shape[0])
        images = batch.reshape(-1, side, side)
    else:
        raise InputError(
            f"the decoder's outputs have shape {shape}, not an image (C,H,W with C = 1 or 3, H,W, or a square D); "
            "use --json to get the chosen sample indices and terms instead"
        )
    low, high = float(np.nanmin(images)), float(np.nanmax(images))
    if low >= 0.0 and high <= 1.0:
        return images, "intensities as output, [0, 1]"
    if low >= -1.0 and high <= 1.0:
        return (images + 1.0) / 2.0, "intensities mapped from [-1, 1]"
    axes = tuple(range(1, images.ndim))
    lows, highs = images.min(axis=axes, keepdims=True), images.max(axis=axes, keepdims=True)
    return (images - lows) / np.maximum(highs - lows, 1e-12), "intensities min-max scaled per image"


def save_labelled_grid(sections: Sequence[tuple[str, np.ndarray, Sequence[str]]], path: str | Path,
                       title: str, note: str = "") -> Path:
    """Write a PNG/PDF/SVG: one block of rows per section (heading, images, one label per image)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("writing image grids needs matplotlib: pip install 'genentropy[plot]'") from None
    columns = min(GRID_COLUMNS, max(len(images) for _, images, _ in sections))
    rows_per_section = [max(1, -(-len(images) // columns)) for _, images, _ in sections]
    wrap = max(40, 14 * columns)
    title_lines = textwrap.wrap(title, wrap) + textwrap.wrap(note, wrap)
    cell, label, margin = 1.1, 0.4, 0.9  # inches: image, its title, left labels
    header = max(0.8, 0.55 + 0.14 * len(title_lines))  # the figure title, every line of it, and row 1's labels
    width, height = cell * columns + margin, (cell + label) * sum(rows_per_section) + header
    figure = plt.figure(figsize=(width, height))
    grid = figure.add_gridspec(sum(rows_per_section), columns, left=margin / width, right=0.99, bottom=0.01,
                               top=1 - header / height, wspace=0.08, hspace=label / cell)
    first_row = 0
    for (heading, images, labels), rows in zip(sections, rows_per_section):
        for position in range(rows * columns):
            axis = figure.add_subplot(grid[first_row + position // columns, position % columns])
            axis.set_xticks([])
            axis.set_yticks([])
            if position == 0:
                axis.set_ylabel(heading, fontsize=8, rotation=0, ha="right", va="center", labelpad=8)
            if position >= len(images):
                axis.axis("off")
                continue
            image = images[position]
            axis.imshow(np.clip(image, 0.0, 1.0), cmap="gray" if image.ndim == 2 else None, vmin=0.0, vmax=1.0)
            axis.set_title(labels[position], fontsize=7)
        first_row += rows
    figure.suptitle("\n".join(title_lines), fontsize=8, y=1 - 0.1 / height, va="top")
    target = Path(path)
    try:
        figure.savefig(target, dpi=110, bbox_inches="tight")
    except (OSError, ValueError) as error:
        raise InputError(f"cannot write the grid to {target} ({error})") from None
    finally:
        plt.close(figure)
    return target
