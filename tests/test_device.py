"""util/device.py: the CPU set-up every script makes (freed memory kept for reuse, glibc),
-precision's checks, and with a mocked torch.cuda the choice of CUDA device (-gpuid, LOCAL_RANK),
IEEE float32 and bf16 by compute capability."""
import contextlib
import platform
import subprocess
import sys
import warnings
from types import SimpleNamespace

import pytest
import torch

from conftest import REPO
from util import device
from util.device import autocast, check_precision, select_device
from util.errors import UserError

# Fills a 48 MiB tensor, freed at once, 30 times and prints the page faults of the last 10 fills.
# glibc's default serves a block that large with fresh pages every time (mmap), so every page
# faults in again. Kept memory is reused after a few rounds (until then glibc's aligned
# allocations miss the holes left by the previous ones).
REFILL_FAULTS = """
import resource, sys
import torch
sys.path.insert(0, sys.argv[1])
from util.device import configure_cpu
if sys.argv[2] == "configured":
    configure_cpu(1)

def fill_faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(12 << 20)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

print(sum([fill_faults() for _ in range(30)][-10:]))
"""
PAGES = 10 * (48 << 20) // 4096


def refill_faults(mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", REFILL_FAULTS, str(REPO), mode], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")
def test_configure_cpu_keeps_freed_memory_for_the_next_allocation():
    assert refill_faults("default") > PAGES // 2  # glibc's default: fresh pages every time
    assert refill_faults("configured") < PAGES // 100


def test_check_precision_names_the_bad_value_and_warns_without_bfloat16_hardware(monkeypatch):
    cpu = torch.device("cpu")
    with pytest.raises(UserError, match="-precision must be fp32 or bf16, not 'fp16'"):
        check_precision("fp16", cpu)
    said = []
    check_precision("fp32", cpu, said.append)
    assert said == []
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    monkeypatch.setattr(device, "cpu_lstm_takes_bfloat16", lambda: True)
    check_precision("bf16", cpu, said.append)
    assert len(said) == 1 and "no bfloat16 instructions" in said[0]
    monkeypatch.setattr(device, "cpu_lstm_takes_bfloat16", lambda: False)  # oneDNN's LSTM needs AVX-512
    said.clear()
    check_precision("bf16", cpu, said.append)
    assert len(said) == 2 and "an LSTM's fused kernel runs in float32, the rest of the model in bfloat16" in said[1]


# ---- CUDA, by mocks: which device, TF32, bf16 (tests/test_cuda.py checks them on a GPU) ----------

@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda as a machine with `count` GPUs would answer: set count, capability; the devices
    set are recorded. The TF32 switches start at PyTorch's defaults and are put back afterwards."""
    fake = SimpleNamespace(count=1, capability=(9, 0), set=[])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: fake.count)
    monkeypatch.setattr(torch.cuda, "set_device", fake.set.append)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: fake.capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)  # as on a T4
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, False
    yield fake
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_gpuid_picks_its_cuda_device_and_names_itself_when_missing(fake_cuda):
    fake_cuda.count = 2
    assert select_device(1) == torch.device("cuda", 1) and fake_cuda.set == [1]
    with pytest.raises(UserError, match=r"^-gpuid 2 asks for CUDA device 2, but there are 2 \(0\.\.1\)$"):
        select_device(2)


def test_under_torchrun_local_rank_picks_the_device_whatever_gpuid_says(fake_cuda):
    fake_cuda.count = 4
    assert select_device(0, local_rank=3) == torch.device("cuda", 3)
    assert select_device(2, local_rank=0) == torch.device("cuda", 0)
    assert select_device(-1, local_rank=3) == torch.device("cpu")  # -gpuid -1: CPU processes


def test_a_process_that_sees_one_gpu_takes_it_whatever_its_local_rank(fake_cuda, monkeypatch):
    """CUDA_VISIBLE_DEVICES giving each process its own GPU: LOCAL_RANK 1 sees it as device 0."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert select_device(0, local_rank=1) == torch.device("cuda", 0) and fake_cuda.set == [0]


def test_more_local_ranks_than_gpus_is_an_error_naming_local_rank_and_the_count(fake_cuda, monkeypatch):
    fake_cuda.count = 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(UserError) as raised:
        select_device(0, local_rank=2)
    message = str(raised.value)
    assert message.startswith("LOCAL_RANK 2 has no CUDA device") and "\n" not in message
    assert "this process sees 2 (0..1, CUDA_VISIBLE_DEVICES=0,1)" in message
    assert "--nproc_per_node=2" in message and "-gpuid" not in message


def test_a_cuda_device_computes_float32_in_ieee_not_tf32(fake_cuda):
    torch.backends.cuda.matmul.allow_tf32 = True
    select_device(-1)
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32  # the CPU: nothing changed
    select_device(0)
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32


def test_bf16_on_a_gpu_older_than_ampere_runs_in_float32_with_a_notice(fake_cuda):
    """A T4 (7.5) says is_bf16_supported() True (emulation); the capability decides."""
    gpu = torch.device("cuda", 0)
    fake_cuda.capability = (7, 5)
    said = []
    check_precision("bf16", gpu, said.append)
    assert said == ["notice: this GPU (compute capability 7.5) has no bfloat16 arithmetic (it needs 8.0); "
                    "-precision bf16 runs in float32 instead"]
    assert isinstance(autocast(gpu, "bf16"), contextlib.nullcontext)
    fake_cuda.capability = (8, 0)
    said.clear()
    check_precision("bf16", gpu, said.append)
    assert said == []
    with warnings.catch_warnings():  # torch.autocast warns that this machine has no CUDA
        warnings.simplefilter("ignore")
        assert isinstance(autocast(gpu, "bf16"), torch.autocast)
    assert isinstance(autocast(gpu, "fp32"), contextlib.nullcontext)
