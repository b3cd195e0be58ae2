"""Per-sample rows: what a batch hands to the ledger, and what the ledger summarises.

``SampleRows`` are one decoder's rows: per sample, the entropy term h_i per scale, -log p(z_i),
the collapsed-direction counts and the extreme singular values of J (on the Cholesky log-det
path only for the eigenvalue subsample: elsewhere the counts are -1 and the singular values NaN,
and the summary's diagnostics come from the subsample). ``PairedRows`` are several
decoders' rows on the same sample indices (``compare``, or one conditional decoder's classes):
the statistics' columns are every model's h_i per scale, then every pair's difference h_a - h_b
per scale, then every weighted sum sum_m w_m h_m per scale (``combinations``: H(X|Y) =
sum_y p(y) h_y, and differences of such sums), so paired standard errors come from the same
streaming moments as the entropies. A sample is finite when every column is (a sample
non-finite for one model is dropped for all).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from genentropy_cli.core.logdet import collapsed_directions
from genentropy_cli.core.stats import LogHistogram

__all__ = ["PairedRows", "PairedSummary", "SampleRows", "SampleSummary", "RecordField", "never_finite_note"]

RecordField = tuple[str, str, bool]
"""(name, numpy dtype, per scale) of one per-sample output column."""


MAX_LISTED_NONFINITE = 100
SINGULAR_VALUE_QUANTILES = {"min": 0.0, "q01": 0.01, "median": 0.5, "q99": 0.99, "max": 1.0}


def count_samples(summary: "SampleSummary | PairedSummary", finite: np.ndarray, first_index: int) -> None:
    """Add consecutive samples from ``first_index`` to a summary's counts: the finite ones, the
    non-finite ones and (the first ``MAX_LISTED_NONFINITE``) their indices."""
    bad = np.flatnonzero(~finite) + first_index
    summary.num_nonfinite += int(bad.size)
    room = MAX_LISTED_NONFINITE - len(summary.nonfinite_indices)
    summary.nonfinite_indices.extend(int(index) for index in bad[: max(room, 0)])
    summary.count += int(finite.sum())


@dataclass
class SampleRows:
    """Per-sample columns of consecutive samples (float64 except the collapsed counts)."""

    terms: np.ndarray  # (n, S) h_i per scale
    neg_log_density: np.ndarray  # (n,)   -log p(z_i)
    collapsed: np.ndarray  # (n, S) directions with lambda < s^2; -1 where no eigenvalues were taken
    sigma_min: np.ndarray  # (n,)   smallest singular value of J; NaN where no eigenvalues were taken
    sigma_max: np.ndarray  # (n,)   largest singular value of J

    COLUMNS = ("terms", "neg_log_density", "collapsed", "sigma_min", "sigma_max")

    @classmethod
    def from_terms(cls, terms, scales: Sequence[float]) -> "SampleRows":
        """From an ``engine.SampleTerms`` batch."""
        eigenvalues = terms.eigenvalues
        collapsed = collapsed_directions(eigenvalues, scales).numpy().astype(np.int64)
        sigma_min = np.sqrt(eigenvalues[:, 0].numpy()) if eigenvalues.shape[1] else np.zeros(len(eigenvalues))
        sigma_max = np.sqrt(eigenvalues[:, -1].numpy()) if eigenvalues.shape[1] else np.zeros(len(eigenvalues))
        missing = ~terms.eigenvalues_taken.numpy()
        if missing.any():
            collapsed[missing] = -1
            sigma_min, sigma_max = sigma_min.copy(), sigma_max.copy()
            sigma_min[missing] = sigma_max[missing] = np.nan
        return cls(
            terms.entropy_terms.numpy().astype(np.float64, copy=False),
            terms.neg_log_density.numpy().astype(np.float64, copy=False),
            collapsed, sigma_min, sigma_max,
        )

    @classmethod
    def empty(cls, num_scales: int) -> "SampleRows":
        return cls(np.zeros((0, num_scales)), np.zeros(0), np.zeros((0, num_scales), dtype=np.int64), np.zeros(0),
                   np.zeros(0))

    def with_columns(self, columns: Mapping[str, np.ndarray]) -> "SampleRows":
        """Rows of this kind from ``columns`` (as ``columns()`` names them): a checkpoint's."""
        return SampleRows(**{name: np.asarray(columns[name]) for name in self.COLUMNS})

    def new_summary(self, num_scales: int) -> "SampleSummary":
        return SampleSummary(num_scales)

    def summary_from_state(self, num_scales: int, meta: dict, arrays: Mapping[str, np.ndarray]) -> "SampleSummary":
        return SampleSummary.from_state(num_scales, meta, arrays)

    def column_owner(self, column: int, num_scales: int) -> str | None:
        """Which model a statistics column belongs to (None: the only one)."""
        return None

    def record_fields(self) -> list[RecordField]:
        """The per-sample output's columns after ``index`` (``per_sample``)."""
        return [("neg_log_density", "<f8", False), ("h", "<f8", True), ("collapsed", "<i8", True)]

    def record_values(self) -> dict[str, np.ndarray]:
        return {"neg_log_density": self.neg_log_density, "h": self.terms, "collapsed": self.collapsed}

    def __len__(self) -> int:
        return int(self.terms.shape[0])

    def columns(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in self.COLUMNS}

    def slice(self, start: int, stop: int) -> "SampleRows":
        return SampleRows(**{name: column[start:stop] for name, column in self.columns().items()})

    @classmethod
    def concat(cls, pieces: Sequence["SampleRows"]) -> "SampleRows":
        if len(pieces) == 1:
            return pieces[0]
        return cls(**{name: np.concatenate([getattr(piece, name) for piece in pieces]) for name in cls.COLUMNS})

    @property
    def finite(self) -> np.ndarray:
        return np.isfinite(self.terms).all(axis=1)

    @property
    def has_eigenvalues(self) -> np.ndarray:
        """(n,) bool: the samples whose eigenvalues were taken (collapsed counts >= 0)."""
        return (self.collapsed >= 0).all(axis=1)


