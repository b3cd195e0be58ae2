"""Output transforms applied to a decoder before estimation, recorded in the JSON.

``range (LO, HI)`` maps outputs affinely onto [0, 1]: x -> (x - LO) / (HI - LO), so that
decoders from codebases with tanh ([-1, 1]) and sigmoid ([0, 1]) outputs are compared on one
scale. Scaling outputs by a adds d log a to the entropy as s -> 0 (d = latent dimension), so
``range -1,1`` shifts it by exactly d log(1/2). ``select KEY|INDEX`` picks one output of a
decoder that returns a tuple, list or dict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from genentropy_cli.errors import InputError

OutputKey = int | str
NONE_WORDS = ("none", "off", "")


def parse_output_range(value: Any) -> tuple[float, float] | None:
    """``"-1,1"``, ``[-1, 1]`` or ``"none"`` (no mapping) -> (LO, HI) with LO < HI, or None."""
    if value is None or (isinstance(value, str) and value.strip().lower() in NONE_WORDS):
        return None
    parts: Sequence[Any] = value.split(",") if isinstance(value, str) else value
    try:
        low, high = (float(part) for part in parts)
    except (TypeError, ValueError):
        raise InputError(f"--output-range takes LO,HI, e.g. -1,1 for tanh outputs (got {value!r})") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high and math.isfinite(1.0 / (high - low))):
        raise InputError(f"--output-range needs finite LO < HI (and a width HI - LO with a finite inverse), "
                         f"got {low:g},{high:g}")
    return low, high


def parse_output_select(value: Any) -> OutputKey | None:
    """``"2"`` -> index 2, ``"images"`` -> key "images", ``"none"`` -> None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text.lower() in NONE_WORDS:
        return None
    try:
        return int(text)
    except ValueError:
        return text


def select_output(output: Any, key: OutputKey) -> torch.Tensor:
    """One element of a decoder's tuple/list/dict output (or an attribute of a named one)."""
    if isinstance(output, Mapping):
        for candidate in (key, str(key)):
            if candidate in output:
                return output[candidate]
        names = ", ".join(str(name) for name in output)
        raise InputError(f"--output-select {key}: the decoder returned a dict with keys {names}")
    if isinstance(key, str) and hasattr(output, key):
        return getattr(output, key)
    if isinstance(output, (tuple, list)) and isinstance(key, int):
        if -len(output) <= key < len(output):
            return output[key]
        raise InputError(f"--output-select {key}: the decoder returned {len(output)} outputs; "
                         f"choose an index from 0 to {len(output) - 1}")
    raise InputError(f"--output-select {key!r} does not fit the decoder's output (a {type(output).__name__})")


@dataclass(frozen=True)
class OutputTransform:
    """What is done to the decoder's output before the entropy is taken."""

    range: tuple[float, float] | None = None
    select: OutputKey | None = None

    @property
    def is_identity(self) -> bool:
        return self.range is None and self.select is None

    @property
    def factor(self) -> float:
        """The output scale 1 / (HI - LO); the s -> 0 entropy shifts by d log(factor)."""
        return 1.0 if self.range is None else 1.0 / (self.range[1] - self.range[0])

    def describe(self) -> dict:
        """The JSON record: x -> factor * (x - LO) on the selected output."""
        return {
            "select": self.select,
            "range": None if self.range is None else [self.range[0], self.range[1]],
            "factor": self.factor,
            "offset": 0.0 if self.range is None else 0.0 - self.range[0] * self.factor,
        }

    def entropy_shift(self, latent_dim: int) -> float:
        """d log(1 / (HI - LO)): the exact change of the s -> 0 entropy."""
        return latent_dim * math.log(self.factor)

    def apply(self, decoder: Any) -> Any:
        """The decoder itself if nothing is to be done, else a wrapping module."""
        return decoder if self.is_identity else TransformedDecoder(decoder, self)


class TransformedDecoder(nn.Module):
    """decoder, then ``select``, then (x - LO) / (HI - LO). A module, so the engine copies,
    moves and evaluates the wrapped decoder with it."""

    def __init__(self, decoder: Any, transform: OutputTransform):
        super().__init__()
        self.decoder = decoder  # registered as a submodule when it is a module
        self.transform = transform

    @property
    def original_name(self) -> str:
        """The name that identifies this decoder (checkpoint fingerprints hash it with the
        weights), so a run with another transform never resumes this one's checkpoint."""
        inner = getattr(self.decoder, "original_name", None) or type(self.decoder).__qualname__
        return f"{inner} then {self.transform.describe()}"

    def forward(self, latents: torch.Tensor, *labels: Any, **keyword_labels: Any) -> torch.Tensor:
        """The transformed output of ``decoder(latents, ...)`` (a conditional decoder's label passes through)."""
        output = self.decoder(latents, *labels, **keyword_labels)
        if self.transform.select is not None:
            output = select_output(output, self.transform.select)
        if self.transform.range is not None:
            low, high = self.transform.range
            output = (output - low) / (high - low)
        return output
