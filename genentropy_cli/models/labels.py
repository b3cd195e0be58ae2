"""A conditional decoder's label input, settled from flags, the spec file and the model's own
metadata (in that order, each part remembering where it came from), as the latent spec is.

    --num-classes K           label.num_classes    how many classes (makes the decoder conditional)
    --label-format F          label.format         index (int64 (B,)) or onehot (float (B, K))
    --label-arg A             label.argument       position (2nd positional argument) or a keyword
    --class-weights W         label.weights        uniform, w1,w2,... or a file of numbers
    --classes C               label.classes        the classes to estimate, e.g. 0,3,7
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from genentropy_cli.core.labels import LabelSpec
from genentropy_cli.defaults import MAX_NAMED_FILE_BYTES
from genentropy_cli.errors import InputError
from genentropy_cli.models.hub import is_hub_url
from genentropy_cli.models.loading import LoadedModel
from genentropy_cli.models.metadata import LABEL_KEYS
from genentropy_cli.models.specs import parse_yaml
from genentropy_cli.trust import USER, Namer, named_path, read_bounded, shown

LABEL_FLAGS: dict[str, str] = {"num_classes": "--num-classes", "format": "--label-format",
                               "argument": "--label-arg", "weights": "--class-weights", "classes": "--classes"}
"""The flag of each ``LabelSpec`` field."""

UNIFORM_WORDS = ("uniform", "none", "")
_WEIGHTS_HELP = "give uniform, a list such as 0.5,0.25,0.25, or a file of numbers (one per class)"


def _numbers(text: str) -> list[str]:
    return [piece for piece in re.split(r"[,\s\[\]()]+", text.strip()) if piece]  # also "[1, 2]" (a config list)


def _floats(pieces: Sequence[Any]) -> tuple[float, ...] | None:
    try:
        return tuple(float(piece) for piece in pieces)
    except (TypeError, ValueError, OverflowError):
        return None


def _weights_file(value: str, namer: Namer) -> tuple[float, ...]:
    """The numbers in a class-weights file, read by the trust rule (``trust.named_path``: you may
    name any file, a spec one beside it, a model's metadata none; at most ``MAX_NAMED_FILE_BYTES``).
    What the file holds is never echoed: a refusal names the file and the position."""
    path = named_path(value, namer, "the class weights", "--class-weights")
    if not path.exists() and namer.kind == USER:
        raise InputError(f"--class-weights {shown(value)} is neither a list of numbers nor a file; {_WEIGHTS_HELP}")
    data = read_bounded(path, "class weights file", MAX_NAMED_FILE_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"class weights file {path} is not text; {_WEIGHTS_HELP}") from None
    try:
        loaded = parse_yaml(text, str(path))  # a YAML/JSON list, aliases bounded
    except InputError:
        loaded = None
    pieces = [piece for piece in loaded] if isinstance(loaded, list) else _numbers(text)
    weights = _floats(pieces)
    if weights is None:
        bad = next(index for index, piece in enumerate(pieces) if _floats([piece]) is None)
        raise InputError(f"class weights file {path} holds something other than a number at item {bad} "
                         f"(counting from 0); {_WEIGHTS_HELP}")
    return weights


def parse_class_weights(value: Any, namer: Namer | None = None) -> tuple[float, ...] | None:
    """``uniform`` -> None; ``"1,2,1"`` or a list -> floats; anything else a string holds names a
    file of numbers (YAML/JSON list, or numbers separated by commas, spaces or newlines), read by
    the trust rule for whoever named it (``namer``; default: you, relative to the working folder)."""
    namer = namer or Namer.user()
    if value is None or (isinstance(value, str) and value.strip().lower() in UNIFORM_WORDS):
        return None
    if isinstance(value, str):
        listed = _floats(_numbers(value))
        if listed is not None and not (namer.kind == USER and Path(value).is_file()):
            return listed
        return _weights_file(value, namer)
    weights = _floats(value) if isinstance(value, (list, tuple)) else None
    if weights is None:
        named = "--class-weights" if namer.kind == USER else f"the class weights in {namer.source}"
        raise InputError(f"{named} {shown(value)} is not a list of numbers; {_WEIGHTS_HELP}")
    return weights


def weights_namer(loaded: LoadedModel, origin: str) -> Namer:
    """Who named the class weights: you (a flag), the spec file (``--spec`` or the sidecar), or the
    model itself (its metadata, or a Hub repository's spec: embedded, no file)."""
    if origin == "flag":
        return Namer.user()
    source = loaded.spec_source
    if origin == "spec" and source is not None and not is_hub_url(source):
        return Namer.spec_file(source)
    where = source if origin == "spec" and source else f"the metadata of {loaded.path}"
    return Namer.embedded(where)


def parse_classes(value: Any) -> tuple[int, ...] | None:
    """``"0,3,7"`` or a list -> class numbers (checked against the class count by ``LabelSpec``)."""
    if value is None:
        return None
    pieces = _numbers(value) if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else [value]
    try:
        return tuple(int(piece) for piece in pieces)
    except (TypeError, ValueError):
        raise InputError(f"--classes takes class numbers such as 0,3,7, got {value!r}") from None


def parse_num_classes(value: Any) -> int:
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise InputError(f"--num-classes takes a positive integer, got {value!r}") from None
    if count < 1 or isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise InputError(f"--num-classes takes a positive integer, got {value!r}")
    return count


_PARSERS = {"num_classes": parse_num_classes, "format": lambda value: str(value).strip().lower(),
            "argument": lambda value: str(value).strip(), "weights": parse_class_weights, "classes": parse_classes}


def resolve_label_spec(loaded: LoadedModel, *, num_classes: Any = None, label_format: Any = None,
                       label_arg: Any = None, class_weights: Any = None,
                       classes: Any = None) -> tuple[LabelSpec | None, dict]:
    """The label spec (None: the decoder is not conditional) and where each part came from
    (flag, spec, metadata, program, default)."""
    flags = {"num_classes": num_classes, "format": label_format, "argument": label_arg,
             "weights": class_weights, "classes": classes}
    values, origin = {}, {}
    for key in LABEL_KEYS:
        if flags[key] is not None:
            values[key], origin[key] = flags[key], "flag"
        elif loaded.metadata.get(f"label_{key}") is not None:
            values[key] = loaded.metadata[f"label_{key}"]
            origin[key] = loaded.origins.get(f"label_{key}", "metadata")
    if "num_classes" not in values:
        if not values:
            return None, {}
        described = ", ".join(LABEL_FLAGS[key] if origin[key] == "flag" else f"label {key} from {origin[key]}"
                              for key in values)
        raise InputError(f"{loaded.path} takes a class label ({described}) but its number of classes is not known; "
                         "give --num-classes K")
    parsed = {key: _PARSERS[key](value) for key, value in values.items() if key != "weights"}
    if "weights" in values:
        parsed["weights"] = parse_class_weights(values["weights"], weights_namer(loaded, origin["weights"]))
    for key in LABEL_KEYS:
        origin.setdefault(key, "default")
    try:
        return LabelSpec(**parsed), origin
    except InputError as error:
        raise InputError(f"{loaded.path}: {error}") from None
