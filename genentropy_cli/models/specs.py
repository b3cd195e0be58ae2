"""Model specs: what builds a decoder from weights, and self-describing safetensors files.

A spec is a small mapping (YAML or JSON):

    architecture: infogan-mnist          # a built-in name (architectures.ARCHITECTURES)
    # import: mypkg.models:Generator     # ...or user code by import path (not both)
    kwargs: {latent_dim: 62, width: 0.25}
    latent: {shape: [62], distribution: uniform}
    label: {num_classes: 10, format: onehot, argument: c}  # a conditional decoder's label (optional)
    output: {range: [-1, 1], select: 0}  # optional output transform (transforms.py)
    call: {method: decode, kwargs: {noise_mode: const}}  # optional: how the decoder is called (calls.py)
    weights: {key: state_dict, prefix: "generator."}  # optional: the sub-model in a checkpoint (selection.py)

It comes from a file beside the weights (``model.yaml`` next to ``model.safetensors``), from
``--spec FILE``, or embedded: ``save_safetensors`` writes it as JSON in the safetensors
``__metadata__`` (whose values must be strings) under ``genentropy_spec``, so one file
describes itself. A built-in architecture runs no code from the spec; ``import:`` runs the
named Python module, so use it only with code you trust.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from genentropy_cli.core.latents import shape_of
from genentropy_cli.defaults import MAX_SMALL_FILE_BYTES
from genentropy_cli.errors import InputError, first_line
from genentropy_cli.models.architectures import ARCHITECTURES
from genentropy_cli.models.calls import CALL_KEYS, call_metadata
from genentropy_cli.models.metadata import LABEL_KEYS, label_metadata
from genentropy_cli.models.selection import SELECTION_KEYS
from genentropy_cli.models.usercode import check_import_target, import_class
from genentropy_cli.trust import read_bounded

SPEC_METADATA_KEY = "genentropy_spec"
SPEC_KEYS: tuple[str, ...] = ("architecture", "import", "kwargs", "latent", "label", "output", "weights", "call",
                              "description")
LATENT_KEYS: tuple[str, ...] = ("shape", "distribution")
OUTPUT_KEYS: tuple[str, ...] = ("range", "select")
WEIGHTS_KEYS: tuple[str, ...] = SELECTION_KEYS
SIDECAR_SUFFIXES: tuple[str, ...] = (".yaml", ".yml")


# --------------------------------------------------------------------------- the spec itself


def validate_spec(spec: Any, source: str = "the spec", strict: bool = True) -> dict:
    """Check a spec's structure (not yet its architecture); returns it as a plain dict.

    ``strict`` (spec files people write) refuses unknown keys, which are usually typos; an
    embedded spec written by a tool may carry more (training details), which are kept unread.
    """
    if not isinstance(spec, Mapping):
        raise InputError(f"{source} must be a mapping with keys such as architecture, kwargs, latent; "
                         f"got {type(spec).__name__}")
    spec = dict(spec)
    if strict:
        _reject_unknown(spec, SPEC_KEYS, source)
    if "architecture" in spec and "import" in spec:
        raise InputError(f"{source} names both architecture and import; keep one")
    if "architecture" in spec and not isinstance(spec["architecture"], str):
        raise InputError(f"{source}: architecture takes one name such as mlp, got {spec['architecture']!r}")
    if "import" in spec:
        check_import_target(spec["import"], source)
    for section, keys in (("kwargs", None), ("latent", LATENT_KEYS), ("label", LABEL_KEYS), ("output", OUTPUT_KEYS),
                          ("weights", WEIGHTS_KEYS), ("call", CALL_KEYS)):
        value = spec.get(section)
        if value is None:
            continue
        if not isinstance(value, Mapping):
            raise InputError(f"{source}: {section} must be a mapping, got {value!r}")
        if keys is not None and strict:
            _reject_unknown(value, keys, f"{source} ({section})")
    return spec


def _reject_unknown(mapping: Mapping, allowed: Sequence[str], source: str) -> None:
    unknown = sorted(str(key) for key in mapping if key not in allowed)
    if unknown:
        raise InputError(f"{source} has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")


def has_architecture(spec: Mapping | None) -> bool:
    return bool(spec) and ("architecture" in spec or "import" in spec)


MAX_YAML_BYTES = MAX_SMALL_FILE_BYTES
"""Spec and config files are a few lines; a larger one is not one (and is refused unread)."""

MAX_YAML_VALUES = 100_000
"""Most values a YAML document may stand for once its aliases are expanded: ``*alias`` copies
nested ten deep ("billion laughs") would otherwise build gigabytes from a few hundred bytes."""


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """Values ``node`` stands for with every alias expanded (memoised per node: aliases share it)."""
    if id(node) in sizes:
        return sizes[id(node)]
    sizes[id(node)] = MAX_YAML_VALUES + 1  # a node met again while it is being sized: a cycle
    children: list = []
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [item for pair in node.value for item in pair]
    total = 1
    for child in children:
        total += _expanded_size(child, sizes)
        if total > MAX_YAML_VALUES:
            break
    sizes[id(node)] = total
    return total


def parse_yaml(text: str, source: str) -> Any:
    """The content of a YAML (or JSON) text, safely: plain data only (no ``!!python`` tags),
    and at most ``MAX_YAML_VALUES`` values once aliases are expanded."""
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as error:  # characters YAML does not allow
        raise InputError(f"{source} is not valid YAML ({first_line(error)})") from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_YAML_VALUES:
            raise InputError(f"{source} stands for more than {MAX_YAML_VALUES:,} values once its YAML aliases "
                             "(*name) are expanded; write the values out instead of repeating aliases")
        return loader.construct_document(node)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as error:  # ValueError: 2001-13-45
        raise InputError(f"{source} is not valid YAML ({first_line(error)})") from None
    finally:
        loader.dispose()


def read_yaml_file(path: str | Path, what: str) -> Any:
    """The content of a YAML (or JSON) file; a missing, unreadable, oversized or malformed file
    is a one-line error."""
    data = read_bounded(path, what, MAX_YAML_BYTES)  # the trust rule: stat, then at most the limit
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"{path} is not valid YAML ({first_line(error)})") from None
    return parse_yaml(text, str(path))


def read_spec_file(path: str | Path) -> dict:
    """Read and validate a YAML (or JSON) spec file."""
    return validate_spec(read_yaml_file(path, "spec file"), str(path))


def write_spec_file(spec: dict, path: str | Path) -> Path:
    """Write a spec as YAML (e.g. the sidecar ``model.yaml`` of ``model.safetensors``)."""
    target = Path(path)
    target.write_text(yaml.safe_dump(json.loads(json.dumps(validate_spec(spec))), sort_keys=False))
    return target


def find_sidecar(model_path: str | Path) -> Path | None:
    """``model.yaml`` (or ``.yml``) beside ``model.safetensors`` / ``model.pth``, if present."""
    file = Path(model_path)
    for suffix in SIDECAR_SUFFIXES:
        candidate = file.with_suffix(suffix)
        if candidate != file and candidate.is_file():
            return candidate
    return None


# --------------------------------------------------------------------------- building


def architecture_label(spec: Mapping) -> str:
    return str(spec["architecture"]) if "architecture" in spec else f"import {spec.get('import')}"


def architecture_factory(spec: dict, code_path: Sequence[str | Path] = ()) -> Any:
    """The class a spec names: a built-in architecture, or its ``import:`` (``usercode``)."""
    if "import" in spec:
        return import_class(str(spec["import"]), code_path)
    name = spec.get("architecture")
    if name not in ARCHITECTURES:
        raise InputError(
            f"the spec names an unknown architecture {name!r}; built-ins are "
            f"{', '.join(sorted(ARCHITECTURES))}, or name your class with import: package.module:Class"
        )
    return ARCHITECTURES[name]


def _instantiate(factory: Any, spec: dict) -> torch.nn.Module:
    kwargs = dict(spec.get("kwargs") or {})
    try:
        return factory(**kwargs)
    except InputError:
        raise
    except Exception as error:  # TypeError for a wrong keyword; ValueError, RuntimeError for a wrong value
        raise InputError(f"the spec's kwargs do not fit architecture {architecture_label(spec)!r}: "
                         f"{first_line(error)}") from None


def build_from_spec(spec: dict, code_path: Sequence[str | Path] = ()) -> torch.nn.Module:
    """Instantiate the architecture a spec names (built-in or by import), with its kwargs."""
    return _instantiate(architecture_factory(spec, code_path), spec)


def build_for_weights(spec: dict, tensors: dict[str, torch.Tensor], source: str,
                      code_path: Sequence[str | Path] = ()) -> torch.nn.Module:
    """The spec's architecture with ``tensors`` loaded, its tensor names and shapes first checked
    on the meta device (no memory): kwargs that would allocate gigabytes (hidden: [40000, 40000])
    for weights that do not fit are refused before anything is allocated."""
    factory = architecture_factory(spec, code_path)
    try:
        with torch.device("meta"):
            skeleton = factory(**dict(spec.get("kwargs") or {}))
    except Exception:  # code that cannot run on the meta device, or wrong kwargs: checked below, for real
        skeleton = None
    if isinstance(skeleton, torch.nn.Module):
        _check_weights_fit(skeleton.state_dict(), tensors, source)
        del skeleton
    return load_state_into(_instantiate(factory, spec), tensors, source)


def latent_metadata(spec: dict) -> dict:
    """The spec's latent section in the form ``loading.resolve_latent_spec`` reads."""
    latent = spec.get("latent") or {}
    metadata: dict[str, Any] = {}
    if "shape" in latent:
        metadata["latent_shape"] = list(shape_of(latent["shape"], "the spec's latent shape"))
    if "distribution" in latent:
        metadata["latent_distribution"] = str(latent["distribution"])
    return metadata


