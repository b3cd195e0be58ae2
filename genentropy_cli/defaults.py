"""The one source of defaults shared by the CLI and the Python API."""

from __future__ import annotations

DEFAULT_SCALES: tuple[float, ...] = (1e-4,)
"""Regularisation scales s; the paper reports s = 1e-4."""

DEFAULT_SWEEP_SCALES: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4)
"""The scales of the paper's Table 1, used by ``sweep-scale``."""

DEFAULT_AGREEMENT_SE: float = 3.0
"""``sweep-scale``: two scales agree when their estimates differ by at most this many combined
standard errors, sqrt(se_a^2 + se_b^2)."""

DEFAULT_NUM_SAMPLES: int = 50_000

LONG_RUN_SECONDS: float = 120.0
"""A run expected to take longer than this gets a one-line note on stderr after its first batches
(and in ``inspect``): the ``-n`` and ``--target-stderr`` that would finish in about
``QUICK_RUN_SECONDS``, and the standard error that gives (``planning.run_time_note``)."""

QUICK_RUN_SECONDS: float = 60.0
"""The run time the long-run note suggests options for."""

FORESIGHT_SECONDS: float = 2.0
"""The long-run note is decided after the first batch and then this many seconds of batches (or
as many samples again as the first batch had, if that comes first): the rate it extrapolates."""

JACOBIAN_COST_FACTORS: dict[str, float] = {"stacked": 1.0, "vmap": 2.0, "replicated": 4.0}
"""A sample's Jacobian by each method, in forward passes of one row per column (d + 1 rows):
stacked pushes d + 1 plain rows, torch.func about twice that, replicated recomputes the primal
per direction (``core.methods``). A rough model for ``inspect``'s prediction; a run's own note
uses its measured rate."""
DEFAULT_SEED: int = 0
DEFAULT_DEVICE: str = "auto"
DEFAULT_DTYPE: str = "float32"
DEFAULT_LATENT_DISTRIBUTION: str = "normal"

LATENT_BLOCK_SIZE: int = 1024
"""Latents are drawn in blocks of this many samples, each block from its own generator
seeded by (seed, block index), so sample i depends only on (seed, i)."""

JACOBIAN_MEMORY_BUDGET_BYTES: int = 256 * 1024**2
"""Bytes one batch may hold (Jacobians, activations and their tangents, the Gram step) when
the batch size is planned without --max-memory on a CPU (``planning.plan_batch``)."""

MAX_AUTO_BATCH_SIZE: int = 1024
"""Most samples per batch an automatic plan chooses."""

CPU_CALL_BYTES: int = 64 * 1024**2
"""Activation bytes one decoder call should touch on a CPU: the rows per call follow from the
decoder's measured bytes per row (benchmarks/RESULTS.md: the rows-per-call sweep)."""

CUDA_CALL_BYTES: int = 1024**3
"""The same on a GPU, where large calls pay (not yet measured: no GPU was lent to issue 5)."""

CPU_MAX_ROWS_PER_CALL: int = 8192
CUDA_MAX_ROWS_PER_CALL: int = 131072
"""Upper bounds on the rows of one decoder call, for decoders with tiny activations. With freed
memory kept for reuse (allocator.py) the MLP's forward pass and the engine are fastest per row
at 4096-8192 rows on 2 CPU cores; the per-call cost of the stacked method (about 1 ms of Python
dispatch) is then spread over more samples."""

CALIBRATION_DIVISOR: int = 4
"""Under --max-memory on a CPU the first batch runs at 1/this of the planned size, its resident
peak measured, before later batches are sized from that measurement (memory.FirstBatchCalibration)."""

CALIBRATION_ROOM_SHARE: float = 0.85
"""The share of the room under the cap that batches sized from the measured first batch may
fill: growth is not quite linear in the batch (heap fragmentation), so the rest is margin."""

ACTIVATION_SAFETY_FACTOR: float = 2.0
"""Live bytes per row of a call, as a multiple of the largest op's inputs plus output (other
tensors a decoder keeps alive, allocator slack); calibrated by peak RSS, benchmarks/RESULTS.md."""

