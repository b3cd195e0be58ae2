"""Benchmark: where the Gram step's numpy arrangement and numpy's eigvalsh stop paying, per d.

    python benchmarks/gram_thresholds.py [--dims 8 16 ...] [--output-dim 784] [--rounds 7] [--slabs]

For each latent size d, on random float32 Jacobian columns (d, B, D) with B chosen so that a
call is ~20 ms of work, in interleaved rounds (the order rotated each round; the figure is the
fastest round, the median beside it), at the process's intra-op thread count:

* eigenvalues alone of B float64 Gram matrices: ``batched_eigvalsh(gram, solver)`` with
  ``torch`` (``torch.linalg.eigvalsh``, LAPACK of torch's build: MKL) and ``numpy``
  (``np.linalg.eigvalsh``, numpy's LAPACK), both split over the threads alike; with
  ``--one-call`` instead, each as one call from the main thread (what a batch too small to split
  gets), in a process that has not used the pool;
* the whole Gram step (float32 columns -> float64 J^T J -> eigenvalues):
  ``gram_eigenvalues(columns, arrangement=...)`` for ``numpy`` and ``torch``.

``--slabs`` also times numpy's arrangement at several per-thread slab sizes. The thresholds in
``genentropy_cli/defaults.py`` (``NUMPY_EIGVALSH_MAX_DIM``, ``NUMPY_GRAM_MAX_DIM``,
``NUMPY_GRAM_SLAB_BYTES``) come from this script.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from genentropy_cli.core.logdet import Workspace, _eigvalsh_into, batched_eigvalsh, gram_eigenvalues  # noqa: E402

WORK_SECONDS = 0.02


def interleaved(actions: dict[str, object], rounds: int) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) seconds per call of each action, one call per round, the order rotated each round.
    The CPU time of the process (all threads) is the steadier measure of cost on a shared machine."""
    names = list(actions)
    for name in names:
        actions[name]()  # warm-up
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for number in range(rounds):
        shift = number % len(names)
        for name in names[shift:] + names[:shift]:
            wall, cpu = time.perf_counter(), time.process_time()
            actions[name]()
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return times


def batch_for(dim: int, output_dim: int) -> int:
    """Samples for ~WORK_SECONDS of the Gram step at ~10 GFLOP/s (product) and ~d^3 / 1 GFLOP/s (eigenvalues)."""
    seconds_per_sample = dim * dim * output_dim / 1e10 + 10 * dim**3 / 1e10 + 5e-6
    return max(2, int(WORK_SECONDS / seconds_per_sample))


def measure(dim: int, output_dim: int, rounds: int, slabs: bool, one_call: bool = False) -> dict:
    batch = batch_for(dim, output_dim)
    generator = torch.Generator().manual_seed(dim)
    columns = torch.randn(dim, batch, output_dim, generator=generator)
    per_sample = columns.double().permute(1, 0, 2)
    gram = per_sample @ per_sample.transpose(1, 2)
    workspace = Workspace()
    out = torch.empty(batch, dim, dtype=torch.float64)
    if one_call:  # no pool in this process: MKL's state after calls from other threads differs
        actions = {"eigvalsh torch": lambda: _eigvalsh_into(gram, out, "torch"),
                   "eigvalsh numpy": lambda: _eigvalsh_into(gram, out, "numpy")}
        return summary(dim, batch, output_dim, interleaved(actions, rounds))
    actions = {
        "eigvalsh torch": lambda: batched_eigvalsh(gram, "torch"),
        "eigvalsh numpy": lambda: batched_eigvalsh(gram, "numpy"),
        "Gram step torch": lambda: gram_eigenvalues(columns, workspace=workspace, arrangement="torch"),
        "Gram step numpy": lambda: gram_eigenvalues(columns, workspace=workspace, arrangement="numpy"),
    }
    if slabs:
        for mib in (0.5, 1, 4, 8):
            actions[f"Gram step numpy, slab {mib} MiB"] = (
                lambda mib=mib: gram_eigenvalues(columns, int(mib * 2**20), workspace, arrangement="numpy"))
    return summary(dim, batch, output_dim, interleaved(actions, rounds))


def summary(dim: int, batch: int, output_dim: int, times: dict[str, list[tuple[float, float]]]) -> dict:
    def figures(values: list[float]) -> tuple[float, float]:
        return min(values) / batch * 1e6, statistics.median(values) / batch * 1e6

    return {"dim": dim, "batch": batch, "output_dim": output_dim,
            "us_per_sample": {name: figures([wall for wall, _ in values]) for name, values in times.items()},
            "cpu_us_per_sample": {name: figures([cpu for _, cpu in values]) for name, values in times.items()}}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, nargs="*", default=[4, 8, 16, 24, 32, 48, 62, 64, 80, 100, 128])
    parser.add_argument("--output-dim", type=int, default=784)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--slabs", action="store_true", help="also numpy's arrangement at other slab sizes")
    parser.add_argument("--one-call", action="store_true",
                        help="only the eigenvalues, each solver as one call from the main thread (no pool)")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, D = {args.output_dim}, "
          f"{args.rounds} interleaved rounds; us per sample, best (median)", flush=True)
    results = []
    for dim in args.dims:
        result = measure(dim, args.output_dim, args.rounds, args.slabs, args.one_call)
        for kind in ("us_per_sample", "cpu_us_per_sample"):
            figures = result[kind]
            ratio_eig = figures["eigvalsh torch"][0] / figures["eigvalsh numpy"][0]
            step = "" if args.one_call else f", Gram step {figures['Gram step torch'][0] / figures['Gram step numpy'][0]:.2f}"
            cells = "; ".join(f"{name} {best:.1f} ({median:.1f})" for name, (best, median) in figures.items())
            print(f"d = {dim:3d}, B = {result['batch']:5d}, {'wall' if kind == 'us_per_sample' else 'CPU '}: {cells}; "
                  f"torch / numpy: eigvalsh {ratio_eig:.2f}{step}", flush=True)
        results.append(result)
    return results


if __name__ == "__main__":
    main()
