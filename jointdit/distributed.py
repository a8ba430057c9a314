"""Data-parallel training under `torchrun`: one process per device, one process group.

torchrun starts the processes and tells each its place through the environment (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT); this module turns that into a process group (nccl
on GPUs, gloo on CPU) and a device. A plain `python` run has none of those variables and is a
world of one, with no process group: the single-process path stays exactly as it was.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Place:
    """Where this process stands: its rank among `world_size` and the device it trains on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs and writes."""
        return self.rank == 0


def under_torchrun() -> bool:
    return all(v in os.environ for v in TORCHRUN_VARS)


def default_device(local_rank: int = 0) -> torch.device:
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def current() -> tuple[int, int]:
    """(rank, world_size) of the initialised process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def process_group() -> Iterator[Place]:
    """This process's Place; under torchrun, with the process group initialised until exit.

    Outside torchrun nothing is initialised (a world of one on the default device). A group
    someone else initialised is used as it is and left for them to destroy.
    """
    if not under_torchrun():
        yield Place(0, 1, 0, default_device())
        return
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    device = default_device(local_rank)
    owned = not dist.is_initialized()
    if owned:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        yield Place(rank, world, local_rank, device)
    finally:
        if owned:
            dist.destroy_process_group()
