"""Start-up: what the command line costs before it computes, against ``python -c "import torch"``.

    python benchmarks/startup.py [--rounds N] [--quick] [--json FILE]
    python benchmarks/run.py --section startup

Fresh processes, launched from here in interleaved rounds (the order rotated each round, so a
drift in the machine's load hits every alternative alike):

* ``python -c "import torch"``: the reference, measured in the same run;
* ``genentropy --help``, ``genentropy --version``, ``genentropy estimate --help``: the whole process;
* ``genentropy estimate MODEL -n 64 --quiet``: the time from launch to the start of its first batch
  (``GENENTROPY_TRACE_STARTUP=1`` makes the run write the unix time of that moment on stderr,
  ``genentropy_cli/run/trace.py``), and the whole process. ``mlp_small.safetensors`` is a decoder
  too small to cost anything: its figure is start-up alone (imports, loading, probes,
  planning). ``gan.safetensors`` (the quarter-width infoGAN generator) adds what a real decoder's
  checks cost before the loop: the row-independence and Jacobian-method probes on two latents,
  and the float64 precision probe on the first 64 samples (``--probe-samples``).

Each figure is the fastest round (the least disturbed) and the median round, with its ratio to
``import torch``'s fastest and median round. Targets (issue 18): help and ``--version`` at most
0.4x ``import torch``; an estimate's first batch at most 1 s after ``import torch``'s time.
The commands run as ``python -m genentropy_cli`` on this checkout (PYTHONPATH), as the
``genentropy`` script does.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAMP = re.compile(r"at unix time ([0-9.]+)")
TORCH_STAMPED = ("import sys, time, torch; "
                 "sys.stderr.write(f'torch imported at unix time {time.time():.6f}\\n')")
SAMPLES = "64"


@dataclass
class Launch:
    """One command, timed in every round: whole-process wall seconds, and where it is
    ``stamped`` the seconds from launch to the moment it writes (an estimate: its first batch;
    the reference: the end of ``import torch``)."""

    name: str
    arguments: list[str]
    stamped: bool = False
    wall: list[float] = field(default_factory=list)
    to_stamp: list[float] = field(default_factory=list)

    def run(self) -> None:
        environment = {**os.environ, "PYTHONPATH": str(ROOT), "GENENTROPY_TRACE_STARTUP": "1"}
        launched, started = time.time(), time.perf_counter()
        finished = subprocess.run([sys.executable, *self.arguments], cwd=ROOT, env=environment,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.wall.append(time.perf_counter() - started)
        if finished.returncode != 0:
            raise RuntimeError(f"{self.name} failed ({finished.returncode}): {finished.stderr.strip()[-500:]}")
        if self.stamped:
            stamp = STAMP.search(finished.stderr)
            if stamp is None:
                raise RuntimeError(f"{self.name}: no time stamp on stderr: {finished.stderr.strip()[-500:]}")
            self.to_stamp.append(float(stamp.group(1)) - launched)


def _row(launch: Launch, reference: Launch, until: str, values: list[float], against: list[float],
         target: str) -> dict:
    """One table line: best and median round, each against the reference's best and median."""
    best, median = min(values), statistics.median(values)
    base_best, base_median = min(against), statistics.median(against)
    print(f"| {launch.name} | {until} | {best:.2f} | {median:.2f} | {best / base_best:.2f} | "
          f"{median / base_median:.2f} | {best - base_best:+.2f} | {median - base_median:+.2f} | {target} |", flush=True)
    return {"command": launch.name, "until": until, "seconds": values, "best": best, "median": median,
            "best_ratio": best / base_best, "median_ratio": median / base_median,
            "best_above": best - base_best, "median_above": median - base_median, "target": target}


def launches(quick: bool) -> list[Launch]:
    cli = ["-m", "genentropy_cli"]
    found = [
        Launch('python -c "import torch"', ["-c", TORCH_STAMPED], stamped=True),
        Launch("genentropy --help", [*cli, "--help"]),
        Launch("genentropy --version", [*cli, "--version"]),
        Launch("genentropy estimate --help", [*cli, "estimate", "--help"]),
        Launch(f"genentropy estimate mlp_small.safetensors -n {SAMPLES}",
               [*cli, "estimate", "sample_models/mlp_small.safetensors", "-n", SAMPLES, "--quiet"], stamped=True),
    ]
    if not quick:
        found.append(Launch(f"genentropy estimate gan.safetensors -n {SAMPLES}",
                            [*cli, "estimate", "sample_models/gan.safetensors", "-n", SAMPLES, "--quiet"],
                            stamped=True))
    return found


def startup_section(rounds: int, quick: bool = False) -> dict:
    """Time every launch once per round (one warm-up round first: file caches), print the table
    and return its figures."""
    timed = launches(quick)
    for launch in timed:  # warm-up: the files in the page cache, as for any second run
        launch.run()
        launch.wall.clear()
        launch.to_stamp.clear()
    for number in range(rounds):
        shift = number % len(timed)
        for launch in timed[shift:] + timed[:shift]:
            launch.run()
        print(f"  [startup] round {number + 1}/{rounds} done", file=sys.stderr, flush=True)
    reference = timed[0]
    print(f"\n### start-up against `python -c \"import torch\"` ({rounds} interleaved rounds, fresh processes)\n")
    print("| command | measured until | best s | median s | best / import torch | median / import torch "
          "| best - import torch s | median - import torch s | target |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = [_row(reference, reference, "its exit", reference.wall, reference.wall, ""),
            _row(reference, reference, "import torch returns", reference.to_stamp, reference.to_stamp, "")]
    for launch in timed[1:]:
        if launch.stamped:  # against the end of import torch: neither counts its interpreter's exit
            rows.append(_row(launch, reference, "its first batch starts", launch.to_stamp, reference.to_stamp,
                             "<= 1 s above"))
        else:
            rows.append(_row(launch, reference, "its exit", launch.wall, reference.wall, "<= 0.4x"))
    print("\n(an estimate runs to its end after its first batch; its whole process, output included, took "
          + "; ".join(f"{min(launch.wall):.2f} s best" for launch in timed[1:] if launch.stamped) + ")")
    return {"rounds": rounds, "rows": rows}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 7; --quick 3)")
    parser.add_argument("--quick", action="store_true", help="fewer rounds, the small model only")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    results = startup_section(args.rounds or (3 if args.quick else 7), args.quick)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
