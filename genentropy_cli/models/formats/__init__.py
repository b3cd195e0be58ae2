"""Model formats: a registry of (detect, load) pairs, one module per format.

    @register_format
    def _my_format() -> ModelFormat: ...      # or register_format(ModelFormat(...))

``detect_format`` asks each registered format, in registration order (the most specific
first), whether a path is one of its files; ``load`` turns it into a ``LoadedModel``. Adding a
format is one module that registers itself here and is listed in ``FORMAT_MODULES``
(docs/extending.md, "A new model format").
"""

from __future__ import annotations

import importlib
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from genentropy_cli.errors import InputError
from genentropy_cli.models.loaded import LoadedModel

__all__ = ["FORMATS", "LoadRequest", "ModelFormat", "ModelSource", "detect_format", "format_named",
           "register_format", "supported_formats"]


@dataclass
class ModelSource:
    """The path a user named (a file, or a folder for folder formats), read lazily for detection."""

    path: Path

    @cached_property
    def is_dir(self) -> bool:
        return self.path.is_dir()

    @property
    def suffix(self) -> str:
        return self.path.suffix.lower()

    def head(self, size: int = 16) -> bytes:
        """The file's first ``size`` bytes (b"" for a folder)."""
        if self.is_dir:
            return b""
        with self.path.open("rb") as handle:
            return handle.read(size)

    @cached_property
    def zip_leaves(self) -> set[str] | None:
        """Names inside a zip archive less their top folder (None: not a zip)."""
        if self.is_dir or not zipfile.is_zipfile(self.path):
            return None
        try:
            with zipfile.ZipFile(self.path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            names = []
        return {name.split("/", 1)[-1] for name in names}


@dataclass(frozen=True)
class LoadRequest:
    """What the user said about how to load (``load_model``'s keywords)."""

    spec: dict | None = None
    """The spec file's content (``--spec`` or the sidecar), if any."""
    code_path: Sequence[str | Path] = ()
    trust_pickle: bool = False
    select: str | None = None
    class_map: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelFormat:
    """One file format: how to recognise its files and how to load them."""

    name: str
    description: str
    """How the format reads in lists of what genentropy loads, e.g. ``an ONNX graph (.onnx)``."""
    detect: Callable[[ModelSource], bool]
    load: Callable[[ModelSource, LoadRequest], LoadedModel]
    runs_code: bool = False
    """Loading runs code the file carries (TorchScript, torch.export, pickles): trusted sources only."""
    read_tree: Callable[[ModelSource, LoadRequest], Any] | None = None
    """For a tree of weights in which ``--select`` chooses a sub-model: the tree as it is stored
    (``contents.py`` lists its sub-models)."""
    folder: bool = False
    """Reads a folder rather than one file."""

    @property
    def selectable(self) -> bool:
        return self.read_tree is not None


FORMATS: dict[str, ModelFormat] = {}
"""The registered formats by name, in detection order."""

FORMAT_MODULES: tuple[str, ...] = ("safetensors_weights", "exported_program", "torchscript", "torch_save",
                                   "plain_pickle", "onnx_graph", "diffusers_folder", "biggan_folder")
"""The modules (of this package) that register the built-in formats, in detection order."""


def register_format(model_format: ModelFormat | Callable[[], ModelFormat]) -> Any:
    """Add a format (a ``ModelFormat``, or a function returning one: usable as a decorator)."""
    made = model_format() if callable(model_format) and not isinstance(model_format, ModelFormat) else model_format
    FORMATS[made.name] = made
    return model_format


def _load_builtin_formats() -> None:
    for module in FORMAT_MODULES:
        importlib.import_module(f"{__name__}.{module}")


def supported_formats() -> str:
    """Every format's description, for messages."""
    _load_builtin_formats()
    return ", ".join(model_format.description for model_format in FORMATS.values()) + ", or hf://owner/repo"


def format_named(name: str) -> ModelFormat:
    _load_builtin_formats()
    return FORMATS[name]


def detect_format(path: str | Path) -> ModelFormat:
    """The first registered format whose ``detect`` accepts ``path`` (content first; the
    extension only breaks ties)."""
    _load_builtin_formats()
    source = ModelSource(Path(path))
    for model_format in FORMATS.values():
        if model_format.folder == source.is_dir and model_format.detect(source):
            return model_format
    if source.is_dir:
        raise InputError(f"{path} is a folder genentropy cannot load: a diffusers model folder (config.json naming "
                         "its class, diffusion_pytorch_model.safetensors) or a BigGAN folder (config.json, "
                         "pytorch_model.bin); for one file give its path")
    raise InputError(f"{path} is not a model genentropy can load: expected {supported_formats()}")
