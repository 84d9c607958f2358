"""train.py's read-back window (util.training.readback_window): on a GPU the losses, the NaN and
explosion checks, the progress lines and the log rows are read back READBACK_WINDOW iterations at
a time instead of after every step. The CPU reads each iteration at once; here the window is forced
on the CPU, in-process, and a run must print, log and save exactly what the same run with a window
of one does, also when it aborts in the middle of a window. The same for the splits kept on the
device (util.data.BatchLoader.keep_on), which a GPU does and the CPU never: forced here too. And
for the steps replayed as CUDA graphs (util.training.TrainingStep): the CPU has no graphs, so the
"capture" here hands back the step's body itself as its replay, and the run must still be the
same, its static tensors, carried state, recaptures at each learning-rate decay and the fallback
after a failed capture included.
"""
import csv
import re
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from conftest import data_folder
from util import data as util_data, training as util_training
from util.checkpoint import load_checkpoint
from util.training import rmsprop

import train

TEXT = "the quick brown fox jumps over the lazy dog; she sells sea shells by the sea shore.\n" * 12
RUN = ["-data_dir", "data", "-rnn_size", "16", "-num_layers", "1", "-batch_size", "2", "-seq_length", "8",
       "-gpuid", "-1", "-threads", "1", "-eval_val_every", "7", "-max_epochs", "1.5"]


Capture = Callable[[Callable[[], None]], Callable[[], None]]  # util.training.cuda_graph's type


def run(folder: Path, window: int, monkeypatch, capsys, *args: str, resident: bool = False,
        capture: Capture | None = None) -> tuple[int, list[str], list[list[str]]]:
    """train.main in `folder` with the window forced (and the splits kept on the device where
    `resident`, the steps graphed with `capture` standing for util.training.cuda_graph where given):
    its status, its stdout with timings masked, and its log without the seconds column."""
    data_folder(folder / "data", TEXT)
    monkeypatch.chdir(folder)
    monkeypatch.setattr(train, "readback_window", lambda device: window)
    monkeypatch.setattr(util_data, "device_holds", lambda device, nbytes: resident)
    monkeypatch.setattr(train, "graphs_used", lambda requested, device, distributed: capture is not None)
    if capture is not None:  # no capturable optimizer on the CPU: the same updates without it
        monkeypatch.setattr(train, "rmsprop", lambda params, rate, decay, capturable: rmsprop(params, rate, decay))
        monkeypatch.setattr(util_training, "cuda_graph", capture)
    capsys.readouterr()
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        status = train.main([*RUN, *args])
    finally:  # the run's stop request took Ctrl-C and SIGTERM: they are pytest's again
        for number, handler in handlers.items():
            signal.signal(number, handler)
    lines = [re.sub(r"\d+\.\d+s\b", "Ts", line) for line in capsys.readouterr().out.splitlines()
             if not line.startswith("notice: validation")]  # the cost notice times the machine
    with open(folder / "cv" / "lm_log.csv", newline="") as handle:
        rows = [row[:-1] for row in csv.reader(handle)]
    return status, lines, rows


def assert_same_checkpoints(one: Path, two: Path) -> None:
    """The two runs saved the same checkpoints (more than three), with the same weights, progress,
    optimizer state and carried state."""
    saved = sorted(p.name for p in (one / "cv").glob("*.pt"))
    assert saved == sorted(p.name for p in (two / "cv").glob("*.pt")) and len(saved) > 3
    for name in saved:
        a, b = (load_checkpoint(str(folder / "cv" / name)) for folder in (one, two))
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
        assert a["train_losses"] == b["train_losses"] and a["val_losses"] == b["val_losses"] and a["val_losses"]
        assert a["resume"]["loader_position"] == b["resume"]["loader_position"]
        assert all(torch.equal(p, q) for p, q in zip(a["resume"]["hidden"], b["resume"]["hidden"], strict=True))
        for index, values in a["resume"]["optimizer"]["state"].items():
            assert all(torch.equal(value, b["resume"]["optimizer"]["state"][index][key])
                       for key, value in values.items())


@pytest.mark.parametrize("args", [("-print_every", "1"), ("-print_every", "3", "-dropout", "0.2")],
                         ids=["every_iteration", "every_third_with_dropout"])
