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
DEFAULT_SEED: int = 0
DEFAULT_DEVICE: str = "auto"
DEFAULT_DTYPE: str = "float32"
DEFAULT_LATENT_DISTRIBUTION: str = "normal"

LATENT_BLOCK_SIZE: int = 1024
"""Latents are drawn in blocks of this many samples, each block from its own generator
seeded by (seed, block index), so sample i depends only on (seed, i)."""

JACOBIAN_MEMORY_BUDGET_BYTES: int = 256 * 1024**2
"""Bytes the Jacobian of one batch may take when the batch size is chosen automatically."""

MAX_AUTO_BATCH_SIZE: int = 1024
MIN_AUTO_BATCH_SIZE: int = 1

AUTO_TANGENT_CHUNK: int = 16
"""Tangent directions pushed through the decoder at once when not set explicitly."""

CPU_EFFECTIVE_BATCH: int = 512
"""Samples x tangent directions per decoder call that keep a CPU's caches busy but not
thrashed (measured on the infoGAN MNIST generator: about 1.1x the forward-pass floor)."""

CUDA_EFFECTIVE_BATCH: int = 8192

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

INSPECT_TIMING_BATCH: int = 64
INSPECT_TIMING_REPEATS: int = 3
"""``inspect`` times the best of this many forward passes of this many latents."""

CONVERT_OUTPUT_TOLERANCE: float = 1e-9
"""``convert`` checks its result: outputs on probe latents (float64) may differ from the
source's by at most this, relative to the largest output magnitude (+1)."""
