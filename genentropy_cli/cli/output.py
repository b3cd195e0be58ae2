"""The one output sink of every command.

    stdout   the result only: Rich table(s), or with --json one strict JSON document
    --output the same JSON document, also written to FILE (atomically)
    stderr   progress, notes (both silenced by --quiet), warnings and errors

Under torchrun only rank 0 writes (its ranks share one run; see ``launch_rank``).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from genentropy_cli.cli.config import with_configuration
from genentropy_cli.cli.reporting import nonfinite_note, partial_note
from genentropy_cli.defaults import INTERRUPTED_EXIT_CODE
from genentropy_cli.envelope import to_json
from genentropy_cli.run.distributed import launch_rank
from genentropy_cli.run.hooks import ProgressCallback

stdout_console = Console(highlight=False)
stderr_console = Console(stderr=True, highlight=False)
PIPED_WIDTH = 200
"""Columns for tables on a stdout that is not a terminal (a file, a pipe): Rich's 80 would
wrap a model name or a number across lines where a program or an editor reads them."""

Render = Callable[[], Any]
"""Builds what a command shows as a table: one renderable or a list of them (only called
when no --json is asked for)."""


def print_results(*renderables: object) -> None:
    """Tables on stdout: ``COLUMNS`` if set, else the terminal's width, else ``PIPED_WIDTH``."""
    columns = os.environ.get("COLUMNS", "").strip()
    if columns.isdigit() and int(columns) > 0:
        stdout_console.width = int(columns)
    else:
        stdout_console.width = None if stdout_console.is_terminal else PIPED_WIDTH
    for renderable in renderables:
        stdout_console.print(renderable)


def json_text(document: dict) -> str:
    """The strict JSON of a result, with the running command's resolved configuration."""
    return to_json(with_configuration(document))


def print_json(document: dict) -> None:
    """Exactly one JSON document on stdout."""
    print(json_text(document))


def write_json(document: dict, path: str | Path) -> None:
    """Write the JSON atomically, so a crash never leaves half a file."""
    target = Path(path)
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_text(json_text(document) + "\n")
    os.replace(temporary, target)


def warn(message: str) -> None:
    stderr_console.print(f"[yellow]warning:[/yellow] {message}", soft_wrap=True)


def info(message: str) -> None:
    stderr_console.print(message, soft_wrap=True)


@contextmanager
def progress_bar(description: str, scales: Sequence[float], enabled: bool = True,
                 conditional: bool = False) -> Iterator[ProgressCallback | None]:
    """A Rich progress bar on stderr with ETA, samples/s and the running estimate (of a
    conditional decoder: H(X|Y), the last statistics columns)."""
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
        values = running[len(running) - len(scales):] if conditional else running
        name = "H(X|Y)" if conditional else "H"
        shown = ", ".join(f"{name}({scale:.0e})={value:.4f}" for scale, value in zip(scales, values))
        progress.update(task, completed=done, total=total, rate=rate, running=shown)

    with progress:
        yield update


class Sink:
    """Where one command's output goes, as its ``--json``, ``--output`` and ``--quiet`` say."""

    def __init__(self, json_output: bool = False, output: str | None = None, quiet: bool = False):
        self.json_output, self.output, self.quiet = json_output, output, quiet
        self.speaks = launch_rank() == 0

    @classmethod
    def of(cls, flags: Any) -> "Sink":
        """From the output bundle (``options.OutputFlags``)."""
        return cls(flags.json_output, flags.output, flags.quiet)

    def warn(self, message: str) -> None:
        """A warning on stderr (not silenced by --quiet)."""
        if self.speaks:
            warn(message)

    def info(self, message: str) -> None:
        """A note on stderr (silenced by --quiet)."""
        if self.speaks and not self.quiet:
            info(message)

    def progress(self, description: str, scales: Sequence[float] = (), conditional: bool = False):
        """A progress bar on stderr (none with --quiet): a context giving the progress callback."""
        return progress_bar(description, scales, enabled=self.speaks and not self.quiet, conditional=conditional)

    def emit(self, document: dict, render: Render) -> None:
        """The result: the JSON file (--output), then the JSON document or the table(s) on stdout."""
        if not self.speaks:
            return
        if self.output:
            write_json(document, self.output)
        if self.json_output:
            print_json(document)
            return
        rendered = render()
        print_results(*(rendered if isinstance(rendered, (list, tuple)) else [rendered]))

    def emit_run(self, document: dict, result: Any, render: Render) -> None:
        """An ``EntropyResult`` (estimate, sweep-scale): its notes (dropped samples, a partial or
        resumed run), the result, then exit status 130 if the run was interrupted."""
        for note in (nonfinite_note(result), partial_note(result)):
            if note:
                self.warn(note)
        if result.diagnostics.get("resumed_from_samples"):
            self.info(f"resumed from the checkpoint at {result.diagnostics['resumed_from_samples']} samples")
        self.emit(document, render)
        self.exit_if_partial(result)

    @staticmethod
    def exit_if_partial(result: Any) -> None:
        """Exit status 130 after an interrupted run's (partial) result was shown."""
        if getattr(result, "partial", False):
            raise typer.Exit(INTERRUPTED_EXIT_CODE)
