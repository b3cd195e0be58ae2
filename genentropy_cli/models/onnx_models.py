"""ONNX graphs (``.onnx``): converted to a torch module when loaded (optional extra ``onnx``).

``onnx2torch`` turns each node of the graph into the torch operation it stands for (Gemm ->
``nn.Linear``, ConvTranspose -> ``nn.ConvTranspose2d``, BatchNormalization -> ``nn.BatchNorm2d``
in eval mode, ...) on the weights the file stores, so the converted decoder computes what the
exported module computed, and the engine differentiates it like any module. An ONNX file is
data, not code: nothing in it is run as Python.

Checked before converting, each refusal saying how to re-export:

- every node has a converter at the graph's opset (else: the op, the opset, and the newest
  ``opset_version`` at which every op of the graph converts);
- one input, the latent, with a dynamic batch dimension (else: ``dynamic_axes``).

The latent shape is read from the input's other dimensions (origin ``program``); a
``genentropy.json`` entry in the model's ``metadata_props`` may record the latent spec, as in
TorchScript archives. ``onnx2torch`` imports torchvision only for two detection ops
(NonMaxSuppression, RoiAlign); where torchvision is absent or broken (a CPU build of torch
beside PyPI's torchvision) it is imported without them (``_import_converter``).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import sys
import types
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from genentropy_cli.errors import InputError, first_line
from genentropy_cli.models.metadata import METADATA_FILE, parse_metadata

ONNX_SUFFIX = ".onnx"
ONNX_INSTALL = ("pip install 'genentropy[onnx]' (with a CPU-only torch: pip install onnx, then "
                "pip install --no-deps onnx2torch)")
TORCHVISION_OPS = ("NonMaxSuppression", "RoiAlign")
"""The ops for which onnx2torch needs torchvision."""
OLDEST_OPSET = 7


def looks_like_onnx(head: bytes) -> bool:
    """An ONNX ModelProto begins with field 1 (``ir_version``, a small varint), then another
    length-delimited field (producer name, graph, opset import...)."""
    return len(head) >= 3 and head[0] == 0x08 and 0 < head[1] < 0x20 and head[2] in (0x12, 0x1A, 0x22, 0x2A, 0x3A,
                                                                                    0x42)


class OnnxDecoder(nn.Module):
    """A converted ONNX graph as a decoder: (B, *latent_shape) -> (B, ...). ``source`` is the
    file, whose named weights (``onnx_weights``) ``convert`` maps onto an architecture."""

    def __init__(self, graph: nn.Module, source: str):
        super().__init__()
        self.graph = graph
        self.source = source

    def forward(self, latents: torch.Tensor) -> Any:
        return self.graph(latents)


@contextlib.contextmanager
def _without_torchvision() -> Iterator[bool]:
    """Stand-ins for the torchvision names onnx2torch imports, for the time of its import only."""
    def missing(*args: Any, **kwargs: Any) -> Any:
        raise InputError(f"this ONNX graph uses {' or '.join(TORCHVISION_OPS)}, which need torchvision: "
                         "pip install torchvision")

    for name in [name for name in sys.modules if name.split(".")[0] in ("torchvision", "onnx2torch")]:
        del sys.modules[name]  # a torchvision that failed half-way, and onnx2torch's modules that saw it
    package, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
    ops.nms = ops.roi_align = ops.box_convert = missing
    package.ops = ops
    sys.modules.update({"torchvision": package, "torchvision.ops": ops})
    try:
        yield True
    finally:
        for name in ("torchvision", "torchvision.ops"):
            sys.modules.pop(name, None)


_STATE: dict[str, Any] = {}


def _import_converter(file: Path) -> tuple[Any, Any]:
    """(onnx, onnx2torch), imported once; the missing extra is a one-line error."""
    if "modules" not in _STATE:
        try:
            import onnx
        except ImportError:
            raise InputError(f"{file} is an ONNX graph; reading it needs the onnx extra: {ONNX_INSTALL}") from None
        try:
            import onnx2torch
            _STATE["torchvision"] = True
        except ModuleNotFoundError as error:
            if error.name != "torchvision":
                raise InputError(f"{file} is an ONNX graph; converting it needs onnx2torch: {ONNX_INSTALL}") from None
            onnx2torch = _import_without_torchvision()
        except RuntimeError:  # torchvision installed but not loadable beside this torch
            onnx2torch = _import_without_torchvision()
        _STATE["modules"] = (onnx, onnx2torch)
    return _STATE["modules"]


def _import_without_torchvision() -> Any:
    with _without_torchvision():
        import onnx2torch
    _STATE["torchvision"] = False
    return onnx2torch


def _converter_exists(op_type: str, version: int, domain: str) -> bool:
    from onnx2torch.node_converters.registry import get_converter

    try:
        get_converter(operation_type=op_type, version=version, domain=domain)
    except NotImplementedError:
        return False
    return True


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


def _opsets(model: Any) -> dict[str, int]:
    return {("" if entry.domain == "ai.onnx" else entry.domain): int(entry.version) for entry in model.opset_import}


def _check_ops(model: Any, file: Path, converter_version: str) -> None:
    """Refuse a graph with a node onnx2torch cannot convert, naming the op, the opset and the
    newest ``opset_version`` at which every op of the graph converts."""
    opsets = _opsets(model)
    ops = sorted({(node.domain or "", node.op_type) for node in model.graph.node})
    if not _STATE.get("torchvision", True):
        needing = [op for _, op in ops if op in TORCHVISION_OPS]
        if needing:
            raise InputError(f"{file} uses the ONNX op {needing[0]}, which needs torchvision: pip install torchvision")
    for domain, op in ops:
        version = opsets.get(domain, 0)
        if _converter_exists(op, version, domain):
            continue
        where = f"opset {version}" if not domain else f"domain {domain} version {version}"
        default_ops = [name for kind, name in ops if not kind]
        working = next((candidate for candidate in range(opsets.get("", 0) - 1, OLDEST_OPSET - 1, -1)
                        if all(_converter_exists(name, candidate, "") for name in default_ops)), None)
        if domain or working is None:
            fix = ("no opset of the exporter avoids it: replace the layer that produces it, or save the model as "
                   "TorchScript or torch.export (.pt2) instead")
        else:
            fix = f"re-export with torch.onnx.export(..., opset_version={working}, dynamo=False)"
        raise InputError(f"{file} uses the ONNX op {op} at {where}, which onnx2torch {converter_version} cannot "
                         f"convert; {fix}")


def _latent_input(model: Any, file: Path) -> list[int | str]:
    """The dimensions of the graph's one input (ints, or names for dynamic ones)."""
    weights = {initializer.name for initializer in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in weights]
    if len(inputs) != 1:
        names = ", ".join(value.name for value in inputs)
        raise InputError(f"{file} takes {len(inputs)} inputs ({names}); a decoder takes one, the latent batch")
    dims = inputs[0].type.tensor_type.shape.dim
    shape: list[int | str] = [dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "?") for dim in dims]
    if shape and isinstance(shape[0], int):
        raise InputError(
            f"{file} was exported with a fixed batch size of {shape[0]}; re-export it with a dynamic batch dimension: "
            f"torch.onnx.export(..., input_names=['{inputs[0].name}'], dynamic_axes={{'{inputs[0].name}': {{0: 'batch'}}}})"
        )
    return shape


