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

from genentropy_cli.errors import InputError

FORMAT = "genentropy-checkpoint"
VERSION = 1


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
    document = {"format": FORMAT, "version": VERSION, "settings": settings, "state": meta}
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
    source = Path(path)
    if not source.exists():
        return None
    advice = "delete it to start over, or choose another --checkpoint file"
    try:
        with np.load(source, allow_pickle=False) as archive:
            document = json.loads(str(archive["meta"]))
            arrays = {name: archive[name] for name in archive.files if name != "meta"}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as error:
        raise InputError(f"{source} is not a readable genentropy checkpoint ({error}); {advice}") from None
    if document.get("format") != FORMAT:
        raise InputError(f"{source} is not a genentropy checkpoint; {advice}")
    if document.get("version") != VERSION:
        raise InputError(f"{source} is a version {document.get('version')} checkpoint, this genentropy "
                         f"reads version {VERSION}; {advice}")
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