def test_a_window_of_five_prints_logs_and_saves_what_a_window_of_one_does(tmp_path, monkeypatch, capsys, args):
    one = run(tmp_path / "one", 1, monkeypatch, capsys, *args)
    five = run(tmp_path / "five", 5, monkeypatch, capsys, *args)
    assert one[0] == five[0] == 0
    assert one[1] == five[1] and any(line.startswith("19/") for line in one[1]) == (args[1] == "1")
    assert one[2] == five[2] and len(one[2]) == 1 + int(1.5 * int(len(TEXT) // 16 * 0.95))
    assert_same_checkpoints(tmp_path / "one", tmp_path / "five")


def test_an_abort_inside_a_window_names_the_same_iteration_and_keeps_the_same_log(tmp_path, monkeypatch, capsys):
    """-learning_rate 0.3 makes iteration 2's loss explode: the second of the first window of five,
    whose later iterations have run by the time it is read back."""
    one = run(tmp_path / "one", 1, monkeypatch, capsys, "-learning_rate", "0.3", "-print_every", "1")
    five = run(tmp_path / "five", 5, monkeypatch, capsys, "-learning_rate", "0.3", "-print_every", "1")
    assert one[0] == five[0] == 1
    assert one[1] == five[1]
    progress = [line.split()[0] for line in one[1] if "train_loss" in line]
    assert progress == ["1/88"] and "loss is exploding, aborting." in one[1]
    assert one[2] == five[2] and [row[0] for row in one[2]] == ["iteration", "1"]


@pytest.mark.parametrize("args", [(), ("-minibatch", "random")], ids=["consecutive", "random"])
def test_a_run_with_its_splits_on_the_device_is_the_same_run(tmp_path, monkeypatch, capsys, args):
    """Training batches and validation cut from the resident layout (under -minibatch random only
    validation's) give the same progress lines, log and checkpoints as those cut on the host."""
    host = run(tmp_path / "host", 5, monkeypatch, capsys, *args)
    device = run(tmp_path / "device", 5, monkeypatch, capsys, *args, resident=True)
    assert host[0] == device[0] == 0
    assert host[1] == device[1] and host[2] == device[2]
    assert_same_checkpoints(tmp_path / "host", tmp_path / "device")


class CountedCapture:
    """util.training.cuda_graph's stand-in on the CPU: the body is not run at capture (as CUDA records
    it without running it) and its replay runs it; counts the captures."""

    def __init__(self) -> None:
        self.captures = 0

    def __call__(self, body: Callable[[], None]) -> Callable[[], None]:
        self.captures += 1
        return body


@pytest.mark.parametrize("args", [("-print_every", "3", "-dropout", "0.2"), ("-minibatch", "random")],
                         ids=["consecutive_with_dropout", "random"])
def test_steps_replayed_as_graphs_print_log_and_save_what_eager_steps_do(tmp_path, monkeypatch, capsys, args):
    """-learning_rate_decay_after 0.5 decays at the end of epoch 1 (iteration 83): one capture after
    the warm-up, one more after the decay."""
    decaying = ("-learning_rate_decay_after", "0.5", *args)
    eager = run(tmp_path / "eager", 5, monkeypatch, capsys, *decaying)
    capture = CountedCapture()
    graphed = run(tmp_path / "graphed", 5, monkeypatch, capsys, *decaying, capture=capture)
    assert eager[0] == graphed[0] == 0
    assert eager[1] == graphed[1] and any(line.startswith("decayed learning rate") for line in eager[1])
    assert eager[2] == graphed[2]
    assert capture.captures == 2
    assert_same_checkpoints(tmp_path / "eager", tmp_path / "graphed")


def test_a_capture_that_fails_gives_a_notice_and_the_run_goes_on_without_graphs(tmp_path, monkeypatch, capsys):
    def refused(body: Callable[[], None]) -> Callable[[], None]:
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore detail")

    eager = run(tmp_path / "eager", 5, monkeypatch, capsys)
    failed = run(tmp_path / "failed", 5, monkeypatch, capsys, capture=refused)
    notice = [line for line in failed[1] if line not in eager[1]]
    assert notice == ["notice: the training step could not be captured as a CUDA graph (CUDA error: operation "
                      "not permitted when stream is capturing); training goes on without one (-cuda_graphs 0 "
                      "asks for that)"]
    assert eager[0] == failed[0] == 0 and eager[2] == failed[2]
    assert_same_checkpoints(tmp_path / "eager", tmp_path / "failed")
