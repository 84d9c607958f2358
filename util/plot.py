"""Loss curves as a PNG a person can look at: the training loss of every iteration, the validation
loss of every validation and the best validation point, against the epoch.

    curves = rows_from_log("cv/lm_log.csv")            # or rows_from_checkpoint(load_checkpoint(...)),
    draw_loss_plot("cv/lm_loss.png", *curves, "lm")    # or curves_from_progress(...) during a run

The training loss is drawn twice: raw, as a thin pale line (above MAX_RAW_POINTS iterations, each
bin of iterations as its lowest and highest loss, so the spread stays visible and a draw stays fast
however long the run), and as a running mean over 1% of the run's iterations on either side (at
least one), the trend to read. Losses are nats per character; the right-hand axis gives the
perplexity, e^loss. Non-finite losses (a run that exploded) are left out.

Drawn with matplotlib's object-oriented API onto an Agg canvas: no pyplot, no GUI backend, no
display needed, and matplotlib is imported only when a plot is drawn. The PNG is written to a
temporary file beside `path`, then renamed into place.
"""
from __future__ import annotations

import csv
import math
import os
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from util.errors import UserError
from util.files import open_regular, replaced_atomically

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Point = tuple[float, float]  # (epoch, loss)

LOG_HEADER = ("iteration", "epoch", "train_loss", "val_loss", "learning_rate", "seconds")  # TrainingLog's
MAX_RAW_POINTS = 4000  # the raw training curve above this many iterations: 2000 bins, each as its min and max
SMOOTH_FRACTION = 0.01  # the running mean's half-window, as a share of the iterations
SIZE_INCHES, DPI = (10.0, 6.0), 100  # a 1000 x 600 PNG
MARGINS = {"left": 0.075, "right": 0.92, "top": 0.94, "bottom": 0.18}  # room for the labels and the legend below
TRAIN_RAW_COLOR, TRAIN_COLOR, VAL_COLOR, BEST_COLOR = "#9ecae1", "#1f77b4", "#d62728", "#2ca02c"


class LossCurves(NamedTuple):
    """What draw_loss_plot draws: draw_loss_plot(path, *curves, title)."""
    train: np.ndarray  # (epoch, loss) rows, one per iteration
    val: np.ndarray  # (epoch, loss) rows, one per validation
    best: Point | None  # the lowest validation loss (the first, if several are equal)


def points(rows: ArrayLike) -> np.ndarray:
    """(epoch, loss) pairs as an n x 2 array of floats."""
    return np.asarray(rows, dtype=float).reshape(-1, 2)


# ---- file names -------------------------------------------------------------------------------------

def loss_plot_path(checkpoint_dir: str, savefile: str) -> str:
    """cv/lm_loss.png, or cv/lm_NAME_loss.png for -savefile NAME (named like log_path and best_path)."""
    return os.path.join(checkpoint_dir, f"lm_{savefile}_loss.png" if savefile else "lm_loss.png")


# lm_NAME_epoch30.pt, lm_epoch30.47.pt, lm_NAME_best.pt, char-rnn's lm_lstm_epoch18.18_2.2153.t7
_CHECKPOINT_NAME = re.compile(r"^(.*)_(?:epoch\d+(?:\.\d+)?(?:_\d+(?:\.\d+)?)?|best)\.(?:pt|t7)$")


def default_plot_path(input_path: str) -> str:
    """The PNG beside a log or checkpoint, named for its run: cv/lm_NAME_log.csv and
    cv/lm_NAME_epoch30.pt give cv/lm_NAME_loss.png; any other name gets _loss.png for its extension."""
    folder, name = os.path.split(input_path)
    match = _CHECKPOINT_NAME.match(name)
    if match:
        prefix = match.group(1)
    elif name.endswith("_log.csv"):
        prefix = name[:-len("_log.csv")]
    else:
        prefix = os.path.splitext(name)[0]
    return os.path.join(folder, f"{prefix}_loss.png")


# ---- the numbers ------------------------------------------------------------------------------------

def best_point(val: ArrayLike) -> Point | None:
    """The validation point with the lowest finite loss (the earliest of equal ones); None without any."""
    rows = points(val)
    rows = rows[np.isfinite(rows[:, 1])]
    if not len(rows):
        return None
    epoch, loss = rows[int(np.argmin(rows[:, 1]))]
    return float(epoch), float(loss)


def curves_from_progress(train_losses: Sequence[float], val_losses: Sequence[Sequence[float]],
                         iterations_per_epoch: float, best: Sequence[float] | None = None) -> LossCurves:
    """The curves of a run's progress: train_losses one per iteration from 1, val_losses
    [[iteration, loss], ...], `best` an (iteration, loss) pair (default: the lowest validation loss)."""
    if not iterations_per_epoch > 0:
        raise UserError(f"iterations per epoch must be positive, not {iterations_per_epoch}")
    try:
        losses = np.asarray(train_losses, dtype=float).reshape(-1)
        val = points(val_losses) / [iterations_per_epoch, 1.0]
        best_epoch = None if best is None else (float(best[0]) / iterations_per_epoch, float(best[1]))
    except (TypeError, ValueError):
        raise UserError("the losses are not numbers (train_losses: [loss, ...], "
                        "val_losses: [[iteration, loss], ...])") from None
    train = np.column_stack([np.arange(1, len(losses) + 1) / iterations_per_epoch, losses])
    return LossCurves(train, val, best_epoch or best_point(val))


