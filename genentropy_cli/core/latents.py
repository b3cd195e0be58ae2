"""Latent spaces: their shape, their distribution, and the seeded stream of latents.

Sample i's latent depends only on (seed, i): latents are drawn in fixed blocks of
``LATENT_BLOCK_SIZE``, block b from a CPU generator seeded by (seed, b), in float64.
Batch size, device and process count therefore never change which latents are used.

Distributions are read by name from one registry, ``LATENT_DISTRIBUTIONS``: to add one, write
its class (the ``LatentDistribution`` protocol) and one ``register_distribution`` call below
the others; parsing, labels and the listing in messages follow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from genentropy_cli.defaults import (
    DEFAULT_LATENT_DISTRIBUTION,
    LATENT_BLOCK_SIZE,
    LATENT_DISTRIBUTION_HELP,
    MAX_LATENT_RANK,
)
from genentropy_cli.errors import InputError
from genentropy_cli.trust import check_count, shown

__all__ = [
    "LATENT_DISTRIBUTIONS",
    "DistributionKind",
    "LatentDistribution",
    "LatentSpec",
    "LatentStream",
    "StandardNormal",
    "TruncatedNormal",
    "Uniform",
    "block_seed",
    "distribution_label",
    "distribution_names",
    "make_latent_spec",
    "parse_distribution",
    "parse_latent_shape",
    "register_distribution",
    "shape_of",
    "validate_seed",
]

_LOG_2PI = math.log(2.0 * math.pi)

MAX_LATENT_DIM = 2**20
"""Most latent coordinates d a spec may have: each sample needs a d x d float64 Gram matrix
(8 TiB at this d), so a larger shape is a typo, refused before anything is allocated."""


@runtime_checkable
class LatentDistribution(Protocol):
    """A product distribution over a flat latent vector of ``dim`` coordinates."""

    name: str

    def sample(self, generator: torch.Generator, num: int, dim: int) -> torch.Tensor:
        """``num`` float64 latents of shape (num, dim) drawn with ``generator``."""
        ...

    def log_density(self, latents: torch.Tensor) -> torch.Tensor:
        """log p(z) per row of a (num, dim) float64 tensor, normalising constants included."""
        ...

    def entropy(self, dim: int) -> float:
        """Differential entropy of the ``dim``-dimensional distribution (nats)."""
        ...


@dataclass(frozen=True)
class StandardNormal:
    """z ~ N(0, I): log p(z) = -|z|^2/2 - d/2 log(2 pi)."""

    name: str = "normal"

    def sample(self, generator: torch.Generator, num: int, dim: int) -> torch.Tensor:
        return torch.randn(num, dim, generator=generator, dtype=torch.float64)

    def log_density(self, latents: torch.Tensor) -> torch.Tensor:
        dim = latents.shape[1]
        return -0.5 * (latents * latents).sum(dim=1) - 0.5 * dim * _LOG_2PI

    def entropy(self, dim: int) -> float:
        return 0.5 * dim * math.log(2.0 * math.pi * math.e)


@dataclass(frozen=True)
class Uniform:
    """z ~ Uniform(low, high)^d: log p(z) = -d log(high - low) inside the box, -inf outside."""

    low: float = -1.0
    high: float = 1.0
    name: str = "uniform"

    def sample(self, generator: torch.Generator, num: int, dim: int) -> torch.Tensor:
        unit = torch.rand(num, dim, generator=generator, dtype=torch.float64)
        return self.low + (self.high - self.low) * unit

    def log_density(self, latents: torch.Tensor) -> torch.Tensor:
        dim = latents.shape[1]
        inside = ((latents >= self.low) & (latents <= self.high)).all(dim=1)
        value = torch.full((latents.shape[0],), -dim * math.log(self.high - self.low), dtype=torch.float64)
        return torch.where(inside, value, torch.full_like(value, -math.inf))

    def entropy(self, dim: int) -> float:
        return dim * math.log(self.high - self.low)


@dataclass(frozen=True)
class TruncatedNormal:
    """Each coordinate N(0, 1) restricted to [-psi, psi] (the truncation trick).

    log p(z) = sum_j [-z_j^2/2 - log(2 pi)/2 - log Z], Z = erf(psi / sqrt 2), inside the box.
    """

    psi: float = 1.0
    name: str = field(default="truncated-normal", init=False)

    def __post_init__(self) -> None:
        if not (self.psi > 0 and math.isfinite(self.psi)):
            raise InputError(f"truncated-normal needs a positive finite PSI, got {self.psi!r}")

    @property
    def _log_mass(self) -> float:
        return math.log(math.erf(self.psi / math.sqrt(2.0)))

    def sample(self, generator: torch.Generator, num: int, dim: int) -> torch.Tensor:
        lower = 0.5 * math.erfc(self.psi / math.sqrt(2.0))  # Phi(-psi)
        unit = torch.rand(num, dim, generator=generator, dtype=torch.float64)
        samples = torch.special.ndtri(lower + (1.0 - 2.0 * lower) * unit)
        return samples.clamp(-self.psi, self.psi)

    def log_density(self, latents: torch.Tensor) -> torch.Tensor:
        dim = latents.shape[1]
        inside = (latents.abs() <= self.psi).all(dim=1)
        value = -0.5 * (latents * latents).sum(dim=1) - dim * (0.5 * _LOG_2PI + self._log_mass)
        return torch.where(inside, value, torch.full_like(value, -math.inf))

    def entropy(self, dim: int) -> float:
        mass = math.exp(self._log_mass)
        density_at_psi = math.exp(-0.5 * self.psi**2) / math.sqrt(2.0 * math.pi)
        per_coordinate = 0.5 * math.log(2.0 * math.pi * math.e) + math.log(mass) - self.psi * density_at_psi / mass
        return dim * per_coordinate


@dataclass(frozen=True)
class DistributionKind:
    """A latent distribution read by name (CLI, spec files, the API): ``NAME``, or ``NAME:VALUE``
    for a kind with a parameter. ``LATENT_DISTRIBUTIONS`` holds every kind; parsing, labels and
    the listing in help texts all read it."""

    name: str
    """The canonical name, also every instance's ``.name``: what labels write and parsing reads."""
    build: Callable[..., LatentDistribution]
    """The distribution: ``build()``, or ``build(value)`` for a kind with a parameter."""
    summary: str
    """One line for help texts and the docs."""
    aliases: tuple[str, ...] = ()
    parameter: str | None = None
    """The parameter's name in usage lines (``truncated-normal:PSI``); None: the kind takes none."""
    example: float | None = None
    """A parameter value for messages (``truncated-normal:0.7``)."""
    parameter_of: Callable[[LatentDistribution], float] | None = None
    """The parameter read back from an instance, for ``distribution_label``."""

    @property
    def usage(self) -> str:
        return f"{self.name}:{self.parameter}" if self.parameter else self.name


