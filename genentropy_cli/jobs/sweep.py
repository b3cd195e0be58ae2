"""Scale sweeps: one pass over the latents serves every s; has H_s converged as s -> 0?

Two estimates H_a, H_b (same latents, scales a and b) *agree* when

    |H_a - H_b| <= k * sqrt(se_a^2 + se_b^2)            (k = ``tolerance_se``, default 3)

i.e. picking one scale rather than the other moves the answer by less than k combined
standard errors. The sweep is converged when the second-smallest scale agrees with the
smallest; the verdict names the largest s from which every smaller scale agrees with the
smallest. The functions here are pure, apart from ``sweep_scale`` which runs the engine once.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from genentropy_cli.core.references import NAMED_REFERENCES
from genentropy_cli.defaults import DEFAULT_AGREEMENT_SE, DEFAULT_SWEEP_SCALES
from genentropy_cli.errors import InputError
from genentropy_cli.jobs.conditional import ConditionalResult
from genentropy_cli.jobs.estimate import estimate_entropy
from genentropy_cli.run.options import validate_scales
from genentropy_cli.run.results import EntropyResult, ScaleEstimate
from genentropy_cli.run.rows import PairedRows, SampleRows

# ------------------------------------------------------------------------------ scales


def parse_scales(text: str) -> tuple[float, ...]:
    """``"1e-1,1e-2"`` -> (0.1, 0.01), largest first (Table 1's order); each scale once."""
    pieces = [piece.strip() for piece in str(text).split(",")]
    if not any(pieces):
        raise InputError("--scales needs a comma-separated list of positive numbers, e.g. 1e-1,1e-2,1e-3,1e-4")
    values = []
    for piece in pieces:
        if not _DECIMAL.fullmatch(piece):  # float() would read 1_0 as 10 and "٣" as 3: a typo is refused
            raise InputError(f"--scales: {piece!r} is not a number; give e.g. 1e-1,1e-2,1e-3,1e-4")
        values.append(float(piece))
    return sweep_order(values)


_DECIMAL = re.compile(r"[+-]?(([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|inf|infinity|nan)", re.IGNORECASE)
"""A number as people write one: digits, one point, an exponent (no underscores, no other digits);
inf and nan are read so that the scale check names them."""


def sweep_order(scales: Sequence[float]) -> tuple[float, ...]:
    """Validated scales sorted from largest to smallest; a repeated scale is an error."""
    values = validate_scales(scales)
    for index, value in enumerate(values):
        if any(math.isclose(value, other, rel_tol=1e-12) for other in values[:index]):
            raise InputError(f"scale {value:g} is given twice; list each scale once")
    return tuple(sorted(values, reverse=True))


# ------------------------------------------------------------------------------ references

_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}
_FUNCTIONS: dict[str, Callable[..., float]] = {
    "log": math.log, "ln": math.log, "log2": math.log2, "log10": math.log10, "exp": math.exp, "sqrt": math.sqrt,
}
_BINARY: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[float], float]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_EXPRESSION_HELP = ("use a number, a name (" + ", ".join([*NAMED_REFERENCES, "model"]) + ") or an expression of "
                    "numbers, + - * / ** ( ), pi, e, log, exp, sqrt, e.g. log(2*pi) or 31*log(2*pi*e)")
_MAX_EXPRESSION_LENGTH = 200


def _evaluate_node(node: ast.AST) -> float:
    """Walk a parsed expression allowing only numbers, the constants and functions above and
    arithmetic: never ``eval``. Constants become floats, so ``**`` cannot build huge integers."""
    if isinstance(node, ast.Expression):
        return _evaluate_node(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _BINARY[type(node.op)](_evaluate_node(node.left), _evaluate_node(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate_node(node.operand))
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS
            and not node.keywords and 1 <= len(node.args) <= (2 if node.func.id == "log" else 1)):
        return _FUNCTIONS[node.func.id](*(_evaluate_node(argument) for argument in node.args))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitXor):
        raise ValueError("'^' is not a power here; write ** (e.g. 2**0.5)")
    name = getattr(node, "id", None) or getattr(getattr(node, "func", None), "id", None)
    raise ValueError(f"{name!r} is not allowed" if name else f"{type(node).__name__} is not allowed")


