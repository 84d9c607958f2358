"""Data-parallel training under torchrun (gloo on the CPU) equals one process on the whole batch;
with a mocked torch.distributed, the group processes on CUDA talk in (util.distributed.on_device)."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

from conftest import REPO, TINY_TEXT, run_script
from util import distributed

ARGS = ["-rnn_size", "16", "-num_layers", "2", "-batch_size", "4", "-seq_length", "8", "-max_epochs", "2",
        "-gpuid", "-1", "-threads", "1", "-print_every", "1", "-eval_val_every", "1000"]
PROGRESS = re.compile(r"^(\d+)/\d+ \(epoch [\d.]+\), train_loss = ([\d.]+),", re.M)


def torchrun(cwd, nproc: int, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """train.py under torchrun. A run past `timeout` fails the test with where each process was: its
    workers get SIGABRT, and Python's fault handler writes their stacks to the output shown."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(REPO / "train.py"), *args]
    with subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONFAULTHANDLER": "1"}) as agent:
        try:
            stdout, stderr = agent.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for worker in Path(f"/proc/{agent.pid}/task/{agent.pid}/children").read_text().split():
                os.kill(int(worker), signal.SIGABRT)
            time.sleep(5)
            agent.kill()
            stdout, stderr = agent.communicate()
            pytest.fail(f"torchrun {' '.join(args)} ran past {timeout} s; its output:\n{stdout[-3000:]}\n"
                        f"{stderr[-12000:]}")
    return subprocess.CompletedProcess(command, agent.returncode, stdout, stderr)


def losses(output: str) -> dict[int, float]:
    return {int(i): float(loss) for i, loss in PROGRESS.findall(output)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    (folder / "d").mkdir()
    (folder / "d" / "input.txt").write_text(TINY_TEXT * 12)
    single = run_script("train.py", "-data_dir", "d", *ARGS, "-checkpoint_dir", "one", cwd=folder)
    double = torchrun(folder, 2, "-data_dir", "d", *ARGS, "-checkpoint_dir", "two")
    return folder, single, double


def test_two_processes_match_one(runs):
    folder, single, double = runs
    assert single.returncode == 0, single.stderr
    assert double.returncode == 0, double.stdout[-2000:] + double.stderr[-2000:]
    assert "data parallel: 2 processes, 2 streams each" in double.stdout
    one, two = losses(single.stdout), losses(double.stdout)
    assert len(one) > 20 and one.keys() == two.keys()  # only rank 0 prints: one line per iteration
    for i in one:
        assert two[i] == pytest.approx(one[i], rel=1e-5, abs=1e-5), i
    final = max(p.name for p in (folder / "one").glob("lm_epoch2.pt"))
    a = torch.load(folder / "one" / final, weights_only=True)
    b = torch.load(folder / "two" / final, weights_only=True)
    for name, weight in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], weight, rtol=1e-5, atol=1e-5)
    for part_a, part_b in zip(a["resume"]["hidden"], b["resume"]["hidden"], strict=True):  # gathered to the full batch
        assert part_b.shape == part_a.shape
        torch.testing.assert_close(part_b, part_a, rtol=1e-4, atol=1e-4)
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)


def test_checkpoint_resumes_in_one_process_and_in_two(runs):
    folder, _, double = runs
    assert double.returncode == 0
    checkpoint = folder / "two" / "lm_epoch1.pt"
    longer = ["-max_epochs", "3", "-print_every", "1000"]
    alone = run_script("train.py", "-resume", checkpoint, *longer, "-checkpoint_dir", "alone", cwd=folder)
    assert alone.returncode == 0, alone.stderr
    together = torchrun(folder, 2, "-resume", str(checkpoint), *longer, "-checkpoint_dir", "together")
    assert together.returncode == 0, together.stdout[-2000:] + together.stderr[-2000:]
    a = torch.load(folder / "alone" / "lm_epoch3.pt", weights_only=True)
    b = torch.load(folder / "together" / "lm_epoch3.pt", weights_only=True)
    assert a["iteration"] == b["iteration"] and a["opt"]["rnn_size"] == 16
    for name, weight in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], weight, rtol=1e-4, atol=1e-4)


def test_batch_that_does_not_divide_is_an_error(runs):
    folder, _, _ = runs
    result = torchrun(folder, 2, "-data_dir", "d", *ARGS, "-batch_size", "5", "-checkpoint_dir", "odd")
    assert result.returncode != 0
    assert "Error: -batch_size 5 does not divide among 2 processes" in result.stderr
    # torchrun reports a failed worker with a traceback of its own; none may come from our code
    assert 'train.py", line' not in result.stderr and "util/" not in result.stderr
    assert not (folder / "odd").exists()


def test_early_stop_ends_every_process_together(tmp_path):
    """Only rank 0 validates; -early_stop is its decision, taken by both processes (no hang)."""
    data = tmp_path / "d"
    data.mkdir()
    (data / "input.txt").write_text(TINY_TEXT * 12)
    result = torchrun(tmp_path, 2, "-data_dir", "d", *ARGS[:-1], "1", "-max_epochs", "60", "-rnn_size", "64",
                      "-learning_rate", "1e-2", "-early_stop", "1")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "stopping early (-early_stop 1)" in result.stdout
    assert result.stdout.splitlines()[-1].startswith("best checkpoint: cv/lm_best.pt")


# ---- on_device: which group the processes talk in, by mocks (tests/test_cuda.py runs it on a GPU) ----

@pytest.fixture
def two_nccl_processes(monkeypatch):
    """Rank 0 of two under NCCL whose peers report `peers` (the GPU identities all_gather_object
    fills in); new_group gives a marker for the gloo group."""
    fake = SimpleNamespace(peers=[], groups=[])
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(dist, "new_group", lambda backend=None: fake.groups.append(backend) or f"{backend} group")

    def all_gather_object(found, mine, group=None):
        assert group == "gloo group"
        found[:] = [mine, *fake.peers]
    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(uuid="GPU-aaaa"))
    return fake


def test_processes_on_gpus_of_their_own_talk_over_nccl_on_their_gpu(two_nccl_processes):
    two_nccl_processes.peers = ["GPU-bbbb"]
    said = []
    ranks = distributed.on_device(distributed.Ranks(0, 2, 0), torch.device("cuda", 0), said.append)
    assert ranks.device == torch.device("cuda", 0) and ranks.group is None and said == []


def test_processes_sharing_a_gpu_talk_over_gloo_with_a_notice(two_nccl_processes):
    """NCCL refuses two processes on one GPU; gloo carries their CUDA tensors through host memory."""
    two_nccl_processes.peers = ["GPU-aaaa"]
    said = []
    ranks = distributed.on_device(distributed.Ranks(0, 2, 0), torch.device("cuda", 0), said.append)
    assert ranks.group == "gloo group" and ranks.device == torch.device("cpu")
    assert said == ["notice: the 2 processes run on 1 GPU; NCCL needs a GPU of its own for each process, so they "
                    "talk over gloo instead (through host memory, slower)"]


def test_one_process_and_cpu_processes_are_left_as_they_are(two_nccl_processes):
    alone = distributed.Ranks()
    assert distributed.on_device(alone, torch.device("cuda", 0)) is alone
    cpu = distributed.Ranks(1, 2, 1)
    assert distributed.on_device(cpu, torch.device("cpu")) is cpu
    assert two_nccl_processes.groups == []  # no group made, nothing gathered
