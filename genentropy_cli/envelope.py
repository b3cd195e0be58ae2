"""One envelope for every JSON document genentropy writes, and strict JSON.

Every document starts with ``genentropy_version`` and ``command``; the command's own fields
follow. Documents are strict JSON: a NaN or infinite number (an estimate from no samples, a
z-score of a zero-error difference) is written as ``null``, never as the ``NaN``/``Infinity``
literals that ``json.loads`` accepts but ``jq`` and most other parsers reject.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

from genentropy_cli.version import __version__

__all__ = ["envelope", "strict", "to_json"]


def envelope(command: str, body: Mapping[str, Any]) -> dict:
    """``{"genentropy_version": ..., "command": command, **body}``."""
    return {"genentropy_version": __version__, "command": command, **body}


def strict(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (recursively; tuples become lists)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {key: strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(item) for item in value]
    return value


def to_json(document: Mapping[str, Any]) -> str:
    """The strict JSON text of a document (indented, non-finite numbers as null)."""
    return json.dumps(strict(document), indent=2, allow_nan=False)
