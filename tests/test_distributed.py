"""Many processes: torchrun with gloo on the CPU gives the one-process estimate."""

from __future__ import annotations

import json

import numpy as np
import pytest
from longrun_support import (
    GLOO_UNAVAILABLE,  # noqa: F401 (other test modules import it from here)
    assert_same_estimates,
    parse_json,
    run_torchrun,
    save_small_mlp,
    skip_without_gloo,
)

from genentropy_cli.run.checkpoint import load_checkpoint
from genentropy_cli.run.distributed import deal_round_robin
from genentropy_cli.run.ledger import RunLedger, SampleRows

ROUND_OFF = 1e-12
"""Relative tolerance between runs whose per-sample terms come from different processes: torchrun
starts each rank with one intra-op thread (OMP_NUM_THREADS=1), one process uses every core, and
BLAS sums in another order with another thread count. Float64 terms then differ by a few ulps
(~1e-15 relative), means and standard errors by no more; 1e-12 leaves room and is still a
million times below any estimator error."""


def assert_same_rows(ours: list[dict], theirs: list[dict]) -> None:
    """Per-sample rows of two runs: the same samples in the same order, the same collapsed counts,
    values equal to ``ROUND_OFF``."""
    assert [row["index"] for row in ours] == [row["index"] for row in theirs]
    assert [row["collapsed"] for row in ours] == [row["collapsed"] for row in theirs]
    for key in ("h", "neg_log_density"):
        np.testing.assert_allclose(np.array([row[key] for row in ours]), np.array([row[key] for row in theirs]),
                                   rtol=ROUND_OFF, atol=0)


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_torchrun_two_processes_give_the_one_process_estimate(tmp_path, run_cli):
    """Acceptance 1: ``torchrun --nproc_per_node 2`` (gloo, CPU) vs one process, 1e-12 relative.

    3500 samples = 3 whole latent blocks and a partial one, dealt 0, 2 / 1, 3 to the ranks."""
    model = save_small_mlp(tmp_path / "mlp.pt")
    arguments = ["estimate", model, "-n", "3500", "--batch-size", "96", "--dtype", "float64",
                 "-s", "1e-1", "-s", "1e-3", "--json", "--quiet", "--device", "cpu"]
    launched = run_torchrun("-m", "genentropy_cli", *arguments, "--per-sample", tmp_path / "two.jsonl")
    skip_without_gloo(launched)
    assert launched.returncode == 0, launched.stderr[-3000:]
    two = parse_json(launched.stdout)  # rank 0 alone printed: exactly one JSON document
    assert two["settings"]["world_size"] == 2
    assert two["diagnostics"]["samples_computed"] == 3500

    single = run_cli(*arguments, "--per-sample", tmp_path / "one.jsonl")
    assert single.exit_code == 0, single.stderr
    one = single.json()
    assert one["settings"]["world_size"] == 1
    assert_same_estimates(two, one, ROUND_OFF)
    for a, b in zip(two["estimates"], one["estimates"]):
        assert a["stderr"] == pytest.approx(b["stderr"], rel=ROUND_OFF) and a["num_samples"] == b["num_samples"] == 3500
    assert_same_rows(read_jsonl(tmp_path / "two.jsonl"), read_jsonl(tmp_path / "one.jsonl"))


