"""Run the CLI in a subprocess and send this process a signal after its K-th batch.

    python tests/interrupt_harness.py SIGNAL K -- estimate MODEL [options]
    python tests/interrupt_harness.py SIGNAL prepare -- ...   while the first decoder is prepared
    python tests/interrupt_harness.py SIGNAL load:N -- ...    while the N-th model file is opened

The signal is real (os.kill on our own pid, from inside the run), which makes the point of
interruption deterministic: after batch K has been computed. ``SIGNAL*2`` sends it, then hangs
in that batch (a decoder that never returns) until the same signal comes again (sent by another
thread as soon as the first was handled, no fixed delay): the second signal must abort at once.
``prepare`` sends it before any sample exists (the run's set-up: decoder copies, probes), ``load:N``
while a command opens its N-th model (``track`` opens its checkpoints one at a time). Used by
test_resume.py and test_hostile_round3_guarantees.py.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import genentropy_cli.run.compute as runner
from genentropy_cli.cli.app import main

HANG_SECONDS = 600.0


def signalling_after(compute, signal_name: str, after_batches: int):
    """``compute`` (runner.compute_sample_terms) that sends this process ``signal_name`` once it
    has computed ``after_batches`` batches (``NAME*2``: then hangs until it is sent again)."""
    calls = [0]
    name, _, times = signal_name.partition("*")
    signum = getattr(signal, name)

    def counting(*args, **kwargs):
        terms = compute(*args, **kwargs)
        calls[0] += 1
        if calls[0] == after_batches:
            os.kill(os.getpid(), signum)
            if times == "2":  # the first signal's handler has run (os.kill on ourselves): send the second now
                threading.Thread(target=os.kill, args=(os.getpid(), signum)).start()
                time.sleep(HANG_SECONDS)  # hung: only an abort gets out of here in time
        return terms

    return counting


def signalling_on_call(function, signal_name: str, call: int):
    """``function`` that sends this process ``signal_name`` as its ``call``-th call starts."""
    calls = [0]

    def counting(*args, **kwargs):
        calls[0] += 1
        if calls[0] == call:
            os.kill(os.getpid(), getattr(signal, signal_name))
        return function(*args, **kwargs)

    return counting


if __name__ == "__main__":
    name, count, separator, *arguments = sys.argv[1:]
    assert separator == "--"
    if count == "prepare":
        from genentropy_cli.run import workload

        prepare = workload.DecoderWork.prepare.__func__
        workload.DecoderWork.prepare = classmethod(signalling_on_call(prepare, name, 1))
    elif count.startswith("load:"):
        from genentropy_cli.models import resolve

        resolve.resolve_model = signalling_on_call(resolve.resolve_model, name, int(count.removeprefix("load:")))
    else:
        runner.compute_sample_terms = signalling_after(runner.compute_sample_terms, name, int(count))
    sys.argv = ["genentropy", *arguments]
    main()
