"""The numbers of a fixed set of runs (estimate on three sample models, a float32 run, a sweep,
a three-model compare, samples, torchrun with two processes) recorded before the package was
reorganised into layers: the reorganisation must not move any of them.

On the platform they were recorded on (same torch, CPU model and thread count) they must be
identical to the last bit; elsewhere other BLAS/LAPACK kernels may change the round-off, so
float64 runs must agree to 1e-9 relative and the float32 run to 1e-4. Documents may gain fields;
every recorded number must still be there."""

from __future__ import annotations

import json
import math

import pytest
from golden_pipeline import FLOAT32_RUNS, GOLDEN, RUNS, TORCHRUN_RUNS, numbers, platform_fingerprint, run
from longrun_support import ADDRESS_IN_USE, GLOO_UNAVAILABLE, LAUNCH_ATTEMPTS

RECORDED = json.loads(GOLDEN.read_text())
SAME_PLATFORM = RECORDED["platform"] == platform_fingerprint()


def assert_same_numbers(name: str, got: dict, expected: dict) -> None:
    missing = sorted(set(expected) - set(got))
    assert not missing, f"{name}: recorded numbers missing from the document: {missing[:10]}"  # new fields may appear
    tolerance = 0.0 if SAME_PLATFORM else (1e-4 if name in FLOAT32_RUNS else 1e-9)
    for path, value in expected.items():
        other = got[path]
        if value is None or other is None:
            assert value is other, f"{name}{path}: {other} != {value}"
        elif math.isnan(value):
            assert math.isnan(other), f"{name}{path}: {other} != nan"
        elif tolerance == 0.0:
            assert other == value, f"{name}{path}: {other!r} != {value!r} (same platform: bit for bit)"
        else:
            assert other == pytest.approx(value, rel=tolerance, abs=tolerance), f"{name}{path}: {other} != {value}"


@pytest.mark.parametrize("name", list(RUNS))
def test_numbers_are_those_recorded(name):
    assert_same_numbers(name, numbers(run(name)), RECORDED["runs"][name])


@pytest.mark.parametrize("name", list(TORCHRUN_RUNS))
def test_torchrun_numbers_are_those_recorded(name):
    for attempt in range(LAUNCH_ATTEMPTS):  # a busy port is retried: each launch binds a fresh one
        try:
            document = run(name)
            break
        except RuntimeError as error:
            if ADDRESS_IN_USE.search(str(error)) and attempt + 1 < LAUNCH_ATTEMPTS:
                continue
            if GLOO_UNAVAILABLE.search(str(error)) and not ADDRESS_IN_USE.search(str(error)):
                pytest.skip(f"the gloo backend cannot start here: {GLOO_UNAVAILABLE.search(str(error)).group(0)}")
            raise
    assert_same_numbers(name, numbers(document), RECORDED["runs"][name])
