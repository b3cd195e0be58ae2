"""Batch planning: memory sizes, the plan within its budget, --max-memory on the CLI and API."""

from __future__ import annotations

import resource

import pytest
import torch

from genentropy_cli import estimate_entropy
from genentropy_cli.core.latents import make_latent_spec
from genentropy_cli.core.references import HalfSphereRadial
from genentropy_cli.errors import InputError
from genentropy_cli.models.loading import save_torchscript
from genentropy_cli.run.planning import batch_peak_bytes, parse_memory_size, plan_batch, speed_plan

MIB = 2**20


@pytest.mark.parametrize("text, expected", [
    ("512MB", 512 * 10**6), ("2GB", 2 * 10**9), ("1.5GiB", 3 * 2**29), (" 2 gb ", 2 * 10**9),
    ("256MiB", 256 * MIB), ("4096", 4096), ("10kB", 10_000), (2048, 2048), ("0.5TiB", 2**39),
])
def test_memory_sizes_are_read_in_decimal_and_binary_units(text, expected):
    assert parse_memory_size(text) == expected


@pytest.mark.parametrize("text", ["2 gigs", "GB", "-1GB", "0", "1e9", "abc", "", True])
def test_unreadable_memory_sizes_are_one_line_input_errors(text):
    with pytest.raises(InputError) as raised:
        parse_memory_size(text)
    assert "--max-memory" in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize("latent_dim, output_dim, row_bytes", [(16, 784, 4_000), (62, 784, 75_000),
                                                               (100, 12288, 524_000)])
@pytest.mark.parametrize("budget", [64 * MIB, 512 * MIB, 2048 * MIB])
def test_the_plan_fits_its_budget_and_grows_with_it(latent_dim, output_dim, row_bytes, budget):
    plan = plan_batch(latent_dim, output_dim, torch.float32, "cpu", budget, activation_bytes_per_row=row_bytes)
    assert 1 <= plan.tangent_chunk <= latent_dim and plan.batch_size >= 1
    assert batch_peak_bytes(latent_dim, output_dim, 4, *plan, row_bytes) <= budget
    bigger = plan_batch(latent_dim, output_dim, torch.float32, "cpu", 4 * budget, activation_bytes_per_row=row_bytes)
    assert bigger.batch_size * (bigger.tangent_chunk + 1) >= plan.batch_size * (plan.tangent_chunk + 1)


def test_memory_in_use_comes_off_the_budget():
    free = plan_batch(100, 12288, torch.float32, "cpu", 1024 * MIB, activation_bytes_per_row=524_000)
    crowded = plan_batch(100, 12288, torch.float32, "cpu", 1024 * MIB, activation_bytes_per_row=524_000,
                         memory_in_use=1000 * MIB)
    assert batch_peak_bytes(100, 12288, 4, *crowded, 524_000) <= 24 * MIB
    assert crowded.batch_size * (crowded.tangent_chunk + 1) < free.batch_size * (free.tangent_chunk + 1)


def test_speed_plan_pushes_every_direction_at_once_where_the_rows_allow():
    """Rows per call ~ the byte target over the bytes per row; k = d when a sample's d + 1 rows fit."""
    small = speed_plan(62, 784, 4, 75_000, "cpu")
    assert small.tangent_chunk == 62 and small.batch_size >= 2
    huge_rows = speed_plan(100, 12288, 4, 5_000_000, "cpu")
    assert huge_rows.batch_size == 1 and huge_rows.tangent_chunk < 100


def test_given_sizes_are_kept_and_the_other_is_planned():
    assert plan_batch(62, 784, torch.float32, "cpu", batch_size=7, tangent_chunk=5) == (7, 5)
    batch, chunk = plan_batch(62, 784, torch.float32, "cpu", 8 * MIB, activation_bytes_per_row=75_000, batch_size=3)
    assert batch == 3 and batch_peak_bytes(62, 784, 4, 3, chunk, 75_000) <= 8 * MIB
    assert plan_batch(62, 784, torch.float32, "cpu", activation_bytes_per_row=75_000, tangent_chunk=9).tangent_chunk == 9


def test_a_budget_too_small_for_one_sample_says_how_much_is_needed():
    with pytest.raises(InputError, match=r"--max-memory .* too small.* at least"):
        plan_batch(100, 12288, torch.float32, "cpu", 300 * MIB, activation_bytes_per_row=524_000,
                   memory_in_use=290 * MIB)
    # without --max-memory the default budget only guides: one sample, one direction
    assert plan_batch(100, 12288, torch.float32, "cpu", working_memory=1, activation_bytes_per_row=524_000) == (1, 1)