def architecture_latent_metadata(spec: Mapping | None) -> dict:
    """The latent shape a built-in architecture implies, ``[kwargs.latent_dim]`` (or its default),
    for a spec without ``latent: {shape}``; {} for ``import:`` classes, whose arguments are their own."""
    if not spec or spec.get("architecture") not in ARCHITECTURES:
        return {}
    kwargs = dict(spec.get("kwargs") or {})
    default = inspect.signature(ARCHITECTURES[spec["architecture"]]).parameters.get("latent_dim")
    size = kwargs.get("latent_dim", default.default if default is not None else None)
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        return {}
    return {"latent_shape": [size]}


def output_metadata(spec: dict) -> dict:
    """The spec's output section as ``output_range`` / ``output_select`` metadata."""
    output = spec.get("output") or {}
    metadata: dict[str, Any] = {}
    if output.get("range") is not None:
        metadata["output_range"] = output["range"]
    if output.get("select") is not None:
        metadata["output_select"] = output["select"]
    return metadata


def spec_metadata(spec: dict) -> dict:
    """Everything a spec says about the latent, the label and the output, as loader metadata."""
    return {**latent_metadata(spec), **label_metadata(spec.get("label"), "the spec"), **output_metadata(spec),
            **call_metadata(spec.get("call"), "the spec")}


