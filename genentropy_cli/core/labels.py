"""Class labels of a conditional decoder g(z, y): what the label input is, and a decoder bound
to one class.

A ``LabelSpec`` says how many classes there are, how a label is passed (``index``: an int64
tensor (B,) of class numbers; ``onehot``: a float tensor (B, K)), where it goes (the second
positional argument, or a keyword such as ``c``), the class probabilities p(y) and, optionally,
the classes to estimate. ``ClassBoundDecoder`` turns g(., y) for one class y into a plain
decoder of the latents: it makes the label for whatever batch it is given, as a constant (the
Jacobian is taken with respect to z only), so every Jacobian method, TorchScript and
torch.export run it as any other decoder.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from genentropy_cli.defaults import DEFAULT_LABEL_ARGUMENT, DEFAULT_LABEL_FORMAT, MAX_CLASSES
from genentropy_cli.errors import InputError
from genentropy_cli.trust import check_count

__all__ = ["LABEL_FORMATS", "POSITIONAL", "ClassBoundDecoder", "LabelSpec", "bind_class"]

LABEL_FORMATS: tuple[str, ...] = ("index", "onehot")
"""index: int64 class numbers (B,); onehot: float one-hot rows (B, K) in the decoder's dtype."""

POSITIONAL = "position"
"""``argument`` value for a label passed as the decoder's second positional argument."""
assert DEFAULT_LABEL_FORMAT in LABEL_FORMATS and DEFAULT_LABEL_ARGUMENT == POSITIONAL


def _class_number(value: Any, what: str) -> int:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool):
        raise InputError(f"{what}: {value!r} is not a class number")
    try:
        return operator.index(value)
    except TypeError:
        raise InputError(f"{what}: {value!r} is not a class number") from None


def _class_numbers(values: Sequence[Any], num_classes: int, what: str) -> tuple[int, ...]:
    numbers = [_class_number(value, what) for value in values]
    if not numbers:
        raise InputError(f"{what}: give at least one class")
    outside = [number for number in numbers if not 0 <= number < num_classes]
    if outside:
        raise InputError(f"{what}: class {outside[0]} is outside 0..{num_classes - 1} ({num_classes} classes)")
    if len(set(numbers)) != len(numbers):
        raise InputError(f"{what}: a class is listed twice ({', '.join(map(str, numbers))})")
    return tuple(numbers)


