"""Data-parallel training under torchrun (torch.distributed + DistributedDataParallel).

Each of the K processes trains on its own batch_size / K of the batch_size streams. DDP averages
the gradients, and every process holds the same equal share of the batch, so the averaged gradient
is exactly the single-process gradient of the whole batch; clamping and RMSprop then act on the same
numbers in every process. Without torchrun (WORLD_SIZE unset or 1) nothing here is used.
"""
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist

from util.errors import UserError

CPU = torch.device("cpu")


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = CPU  # where the collectives' tensors go: the GPU for NCCL, the CPU for gloo
    group: dist.ProcessGroup | None = None  # the group the processes talk in; None = torchrun's default

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

    def means(self, values: torch.Tensor) -> list[float]:
        """The averages of a vector of scalars over all processes (each holds an equal share of the
        batch): one collective and one read back for them all."""
        if self.active:
            values = values.to(self.device, copy=True)
            dist.all_reduce(values, group=self.group)
            values /= self.world_size
        return values.tolist()

    def any_signal(self, signal_number: int) -> int:
        """A stop signal seen by any process, so that all of them stop at the same iteration."""
        if not self.active:
            return signal_number
        flag = torch.tensor([signal_number], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        return int(flag.item())

    def any_true(self, flag: bool) -> bool:
        """Whether any process's flag is true (a decision only the main process can make, such as
        -early_stop after its validation, taken by all of them)."""
        if not self.active:
            return flag
        value = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.group)
        return bool(value.item())

    def gather_rows(self, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Every process's carried state, joined along the batch: what one process would hold."""
        if not self.active:
            return state
        gathered = []
        for part in state:
            local = part.to(self.device).contiguous()
            pieces = [torch.empty_like(local) for _ in range(self.world_size)]
            dist.all_gather(pieces, local, group=self.group)
            gathered.append(torch.cat(pieces, dim=1).to(part.device))
        return tuple(gathered)


def start(use_cuda: bool) -> Ranks:
    """Join the process group torchrun set up: NCCL between GPUs, gloo between CPU processes."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Ranks()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return Ranks(dist.get_rank(), world_size, int(os.environ.get("LOCAL_RANK", "0")))


def on_device(ranks: Ranks, device: torch.device, say: Callable[[str], None] = print) -> Ranks:
    """The ranks once this process's device is chosen (util.device.select_device). With NCCL the
    collectives' tensors live on the GPU. NCCL takes one GPU per process and refuses two processes
    on one ("Duplicate GPU detected", at the first collective); that happens where a machine shows
    a process fewer GPUs than it runs processes (select_device then gives each the one it sees).
    The processes compare their GPUs over a gloo group first, and where any two share one they all
    talk over gloo instead (CUDA tensors through host memory: slower, but it runs), with a notice.
    NCCL sets up nothing before its first collective, so the unused default group costs nothing."""
    if not ranks.active or device.type != "cuda" or dist.get_backend() != "nccl":
        return ranks
    gloo = dist.new_group(backend="gloo")
    identities: list[str | None] = [None] * ranks.world_size
    dist.all_gather_object(identities, gpu_identity(device), group=gloo)
    gpus = len(set(identities))
    if gpus == ranks.world_size:
        return replace(ranks, device=device)
    say(f"notice: the {ranks.world_size} processes run on {gpus} GPU{'s' if gpus > 1 else ''}; NCCL needs a GPU "
        f"of its own for each process, so they talk over gloo instead (through host memory, slower)")
    return replace(ranks, group=gloo)


def gpu_identity(device: torch.device) -> str:
    """What tells one GPU from another across processes and machines: its UUID (where torch gives
    it), else the machine's name and the index this process sees (which can take two GPUs for one,
    and then costs gloo's speed, never a failure)."""
    uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
    return str(uuid) if uuid is not None else f"{socket.gethostname()}:{device.index}"


def finish(ranks: Ranks) -> None:
    """Leave the group together: a process tearing it down while another still uses it can abort."""
    if ranks.active:
        if ranks.device.type == "cuda":  # NCCL: its barrier on this process's own GPU
            dist.barrier(group=ranks.group, device_ids=[ranks.device.index])
        else:
            dist.barrier(group=ranks.group)
        dist.destroy_process_group()