LATENT_DISTRIBUTIONS: dict[str, DistributionKind] = {}
"""Every latent distribution by canonical name, in listing order (``register_distribution``)."""


def register_distribution(kind: DistributionKind) -> DistributionKind:
    """Add a kind to ``LATENT_DISTRIBUTIONS``; a name or alias may name one kind only."""
    taken = {name for other in LATENT_DISTRIBUTIONS.values() for name in (other.name, *other.aliases)}
    clash = taken & {kind.name, *kind.aliases}
    if clash:
        raise ValueError(f"latent distribution name(s) already registered: {', '.join(sorted(clash))}")
    LATENT_DISTRIBUTIONS[kind.name] = kind
    return kind


# The built-in kinds' summaries are in ``defaults.LATENT_DISTRIBUTION_HELP``, which help texts
# read without importing torch (a test checks this registry and that table agree).
register_distribution(DistributionKind(
    "normal", StandardNormal, LATENT_DISTRIBUTION_HELP["normal"], aliases=("gaussian", "standard-normal")))
register_distribution(DistributionKind(
    "uniform", lambda: Uniform(-1.0, 1.0, "uniform"), LATENT_DISTRIBUTION_HELP["uniform"],
    aliases=("uniform-1-1", "uniform11")))
register_distribution(DistributionKind(
    "uniform01", lambda: Uniform(0.0, 1.0, "uniform01"), LATENT_DISTRIBUTION_HELP["uniform01"]))
register_distribution(DistributionKind(
    "truncated-normal", TruncatedNormal, LATENT_DISTRIBUTION_HELP["truncated-normal:PSI"],
    parameter="PSI", example=0.7, parameter_of=lambda distribution: distribution.psi))


def distribution_names() -> tuple[str, ...]:
    """Usage of every registered kind: ``normal``, ..., ``truncated-normal:PSI``."""
    return tuple(kind.usage for kind in LATENT_DISTRIBUTIONS.values())


def _parameter(kind: DistributionKind, text: str, name: object) -> float:
    try:
        value = float(text) if text else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise InputError(f"{kind.name} needs a value for {kind.parameter}, e.g. {kind.name}:{kind.example:g} "
                         f"(got {name!r})")
    return value


def parse_distribution(name: str | LatentDistribution) -> LatentDistribution:
    """Turn a name such as ``normal`` or ``truncated-normal:0.7`` into a distribution
    (a registered kind's name or alias, then ``:VALUE`` where the kind takes a parameter)."""
    if isinstance(name, LatentDistribution):
        return name
    key, colon, argument = str(name).strip().lower().partition(":")
    for kind in LATENT_DISTRIBUTIONS.values():
        if key not in (kind.name, *kind.aliases) or (colon and kind.parameter is None):
            continue
        return kind.build(_parameter(kind, argument, name)) if kind.parameter else kind.build()
    raise InputError(f"unknown latent distribution {name!r}; choose one of {', '.join(distribution_names())}")


def distribution_label(distribution: LatentDistribution) -> str:
    """The name that ``parse_distribution`` reads back."""
    kind = LATENT_DISTRIBUTIONS.get(distribution.name)
    if kind is not None and kind.parameter_of is not None:
        return f"{kind.name}:{kind.parameter_of(distribution):g}"
    return distribution.name


