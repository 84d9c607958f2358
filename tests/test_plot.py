"""plot.py and util/plot.py: the loss plot of a training log, a .pt checkpoint and a Torch7 .t7.

A tiny train.py run makes the log and the checkpoints; plot.py runs on them as a user runs it, and
the PNGs are read back: their size, and the colours of the plotted lines among many others. The
script runs start together at the beginning of the module; the numbers are checked in this process.
"""
import csv
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgb
from matplotlib.image import imread

from conftest import REPO, assert_user_error, data_folder, run_script
from runner import Runs, ok
from t7_graphs import BUILDERS, NNGraph
from t7_writer import write_t7
from util.checkpoint import load_checkpoint
from util.errors import UserError
from util.plot import (
    BEST_COLOR,
    DPI,
    MAX_RAW_POINTS,
    SIZE_INCHES,
    TRAIN_COLOR,
    VAL_COLOR,
    curves_from_progress,
    decimate,
    default_plot_path,
    draw_loss_plot,
    loss_plot_path,
    perplexity_ticks,
    rows_from_checkpoint,
    rows_from_log,
    running_mean,
)
from util.torch7 import TorchObject

TEXT = "the cat sat on the mat. the dog ate the hat.\n" * 10  # 450 characters: 45 batches of 2 x 5, 42 train
ITERATIONS_PER_EPOCH, EPOCHS, EVAL_EVERY = 42, 3, 14
TINY = ["-rnn_size", 8, "-num_layers", 1, "-batch_size", 2, "-seq_length", 5, "-max_epochs", EPOCHS,
        "-eval_val_every", EVAL_EVERY, "-gpuid", -1, "-threads", 1, "-print_every", 1000, "-savefile", "tiny"]
HEIGHT, WIDTH = round(SIZE_INCHES[1] * DPI), round(SIZE_INCHES[0] * DPI)
# the Torch7 checkpoint's losses: 40 iterations, 20 an epoch, validated every 10 (the best at 20)
T7_TRAIN = [2.5 - 0.02 * i + 0.05 * math.sin(i) for i in range(40)]
T7_VAL = {10: 2.3, 20: 2.05, 30: 2.1, 40: 2.2}
LOG_HEADER = "iteration,epoch,train_loss,val_loss,learning_rate,seconds\n"


def write_char_rnn(path: Path, train_losses: list[float], val_losses: dict[int, float], iteration: int,
                   epoch: float) -> None:
    """A char-rnn LSTM checkpoint as train.lua saves it, with the given losses."""
    tokens = ["\n", " ", "a", "b"]
    gmodule, _ = BUILDERS["lstm"](NNGraph(np.random.default_rng(0), np.float64), len(tokens), 4, 1, 0.0)
    write_t7(path, {
        "protos": {"rnn": gmodule, "criterion": TorchObject("nn.ClassNLLCriterion")},
        "opt": {"model": "lstm", "rnn_size": 4, "num_layers": 1, "dropout": 0.0, "seed": 123, "batch_size": 2,
                "seq_length": 5, "train_frac": 0.95, "val_frac": 0.05},
        "vocab": {t: i for i, t in enumerate(tokens, 1)},
        "train_losses": train_losses, "val_losses": val_losses, "val_loss": min(val_losses.values(), default=None),
        "i": iteration, "epoch": epoch,
    })


def plot_after_junk(folder: Path, log: Path) -> subprocess.CompletedProcess:
    """plot.py on the log, with a file that is not a PNG where its plot goes (it is replaced); a GUI
    backend asked for and no display: the plot uses neither."""
    (folder / "cv" / "lm_tiny_loss.png").write_bytes(b"not a png")
    return run_script("plot.py", log, cwd=folder, env={"MPLBACKEND": "TkAgg", "DISPLAY": ""})


