"""Where tensors live (-gpuid N picks CUDA N, else Apple's MPS, else the CPU with a notice), and how
the CPU runs them."""
import contextlib
import ctypes
import os
import platform
from collections.abc import Callable

import torch

from util.errors import UserError
from util.options import Option

GPU_OPTIONS = [
    Option("gpuid", 0, "which gpu to use. -1 = use CPU"),
    Option("opencl", 0, "use OpenCL (instead of CUDA): not available, falls back with a notice"),
]
THREADS_OPTION = Option("threads", 0, "CPU threads; 0 (or negative) = all cores")
PRECISION_OPTION = Option("precision", "fp32", "fp32, or bf16: matrix products in bfloat16 (autocast); weights, "
                                               "gradients and optimizer stay fp32")
PRECISIONS = ("fp32", "bf16")


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


def check_precision(precision: str, device: torch.device, log: Callable[[str], None] = print) -> None:
    """A clear error for an unknown -precision, a notice where bf16 has no hardware support."""
    if precision not in PRECISIONS:
        raise UserError(f"-precision must be fp32 or bf16, not '{precision}'")
    if precision != "bf16":
        return
    if device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        log("notice: this CPU has no bfloat16 instructions (AVX-512 BF16 or AMX); -precision bf16 will be slow")
    elif device.type == "cuda" and not torch.cuda.is_bf16_supported():
        log("notice: this GPU has no native bfloat16 support; -precision bf16 will be slow")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context for a model's forward pass: bfloat16 autocast for -precision bf16, else none."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


MAX_THREADS = 1024  # beyond it torch.set_num_threads fails (above 2**31) or OpenMP runs out of threads


def configure_cpu(threads: int) -> None:
    """CPU threads for PyTorch's kernels (0 or negative = every core this process may use), freed memory kept
    for reuse (keep_freed_memory), and denormals flushed to zero from the start: oneDNN's kernels
    switch that mode on at their first call, so without this a run's numbers would depend on
    whether such a call came earlier in the process, and a resumed run would drift from an
    uninterrupted one in the last bits."""
    if threads > MAX_THREADS:
        raise UserError(f"-threads must be at most {MAX_THREADS}, not {threads}")
    torch.set_num_threads(threads if threads > 0 else len(os.sched_getaffinity(0)))
    torch.set_flush_denormal(True)
    keep_freed_memory()


KEPT_MEMORY_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for the next allocation instead of handing it back to
    the kernel; returns False where the C library is not glibc (macOS, musl), which is left as is.

    By default glibc serves large blocks (from 128 KiB, adaptively up to 32 MiB) with fresh mmap()
    pages and returns them on free(), and trims the heap's free top. A training step allocates and
    frees the same large temporaries every time (the fused kernels' workspaces, the gates, the
    logits), so every step would page-fault its memory in again. With both thresholds at 1 GiB the
    memory is reused instead; the price is a higher peak, steady over the run. Measured with
    bench/train_speed.py (its nn+kept contender and peak-memory runs); figures in bench/README.md."""
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(libc.mallopt(m_mmap_threshold, KEPT_MEMORY_BYTES)) and bool(
        libc.mallopt(m_trim_threshold, KEPT_MEMORY_BYTES))


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
