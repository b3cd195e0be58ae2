"""Files a run reads and writes, checked before any work starts.

Inputs (model, spec, config, checkpoint) must be regular, readable files (``trust.input_file``:
a FIFO, a device or a directory is refused from its ``stat`` alone, without opening it).
Outputs (``--output``, ``--checkpoint``, ``--per-sample``, ``--grid``, ``--plot``) must be writable file paths in an existing folder, distinct from each other and
from every input, so that hours of work never end in "cannot write" and a result never
overwrites the model it came from.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Mapping

from genentropy_cli.errors import InputError
from genentropy_cli.trust import input_file  # the trust rule's reader; kept importable from here

__all__ = ["check_output_targets", "input_file", "same_file"]


def _reason(error: OSError) -> str:
    return error.strerror or type(error).__name__


def same_file(first: str | Path, second: str | Path) -> bool:
    """Whether two paths name one file (after links; hard links of an existing file too)."""
    if os.path.realpath(first) == os.path.realpath(second):
        return True
    try:
        return os.path.samefile(first, second)
    except OSError:
        return False


def _check_writable(flag: str, target: Path) -> None:
    try:
        mode = target.lstat().st_mode
    except FileNotFoundError:
        mode = None
    except OSError as error:  # a name too long, a file where a folder should be, ...
        raise InputError(f"{flag} {target}: cannot use this path ({_reason(error)})") from None
    if mode is not None and stat.S_ISLNK(mode):  # an atomic write replaces the link itself (/dev/stdout)
        raise InputError(f"{flag} {target} is a symbolic link; give the path of the file itself")
    if mode is not None and stat.S_ISDIR(mode):
        raise InputError(f"{flag} {target} is a directory; give a file name inside it")
    if mode is not None and not stat.S_ISREG(mode):
        raise InputError(f"{flag} {target} is not a regular file (a FIFO, socket or device); give a file path")
    folder = target.parent
    if not folder.is_dir():
        raise InputError(f"{flag} {target}: the folder {folder} does not exist; create it first")
    try:
        descriptor, probe = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".check")
        os.close(descriptor)
        os.unlink(probe)
    except OSError as error:
        raise InputError(f"{flag} {target}: cannot write in {folder} ({_reason(error)}); choose a writable folder") \
            from None


def check_output_targets(targets: Mapping[str, str | Path | None],
                         inputs: Mapping[str, str | Path | None] | None = None) -> None:
    """Refuse, before any work, an output path that could not be written or would destroy
    something: a missing or unwritable folder, a directory, a non-regular file, one path given
    for two outputs, or an output that is one of the ``inputs`` (the model, the spec, ...).
    ``targets`` and ``inputs`` map a flag (for the message) to a path; None entries are unset."""
    given = [(flag, Path(path)) for flag, path in targets.items() if path is not None]
    sources = [(label, Path(path)) for label, path in (inputs or {}).items() if path is not None]
    for index, (flag, target) in enumerate(given):
        for label, source in sources:
            if same_file(target, source):
                raise InputError(f"{flag} {target} is the {label}; writing there would destroy it: choose another file")
        for other_flag, other in given[:index]:
            if same_file(target, other):
                raise InputError(f"{flag} and {other_flag} are both {target}; give each output its own file")
        _check_writable(flag, target)
