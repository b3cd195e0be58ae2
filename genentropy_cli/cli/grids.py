"""``samples --grid``: the extreme samples' outputs as one labelled image (matplotlib, lazily)."""

from __future__ import annotations

import torch

from genentropy_cli.cli.imagegrid import as_images, save_labelled_grid
from genentropy_cli.jobs.samples import ConditionalExtremes, ExtremeSamples


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


def save_class_extremes_grid(result: ConditionalExtremes, path: str, title: str) -> str:
    """One row per class: its lowest-term outputs, then its highest-term ones, each labelled with
    its end, sample index and term h_i (nats); every class on the same latents."""
    outputs = torch.cat([part["outputs"] for item in result.classes for part in (item.lowest, item.highest)])
    images, note = as_images(outputs, result.output_shape)
    sections, offset = [], 0
    for label, item in zip(result.label.chosen, result.classes):
        labels = [f"{end} #{index}\nh={term:.1f}" for end, part in (("low", item.lowest), ("high", item.highest))
                  for index, term in zip(part["indices"], part["terms"])]
        sections.append((f"y = {label}", images[offset:offset + len(labels)], labels))
        offset += len(labels)
    caption = (f"per class: lowest then highest per-sample entropy term h = -log p(z) + 1/2 log det(J^T J + s^2 I) "
               f"at s = {result.scale:.0e}, extremes of the same N = {result.num_samples} latents "
               f"(seed {result.settings['seed']}); {note}")
    return str(save_labelled_grid(sections, path, title, caption))
