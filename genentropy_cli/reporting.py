"""Rendering results: Rich tables and JSON on stdout, progress and messages on stderr."""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from .engine import EntropyResult, ProgressCallback

stdout_console = Console(highlight=False)
stderr_console = Console(stderr=True, highlight=False)


def format_number(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def format_error(value: float | None) -> str:
    """Standard errors with two significant figures."""
    if value is None or not math.isfinite(value):
        return "-"
    if value == 0:
        return "0"
    return f"{value:.2g}" if value < 1e-3 or value >= 1e3 else f"{value:.{max(0, 1 - math.floor(math.log10(value)))}f}"


def latent_label(result: EntropyResult) -> str:
    return result.latent.describe()


def estimate_table(result: EntropyResult, model_path: str) -> Table:
    """One row per scale: entropy, standard error, per-sample std, 95% CI and N; the model,
    latent, time and throughput in the title and caption."""
    table = Table(
        title=f"Entropy of {model_path}",
        caption=(
            f"latent {latent_label(result)}, D = {result.output_dim}; {result.settings['device']}, "
            f"{result.settings['dtype']}, seed {result.settings['seed']}; "
            f"{result.elapsed_seconds:.1f} s, {result.samples_per_second:,.0f} samples/s. "
            "Entropy in nats; Std = per-sample std; Std. error = Std / sqrt(N)."
        ),
    )
    for header in ("Scale s", "Entropy", "Std. error", "Std", "95% CI", "N"):
        table.add_column(header, justify="right")
    for item in result.estimates:
        table.add_row(
            f"{item.scale:.0e}",
            format_number(item.entropy),
            format_error(item.stderr),
            format_number(item.std),
            f"{format_number(item.ci95[0])} to {format_number(item.ci95[1])}",
            str(item.num_samples),
        )
    return table


def nonfinite_note(result: EntropyResult) -> str | None:
    if not result.num_nonfinite:
        return None
    shown = ", ".join(str(index) for index in result.nonfinite_indices[:10])
    more = " ..." if result.num_nonfinite > 10 else ""
    return f"skipped {result.num_nonfinite} non-finite sample(s) (indices {shown}{more}); N counts the rest"


def print_json(document: dict) -> None:
    """Exactly one JSON document on stdout."""
    print(json.dumps(document, indent=2, allow_nan=True))


def write_json(document: dict, path: str | Path) -> None:
    """Write the JSON atomically, so a crash never leaves half a file."""
    target = Path(path)
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_text(json.dumps(document, indent=2, allow_nan=True) + "\n")
    os.replace(temporary, target)


def warn(message: str) -> None:
    stderr_console.print(f"[yellow]warning:[/yellow] {message}", soft_wrap=True)


def info(message: str) -> None:
    stderr_console.print(message, soft_wrap=True)


@contextmanager
def progress_bar(description: str, scales: Sequence[float], enabled: bool = True) -> Iterator[ProgressCallback | None]:
    """A Rich progress bar on stderr with ETA, samples/s and the running estimate."""
    if not enabled:
        yield None
        return
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[running]}"),
        console=stderr_console,
        transient=True,
    )
    task = progress.add_task(description, total=None, rate="", running="")

    def update(done: int, total: int, running: Sequence[float]) -> None:
        elapsed = progress.tasks[task].elapsed or 0.0
        rate = f"{done / elapsed:,.0f} samples/s" if elapsed > 0 else ""
        shown = ", ".join(f"H({scale:.0e})={value:.4f}" for scale, value in zip(scales, running))
        progress.update(task, completed=done, total=total, rate=rate, running=shown)

    with progress:
        yield update