DEFAULT_ACTIVATION_BYTES_PER_OUTPUT: int = 16
"""Bytes per row assumed when none were measured: this many times the output's bytes."""

STACKED_PROBE_COLUMNS: int = 8
"""Jacobian columns on which the stacked method is checked against an AD reference before a run."""

GRAM_SLAB_BYTES: int = 64 * 1024**2
"""The float64 copy of the Jacobians that forms J^T J is made this many bytes at a time (GPU;
the most any device uses, which is what ``planning`` budgets for)."""

CPU_GRAM_SLAB_BYTES: int = 4 * 1024**2
"""The same on a CPU: a slab that stays in cache between its float64 copy and its product
(the Gram step of the MLP benchmark is about 1.3x faster than with 64 MiB slabs)."""

TRANSPOSED_GRAM_MAX_DIM: int = 32
"""Up to this latent size torch's arrangement lays the float64 slab out (b, D, d) and takes J^T J
as X^T X, which the CPU's batched GEMM did about twice as fast for small d (issue 5, 2 threads);
above it, (b, d, D) is faster. On a CPU these sizes now take numpy's arrangement (below)."""

EIGVALSH_THREAD_MIN_WORK: int = 32 * 16**3
"""CPU batches of Gram matrices with at least this much work (matrices x d^3: 32 of 16 x 16, or
two of 100 x 100) have their eigenvalues taken on every intra-op thread (LAPACK's batched
eigvalsh runs one matrix after another on one core)."""

NUMPY_GRAM_MAX_DIM: int = 64
"""On a CPU, up to this latent size the Gram step runs numpy's arrangement (logdet.GRAM_ARRANGEMENTS:
per thread, a float64 copy of its samples, numpy's X X^T, which is one BLAS syrk per matrix, and
numpy's eigvalsh), above it torch's (``torch.bmm`` on float64 slabs, then ``batched_eigvalsh``).
Measured with ``python benchmarks/gram_thresholds.py`` (2026-11-30, this project's 2-core AMD EPYC,
torch 2.13 with MKL, numpy 2.4 with OpenBLAS 0.3.31, D = 784, CPU time of 11 interleaved rounds, best):
torch's / numpy's whole step 8.6x at d = 4, 1.3x at 8 and 16, 1.03 at 24, 1.4 at 32, 1.1 at 48,
1.2 at 62 and 64; at d = 72 numpy's took 2.8x torch's (0.36) and at 80 1.3x, with medians 5-20x
worse: above 64 OpenBLAS threads inside a call, and calls from the pool's threads then fight for
the cores."""

NUMPY_GRAM_MAX_WORK: int = 64 * 64 * 784
"""... and only while one sample's product has at most this many multiply-adds (d^2 D): the
largest size measured above (D = 784). A larger product may make numpy's BLAS thread inside each
call, and calls from the pool's threads then fight for the cores (as measured at d = 72, 80), so
such a step (say d = 64 with D = 12,288) stays on torch's arrangement."""

NUMPY_EIGVALSH_MAX_DIM: int = 64
"""Up to this latent size eigenvalues are taken by ``np.linalg.eigvalsh``, above it by
``torch.linalg.eigvalsh`` (both LAPACK's syevd, one call per matrix). Measured (as above): on the
pool's threads the two cost the same (torch / numpy CPU time 0.88-0.99 for d = 4..64); as one
call from the main thread (a batch too small to split; ``--one-call``, a fresh process), torch's
took 1.5-2.3x numpy's CPU time for d = 4..62 (best rounds; medians 1.6-2.9x: MKL's threads inside
each small call), the same at 64 to 80 (1.01, 1.22, 0.92); numpy's is 2-6x slower from d = 72 on
the pool and 5x at d = 100 as one call (OpenBLAS's own threads, as above)."""

