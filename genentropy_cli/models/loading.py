"""Loading decoders from disk, with what they record about their latent space and output.

Formats, chosen by content (the extension only breaks ties):

- TorchScript archives (``.pt``, ``.pth``, ``.ts``; scripted or traced), optionally carrying a
  ``genentropy.json`` extra file (``save_torchscript``) with ``latent_shape`` and
  ``latent_distribution``;
- torch.export programs (``.pt2``, ``exported.py``);
- safetensors weights plus a spec (``specs.py``): embedded in the file's metadata, a sidecar
  ``model.yaml`` beside it, or ``--spec FILE``;
- ``torch.save`` state dicts plus a spec (``pickles.py``); whole pickled modules only
  with ``trust_pickle``.

What the model says about its latent and output is layered: embedded metadata, then a spec
file (sidecar or ``--spec``), then flags (``resolve_latent_spec``); each entry remembers
where it came from.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from genentropy_cli.core.latents import LatentSpec, make_latent_spec, parse_distribution, shape_of
from genentropy_cli.errors import InputError, first_line
from genentropy_cli.models.exported import PT2_SUFFIX, load_exported
from genentropy_cli.models.metadata import METADATA_FILE, metadata_record, parse_metadata
from genentropy_cli.models.pickles import PICKLE_WARNING, load_torch_save
from genentropy_cli.models.specs import (
    build_for_weights,
    find_sidecar,
    has_architecture,
    read_safetensors,
    read_spec_file,
    select_state_dict,
    spec_metadata,
)
from genentropy_cli.models.usercode import code_directories
from genentropy_cli.run.files import input_file

TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts")

SUPPORTED_FORMATS = (
    "TorchScript (.pt, .pth, .ts), a torch.export program (.pt2), safetensors weights with a spec "
    "(.safetensors), or a torch.save state dict with a spec (.pt, .pth)"
)

FORMATS_RUNNING_CODE = ("torchscript", "torch.export", "pickle")
"""Formats whose files carry code: load them only from sources you trust."""


@dataclass
class LoadedModel:
    """A decoder with what its files say about it.

    ``metadata`` holds latent_shape / latent_distribution / output_range / output_select,
    ``origins`` says for each where it came from (metadata, program, spec), ``spec`` is the
    architecture spec that built the decoder (None for formats that carry their code),
    ``spec_file`` the content of the spec file used (``--spec`` or sidecar), if any.
    """

    decoder: Any
    path: str
    format: str
    metadata: dict = field(default_factory=dict)
    origins: dict = field(default_factory=dict)
    spec: dict | None = None
    spec_source: str | None = None
    warnings: list[str] = field(default_factory=list)
    spec_file: dict | None = None

    def describe(self) -> dict:
        description = {"path": self.path, "format": self.format}
        if self.spec_source is not None:
            description["spec_source"] = self.spec_source
        return description

    def layer(self, entries: dict, origin: str) -> None:
        """Record metadata ``entries`` from ``origin``, over what is already there."""
        for key, value in entries.items():
            self.metadata[key] = value
            self.origins[key] = origin


def _looks_like_safetensors(file: Path) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON header."""
    with file.open("rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100 * 1024**2


def detect_format(file: Path) -> str:
    """``safetensors``, ``torchscript``, ``torch.export`` or ``checkpoint`` (a torch.save pickle)."""
    if file.suffix == ".safetensors" or _looks_like_safetensors(file):
        return "safetensors"
    if zipfile.is_zipfile(file):
        try:
            with zipfile.ZipFile(file) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            names = []
        leaves = {name.split("/", 1)[-1] for name in names}
        if "archive_format" in leaves or any(name.startswith("models/") for name in leaves):
            return "torch.export"
        if "constants.pkl" in leaves or any(name.startswith("code/") for name in leaves):
            return "torchscript"
        if "data.pkl" in leaves:
            return "checkpoint"
        if file.suffix == PT2_SUFFIX:
            return "torch.export"
        if file.suffix in TORCHSCRIPT_SUFFIXES:
            return "torchscript"  # its loader names what is wrong with the archive
    else:
        with file.open("rb") as handle:
            if handle.read(1) == b"\x80":  # a pickle (torch.save's legacy format)
                return "checkpoint"
    raise InputError(f"{file} is not a model genentropy can load: expected {SUPPORTED_FORMATS}")


def load_model(path: str | Path, *, spec: str | Path | None = None, code_path: Sequence[str | Path] = (),
               trust_pickle: bool = False) -> LoadedModel:
    """Load a decoder, choosing the format by content.

    ``spec``: a spec file (YAML) to use instead of a sidecar ``<model>.yaml``; its latent and
    output sections apply to every format, its architecture to weights-only formats.
    ``code_path``: directories to import ``import:`` architectures (and trusted pickles) from.
    ``trust_pickle``: load a whole pickled ``nn.Module`` (runs code from the file).
    """
    file = input_file(path, "model file")
    assert file is not None
    code_directories(code_path)  # a --code-path that is not a directory is named even where no import needs it
    spec_file = Path(spec) if spec is not None else find_sidecar(file)
    file_spec = read_spec_file(spec_file) if spec_file is not None else None
    kind = detect_format(file)
    if kind == "safetensors":
        loaded = load_safetensors_model(file, file_spec, code_path)
    elif kind == "torchscript":
        loaded = load_torchscript(file)
    elif kind == "torch.export":
        decoder, metadata, origins = load_exported(file)
        loaded = LoadedModel(decoder, str(file), "torch.export", metadata, origins)
    else:
        loaded = load_torch_save_model(file, file_spec, code_path, trust_pickle)
    if file_spec is not None:
        loaded.layer(spec_metadata(file_spec), "spec")
        loaded.spec_source, loaded.spec_file = str(spec_file), file_spec
        if has_architecture(file_spec) and loaded.spec is not file_spec:
            loaded.warnings.append(f"{file} carries its own code: the architecture in {spec_file} is used only by convert")
    return loaded


def _missing_spec(file: Path, what: str) -> InputError:
    return InputError(
        f"{file} holds {what} but no spec saying which architecture they belong to; put {file.with_suffix('.yaml').name} "
        "beside it or pass --spec FILE (architecture or import, kwargs, latent)"
    )


def load_safetensors_model(file: Path, file_spec: dict | None = None,
                           code_path: Sequence[str | Path] = ()) -> LoadedModel:
    """safetensors weights, built from the spec file if it names an architecture, else the embedded spec."""
    tensors, embedded = read_safetensors(file)
    spec = file_spec if has_architecture(file_spec) else embedded
    if not has_architecture(spec):
        raise _missing_spec(file, "weights")
    assert spec is not None
    loaded = LoadedModel(build_for_weights(spec, tensors, str(file), code_path), str(file), "safetensors", spec=spec)
    if embedded is not None:
        loaded.layer(spec_metadata(embedded), "metadata")
    if spec is embedded:
        loaded.spec_source = "embedded"
    return loaded


def load_torch_save_model(file: Path, file_spec: dict | None = None, code_path: Sequence[str | Path] = (),
                          trust_pickle: bool = False) -> LoadedModel:
    """A torch.save state dict built with the spec's architecture, or (trusted) a pickled module."""
    content, trusted = load_torch_save(file, trust_pickle, code_path)
    if isinstance(content, torch.nn.Module):
        loaded = LoadedModel(content, str(file), "pickle")
        loaded.warnings.append(PICKLE_WARNING.format(file=file))
        return loaded
    if not has_architecture(file_spec):
        raise _missing_spec(file, "a state dict")
    assert file_spec is not None
    tensors = select_state_dict(content, file_spec, str(file))
    decoder = build_for_weights(file_spec, tensors, str(file), code_path)
    loaded = LoadedModel(decoder, str(file), "state-dict", spec=file_spec)
    if trusted:
        loaded.warnings.append(PICKLE_WARNING.format(file=file))
    return loaded


def load_torchscript(file: Path) -> LoadedModel:
    extra_files = {METADATA_FILE: ""}
    try:
        module = torch.jit.load(str(file), map_location="cpu", _extra_files=extra_files)
    except Exception as error:  # corrupt archive, or a zip that is not TorchScript
        raise InputError(f"{file} is not a loadable TorchScript model ({first_line(error)})") from None
    metadata = parse_metadata(extra_files[METADATA_FILE], file)
    return LoadedModel(module, str(file), "torchscript", metadata, {key: "metadata" for key in metadata})


def save_torchscript(module: torch.nn.Module | torch.jit.ScriptModule, path: str | Path,
                     latent: LatentSpec | None = None, extra: dict | None = None,
                     example: torch.Tensor | None = None) -> Path:
    """Save ``module`` as TorchScript (scripted, or traced on ``example``) recording its latent spec."""
    if isinstance(module, torch.jit.ScriptModule):
        scripted = module
    elif example is not None:
        scripted = torch.jit.trace(module.eval(), example)
    else:
        scripted = torch.jit.script(module.eval())
    target = Path(path)
    torch.jit.save(scripted, str(target), _extra_files={METADATA_FILE: json.dumps(metadata_record(latent, extra))})
    return target


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