@dataclass
class SampleSummary:
    """What the diagnostics report about the samples used: extreme singular values, collapsed
    directions (over the ``eigen_count`` finite samples whose eigenvalues were taken: all of them,
    or the eigenvalue subsample on the Cholesky path), non-finite samples."""

    num_scales: int
    count: int = 0
    collapsed_sum: np.ndarray = field(default=None)  # type: ignore[assignment]
    sigma_min: LogHistogram = field(default_factory=LogHistogram)
    sigma_max: LogHistogram = field(default_factory=LogHistogram)
    num_nonfinite: int = 0
    nonfinite_indices: list[int] = field(default_factory=list)
    eigen_count: int | None = None

    def __post_init__(self) -> None:
        if self.collapsed_sum is None:
            self.collapsed_sum = np.zeros(self.num_scales, dtype=np.int64)
        if self.eigen_count is None:
            self.eigen_count = self.count

    def add(self, rows: SampleRows, first_index: int) -> None:
        finite = rows.finite
        count_samples(self, finite, first_index)
        known = finite & rows.has_eigenvalues
        self.eigen_count += int(known.sum())
        self.collapsed_sum = self.collapsed_sum + rows.collapsed[known].sum(axis=0)
        self.sigma_min.add(rows.sigma_min[known])
        self.sigma_max.add(rows.sigma_max[known])

    def copy(self) -> "SampleSummary":
        return SampleSummary(self.num_scales, self.count, self.collapsed_sum.copy(), self.sigma_min.copy(),
                             self.sigma_max.copy(), self.num_nonfinite, list(self.nonfinite_indices), self.eigen_count)

    def diagnostics(self, scales: Sequence[float]) -> dict:
        return {
            "smallest_singular_value": self.sigma_min.quantile(0.0),
            "largest_singular_value": self.sigma_max.quantile(1.0),
            "smallest_singular_value_quantiles": _quantiles(self.sigma_min),
            "largest_singular_value_quantiles": _quantiles(self.sigma_max),
            "mean_collapsed_directions": {
                f"{scale:g}": (float(total) / self.eigen_count if self.eigen_count else None)
                for scale, total in zip(scales, self.collapsed_sum)
            },
            "singular_value_samples": self.eigen_count,
        }

    def to_state(self, prefix: str = "") -> tuple[dict, dict[str, np.ndarray]]:
        meta = {"count": self.count, "eigen_count": self.eigen_count, "num_nonfinite": self.num_nonfinite,
                "nonfinite_indices": list(self.nonfinite_indices),
                "sigma_extremes": [self.sigma_min.minimum, self.sigma_min.maximum,
                                   self.sigma_max.minimum, self.sigma_max.maximum]}
        arrays = {f"{prefix}summary_collapsed_sum": self.collapsed_sum,
                  f"{prefix}summary_sigma_min": self.sigma_min.counts, f"{prefix}summary_sigma_max": self.sigma_max.counts}
        return meta, arrays

    @classmethod
    def from_state(cls, num_scales: int, meta: dict, arrays: Mapping[str, np.ndarray], prefix: str = "") -> "SampleSummary":
        low_min, low_max, high_min, high_max = (float(value) for value in meta["sigma_extremes"])
        return cls(num_scales, int(meta["count"]),
                   np.asarray(arrays[f"{prefix}summary_collapsed_sum"], dtype=np.int64),
                   LogHistogram(np.asarray(arrays[f"{prefix}summary_sigma_min"], dtype=np.int64), low_min, low_max),
                   LogHistogram(np.asarray(arrays[f"{prefix}summary_sigma_max"], dtype=np.int64), high_min, high_max),
                   int(meta["num_nonfinite"]), [int(index) for index in meta["nonfinite_indices"]],
                   int(meta.get("eigen_count", meta["count"])))


