"""``genentropy convert``: any loadable decoder -> one self-describing safetensors file.

The result holds the weights and, embedded, a spec naming the architecture (built-in or
``import:``), its kwargs, the resolved latent spec, a conditional decoder's label spec and the
output transform, so it loads
from its path alone and runs no code from the file. The architecture comes from the source's
spec (embedded, sidecar or ``--spec``), from a ``spec`` entry in a TorchScript/.pt2 file's
``genentropy.json``, or, for a trusted pickled module, from its class (kwargs from the spec
file). The conversion is checked before it is reported: the file is read
back, every tensor must be identical and the decoder's outputs on probe latents must agree
(float64).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from genentropy_cli.core.decoder import prepare_decoder
from genentropy_cli.core.labels import bind_class
from genentropy_cli.core.latents import LatentStream, distribution_label
from genentropy_cli.defaults import CONVERT_OUTPUT_TOLERANCE, INSPECT_PROBE_LATENTS
from genentropy_cli.errors import EstimationError, InputError
from genentropy_cli.models.architectures import ARCHITECTURES
from genentropy_cli.models.calls import call_section
from genentropy_cli.models.exported import ExportedDecoder
from genentropy_cli.models.loading import LoadedModel, load_safetensors_model
from genentropy_cli.models.metadata import label_section
from genentropy_cli.models.onnx_models import OnnxDecoder, onnx_weights
from genentropy_cli.models.resolve import ModelOptions, ResolvedModel, resolve_model
from genentropy_cli.models.specs import (
    architecture_label,
    build_from_spec,
    has_architecture,
    load_state_into,
    save_safetensors,
    validate_spec,
)

RESOLVED_KEYS = ("latent", "label", "output", "weights", "call")
"""Spec sections the converted file gets afresh (resolved latent, label, call and transform; its own tensor names)."""


def state_dict_of(decoder: Any) -> dict[str, torch.Tensor]:
    """The decoder's named weights (an exported program's and an ONNX graph's under their original names)."""
    if isinstance(decoder, OnnxDecoder):
        return onnx_weights(decoder.source)
    module = decoder.program if isinstance(decoder, ExportedDecoder) else decoder
    if not isinstance(module, torch.nn.Module):
        raise InputError(f"a {type(decoder).__name__} has no weights to convert")
    return {name: tensor.detach() for name, tensor in module.state_dict().items()}


def architecture_spec(loaded: LoadedModel) -> dict:
    """architecture/import, kwargs (and any other entries, e.g. training details) for the converted file."""
    spec_file = loaded.spec_file or {}
    recorded = loaded.metadata.get("spec")  # a TorchScript/.pt2 file may record the class it came from
    if has_architecture(loaded.spec):
        source = loaded.spec
    elif has_architecture(spec_file):
        source = spec_file
    elif isinstance(recorded, dict) and has_architecture(recorded):
        source = validate_spec(recorded, f"the spec recorded in {loaded.path}")
    elif loaded.format == "pickle":
        source = {**_class_reference(type(loaded.decoder)), "kwargs": spec_file.get("kwargs") or {}}
    else:
        raise InputError(
            f"{loaded.path} is {loaded.format}: it does not say which Python class it is; "
            "give --spec FILE naming its architecture (or import: package.module:Class) and kwargs"
        )
    assert source is not None
    recorded_kwargs = getattr(loaded.decoder, "init_kwargs", None)  # NVlabs' persistent modules keep them
    if not source.get("kwargs") and isinstance(recorded_kwargs, dict) and recorded_kwargs:
        source = {**source, "kwargs": json.loads(json.dumps(recorded_kwargs))}
    return {key: value for key, value in source.items() if key not in RESOLVED_KEYS}


def _class_reference(cls: type) -> dict:
    for name, builtin in ARCHITECTURES.items():
        if cls is builtin:
            return {"architecture": name}
    if getattr(cls, "_orig_class_name", None):  # an NVlabs persistent class, rebuilt from the source it carries
        return {"import": _persistent_import(cls)}
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        raise InputError(
            f"the pickled module's class {cls.__qualname__} is not importable (defined in a script or function): "
            f"copy it into a file DIR/mymodels.py and pass --code-path DIR --class-map "
            f"{cls.__module__}.{cls.__qualname__}=mymodels:{cls.__name__}"
        )
    return {"import": f"{cls.__module__}:{cls.__qualname__}"}


NVLABS_GENERATORS = {"stylegan2": "training.networks:Generator", "stylegan3": "training.networks_stylegan3:Generator"}


def _persistent_import(cls: type) -> str:
    """The import path of the class an NVlabs snapshot pickled with its source (StyleGAN3's module,
    told apart by the filtered leaky ReLU it uses); --code-path names the repository."""
    source = str(getattr(cls, "_orig_module_src", ""))
    if getattr(cls, "_orig_class_name", "") != "Generator":
        raise InputError(f"the pickled {cls._orig_class_name} carries its own source; give --spec naming the class "
                         "to import from the repository (import: training.networks:CLASS) with --code-path REPO")
    return NVLABS_GENERATORS["stylegan3" if "filtered_lrelu" in source else "stylegan2"]