NUMPY_GRAM_SLAB_BYTES: int = 2 * 1024**2
"""The float64 copy of numpy's arrangement is made this many bytes at a time per thread (a slab
that stays in the core's cache between the copy and the syrk). Measured (as above, d = 4..100):
0.5, 1, 2, 4 and 8 MiB within 5% of each other in CPU time; 2 MiB at or near the best throughout."""

GRAM_THREAD_MIN_WORK: int = 2**22
"""A CPU batch whose Gram step has at least this much work (samples x d^2 (D + d), about 20
samples of d = 16, D = 784) is split over the intra-op threads in numpy's arrangement. A pool
round trip costs 23-31 us here and one such sample ~34 us of CPU time, so each thread then has
~10 round trips of work; smaller batches run on the calling thread."""

CHOLESKY_MIN_DIM: int = 65
"""From this latent size on (above ``NUMPY_GRAM_MAX_DIM``: small d keeps numpy's fused Gram step and
its eigenvalues, and every sample's diagnostics) the log-determinant of most samples comes from a
float64 Cholesky factorisation of J^T J + s^2 I (logdet = 2 sum_j log L_jj, d^3/3 FLOPs per scale)
instead of the eigenvalues (LAPACK's syevd, ~4/3 d^3 in a memory-bound tridiagonal reduction, and
more). Measured (2026-12-07, this project's 2 cores under a load average of ~15, torch 2.13 + MKL,
``benchmarks/run.py --section latents``, MLP with D = 3,072, best of 7 interleaved rounds): one
factorisation took 0.5x to 0.2x the time of one eigvalsh at d = 16 to 512; the whole engine on the
Cholesky path against the eigenvalue path, x the floor: 1.23 against 1.34 at d = 16 (numpy's fused
arrangement there; within the noise), 1.80 against 4.1-7.3 at d = 64, 2.85 against 3.70 at 256, 5.5
against 8.2 at 512. Below 65 the fused arrangement and every sample's diagnostics are kept (the
d = 64 figure says a lower threshold for large D would pay: not taken without a quiet measurement)."""

SYMMETRIC_GRAM_MIN_DIM: int = 128
"""From this latent size on, a CPU forms J^T J by symmetric blocks (``logdet.symmetric_gram_into``)
instead of one ``torch.bmm`` over the whole (d, D) slab. Measured (2026-12-07, this project's 2-core
Intel Xeon, torch 2.13 + MKL, float64 (b, d, D) stacks with D = 3,072, best of 7): blocks / one
product 0.89 at d = 128, 0.74 at 256, 0.67 at 512."""

SYMMETRIC_GRAM_LEAF_DIM: int = 64
"""... halving the diagonal blocks down to this many rows (leaves of 64 were fastest at d = 256
and 512: 0.67 against 0.70 with 128 and 0.82 with 256 at d = 512)."""

CHOLESKY_LEAF_DIM: int = 64
"""Matrices larger than this are factorised by 2 x 2 blocks (``logdet.blocked_cholesky``), down
to blocks of this size for LAPACK's potrf. Measured as above (float64 SPD stacks): one potrf per
matrix took 1.7x the blocked factorisation at d = 128, 1.2x at 256, 1.8x at 512 and 1.9x at 1,024
(leaves of 64; 128 and 256 within 10 % of it)."""

CHOLESKY_MAX_SCALES: int = 3
"""The Cholesky path runs when a run asks for at most this many scales: it factorises once per
scale (S d^3/3), the eigenvalues serve every scale at once (~4/3 d^3 + the rest), and at d = 512
one Cholesky took an eighth to a fifth of one eigvalsh here, so up to 3 scales are clearly cheaper,
while a sweep (``sweep-scale``: 4 scales, and every sample's collapsed counts) keeps the eigenvalues."""

EIGENVALUE_SUBSAMPLE_STRIDE: int = 16
"""On the Cholesky path, samples whose index is a multiple of this also get the eigenvalues of
J^T J: the diagnostics that need them (extreme singular values, collapsed directions, clipped
eigenvalues) come from that subsample (1/16 of the samples, sample 0 always in it, whatever the
batch size), and each such sample's Cholesky log-determinant is checked against its eigenvalues'
(``log_det_check``). One eigvalsh per 16 samples adds ~1/2 of a Cholesky per sample at d = 512."""

