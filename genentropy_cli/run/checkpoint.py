"""Checkpoints: the run's ledger saved atomically, and refused when the settings differ.

A checkpoint is an ``.npz`` archive (no pickles): a JSON ``meta`` string (format, version,
the settings that define the estimate, the ledger's counters) and float64 arrays (the merged
moments, the rows of unfinished blocks, the diagnostics' per-sample extremes), so a resumed
run continues from exactly the state an uninterrupted run would have had. Writes go to a
temporary file that is flushed, fsync'ed and renamed over the old checkpoint: a crash at any
moment leaves either the old or the new checkpoint, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genentropy_cli.errors import InputError, first_line
from genentropy_cli.run.files import input_file

FORMAT = "genentropy-checkpoint"
VERSION = 2
"""2: the document carries ``checksum``, the sha256 of every array (``arrays_checksum``)."""
ADVICE = "delete it to start over, or choose another --checkpoint file"


def arrays_checksum(arrays: dict[str, np.ndarray]) -> str:
    """sha256 of the arrays' names, dtypes, shapes and bytes, in name order: a checkpoint whose
    numbers were changed or damaged after it was written no longer matches it."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def decoder_fingerprint(decoder: Any) -> str:
    """sha256 of the decoder's class name and every parameter and buffer (names, dtypes,
    shapes, bytes): a checkpoint belongs to one set of weights."""
    digest = hashlib.sha256()
    module = decoder
    name = getattr(module, "original_name", None) or type(module).__qualname__
    digest.update(str(name).encode())
    if isinstance(module, torch.nn.Module):
        for key, tensor in module.state_dict().items():
            flat = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{key}:{flat.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(path: str | Path, settings: dict, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write atomically: temporary file, flush, fsync, rename, fsync the directory."""
    target = Path(path)
    temporary = target.with_name(f".{target.name}.tmp{os.getpid()}")
    document = {"format": FORMAT, "version": VERSION, "settings": settings, "state": meta,
                "checksum": arrays_checksum(arrays)}
    try:
        with open(temporary, "wb") as handle:
            np.savez(handle, meta=np.array(json.dumps(document)), **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)


def _fsync_directory(directory: Path) -> None:
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def load_checkpoint(path: str | Path) -> tuple[dict, dict, dict[str, np.ndarray]] | None:
    """(settings, state meta, arrays) of a checkpoint file, or None where there is none yet."""
    source = input_file(path, "--checkpoint", missing_ok=True)
    if source is None:
        return None
    try:
        with np.load(source, allow_pickle=False) as archive:
            document = json.loads(str(archive["meta"]))
            arrays = {name: archive[name] for name in archive.files if name != "meta"}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as error:
        reason = first_line(error) if source.stat().st_size else "an empty file"
        raise InputError(f"{source} is not a readable genentropy checkpoint ({reason}); {ADVICE}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise InputError(f"{source} is not a genentropy checkpoint; {ADVICE}")
    if document.get("version") != VERSION:
        raise InputError(f"{source} is a version {document.get('version')} checkpoint, this genentropy "
                         f"reads version {VERSION}; {ADVICE}")
    if document.get("checksum") != arrays_checksum(arrays):
        raise InputError(f"{source} does not match its checksum: its numbers were changed or damaged after it "
                         f"was written; {ADVICE}")
    if not all(isinstance(document.get(key), dict) for key in ("settings", "state")):
        raise InputError(f"{source} lacks its settings or state; {ADVICE}")
    return document["settings"], document["state"], arrays


def check_same_settings(path: str | Path, saved: dict, current: dict) -> None:
    """Refuse a checkpoint made with other settings, naming every one that differs."""
    differences = [
        f"{key} {_show(current.get(key))} (checkpoint: {_show(saved.get(key))})"
        for key in sorted(set(saved) | set(current))
        if saved.get(key) != current.get(key)
    ]
    if differences:
        raise InputError(
            f"checkpoint {path} was made with other settings: {'; '.join(differences)}; rerun with the "
            "checkpoint's settings, or choose another --checkpoint file"
        )


def _show(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64:  # a fingerprint
        return value[:12]
    return json.dumps(value)
