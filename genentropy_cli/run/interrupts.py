"""Ctrl-C and SIGTERM during a run: finish the current batch, save, return a partial result.

The first SIGINT or SIGTERM only raises a flag that the run loop reads between batches; the
same signal a second time aborts at once (KeyboardInterrupt), for a decoder that hangs.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class InterruptFlag:
    requested: bool = False
    signal_name: str | None = None
    _signal: int | None = None

    def request(self, signum: int) -> None:
        self.requested = True
        self._signal = signum
        self.signal_name = signal.Signals(signum).name


@contextmanager
def graceful_interrupts(enabled: bool, notify: Callable[[str], None]) -> Iterator[InterruptFlag]:
    """Install the handlers for the block (main thread only; elsewhere the flag stays down)."""
    flag = InterruptFlag()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, _frame) -> None:
        if flag.requested and flag._signal == signum:
            raise KeyboardInterrupt
        flag.request(signum)
        notify(f"{flag.signal_name} received: finishing the current batch, then saving and stopping "
               "(send it again to abort at once)")

    previous = {signum: signal.getsignal(signum) for signum in HANDLED_SIGNALS}
    for signum in HANDLED_SIGNALS:
        signal.signal(signum, handler)
    try:
        yield flag
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