# --------------------------------------------------------------------------- weights


def save_safetensors(module: torch.nn.Module, path: str | Path, spec: dict) -> Path:
    """Write the module's state dict plus the embedded spec; the file then loads by itself."""
    validate_spec(spec, strict=False)
    state = {name: tensor.detach().clone().contiguous() for name, tensor in module.state_dict().items()}
    target = Path(path)
    save_file(state, str(target), metadata={SPEC_METADATA_KEY: json.dumps(spec, sort_keys=True)})
    return target


def save_weights(module: torch.nn.Module, path: str | Path, spec: dict | None = None) -> Path:
    """Write the state dict only: ``.safetensors`` (no embedded spec) or a ``torch.save`` pickle
    (``.pt``/``.pth``); with ``spec``, also the sidecar YAML beside it."""
    state = {name: tensor.detach().clone().contiguous() for name, tensor in module.state_dict().items()}
    target = Path(path)
    if target.suffix == ".safetensors":
        save_file(state, str(target))
    else:
        torch.save(state, str(target))
    if spec is not None:
        write_spec_file(spec, target.with_suffix(SIDECAR_SUFFIXES[0]))
    return target


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """The tensors and the embedded spec (None if absent) of a safetensors file."""
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise InputError(f"{path} is not a readable safetensors file ({error})") from None
    text = metadata.get(SPEC_METADATA_KEY)
    if text is None:
        return tensors, None
    try:
        spec = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise InputError(f"{path} carries an unreadable embedded spec ({SPEC_METADATA_KEY})") from None
    return tensors, validate_spec(spec, f"the spec embedded in {path}", strict=False)


def _check_weights_fit(expected: Mapping[str, torch.Tensor], tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse weights whose names or shapes differ from the architecture's, naming them."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong_shape = sorted(name for name in set(expected) & set(tensors) if expected[name].shape != tensors[name].shape)
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
        if wrong_shape:
            parts.append("wrong shape " + ", ".join(
                f"{name} {tuple(tensors[name].shape)} vs {tuple(expected[name].shape)}" for name in wrong_shape[:5]))
        raise InputError(f"the weights in {source} do not match the architecture: {'; '.join(parts)}")


def load_state_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> torch.nn.Module:
    """Load weights strictly, naming the tensors that do not match the architecture."""
    expected = module.state_dict()
    _check_weights_fit(expected, tensors, source)
    stored = {tensor.dtype for tensor in tensors.values() if tensor.is_floating_point()}
    if len(stored) == 1 and next(iter(stored)) in (torch.float32, torch.float64):
        # keep the file's precision (float64 weights stay float64): round trips are exact;
        # half-precision storage (a size saving) is computed in float32
        module = module.to(stored.pop())
        expected = module.state_dict()
    module.load_state_dict({name: tensor.to(expected[name].dtype) for name, tensor in tensors.items()})
    return module.eval()
