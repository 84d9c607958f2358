"""evaluate.py -list DIR: every checkpoint of a folder with its epoch, iteration and losses, each run's
best marked, read from the runs' indexes (lm_*index.csv) or the files' metadata (docs/behaviour.md §2.7).

The runs as a user makes them (subprocesses) start together at the beginning of the module; the
expected numbers are read from the files themselves (torch.load, util.checkpoint.load_checkpoint).
"""
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_TEXT, assert_user_error, run_script
from runner import Runs, ok
from t7_graphs import BUILDERS, NNGraph
from t7_writer import write_t7
from util.checkpoint import FORMAT, IndexRow, load_checkpoint, read_index, write_index
from util.errors import UserError
from util.torch7 import TorchObject

import evaluate

# TINY_TEXT in batches of 2 x 5 for 2 epochs, a checkpoint every 3 iterations and at each epoch's end
TINY = ["-rnn_size", 8, "-num_layers", 1, "-batch_size", 2, "-seq_length", 5, "-max_epochs", 2,
        "-eval_val_every", 3, "-print_every", 100, "-gpuid", -1, "-threads", 1]
HEADER = ["checkpoint", "epoch", "iteration", "train_loss", "val_loss"]
# A run known only from its index (lm_hand_index.csv): numbers unlike its files' own, one row of a
# file that is not there (with the lowest val loss: it must not count), one without a val loss.
HAND_INDEX = [
    IndexRow("lm_hand_epoch1.pt", 1.0, 10, 2.5, 1.5),
    IndexRow("lm_hand_epoch1.50.pt", 1.5, 15, 2.25, None),
    IndexRow("lm_hand_best.pt", 1.0, 10, 2.5, 1.5),
    IndexRow("lm_hand_epoch2.pt", 2.0, 20, 2.0, 1.75),
    IndexRow("lm_hand_epoch3.pt", 3.0, 30, 1.0, 1.0),  # removed from disk
]
# char-rnn checkpoints as train.lua names them: (file, iteration, epoch, train_losses, val_loss)
T7_FILES = [("lm_lstm_epoch0.20_2.2500.t7", 20, 0.2, [3.0, 2.75, 2.625], 2.25),
            ("lm_lstm_epoch0.10_2.5000.t7", 10, 0.1, [3.0, 2.875], 2.5)]
T7_TOKENS = ["\n", " ", "a", "b", "c"]


@dataclass
class Line:
    name: str
    epoch: str
    iteration: str
    train_loss: str
    val_loss: str
    note: str


def parse(stdout: str) -> list[Line]:
    """The lines of a listing after its header; the columns as printed."""
    lines = stdout.splitlines()
    assert lines[0].split() == HEADER, lines[0]
    rows = []
    for line in lines[1:]:
        name, epoch, iteration, train, val, *note = line.split(maxsplit=5)
        rows.append(Line(name, epoch, iteration, train, val, note[0] if note else ""))
    return rows


def shown(value: float | None, decimals: int) -> str:
    return "-" if value is None else f"{value:.{decimals}f}"


def expected_line(name: str, checkpoint: dict) -> tuple:
    """What -list shows for a checkpoint read from its file: (name, epoch, iteration, train, val)."""
    train = checkpoint["train_losses"][-1] if checkpoint["train_losses"] else None
    return (name, shown(checkpoint["epoch"], 2), str(checkpoint["iteration"]), shown(train, 6),
            shown(checkpoint["val_loss"], 6))


def columns(line: Line) -> tuple:
    return line.name, line.epoch, line.iteration, line.train_loss, line.val_loss


def write_char_rnn(path: Path, iteration: int, epoch: float, train_losses: list[float], val_loss: float) -> None:
    """A small char-rnn LSTM checkpoint as train.lua saves it, with the given progress numbers."""
    g = NNGraph(np.random.default_rng(iteration), np.float64)
    gmodule, _ = BUILDERS["lstm"](g, len(T7_TOKENS), 4, 1, 0.0)
    write_t7(path, {
        "protos": {"rnn": gmodule, "criterion": TorchObject("nn.ClassNLLCriterion")},
        "opt": {"model": "lstm", "rnn_size": 4, "num_layers": 1, "dropout": 0.0, "seed": 123},
        "vocab": {t: i for i, t in enumerate(T7_TOKENS, 1)},
        "train_losses": train_losses, "val_losses": {iteration: val_loss}, "val_loss": val_loss,
        "i": iteration, "epoch": epoch,
    })


