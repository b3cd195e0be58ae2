"""Batches of samples as (block, start, stop) spans of the latent stream; a batch may span blocks."""

from __future__ import annotations

from typing import Iterable


class SpanBatcher:
    """Batches taken in order from (block, start, stop) spans of samples; a batch may span
    blocks, and each ``take`` may ask for another size (the run loop halves it after an
    out-of-memory error). The spans are read lazily, as batches need them: a generator of a
    billion spans costs nothing until it is used."""

    def __init__(self, spans: Iterable[tuple[int, int, int]]):
        self._spans = iter(spans)
        self._current: tuple[int, int, int] | None = None

    def _head(self) -> tuple[int, int, int] | None:
        while self._current is None:
            span = next(self._spans, None)
            if span is None:
                return None
            if span[2] > span[1]:
                self._current = span
        return self._current

    @property
    def empty(self) -> bool:
        return self._head() is None

    def take(self, size: int) -> list[tuple[int, int, int]]:
        batch: list[tuple[int, int, int]] = []
        room = int(size)
        while room > 0 and (head := self._head()) is not None:
            block, start, stop = head
            count = min(room, stop - start)
            batch.append((block, start, start + count))
            room -= count
            self._current = None if start + count == stop else (block, start + count, stop)
        return batch
