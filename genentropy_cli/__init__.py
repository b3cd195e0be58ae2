"""genentropy: differential entropy of generative models' decoders (Struminsky et al.)."""

__version__ = "0.1.0"

from .engine import EntropyResult, ScaleEstimate, estimate_entropy  # noqa: E402
from .latents import LatentSpec, StandardNormal, TruncatedNormal, Uniform, make_latent_spec, parse_distribution  # noqa: E402
from .sweep import Reference, SweepResult, sweep_scale  # noqa: E402

__all__ = [
    "__version__",
    "EntropyResult",
    "ScaleEstimate",
    "estimate_entropy",
    "LatentSpec",
    "StandardNormal",
    "TruncatedNormal",
    "Uniform",
    "make_latent_spec",
    "parse_distribution",
    "Reference",
    "SweepResult",
    "sweep_scale",
]
