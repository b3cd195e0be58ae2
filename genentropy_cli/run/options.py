"""The settings of a run, validated in one place.
"""

from __future__ import annotations

import math
from typing import Sequence
from genentropy_cli.errors import InputError

def validate_scales(scales: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(s) for s in scales)
    if not values:
        raise InputError("give at least one scale, e.g. --scale 1e-4")
    for value in values:
        if not (value > 0 and math.isfinite(value)):
            raise InputError(f"scale must be a positive number, got {value:g}")
    return values
