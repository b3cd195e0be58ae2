"""What a model file records about itself: the ``genentropy.json`` extra file of TorchScript
archives and torch.export programs, e.g. ``{"latent_shape": [62], "latent_distribution": "uniform"}``
(plus optional ``output_range``, ``output_select``, a conditional decoder's ``label`` mapping, a
``call`` mapping (``calls.py``) and free-form keys). A ``label`` mapping (``num_classes``, ``format``, ``argument``, ``weights``,
``classes``; also a spec's ``label:`` section) becomes flat ``label_*`` entries, so each can come
from its own source."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from genentropy_cli.core.labels import LabelSpec
from genentropy_cli.core.latents import LatentSpec, distribution_label
from genentropy_cli.defaults import MAX_DOCUMENT_DEPTH
from genentropy_cli.errors import InputError
from genentropy_cli.models.calls import CallAdapter, call_metadata, call_section
from genentropy_cli.trust import check_depth

METADATA_FILE = "genentropy.json"
"""Name of the extra file in a TorchScript archive or .pt2 program that records the latent spec."""


LABEL_KEYS: tuple[str, ...] = ("num_classes", "format", "argument", "weights", "classes")
"""Keys of a ``label`` mapping (``core.labels.LabelSpec``'s fields)."""


def label_metadata(section: Any, source: str) -> dict:
    """A ``label`` mapping as flat loader metadata: ``{"label_num_classes": 10, ...}``."""
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise InputError(f"{source}: label must be a mapping with keys such as num_classes, format, argument; "
                         f"got {section!r}")
    return {f"label_{key}": value for key, value in section.items() if key in LABEL_KEYS and value is not None}


def label_section(label: LabelSpec) -> dict:
    """A ``LabelSpec`` as the mapping files record (entries left at their default omitted)."""
    return {key: value for key, value in label.to_dict().items() if value is not None}


def metadata_record(latent: LatentSpec | None = None, extra: dict | None = None,
                    label: LabelSpec | None = None, call: CallAdapter | None = None) -> dict:
    """The metadata dict for ``latent`` (a conditional decoder's ``label``, how it is ``call``-ed)
    plus ``extra`` keys."""
    record = dict(extra or {})
    if call is not None and not call.is_identity:
        record["call"] = call_section(call)
    if latent is not None:
        record["latent_shape"] = list(latent.shape)
        record["latent_distribution"] = distribution_label(latent.distribution)
    if label is not None:
        record["label"] = label_section(label)
    return record


def parse_metadata(text: str | bytes, file: str | Path) -> dict:
    """The recorded metadata ({} when the file records none)."""
    if not text:
        return {}
    try:
        metadata = json.loads(text)
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError, RecursionError):
        metadata = None
    if not isinstance(metadata, dict):
        raise InputError(f"{file} carries an unreadable {METADATA_FILE}; re-save it with genentropy's save functions")
    check_depth(metadata, MAX_DOCUMENT_DEPTH, f"the {METADATA_FILE} of {file}")
    metadata.update(label_metadata(metadata.pop("label", None), f"{file} ({METADATA_FILE})"))
    metadata.update(call_metadata(metadata.pop("call", None), f"{file} ({METADATA_FILE})"))
    return metadata