@dataclass(frozen=True)
class LabelSpec:
    """The label input of a conditional decoder (see the module doc).

    ``weights``: p(y) up to normalisation, one per class (``num_classes`` of them) or one per
    chosen class (in the order of ``classes``); None is uniform. With ``classes`` the mixture is
    over those classes alone, their weights normalised to sum to one.
    """

    num_classes: int
    format: str = DEFAULT_LABEL_FORMAT
    argument: str = DEFAULT_LABEL_ARGUMENT
    weights: tuple[float, ...] | None = None
    classes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        count = _class_number(self.num_classes, "the number of classes")
        if count < 1:
            raise InputError(f"the number of classes must be a positive integer, got {self.num_classes!r}")
        check_count(count, MAX_CLASSES, "the number of classes",
                    "each class is estimated and a one-hot label holds one number per class")
        object.__setattr__(self, "num_classes", count)
        if self.format not in LABEL_FORMATS:
            raise InputError(f"label format {self.format!r} is not one of {', '.join(LABEL_FORMATS)}")
        if not (self.argument == POSITIONAL or (isinstance(self.argument, str) and self.argument.isidentifier())):
            raise InputError(f"the label argument must be '{POSITIONAL}' (the second positional argument) or a "
                             f"keyword name such as c, got {self.argument!r}")
        if self.classes is not None:
            object.__setattr__(self, "classes", _class_numbers(list(self.classes), self.num_classes, "classes"))
        if self.weights is not None:
            object.__setattr__(self, "weights", tuple(float(weight) for weight in self.weights))
            self._check_weights(self.weights)

    def _check_weights(self, weights: tuple[float, ...]) -> None:
        allowed = {self.num_classes, len(self.chosen)}
        if len(weights) not in allowed:
            counts = " or ".join(str(count) for count in sorted(allowed))
            raise InputError(f"class weights: got {len(weights)} weights for {counts} classes")
        bad = next((index for index, weight in enumerate(weights) if not (math.isfinite(weight) and weight >= 0)), None)
        if bad is not None:  # named by position: the weights may come from a file, whose content is never echoed
            raise InputError(f"class weights must be finite and non-negative; weight {bad} (counting from 0) is not")
        if not sum(self._chosen_weights(weights)) > 0:
            raise InputError("class weights: the chosen classes' weights sum to zero")

    @property
    def chosen(self) -> tuple[int, ...]:
        """The classes estimated, in order: ``classes``, else all."""
        return self.classes if self.classes is not None else tuple(range(self.num_classes))

    def _chosen_weights(self, weights: tuple[float, ...]) -> list[float]:
        if len(weights) == self.num_classes:
            return [weights[label] for label in self.chosen]
        return list(weights)

    @property
    def probabilities(self) -> tuple[float, ...]:
        """p(y) of each chosen class (same order as ``chosen``), summing to one."""
        if self.weights is None:
            return tuple(1.0 / len(self.chosen) for _ in self.chosen)
        weights = self._chosen_weights(self.weights)
        largest = max(weights)  # scaled by the largest first: weights near 1e308 sum without overflow
        total = math.fsum(weight / largest for weight in weights)
        return tuple((weight / largest) / total for weight in weights)

    def label_entropy(self) -> float:
        """H(Y) = -sum_y p(y) log p(y) over the chosen classes (nats; 0 log 0 = 0)."""
        return -math.fsum(p * math.log(p) for p in self.probabilities if p > 0)

    def labels(self, label: int, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Class ``label`` for ``batch`` rows: int64 (B,), or (B, K) one-hot rows in ``dtype``."""
        if self.format == "index":
            return torch.full((batch,), int(label), dtype=torch.int64, device=device)
        code = torch.zeros(batch, self.num_classes, dtype=dtype, device=device)
        code[:, int(label)] = 1
        return code

    def describe(self) -> str:
        """One line: classes, format, argument, weights."""
        passed = "2nd positional argument" if self.argument == POSITIONAL else f"keyword {self.argument}"
        kind = "int64 index" if self.format == "index" else "float one-hot"
        chosen = "" if self.classes is None else f", classes {','.join(map(str, self.classes))}"
        weights = "uniform" if self.weights is None else "weighted"
        return f"{self.num_classes} classes ({kind}, {passed}{chosen}); p(y) {weights}"

    def to_dict(self) -> dict:
        """The JSON record (also a spec's ``label:`` section)."""
        return {"num_classes": self.num_classes, "format": self.format, "argument": self.argument,
                "weights": None if self.weights is None else list(self.weights),
                "classes": None if self.classes is None else list(self.classes)}


class ClassBoundDecoder(nn.Module):
    """g(., y) for one class y: calls ``decoder(z, labels)`` or ``decoder(z, **{argument: labels})``
    with the label made for the batch (``LabelSpec.labels``, in the latents' dtype and device).
    A module, so the decoder is copied, moved and set to eval mode with it."""

    def __init__(self, decoder: Any, spec: LabelSpec, label: int):
        super().__init__()
        self.decoder = decoder  # registered as a submodule when it is a module
        self.spec = spec
        self.label = int(label)

    @property
    def original_name(self) -> str:
        """Names the class (checkpoint fingerprints hash it with the weights)."""
        inner = getattr(self.decoder, "original_name", None) or type(self.decoder).__qualname__
        return f"{inner} at class {self.label} ({self.spec.format}, {self.spec.argument})"

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        labels = self.spec.labels(self.label, latents.shape[0], latents.device, latents.dtype)
        if self.spec.argument == POSITIONAL:
            return self.decoder(latents, labels)
        return self.decoder(latents, **{self.spec.argument: labels})


def bind_class(decoder: Any, spec: LabelSpec, label: int) -> ClassBoundDecoder:
    """``decoder`` as a decoder of the latents alone, at class ``label``."""
    if not 0 <= label < spec.num_classes:
        raise InputError(f"class {label} is outside 0..{spec.num_classes - 1}")
    return ClassBoundDecoder(decoder, spec, label)
