"""safetensors weights plus a spec (embedded in the file's metadata, a sidecar, or ``--spec``)."""

from __future__ import annotations

from genentropy_cli.models.formats import LoadRequest, ModelFormat, ModelSource, register_format
from genentropy_cli.models.formats.building import build_decoder, missing_spec, select_weights
from genentropy_cli.models.loaded import LoadedModel
from genentropy_cli.models.specs import has_architecture, read_safetensors, spec_metadata

MAX_HEADER_BYTES = 100 * 1024**2


def looks_like_safetensors(source: ModelSource) -> bool:
    """An 8-byte little-endian header length, then a JSON header (or the extension)."""
    head = source.head(9)
    return source.suffix == ".safetensors" or (
        len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < MAX_HEADER_BYTES)


def load_safetensors(source: ModelSource, request: LoadRequest) -> LoadedModel:
    """The weights, built from the spec file if it names an architecture, else the embedded spec."""
    file = source.path
    tensors, embedded = read_safetensors(file)
    spec = request.spec if has_architecture(request.spec) else embedded
    if not has_architecture(spec):
        raise missing_spec(file, "weights")
    assert spec is not None
    chosen, selection = select_weights(tensors, spec, request.select, str(file), request.code_path)
    decoder = build_decoder(spec, chosen, str(file), request.code_path, tensors, selection)
    loaded = LoadedModel(decoder, str(file), "safetensors", spec=spec, selection=selection)
    if embedded is not None:
        loaded.layer(spec_metadata(embedded), "metadata")
    if spec is embedded:
        loaded.spec_source = "embedded"
    return loaded


register_format(ModelFormat("safetensors", "safetensors weights with a spec (.safetensors)", looks_like_safetensors,
                            load_safetensors, read_tree=lambda source, request: read_safetensors(source.path)[0]))
