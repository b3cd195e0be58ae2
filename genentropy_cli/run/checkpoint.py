"""Checkpoints: the run's ledger saved atomically, and refused when the settings differ.

A checkpoint is an ``.npz`` archive (no pickles): a JSON ``meta`` string (format, version,
the settings that define the estimate, the ledger's counters) and float64 arrays (the merged
moments, the rows of unfinished blocks, the diagnostics' per-sample extremes), so a resumed
run continues from exactly the state an uninterrupted run would have had. Writes go to a
temporary file that is flushed, fsync'ed and renamed over the old checkpoint: a crash at any
moment leaves either the old or the new checkpoint, never half of one.

Integrity, checked whole before anything is used (docs/safety.md#checkpoints): the checksum
covers the arrays *and* the settings and counters (``document_checksum``); every member of the
archive is stored uncompressed, and the size each array declares in its header is checked
against the member and the file before it is read (a few bytes cannot make genentropy allocate
gigabytes); the JSON document is at most ``MAX_CHECKPOINT_META_BYTES`` and
``MAX_DOCUMENT_DEPTH`` levels deep. A checkpoint names no file. The run that resumes it then
checks that the state is one a run can leave (``RunLedger._check_restored``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genentropy_cli.defaults import MAX_CHECKPOINT_META_BYTES, MAX_DOCUMENT_DEPTH
from genentropy_cli.errors import InputError, first_line
from genentropy_cli.trust import check_depth, input_file, shown

FORMAT = "genentropy-checkpoint"
VERSION = 3
"""2: the document carries ``checksum``, the sha256 of every array (``arrays_checksum``).
3: the checksum covers the settings and the state's counters too (``document_checksum``)."""
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


def canonical_json(value: Any) -> str:
    """One text for one document: keys as JSON writes them (strings), sorted; floats by repr."""
    return json.dumps(json.loads(json.dumps(value)), sort_keys=True, separators=(",", ":"))


def document_checksum(settings: dict, state: dict, arrays: dict[str, np.ndarray]) -> str:
    """sha256 of the settings and state (canonical JSON) and of every array (``arrays_checksum``):
    a counter edited after writing (N, the merged blocks, the frontier) no longer matches."""
    digest = hashlib.sha256(canonical_json({"settings": settings, "state": state}).encode())
    digest.update(arrays_checksum(arrays).encode())
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
                "checksum": document_checksum(settings, meta, arrays)}
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


def _refuse(source: Path, why: str) -> InputError:
    return InputError(f"{source} is not a readable genentropy checkpoint ({why}); {ADVICE}")


def _check_declared_sizes(source: Path) -> None:
    """Every member stored uncompressed (as ``np.savez`` writes), within the file, holding a
    ``.npy`` array of plain numbers or text whose declared size fits the member: checked from
    the headers, before any array is read."""
    file_size = source.stat().st_size
    with zipfile.ZipFile(source) as archive:
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
                raise _refuse(source, f"member {info.filename[:60]!r} is compressed; genentropy writes none")
            if info.file_size > file_size:
                raise _refuse(source, f"member {info.filename[:60]!r} declares more bytes than the file has")
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                               (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read_header is None:
                    raise _refuse(source, f"array {info.filename[:60]!r} has an unknown .npy version")
                shape, _, dtype = read_header(member)
            if dtype.hasobject or dtype.kind not in "biufcU":
                raise _refuse(source, f"array {info.filename[:60]!r} is not numbers")
            declared = math.prod(shape) * dtype.itemsize
            if declared > info.file_size:
                raise _refuse(source, f"array {info.filename[:60]!r} declares {declared:,} bytes in a member of "
                                      f"{info.file_size:,}")
            if info.filename == "meta.npy" and declared > 4 * MAX_CHECKPOINT_META_BYTES:  # UTF-32 text
                raise _refuse(source, f"its settings and counters exceed {MAX_CHECKPOINT_META_BYTES:,} characters")


def _read(source: Path) -> tuple[Any, dict[str, np.ndarray]]:
    try:
        _check_declared_sizes(source)
        with np.load(source, allow_pickle=False) as archive:
            document = json.loads(str(archive["meta"]))
            arrays = {name: archive[name] for name in archive.files if name != "meta"}
    except RecursionError:
        raise _refuse(source, f"its document is nested more than {MAX_DOCUMENT_DEPTH} levels deep") from None
    except (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile, zipfile.LargeZipFile,
            NotImplementedError, json.JSONDecodeError) as error:
        raise _refuse(source, first_line(error)[:200] if source.stat().st_size else "an empty file") from None
    try:
        check_depth(document, MAX_DOCUMENT_DEPTH, "its document")
    except InputError as error:
        raise _refuse(source, str(error)) from None
    return document, arrays


def load_checkpoint(path: str | Path) -> tuple[dict, dict, dict[str, np.ndarray]] | None:
    """(settings, state meta, arrays) of a checkpoint file, or None where there is none yet;
    the whole file checked first (see the module)."""
    source = input_file(path, "--checkpoint", missing_ok=True)
    if source is None:
        return None
    document, arrays = _read(source)
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise InputError(f"{source} is not a genentropy checkpoint; {ADVICE}")
    if document.get("version") != VERSION:
        raise InputError(f"{source} is a version {shown(document.get('version'))} checkpoint, this genentropy "
                         f"reads version {VERSION}; {ADVICE}")
    if not all(isinstance(document.get(key), dict) for key in ("settings", "state")):
        raise InputError(f"{source} lacks its settings or state; {ADVICE}")
    if document.get("checksum") != document_checksum(document["settings"], document["state"], arrays):
        raise InputError(f"{source} does not match its checksum: its numbers or counters were changed or damaged "
                         f"after it was written; {ADVICE}")
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