def _quantiles(histogram: LogHistogram) -> dict | None:
    if histogram.total == 0:
        return None
    return {name: histogram.quantile(level) for name, level in SINGULAR_VALUE_QUANTILES.items()}


@dataclass
class PairedRows:
    """Several models' rows on the same sample indices; ``names`` label the per-sample output."""

    models: tuple[SampleRows, ...]
    pairs: tuple[tuple[int, int], ...]
    names: tuple[str, ...]
    combinations: tuple[tuple[float, ...], ...] = ()
    """Weights w (one per model) of each extra column group sum_m w_m h_m."""

    @property
    def terms(self) -> np.ndarray:
        """(n, M*S + P*S + C*S): every model's h_i per scale, every pair's h_a - h_b per scale,
        every combination's sum_m w_m h_m per scale."""
        differences = [self.models[a].terms - self.models[b].terms for a, b in self.pairs]
        weighted = []
        for weights in self.combinations:  # positive and negative parts apart: equal models differ by exactly 0
            parts = [np.zeros_like(self.models[0].terms), np.zeros_like(self.models[0].terms)]
            for weight, model in zip(weights, self.models):
                if weight != 0:
                    parts[weight < 0] += abs(weight) * model.terms
            weighted.append(parts[0] - parts[1])
        return np.concatenate([model.terms for model in self.models] + differences + weighted, axis=1)

    @property
    def finite(self) -> np.ndarray:
        return np.logical_and.reduce([model.finite for model in self.models])

    def __len__(self) -> int:
        return len(self.models[0])

    def slice(self, start: int, stop: int) -> "PairedRows":
        return PairedRows(tuple(model.slice(start, stop) for model in self.models), self.pairs, self.names,
                          self.combinations)

    @classmethod
    def concat(cls, pieces: Sequence["PairedRows"]) -> "PairedRows":
        if len(pieces) == 1:
            return pieces[0]
        models = tuple(SampleRows.concat([piece.models[index] for piece in pieces])
                       for index in range(len(pieces[0].models)))
        return cls(models, pieces[0].pairs, pieces[0].names, pieces[0].combinations)

    def columns(self) -> dict[str, np.ndarray]:
        return {f"model{index}_{name}": column for index, model in enumerate(self.models)
                for name, column in model.columns().items()}

    def with_columns(self, columns: Mapping[str, np.ndarray]) -> "PairedRows":
        models = tuple(SampleRows(**{name: np.asarray(columns[f"model{index}_{name}"]) for name in SampleRows.COLUMNS})
                       for index in range(len(self.models)))
        return PairedRows(models, self.pairs, self.names, self.combinations)

    def new_summary(self, num_scales: int) -> "PairedSummary":
        return PairedSummary([SampleSummary(num_scales) for _ in self.models])

    def summary_from_state(self, num_scales: int, meta: dict, arrays: Mapping[str, np.ndarray]) -> "PairedSummary":
        return PairedSummary.from_state(num_scales, meta, arrays)

    def column_owner(self, column: int, num_scales: int) -> str | None:
        model = column // num_scales
        return self.names[model] if model < len(self.names) else None

    def record_fields(self) -> list[RecordField]:
        return [(f"{name}.{field_name}", dtype, per_scale) for name in self.names
                for field_name, dtype, per_scale in self.models[0].record_fields()]

    def record_values(self) -> dict[str, np.ndarray]:
        return {f"{name}.{key}": values for name, model in zip(self.names, self.models)
                for key, values in model.record_values().items()}

    @classmethod
    def empty(cls, num_models: int, num_scales: int, pairs: Sequence[tuple[int, int]],
              names: Sequence[str], combinations: Sequence[Sequence[float]] = ()) -> "PairedRows":
        return cls(tuple(SampleRows.empty(num_scales) for _ in range(num_models)), tuple(pairs), tuple(names),
                   tuple(tuple(float(weight) for weight in weights) for weights in combinations))


