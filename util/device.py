"""Where tensors live: -gpuid N picks CUDA N, else Apple's MPS, else the CPU with a notice."""
import os
from typing import Callable

import torch

from util.errors import UserError
from util.options import Option

GPU_OPTIONS = [
    Option("gpuid", 0, "which gpu to use. -1 = use CPU"),
    Option("opencl", 0, "use OpenCL (instead of CUDA): not available, falls back with a notice"),
]
THREADS_OPTION = Option("threads", 0, "CPU threads; 0 = all cores")


def select_device(gpuid: int, opencl: int = 0, log: Callable[[str], None] = print) -> torch.device:
    if opencl:
        log("notice: there is no OpenCL backend in PyTorch; -opencl 1 is treated as -gpuid")
    if gpuid < 0:
        return torch.device("cpu")
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        if gpuid >= count:
            raise UserError(f"-gpuid {gpuid} asks for CUDA device {gpuid}, but there are {count} (0..{count - 1})")
        torch.cuda.set_device(gpuid)
        return torch.device("cuda", gpuid)
    if torch.backends.mps.is_available():
        return torch.device("mps")
    log("notice: no GPU found (neither CUDA nor MPS); running on the CPU. Use -gpuid -1 to ask for the CPU.")
    return torch.device("cpu")


def configure_cpu(threads: int) -> None:
    """CPU threads for PyTorch's kernels (0 = every core this process may use), and denormals
    flushed to zero from the start: oneDNN's kernels switch that mode on at their first call, so
    without this a run's numbers would depend on whether such a call came earlier in the process,
    and a resumed run would drift from an uninterrupted one in the last bits."""
    torch.set_num_threads(threads if threads > 0 else len(os.sched_getaffinity(0)))
    torch.set_flush_denormal(True)


def manual_seed(seed: int) -> None:
    """torch.manual_seed, with a seed outside its 64-bit range as a user error."""
    if not -(2 ** 63) <= seed < 2 ** 64:
        raise UserError(f"-seed must fit in 64 bits, not {seed}")
    torch.manual_seed(seed)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timer reads the real time of a batch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
