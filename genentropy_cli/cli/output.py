"""The one output sink of every command.

    stdout   the result only: Rich table(s), or with --json one strict JSON document
    --output the same JSON document, also written to FILE (atomically)
    stderr   progress, notes (both silenced by --quiet), warnings and errors

Under torchrun only rank 0 writes (its ranks share one run; see ``launch_rank``).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import typer
from rich.console import Console

from genentropy_cli.cli.config import with_configuration
from genentropy_cli.defaults import INTERRUPTED_EXIT_CODE
from genentropy_cli.envelope import to_json

if TYPE_CHECKING:  # the run layer imports torch; ``guard`` (so every command's help) imports this module
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
    from genentropy_cli.cli.fitting import fit_to_width

    columns = os.environ.get("COLUMNS", "").strip()
    if columns.isdigit() and int(columns) > 0:
        stdout_console.width = int(columns)
    else:
        stdout_console.width = None if stdout_console.is_terminal else PIPED_WIDTH
    for renderable in renderables:  # a table too wide for the width is stacked, never cut (fitting.py)
        stdout_console.print(fit_to_width(renderable, stdout_console, stdout_console.width))


def json_text(document: dict) -> str:
    """The strict JSON of a result, with the running command's resolved configuration."""
    return to_json(with_configuration(document))


def print_json(document: dict) -> None:
    """Exactly one JSON document on stdout."""
    print(json_text(document))


def write_text_atomically(text: str, path: str | Path) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``: a crash
    or a full disk never leaves half a file (nor the temporary one)."""
    target = Path(path)
    temporary = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        temporary.write_text(text)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_json(document: dict, path: str | Path) -> None:
    """Write the JSON atomically, so a crash never leaves half a file."""
    write_text_atomically(json_text(document) + "\n", path)


def fallback_path(command: str, folder: str | Path) -> Path:
    """Where a result goes when the file asked for cannot be written: a new, named file."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(folder) / f"genentropy-{command}-{stamp}-{os.getpid()}.json"


def save_fallback(text: str, command: str) -> Path | None:
    """Write a result to ``fallback_path`` in the working folder, else the temporary folder;
    the path written, or None where neither could be."""
    for folder in dict.fromkeys([os.getcwd(), tempfile.gettempdir()]):
        target = fallback_path(command, folder)
        try:
            write_text_atomically(text, target)
        except OSError:
            continue
        return target
    return None


def warn(message: str) -> None:
    stderr_console.print(f"[yellow]warning:[/yellow] {message}", soft_wrap=True)


def info(message: str) -> None:
    stderr_console.print(message, soft_wrap=True)


BAR_WIDTH, MIN_BAR_WIDTH = 40, 8
"""The progress bar's widest and narrowest bar (characters)."""
ETA_WIDTH = 7
"""``0:01:23`` or ``-:--:--``."""


def progress_layout(width: int, description: str, done: int, total: int, rate: str,
                    running: Sequence[str]) -> tuple[int, str]:
    """(bar width, running-estimate text) for a progress line ``width`` columns wide: the
    description, count, percentage, rate and ETA are shown whole; the bar shrinks to
    ``MIN_BAR_WIDTH``, then the running estimate keeps only its last scale, then goes."""
    count = 2 * len(f"{total:,}") + 1
    fixed = len(description) + count + len("100%") + len(rate) + ETA_WIDTH + 6  # 6 spaces between 7 columns
    for text in (", ".join(running), running[-1] if running else "", ""):
        room = width - fixed - (len(text) + 1 if text else 0)
        if room >= MIN_BAR_WIDTH or not text:
            return max(MIN_BAR_WIDTH, min(BAR_WIDTH, room)), text
    return MIN_BAR_WIDTH, ""


