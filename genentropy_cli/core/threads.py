"""CPU work split over the intra-op threads: a batch's consecutive shares, each on its own thread
(the numpy and torch kernels called release the GIL)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch

__all__ = ["run_parts", "split_parts"]

_POOL: tuple[int, int, ThreadPoolExecutor] | None = None
"""(process id, workers, pool): a forked child has none of its parent's threads, so it makes its own."""


def split_parts(batch: int, work: int, min_work: int) -> int:
    """Parts to split a CPU batch into: one per intra-op thread when there is enough work."""
    parts = min(torch.get_num_threads(), batch)
    return parts if parts >= 2 and work >= min_work else 1


def run_parts(task: Callable[[int, int, int], None], batch: int, parts: int, torch_kernels: bool = False) -> None:
    """task(first, last, part) on ``parts`` consecutive shares of the batch, on the pool's threads
    when there are several (the numpy and torch kernels called release the GIL).

    ``torch_kernels``: the task calls torch's (OpenMP) kernels, so it runs on threads made for
    this call and ended with it. An OpenMP team lives as long as the thread that opened it, and
    while the pool's teams live libgomp throttles the waiting of every team on the machine (more
    threads than cores): the main thread's next eigvalsh at d = 512 ran 5x slower, and stayed
    slower until those threads ended (numpy's OpenBLAS keeps its own threads, so the pool serves it)."""
    global _POOL
    bounds = [batch * part // parts for part in range(parts + 1)]
    if parts == 1:
        task(0, batch, 0)
        return
    shares = list(enumerate(zip(bounds, bounds[1:])))
    if torch_kernels:
        with ThreadPoolExecutor(parts, thread_name_prefix="genentropy-torch") as pool:
            for future in [pool.submit(task, first, last, part) for part, (first, last) in shares]:
                future.result()
        return
    threads = torch.get_num_threads()
    if _POOL is None or _POOL[:2] != (os.getpid(), threads):
        _POOL = (os.getpid(), threads, ThreadPoolExecutor(threads, thread_name_prefix="genentropy-gram"))
    for future in [_POOL[2].submit(task, first, last, part) for part, (first, last) in shares]:
        future.result()
