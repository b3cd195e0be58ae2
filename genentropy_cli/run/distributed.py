"""Many processes (torchrun): which rank does which latent blocks, and how ranks exchange rows.

Under ``torchrun`` (or any launcher that sets RANK / WORLD_SIZE / MASTER_ADDR) the estimate
joins a torch.distributed process group (gloo on the CPU, NCCL on CUDA). Latent blocks still
to do are dealt round-robin: rank r takes the r-th, (r+W)-th, ... of them. After every batch
all ranks exchange what they computed (``all_gather_object``), so every rank holds the same
per-block rows and merges them in global block order: the result does not depend on the
number of processes. Rank 0 alone prints, writes the checkpoint and the per-sample file.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, TypeVar

import torch

from genentropy_cli.errors import EstimationError, GenentropyError, InputError

Item = TypeVar("Item")


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def launch_rank() -> int:
    """This process's rank as the launcher set it (0 outside torchrun): who prints."""
    return int(os.environ.get("RANK", "0"))


@dataclass
class ProcessGroup:
    """This process's place among the ranks; a single process is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def exchange(self, item: Item) -> list[Item]:
        """Every rank's ``item``, in rank order, on every rank."""
        if self.world_size == 1:
            return [item]
        gathered: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, item)
        return gathered

    def broadcast(self, item: Item) -> Item:
        """Rank 0's ``item`` on every rank."""
        if self.world_size == 1:
            return item
        box = [item if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def run_on_main(self, action: Callable[[], Item]) -> Item:
        """``action()`` on rank 0; its value, or the error it raised, on every rank (so that no
        rank waits forever for one that failed)."""
        outcome: Any = None
        if self.is_main:
            try:
                outcome = ("value", action())
            except GenentropyError as error:
                if self.world_size == 1:
                    raise
                outcome = ("error", shareable_error(error))
        outcome = self.broadcast(outcome)
        if outcome[0] == "error":
            raise_shared_error(outcome[1])
        return outcome[1]

    def close(self) -> None:
        if self.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        self.owns_group = False


def shareable_error(error: GenentropyError) -> tuple[int, str]:
    """An error as (exit status, message), to send to the other ranks."""
    return error.exit_code, str(error)


def raise_shared_error(shared: tuple[int, str]) -> None:
    code, text = shared
    raise (InputError if code == InputError.exit_code else EstimationError)(text)


def rank_device(requested: str, local_rank: int) -> str:
    """Under torchrun, ``auto`` and ``cuda`` mean this rank's own GPU (cuda:LOCAL_RANK)."""
    text = str(requested).strip().lower()
    if text == "cuda" or (text == "auto" and torch.cuda.is_available()):
        return f"cuda:{local_rank}"
    return text


def join_process_group(device: torch.device, enabled: bool | None = None) -> ProcessGroup:
    """The process group to estimate in: torch.distributed's if one is initialised, a new one
    when launched by torchrun (``enabled`` None or True), else a single process."""
    if enabled is False or not torch.distributed.is_available():
        return ProcessGroup()
    if torch.distributed.is_initialized():
        return ProcessGroup(torch.distributed.get_rank(), torch.distributed.get_world_size(),
                            int(os.environ.get("LOCAL_RANK", "0")), torch.distributed.get_backend())
    if not launched_by_torchrun():
        if enabled:
            raise InputError("distributed=True needs a launcher such as torchrun (RANK and WORLD_SIZE are not set)")
        return ProcessGroup()
    backend = "nccl" if device.type == "cuda" else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(backend=backend)
    return ProcessGroup(torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank, backend,
                        owns_group=True)


def deal_round_robin(items: Iterable[Item], rank: int, world_size: int) -> Iterator[Item]:
    """Rank r's share: items r, r + W, r + 2W, ..., taken lazily (the items may be a generator
    of a billion latent blocks)."""
    return itertools.islice(items, rank, None, world_size)
