"""Batches of samples as (block, start, stop) spans of the latent stream; a batch may span blocks."""

from __future__ import annotations

from collections import deque
from typing import Iterable, Iterator, Sequence


class SpanBatcher:
    """Batches taken in order from (block, start, stop) spans of samples; a batch may span
    blocks, and each ``take`` may ask for another size (the run loop halves it after an
    out-of-memory error)."""

    def __init__(self, spans: Iterable[tuple[int, int, int]]):
        self._spans = deque((block, start, stop) for block, start, stop in spans if stop > start)

    @property
    def empty(self) -> bool:
        return not self._spans

    def take(self, size: int) -> list[tuple[int, int, int]]:
        batch: list[tuple[int, int, int]] = []
        room = int(size)
        while room > 0 and self._spans:
            block, start, stop = self._spans[0]
            count = min(room, stop - start)
            batch.append((block, start, start + count))
            room -= count
            if start + count == stop:
                self._spans.popleft()
            else:
                self._spans[0] = (block, start + count, stop)
        return batch


def batch_plan(num_samples: int, batch_size: int, block_size: int,
               blocks: Sequence[int] | None = None) -> Iterator[list[tuple[int, int, int]]]:
    """Batches of at most ``batch_size`` samples, as lists of (block, start, stop) in-block
    segments, walking ``blocks`` (default all) in order; a batch may span blocks."""
    num_blocks = -(-num_samples // block_size)
    order = range(num_blocks) if blocks is None else blocks
    batcher = SpanBatcher((block, 0, min(block_size, num_samples - block * block_size)) for block in order)
    while not batcher.empty:
        yield batcher.take(batch_size)
