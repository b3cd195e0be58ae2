"""Loading decoders from disk, with what they record about their latent space and output.

The formats are a registry (``formats/``: one module per format, each a ``detect`` and a ``load``),
asked in order, content first (the extension only breaks ties):

- safetensors weights plus a spec (``specs.py``): embedded in the file's metadata, a sidecar
  ``model.yaml`` beside it, or ``--spec FILE``;
- torch.export programs (``.pt2``) and TorchScript archives (``.pt``, ``.pth``, ``.ts``),
  optionally carrying a ``genentropy.json`` extra file (``save_torchscript``);
- ``torch.save`` state dicts plus a spec (``pickles.py``); whole pickled modules, and plain
  ``pickle.dump`` files such as StyleGAN snapshots, only with ``trust_pickle``; a sub-model of a
  training checkpoint chosen by ``select`` or the spec's ``weights:`` section (``selection.py``);
- ONNX graphs, converted to torch modules at load (``onnx_models.py``, optional extra);
- folders: a diffusers model (``config.json`` + safetensors) or a pytorch-pretrained-biggan BigGAN;
- ``hf://owner/repo[/file][@revision]``: any of these from the Hugging Face Hub or its local
  cache (``hub.py``, optional extra).

What the model says about its latent, label, call and output is layered: the conventions of the
code that wrote it (``conventions.py``), then embedded metadata, then a spec file (sidecar or
``--spec``), then flags (``resolve_latent_spec``, ``resolve.py``); each entry remembers where it
came from.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Sequence

from genentropy_cli.core.latents import LatentSpec, make_latent_spec, parse_distribution, shape_of
from genentropy_cli.errors import InputError
from genentropy_cli.models.conventions import apply_conventions
from genentropy_cli.models.formats import FORMATS, LoadRequest, ModelSource, format_named, supported_formats
from genentropy_cli.models.formats import detect_format as detect_model_format
from genentropy_cli.models.formats.safetensors_weights import load_safetensors
from genentropy_cli.models.formats.torchscript import load_torchscript, save_torchscript
from genentropy_cli.models.hub import fetch_hub_model, is_hub_url
from genentropy_cli.models.loaded import LoadedModel
from genentropy_cli.models.pickles import parse_class_map
from genentropy_cli.models.specs import (
    architecture_latent_metadata,
    find_sidecar,
    has_architecture,
    read_spec_file,
    spec_metadata,
)
from genentropy_cli.models.usercode import code_directories
from genentropy_cli.run.files import input_file

__all__ = ["FORMATS_RUNNING_CODE", "LoadedModel", "SELECTABLE_FORMATS", "detect_format", "load_model",
           "load_safetensors_model", "load_torchscript", "resolve_latent_spec", "save_torchscript"]

FOLDER_SPEC_FILE = "genentropy.yaml"
"""A folder model's spec file, inside the folder (as a Hub repository's)."""


def _format_names(predicate) -> tuple[str, ...]:
    format_named("safetensors")  # the built-in formats registered
    return tuple(name for name, model_format in FORMATS.items() if predicate(model_format))


SELECTABLE_FORMATS = _format_names(lambda model_format: model_format.selectable)
"""Formats holding a tree of weights, in which ``--select`` chooses a sub-model."""

FORMATS_RUNNING_CODE = _format_names(lambda model_format: model_format.runs_code)
"""Formats whose files carry code: load them only from sources you trust."""

SUPPORTED_FORMATS = supported_formats()


def detect_format(path: str | Path) -> str:
    """The name of the registered format that recognises ``path`` (``formats.detect_format``)."""
    return detect_model_format(path).name


def model_path(path: str | Path) -> Path:
    """``path`` if it is a readable file or a folder; else a one-line InputError."""
    folder = Path(path)
    try:
        if stat.S_ISDIR(folder.stat().st_mode):
            return folder
    except OSError:
        pass
    file = input_file(folder, "model file")
    assert file is not None
    return file


def _spec_file(target: Path) -> Path | None:
    if target.is_dir():
        inside = target / FOLDER_SPEC_FILE
        return inside if inside.is_file() else None
    return find_sidecar(target)


def load_model(path: str | Path, *, spec: str | Path | None = None, code_path: Sequence[str | Path] = (),
               trust_pickle: bool = False, select: str | None = None, class_map: Sequence[str] = ()) -> LoadedModel:
    """Load a decoder, choosing the format by content.

    ``path``: a file, a model folder, or ``hf://owner/repo[/file][@revision]`` (``hub.py``).
    ``spec``: a spec file (YAML) to use instead of a sidecar ``<model>.yaml``; its latent and
    output sections apply to every format, its architecture to weights-only formats.
    ``code_path``: directories to import ``import:`` architectures (and trusted pickles) from.
    ``trust_pickle``: load a whole pickled ``nn.Module`` or a plain pickle (runs code from the file).
    ``select``: the sub-model inside a checkpoint (``selection.select_submodel``).
    ``class_map``: ``OLD=NEW`` renames of the classes a trusted pickle names (``pickles.parse_class_map``).
    """
    renamed = parse_class_map(class_map)
    remote = fetch_hub_model(str(path)) if is_hub_url(path) else None
    target = model_path(remote.file if remote is not None else path)
    code_directories(code_path)  # a --code-path that is not a directory is named even where no import needs it
    spec_file = Path(spec) if spec is not None else (remote.spec_file if remote is not None else _spec_file(target))
    file_spec = read_spec_file(spec_file) if spec_file is not None else None
    if remote is not None:
        file_spec = remote.complete_spec(file_spec)
    model_format = detect_model_format(target)
    if select is not None and not model_format.selectable:
        raise InputError(f"--select chooses a sub-model inside a checkpoint, pickle or safetensors file; {path} is "
                         f"{model_format.name}: drop --select")
    request = LoadRequest(file_spec, tuple(code_path), trust_pickle, select, renamed)
    try:
        loaded = model_format.load(ModelSource(target), request)
    except InputError as error:
        if remote is None:
            raise
        raise InputError(remote.in_terms_of_the_repository(str(error))) from None
    if remote is not None:
        loaded.path, loaded.location = remote.url, str(target)
    apply_conventions(loaded)
    if file_spec is not None:
        loaded.layer(spec_metadata(file_spec), "spec")
        hub_label = remote.spec_label if remote is not None and spec is None else None
        loaded.spec_source = hub_label or str(spec_file)
        loaded.spec_file = file_spec
        if has_architecture(file_spec) and loaded.spec is not file_spec:
            loaded.warnings.append(f"{loaded.path} carries its own code: the architecture in {loaded.spec_source} "
                                   "is used only by convert")
    if "latent_shape" not in loaded.metadata:  # a built-in architecture's latent_dim
        loaded.layer(architecture_latent_metadata(loaded.spec or file_spec), "architecture")
    return loaded


def load_safetensors_model(file: Path, file_spec: dict | None = None, code_path: Sequence[str | Path] = (),
                           select: str | None = None) -> LoadedModel:
    """safetensors weights, built from the spec file if it names an architecture, else the embedded spec."""
    return load_safetensors(ModelSource(Path(file)), LoadRequest(file_spec, tuple(code_path), select=select))


def resolve_latent_spec(
    loaded: LoadedModel,
    latent_dim: int | None = None,
    latent_shape: tuple[int, ...] | None = None,
    latent_distribution: str | None = None,
) -> tuple[LatentSpec, dict]:
    """Latent spec from flags, else the model's spec file or metadata; also says where each
    part came from (flag, spec, metadata, program, default)."""
    if latent_dim is not None and latent_shape is not None:
        raise InputError("give either --latent-dim or --latent-shape, not both")
    if latent_dim is not None and latent_dim <= 0:
        raise InputError(f"--latent-dim must be positive, got {latent_dim}")
    origin: dict = {}
    if latent_shape is not None:
        shape, origin["shape"] = tuple(latent_shape), "flag"
    elif latent_dim is not None:
        shape, origin["shape"] = (int(latent_dim),), "flag"
    elif loaded.metadata.get("latent_shape"):
        shape = shape_of(loaded.metadata["latent_shape"], f"the latent shape that {loaded.path} records")
        origin["shape"] = loaded.origins.get("latent_shape", "metadata")
    else:
        raise InputError(
            f"{loaded.path} does not record its latent size; pass --latent-dim N or --latent-shape A,B,C"
        )
    if latent_distribution is not None:
        distribution, origin["distribution"] = parse_distribution(latent_distribution), "flag"
    elif loaded.metadata.get("latent_distribution"):
        distribution = parse_distribution(loaded.metadata["latent_distribution"])
        origin["distribution"] = loaded.origins.get("latent_distribution", "metadata")
    else:
        distribution, origin["distribution"] = parse_distribution("normal"), "default"
    return make_latent_spec(shape, distribution), origin
