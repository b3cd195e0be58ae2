"""Loading decoders from disk, with what they record about their latent space and output.

Formats, chosen by content (the extension only breaks ties):

- TorchScript archives (``.pt``, ``.pth``, ``.ts``; scripted or traced), optionally carrying a
  ``genentropy.json`` extra file (``save_torchscript``) with ``latent_shape`` and
  ``latent_distribution``;
- torch.export programs (``.pt2``, ``exported.py``);
- safetensors weights plus a spec (``specs.py``): embedded in the file's metadata, a sidecar
  ``model.yaml`` beside it, or ``--spec FILE``;
- ``torch.save`` state dicts plus a spec (``pickles.py``); whole pickled modules only
  with ``trust_pickle``; a sub-model of a training checkpoint chosen by ``select`` or the
  spec's ``weights:`` section (``selection.py``);
- ONNX graphs, converted to torch modules at load (``onnx_models.py``, optional extra);
- ``hf://owner/repo[/file][@revision]``: any of these from the Hugging Face Hub or its local
  cache (``hub.py``, optional extra).

What the model says about its latent and output is layered: embedded metadata, then a spec
file (sidecar or ``--spec``), then flags (``resolve_latent_spec``); each entry remembers
where it came from.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from genentropy_cli.core.labels import LabelSpec
from genentropy_cli.core.latents import LatentSpec, make_latent_spec, parse_distribution, shape_of
from genentropy_cli.errors import InputError, first_line
from genentropy_cli.models.exported import PT2_SUFFIX, load_exported
from genentropy_cli.models.hub import fetch_hub_model, is_hub_url
from genentropy_cli.models.metadata import METADATA_FILE, metadata_record, parse_metadata
from genentropy_cli.models.onnx_models import ONNX_SUFFIX, load_onnx, looks_like_onnx
from genentropy_cli.models.pickles import PICKLE_WARNING, load_torch_save, parse_class_map
from genentropy_cli.models.selection import find_candidates, matching_candidates, select_submodel, spec_weights
from genentropy_cli.models.specs import (
    architecture_latent_metadata,
    build_for_weights,
    build_from_spec,
    find_sidecar,
    has_architecture,
    read_safetensors,
    read_spec_file,
    spec_metadata,
)
from genentropy_cli.models.usercode import code_directories
from genentropy_cli.run.files import input_file

TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts")

SUPPORTED_FORMATS = (
    "TorchScript (.pt, .pth, .ts), a torch.export program (.pt2), safetensors weights with a spec "
    "(.safetensors), a torch.save state dict or checkpoint with a spec (.pt, .pth, .ckpt), an ONNX graph (.onnx), "
    "or hf://owner/repo"
)
SELECTABLE_FORMATS = ("safetensors", "checkpoint")
"""Formats holding a tree of weights, in which ``--select`` chooses a sub-model."""

FORMATS_RUNNING_CODE = ("torchscript", "torch.export", "pickle")
"""Formats whose files carry code: load them only from sources you trust."""


@dataclass
class LoadedModel:
    """A decoder with what its files say about it.

    ``metadata`` holds latent_shape / latent_distribution / output_range / output_select / label_*,
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
    selection: dict | None = None
    location: str | None = None

    def describe(self) -> dict:
        description = {"path": self.path, "format": self.format}
        if self.location is not None:
            description["file"] = self.location
        if self.spec_source is not None:
            description["spec_source"] = self.spec_source
        if self.selection:
            description["selected"] = dict(self.selection)
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
    """``safetensors``, ``torchscript``, ``torch.export``, ``checkpoint`` (a torch.save pickle) or ``onnx``."""
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
            head = handle.read(8)
        if head[:1] == b"\x80":  # a pickle (torch.save's legacy format)
            return "checkpoint"
        if file.suffix == ONNX_SUFFIX or looks_like_onnx(head):
            return "onnx"
    raise InputError(f"{file} is not a model genentropy can load: expected {SUPPORTED_FORMATS}")


