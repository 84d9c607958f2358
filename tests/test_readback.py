"""train.py's read-back window (util.training.readback_window): on a GPU the losses, the NaN and
explosion checks, the progress lines and the log rows are read back READBACK_WINDOW iterations at
a time instead of after every step. The CPU reads each iteration at once; here the window is forced
on the CPU, in-process, and a run must print, log and save exactly what the same run with a window
of one does, also when it aborts in the middle of a window. The same for the splits kept on the
device (util.data.BatchLoader.keep_on), which a GPU does and the CPU never: forced here too.
"""
import csv
import re
import signal
from pathlib import Path

import pytest
import torch

from conftest import data_folder
from util import data as util_data
from util.checkpoint import load_checkpoint

import train

TEXT = "the quick brown fox jumps over the lazy dog; she sells sea shells by the sea shore.\n" * 12
RUN = ["-data_dir", "data", "-rnn_size", "16", "-num_layers", "1", "-batch_size", "2", "-seq_length", "8",
       "-gpuid", "-1", "-threads", "1", "-eval_val_every", "7", "-max_epochs", "1.5"]


def run(folder: Path, window: int, monkeypatch, capsys, *args: str,
        resident: bool = False) -> tuple[int, list[str], list[list[str]]]:
    """train.main in `folder` with the window forced (and the splits kept on the device where
    `resident`): its status, its stdout with timings masked, and its log without the seconds column."""
    data_folder(folder / "data", TEXT)
    monkeypatch.chdir(folder)
    monkeypatch.setattr(train, "readback_window", lambda device: window)
    monkeypatch.setattr(util_data, "device_holds", lambda device, nbytes: resident)
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


@pytest.mark.parametrize("args", [("-print_every", "1"), ("-print_every", "3", "-dropout", "0.2")],
                         ids=["every_iteration", "every_third_with_dropout"])
def test_a_window_of_five_prints_logs_and_saves_what_a_window_of_one_does(tmp_path, monkeypatch, capsys, args):
    one = run(tmp_path / "one", 1, monkeypatch, capsys, *args)
    five = run(tmp_path / "five", 5, monkeypatch, capsys, *args)
    assert one[0] == five[0] == 0
    assert one[1] == five[1] and any(line.startswith("19/") for line in one[1]) == (args[1] == "1")
    assert one[2] == five[2] and len(one[2]) == 1 + int(1.5 * int(len(TEXT) // 16 * 0.95))
    saved = sorted(p.name for p in (tmp_path / "one" / "cv").glob("*.pt"))
    assert saved == sorted(p.name for p in (tmp_path / "five" / "cv").glob("*.pt")) and len(saved) > 3
    for name in saved:
        a, b = (load_checkpoint(str(tmp_path / folder / "cv" / name)) for folder in ("one", "five"))
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
        assert a["train_losses"] == b["train_losses"]
        assert a["resume"]["loader_position"] == b["resume"]["loader_position"]


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
    saved = sorted(p.name for p in (tmp_path / "host" / "cv").glob("*.pt"))
    assert saved == sorted(p.name for p in (tmp_path / "device" / "cv").glob("*.pt")) and len(saved) > 3
    for name in saved:
        a, b = (load_checkpoint(str(tmp_path / folder / "cv" / name)) for folder in ("host", "device"))
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
        assert a["val_losses"] == b["val_losses"] and a["val_losses"]
