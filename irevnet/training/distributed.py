"""One process or many (torchrun): the rank, collective sums and stops, and an evaluation shard."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch.utils.data import Sampler


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def all_true(self, flag: bool, device: torch.device) -> bool:
        """Whether `flag` holds on every process: a stop decided on one rank reaches them all
        (a rank that raised alone would leave the others waiting in the next all-reduce)."""
        if self.world == 1:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
        return bool(t.item())

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return t.tolist()


def init_distributed(device: torch.device) -> Dist:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend)
    return Dist(torch.distributed.get_rank(), torch.distributed.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))




class Shard(Sampler[int]):
    """Indices rank, rank + world, ...: every test image evaluated exactly once across processes."""

    def __init__(self, n: int, dist: Dist):
        self.indices = range(dist.rank, n, dist.world)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