MALLOC_MMAP_THRESHOLD_BYTES: int = 32 * 1024**2
"""glibc's largest mmap threshold: smaller blocks come from the heap and are reused (allocator.py)."""

MALLOC_TRIM_THRESHOLD_BYTES: int = 1024**3
"""Freed heap memory the process keeps for reuse during a run before returning it to the OS (allocator.py)."""

CONFIDENCE_Z_95: float = 1.959963984540054
"""Two-sided 95% quantile of the standard normal, for the confidence interval."""

SUPPORTED_DTYPES: tuple[str, ...] = ("float64", "float32", "bfloat16", "float16")
"""The decoder's compute dtypes, most precise first; Gram matrices and statistics are float64."""

# ----------------------------------------------------------------- long runs (issue 6)

PRECISION_PROBE_SAMPLES: int = 128
"""The first samples also computed in float64 to measure what the decoder dtype does to the
estimate (0 switches the probe off)."""

PRECISION_PROBE_THRESHOLD: float = 0.1
"""Above this many standard errors of change, the dtype is flagged and a better one suggested."""

TARGET_STDERR_MIN_SAMPLES: int = 1000
"""With --target-stderr, never stop before this many finite samples: a standard error from a
handful of samples is itself too noisy to stop on."""

CHECKPOINT_INTERVAL_SECONDS: float = 10.0
"""Seconds between checkpoint writes (one is also written on completion and on interrupt)."""

CUDA_MEMORY_FRACTION: float = 0.5
"""Share of the device's free memory the automatic batch size may plan the Jacobians into
(the rest is headroom for activations, their tangents and the allocator)."""

INTERRUPTED_EXIT_CODE: int = 130
"""Exit status after Ctrl-C / SIGTERM: 128 + SIGINT, as shells report it."""

# ----------------------------------------------------------------- inspect and convert (issue 4)

INSPECT_PROBE_LATENTS: int = 4
"""Latents whose Jacobians ``inspect`` probes (singular values, rank at s)."""

INSPECT_MAX_PROBE_LATENTS: int = 4096
"""Most latents ``inspect --probe-latents`` takes (``estimate`` is the command for many samples)."""

INSPECT_PROBE_BATCH: int = 16
"""``inspect`` computes its probe latents' Jacobians this many at a time."""

INSPECT_TIMING_BATCH: int = 64
INSPECT_TIMING_REPEATS: int = 3
"""``inspect`` times the best of this many forward passes of this many latents."""

CONVERT_OUTPUT_TOLERANCE: float = 1e-9
"""``convert`` checks its result: outputs on probe latents (float64) may differ from the
source's by at most this, relative to the largest output magnitude (+1)."""

# ----------------------------------------------------------------- compare and samples (issue 7)

COMPARE_SIGNIFICANCE_LEVEL: float = 0.05
"""Family-wise level of ``compare``'s significance marks (Holm-adjusted over all pairs)."""

SAMPLES_DEFAULT_K: int = 8
"""How many lowest and highest per-sample entropy terms ``samples`` shows by default."""

SAMPLES_DEFAULT_NUM_SAMPLES: int = 5_000
"""Latents ``samples`` scans for its extremes (the K in N rarest, not an estimate)."""

SAMPLES_MAX_K: int = 10_000
"""Most lowest (or highest) samples ``samples`` keeps: their outputs are held and decoded, and
an image grid of more is unreadable (``estimate --per-sample`` gives every sample's term)."""

# ----------------------------------------------------------------- conditional decoders (issue 15)

DEFAULT_LABEL_FORMAT: str = "index"
"""How a conditional decoder takes its label unless told: int64 class numbers (B,)."""

DEFAULT_LABEL_ARGUMENT: str = "position"
"""Where the label goes unless told: the decoder's second positional argument, g(z, y)."""

