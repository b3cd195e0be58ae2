"""The one source of defaults shared by the CLI and the Python API."""

from __future__ import annotations

DEFAULT_SCALES: tuple[float, ...] = (1e-4,)
"""Regularisation scales s; the paper reports s = 1e-4."""

DEFAULT_SWEEP_SCALES: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4)
"""The scales of the paper's Table 1, used by ``sweep-scale``."""

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

SUPPORTED_DTYPES: tuple[str, ...] = ("float32", "float64")

COMPARE_SIGNIFICANCE_LEVEL: float = 0.05
"""Family-wise level of ``compare``'s significance marks (Holm-adjusted over all pairs)."""

SAMPLES_DEFAULT_K: int = 8
"""How many lowest and highest per-sample entropy terms ``samples`` shows by default."""

SAMPLES_DEFAULT_NUM_SAMPLES: int = 5_000
"""Latents ``samples`` scans for its extremes (the K in N rarest, not an estimate)."""
