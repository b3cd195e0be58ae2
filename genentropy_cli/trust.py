"""The trust rule: what a file may name, how much of anything is read, where a relative path
resolves, and how large a count a file or flag may set. Every reader goes through here.

    who names a path                              may name                      resolved against
    a flag, --config, the Python API (you)        any regular file you can read the working folder
    a spec file (--spec, the sidecar model.yaml)  a file inside its own folder  the spec's folder
    embedded metadata (genentropy.json in
      TorchScript/.pt2, safetensors metadata,
      ONNX metadata_props), a Hub repository's
      genentropy.yaml, a checkpoint               no file at all                -

Sizes are checked with ``stat`` before a byte is read (``read_bounded``); a path is checked
after every symbolic link is followed (a link inside the spec's folder that points out of it is
refused); a refusal names the path and the limit, never what a file holds. Counts (classes,
sub-models, axes) are checked against their limit in ``defaults.py`` before anything is
allocated in proportion to them (``check_count``). Base module: the standard library only.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from genentropy_cli.errors import InputError

__all__ = ["EMBEDDED", "SPEC_FILE", "USER", "Namer", "check_count", "check_depth", "input_file", "named_path",
           "read_bounded"]

USER = "user"
"""A path you gave (flag, --config, keyword argument): any readable file, relative to the working folder."""
SPEC_FILE = "spec file"
"""A path a spec file names: inside the spec's folder only, relative to it."""
EMBEDDED = "embedded"
"""A value a model file, a repository or a checkpoint carries: it may name no file at all."""

_SHOWN = 120
"""At most this many characters of a path are shown in a message."""


def shown(value: object) -> str:
    """A value for a message: repr, one line, at most ``_SHOWN`` characters."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


@dataclass(frozen=True)
class Namer:
    """Who names a path (``USER``, ``SPEC_FILE`` or ``EMBEDDED``), described for messages
    (``source``), and for a spec file the folder its paths resolve against."""

    kind: str
    source: str = "you"
    folder: Path | None = None

    @classmethod
    def user(cls) -> "Namer":
        return cls(USER)

    @classmethod
    def spec_file(cls, path: str | Path) -> "Namer":
        file = Path(path)
        return cls(SPEC_FILE, f"the spec {file}", Path(os.path.realpath(file.parent)))

    @classmethod
    def embedded(cls, source: str) -> "Namer":
        return cls(EMBEDDED, source)


def named_path(value: str | Path, namer: Namer, what: str, flag: str) -> Path:
    """The file ``value`` names, by the trust rule: as given (you), inside the spec's folder and
    relative to it (a spec file), or never (embedded: an InputError that says how to give it)."""
    if namer.kind == EMBEDDED:
        raise InputError(f"{namer.source} names a file for {what}; genentropy never reads a file on a model's "
                         f"say-so: give the file yourself with {flag} FILE")
    path = Path(value)
    if namer.kind == USER:
        return path
    assert namer.folder is not None
    resolved = Path(os.path.realpath(namer.folder / path))
    if path.is_absolute() or not resolved.is_relative_to(namer.folder):
        raise InputError(f"{namer.source} names {shown(str(value))} for {what}, outside its folder "
                         f"{namer.folder}; a spec may name files in its own folder only: move the file there, or "
                         f"give it with {flag} FILE")
    return resolved


def _reason(error: OSError) -> str:
    return error.strerror or type(error).__name__


def input_file(path: str | Path, what: str, *, missing_ok: bool = False) -> Path | None:
    """``path`` if it is a regular file that can be read; None if it does not exist and
    ``missing_ok``; else a one-line InputError naming the problem. A FIFO, a device or a
    directory is refused from its ``stat``, without opening it (opening a FIFO waits forever)."""
    file = Path(path)
    try:
        mode = file.stat().st_mode
    except FileNotFoundError:
        if missing_ok:
            return None
        raise InputError(f"{what} not found: {file}") from None
    except OSError as error:
        raise InputError(f"cannot read {what} {file} ({_reason(error)})") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"{what} {file} is a directory; give the path of a file")
    if not stat.S_ISREG(mode):
        raise InputError(f"{what} {file} is not a regular file (a FIFO, socket or device); give the path of a file")
    try:
        with open(file, "rb") as handle:
            handle.read(1)
    except OSError as error:
        raise InputError(f"cannot read {what} {file} ({_reason(error)}); check its permissions") from None
    return file


def _size_text(count: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if count >= factor:
            return f"{count / factor:.3g} {unit}"
    return f"{count} bytes"


def read_bounded(path: str | Path, what: str, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes: its size is taken from ``stat``
    before reading, and no more than ``limit + 1`` bytes are read (a file that grows meanwhile)."""
    file = input_file(path, what)
    assert file is not None
    size = file.stat().st_size
    if size > limit:
        raise InputError(f"{what} {file} is {_size_text(size)}, more than the {_size_text(limit)} genentropy reads "
                         f"for a {what}")
    try:
        with open(file, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as error:
        raise InputError(f"cannot read {what} {file} ({_reason(error)})") from None
    if len(data) > limit:
        raise InputError(f"{what} {file} grew past {_size_text(limit)} while it was read")
    return data


def check_count(value: int, limit: int, what: str, advice: str = "") -> int:
    """``value`` if 0 <= value <= limit, else a one-line InputError naming the limit."""
    if value > limit:
        raise InputError(f"{what} is {value:,}, more than the limit of {limit:,}{'; ' + advice if advice else ''}")
    return value


def check_depth(document: object, limit: int, what: str) -> None:
    """Refuse a parsed JSON document nested deeper than ``limit`` (walked without recursion, so
    a document of any depth is measured, never a RecursionError)."""
    stack: list[tuple[object, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > limit:
                raise InputError(f"{what} is nested more than {limit} levels deep; genentropy writes at most a few")
            items = value.values() if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items if isinstance(item, (dict, list)))
