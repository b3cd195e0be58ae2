"""Mutation check of the numerics and the run loop: does the test suite catch plausible bugs?

Each mutant is one small edit of the package (a sign, a constant, a rule, an off-by-one) made in
a fresh copy of the repository; the test suite then runs there as CI runs it (``python -m
pytest -q``, slow tests skipped), stopping at the first failure (``-x``). The mutant is killed
when a test fails, and survives when the suite passes: a survivor is a bug no test would catch.
The unchanged copy runs first as a baseline (it must pass, or no kill means anything).

    python scripts/mutation_check.py                 # every mutant, 2 at a time, and the kill table
    python scripts/mutation_check.py --list          # the mutants
    python scripts/mutation_check.py --only ci95-z-1.645 --only logdet-half
    python scripts/mutation_check.py --jobs 1 --no-baseline

The test files of ``FAST_FIRST`` run before the rest so that most mutants die within a minute;
the tests run are still the whole suite's, every file of tests/ once. Exit status 0 when
every mutant is killed, 1 when one survives, 2 when the baseline fails.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "genentropy_cli"
COPY_IGNORED = shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache", "*.egg-info", ".ruff_cache", "site")
FAST_FIRST = ("tests/test_latent_distributions.py", "tests/test_closed_forms.py", "tests/test_stacked.py",
              "tests/test_compare.py", "tests/test_adaptive.py", "tests/test_per_sample.py", "tests/test_promises.py",
              "tests/test_engine.py", "tests/test_reference_jacobian.py")
"""Unit and closed-form tests, a few seconds each (the quickest first): run first, then every other file."""
TIMEOUT_SECONDS = 1800
ACTIVE_MUTANT_VARIABLE = "GENENTROPY_MUTANT"
"""Set to the mutant's name in its run (tests/test_mutation_check.py then ignores that one's text)."""


@dataclass(frozen=True)
class Mutant:
    """Replace ``old`` (which must occur exactly once in ``path``) by ``new``."""

    name: str
    path: str
    old: str
    new: str
    bug: str


def _m(name: str, path: str, old: str, new: str, bug: str) -> Mutant:
    return Mutant(name, f"{PACKAGE}/{path}", old, new, bug)


MUTANTS: tuple[Mutant, ...] = (
    # ---- the log-determinant and the Gram spectrum (core/logdet.py, core/terms.py)
    _m("logdet-sign", "core/logdet.py", "return 0.5 * torch.log(shifted).sum(dim=1)",
       "return -0.5 * torch.log(shifted).sum(dim=1)", "equation (3) printed without its sign fixed"),
    _m("logdet-half", "core/logdet.py", "return 0.5 * torch.log(shifted).sum(dim=1)",
       "return torch.log(shifted).sum(dim=1)", "log det(J^T J) instead of 1/2 log det"),
    _m("s-not-squared", "core/logdet.py",
       "squared = torch.tensor([float(s) ** 2 for s in scales], dtype=torch.float64, device=eigenvalues.device)\n"
       "    shifted",
       "squared = torch.tensor([float(s) for s in scales], dtype=torch.float64, device=eigenvalues.device)\n"
       "    shifted", "lambda + s instead of lambda + s^2"),
    _m("s2-on-singular-values", "core/logdet.py", "shifted = eigenvalues.unsqueeze(-1) + squared",
       "shifted = (eigenvalues.unsqueeze(-1).sqrt() + squared) ** 2",
       "s^2 added to the singular values of J, not to the eigenvalues of J^T J"),
    _m("collapsed-against-s", "core/logdet.py", "return (eigenvalues.unsqueeze(-1) < squared).sum(dim=1)",
       "return (eigenvalues.unsqueeze(-1) < squared.sqrt()).sum(dim=1)", "collapsed directions counted against s"),
    _m("no-eigenvalue-clipping", "core/logdet.py", "        eigenvalues = eigenvalues.clamp_min(0.0)",
       "        pass", "round-off-negative eigenvalues kept"),
    _m("neg-log-density-sign", "core/terms.py", "neg_log_density = -prepared.latent.distribution.log_density(",
       "neg_log_density = prepared.latent.distribution.log_density(", "+log p(z) instead of -log p(z)"),
    _m("sigma-min-from-largest", "run/rows.py", "np.sqrt(eigenvalues[:, 0].numpy()) if",
       "np.sqrt(eigenvalues[:, -1].numpy()) if", "smallest singular value read from the wrong end"),
    # ---- latent densities, their constants and the seeding of blocks (core/latents.py)
    _m("normal-constant-once", "core/latents.py",
       "return -0.5 * (latents * latents).sum(dim=1) - 0.5 * dim * _LOG_2PI",
       "return -0.5 * (latents * latents).sum(dim=1) - 0.5 * _LOG_2PI", "log(2 pi)/2 once, not per coordinate"),
    _m("normal-quadratic-half", "core/latents.py",
       "return -0.5 * (latents * latents).sum(dim=1) - 0.5 * dim * _LOG_2PI",
       "return -(latents * latents).sum(dim=1) - 0.5 * dim * _LOG_2PI", "-|z|^2 instead of -|z|^2/2"),
    _m("uniform-constant-once", "core/latents.py", "(latents.shape[0],), -dim * math.log(self.high - self.low)",
       "(latents.shape[0],), -math.log(self.high - self.low)", "log(high - low) once, not per coordinate"),
    _m("truncnorm-mass-once", "core/latents.py", "- dim * (0.5 * _LOG_2PI + self._log_mass)",
       "- dim * 0.5 * _LOG_2PI - self._log_mass", "the truncation's mass once, not per coordinate"),
    _m("truncnorm-mass-erf", "core/latents.py", "return math.log(math.erf(self.psi / math.sqrt(2.0)))",
       "return math.log(math.erf(self.psi))", "erf(psi) instead of erf(psi / sqrt 2)"),
    _m("truncnorm-entropy-sign", "core/latents.py", "- self.psi * density_at_psi / mass",
       "+ self.psi * density_at_psi / mass", "the truncation's entropy term with the wrong sign"),
    _m("block-seed-collision", "core/latents.py", "entropy=int(seed), spawn_key=(int(block_index),)",
       "entropy=int(seed) + int(block_index), spawn_key=()", "seed s block b+1 = seed s+1 block b"),
    _m("block-offset-ignored", "core/latents.py", "self.block(block_index)[offset : offset + take]",
       "self.block(block_index)[:take]", "a range starting inside a block starts at its beginning"),
    # ---- streaming moments and the interval (core/stats.py, defaults.py)
    _m("chan-merge-no-cross-term", "core/stats.py",
       "m2 = self.m2 + other.m2 + delta * delta * (self.count * other.count / total)",
       "m2 = self.m2 + other.m2", "Chan's merge without the between-blocks term"),
    _m("chan-merge-mean-weight", "core/stats.py", "mean = self.mean + delta * (other.count / total)",
       "mean = self.mean + delta * (self.count / total)", "the merged mean weighted by the wrong count"),
    _m("two-pass-raw-moment", "core/stats.py", "return cls(count, mean, (deviations * deviations).sum(axis=0))",
       "return cls(count, mean, (values * values).sum(axis=0))", "M2 as the raw second moment"),
    _m("std-ddof-0", "core/stats.py", "return np.sqrt(self.m2 / (self.count - 1))",
       "return np.sqrt(self.m2 / self.count)", "ddof = 0"),
    _m("stderr-sqrt-n-minus-1", "core/stats.py", "return self.std / math.sqrt(self.count)",
       "return self.std / math.sqrt(self.count - 1)", "std / sqrt(N - 1)"),
    Mutant("ci95-z-1.645", "genentropy_cli/defaults.py", "CONFIDENCE_Z_95: float = 1.959963984540054",
           "CONFIDENCE_Z_95: float = 1.6448536269514722", "a one-sided 95% quantile"),
    _m("ci95-from-std", "core/stats.py", "half_width = CONFIDENCE_Z_95 * self.stderr",
       "half_width = CONFIDENCE_Z_95 * self.std", "the interval of a sample, not of the mean"),
    _m("cholesky-schur-plus", "core/cholesky.py",
       "matrices[:, half:, half:].baddbmm_(solved.transpose(1, 2), solved, alpha=-1)",
       "matrices[:, half:, half:].baddbmm_(solved.transpose(1, 2), solved, alpha=1)",
       "the block Cholesky's Schur complement with the wrong sign"),
    _m("symmetric-gram-lower-unwritten", "core/logdet.py", "    out[:, half:, :half] = corner.transpose(1, 2)\n", "",
       "J^T J by symmetric blocks leaves the block below the diagonal unwritten"),
    # ---- stacked-tangent rules (core/stacked_rules*.py) and the safety net (core/decoder.py)
    _m("probe-primal-not-exact", "core/stacked_rules.py",
       "    if mode.exact_primal:  # the tangent rows as a run has them",
       "    if False:  # the tangent rows as a run has them",
       "the probe check's convolutions round their primal rows otherwise than the decoder's own call"),
    _m("stacked-addmm-bias-everywhere", "core/stacked_rules.py",
       "return _rows_apart(mode, source, weight.shape[1], affine, linear)",
       "return _rows_apart(mode, source, weight.shape[1], affine, affine)", "a linear layer's bias added to the tangent rows"),
    _m("stacked-conv-bias-everywhere", "core/stacked_rules.py", "out[:primal_rows] += bias.reshape(",
       "out += bias.reshape(", "a convolution's bias added to the tangent rows"),
    _m("stacked-batchnorm-shift-everywhere", "core/stacked_rules.py",
       "mode.primal(out).add_(shift.reshape(shape).to(source.dtype))",
       "out.add_(shift.reshape(shape).to(source.dtype))", "batch norm's shift added to the tangent rows"),
    _m("stacked-batchnorm-no-eps", "core/stacked_rules.py", "scale = torch.rsqrt(var + eps)",
       "scale = torch.rsqrt(var)", "batch norm's scale without eps"),
    _m("stacked-tanh-derivative", "core/stacked_rules_pointwise.py", '"tanh": lambda x, y, *rest, **options: 1 - y * y,',
       '"tanh": lambda x, y, *rest, **options: 1 - y,', "tanh' = 1 - y"),
    _m("stacked-sigmoid-derivative", "core/stacked_rules_pointwise.py", '"sigmoid": lambda x, y, *rest, **options: y * (1 - y),',
       '"sigmoid": lambda x, y, *rest, **options: 1 - y,', "sigmoid' = 1 - y"),
    _m("stacked-exp-derivative", "core/stacked_rules_pointwise.py", '"exp": lambda x, y, *rest, **options: y,',
       '"exp": lambda x, y, *rest, **options: x,', "exp' = x"),
    _m("stacked-leaky-relu-slope", "core/stacked_rules_pointwise.py", "torch.full_like(x, slope))",
       "torch.zeros_like(x))", "leaky ReLU's negative slope lost"),
    _m("stacked-silu-derivative", "core/stacked_rules_pointwise.py", "    return s + y * (1 - s)",
       "    return s + x * (1 - s)", "silu' = s + x (1 - s)"),
    _m("stacked-gelu-approximation-ignored", "core/stacked_rules_pointwise.py",
       "    approximate = rest[0] if rest else approximate", "    approximate = \"none\"",
       "gelu(approximate='tanh') differentiated as the exact gelu"),
    _m("stacked-norm-tangent-not-centred", "core/stacked_rules_norms.py",
       "torch.sub(tangents, tangents.mean(dims, keepdim=True), out=out)", "out.copy_(tangents)",
       "layer/group norm's tangent without its mean(t) term"),
    _m("stacked-second-operand-tangent", "core/stacked_rules_pointwise.py",
       "tangent_out.addcmul_(mode.tangents(args[index]), derivative)",
       "tangent_out.addcmul_(mode.tangents(args[positions[0]]), derivative)",
       "f(x, y): the first operand's tangent used for the second"),
    _m("stacked-constant-minus-sign", "core/stacked_rules.py", "out = mode.mark(stacked * (sign * alpha))",
       "out = mode.mark(stacked * alpha)", "c - x differentiated as c + x"),
    _m("stacked-bmm-one-product-term", "core/stacked_rules.py",
       "torch.add(torch.matmul(mode.tangents(first), right), torch.matmul(left, mode.tangents(second)), out=tangents)",
       "torch.add(torch.matmul(mode.tangents(first), right), 0, out=tangents)",
       "attention's q k^T differentiated in q alone"),
    _m("stacked-mask-not-replicated", "core/stacked_rules_pointwise.py",
       "rest.copy_(value.expand_as(rest)) if is_discrete(value) else rest.zero_()", "rest.zero_()",
       "a comparison's mask read as all False on the tangent rows"),
    _m("stacked-fill-keeps-tangents", "core/stacked_rules_index.py", "    return mode.zero_tangents(target)\n",
       "    return target\n", "a constant written into stacked rows keeps the old tangents"),
    _m("stacked-folded-conv-no-weight-term", "core/stacked_rules_folded.py", "    if mode.is_stacked(weight):\n        tangent = func(",
       "    if False:\n        tangent = func(", "StyleGAN2's per-sample weights treated as constants"),
    _m("reference-check-always-agrees", "core/decoder.py",
       "    finite = torch.isfinite(reference)\n    if not torch.equal",
       "    return True\n    finite = torch.isfinite(reference)\n    if not torch.equal",
       "the stacked Jacobian never compared with reverse mode"),
    # ---- the ledger, stopping, rows and the loop (run/)
    _m("ledger-frontier-reemits", "run/ledger.py", "first_new = max(0, self.emitted - base)", "first_new = 0",
       "rows handed out again at every advance"),
    _m("ledger-merges-short-block", "run/ledger.py", "            if len(rows) < self.block_length(block):",
       "            if len(rows) < self.block_length(block) - 1:", "a block merged one sample short"),
    _m("ledger-target-stop-off-by-one", "run/ledger.py", "int(np.flatnonzero(finite)[hit]) + 1",
       "int(np.flatnonzero(finite)[hit])", "the stopping sample itself left out"),
    _m("ledger-restore-frontier", "run/ledger.py", 'self.emitted = int(meta["emitted"])', "self.emitted = 0",
       "a resumed run forgets which rows it wrote"),
    _m("target-at-any-scale", "run/stopping.py", "met = (stderr <= target).all(axis=1)",
       "met = (stderr <= target).any(axis=1)", "--target-stderr met at one scale stops the run"),
    _m("target-stderr-formula", "run/stopping.py", "np.sqrt(m2 / ((counts - 1) * counts)[:, None])",
       "np.sqrt(m2 / (counts * counts)[:, None])", "the running standard error with ddof = 0"),
    _m("target-min-samples-off-by-one", "run/stopping.py", "(counts >= max(int(min_samples), 2))",
       "(counts > max(int(min_samples), 2))", "--min-samples + 1"),
    _m("paired-difference-sign", "run/rows.py", "self.models[a].terms - self.models[b].terms",
       "self.models[b].terms - self.models[a].terms", "compare's differences the wrong way round"),
    _m("paired-finite-any-model", "run/rows.py", "np.logical_and.reduce([model.finite",
       "np.logical_or.reduce([model.finite", "a sample non-finite for one model kept for the others"),
    _m("nonfinite-indices-uncapped", "run/rows.py",
       "    room = MAX_LISTED_NONFINITE - len(summary.nonfinite_indices)\n",
       "    room = MAX_LISTED_NONFINITE\n", "the cap of 100 listed indices per batch"),
    _m("clipped-count-last-batch", "run/loop.py", "self.ledger.clipped_eigenvalues += message.clipped",
       "self.ledger.clipped_eigenvalues = message.clipped", "clipped eigenvalues of the last batch only"),
    _m("round-robin-slice", "run/distributed.py", "return itertools.islice(items, rank, None, world_size)",
       "return itertools.islice(items, rank, world_size)", "rank r takes blocks r..W-1 instead of r, r+W, ..."),
    _m("checkpoint-never-refused", "run/checkpoint.py", "    if differences:\n        raise InputError(",
       "    if False:\n        raise InputError(", "a checkpoint of other settings resumed"),
    _m("checkpoint-dtype-not-defining", "run/options.py",
       'dtype: str = _setting("dtype", defines_checkpoint=True)', 'dtype: str = _setting("dtype")',
       "a float32 checkpoint resumed in float64"),
    _m("second-signal-ignored", "run/interrupts.py", "        if flag.requested and flag._signal == signum:",
       "        if False:", "a second Ctrl-C does not abort a hung batch"),
    _m("sigterm-not-handled", "run/interrupts.py", "HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)",
       "HANDLED_SIGNALS = (signal.SIGINT,)", "SIGTERM kills the run without a checkpoint or exit 130"),
    # ---- significance of differences (core/significance.py)
    _m("p-value-one-sided", "core/significance.py", "return math.erfc(abs(z_score) / math.sqrt(2.0))",
       "return 0.5 * math.erfc(abs(z_score) / math.sqrt(2.0))", "a one-sided p-value"),
    _m("holm-as-bonferroni", "core/significance.py", "min(1.0, (count - rank) * value)", "min(1.0, count * value)",
       "Bonferroni instead of Holm"),
    _m("unpaired-stderr-added", "core/significance.py", "return math.sqrt(stderr_a**2 + stderr_b**2)",
       "return stderr_a + stderr_b", "standard errors added, not in quadrature"),
    _m("nan-stderr-significant", "core/significance.py",
       "if math.isnan(stderr) or math.isnan(difference):", "if math.isnan(difference):",
       "a NaN standard error read as zero: p = 0 for a change of unknown error (EntropyMetric, compare)"),
    # ---- the trust rule: who may name a file, sizes, counts (trust.py, models/labels.py, core/)
    _m("embedded-may-name-files", "models/labels.py", '    if origin == "flag":\n        return Namer.user()',
       '    if origin != "":\n        return Namer.user()', "a model's metadata names a file and it is read"),
    _m("spec-path-from-cwd", "trust.py", "resolved = Path(os.path.realpath(namer.folder / path))",
       "resolved = Path(os.path.realpath(path))", "a spec's relative path resolved against the working folder"),
    _m("spec-may-escape-its-folder", "trust.py",
       "if path.is_absolute() or not resolved.is_relative_to(namer.folder):", "if path.is_absolute():",
       "a spec names ../../secret and it is read"),
    _m("size-not-checked-before-reading", "trust.py", "    if size > limit:\n", "    if False:\n",
       "a named file's size taken on trust, not from stat"),
    _m("classes-unbounded", "core/labels.py", "check_count(count, MAX_CLASSES,", "check_count(count, 10**15,",
       "10^12 classes from a flag or a 12 KB file accepted"),
    # ---- checkpoints checked whole (run/checkpoint.py, run/ledger.py)
    _m("counters-outside-checksum", "run/checkpoint.py",
       'digest = hashlib.sha256(canonical_json({"settings": settings, "state": state}).encode())',
       'digest = hashlib.sha256(b"")', "edited counters resume with a wrong N"),
    _m("declared-size-unchecked", "run/checkpoint.py", "            if declared > info.file_size:",
       "            if False:", "a checkpoint declaring an 8 GiB array is allocated"),
    _m("checkpoint-depth-unbounded", "run/checkpoint.py",
       '        check_depth(document, MAX_DOCUMENT_DEPTH, "its document")', "        pass",
       "a deeply nested checkpoint document accepted"),
    _m("resumed-counters-unchecked", "run/ledger.py", "        self._check_counters()\n", "",
       "a resumed run trusts counters that disagree with its moments"),
    # ---- per-class bookkeeping, partial results, track and start-up (issue 23)
    _m("class-nonfinite-offset", "jobs/conditional.py", "num_nonfinite=int(outcome.summary.models[member].num_nonfinite)",
       "num_nonfinite=int(outcome.summary.models[offset].num_nonfinite)",
       "a conditional comparison's later models report the first model's per-class non-finite counts"),
    _m("class-probe-offset", "jobs/conditional.py", "precision_probe=outcome.probe_reports[member],",
       "precision_probe=outcome.probe_reports[offset],",
       "a conditional comparison's later models report the first model's per-class precision probes"),
    _m("partial-refused-before-two-samples", "jobs/pairs.py", "if outcome.moments.count >= 2 or outcome.partial:",
       "if outcome.moments.count >= 2:", "a conditional run interrupted before its first samples exits 1, result lost"),
    _m("track-change-sign", "jobs/track.py", "RunningMoments.from_values(now[finite] - before[finite])",
       "RunningMoments.from_values(before[finite] - now[finite])", "track's change H(k) - H(k+1)"),
    _m("track-finite-in-one", "jobs/track.py",
       "finite = np.isfinite(now).all(axis=1) & np.isfinite(before).all(axis=1)",
       "finite = np.isfinite(now).all(axis=1)", "a change paired with samples non-finite in the earlier checkpoint"),
    _m("track-common-all", "jobs/track.py", "common = min(len(terms), len(state.terms))", "common = len(terms)",
       "checkpoints that stopped at different N (--target-stderr) paired past the shorter one"),
    _m("track-ignores-label", "jobs/track.py",
       "label = None if checkpoint.label is None else as_label_spec(checkpoint.label)", "label = None",
       "track runs a conditional checkpoint without its label"),
    _m("track-resume-reruns", "jobs/track.py", "for index in range(len(state.summaries), count):",
       "for index in range(count):", "a resumed track estimates its finished checkpoints again"),
    _m("label-format-not-tried", "core/decoder.py", "if other != spec.format and runs_in(",
       "if other == spec.format and runs_in(", "labels in the wrong format reported as another failure"),
    _m("ctrl-c-at-exit-traced", "__main__.py", "            signal.signal(signal.SIGINT, signal.SIG_IGN)",
       "            pass", "a Ctrl-C during the interpreter's shutdown prints a traceback"),
)


def apply(mutant: Mutant, root: Path) -> None:
    """Make the edit in the copy at ``root``; the text must be there exactly once."""
    target = root / mutant.path
    source = target.read_text()
    found = source.count(mutant.old)
    if found != 1:
        raise ValueError(f"{mutant.name}: the text to replace occurs {found} times in {mutant.path}")
    target.write_text(source.replace(mutant.old, mutant.new))


def stale(mutants: tuple[Mutant, ...] = MUTANTS, root: Path = ROOT) -> list[str]:
    """The mutants that no longer apply to the code at ``root`` (each must find its text once)."""
    problems = []
    for mutant in mutants:
        found = (root / mutant.path).read_text().count(mutant.old) if (root / mutant.path).is_file() else 0
        if found != 1:
            problems.append(f"{mutant.name}: {found} occurrences in {mutant.path}")
    return problems


@dataclass
class Outcome:
    name: str
    killed: bool
    killed_by: str
    seconds: float


def first_failure(output: str, returncode: int) -> str:
    """The test that failed first (pytest's summary line), or what else ended the run."""
    for line in output.splitlines():
        match = re.match(r"(FAILED|ERROR) (\S+)", line)
        if match:
            return match.group(2)
    if returncode < 0:  # e.g. SIGTERM unhandled: an in-process interrupt test ends pytest itself
        return f"pytest itself killed by {signal.Signals(-returncode).name}"
    return {0: "-", 124: "timeout"}.get(returncode, f"pytest exit status {returncode}")


_RUNNING: set[int] = set()
"""Process groups of the suites running now (each in its own session, killed whole on a timeout
or an interrupt: a suite starts CLI and torchrun processes of its own)."""


def run_in_own_session(command: list[str], cwd: Path, environment: dict, timeout: float) -> tuple[int, str]:
    """(exit status, stdout and stderr) of ``command``; 124 when it ran past ``timeout`` seconds."""
    process = subprocess.Popen(command, cwd=cwd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    _RUNNING.add(process.pid)
    try:
        output, _ = process.communicate(timeout=timeout)
        return process.returncode, output
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        return 124, output
    finally:
        _RUNNING.discard(process.pid)


def stop_running_suites() -> None:
    for group in list(_RUNNING):
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_files(root: Path) -> list[str]:
    """Every test file pytest collects from ``tests`` (test_*.py), those of ``FAST_FIRST`` first.
    (Named one by one: given ``tests`` too, pytest would collect it in its own order.)"""
    every = sorted(str(path.relative_to(root)) for path in (root / "tests").glob("test_*.py"))
    return [path for path in FAST_FIRST if path in every] + [path for path in every if path not in FAST_FIRST]


def run_suite(source: Path, mutant: Mutant | None, timeout: float, extra: list[str],
              log_dir: Path | None = None) -> Outcome:
    """Copy the repository snapshot ``source``, apply ``mutant`` (None: the baseline), run the
    suite there (its output kept in ``log_dir``/NAME.txt where given)."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="genentropy-mutant-") as scratch:
        root = Path(scratch) / "repo"
        shutil.copytree(source, root)
        if mutant is not None:
            apply(mutant, root)
        environment = {key: value for key, value in os.environ.items() if key != "GENENTROPY_SLOW"}
        environment["PYTHONPATH"] = str(root)  # the copy's package, not an installed one
        environment["PYTHONDONTWRITEBYTECODE"] = "1"
        environment[ACTIVE_MUTANT_VARIABLE] = mutant.name if mutant else ""
        command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *extra, *test_files(root)]
        returncode, output = run_in_own_session(command, root, environment, timeout)
    name = mutant.name if mutant else "(baseline: no mutation)"
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / f"{mutant.name if mutant else 'baseline'}.txt").write_text(output)
    return Outcome(name, returncode != 0, first_failure(output, returncode), time.monotonic() - started)


def kill_table(outcomes: list[Outcome]) -> str:
    width = max(len(outcome.name) for outcome in outcomes)
    lines = [f"{'mutant':<{width}}  {'result':<8}  {'seconds':>7}  first failing test", "-" * (width + 60)]
    for outcome in outcomes:
        result = "killed" if outcome.killed else "SURVIVED"
        lines.append(f"{outcome.name:<{width}}  {result:<8}  {outcome.seconds:7.0f}  {outcome.killed_by}")
    killed = sum(outcome.killed for outcome in outcomes)
    lines.append(f"{killed} of {len(outcomes)} mutants killed")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="run these mutants only")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--jobs", type=int, default=2, help="mutants run at once (default 2: a shared CPU)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run of the unchanged copy")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_SECONDS, help="seconds per run")
    parser.add_argument("--pytest-arg", action="append", default=[], metavar="ARG", help="one more pytest argument")
    parser.add_argument("--log-dir", type=Path, help="keep each run's pytest output in DIR/NAME.txt")
    arguments = parser.parse_args(argv)

    problems = stale()
    if problems:
        print("mutants that no longer apply (update MUTANTS):\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    chosen = [mutant for mutant in MUTANTS if not arguments.only or mutant.name in arguments.only]
    unknown = set(arguments.only) - {mutant.name for mutant in MUTANTS}
    if unknown:
        print(f"unknown mutant(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    if arguments.list:
        for mutant in chosen:
            print(f"{mutant.name:<36} {mutant.path:<40} {mutant.bug}")
        return 0

    def run(mutant: Mutant | None) -> Outcome:
        outcome = run_suite(source, mutant, arguments.timeout, arguments.pytest_arg, arguments.log_dir)
        print(f"[{outcome.seconds:5.0f} s] {outcome.name}: {'killed by ' + outcome.killed_by if outcome.killed else 'SURVIVED'}"
              if mutant else f"[{outcome.seconds:5.0f} s] baseline: {'FAILED ' + outcome.killed_by if outcome.killed else 'passed'}",
              flush=True)
        return outcome

    jobs = [None] if not arguments.no_baseline else []
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM too: stop the suites, then exit
    with tempfile.TemporaryDirectory(prefix="genentropy-mutation-source-") as snapshot:
        source = Path(snapshot) / "repo"  # the repository as it is now: later edits do not leak in
        shutil.copytree(ROOT, source, ignore=COPY_IGNORED)
        pool = ThreadPoolExecutor(max(1, arguments.jobs))
        try:
            outcomes = list(pool.map(run, [*jobs, *chosen]))
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            stop_running_suites()
            raise
        pool.shutdown()
    if not arguments.no_baseline:
        baseline, outcomes = outcomes[0], outcomes[1:]
        if baseline.killed:
            print(f"the unchanged suite fails ({baseline.killed_by}): no kill below means anything", file=sys.stderr)
            print(kill_table(outcomes))
            return 2
    print(kill_table(outcomes))
    return 0 if all(outcome.killed for outcome in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
