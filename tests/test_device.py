"""util/device.py: the CPU set-up every script makes (freed memory kept for reuse, glibc) and
-precision's checks."""
import platform
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from util.device import check_precision
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
    check_precision("bf16", cpu, said.append)
    assert len(said) == 1 and "no bfloat16 instructions" in said[0]