@dataclass(frozen=True)
class LatentSpec:
    """The decoder's latent input: per-sample shape and distribution."""

    shape: tuple[int, ...]
    distribution: LatentDistribution = field(default_factory=StandardNormal)

    def __post_init__(self) -> None:
        if len(self.shape) == 0 or any(int(size) <= 0 for size in self.shape):
            raise InputError(f"latent shape must be positive sizes, got {tuple(self.shape)}")
        if math.prod(int(size) for size in self.shape) > MAX_LATENT_DIM:
            raise InputError(f"latent shape {tuple(self.shape)} has more than {MAX_LATENT_DIM} coordinates; "
                             "the estimator forms a d x d matrix per sample: check the latent size")

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    def describe(self) -> str:
        shape = "x".join(str(size) for size in self.shape)
        return f"{shape} {distribution_label(self.distribution)}"


def make_latent_spec(
    latent: LatentSpec | int | Sequence[int],
    distribution: str | LatentDistribution = DEFAULT_LATENT_DISTRIBUTION,
) -> LatentSpec:
    """Accept a LatentSpec, a dimension (62) or a shape ((100, 1, 1))."""
    if isinstance(latent, LatentSpec):
        return latent
    return LatentSpec(shape_of(latent), parse_distribution(distribution))


def shape_of(value: object, what: str = "the latent shape") -> tuple[int, ...]:
    """A size (62) or a list of sizes ([100, 1, 1]) as a shape tuple: integers only (a bool, a
    fraction such as 3.7 or a string is refused, never rounded)."""
    sizes = [value] if isinstance(value, (int, np.integer)) else value
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) \
            or not all(isinstance(size, (int, np.integer)) and not isinstance(size, bool) for size in sizes):
        raise InputError(f"{what} must be a positive integer or a list of them, e.g. [100, 1, 1]; got {shown(value)}")
    check_count(len(sizes), MAX_LATENT_RANK, f"the number of axes of {what}")
    return tuple(int(size) for size in sizes)


def parse_latent_shape(text: str) -> tuple[int, ...]:
    """Parse ``100,1,1`` (or ``100x1x1``) into a shape tuple: positive decimal integers, one
    between each pair of separators (``3,,2``, ``2_0`` and ``3.0`` are refused, not guessed)."""
    parts = [part.strip() for part in str(text).replace("x", ",").split(",")]
    if not all(part.isascii() and part.isdigit() and len(part) <= 12 for part in parts) \
            or any(int(part) <= 0 for part in parts):
        raise InputError(f"--latent-shape takes positive integers separated by commas, e.g. 100,1,1 (got {text!r})")
    return tuple(int(part) for part in parts)


MAX_SEED = 2**64 - 1
"""Seeds are 0 .. 2**64 - 1 (what ``numpy.random.SeedSequence`` takes as entropy, one word)."""


def validate_seed(seed: object) -> int:
    """The seed as an int; a negative, fractional or oversized seed is an InputError (there is
    no meaning to give -1 that would not silently alias another seed)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) <= MAX_SEED:
        raise InputError(f"--seed takes an integer from 0 to 2**64-1, e.g. --seed 1; got {seed!r}")
    return int(seed)


def block_seed(seed: int, block_index: int) -> int:
    """A 64-bit generator seed for one latent block, derived from (seed, block index)."""
    state = np.random.SeedSequence(entropy=int(seed), spawn_key=(int(block_index),)).generate_state(1, np.uint64)
    return int(state[0]) & 0x7FFF_FFFF_FFFF_FFFF


class LatentStream:
    """Random access to the latent sequence of a (spec, seed) pair, in float64 on the CPU."""

    def __init__(self, spec: LatentSpec, seed: int, block_size: int = LATENT_BLOCK_SIZE):
        self.spec = spec
        self.seed = validate_seed(seed)
        self.block_size = int(block_size)
        self._cached_index: int | None = None
        self._cached_block: torch.Tensor | None = None

    def block(self, block_index: int) -> torch.Tensor:
        """All ``block_size`` latents of one block, shape (block_size, dim)."""
        if self._cached_index != block_index:
            generator = torch.Generator(device="cpu")
            generator.manual_seed(block_seed(self.seed, block_index))
            self._cached_block = self.spec.distribution.sample(generator, self.block_size, self.spec.dim)
            self._cached_index = block_index
        assert self._cached_block is not None
        return self._cached_block

    def range(self, start: int, stop: int) -> torch.Tensor:
        """Latents of samples start..stop-1 as a (stop - start, dim) float64 tensor."""
        pieces = []
        position = start
        while position < stop:
            block_index, offset = divmod(position, self.block_size)
            take = min(stop - position, self.block_size - offset)
            pieces.append(self.block(block_index)[offset : offset + take])
            position += take
        if not pieces:
            return torch.empty(0, self.spec.dim, dtype=torch.float64)
        return torch.cat(pieces, dim=0) if len(pieces) > 1 else pieces[0].clone()
