"""Where tensors live (-gpuid N picks CUDA N, else Apple's MPS, else the CPU with a notice), and how
the CPU runs them."""
import contextlib
import ctypes
import os
import platform
import warnings
from collections.abc import Callable

import torch

from model.char_rnn import cpu_lstm_takes_bfloat16
from util.errors import UserError
from util.options import Option

GPU_OPTIONS = [
    Option("gpuid", 0, "which gpu to use. -1 = use CPU"),
    Option("opencl", 0, "use OpenCL (instead of CUDA): not available, falls back with a notice"),
]
CUDA_GRAPHS_OPTION = Option("cuda_graphs", 1, "1 = on a CUDA device, replay each training step (not under "
                                              "torchrun) and each window of generated characters as one captured "
                                              "CUDA graph; 0 = launch their kernels one by one")
THREADS_OPTION = Option("threads", 0, "CPU threads; 0 (or negative) = all cores")
PRECISION_OPTION = Option("precision", "fp32", "fp32, or bf16: matrix products in bfloat16 (autocast); weights, "
                                               "gradients and optimizer stay fp32")
PRECISIONS = ("fp32", "bf16")
# Ampere's: the first GPUs with bfloat16 arithmetic. torch.cuda.is_bf16_supported() also says True on
# older ones (emulation counts), where older torch's bfloat16 autocast raises instead of running.
BF16_CAPABILITY = (8, 0)


def graphs_requested(cuda_graphs: int) -> bool:
    """-cuda_graphs as given (CUDA_GRAPHS_OPTION): a UserError unless it is 0 or 1."""
    if cuda_graphs not in (0, 1):
        raise UserError(f"-cuda_graphs must be 0 or 1, not {cuda_graphs}")
    return bool(cuda_graphs)


def select_device(gpuid: int, opencl: int = 0, log: Callable[[str], None] = print,
                  local_rank: int | None = None) -> torch.device:
    """-gpuid's device. Under torchrun (local_rank given) -gpuid only chooses GPU (>= 0) or CPU (-1):
    process k of a machine takes CUDA device k, its LOCAL_RANK (cuda_index). A CUDA device is set
    up to compute float32 in IEEE float32 (use_ieee_float32)."""
    if opencl:
        log("notice: there is no OpenCL backend in PyTorch; -opencl 1 is treated as -gpuid")
    if gpuid < 0:
        return torch.device("cpu")
    if torch.cuda.is_available():
        index = cuda_index(gpuid, local_rank, torch.cuda.device_count())
        torch.cuda.set_device(index)
        use_ieee_float32()
        return torch.device("cuda", index)
    if torch.backends.mps.is_available():
        return torch.device("mps")
    log("notice: no GPU found (neither CUDA nor MPS); running on the CPU. Use -gpuid -1 to ask for the CPU.")
    return torch.device("cpu")


def cuda_index(gpuid: int, local_rank: int | None, count: int) -> int:
    """The CUDA device of -gpuid, or under torchrun of LOCAL_RANK, among the `count` this process
    sees. A process that sees one device only takes it whatever its LOCAL_RANK: the launcher gave
    each process its own (CUDA_VISIBLE_DEVICES per process), or all of them share it, which
    util/distributed.on_device finds out. Naming the user's -gpuid in an error about LOCAL_RANK
    would point at the wrong option."""
    if local_rank is None:
        if gpuid >= count:
            raise UserError(f"-gpuid {gpuid} asks for CUDA device {gpuid}, but there are {count} (0..{count - 1})")
        return gpuid
    if local_rank < count:
        return local_rank
    if count == 1:
        return 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    raise UserError(f"LOCAL_RANK {local_rank} has no CUDA device: under torchrun process k of a machine uses CUDA "
                    f"device k, and this process sees {count} (0..{count - 1}"
                    f"{f', CUDA_VISIBLE_DEVICES={visible}' if visible is not None else ''}); start at most {count} "
                    f"processes per machine (torchrun --nproc_per_node={count})")


def use_ieee_float32() -> None:
    """Float32 on CUDA computed in IEEE float32, as on the CPU. cuDNN runs float32 RNNs (the fused
    LSTM and tanh-RNN kernels) in TF32 on Ampere and newer unless told otherwise (PyTorch's
    torch.backends.cudnn.allow_tf32 is True by default): about 1e-3 from the reference instead of
    the 1e-5 every path is held to (README section 7). cuBLAS's products default to IEEE already;
    both are set so that the choice is this project's whatever the defaults. The legacy switches
    exist in every torch 2.x and keep the per-operation settings of newer torch consistent with
    them (setting those alone makes a later read of the legacy ones raise); newer torch warns once
    that they are deprecated, a warning about this call alone, so it is silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def bf16_capable(device: torch.device) -> bool:
    """Whether -precision bf16 runs in bfloat16 on `device`: on CUDA from compute capability 8.0 on
    (BF16_CAPABILITY), on the CPU and MPS always (a CPU without bfloat16 instructions is slow, not
    wrong)."""
    return device.type != "cuda" or torch.cuda.get_device_capability(device) >= BF16_CAPABILITY


def check_precision(precision: str, device: torch.device, log: Callable[[str], None] = print) -> None:
    """A clear error for an unknown -precision; a notice where bf16 is slow (a CPU without bfloat16
    instructions), runs in float32 instead (a GPU older than BF16_CAPABILITY: autocast below) or
    in part (a CPU without oneDNN's bfloat16 LSTM: model.char_rnn.kernel_precision)."""
    if precision not in PRECISIONS:
        raise UserError(f"-precision must be fp32 or bf16, not '{precision}'")
    if precision != "bf16":
        return
    if device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        log("notice: this CPU has no bfloat16 instructions (AVX-512 BF16 or AMX); -precision bf16 will be slow")
    if device.type == "cpu" and not cpu_lstm_takes_bfloat16():
        log("notice: this CPU's oneDNN has no bfloat16 LSTM (it needs AVX-512): an LSTM's fused kernel runs "
            "in float32, the rest of the model in bfloat16")
    if not bf16_capable(device):
        major, minor = torch.cuda.get_device_capability(device)
        log(f"notice: this GPU (compute capability {major}.{minor}) has no bfloat16 arithmetic (it needs "
            f"{BF16_CAPABILITY[0]}.{BF16_CAPABILITY[1]}); -precision bf16 runs in float32 instead")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context for a model's forward pass: bfloat16 autocast for -precision bf16, else none;
    none on a GPU without bfloat16 arithmetic either (check_precision's notice says so)."""
    if precision == "bf16" and bf16_capable(device):
        # no cast cache on CUDA: a step captured as a CUDA graph must cast inside the graph
        # (torch.cuda.make_graphed_callables asks the same of autocast)
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=device.type != "cuda")
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


def memory_bytes(device: torch.device) -> int | None:
    """The memory of `device`: a GPU's own, or the machine's for the CPU (and for MPS, which shares
    it); None where the system does not say."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows), or a name this system lacks
        return None
