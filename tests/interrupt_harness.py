"""Run the CLI in a subprocess and send this process a signal after its K-th batch.

    python tests/interrupt_harness.py SIGNAL K -- estimate MODEL [options]

The signal is real (os.kill on our own pid, from inside the run), which makes the point of
interruption deterministic: after batch K has been computed. Used by test_resume.py.
"""

from __future__ import annotations

import os
import signal
import sys

import genentropy_cli.run.compute as runner
from genentropy_cli.cli.app import main


def signalling_after(compute, signal_name: str, after_batches: int):
    """``compute`` (runner.compute_sample_terms) that sends this process ``signal_name`` once it
    has computed ``after_batches`` batches."""
    calls = [0]

    def counting(*args, **kwargs):
        terms = compute(*args, **kwargs)
        calls[0] += 1
        if calls[0] == after_batches:
            os.kill(os.getpid(), getattr(signal, signal_name))
        return terms

    return counting


if __name__ == "__main__":
    name, count, separator, *arguments = sys.argv[1:]
    assert separator == "--"
    runner.compute_sample_terms = signalling_after(runner.compute_sample_terms, name, int(count))
    sys.argv = ["genentropy", *arguments]
    main()
