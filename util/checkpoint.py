"""Checkpoints: the format's one owner. Named for their epoch, built and restored here, written
atomically, loaded without running any code.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only, so that
`torch.load(path, weights_only=True)` reads it; tensors are stored on the CPU:

    format        "char-rnn-pytorch 1"
    model         the shape: {model_type, vocab_size, rnn_size, num_layers, dropout}
    state_dict    CharRNN's weights, LSTM gates in char-rnn's order i, f, o, g
    vocab         {tokens: [str, ...] (id order), encoding: "utf-8", "bytes", ...}
    opt           every train.py option as the run had it: the command line over the defaults
                  (for -resume, over the resumed checkpoint's opt)
    run           the run's own facts: {data_source: "h5" or "data_dir"}
    iteration     the last completed iteration; epoch = iteration / training batches per epoch
    train_losses  [loss, ...], one per iteration from 1
    val_losses    [[iteration, loss], ...], one per validation
    val_loss      this checkpoint's validation loss, or None (no val split, or saved on a signal)
    resume        what -resume needs besides the weights (absent from a Torch7 file's conversion):
                  {optimizer: RMSprop's state_dict, learning_rate, loader_position (the next
                  training batch), hidden (the carried state, one tensor per state part),
                  rng, cuda_rng (None off CUDA), loss0, seconds}

Checkpoints written before `run` existed kept data_source in opt; they load and resume alike.
Torch7 char-rnn checkpoints (.t7) are converted through util.torch7 into the same layout.
"""
import csv
import os
import pickle
import shutil
from dataclasses import dataclass

import torch

from model import LAYERS, CharRNN, State
from util.data import BatchLoader
from util.errors import UserError
from util.files import replaced_atomically
from util.training import Progress
from util.vocab import Vocab

FORMAT = "char-rnn-pytorch 1"
ZIP_MAGIC = b"PK\x03\x04"
RESUME_KEYS = ("optimizer", "learning_rate", "loader_position", "hidden", "rng", "cuda_rng", "loss0", "seconds")


