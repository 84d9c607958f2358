"""Data-parallel training under torchrun (torch.distributed + DistributedDataParallel).

Each of the K processes trains on its own batch_size / K of the batch_size streams. DDP averages
the gradients, and every process holds the same equal share of the batch, so the averaged gradient
is exactly the single-process gradient of the whole batch; clamping and RMSprop then act on the same
numbers in every process. Without torchrun (WORLD_SIZE unset or 1) nothing here is used.
"""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from util.errors import UserError


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def rows(self, batch_size: int) -> slice:
        """This process's streams of every batch."""
        if batch_size % self.world_size:
            raise UserError(f"-batch_size {batch_size} does not divide among {self.world_size} processes")
        share = batch_size // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)

    def mean(self, value: torch.Tensor) -> float:
        """The average of a scalar over all processes (each holds an equal share of the batch)."""
        if self.active:
            value = value.clone()
            dist.all_reduce(value)
            value /= self.world_size
        return value.item()

    def any_signal(self, signal_number: int) -> int:
        """A stop signal seen by any process, so that all of them stop at the same iteration."""
        if not self.active:
            return signal_number
        flag = torch.tensor([signal_number], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def any_true(self, flag: bool) -> bool:
        """Whether any process's flag is true (a decision only the main process can make, such as
        -early_stop after its validation, taken by all of them)."""
        if not self.active:
            return flag
        value = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def gather_rows(self, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Every process's carried state, joined along the batch: what one process would hold."""
        if not self.active:
            return state
        gathered = []
        for part in state:
            pieces = [torch.empty_like(part) for _ in range(self.world_size)]
            dist.all_gather(pieces, part.contiguous())
            gathered.append(torch.cat(pieces, dim=1))
        return tuple(gathered)

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")


def start(use_cuda: bool) -> Ranks:
    """Join the process group torchrun set up: NCCL between GPUs, gloo between CPU processes."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Ranks()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return Ranks(dist.get_rank(), world_size, int(os.environ.get("LOCAL_RANK", "0")))


def finish(ranks: Ranks) -> None:
    """Leave the group together: a process tearing it down while another still uses it can abort."""
    if ranks.active:
        dist.barrier()
        dist.destroy_process_group()
