"""Batches of samples as (block, start, stop) spans of the latent stream; a batch may span blocks."""

from __future__ import annotations

from collections import deque
from typing import Iterable


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