def checkpoint_path(checkpoint_dir: str, savefile: str, iteration: int, iterations_per_epoch: int) -> str:
    """cv/lm_epoch30.pt at the end of epoch 30; cv/lm_epoch30.47.pt in the middle of an epoch, with
    as many decimals as the epoch's iteration count has digits (at least two), so that no two
    iterations share a name (1/iterations_per_epoch is more than a unit of the last decimal)."""
    prefix = f"lm_{savefile}_" if savefile else "lm_"
    if iteration % iterations_per_epoch == 0:
        epoch = str(iteration // iterations_per_epoch)
    else:
        decimals = max(2, len(str(iterations_per_epoch)))
        epoch = f"{iteration / iterations_per_epoch:.{decimals}f}"
    return os.path.join(checkpoint_dir, f"{prefix}epoch{epoch}.pt")


def log_path(checkpoint_dir: str, savefile: str) -> str:
    return os.path.join(checkpoint_dir, f"lm_{savefile}_log.csv" if savefile else "lm_log.csv")


def best_path(checkpoint_dir: str, savefile: str) -> str:
    """cv/lm_best.pt: the run's checkpoint with the lowest validation loss so far."""
    return os.path.join(checkpoint_dir, f"lm_{savefile}_best.pt" if savefile else "lm_best.pt")


def index_path(checkpoint_dir: str, savefile: str) -> str:
    """cv/lm_index.csv: one row per checkpoint of the run that is on disk (see IndexRow)."""
    return os.path.join(checkpoint_dir, f"lm_{savefile}_index.csv" if savefile else "lm_index.csv")


# ---- the index of a run's checkpoints ---------------------------------------------------------------

INDEX_HEADER = ("checkpoint", "epoch", "iteration", "train_loss", "val_loss")


@dataclass
class IndexRow:
    """A row of cv/lm_index.csv: a checkpoint's file name (in the index's folder) and its numbers;
    the best checkpoint (lm_best.pt) has a row of its own, with its iteration's numbers."""
    checkpoint: str
    epoch: float
    iteration: int
    train_loss: float
    val_loss: float | None  # None: saved without validation (no val split, or on a stop request)

    def fields(self) -> list[str]:
        return [self.checkpoint, f"{self.epoch:.4f}", str(self.iteration), f"{self.train_loss:.8f}",
                "" if self.val_loss is None else f"{self.val_loss:.8f}"]


def read_index(path: str) -> list[IndexRow]:
    """The rows of an index file; [] when there is none."""
    if not os.path.exists(path):
        return []
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        if not rows or tuple(rows[0]) != INDEX_HEADER:
            raise ValueError("not a checkpoint index")
        return [IndexRow(name, float(epoch), int(iteration), float(train), float(val) if val else None)
                for name, epoch, iteration, train, val in rows[1:]]
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read the checkpoint index {path}: {error}") from None


def write_index(path: str, rows: list[IndexRow]) -> None:
    """Replace the index file whole (a temporary file renamed into place)."""
    with replaced_atomically(path, f"the checkpoint index {path}") as temporary, \
            open(temporary, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([INDEX_HEADER, *(row.fields() for row in rows)])


class RunCheckpoints:
    """A run's files in -checkpoint_dir besides the log: its checkpoints, cv/lm_best.pt (a copy of
    the one with the lowest validation loss so far) and the index cv/lm_index.csv listing them; with
    keep > 0 only the `keep` most recent checkpoints and the best one's stay on disk (-keep)."""

    def __init__(self, checkpoint_dir: str, savefile: str, keep: int, resumed_at: int | None):
        self.folder, self.savefile, self.keep = checkpoint_dir, savefile, keep
        self.index = index_path(checkpoint_dir, savefile)
        self.best = best_path(checkpoint_dir, savefile)
        self.rows: list[IndexRow] = []  # a new run starts the index afresh, as it does the log
        if resumed_at is not None:  # the rows up to the checkpoint resumed from, of files still there
            self.rows = [row for row in read_index(self.index) if row.iteration <= resumed_at
                         and os.path.exists(os.path.join(checkpoint_dir, row.checkpoint))]

    def added(self, path: str, row: IndexRow, is_best: bool) -> None:
        """Checkpoint `path` (row: its numbers) was written; is_best: its val loss is the lowest yet."""
        names = {os.path.basename(path)} | ({os.path.basename(self.best)} if is_best else set())
        self.rows = [r for r in self.rows if r.checkpoint not in names]
        self.rows.append(row)
        if is_best:
            copy_checkpoint(path, self.best)
            self.rows.append(IndexRow(os.path.basename(self.best), row.epoch, row.iteration, row.train_loss,
                                      row.val_loss))
        if self.keep > 0:
            self._prune()
        write_index(self.index, self.rows)

    def _prune(self) -> None:
        """Remove all but the `keep` most recent checkpoints and the best one's."""
        best_name = os.path.basename(self.best)
        best_iteration = next((r.iteration for r in self.rows if r.checkpoint == best_name), None)
        epochs = sorted((r for r in self.rows if r.checkpoint != best_name), key=lambda r: r.iteration)
        for row in epochs[:-self.keep]:
            if row.iteration != best_iteration:
                try:
                    os.remove(os.path.join(self.folder, row.checkpoint))
                except FileNotFoundError:
                    pass
                except OSError as error:
                    raise UserError(f"cannot remove {row.checkpoint} (-keep {self.keep}): {error.strerror}") from None
                self.rows.remove(row)


def copy_checkpoint(source: str, destination: str) -> None:
    """`destination` becomes a copy of `source` at once (a hard link, else a copy, renamed into place)."""
    with replaced_atomically(destination, destination, "; earlier checkpoints are unchanged") as temporary:
        try:
            os.link(source, temporary)
        except OSError:  # a file system without hard links
            shutil.copyfile(source, temporary)


# ---- building and restoring ------------------------------------------------------------------------

def build_checkpoint(model: CharRNN, vocab: Vocab, opt: dict, run: dict, progress: Progress,
                     iterations_per_epoch: int, val_loss: float | None, training: dict) -> dict:
    """The checkpoint of `progress.iteration`; `training` is training_state()'s resume section."""
    return {
        "format": FORMAT, "model": model.shape(), "state_dict": to_cpu(model.state_dict()),
        "vocab": {"tokens": vocab.tokens, "encoding": vocab.encoding}, "opt": dict(opt), "run": dict(run),
        "iteration": progress.iteration, "epoch": progress.iteration / iterations_per_epoch,
        "train_losses": progress.train_losses, "val_losses": progress.val_losses, "val_loss": val_loss,
        "resume": training,
    }


def training_state(optimizer: torch.optim.Optimizer, loader_position: int, hidden: State,
                   device: torch.device, progress: Progress) -> dict:
    """The resume section: optimizer, data position, carried state and random-number state."""
    return {"optimizer": to_cpu(optimizer.state_dict()), "learning_rate": optimizer.param_groups[0]["lr"],
            "loader_position": loader_position, "hidden": to_cpu(hidden), "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state() if device.type == "cuda" else None,
            "loss0": progress.loss0, "seconds": progress.seconds}


def restore_training(checkpoint: dict, optimizer: torch.optim.Optimizer, loader: BatchLoader,
                     device: torch.device, learning_rate: float | None, decay_rate: float) -> tuple[Progress, State]:
    """Put a -resume checkpoint's training state back: the optimizer (its learning rate replaced when
    `learning_rate` is given, its decay rate always the run's), the loader's place and the random
    numbers. Returns the run's progress and the carried state (all streams, on `device`)."""
    saved = checkpoint["resume"]
    optimizer.load_state_dict(saved["optimizer"])
    for group in optimizer.param_groups:  # load_state_dict brought back the saved hyperparameters
        group["lr"] = saved["learning_rate"] if learning_rate is None else learning_rate
        group["alpha"] = decay_rate
    loader.position["train"] = saved["loader_position"]
    torch.set_rng_state(saved["rng"])
    if device.type == "cuda" and saved.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(saved["cuda_rng"])
    progress = Progress(checkpoint["iteration"], list(checkpoint["train_losses"]),
                        [list(v) for v in checkpoint["val_losses"]], saved["loss0"], saved["seconds"])
    return progress, tuple(part.to(device) for part in saved["hidden"])


def require_training_state(checkpoint: dict, path: str) -> None:
    """A checkpoint that -resume can continue: one holding a complete resume section."""
    saved = checkpoint.get("resume")
    if saved is None:
        raise UserError(f"{path} holds weights only (no training state); use -init_from")
    missing = [key for key in RESUME_KEYS if key not in saved] if isinstance(saved, dict) else ["resume"]
    if missing or "data_source" not in run_facts(checkpoint):
        raise UserError(f"{path}: its training state is incomplete ({', '.join(missing) or 'data_source'} "
                        f"missing); use -init_from to start a new run from its weights")


def run_facts(checkpoint: dict) -> dict:
    """The run's facts; older checkpoints kept them in opt."""
    if isinstance(checkpoint.get("run"), dict):
        return checkpoint["run"]
    opt = checkpoint.get("opt") or {}
    return {"data_source": opt["data_source"]} if "data_source" in opt else {}


def to_cpu(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_cpu(v) for v in value]
    return value


# ---- writing and reading ----------------------------------------------------------------------------

def save_checkpoint(path: str, checkpoint: dict) -> None:
    """Write to a temporary file beside `path`, flush it to disk, then rename: a checkpoint
    appears whole or not at all, even if the process dies mid-write."""
    folder = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            torch.save(checkpoint, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        directory = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except (OSError, RuntimeError) as error:  # torch.save reports a full disk as a RuntimeError
        if os.path.exists(temporary):
            os.remove(temporary)
        cause = error if isinstance(error, OSError) else error.__context__
        reason = getattr(cause, "strerror", None) or "the disk may be full"
        raise UserError(f"cannot write checkpoint {path}: {reason}; earlier checkpoints are unchanged") from None


def load_checkpoint(path: str) -> dict:
    """Read a .pt (this project) or .t7 (Torch7 char-rnn) checkpoint and check its structure;
    any problem is a UserError."""
    if os.path.isdir(path):
        raise UserError(f"{path} is a folder, not a checkpoint file")
    if not os.path.isfile(path):
        raise UserError(f"File {path} does not exist. Are you sure you didn't forget to prepend cv/ ?")
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        raise UserError(f"cannot read checkpoint {path}: {error.strerror}") from None
    return validate(_load_torch7(path) if path.endswith(".t7") else read_pt(path), path)


def read_pt(path: str, mmap: bool = False) -> object:
    """A torch.save file's contents, tensors and plain data only (nothing in the file can run code);
    with mmap the tensors stay on disk, mapped, until used. Any problem is a UserError."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as error:
        raise UserError(f"cannot read checkpoint {path}: {error.strerror}") from None
    if magic != ZIP_MAGIC:  # torch.save's format is a zip archive
        raise UserError(f"{path} is not a checkpoint (not a file written by train.py)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        raise UserError(f"{path} holds objects other than tensors and plain data; refusing to load it, "
                        f"since unpickling them could run code from the file") from None
    except Exception as error:  # torch.load reports damaged files with many exception types
        raise UserError(f"{path} is not a readable checkpoint (truncated or damaged: "
                        f"{type(error).__name__})") from None


def validate(checkpoint: object, path: str) -> dict:
    """The checkpoint, once the parts every reader uses are as the schema above describes them."""
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise UserError(f"{path} is not a char-rnn checkpoint")
    shape, weights, vocab = checkpoint.get("model"), checkpoint.get("state_dict"), checkpoint.get("vocab")
    if not (isinstance(shape, dict) and isinstance(weights, dict) and isinstance(vocab, dict)
            and isinstance(vocab.get("tokens"), list) and isinstance(vocab.get("encoding"), str)):
        raise UserError(f"{path} is not a complete char-rnn checkpoint (model, state_dict or vocab missing)")
    if shape.get("model_type") not in LAYERS:
        raise UserError(f"{path}: unknown model type {shape.get('model_type')!r}")
    for name, tensor in weights.items():
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise UserError(f"{path}: weight {name} is not a tensor of numbers")
        if not torch.isfinite(tensor).all():
            raise UserError(f"checkpoint {path} has NaN or infinite weights ({name}); use an earlier checkpoint")
    return checkpoint


def _load_torch7(path: str) -> dict:
    from util.torch7 import load_char_rnn_checkpoint
    try:
        t7 = load_char_rnn_checkpoint(path)
    except OSError as error:
        raise UserError(f"cannot read checkpoint {path}: {error.strerror}") from None
    except ValueError as error:
        raise UserError(str(error)) from None
    return {
        "format": FORMAT,
        "model": {"model_type": t7["model_type"], "vocab_size": len(t7["tokens"]), "rnn_size": t7["rnn_size"],
                  "num_layers": t7["num_layers"], "dropout": t7["dropout"]},
        "state_dict": t7["state_dict"],
        "vocab": {"tokens": t7["tokens"], "encoding": t7["encoding"]},
        "opt": t7["opt"], "run": {"data_source": "data_dir"},  # char-rnn read its -data_dir only
        "iteration": t7["iteration"], "epoch": t7["epoch"],
        "train_losses": t7["train_losses"], "val_losses": t7["val_losses"], "val_loss": t7["val_loss"],
    }


def checkpoint_vocab(checkpoint: dict) -> Vocab:
    return Vocab(checkpoint["vocab"]["tokens"], checkpoint["vocab"]["encoding"])


def model_from_checkpoint(checkpoint: dict, path: str, dropout: float | None = None) -> CharRNN:
    """The model a checkpoint describes, with its weights (dropout may be replaced)."""
    shape = checkpoint["model"]
    model = CharRNN(shape["model_type"], shape["vocab_size"], shape["rnn_size"], shape["num_layers"],
                    shape["dropout"] if dropout is None else dropout)
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except (RuntimeError, KeyError) as error:
        detail = " ".join(line.strip() for line in str(error).splitlines()[1:3])
        raise UserError(f"{path}: the weights do not fit the model it describes ({detail})") from None
    return model