def rows_from_checkpoint(checkpoint: dict, iterations_per_epoch: float | None = None,
                         name: str = "the checkpoint") -> LossCurves:
    """The curves of a checkpoint as util.checkpoint.load_checkpoint returns it (.pt or .t7): its
    train_losses and val_losses, epochs from iterations_per_epoch (default: iteration / epoch).
    `name` (its path) begins the error messages."""
    train_losses, val_losses = checkpoint.get("train_losses"), checkpoint.get("val_losses")
    if not isinstance(train_losses, list) or not train_losses:
        raise UserError(f"{name} holds no training losses to plot")
    if not isinstance(val_losses, list) or any(not isinstance(v, (list, tuple)) or len(v) != 2 for v in val_losses):
        raise UserError(f"{name}: its val_losses are not [iteration, loss] pairs")
    if iterations_per_epoch is None:
        iteration, epoch = checkpoint.get("iteration"), checkpoint.get("epoch")
        if not (isinstance(iteration, (int, float)) and isinstance(epoch, (int, float)) and iteration > 0
                and epoch > 0):
            raise UserError(f"{name} does not say its iteration and epoch, so its losses cannot be placed")
        iterations_per_epoch = iteration / epoch
    try:
        return curves_from_progress(train_losses, val_losses, iterations_per_epoch)
    except UserError as error:
        raise UserError(f"{name}: {error}") from None


def rows_from_log(csv_path: str) -> LossCurves:
    """The curves of train.py's training log (cv/lm_log.csv: util.training.TrainingLog). A log being
    written may end in half a row: a last line without its newline is left out."""
    try:
        with open_regular(csv_path, "the training log") as handle:  # no device or FIFO: reads end
            text = handle.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or "not a text file"
        raise UserError(f"cannot read the training log {csv_path}: {reason}") from None
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith(("\n", "\r")):
        lines.pop()
    rows = list(csv.reader(lines))
    if not rows or tuple(rows[0]) != LOG_HEADER:
        raise UserError(f"{csv_path} is not a training log (its first line is not {','.join(LOG_HEADER)})")
    train, val = [], []
    for number, row in enumerate(rows[1:], start=2):
        try:
            epoch, train_loss, val_loss = float(row[1]), float(row[2]), row[3]
            train.append((epoch, train_loss))
            if val_loss:
                val.append((epoch, float(val_loss)))
        except (IndexError, ValueError):
            raise UserError(f"{csv_path}, line {number}: not a row of a training log") from None
    if not train:
        raise UserError(f"{csv_path} has no iterations yet")
    return LossCurves(points(train), points(val), best_point(val))


def running_mean(values: np.ndarray, half_window: int) -> np.ndarray:
    """The mean of values[i - half_window : i + half_window + 1] at each i (fewer at the ends)."""
    sums = np.concatenate([[0.0], np.cumsum(values)])
    index = np.arange(len(values))
    low, high = np.maximum(index - half_window, 0), np.minimum(index + half_window + 1, len(values))
    return (sums[high] - sums[low]) / (high - low)