class Unsafe:
    """Unpickling it would make a folder: a file that is not weights-only must never get that far."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def train_names(cv: Path) -> list[str]:
    """The train run's checkpoints (lm_epoch*.pt), by iteration as their files say."""
    names = [path.name for path in cv.glob("lm_epoch*.pt")]
    return sorted(names, key=lambda name: torch.load(cv / name, weights_only=True)["iteration"])


def mixed_folder(root: Path) -> Path:
    """Checkpoints of every kind in one folder, made from the train run's: see the test below."""
    cv, mixed = root / "cv", root / "mixed"
    mixed.mkdir()
    names = train_names(cv)
    for name in [*names, "lm_best.pt"]:  # run lm_: no index here, read from the files
        shutil.copy(cv / name, mixed / name)
    shutil.copy(cv / names[1], mixed / "keep.pt")  # a copy under a name of its own
    for row, source in zip(HAND_INDEX[:4], [names[0], names[1], names[0], names[2]], strict=True):
        shutil.copy(cv / source, mixed / row.checkpoint)
    write_index(str(mixed / "lm_hand_index.csv"), HAND_INDEX)
    shutil.copy(cv / "lm_epoch2.pt", mixed / "lm_bad_epoch2.pt")
    (mixed / "lm_bad_index.csv").write_text("not,an,index\n")  # a note; its file is read itself
    for name, iteration, epoch, train_losses, val_loss in T7_FILES:
        write_char_rnn(mixed / name, iteration, epoch, train_losses, val_loss)
    (mixed / "broken.pt").write_bytes(b"not a checkpoint at all")
    whole = (cv / "lm_epoch2.pt").read_bytes()
    (mixed / "lm_cut_epoch2.pt").write_bytes(whole[:len(whole) // 2])
    torch.save({"format": FORMAT, "payload": Unsafe(root / "unpickled")}, mixed / "unsafe.pt")
    torch.save({"weights": torch.zeros(3)}, mixed / "other.pt")
    (mixed / "bad.t7").write_bytes(b"\x04\x00\x00\x00garbage")
    (mixed / "folder.pt").mkdir()  # not a file: not listed
    (mixed / "notes.txt").write_text("not a checkpoint")
    return mixed


def exact_folder(root: Path) -> Path:
    """Files named in an index, listed from it alone: the files are not even checkpoints."""
    folder = root / "exact"
    folder.mkdir()
    rows = [IndexRow("lm_epoch1.pt", 1.0, 6, 3.125, 3.0625), IndexRow("lm_epoch0.50.pt", 0.5, 3, 3.25, None),
            IndexRow("lm_best.pt", 1.0, 6, 3.125, 3.0625), IndexRow("lm_epoch1.50.pt", 1.5, 9, 3.0, 3.09375)]
    for row in rows:
        (folder / row.checkpoint).write_bytes(b"")
    write_index(str(folder / "lm_index.csv"), rows)
    return folder


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("list")
    (folder / "data").mkdir()
    (folder / "data" / "input.txt").write_bytes(TINY_TEXT.encode("utf-8"))
    (folder / "empty").mkdir()
    (folder / "empty" / "notes.txt").write_text("no checkpoints here")
    (folder / "a_file").write_text("a file, not a folder")
    exact_folder(folder)
    return folder


@pytest.fixture(scope="module")
def runs(root: Path) -> Iterator[Runs]:
    with Runs(workers=2, root=root) as r:
        r.start("train", "train.py", "-data_dir", root / "data", *TINY, "-checkpoint_dir", root / "cv")
        r.start("exact", "evaluate.py", "-list", root / "exact")
        r.start("empty", "evaluate.py", "-list", root / "empty")
        r.start("missing", "evaluate.py", "-list", root / "nowhere")
        r.start("other_option", "evaluate.py", "-list", root / "exact", "-gpuid", -1)
        r.start("help", "evaluate.py", "-help")
        r.start("list_train", "evaluate.py", "-list", root / "cv", after=("train",))
        r.submit("list_mixed", lambda: run_script("evaluate.py", "-list", mixed_folder(root), cwd=root),
                 after=("train",))
        yield r


# ---- the format ----------------------------------------------------------------------------------

def test_listing_from_an_index_alone(runs, root):
    result = ok(runs["exact"])
    assert result.stderr == ""
    # sorted by iteration; the copy (lm_best.pt) after the checkpoint it copies
    assert result.stdout == (
        "checkpoint       epoch  iteration  train_loss  val_loss\n"
        "lm_epoch0.50.pt   0.50          3    3.250000         -\n"
        "lm_epoch1.pt      1.00          6    3.125000  3.062500  best\n"
        "lm_best.pt        1.00          6    3.125000  3.062500  copy of lm_epoch1.pt\n"
        "lm_epoch1.50.pt   1.50          9    3.000000  3.093750\n")


def test_a_run_of_train_py_lists_as_its_files_say(runs, root):
    ok(runs["train"])
    cv = root / "cv"
    assert (cv / "lm_index.csv").exists(), "train.py writes its index, cv/lm_index.csv"
    names = train_names(cv)
    assert len(names) >= 3
    indexed = {row.checkpoint for row in read_index(str(cv / "lm_index.csv"))}
    assert indexed == {*names, "lm_best.pt"}
    lines = parse(ok(runs["list_train"]).stdout)
    files = {name: torch.load(cv / name, weights_only=True) for name in [*names, "lm_best.pt"]}
    assert [line.name for line in lines if line.name != "lm_best.pt"] == names  # by iteration
    for line in lines:  # the index's numbers are the files' own
        assert columns(line) == expected_line(line.name, files[line.name])
    best = min(names, key=lambda name: files[name]["val_loss"])
    assert [line.name for line in lines if "best" in line.note.split(", ")] == [best]
    copy = next(line for line in lines if line.name == "lm_best.pt")
    assert copy.note == f"copy of {best}" and copy.iteration == str(files[best]["iteration"])


# ---- a folder of everything ---------------------------------------------------------------------------

def test_a_mixed_folder_lists_every_checkpoint(runs, root):
    ok(runs["train"])
    result = ok(runs["list_mixed"])
    mixed = root / "mixed"
    lines = {line.name: line for line in parse(result.stdout)}
    # sorted by run (the name's prefix; .t7 runs apart), then iteration; unreadable files are rows too
    names = train_names(root / "cv")
    saved = {name: torch.load(mixed / name, weights_only=True) for name in [*names, "lm_best.pt"]}
    run = sorted(saved, key=lambda name: (saved[name]["iteration"], name == "lm_best.pt"))  # a copy after its source
    assert list(lines) == [
        "bad.t7", "broken.pt", "keep.pt", *run, "lm_bad_epoch2.pt", "lm_cut_epoch2.pt",
        "lm_hand_epoch1.pt", "lm_hand_best.pt", "lm_hand_epoch1.50.pt", "lm_hand_epoch2.pt",
        "lm_lstm_epoch0.10_2.5000.t7", "lm_lstm_epoch0.20_2.2500.t7", "other.pt", "unsafe.pt"]
    assert [name for name in run if name != "lm_best.pt"] == names
    # a malformed index: one note, and its file is read by itself
    assert result.stderr.count("\n") == 1 and "lm_bad_index.csv" in result.stderr and "note:" in result.stderr
    # .pt files in no index: their own metadata
    for name in [*names, "lm_best.pt", "keep.pt", "lm_bad_epoch2.pt"]:
        assert columns(lines[name]) == expected_line(name, torch.load(mixed / name, weights_only=True))
    # .t7 files: converted, train loss the last of train_losses
    for name, *_ in T7_FILES:
        assert columns(lines[name]) == expected_line(name, load_checkpoint(str(mixed / name)))
    # the index run: the index's numbers, not the files'; a row whose file is gone is not listed
    assert "lm_hand_epoch3.pt" not in lines
    for row in HAND_INDEX[:4]:
        assert columns(lines[row.checkpoint]) == (row.checkpoint, shown(row.epoch, 2), str(row.iteration),
                                                  shown(row.train_loss, 6), shown(row.val_loss, 6))
    check_marks(lines, mixed, names)
    assert not (root / "unpickled").exists()  # nothing in unsafe.pt ran


def check_marks(lines: dict[str, Line], mixed: Path, names: list[str]) -> None:
    """Each run's lowest val loss marked best (from the files), each *best.pt's original named."""
    losses = {name: torch.load(mixed / name, weights_only=True)["val_loss"] for name in names}
    best_train = min(names, key=losses.__getitem__)
    best_t7 = min(T7_FILES, key=lambda f: load_checkpoint(str(mixed / f[0]))["val_loss"])[0]
    best_hand = min((r for r in HAND_INDEX[:4] if r.val_loss is not None), key=lambda r: r.val_loss).checkpoint
    # runs of one file: keep.pt, lm_bad_epoch2.pt (their only val loss)
    bests = {best_train, best_t7, best_hand, "keep.pt", "lm_bad_epoch2.pt"}
    assert {name for name, line in lines.items() if "best" in line.note.split(", ")} == bests
    assert lines["lm_best.pt"].note == f"copy of {best_train}"
    assert lines["lm_hand_best.pt"].note == "copy of lm_hand_epoch1.pt"
    assert lines["lm_hand_epoch1.50.pt"].val_loss == "-"
    unreadable = {"bad.t7": "not a readable Torch7 file",
                  "broken.pt": "not a checkpoint (not a file written by train.py)",
                  "lm_cut_epoch2.pt": "truncated or damaged", "other.pt": "not a char-rnn checkpoint",
                  "unsafe.pt": "holds objects other than tensors and plain data"}
    for name, reason in unreadable.items():
        line = lines[name]
        assert (line.epoch, line.iteration, line.train_loss, line.val_loss) == ("-",) * 4
        assert line.note.startswith("unreadable: ") and reason in line.note, (name, line.note)
        assert str(mixed) not in line.note
    assert {name for name, line in lines.items() if line.note.startswith("unreadable")} == set(unreadable)


# ---- errors and options ----------------------------------------------------------------------------

def test_folder_errors(runs, root):
    assert_user_error(runs["empty"], f"{root / 'empty'} holds no checkpoints (.pt or .t7 files)", "-checkpoint_dir")
    assert_user_error(runs["missing"], f"folder {root / 'nowhere'} does not exist")
    with pytest.raises(UserError, match="is a file, not a folder"):
        evaluate.main(["-list", str(root / "a_file")])


def test_list_takes_no_checkpoint_or_other_option(runs, root):
    assert_user_error(runs["other_option"], "-list DIR takes no other options (-gpuid given)")
    with pytest.raises(UserError, match=r"takes no other options \(-data_dir, -verbose given\)"):
        evaluate.main(["-list", str(root / "exact"), "-verbose", "0", "-data_dir", "d"])
    with pytest.raises(UserError, match=r"takes no checkpoint argument \(got cv/lm_epoch1\.pt\)"):
        evaluate.main(["cv/lm_epoch1.pt", "-list", str(root / "exact")])
    with pytest.raises(UserError, match="-list needs a folder"):
        evaluate.main(["-list", ""])
    with pytest.raises(UserError, match="option -list needs a value"):
        evaluate.main(["-list"])
    with pytest.raises(UserError, match="missing argument <checkpoint>"):  # without -list, as before
        evaluate.main(["-data_dir", "d"])
    with pytest.raises(UserError, match=r"unexpected argument 'b\.pt'"):
        evaluate.main(["a.pt", "b.pt", "-list", str(root / "exact")])


def test_help_shows_list_and_the_checkpoint_argument(runs):
    result = ok(runs["help"])
    assert "Usage: python evaluate.py <checkpoint> [options]" in result.stdout
    assert "-list" in result.stdout and "-data_dir" in result.stdout
