"""Time to the first batch and whole wall time of ``genentropy estimate MODEL -n 200`` on each
bundled model, two checkouts against each other in one interleaved run (issue 24).

    python benchmarks/first_batch.py --before /work/main [--after .] [--rounds 1] [-n 200] [--threads T] [--json FILE]

Each round runs ``python -c "import torch"`` (the reference) and, per model, both checkouts in
fresh processes (``python -m genentropy_cli`` with PYTHONPATH set to the checkout; the order of
the two alternates from model to model and round to round, so a drift in the machine's load
hits both alike). ``GENENTROPY_TRACE_STARTUP=1`` makes a run write the unix time its first batch
starts (``genentropy_cli/run/trace.py``); "first batch" is that moment less the launch. One file
per loader and architecture: the Table 3 VAEs (``vae-le-*``) are ``vae.safetensors``'s
architecture and loader. A figure is the median over rounds. ``--threads``: OMP_NUM_THREADS for
every process (on a machine other processes load, 1 avoids threads waiting on each other).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAMP = re.compile(r"at unix time ([0-9.]+)")
OPTIONS = {"mlp_small_pickled.pth": ["--trust-pickle"],
           "tiny_decoder.safetensors": ["--code-path", str(ROOT / "sample_models" / "user_code")]}
NEUTRAL = tempfile.mkdtemp(prefix="first_batch_")
"""The processes' working directory: ``python -m`` puts it first on sys.path, so from a checkout's
root every run would import that checkout's package, whatever PYTHONPATH says."""


def models() -> list[str]:
    return sorted(path.name for path in (ROOT / "sample_models").iterdir()
                  if path.suffix in {".pt", ".pt2", ".pth", ".safetensors"} and not path.name.startswith("vae-le-"))


def launch(arguments: list[str], pythonpath: str | None, threads: str | None) -> tuple[float, float | None]:
    """(wall seconds, seconds from launch to the first batch or None) of one fresh process."""
    environment = {**os.environ, "GENENTROPY_TRACE_STARTUP": "1", **({"OMP_NUM_THREADS": threads} if threads else {})}
    if pythonpath is not None:
        environment["PYTHONPATH"] = pythonpath
    launched, started = time.time(), time.perf_counter()
    finished = subprocess.run([sys.executable, *arguments], cwd=NEUTRAL, env=environment, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    if finished.returncode != 0:
        raise RuntimeError(f"{arguments} failed ({finished.returncode}): {finished.stderr.strip()[-500:]}")
    stamp = STAMP.search(finished.stderr)
    return wall, (float(stamp.group(1)) - launched if stamp else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the checkout to compare against (PYTHONPATH)")
    parser.add_argument("--after", default=str(ROOT), help="this checkout by default")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("-n", default="200")
    parser.add_argument("--threads", help="OMP_NUM_THREADS for every process")
    parser.add_argument("--json", help="also write the figures here")
    arguments = parser.parse_args()
    checkouts = {"before": str(Path(arguments.before).resolve()), "after": str(Path(arguments.after).resolve())}
    figures: dict = {"import torch": [], **{model: {name: [] for name in checkouts} for model in models()}}
    for number in range(arguments.rounds):
        figures["import torch"].append(launch(["-c", "import torch"], None, arguments.threads)[0])
        for position, model in enumerate(models()):
            order = list(checkouts) if (position + number) % 2 == 0 else list(reversed(checkouts))
            for name in order:
                command = ["-m", "genentropy_cli", "estimate", str(ROOT / "sample_models" / model), "-n", arguments.n,
                           "--quiet", *OPTIONS.get(model, [])]
                figures[model][name].append(launch(command, checkouts[name], arguments.threads))
                print(f"  [{number + 1}] {model} {name}: {figures[model][name][-1]}", file=sys.stderr, flush=True)
    torch_seconds = statistics.median(figures["import torch"])
    print(f"\n`python -c \"import torch\"`: {torch_seconds:.2f} s (median of {arguments.rounds})\n")
    print(f"| model (-n {arguments.n}) | first batch before s | first batch after s | wall before s | wall after s |")
    print("|---|---|---|---|---|")
    for model in models():
        cells = []
        for index in (1, 0):
            for name in checkouts:
                values = [run[index] for run in figures[model][name] if run[index] is not None]
                cells.append(f"{statistics.median(values):.2f}" if values else "-")
        print(f"| {model} | {' | '.join(cells)} |")
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