def evaluate_constant_expression(text: str) -> float:
    """The value of a constant expression such as ``log(2*pi)`` or ``0.5*log(2*pi*e)*62``."""
    if len(text) > _MAX_EXPRESSION_LENGTH:
        raise InputError(f"--reference is longer than {_MAX_EXPRESSION_LENGTH} characters; {_EXPRESSION_HELP}")
    try:
        value = _evaluate_node(ast.parse(text.strip(), mode="eval"))
    except SyntaxError:
        raise InputError(f"--reference {text!r} is not a number or expression; {_EXPRESSION_HELP}") from None
    except OverflowError:
        raise InputError(f"--reference {text!r} is too large to evaluate; {_EXPRESSION_HELP}") from None
    except (ValueError, ZeroDivisionError, TypeError, RecursionError) as error:
        raise InputError(f"--reference {text!r} cannot be evaluated ({error}); {_EXPRESSION_HELP}") from None
    if isinstance(value, complex) or not math.isfinite(value):
        raise InputError(f"--reference {text!r} is not a finite real number; {_EXPRESSION_HELP}")
    return float(value)


@dataclass(frozen=True)
class Reference:
    """A known true entropy (nats) and where it came from."""

    value: float
    label: str
    description: str = ""

    def to_dict(self) -> dict:
        return {"value": self.value, "label": self.label, "description": self.description}


def parse_reference(text: str, model_metadata: Mapping[str, Any] | None = None) -> Reference:
    """``--reference``: a name (``half-sphere``, ``sphere``, or ``model`` for the ``true_entropy``
    the model file records), a number, or a constant expression such as ``log(2*pi)``."""
    label = str(text).strip()
    key = label.lower()
    if key in NAMED_REFERENCES:
        value, description = NAMED_REFERENCES[key]
        return Reference(value, key, description)
    if key == "model":
        recorded = (model_metadata or {}).get("true_entropy")
        if not isinstance(recorded, (int, float)) or isinstance(recorded, bool) or not math.isfinite(recorded):
            raise InputError("--reference model: the model file records no true entropy; give the value, "
                             "e.g. --reference 'log(2*pi)'")
        return Reference(float(recorded), "model", "the true entropy recorded in the model file")
    return Reference(evaluate_constant_expression(label), label, "")


def as_reference(reference: float | str | Reference | None,
                 model_metadata: Mapping[str, Any] | None = None) -> Reference | None:
    """A Reference from what the Python API accepts: a number, a string as for the CLI, or one."""
    if reference is None or isinstance(reference, Reference):
        return reference
    if isinstance(reference, str):
        return parse_reference(reference, model_metadata)
    value = float(reference)
    if not math.isfinite(value):
        raise InputError(f"the reference entropy must be finite, got {reference!r}")
    return Reference(value, f"{value:g}")


# ------------------------------------------------------------------------------ convergence


@dataclass(frozen=True)
class Comparison:
    """H(scale) - H(other) and its combined standard error sqrt(se^2 + se_other^2)."""

    scale: float
    other_scale: float
    difference: float
    stderr: float

    @property
    def stderrs(self) -> float:
        """|difference| in combined standard errors (inf when they are 0 and it is not)."""
        if self.stderr > 0:
            return abs(self.difference) / self.stderr
        return 0.0 if self.difference == 0 else (math.inf if self.stderr == 0 else math.nan)

    def agrees(self, tolerance_se: float) -> bool:
        return self.stderrs <= tolerance_se  # False for NaN (too few samples to tell)

    def to_dict(self, tolerance_se: float) -> dict:
        stderrs = self.stderrs
        return {"scale": self.scale, "other_scale": self.other_scale, "difference": self.difference,
                "stderr": self.stderr, "stderrs": stderrs if math.isfinite(stderrs) else None,
                "agrees": self.agrees(tolerance_se)}


def compare(first: ScaleEstimate, second: ScaleEstimate) -> Comparison:
    return Comparison(first.scale, second.scale, first.entropy - second.entropy,
                      math.hypot(first.stderr, second.stderr))