def load_onnx(file: Path) -> tuple[OnnxDecoder, dict, dict]:
    """The converted decoder (eval mode), its recorded metadata, and where each entry came from."""
    onnx, onnx2torch = _import_converter(file)
    try:
        model = onnx.load(str(file))
    except Exception as error:  # not protobuf, truncated, or external data missing
        raise InputError(f"{file} is not a loadable ONNX model ({first_line(error)})") from None
    records = {entry.key: entry.value for entry in model.metadata_props}
    metadata = parse_metadata(records.get(METADATA_FILE, ""), file)
    origins = {key: "metadata" for key in metadata}
    shape = _latent_input(model, file)
    _check_ops(model, file, _version("onnx2torch"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = onnx2torch.convert(model)
    except InputError:
        raise
    except Exception as error:
        raise InputError(f"onnx2torch cannot convert {file} ({first_line(error)}); save the model as TorchScript "
                         "or torch.export (.pt2) instead") from None
    if "latent_shape" not in metadata and len(shape) >= 2 and all(isinstance(size, int) and size > 0
                                                                   for size in shape[1:]):
        metadata["latent_shape"], origins["latent_shape"] = [int(size) for size in shape[1:]], "program"
    return OnnxDecoder(graph, str(file)).eval(), metadata, origins


def onnx_weights(file: str | Path) -> dict[str, torch.Tensor]:
    """The graph's stored weights (initializers) under their ONNX names: the module's state-dict
    names when ``torch.onnx.export`` kept them (it does unless it folded constants into them)."""
    onnx, _ = _import_converter(Path(file))
    from onnx import numpy_helper

    model = onnx.load(str(file))
    return {initializer.name: torch.from_numpy(numpy_helper.to_array(initializer).copy())
            for initializer in model.graph.initializer}