def never_finite_note(summary: "SampleSummary | PairedSummary", names: Sequence[str]) -> str:
    """``: every sample of y=1 was non-finite; leave it out ...`` for the members never finite (a
    sample non-finite for one member is dropped for all), else nothing."""
    never = summary.never_finite(names) if isinstance(summary, PairedSummary) else []
    if not never:
        return ""
    shown = ", ".join(never[:5]) + (f" and {len(never) - 5} more" if len(never) > 5 else "")
    return (f": every sample of {shown} was non-finite; leave {'it' if len(never) == 1 else 'them'} out "
            "(--classes for a class) or check the decoder there")


@dataclass
class PairedSummary:
    """Each model's ``SampleSummary`` (over the samples finite for it), and the samples dropped
    for all models because one of them was non-finite there."""

    models: list[SampleSummary]
    count: int = 0
    num_nonfinite: int = 0
    nonfinite_indices: list[int] = field(default_factory=list)

    def add(self, rows: PairedRows, first_index: int) -> None:
        for summary, model_rows in zip(self.models, rows.models):
            summary.add(model_rows, first_index)
        count_samples(self, rows.finite, first_index)

    def never_finite(self, names: Sequence[str]) -> list[str]:
        """The models (classes) of ``names`` none of whose samples was finite."""
        return [name for name, summary in zip(names, self.models) if summary.count == 0 and summary.num_nonfinite > 0]

    def copy(self) -> "PairedSummary":
        return PairedSummary([summary.copy() for summary in self.models], self.count, self.num_nonfinite,
                             list(self.nonfinite_indices))

    def diagnostics(self, scales: Sequence[float]) -> dict:
        return {"models": [summary.diagnostics(scales) for summary in self.models]}

    def pooled(self) -> SampleSummary:
        """Every model's samples as one summary (histograms and counts add exactly): the
        spectrum over all classes of a conditional decoder."""
        first = self.models[0]
        return SampleSummary(
            first.num_scales, sum(item.count for item in self.models),
            sum((item.collapsed_sum for item in self.models), np.zeros(first.num_scales, dtype=np.int64)),
            *(LogHistogram(sum(getattr(item, name).counts for item in self.models),
                           min(getattr(item, name).minimum for item in self.models),
                           max(getattr(item, name).maximum for item in self.models))
              for name in ("sigma_min", "sigma_max")),
            self.num_nonfinite, list(self.nonfinite_indices), sum(item.eigen_count for item in self.models))

    def to_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        metas, arrays = [], {}
        for index, summary in enumerate(self.models):
            meta, model_arrays = summary.to_state(prefix=f"model{index}_")
            metas.append(meta)
            arrays.update(model_arrays)
        return {"models": metas, "count": self.count, "num_nonfinite": self.num_nonfinite,
                "nonfinite_indices": list(self.nonfinite_indices)}, arrays

    @classmethod
    def from_state(cls, num_scales: int, meta: dict, arrays: Mapping[str, np.ndarray]) -> "PairedSummary":
        models = [SampleSummary.from_state(num_scales, model_meta, arrays, prefix=f"model{index}_")
                  for index, model_meta in enumerate(meta["models"])]
        return cls(models, int(meta["count"]), int(meta["num_nonfinite"]),
                   [int(index) for index in meta["nonfinite_indices"]])