@dataclass(frozen=True)
class Convergence:
    """Successive and to-the-smallest comparisons, and the verdict they give."""

    tolerance_se: float
    smallest_scale: float
    successive: tuple[Comparison, ...]  # each scale against the next smaller one
    to_smallest: tuple[Comparison, ...]  # each larger scale against the smallest
    largest_agreeing_scale: float
    converged: bool | None  # None with a single scale: nothing to compare

    @property
    def verdict(self) -> str:
        smallest = f"s = {self.smallest_scale:.0e}"
        if self.converged is None:
            return "one scale only: give several (e.g. --scales 1e-1,1e-2,1e-3,1e-4) to check convergence"
        if self.converged:
            closest = next(item for item in self.to_smallest if item.scale == self.largest_agreeing_scale)
            return (f"converged: every s <= {self.largest_agreeing_scale:.0e} agrees with {smallest} within "
                    f"{self.tolerance_se:g} standard errors (s = {closest.scale:.0e} is "
                    f"{format_stderrs(closest.stderrs)} se away); s = {self.largest_agreeing_scale:.0e} is small enough "
                    "at this N")
        nearest = self.to_smallest[-1]
        return (f"not converged: no larger s agrees with {smallest} within {self.tolerance_se:g} standard errors "
                f"(s = {nearest.scale:.0e} is {format_stderrs(nearest.stderrs)} se away); the estimate still moves, "
                "so add smaller scales (in float64 below about 1e-4)")

    def to_dict(self) -> dict:
        return {
            "tolerance_se": self.tolerance_se,
            "rule": "|H_a - H_b| <= tolerance_se * sqrt(se_a^2 + se_b^2)",
            "smallest_scale": self.smallest_scale,
            "largest_agreeing_scale": self.largest_agreeing_scale,
            "converged": self.converged,
            "verdict": self.verdict,
            "successive": [item.to_dict(self.tolerance_se) for item in self.successive],
            "to_smallest": [item.to_dict(self.tolerance_se) for item in self.to_smallest],
        }


def format_stderrs(value: float) -> str:
    """A count of standard errors: 2 significant figures below 10, whole numbers above."""
    if not math.isfinite(value):
        return "inf" if value > 0 else "?"
    return f"{value:.2g}" if value < 10 else f"{value:,.0f}"


def check_tolerance(tolerance_se: float) -> None:
    if not (tolerance_se > 0 and math.isfinite(tolerance_se)):
        raise InputError(f"the tolerance (--tolerance-se) must be a positive number of standard errors, "
                         f"got {tolerance_se:g}")


def assess_convergence(estimates: Sequence[ScaleEstimate],
                       tolerance_se: float = DEFAULT_AGREEMENT_SE) -> Convergence:
    """Compare every scale with the next smaller and with the smallest (see the module doc)."""
    check_tolerance(tolerance_se)
    ordered = sorted(estimates, key=lambda item: item.scale, reverse=True)
    if not ordered:
        raise InputError("no estimates to compare")
    smallest = ordered[-1]
    successive = tuple(compare(larger, smaller) for larger, smaller in zip(ordered, ordered[1:]))
    to_smallest = tuple(compare(item, smallest) for item in ordered[:-1])
    agreeing = smallest.scale
    for item in reversed(to_smallest):  # from the smallest upwards, while every one agrees
        if not item.agrees(tolerance_se):
            break
        agreeing = item.scale
    converged = None if len(ordered) == 1 else agreeing > smallest.scale
    return Convergence(float(tolerance_se), smallest.scale, successive, to_smallest, agreeing, converged)


# ------------------------------------------------------------------------------ the sweep


@dataclass
class CollapseCounter:
    """Per scale, how many (finite) samples have an eigenvalue of J^T J below s^2: the latents
    where the regularisation really changes the log-determinant. When only a handful of
    samples do, the bias at that s comes from rare latents and the standard error can
    understate the error (docs/reproducing-table-1.md). Rows of several decoders (a conditional
    decoder's classes) are counted per decoder (``per_decoder``) and in total (``counts``)."""

    scales: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    per_decoder: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.scales)

    def add(self, first_index: int, rows: SampleRows | PairedRows) -> None:
        """``on_rows``: every used sample once, in order, on every process."""
        parts = rows.models if isinstance(rows, PairedRows) else (rows,)
        if not self.per_decoder:
            self.per_decoder = [[0] * len(self.scales) for _ in parts]
        for part, totals in zip(parts, self.per_decoder):
            below = part.collapsed[rows.finite] > 0
            for index, count in enumerate(below.sum(axis=0).tolist()):
                totals[index] += int(count)
                self.counts[index] += int(count)