def test_max_memory_changes_the_batching_not_the_estimate():
    kwargs = dict(scales=[1e-1, 1e-4], n_samples=700, dtype="float64", seed=3)
    roomy = estimate_entropy(HalfSphereRadial(), 2, **kwargs)
    tight = estimate_entropy(HalfSphereRadial(), 2, max_memory="1 TiB", batch_size=13, **kwargs)
    assert tight.settings["max_memory"] == 2**40 and tight.settings["batch_size"] == 13
    assert [e.entropy for e in tight.estimates] == pytest.approx([e.entropy for e in roomy.estimates], rel=1e-12)


def test_max_memory_on_the_cli(run_cli, model_dir):
    path = model_dir / "half_sphere.pt"
    save_torchscript(HalfSphereRadial(), path, latent=make_latent_spec(2))
    result = run_cli("estimate", path, "-n", "300", "--max-memory", "8GB", "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    document = result.json()
    assert document["settings"]["max_memory"] == 8 * 10**9
    assert document["diagnostics"]["planned_peak_bytes"] <= 8 * 10**9
    assert document["diagnostics"]["jacobian_method"] == "stacked"
    for bad, message in (("2 gigs", "cannot read"), ("1kB", "too small")):
        refused = run_cli("estimate", path, "-n", "300", "--max-memory", bad, "--quiet")
        assert refused.exit_code == 2 and message in refused.stderr
        assert "Traceback" not in refused.stderr and refused.stderr.strip().count("\n") == 0


def test_a_peak_over_max_memory_is_reported_not_hidden(monkeypatch):
    """The plan is a model; where the measured peak goes over the cap anyway the run says so (one
    line naming the remedy) and the JSON flags it; under the cap nothing is said."""
    import genentropy_cli.run.loop as runner

    assert runner.over_memory_cap(10, None) is None and runner.over_memory_cap(10, 10) is None
    assert "went over --max-memory" in runner.over_memory_cap(11, 10)
    notes: list[str] = []
    kwargs = dict(n_samples=200, seed=1, log=notes.append, max_memory="1 TiB")
    within = estimate_entropy(HalfSphereRadial(), 2, **kwargs)
    assert within.diagnostics["max_memory_exceeded"] is False and not any("went over" in note for note in notes)
    monkeypatch.setattr(runner, "peak_memory", lambda device: {"peak_memory_bytes": 2**41,
                                                                "peak_memory_kind": "process peak RSS"})
    over = estimate_entropy(HalfSphereRadial(), 2, **kwargs)
    assert over.diagnostics["max_memory_exceeded"] is True
    assert [note for note in notes if "went over --max-memory" in note and "--batch-size" in note]
    # under --max-memory the first batch is measured (/proc) and sizes the rest: the two runs may
    # batch differently, so the same estimate to float64 round-off, not bit for bit
    assert [e.entropy for e in over.estimates] == pytest.approx([e.entropy for e in within.estimates], rel=1e-12)


def test_the_precision_probe_is_skipped_not_fatal_when_the_cap_leaves_no_room(monkeypatch):
    """The float64 copy's batch is planned once the copy exists; if the cap cannot hold it, the
    probe is skipped with the reason and the estimate goes on."""
    import genentropy_cli.run.workload as runner

    real_plan = runner.plan_for

    def plan_for(prepared, max_memory=None, **kwargs):
        if prepared.dtype == torch.float64 and max_memory is not None:
            raise InputError("--max-memory 1 TiB is too small: one sample needs about 2 TiB more")
        return real_plan(prepared, max_memory, **kwargs)

    monkeypatch.setattr(runner, "plan_for", plan_for)
    result = estimate_entropy(HalfSphereRadial(), 2, n_samples=300, max_memory="1 TiB", probe_samples=100)
    assert result.precision_probe["skipped"].startswith("no room for the float64 copy of the decoder")
    assert result.estimates[0].num_samples == 300


def test_a_calibrated_batch_fills_its_share_of_the_room():
    from genentropy_cli.defaults import CALIBRATION_ROOM_SHARE
    from genentropy_cli.run.memory import calibrated_batch_size

    # 10 MiB per sample measured, 100 MiB of room: 85 MiB / 10 MiB -> 8
    assert calibrated_batch_size(20 * MIB, 2, 100 * MIB, planned=64) == int(CALIBRATION_ROOM_SHARE * 100 / 10)
    assert calibrated_batch_size(20 * MIB, 2, 10**12, planned=64) == 64  # never above the plan
    assert calibrated_batch_size(20 * MIB, 2, 0, planned=64) == 1  # never below one sample
    assert calibrated_batch_size(0, 4, 100 * MIB, planned=7) == 7  # no growth measured: the plan stands


def test_under_max_memory_the_first_batch_is_measured_and_sizes_the_rest(monkeypatch):
    """The first batch runs at a quarter of the plan while the resident peak is watched; a large
    measured growth per sample shrinks the later batches, and the estimate does not change."""
    import genentropy_cli.run.memory as memory
    from genentropy_cli.defaults import CALIBRATION_DIVISOR

    if memory.resident_peak_bytes() is None:
        pytest.skip("no /proc resident peak on this platform")
    kwargs = dict(scales=[1e-4], n_samples=600, seed=5, probe_samples=0, device="cpu")  # a CPU measurement
    reference = estimate_entropy(HalfSphereRadial(), 2, batch_size=600, **kwargs)
    seen: list[int] = []

    def peak_growth(compute):  # pretend each sample of the first batch grew the process by 2^36 bytes
        result = compute()
        seen.append(1)
        return result, 2**36 * first_batch[0]

    first_batch = [0]
    real_run = memory.FirstBatchCalibration.run

    def run(self, samples, compute):
        first_batch[0] = samples
        return real_run(self, samples, compute)

    monkeypatch.setattr(memory, "peak_growth", peak_growth)
    monkeypatch.setattr(memory.FirstBatchCalibration, "run", run)
    capped = estimate_entropy(HalfSphereRadial(), 2, max_memory="1 TiB", **kwargs)
    planned = capped.diagnostics["batch_size"]
    assert seen == [1] and first_batch[0] == max(1, planned // CALIBRATION_DIVISOR)
    expected = memory.calibrated_batch_size(2**36 * first_batch[0], first_batch[0], 2**40, planned)
    assert capped.diagnostics["batch_size_calibrated"] <= expected < planned  # 1 TiB less what is in use
    assert capped.diagnostics["batch_size_final"] == capped.diagnostics["batch_size_calibrated"]
    assert capped.estimates[0].entropy == pytest.approx(reference.estimates[0].entropy, rel=1e-12)
    # without a cap, or with the batch size given, nothing is calibrated
    assert estimate_entropy(HalfSphereRadial(), 2, **kwargs).diagnostics["batch_size_calibrated"] is None
    fixed = estimate_entropy(HalfSphereRadial(), 2, max_memory="1 TiB", batch_size=50, **kwargs)
    assert fixed.diagnostics["batch_size_calibrated"] is None and len(seen) == 1


class SimulatedProc:
    """/proc/self of a process whose resident size (``rss``) and resident peak (VmHWM) are set by
    the test: what the kernel reports is machine state (its counters are synced lazily, other
    processes move the page cache), so the arithmetic on it is checked on known numbers."""

    def __init__(self, rss: int, peak: int, clear_refs_writable: bool = True):
        self.rss, self.peak, self.clear_refs_writable, self.resets = rss, peak, clear_refs_writable, 0

    def grow_and_free(self, size: int) -> None:
        """A computation that holds ``size`` more bytes for a while, then frees them."""
        self.peak = max(self.peak, self.rss + size)

    def open(self, path: str, mode: str = "r"):
        import io

        simulated = self

        class ClearRefs(io.StringIO):
            def write(self, text: str) -> int:
                if text.strip() == "5":  # the kernel restarts VmHWM from the resident size
                    simulated.peak, simulated.resets = simulated.rss, simulated.resets + 1
                return len(text)

        if path == "/proc/self/clear_refs":
            if not self.clear_refs_writable:
                raise PermissionError(path)
            return ClearRefs()
        if path == "/proc/self/status":
            return io.StringIO(f"Name:\tpython\nVmHWM:\t{self.peak // 1024} kB\nVmRSS:\t{self.rss // 1024} kB\n")
        if path == "/proc/self/statm":
            return io.StringIO(f"100000 {self.rss // resource.getpagesize()} 0 0 0 0 0\n")
        raise FileNotFoundError(path)


def test_the_reported_peak_survives_the_calibrations_reset(monkeypatch):
    """``peak_growth`` restarts the resident peak to measure one batch; ``peak_memory`` must still
    report the run's peak from before the restart (on a simulated /proc: exact numbers)."""
    import types

    import genentropy_cli.run.memory as memory

    proc = SimulatedProc(rss=300 * MIB, peak=900 * MIB)
    monkeypatch.setattr(memory, "open", proc.open, raising=False)  # the module's open() reads /proc
    monkeypatch.setattr(memory, "_RESIDENT_PEAK_BEFORE_RESETS", [0])
    monkeypatch.setattr(memory.resource, "getrusage", lambda who: types.SimpleNamespace(ru_maxrss=1))
    _, growth = memory.peak_growth(lambda: proc.grow_and_free(200 * MIB))
    assert proc.resets == 1 and growth == 200 * MIB  # the batch's own growth over the resident size
    assert memory.resident_peak_bytes() == 500 * MIB  # the kernel's peak was restarted
    assert memory.peak_memory(torch.device("cpu"))["peak_memory_bytes"] == 900 * MIB  # the run's peak survives
    proc.clear_refs_writable = False  # no way to restart the peak: no measurement, the plan stands
    assert memory.peak_growth(lambda: 7) == (7, None)