def decimate(x: np.ndarray, y: np.ndarray, max_points: int = MAX_RAW_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most max_points of (x, y) for a line that keeps y's spread: beyond that, bins of
    consecutive points, each drawn as its minimum and its maximum at the bin's middle x."""
    if len(x) <= max_points:
        return x, y
    size = math.ceil(len(x) / (max_points // 2))
    starts = np.arange(0, len(x), size)
    middle = np.add.reduceat(x, starts) / np.diff(np.append(starts, len(x)))
    low, high = np.minimum.reduceat(y, starts), np.maximum.reduceat(y, starts)
    return np.repeat(middle, 2), np.column_stack([low, high]).ravel()


# ---- drawing ----------------------------------------------------------------------------------------

def draw_loss_plot(path: str, train: ArrayLike, val: ArrayLike, best: Point | None, title: str) -> None:
    """Draw the curves (x: epoch, y: loss in nats per character) and write them to `path` as a PNG,
    replacing any file there; train and val are (epoch, loss) pairs (lists or n x 2 arrays). A
    folder that cannot be written to is a UserError."""
    import_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=SIZE_INCHES, dpi=DPI)
    figure.subplots_adjust(**MARGINS)  # fixed: a layout engine would cost a second drawing
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    _draw_train(axes, train)
    val_rows = points(val)
    val_rows = val_rows[np.isfinite(val_rows[:, 1])]
    if len(val_rows):
        axes.plot(val_rows[:, 0], val_rows[:, 1], color=VAL_COLOR, linewidth=1.8, label="validation loss",
                  marker="o" if len(val_rows) <= 60 else None, markersize=3.5, zorder=3)
    if best is not None:
        _mark_best(axes, best)
    axes.set_title(title)
    axes.set_xlabel("epoch")
    axes.set_ylabel("loss (nats per character)")
    axes.grid(True, color="#e0e0e0", linewidth=0.8)
    axes.set_xlim(left=0)
    perplexity = axes.secondary_yaxis("right", functions=(_exp, _log))
    ticks = perplexity_ticks(*axes.get_ylim())
    perplexity.set_yticks(ticks, [f"{tick:g}" for tick in ticks])
    perplexity.set_ylabel("perplexity (e^loss)")
    figure.legend(loc="lower center", ncols=2, frameon=False)  # below the axes: it covers no curve
    _write_png(figure, path)


def import_matplotlib() -> None:
    """Import matplotlib, which reads MPLBACKEND on its first import and fails on a name it does not
    know: the plot is drawn on an Agg canvas whatever the backend, so that setting is hidden from it."""
    if "matplotlib" in sys.modules:
        return
    saved = os.environ.pop("MPLBACKEND", None)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError("cannot draw the loss plot: matplotlib is not installed "
                        "(pip install -r requirements.txt)") from None
    finally:
        if saved is not None:
            os.environ["MPLBACKEND"] = saved


PERPLEXITY_STEPS = (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8)  # times a power of ten: the perplexity ticks' values


def perplexity_ticks(low_loss: float, high_loss: float, count: int = 8) -> list[float]:
    """Round perplexities between e^low_loss and e^high_loss, at most about `count` of them: over a
    narrow range (perplexity nearly linear in the loss) matplotlib's evenly spaced ones, else values of
    PERPLEXITY_STEPS spaced at least (high_loss - low_loss) / count apart on the loss axis."""
    from matplotlib.ticker import MaxNLocator

    low_loss, high_loss = max(low_loss, -40.0), min(high_loss, 40.0)
    if high_loss - low_loss < math.log(4):
        values = MaxNLocator(count).tick_values(math.exp(low_loss), math.exp(high_loss))
        return [float(v) for v in values if low_loss <= math.log(max(v, 1e-300)) <= high_loss]
    gap, ticks = (high_loss - low_loss) / count, list[float]()
    for power in range(math.floor(low_loss / math.log(10)) - 1, math.ceil(high_loss / math.log(10)) + 1):
        for step in PERPLEXITY_STEPS:
            value = step * 10.0 ** power
            if low_loss <= math.log(value) <= high_loss and (not ticks or math.log(value / ticks[-1]) >= gap):
                ticks.append(value)
    return ticks


def _exp(loss: ArrayLike) -> ArrayLike:
    return np.exp(np.clip(loss, -50, 50))


def _log(perplexity: ArrayLike) -> ArrayLike:
    return np.log(np.maximum(perplexity, 1e-300))


def _draw_train(axes: Axes, train: ArrayLike) -> None:
    """The raw training loss, thin and pale, and its running mean (SMOOTH_FRACTION of the run each side)."""
    rows = points(train)
    rows = rows[np.isfinite(rows[:, 1])]
    if not len(rows):
        return
    x, y = rows[:, 0], rows[:, 1]
    raw_x, raw_y = decimate(x, y)
    axes.plot(raw_x, raw_y, color=TRAIN_RAW_COLOR, linewidth=0.6, label="training loss (each iteration)", zorder=1)
    half_window = max(1, round(len(y) * SMOOTH_FRACTION))
    smooth_x, smooth_y = x, running_mean(y, half_window)
    if len(x) > MAX_RAW_POINTS:
        step = math.ceil(len(x) / MAX_RAW_POINTS)
        smooth_x, smooth_y = np.append(x[::step], x[-1]), np.append(smooth_y[::step], smooth_y[-1])
    axes.plot(smooth_x, smooth_y, color=TRAIN_COLOR, linewidth=1.8,
              label=f"training loss (mean of {2 * half_window + 1} iterations)", zorder=2)


def _mark_best(axes: Axes, best: Point) -> None:
    """A star on the best validation point and a dotted line down to its epoch, labelled in the legend."""
    epoch, loss = best
    axes.axvline(epoch, color=BEST_COLOR, linestyle=":", linewidth=1.2, zorder=0)
    axes.plot([epoch], [loss], linestyle="none", marker="*", markersize=16, color=BEST_COLOR,
              markeredgecolor="black", markeredgewidth=0.6, zorder=4,
              label=f"best validation loss: {loss:.4f} at epoch {epoch:.2f} "
                    f"(perplexity {math.exp(min(loss, 700)):.2f})")


def _write_png(figure: Figure, path: str) -> None:
    """Save to a temporary file beside `path`, then rename it into place."""
    with replaced_atomically(path, f"the loss plot {path}") as temporary, open(temporary, "wb") as handle:
        figure.savefig(handle, format="png", dpi=DPI)
