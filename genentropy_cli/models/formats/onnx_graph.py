"""ONNX graphs, converted to torch modules at load (optional extra ``onnx``)."""

from __future__ import annotations

from genentropy_cli.models.formats import LoadRequest, ModelFormat, ModelSource, register_format
from genentropy_cli.models.loaded import LoadedModel
from genentropy_cli.models.onnx_models import ONNX_SUFFIX, load_onnx, looks_like_onnx


def _is_onnx(source: ModelSource) -> bool:
    return source.zip_leaves is None and (source.suffix == ONNX_SUFFIX or looks_like_onnx(source.head(8)))


def _load(source: ModelSource, request: LoadRequest) -> LoadedModel:
    decoder, metadata, origins = load_onnx(source.path)
    return LoadedModel(decoder, str(source.path), "onnx", metadata, origins)


register_format(ModelFormat("onnx", "an ONNX graph (.onnx)", _is_onnx, _load))
