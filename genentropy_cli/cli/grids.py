"""``samples --grid``: the extreme samples' outputs as one labelled image (matplotlib, lazily)."""

from __future__ import annotations

import torch

from genentropy_cli.cli.imagegrid import as_images, save_labelled_grid
from genentropy_cli.jobs.samples import ExtremeSamples


def save_extremes_grid(result: ExtremeSamples, path: str, title: str) -> str:
    """The lowest-term outputs above the highest-term ones, each labelled with its sample
    index and term h_i (nats)."""
    chosen = [(heading, part) for heading, part in (
        ("lowest h\n(dense)", result.lowest), ("highest h\n(sparse)", result.highest)) if len(part["indices"])]
    images, note = as_images(torch.cat([part["outputs"] for _, part in chosen]), result.output_shape)
    sections, offset = [], 0
    for heading, part in chosen:
        count = len(part["indices"])
        labels = [f"#{index}\nh={term:.1f}" for index, term in zip(part["indices"], part["terms"])]
        sections.append((heading, images[offset:offset + count], labels))
        offset += count
    caption = (f"per-sample entropy term h = -log p(z) + 1/2 log det(J^T J + s^2 I) at s = {result.scale:.0e}, "
               f"extremes of N = {result.num_samples} (seed {result.settings['seed']}); {note}")
    return str(save_labelled_grid(sections, path, title, caption))
