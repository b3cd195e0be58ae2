"""What a model file records about itself: the ``genentropy.json`` extra file of TorchScript
archives and torch.export programs, e.g. ``{"latent_shape": [62], "latent_distribution": "uniform"}``
(plus optional ``output_range``, ``output_select`` and free-form keys)."""

from __future__ import annotations

import json
from pathlib import Path

from genentropy_cli.core.latents import LatentSpec, distribution_label
from genentropy_cli.errors import InputError

METADATA_FILE = "genentropy.json"
"""Name of the extra file in a TorchScript archive or .pt2 program that records the latent spec."""


def metadata_record(latent: LatentSpec | None = None, extra: dict | None = None) -> dict:
    """The metadata dict for ``latent`` plus ``extra`` keys."""
    record = dict(extra or {})
    if latent is not None:
        record["latent_shape"] = list(latent.shape)
        record["latent_distribution"] = distribution_label(latent.distribution)
    return record


def parse_metadata(text: str | bytes, file: str | Path) -> dict:
    """The recorded metadata ({} when the file records none)."""
    if not text:
        return {}
    try:
        metadata = json.loads(text)
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError):
        metadata = None
    if not isinstance(metadata, dict):
        raise InputError(f"{file} carries an unreadable {METADATA_FILE}; re-save it with genentropy's save functions")
    return metadata