def test_torchrun_with_checkpoint_output_and_target_stderr_then_one_process_resumes(tmp_path, run_cli):
    """The long-run options under torchrun: the target stops both runs at the same sample, rank 0
    alone writes ``--output`` (the document on stdout) and the checkpoint, and one process reruns
    from that checkpoint (made by two) to the same result without computing a sample."""
    model = save_small_mlp(tmp_path / "mlp.pt")
    arguments = ["estimate", model, "-n", "20000", "--batch-size", "96", "--dtype", "float64", "-s", "1e-1",
                 "-s", "1e-3", "--target-stderr", "0.025", "--min-samples", "500", "--json", "--quiet",
                 "--device", "cpu"]
    launched = run_torchrun("-m", "genentropy_cli", *arguments, "--checkpoint", tmp_path / "two.ckpt",
                            "--output", tmp_path / "two.json")
    skip_without_gloo(launched)
    assert launched.returncode == 0, launched.stderr[-3000:]
    two = parse_json(launched.stdout)
    assert json.loads((tmp_path / "two.json").read_text()) == two
    assert two["settings"]["world_size"] == 2 and two["stop_reason"] == "target_stderr"
    used = two["estimates"][0]["num_samples"]
    assert 1024 < used < 20000 and all(item["stderr"] <= 0.025 for item in two["estimates"])

    single = run_cli(*arguments)
    assert single.exit_code == 0, single.stderr
    one = single.json()
    assert one["stop_reason"] == "target_stderr" and [e["num_samples"] for e in one["estimates"]] == [used, used]
    assert_same_estimates(two, one, ROUND_OFF)

    _, state, _ = load_checkpoint(tmp_path / "two.ckpt")
    assert state["finished"] and state["ledger"]["stop_at"] == used
    resumed = run_cli(*arguments, "--checkpoint", tmp_path / "two.ckpt")
    assert resumed.exit_code == 0, resumed.stderr
    again = resumed.json()
    assert again["settings"]["world_size"] == 1 and again["diagnostics"]["samples_computed"] == 0
    # the checkpoint's merged moments reprinted: the same numbers by construction
    assert [e["entropy"] for e in again["estimates"]] == [e["entropy"] for e in two["estimates"]]
    assert [e["stderr"] for e in again["estimates"]] == [e["stderr"] for e in two["estimates"]]


def rows_for(values: np.ndarray) -> SampleRows:
    count = values.shape[0]
    return SampleRows(values, values[:, 0].copy(), np.zeros_like(values, dtype=np.int64), np.ones(count), np.ones(count))


def test_ledger_total_does_not_depend_on_arrival_order_or_batching():
    """What makes the result independent of process count: rows arriving per rank, in any
    order and any batch sizes, merge to the same float64 moments bit for bit."""
    rng = np.random.default_rng(0)
    values = rng.normal(5.0, 2.0, size=(10 * 16 + 5, 2))

    def run(batch: int, world: int, target: float | None = None) -> RunLedger:
        ledger = RunLedger(len(values), 16, [1.0, 2.0], target_stderr=target, min_samples=20)
        spans = [(block, 0, ledger.block_length(block)) for block in range(ledger.num_blocks)]
        shares = [deal_round_robin(spans, rank, world) for rank in range(world)]
        pending = [[(block, start) for block, _, stop in share for start in range(0, stop, batch)] for share in shares]
        while any(pending):
            for queue in reversed(pending):  # the last rank first: blocks complete out of order
                if queue:
                    block, start = queue.pop(0)
                    stop = min(start + batch, ledger.block_length(block))
                    first = block * 16 + start
                    ledger.record(block, start, rows_for(values[first : first + stop - start]))
            ledger.advance()
            if ledger.finished:
                return ledger
        raise AssertionError("the ledger never finished")

    reference = run(batch=16, world=1)
    for batch, world in ((3, 1), (5, 2), (16, 3), (7, 4)):
        ledger = run(batch, world)
        assert ledger.prefix.count == len(values)
        assert np.array_equal(ledger.prefix.mean, reference.prefix.mean)
        assert np.array_equal(ledger.prefix.m2, reference.prefix.m2)
    np.testing.assert_allclose(reference.prefix.mean, values.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(reference.prefix.std, values.std(axis=0, ddof=1), rtol=1e-13)

    stopped = run(batch=16, world=1, target=0.25)  # the target stops it inside block 3 or so
    assert stopped.stop_at is not None and 20 <= stopped.stop_at < len(values)
    for batch, world in ((3, 1), (5, 2), (7, 4)):
        ledger = run(batch, world, target=0.25)
        assert ledger.stop_at == stopped.stop_at
        assert np.array_equal(ledger.prefix.mean, stopped.prefix.mean)


def test_blocks_are_dealt_round_robin():
    assert list(deal_round_robin(range(7), 0, 3)) == [0, 3, 6]
    assert list(deal_round_robin(range(7), 2, 3)) == [2, 5]
    assert list(deal_round_robin(range(2), 3, 4)) == []