def load_model(path: str | Path, *, spec: str | Path | None = None, code_path: Sequence[str | Path] = (),
               trust_pickle: bool = False, select: str | None = None, class_map: Sequence[str] = ()) -> LoadedModel:
    """Load a decoder, choosing the format by content.

    ``path``: a file, or ``hf://owner/repo[/file][@revision]`` (``hub.py``).
    ``spec``: a spec file (YAML) to use instead of a sidecar ``<model>.yaml``; its latent and
    output sections apply to every format, its architecture to weights-only formats.
    ``code_path``: directories to import ``import:`` architectures (and trusted pickles) from.
    ``trust_pickle``: load a whole pickled ``nn.Module`` (runs code from the file).
    ``select``: the sub-model inside a checkpoint (``selection.select_submodel``).
    ``class_map``: ``OLD=NEW`` renames of the classes a trusted pickle names (``pickles.parse_class_map``).
    """
    renamed = parse_class_map(class_map)
    remote = fetch_hub_model(str(path)) if is_hub_url(path) else None
    file = input_file(remote.file if remote is not None else path, "model file")
    assert file is not None
    code_directories(code_path)  # a --code-path that is not a directory is named even where no import needs it
    spec_file = Path(spec) if spec is not None else (remote.spec_file if remote is not None else find_sidecar(file))
    file_spec = read_spec_file(spec_file) if spec_file is not None else None
    if remote is not None:
        file_spec = remote.complete_spec(file_spec)
    kind = detect_format(file)
    if select is not None and kind not in SELECTABLE_FORMATS:
        raise InputError(f"--select chooses a sub-model inside a checkpoint or safetensors file; {path} is {kind}: "
                         "drop --select")
    try:
        loaded = _load_file(file, kind, file_spec, code_path, trust_pickle, select, renamed)
    except InputError as error:
        if remote is None:
            raise
        raise InputError(remote.in_terms_of_the_repository(str(error))) from None
    if remote is not None:
        loaded.path, loaded.location = remote.url, str(file)
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


def _load_file(file: Path, kind: str, file_spec: dict | None, code_path: Sequence[str | Path], trust_pickle: bool,
               select: str | None, class_map: dict[str, str]) -> LoadedModel:
    if kind == "safetensors":
        return load_safetensors_model(file, file_spec, code_path, select)
    if kind == "torchscript":
        return load_torchscript(file)
    if kind == "torch.export":
        decoder, metadata, origins = load_exported(file)
        return LoadedModel(decoder, str(file), "torch.export", metadata, origins)
    if kind == "onnx":
        decoder, metadata, origins = load_onnx(file)
        return LoadedModel(decoder, str(file), "onnx", metadata, origins)
    return load_torch_save_model(file, file_spec, code_path, trust_pickle, select, class_map)


def _fit_hint(spec: dict, content: Any, code_path: Sequence[str | Path], selection: Mapping | None) -> str:
    """'; the tensors at X fit it: pass --select X ...' when a sub-model of the checkpoint
    ``content`` has exactly the names and shapes of the spec's architecture, else ''."""
    try:
        with torch.device("meta"):  # names and shapes only: nothing allocated, however large the kwargs
            expected = build_from_spec(spec, code_path).state_dict()
    except Exception:  # code that cannot run on the meta device: no hint rather than a real allocation
        return ""
    fits = matching_candidates(content, expected, str((selection or {}).get("strip_prefix") or ""))
    if not fits:
        return ""
    if not fits[0].select:
        return "; the whole file fits the spec's architecture: drop --select (and the spec's weights: key, prefix)"
    return (f"; the tensors at {fits[0].select} fit the spec's architecture: pass --select {fits[0].select} "
            f"(or weights: {spec_weights(fits[0])} in the spec)")


def _build(spec: dict, tensors: dict[str, torch.Tensor], source: str, code_path: Sequence[str | Path],
           content: Any = None, selection: Mapping | None = None):
    """The spec's architecture with ``tensors`` loaded; when they do not fit and another
    sub-model of the checkpoint ``content`` does, the refusal names the selection that fits."""
    try:
        return build_for_weights(spec, tensors, source, code_path)
    except InputError as error:
        hint = "" if content is None else _fit_hint(spec, content, code_path, selection)
        if not hint:
            raise
        raise InputError(f"{error}{hint}") from None