def bad_inputs(folder: Path, trained: Path) -> dict[str, Path]:
    """Inputs plot.py refuses, written into `folder`; `trained` is a checkpoint of the tiny run."""
    files = {"missing": folder / "missing.csv", "not_a_log": folder / "other.csv", "empty_log": folder / "empty.csv",
             "no_losses": folder / "no_losses.pt", "no_losses_t7": folder / "no_losses.t7",
             "fifo_log": folder / "fifo.csv", "fifo_checkpoint": folder / "fifo.pt"}
    os.mkfifo(files["fifo_log"])  # read, either would wait for a writer forever
    os.mkfifo(files["fifo_checkpoint"])
    files["not_a_log"].write_text("name,value\na,1\n", encoding="utf-8")
    files["empty_log"].write_text(LOG_HEADER, encoding="utf-8")
    checkpoint = torch.load(trained, weights_only=True)
    checkpoint["train_losses"], checkpoint["val_losses"] = [], []
    torch.save(checkpoint, files["no_losses"])
    write_char_rnn(files["no_losses_t7"], [], {}, 0, 0.0)
    return files


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    root = tmp_path_factory.mktemp("plot")
    data = data_folder(root / "data", TEXT)
    write_char_rnn(root / "lm_lstm_epoch2.00_2.0500.t7", T7_TRAIN, T7_VAL, 40, 2.0)
    with Runs(workers=2, root=root) as r:
        train = r.folder("train")
        r.start("t7", "plot.py", "lm_lstm_epoch2.00_2.0500.t7", cwd=root)
        r.start("train", "train.py", "-data_dir", data, *TINY)
        log, checkpoint = train / "cv" / "lm_tiny_log.csv", train / "cv" / f"lm_tiny_epoch{EPOCHS}.pt"
        r.submit("log", plot_after_junk, train, Path("cv") / "lm_tiny_log.csv", after=("train",))
        r.start("checkpoint", "plot.py", checkpoint, "-output", root / "checkpoint.png", after=("train",))
        r.submit("bad", bad_inputs, r.folder("bad"), checkpoint, after=("train",))
        for name in ("missing", "not_a_log", "empty_log", "no_losses", "no_losses_t7", "fifo_log", "fifo_checkpoint"):
            r.submit(name, run_plot, r, name, after=("bad",))
        r.start("unwritable", "plot.py", log, "-output", root / "no_such_folder" / "x.png", after=("train",))
        yield r


def run_plot(r: Runs, name: str) -> subprocess.CompletedProcess:
    return run_script("plot.py", r["bad"][name], cwd=r.folder("bad"))


# ---- the PNGs -----------------------------------------------------------------------------------------

def colour_pixels(image: np.ndarray, colour: str) -> int:
    """How many pixels are `colour` (within antialiasing's rounding)."""
    return int((np.abs(image[:, :, :3] - np.array(to_rgb(colour))).max(axis=2) < 0.03).sum())


