"""What every stacked-tangent rule asks of an op's operands (``stacked_rules``): which arguments
are tensors, which constants are the same for every row, and what the dispatch mode offers.

A constant operand is harmless to the rules when it is the same for every row of the stacked
batch: it then acts on the primal rows [P] exactly as on one sample, and its derivative is zero
on the tangent rows [T_1; ...; T_k]. Such a constant is either broadcast (no batch dimension,
one row, or an expanded row), or a tensor with one row per stacked row whose rows are all
equal: a class label's one-hot code or embedding, made for the whole batch inside a
conditional decoder (``labels.ClassBoundDecoder``).

An integer or boolean ("discrete") stacked tensor, computed from the latent (a comparison's mask,
a spline's bin index), has no derivative: it carries the primal's values on every row, the
tangent rows replicating the primal rows, so that every row of a slot reads the mask or index of
its sample. An op on such tensors is exact where its rule accepts them (``takes``).

A stacked tensor's batch dimension is dim 0, or dim ``lead`` of a tensor that gained ``lead``
leading dimensions (``torch.stack(..., dim=0)`` or ``expand`` of stacked rows, as a spline's
bin lookup does); only rules that say so (``takes(moved=True)``) accept those.
"""

from __future__ import annotations

from typing import Any, Callable, ContextManager, Protocol, Sequence

import torch

__all__ = [
    "StackedMode", "UnsupportedOperation", "broadcast_shape", "dim_index", "has_equal_blocks", "has_equal_rows",
    "is_discrete", "only_first_stacked",
    "operand_leaves", "row_free", "shared_row", "takes", "with_shared_rows",
]


class UnsupportedOperation(RuntimeError):
    """The decoder uses an op the stacked method has no exact rule for (use torch.func)."""


def operand_leaves(*values: Any) -> list:
    """The tensors and scalars in op arguments: positional values, lists of them (cat, stack),
    dict values (kwargs), one level deep as aten schemas have them (cheaper than pytree)."""
    found = []
    for value in values:
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, (list, tuple)):
            for item in value:
                found.extend(item if isinstance(item, (list, tuple)) else (item,))
        else:
            found.append(value)
    return found


def is_discrete(value: Any) -> bool:
    """An integer or boolean tensor (no derivative: a stacked one replicates the primal rows)."""
    return isinstance(value, torch.Tensor) and not (value.is_floating_point() or value.is_complex())


def takes(rule: Callable, *, discrete: bool = False, moved: bool = False) -> Callable:
    """Mark ``rule`` as exact for discrete stacked operands and/or for stacked tensors whose batch
    dimension moved (``lead`` > 0); the dispatch mode refuses those to every other rule."""
    rule.takes_discrete, rule.takes_moved = discrete, moved
    return rule


def dim_index(dim: int, ndim: int) -> int:
    """A possibly negative dimension as its index among ``ndim``."""
    return dim + ndim if dim < 0 else dim


def row_free(value: Any, ndim: int) -> bool:
    """A constant that is the same for every row of an ``ndim``-dimensional stacked tensor."""
    if not isinstance(value, torch.Tensor):
        return True
    return value.dim() < ndim or (value.dim() == ndim and (value.shape[0] == 1 or value.stride(0) == 0))


def has_equal_rows(value: torch.Tensor) -> bool:
    """Every row of ``value`` (along dim 0) equals the first, by value."""
    return value.stride(0) == 0 or torch.equal(value, value[:1].expand_as(value))


def has_equal_blocks(value: torch.Tensor, blocks: int) -> bool:
    """A constant (1, N c, ...) or (N c, ...) whose N blocks of c are all equal (a weight or input
    shared by every sample, folded like the batch; a constant broadcast against stacked rows
    that carry each row in c consecutive rows, as matmul's broadcast makes of StyleGAN3's grid)."""
    flat = value.reshape(blocks, -1)
    return bool(flat.stride(0) == 0 or torch.equal(flat, flat[:1].expand_as(flat)))


def shared_row(value: Any, rows: int) -> Any:
    """A constant with ``rows`` rows that are all equal, as its first row (1, ...): it broadcasts
    to the same values, and ``row_free`` then holds (a class label's embedding beside the latent's
    rows). Anything else unchanged."""
    if (isinstance(value, torch.Tensor) and value.dim() >= 1 and rows > 1 and value.shape[0] == rows
            and has_equal_rows(value)):
        return value[:1]
    return value


def only_first_stacked(mode: "StackedMode", args: tuple, kwargs: dict, name: str) -> torch.Tensor:
    """The op's first argument, which must be its only stacked operand."""
    source = args[0]
    if not mode.is_stacked(source) or any(mode.is_stacked(leaf) for leaf in operand_leaves(args[1:], kwargs)):
        raise UnsupportedOperation(f"{name} with a stacked operand other than its input")
    return source


def with_shared_rows(mode: "StackedMode", args: tuple) -> tuple:
    """``args`` with each constant whose rows are all equal as its first row (``shared_row``),
    e.g. a label's embedding that scales or shifts the stacked rows."""
    rows = max((arg.shape[0] for arg in args if mode.is_stacked(arg) and arg.dim()), default=0)
    return tuple(arg if mode.is_stacked(arg) else shared_row(arg, rows) for arg in args)


class StackedMode(Protocol):
    """What a rule may ask of the dispatch mode (``stacked.StackedRows``): the layout
    N = (k + 1) B of ``primal_rows`` B and ``slots`` k, and which tensors are stacked."""

    primal_rows: int
    slots: int
    exact_primal: bool  # recompute primal rows that may round otherwise by the op as called

    def mark(self, tensor: torch.Tensor, lead: int = 0) -> torch.Tensor:
        """Tag an op's output as stacked (it must carry a multiple of N rows along dim ``lead``)."""
        ...

    def lead(self, tensor: torch.Tensor) -> int:
        """The stacked tensor's batch dimension (0 unless leading dimensions were put before it)."""
        ...

    def replicate(self, tensor: torch.Tensor) -> torch.Tensor:
        """Copy the primal rows onto every tangent slot, in place (a discrete result)."""
        ...

    def zero_tangents(self, tensor: torch.Tensor) -> torch.Tensor:
        """Zero the tangent rows, in place (a value that does not depend on the latent)."""
        ...

    def is_stacked(self, value: Any) -> bool: ...

    def multiplicity(self, tensor: torch.Tensor) -> int:
        """m: the tensor carries each stacked row in m consecutive rows."""
        ...

    def primal(self, tensor: torch.Tensor) -> torch.Tensor: ...

    def tangents(self, tensor: torch.Tensor) -> torch.Tensor:
        """Tangent rows as (k, B * m, ...)."""
        ...

    def assemble(self, primal: torch.Tensor, tangents: torch.Tensor) -> torch.Tensor: ...

    def transforms_enabled(self) -> ContextManager:
        """The caller's dispatch keys back, for rules that take derivatives with torch.func."""
        ...


def broadcast_shape(*shapes: Sequence[int]) -> tuple[int, ...]:
    """The shape the shapes broadcast to (numpy's rule), as ``torch.broadcast_shapes`` gives it,
    which imports torch's symbolic shapes and sympy on its first call (seconds of start-up)."""
    result: list[int] = []
    for shape in shapes:
        shape = tuple(shape)
        if len(shape) > len(result):
            result = [1] * (len(shape) - len(result)) + result
        for offset, size in enumerate(shape, start=len(result) - len(shape)):
            if size != result[offset] and result[offset] != 1 and size != 1:
                raise RuntimeError(f"shapes {shapes} cannot be broadcast together")
            if result[offset] == 1:
                result[offset] = size
    return tuple(result)