def make_progress(console: Console) -> tuple[Any, Any]:
    """The progress display on ``console`` and its bar column (whose width ``progress_layout``
    sets): description, bar, count, percentage, samples/s, ETA, running estimate; no text
    column wraps or is cut."""
    from rich.progress import (
        BarColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.table import Column

    bar = BarColumn(bar_width=BAR_WIDTH)
    progress = Progress(
        TextColumn("{task.description}", table_column=Column(no_wrap=True)),
        bar,
        TextColumn("{task.fields[count]}", table_column=Column(no_wrap=True)),
        TaskProgressColumn(table_column=Column(no_wrap=True)),
        TextColumn("{task.fields[rate]}", table_column=Column(no_wrap=True)),
        TimeRemainingColumn(table_column=Column(no_wrap=True)),
        TextColumn("{task.fields[running]}", table_column=Column(no_wrap=True)),
        console=console,
        transient=True,
    )
    return progress, bar


@contextmanager
def progress_bar(description: str, scales: Sequence[float], enabled: bool = True,
                 stage: str = "starting") -> Iterator[ProgressCallback | None]:
    """A Rich progress bar on stderr with ETA, samples/s and the running estimate (of a
    conditional decoder, whose running values hold more than one per scale: H(X|Y), the last
    ones). Until the first count it names the ``stage`` the command is in, which the run updates
    through ``update.stage`` (``run.hooks.ProgressCallback``): the decoder's checks, the precision
    probe; the count and its total replace it from the first batch on. On a narrow terminal the
    bar and then the running estimate give way (``progress_layout``): the count and ETA stay whole."""
    if not enabled:
        yield None
        return
    progress, bar = make_progress(stderr_console)
    task = progress.add_task(stage, total=None, rate="", running="", count="")

    def update(done: int, total: int, running: Sequence[float]) -> None:
        elapsed = progress.tasks[task].elapsed or 0.0
        rate = f"{done / elapsed:,.0f} samples/s" if elapsed > 0 else ""
        conditional = len(running) > len(scales)
        values = running[len(running) - len(scales):]
        name = "H(X|Y)" if conditional else "H"
        texts = [f"{name}({scale:.0e})={value:.4f}" for scale, value in zip(scales, values)]
        bar.bar_width, shown = progress_layout(stderr_console.width, description, done, total, rate, texts)
        progress.update(task, description=description, completed=done, total=total, count=f"{done:,}/{total:,}",
                        rate=rate, running=shown)

    update.stage = lambda text: progress.update(task, description=text)  # type: ignore[attr-defined]
    with progress:
        yield update


def _detach_stdout() -> None:
    """After stdout failed, point it at /dev/null: Python's own flush at exit must not fail again."""
    try:
        descriptor = os.open(os.devnull, os.O_WRONLY)
        os.dup2(descriptor, sys.stdout.fileno())
        os.close(descriptor)
    except (OSError, ValueError, AttributeError):  # no file descriptor (a test's captured stdout)
        pass


class Sink:
    """Where one command's output goes, as its ``--json``, ``--output`` and ``--quiet`` say."""

    def __init__(self, json_output: bool = False, output: str | None = None, quiet: bool = False):
        from genentropy_cli.run.distributed import launch_rank

        self.json_output, self.output, self.quiet = json_output, output, quiet
        self.speaks = launch_rank() == 0
        self.lost_outputs: list[str] = []

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

    def progress(self, description: str, scales: Sequence[float] = (), stage: str = "starting"):
        """A progress bar on stderr (none with --quiet, nor where stderr is a file or a pipe, whose
        reader wants the notes, not a bar's last frame): a context giving the progress callback,
        whose bar names ``stage`` until the run names its own."""
        return progress_bar(description, scales, enabled=self.speaks and not self.quiet and stderr_console.is_terminal,
                            stage=stage)

    def lost(self, message: str) -> None:
        """An output asked for that could not be written (a warning; the command then exits 1)."""
        self.warn(message)
        self.lost_outputs.append(message)

    def emit(self, document: dict, render: Render) -> None:
        """The result: the JSON file (--output), then the JSON document or the table(s) on stdout.

        Finished work is never lost: where --output (or a redirected stdout) cannot be written (a
        full disk, ``ulimit -f``) the result goes to a named fallback file, said on stderr, and
        still to stdout; the exit status is 1 where no file could take it. A closed pipe
        (``| head``) is its reader's choice: nothing more is written."""
        if not self.speaks:
            return
        text = json_text(document)
        saved = self.output is None or self._write_output(text, document.get("command", "result"))
        try:
            if self.json_output:
                print(text)
            else:
                rendered = render()
                print_results(*(rendered if isinstance(rendered, (list, tuple)) else [rendered]))
            sys.stdout.flush()
        except OSError as error:  # stdout is a full file or a closed pipe
            _detach_stdout()
            if not isinstance(error, BrokenPipeError) and (self.output is None or not saved):
                saved = self._save_elsewhere(text, document.get("command", "result"), "stdout", error)
        if not saved or self.lost_outputs:
            raise typer.Exit(1)

    def _write_output(self, text: str, command: str) -> bool:
        try:
            write_text_atomically(text + "\n", self.output)
        except OSError as error:
            return self._save_elsewhere(text, command, str(self.output), error)
        return True

    def _save_elsewhere(self, text: str, command: str, where: str, error: OSError) -> bool:
        fallback = save_fallback(text + "\n", command)
        reason = error.strerror or type(error).__name__
        if fallback is None:
            tail = "it is on stdout only" if where != "stdout" else "it is lost"
            self.warn(f"could not write the result to {where} ({reason}), nor to a fallback file: {tail}")
            return False
        self.warn(f"could not write the result to {where} ({reason}); it is in {fallback}"
                  + (" and on stdout" if where != "stdout" else ""))
        return True

    def emit_run(self, document: dict, result: Any, render: Render) -> None:
        """An ``EntropyResult`` (estimate, sweep-scale): its notes (dropped samples, a partial or
        resumed run), the result, then exit status 130 if the run was interrupted."""
        from genentropy_cli.cli.reporting import nonfinite_note, partial_note

        for note in (nonfinite_note(result), partial_note(result)):
            if note:
                self.warn(note)
        if result.diagnostics.get("resumed_from_samples"):
            self.info(f"resumed from the checkpoint at {result.diagnostics['resumed_from_samples']} samples")
        self.emit(document, render)
        self.exit_if_partial(result)

    @staticmethod
    def exit_if_partial(result: Any) -> None:
        """Exit status 130 after an interrupted run's (partial) result was shown; 1 where the run's
        per-sample file could not all be written (the run said so when it happened)."""
        if getattr(result, "partial", False):
            raise typer.Exit(INTERRUPTED_EXIT_CODE)
        if (getattr(result, "diagnostics", None) or {}).get("per_sample_error"):
            raise typer.Exit(1)