def assert_a_loss_plot(path: Path, colours: tuple[str, ...] = (TRAIN_COLOR, VAL_COLOR, BEST_COLOR)) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    image = imread(path)
    assert image.shape[:2] == (HEIGHT, WIDTH), image.shape
    distinct = np.unique((image[:, :, :3] * 255).round().astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(distinct) > 50, len(distinct)  # text, grid, curves and their antialiased edges
    for colour in colours:
        assert colour_pixels(image, colour) > 30, (colour, colour_pixels(image, colour))


def test_plot_draws_the_training_log_beside_it_replacing_the_old_plot(runs):
    ok(runs["train"])
    result = ok(runs["log"])
    written = Path("cv") / "lm_tiny_loss.png"
    assert result.stdout.strip() == str(written)
    assert result.stderr == ""
    assert_a_loss_plot(runs.folder("train") / written)
    assert not [p for p in (runs.folder("train") / "cv").iterdir() if p.name.endswith(".tmp")]


def test_plot_draws_a_checkpoint_to_the_output_asked_for(runs):
    result = ok(runs["checkpoint"])
    assert result.stdout.strip() == str(runs.root / "checkpoint.png")
    assert_a_loss_plot(runs.root / "checkpoint.png")


def test_plot_draws_a_torch7_checkpoint_named_for_its_run(runs):
    result = ok(runs["t7"])
    assert result.stdout.strip() == "lm_lstm_loss.png"
    assert_a_loss_plot(runs.root / "lm_lstm_loss.png")


@pytest.mark.parametrize(("name", "fragments"), [
    ("missing", ["missing.csv"]),
    ("not_a_log", ["other.csv", "is not a training log"]),
    ("empty_log", ["empty.csv", "no iterations"]),
    ("no_losses", ["no_losses.pt", "no training losses"]),
    ("no_losses_t7", ["no_losses.t7", "no training losses"]),
    ("fifo_log", ["fifo.csv", "is a FIFO (named pipe), not a regular file"]),
    ("fifo_checkpoint", ["fifo.pt", "is a FIFO (named pipe), not a regular file"]),
    ("unwritable", ["cannot write the loss plot", "x.png"]),
])
def test_bad_inputs_are_one_line_errors(runs, name, fragments):
    assert_user_error(runs[name], *fragments)


# ---- the numbers ---------------------------------------------------------------------------------------

def test_the_log_and_the_checkpoint_give_the_same_curves(runs):
    ok(runs["train"])
    cv = runs.folder("train") / "cv"
    with open(cv / "lm_tiny_log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    from_log = rows_from_log(str(cv / "lm_tiny_log.csv"))
    iterations = ITERATIONS_PER_EPOCH * EPOCHS
    assert from_log.train.shape == (iterations, 2)
    assert from_log.train.tolist() == [[float(row["epoch"]), float(row["train_loss"])] for row in rows]
    validated = [row for row in rows if row["val_loss"]]
    epoch_ends = range(ITERATIONS_PER_EPOCH, iterations + 1, ITERATIONS_PER_EPOCH)
    assert [int(row["iteration"]) for row in validated] == sorted({*range(EVAL_EVERY, iterations, EVAL_EVERY),
                                                                    *epoch_ends})
    assert from_log.val.tolist() == [[float(row["epoch"]), float(row["val_loss"])] for row in validated]
    checkpoint = load_checkpoint(str(cv / f"lm_tiny_epoch{EPOCHS}.pt"))
    from_checkpoint = rows_from_checkpoint(checkpoint)
    np.testing.assert_allclose(from_checkpoint.train, from_log.train, atol=1e-4)  # the log rounds epochs to 4 places
    np.testing.assert_allclose(from_checkpoint.val, from_log.val, atol=1e-4)
    best = load_checkpoint(str(cv / "lm_tiny_best.pt"))
    assert from_checkpoint.best == pytest.approx((best["epoch"], best["val_loss"]))
    assert from_log.best == pytest.approx((best["epoch"], best["val_loss"]), abs=1e-4)


def test_a_torch7_checkpoint_gives_its_losses_by_epoch(tmp_path):
    path = tmp_path / "cp.t7"
    write_char_rnn(path, T7_TRAIN, T7_VAL, 40, 2.0)
    curves = rows_from_checkpoint(load_checkpoint(str(path)))
    np.testing.assert_allclose(curves.train, [[(i + 1) / 20, loss] for i, loss in enumerate(T7_TRAIN)])
    assert curves.val.tolist() == [[0.5, 2.3], [1.0, 2.05], [1.5, 2.1], [2.0, 2.2]]
    assert curves.best == (1.0, 2.05)


def test_progress_values_give_epochs_and_the_best():
    curves = curves_from_progress([3.0, 2.5, 2.0, 1.8], [[2, 2.4], [4, 2.6]], 2)
    assert curves.train.tolist() == [[0.5, 3.0], [1.0, 2.5], [1.5, 2.0], [2.0, 1.8]]
    assert curves.val.tolist() == [[1.0, 2.4], [2.0, 2.6]]
    assert curves.best == (1.0, 2.4)
    assert curves_from_progress([3.0], [[1, 2.0], [2, 2.0]], 4, best=(2, 2.0)).best == (0.5, 2.0)
    assert curves_from_progress([3.0], [[1, math.nan], [2, 2.5]], 1).best == (2.0, 2.5)
    assert curves_from_progress([3.0], [], 1).best is None
    with pytest.raises(UserError, match="not numbers"):
        curves_from_progress(["a"], [], 1)


def test_checkpoint_epochs_come_from_iteration_over_epoch_unless_given():
    checkpoint = {"train_losses": [2.0, 1.5, 1.0], "val_losses": [[3, 1.2]], "iteration": 3, "epoch": 1.5}
    assert rows_from_checkpoint(checkpoint).val.tolist() == [[1.5, 1.2]]
    assert rows_from_checkpoint(checkpoint, iterations_per_epoch=3).val.tolist() == [[1.0, 1.2]]
    with pytest.raises(UserError, match="does not say its iteration and epoch"):
        rows_from_checkpoint({**checkpoint, "epoch": 0}, name="cp.pt")
    with pytest.raises(UserError, match="not \\[iteration, loss\\] pairs"):
        rows_from_checkpoint({**checkpoint, "val_losses": [1.2]})


def test_the_log_reader_skips_a_half_written_last_line_and_names_a_bad_one(tmp_path):
    path = tmp_path / "lm_log.csv"
    path.write_text(LOG_HEADER + "1,0.5000,2.0,,0.002,0.1\n2,1.0000,1.5,1.7,0.002,0.2\n3,1.50", encoding="utf-8")
    curves = rows_from_log(str(path))
    assert curves.train.tolist() == [[0.5, 2.0], [1.0, 1.5]]
    assert curves.val.tolist() == [[1.0, 1.7]]
    assert curves.best == (1.0, 1.7)
    path.write_text(LOG_HEADER + "1,0.5000,2.0,,0.002,0.1\n2,x,1.5,,0.002,0.2\n", encoding="utf-8")
    with pytest.raises(UserError, match="line 3: not a row of a training log"):
        rows_from_log(str(path))


def test_plot_names_follow_the_runs_files():
    assert loss_plot_path("cv", "") == str(Path("cv") / "lm_loss.png")
    assert loss_plot_path("cv", "NAME") == str(Path("cv") / "lm_NAME_loss.png")
    for name, plot in [("lm_log.csv", "lm_loss.png"), ("lm_NAME_log.csv", "lm_NAME_loss.png"),
                       ("lm_epoch30.pt", "lm_loss.png"), ("lm_NAME_epoch30.47.pt", "lm_NAME_loss.png"),
                       ("lm_NAME_best.pt", "lm_NAME_loss.png"), ("lm_lstm_epoch18.18_2.2153.t7", "lm_lstm_loss.png"),
                       ("my_epoch_run_epoch3.pt", "my_epoch_run_loss.png"), ("losses.csv", "losses_loss.png")]:
        assert default_plot_path(str(Path("cv") / name)) == str(Path("cv") / plot), name


def test_a_long_run_is_decimated_keeping_its_spread():
    rng = np.random.default_rng(0)
    x, y = np.arange(100_000) / 1000, rng.normal(2.0, 0.1, 100_000)
    small_x, small_y = decimate(x, y)
    assert len(small_x) <= MAX_RAW_POINTS and small_y.min() == y.min() and small_y.max() == y.max()
    assert decimate(x[:10], y[:10])[1].tolist() == y[:10].tolist()
    assert running_mean(np.array([1.0, 2.0, 6.0, 3.0]), 1).tolist() == [1.5, 3.0, 11 / 3, 4.5]


def test_perplexity_ticks_are_round_and_inside_the_axis():
    ticks = perplexity_ticks(0.6, 5.8)
    assert 4 <= len(ticks) <= 9 and all(0.6 <= math.log(t) <= 5.8 for t in ticks)
    assert {2.0, 20.0, 200.0} <= set(ticks)
    narrow = perplexity_ticks(1.40, 1.42)
    assert len(narrow) >= 3 and all(1.40 <= math.log(t) <= 1.42 for t in narrow)


def test_a_plot_of_10000_iterations_draws_without_a_display(tmp_path):
    rng = np.random.default_rng(1)
    train = list(4.0 * np.exp(-np.arange(10_000) / 2000) + 1.3 + rng.normal(0, 0.05, 10_000))
    val = [[i, 4.0 * math.exp(-i / 2000) + 1.4] for i in range(500, 10_001, 500)]
    draw_loss_plot(str(tmp_path / "long.png"), *curves_from_progress(train, val, 400), "a long run")
    assert_a_loss_plot(tmp_path / "long.png")
    with pytest.raises(UserError, match="cannot write the loss plot"):
        draw_loss_plot(str(tmp_path / "missing" / "long.png"), *curves_from_progress(train, val, 400), "t")


def test_importing_util_plot_leaves_matplotlib_unimported():
    code = "import sys, util.plot; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