CONDITIONAL_MAX_PAIRED_CLASSES: int = 20
"""Up to this many classes every pair's difference H(X|a) - H(X|b) is estimated with its paired
standard error (K(K-1)/2 statistics columns per scale); beyond it, none (choose with --classes)."""

INVARIANCE_PROBE_LATENTS: int = 4
"""Probe latents on which a run checks whether the decoder always collapses the radial direction of
z (``core.invariance``: two forward-mode passes over them, a fraction of one batch)."""

# ----------------------------------------------------------------- read by help texts (issue 18: start-up)
# The command line renders its help from these without importing torch; the modules that use
# them (core/latents, run/per_sample, run/options) read them from here too.

LATENT_DISTRIBUTION_HELP: dict[str, str] = {
    "normal": "N(0, I)",
    "uniform": "uniform on [-1, 1]",
    "uniform01": "uniform on [0, 1]",
    "truncated-normal:PSI": "N(0, 1) per coordinate restricted to [-PSI, PSI] (the truncation trick)",
}
"""The built-in latent distributions in listing order: usage (``NAME`` or ``NAME:PARAMETER``) ->
one-line summary. ``core.latents.LATENT_DISTRIBUTIONS`` registers its kinds with these summaries."""

PER_SAMPLE_FORMATS: tuple[str, ...] = (".npy", ".csv", ".jsonl")
"""The file suffixes ``--per-sample`` writes (``run.per_sample``)."""

RUN_OPTION_DEFAULTS: dict[str, object] = {
    "scales": DEFAULT_SCALES,
    "num_samples": DEFAULT_NUM_SAMPLES,
    "seed": DEFAULT_SEED,
    "dtype": DEFAULT_DTYPE,
    "device": DEFAULT_DEVICE,
    "batch_size": None,
    "tangent_chunk": None,
    "max_memory": None,
    "skip_nonfinite": False,
    "target_stderr": None,
    "min_samples": TARGET_STDERR_MIN_SAMPLES,
    "probe_samples": PRECISION_PROBE_SAMPLES,
    "checkpoint": None,
    "checkpoint_every": CHECKPOINT_INTERVAL_SECONDS,
    "per_sample": None,
    "save_latents": False,
    "distributed": None,
    "handle_signals": False,
}
"""Every field of ``run.options.EstimateOptions`` -> its default (None: planned or off), in field
order: the dataclass takes its defaults from here, and so do the CLI's flags."""

# ----------------------------------------------------------------- limits on what files and flags may ask (issue 23)
# The trust rule (run/trust.py, docs/safety.md#the-trust-rule) checks these before anything is
# read or allocated; every refusal names its limit.

MAX_CLASSES: int = 100_000
"""Most classes a conditional decoder may have (a flag, a spec or a model's metadata): each class
is estimated, and a one-hot label holds K numbers per sample. ImageNet-21k has 21,841."""

MAX_NAMED_FILE_BYTES: int = 4 * 1024**2
"""Largest file a value may name and genentropy read whole (``--class-weights FILE``): 100,000
classes' weights take about 2 MB as text."""

MAX_SMALL_FILE_BYTES: int = 1024**2
"""Largest spec, config or ``config.json`` file: each is a few lines (read whole, after ``stat``)."""

MAX_CHECKPOINT_META_BYTES: int = 16 * 1024**2
"""Largest JSON document inside a checkpoint (settings and counters; the numbers are arrays)."""

MAX_DOCUMENT_DEPTH: int = 32
"""Deepest nesting of a JSON document a file carries (a checkpoint's, a model's genentropy.json):
genentropy writes at most 6 levels; thousands would exhaust Python's recursion."""

MAX_LATENT_RANK: int = 16
"""Most axes of a latent shape (a file could list millions of sizes of 1)."""

MAX_SUBMODELS: int = 10_000
"""Most sub-models (state dicts and name groups) a checkpoint may hold for ``--select`` to choose from."""