def _select(content: Any, spec: dict | None, select: str | None, source: str,
            code_path: Sequence[str | Path]) -> tuple[Any, dict]:
    """``selection.select_submodel``; where the file holds several sub-models and one fits the
    spec's architecture, the refusal names it."""
    try:
        return select_submodel(content, (spec or {}).get("weights"), select, source)
    except InputError as error:
        hint = _fit_hint(spec, content, code_path, (spec or {}).get("weights")) if has_architecture(spec) else ""
        if not hint:
            raise
        raise InputError(f"{error}{hint}") from None


def _missing_spec(file: Path, what: str) -> InputError:
    choose = (f", with weights: naming its sub-model (`genentropy inspect {file}` lists them and the spec lines "
              "for each)" if what == "a training checkpoint" else "")
    return InputError(
        f"{file} holds {what} but no spec saying which architecture the weights belong to; put "
        f"{file.with_suffix('.yaml').name} beside it or pass --spec FILE (architecture or import, kwargs, latent){choose}"
    )


def load_safetensors_model(file: Path, file_spec: dict | None = None, code_path: Sequence[str | Path] = (),
                           select: str | None = None) -> LoadedModel:
    """safetensors weights, built from the spec file if it names an architecture, else the embedded spec."""
    tensors, embedded = read_safetensors(file)
    spec = file_spec if has_architecture(file_spec) else embedded
    if not has_architecture(spec):
        raise _missing_spec(file, "weights")
    assert spec is not None
    chosen, selection = _select(tensors, spec, select, str(file), code_path)
    decoder = _build(spec, chosen, str(file), code_path, tensors, selection)
    loaded = LoadedModel(decoder, str(file), "safetensors", spec=spec, selection=selection)
    if embedded is not None:
        loaded.layer(spec_metadata(embedded), "metadata")
    if spec is embedded:
        loaded.spec_source = "embedded"
    return loaded


def load_torch_save_model(file: Path, file_spec: dict | None = None, code_path: Sequence[str | Path] = (),
                          trust_pickle: bool = False, select: str | None = None,
                          class_map: dict[str, str] | None = None) -> LoadedModel:
    """A torch.save state dict (or the checkpoint's selected sub-model) built with the spec's
    architecture, or (trusted) a pickled module."""
    content, trusted = load_torch_save(file, trust_pickle, code_path, class_map)
    if isinstance(content, torch.nn.Module) and select is None:
        chosen, selection = content, {}
    else:
        try:
            chosen, selection = _select(content, file_spec, select, str(file), code_path)
        except InputError:
            if has_architecture(file_spec) or select is not None or any(
                    candidate.kind == "module" for candidate in find_candidates(content)):
                raise
            raise _missing_spec(file, "a training checkpoint") from None
    if isinstance(chosen, torch.nn.Module):
        loaded = LoadedModel(chosen, str(file), "pickle", selection=selection)
        loaded.warnings.append(PICKLE_WARNING.format(file=file))
        return loaded
    if not has_architecture(file_spec):
        raise _missing_spec(file, "a state dict")
    assert file_spec is not None
    decoder = _build(file_spec, chosen, str(file), code_path, content, selection)
    loaded = LoadedModel(decoder, str(file), "state-dict", spec=file_spec, selection=selection)
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
                     example: torch.Tensor | None = None, label: LabelSpec | None = None) -> Path:
    """Save ``module`` as TorchScript (scripted, or traced on ``example``) recording its latent
    spec (and with ``label`` a conditional decoder's label input, traced with a positional label)."""
    if isinstance(module, torch.jit.ScriptModule):
        scripted = module
    elif example is not None:
        inputs = example if label is None else (
            example, label.labels(label.chosen[0], example.shape[0], example.device, example.dtype))
        scripted = torch.jit.trace(module.eval(), inputs)
    else:
        scripted = torch.jit.script(module.eval())
    target = Path(path)
    record = metadata_record(latent, extra, label)
    torch.jit.save(scripted, str(target), _extra_files={METADATA_FILE: json.dumps(record)})
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
