"""torch.export programs (``.pt2``), with the ``genentropy.json`` they may carry."""

from __future__ import annotations

from genentropy_cli.models.exported import PT2_SUFFIX, load_exported
from genentropy_cli.models.formats import LoadRequest, ModelFormat, ModelSource, register_format
from genentropy_cli.models.loaded import LoadedModel


def looks_like_exported(source: ModelSource) -> bool:
    leaves = source.zip_leaves
    if leaves is None:
        return False
    if "archive_format" in leaves or any(name.startswith("models/") for name in leaves):
        return True
    return source.suffix == PT2_SUFFIX and not _torchscript_or_checkpoint(leaves)


def _torchscript_or_checkpoint(leaves: set[str]) -> bool:
    return "constants.pkl" in leaves or "data.pkl" in leaves or any(name.startswith("code/") for name in leaves)


def load_program(source: ModelSource, request: LoadRequest) -> LoadedModel:
    decoder, metadata, origins = load_exported(source.path)
    return LoadedModel(decoder, str(source.path), "torch.export", metadata, origins)


register_format(ModelFormat("torch.export", "a torch.export program (.pt2)", looks_like_exported, load_program,
                            runs_code=True))