@dataclass
class SweepResult:
    """The engine's result over all scales, with the reference and the convergence verdict.
    ``collapsed_samples[i]`` counts the samples with an eigenvalue of J^T J below
    ``estimates[i].scale`` squared (CollapseCounter). For a conditional decoder ``result`` is a
    ``ConditionalResult``: the verdict and the reference are about H(X|Y), and every class has
    its own verdict (``class_convergence``) and counts (``class_collapsed_samples``)."""

    result: EntropyResult | ConditionalResult
    reference: Reference | None
    convergence: Convergence
    collapsed_samples: tuple[int, ...] = ()
    class_convergence: tuple[Convergence, ...] = ()
    class_collapsed_samples: tuple[tuple[int, ...], ...] = ()

    @property
    def estimates(self) -> list[ScaleEstimate]:
        return self.result.estimates

    @property
    def conditional(self) -> bool:
        return isinstance(self.result, ConditionalResult)

    def reference_comparisons(self) -> list[Comparison]:
        """H_s - reference per scale, in the estimate's own standard errors (the reference is exact)."""
        if self.reference is None:
            return []
        return [Comparison(item.scale, 0.0, item.entropy - self.reference.value, item.stderr)
                for item in self.estimates]

    def to_dict(self, model: dict | None = None) -> dict:
        """The ``estimate`` JSON document (command ``sweep-scale``) plus ``reference`` and ``convergence``
        (and, conditional, ``class_convergence`` and ``class_collapsed_samples``)."""
        document = self.result.to_dict("sweep-scale", model=model)
        if self.reference is None:
            document["reference"] = None
        else:
            document["reference"] = {
                **self.reference.to_dict(),
                "differences": [{"scale": item.scale, "difference": item.difference,
                                 "stderrs": item.difference / item.stderr if item.stderr > 0 else None}
                                for item in self.reference_comparisons()],
            }
        document["convergence"] = self.convergence.to_dict()
        document["collapsed_samples"] = [{"scale": item.scale, "count": count}
                                         for item, count in zip(self.estimates, self.collapsed_samples)]
        if self.conditional:
            document["class_convergence"] = [{"label": item.label, **verdict.to_dict()}
                                             for item, verdict in zip(self.result.classes, self.class_convergence)]
            document["class_collapsed_samples"] = [
                {"label": item.label, "counts": [{"scale": estimate.scale, "count": count}
                                                 for estimate, count in zip(self.estimates, counts)]}
                for item, counts in zip(self.result.classes, self.class_collapsed_samples)]
        return document


def sweep_scale(
    decoder: Any,
    latent: Any,
    scales: Sequence[float] = DEFAULT_SWEEP_SCALES,
    *,
    reference: float | str | Reference | None = None,
    tolerance_se: float = DEFAULT_AGREEMENT_SE,
    **estimate_options: Any,
) -> SweepResult:
    """Estimate H_s at every scale in ONE pass (one eigen-decomposition of J^T J per sample
    serves all s, and gives every sample's collapsed counts: ``every_eigenvalue``), then compare the scales. ``estimate_options`` are ``estimate_entropy``'s
    (n_samples, batch_size, device, dtype, seed, progress, latent_distribution, labels, ...);
    with ``labels`` the sweep is of H(X|Y) and of every class."""
    ordered = sweep_order(scales)
    known = as_reference(reference)
    check_tolerance(tolerance_se)
    counter = CollapseCounter(ordered)
    user_on_rows = estimate_options.pop("on_rows", None)

    def on_rows(first_index: int, rows: SampleRows | PairedRows) -> None:
        counter.add(first_index, rows)
        if user_on_rows is not None:
            user_on_rows(first_index, rows)

    result = estimate_entropy(decoder, latent, scales=ordered, on_rows=on_rows, every_eigenvalue=True,
                              **estimate_options)
    convergence = assess_convergence(result.estimates, tolerance_se)
    if not isinstance(result, ConditionalResult):
        return SweepResult(result, known, convergence, tuple(counter.counts))
    return SweepResult(result, known, convergence, tuple(counter.counts),
                       tuple(assess_convergence(item.estimates, tolerance_se) for item in result.classes),
                       tuple(tuple(counts) for counts in counter.per_decoder))
