"""Errors that the CLI turns into one-line messages and exit codes."""

from __future__ import annotations

import os
import signal
import sys
from typing import Callable

from genentropy_cli.defaults import INTERRUPTED_EXIT_CODE


class GenentropyError(Exception):
    """Base class; ``exit_code`` is the CLI's exit status for it."""

    exit_code = 1


class InputError(GenentropyError):
    """Bad usage or input (a path, a latent size, an option value): exit status 2."""

    exit_code = 2


class EstimationError(GenentropyError):
    """A failure while running (a non-finite sample, a decoder error): exit status 1."""

    exit_code = 1


class OutOfMemoryError(EstimationError):
    """Out of memory even with batch size 1 and tangent chunk 1."""


class NonFiniteSampleError(EstimationError):
    """A per-sample entropy term is NaN or infinite."""

    def __init__(self, sample_index: int, scale: float | None = None, model: str | None = None):
        self.sample_index = sample_index
        where = f" at scale {scale:g}" if scale is not None else ""
        whose = f"{model}: " if model is not None else ""
        dropped = "from every model " if model is not None else ""
        super().__init__(
            f"{whose}sample {sample_index} gave a non-finite entropy term{where}; "
            f"check the decoder for NaN/inf outputs, or pass --skip-nonfinite to drop "
            f"such samples {dropped}(their count is reported)"
        )


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none), for one-line errors."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def caused_by_interrupt(error: BaseException | None) -> bool:
    """Whether a KeyboardInterrupt is ``error`` or stands in its chain of causes and contexts
    (a Ctrl-C inside an import may come wrapped in another error, e.g. an ImportError)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def importing() -> bool:
    """Whether a module is being imported now (its spec is marked ``_initializing`` while its
    body runs; a package stays marked while it imports its submodules)."""
    return any(getattr(getattr(module, "__spec__", None), "_initializing", False) for module in list(sys.modules.values()))


def _interrupt_handler(signum: int, frame) -> None:
    if importing():
        os.write(2, b"interrupted\n")
        os._exit(INTERRUPTED_EXIT_CODE)
    raise KeyboardInterrupt


def end_at_once_when_interrupted_while_importing() -> None:
    """Install the CLI's SIGINT handler: a Ctrl-C that lands while a module is being imported ends
    the process at once ("interrupted", status 130); anywhere else it raises KeyboardInterrupt as
    Python's own handler does. A KeyboardInterrupt raised inside an import can be swallowed by the
    library being imported (torch imports numpy inside a ``try``), leaving a half-imported module
    that fails minutes later or a run that ignores the Ctrl-C; nothing has been computed while
    modules load, so nothing is lost by ending there. The run loop installs its own handlers
    for the run (finish the batch, save) and puts this one back after."""
    signal.signal(signal.SIGINT, _interrupt_handler)


def quiet_interrupt_while_loading() -> Callable[[], None]:
    """Until the returned function is called, a Ctrl-C that ends the program prints
    "interrupted" instead of a traceback (importing torch takes seconds; the exit status stays
    130). The package calls it around the imports that load torch (``genentropy_cli.__getattr__``),
    so it never outlives them."""
    previous = sys.excepthook

    def hook(kind, value, traceback) -> None:
        if issubclass(kind, KeyboardInterrupt) or caused_by_interrupt(value):
            sys.stderr.write("interrupted\n")
        else:
            previous(kind, value, traceback)

    sys.excepthook = hook

    def restore() -> None:
        if sys.excepthook is hook:
            sys.excepthook = previous

    return restore
