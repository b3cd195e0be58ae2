"""Shared pieces of the folder formats (a ``config.json`` beside weights, as libraries save them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from genentropy_cli.errors import InputError, first_line
from genentropy_cli.run.files import input_file

__all__ = ["CONFIG_FILE", "MAX_CONFIG_BYTES", "import_optional", "read_config"]

CONFIG_FILE = "config.json"
MAX_CONFIG_BYTES = 1024**2
"""A model's config.json is a few kilobytes; a larger one is not one (refused unread)."""


def read_config(folder: Path, quiet: bool = False) -> dict | None:
    """The folder's ``config.json`` as a mapping (None where absent; with ``quiet``, also where unreadable)."""
    file = folder / CONFIG_FILE
    if not file.is_file():
        return None
    try:
        if file.stat().st_size > MAX_CONFIG_BYTES:
            raise ValueError(f"larger than {MAX_CONFIG_BYTES} bytes")
        config = json.loads(input_file(file, "config file").read_text())
    except (OSError, ValueError, InputError) as error:
        if quiet:
            return None
        raise InputError(f"{file} is not readable JSON ({first_line(error)})") from None
    if not isinstance(config, dict):
        if quiet:
            return None
        raise InputError(f"{file} is not a mapping")
    return config


def import_optional(module: str, install: str, what: str) -> Any:
    """``import module``, or a one-line refusal saying how to ``install`` it."""
    try:
        return __import__(module)
    except ImportError:
        raise InputError(f"{what} needs {module}: {install}") from None