def source_weights(loaded: LoadedModel, spec: dict, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights to write: the decoder's, or an ONNX graph's initializers that carry the
    architecture's names (batch-norm counters, which ONNX drops and eval mode never reads, from
    the fresh module)."""
    weights = state_dict_of(loaded.decoder)
    if loaded.format != "onnx":
        return weights
    expected = module.state_dict()
    missing = [name for name in expected if name not in weights and not name.endswith("num_batches_tracked")]
    if missing:
        raise InputError(
            f"the weights in {loaded.path} do not carry the names of {architecture_label(spec)} (missing "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}): convert maps an ONNX graph onto the "
            "module it was exported from, exported with torch.onnx.export(module, ..., dynamo=False)")
    return {name: weights[name] if name in weights else tensor for name, tensor in expected.items()}


def converted_spec(resolved: ResolvedModel) -> dict:
    """The spec to embed: the architecture plus the resolved latent and output transform."""
    spec = architecture_spec(resolved.loaded)
    spec["latent"] = {"shape": list(resolved.latent.shape),
                      "distribution": distribution_label(resolved.latent.distribution)}
    if resolved.label is not None:
        spec["label"] = label_section(resolved.label)
    if not resolved.call.is_identity:
        spec["call"] = call_section(resolved.call)
    transform = resolved.transform
    if not transform.is_identity:
        spec["output"] = {key: value for key, value in
                          (("range", list(transform.range) if transform.range else None), ("select", transform.select))
                          if value is not None}
    return spec


def _max_output_difference(first: Any, second: Any, resolved: ResolvedModel) -> float:
    """Largest |difference| of the two decoders' outputs on probe latents (at every chosen class
    of a conditional decoder), in float64 on the CPU (float32 for code that runs in nothing else,
    such as StyleGAN's: the same weights and code give the same float32 outputs)."""
    try:
        return _output_difference(first, second, resolved, torch.float64)
    except InputError:
        return _output_difference(first, second, resolved, torch.float32)


def _output_difference(first: Any, second: Any, resolved: ResolvedModel, dtype: torch.dtype) -> float:
    latents = LatentStream(resolved.latent, 0).range(0, INSPECT_PROBE_LATENTS)
    label = resolved.label
    differences = []
    for chosen in (None,) if label is None else label.chosen:
        outputs = []
        for decoder in (first, second):
            decoder = resolved.transform.apply(resolved.call.apply(decoder))
            decoder = decoder if label is None else bind_class(decoder, label, chosen)
            outputs.append(prepare_decoder(decoder, resolved.latent, torch.device("cpu"), dtype).decode(latents))
        scale = float(outputs[0].abs().max()) + 1.0
        differences.append(float((outputs[0] - outputs[1]).abs().max()) / scale)
    return max(differences, key=lambda value: (value != value, value))  # NaN (a failed check) wins


def convert_to_safetensors(options: ModelOptions, target: str | Path, overwrite: bool = False) -> dict:
    """Write ``target`` (.safetensors with the embedded spec) and return a report of the check."""
    file = Path(target)
    if file.suffix != ".safetensors":
        raise InputError(f"convert writes a .safetensors file; got {file}")
    if file.exists() and not overwrite:
        raise InputError(f"{file} exists; pass --force to overwrite it")
    resolved = resolve_model(options)
    spec = converted_spec(resolved)
    module = build_from_spec(spec, options.code_path)
    weights = source_weights(resolved.loaded, spec, module)
    module = load_state_into(module, weights, resolved.path)
    save_safetensors(module, file, spec)

    reloaded = load_safetensors_model(file, None, options.code_path)
    written = state_dict_of(reloaded.decoder)
    identical = set(written) == set(weights) and all(
        written[name].dtype == weights[name].dtype and torch.equal(written[name], weights[name]) for name in weights)
    difference = _max_output_difference(resolved.loaded.decoder, reloaded.decoder, resolved)
    if not identical or not difference <= CONVERT_OUTPUT_TOLERANCE:
        file.unlink(missing_ok=True)
        raise EstimationError(
            f"the converted model does not reproduce {resolved.path} (weights identical: {identical}, "
            f"relative output difference {difference:.3g}): check the spec's architecture and kwargs"
        )
    return {
        "command": "convert",
        "source": resolved.describe(),
        "target": str(file),
        "spec": spec,
        "tensors": len(weights),
        "parameters": sum(tensor.numel() for tensor in weights.values()),
        "bytes": file.stat().st_size,
        "weights_identical": identical,
        "max_relative_output_difference": difference,
        "warnings": list(resolved.loaded.warnings),
    }
