"""The numbers of a fixed set of runs (estimate on three sample models, a float32 run, a sweep,
a three-model compare, samples, torchrun with two processes) recorded before the package was
reorganised into layers: the reorganisation must not move any of them.

They were recorded with the Gram step on torch's kernels (MKL's float64 GEMM and syevd). Since
issue 18 the CPU Gram step for d <= ``NUMPY_GRAM_MAX_DIM`` runs numpy's (OpenBLAS's syrk and
syevd): the same float64 arithmetic (exact products of the float32 or float64 Jacobian entries,
float64 sums, a backward-stable eigensolver) in another summation order, so the last bits move,
and nothing else may. On the platform they were recorded on (same torch, CPU model and thread
count) the comparison is therefore to round-off, not bit for bit (the recorded numbers are kept;
re-recording them from the new code would test nothing):

* entropy estimates and their confidence intervals (means over samples): 1e-12 relative. Each
  eigenvalue moves by about eps * lambda_max between two such solvers; a mean of per-sample
  log-determinants moved by at most 3e-13 relative when the kernels changed.
* every other number: 1e-9 relative or absolute, the tolerance used across platforms. Some
  numbers amplify eigenvalue round-off by the conditioning: a quantity computed from a small
  eigenvalue lambda moves by about eps * lambda_max / lambda relative (the VAE's smallest
  singular value: 7e-10), the p-value of |z| ~ 30 by about z * dz (4e-10), the precision
  probe's float32-minus-float64 differences by ~2e-10 absolute on terms of ~100.

Elsewhere other BLAS/LAPACK kernels may change the round-off of the decoder too, so float64 runs
must agree to 1e-9 relative and the float32 run to 1e-4. Documents may gain fields; every
recorded number must still be there."""

from __future__ import annotations

import json
import math
import re

import pytest
from golden_pipeline import FLOAT32_RUNS, GOLDEN, RUNS, TORCHRUN_RUNS, numbers, platform_fingerprint, run
from longrun_support import ADDRESS_IN_USE, GLOO_UNAVAILABLE, LAUNCH_ATTEMPTS

RECORDED = json.loads(GOLDEN.read_text())
SAME_PLATFORM = RECORDED["platform"] == platform_fingerprint()
ENTROPY_ESTIMATE = re.compile(r"\.(entropy|ci95\[\d\])$")
"""An estimate's entropy or confidence bound (a mean over samples), not a per-sample term."""


def round_off_tolerance(name: str, path: str) -> float:
    """Relative (and absolute) tolerance of one recorded number: see the module's docstring."""
    if not SAME_PLATFORM:
        return 1e-4 if name in FLOAT32_RUNS else 1e-9
    return 1e-12 if ENTROPY_ESTIMATE.search(path) else 1e-9


def assert_same_numbers(name: str, got: dict, expected: dict) -> None:
    missing = sorted(set(expected) - set(got))
    assert not missing, f"{name}: recorded numbers missing from the document: {missing[:10]}"  # new fields may appear
    for path, value in expected.items():
        tolerance = round_off_tolerance(name, path)
        other = got[path]
        if value is None or other is None:
            assert value is other, f"{name}{path}: {other} != {value}"
        elif math.isnan(value):
            assert math.isnan(other), f"{name}{path}: {other} != nan"
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
