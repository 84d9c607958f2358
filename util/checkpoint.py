"""Checkpoints: the format's one owner. Named for their epoch, built and restored here, written
atomically, loaded without running any code, and checked against the schema below before anything
is built from them.

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
                  {optimizer: RMSprop's state_dict (LSTM gates in state_dict's order), learning_rate,
                  loader_position (the next training batch), hidden (the carried state, one tensor
                  per state part), rng, cuda_rng (None off CUDA), loss0, seconds}

Checkpoints written before `run` existed kept data_source in opt; they load and resume alike.
Torch7 char-rnn checkpoints (.t7) are converted through util.torch7 into the same layout.

What a file must be to load (read_pt, validate; else a UserError naming it). The rules bound what
loading costs: nothing is read, built or scanned that is larger than the file.

- the zip archive: every entry stored, as torch.save writes them, and the entries' sizes together
  no more than the file's, so torch.load reads no more than the file holds (nothing inflates);
- model: model_type one of model.LAYERS; vocab_size, rnn_size, num_layers positive ints; dropout
  a number in [0, 1);
- state_dict: exactly the weights of that model: the names and shapes of CharRNN(model) built on
  the meta device (which allocates nothing), once its sizes are no larger than the tensors present;
  each a contiguous float32 CPU tensor (not sparse, quantized, complex, meta or an expanded view),
  all finite;
- vocab: vocab_size distinct single-character tokens, bytes (0..255) in a "bytes" vocabulary,
  another encoding one Python can encode text in;
- opt: option names to plain values (None, bool, int, float, str); each value's type and range are
  its option's, checked by the script that takes the options up (train.py -resume);
- run: absent or a dict; data_source, there or in an old opt, "h5" or "data_dir" where given;
- iteration a count, epoch a finite number >= 0, train_losses finite numbers, val_losses
  [iteration, finite loss] pairs, val_loss None or a finite number.

-resume needs more of its section (require_training_state): learning_rate positive and finite;
loader_position a count, within the data's batches (restore_training); loss0 None or finite;
seconds finite, >= 0; one train loss per iteration; hidden one contiguous finite float32 tensor per
state part, num_layers x batch_size x rnn_size; the optimizer's per-parameter state that of
util.training.rmsprop's optimizer (the same names and dtypes, the parameters' shapes); rng a state
torch.set_rng_state takes; cuda_rng None or a byte tensor. The optimizer's settings (eps,
momentum, ...) are not taken from the file: they stay the run's, as rmsprop makes them.
"""
import csv
import functools
import math
import os
import pickle
import shutil
import warnings
import zipfile
from dataclasses import dataclass
from typing import TypeGuard

import torch

from model import LAYERS, CharRNN, State
from model.lstm import swap_gates
from util.data import BatchLoader
from util.errors import UserError
from util.files import open_regular, replaced_atomically
from util.options import shown
from util.training import Progress, rmsprop
from util.vocab import BYTES, Vocab, check_text_encoding, token_problem

FORMAT = "char-rnn-pytorch 1"
ZIP_MAGIC = b"PK\x03\x04"
RESUME_KEYS = ("optimizer", "learning_rate", "loader_position", "hidden", "rng", "cuda_rng", "loss0", "seconds")
DATA_SOURCES = ("h5", "data_dir")
PLAIN = (type(None), bool, int, float, str)  # what an opt value may be


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


def training_state(model: CharRNN, optimizer: torch.optim.Optimizer, loader_position: int, hidden: State,
                   device: torch.device, progress: Progress) -> dict:
    """The resume section: optimizer, data position, carried state and random-number state."""
    kept = optimizer.state_dict()
    saved = {"state": in_other_gate_order(kept["state"], model), "param_groups": kept["param_groups"]}
    return {"optimizer": to_cpu(saved), "learning_rate": optimizer.param_groups[0]["lr"],
            "loader_position": loader_position, "hidden": to_cpu(hidden), "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state() if device.type == "cuda" else None,
            "loss0": progress.loss0, "seconds": progress.seconds}


def in_other_gate_order(per_parameter: dict, model: CharRNN) -> dict:
    """An optimizer's per-parameter state ({index: {name: value}}) with the LSTM's gate rows turned
    from the parameters' order to state_dict()'s, or back (CharRNN.swapped_rows): a checkpoint keeps
    the optimizer's state in the order of its weights, char-rnn's, whatever the model's own."""
    swapped = model.swapped_rows()
    return {index: {name: swap_gates(value) if swapped[index] and isinstance(value, torch.Tensor) and value.dim()
                    else value for name, value in values.items()}
            for index, values in per_parameter.items()}


def restore_training(checkpoint: dict, path: str, model: CharRNN, optimizer: torch.optim.Optimizer,
                     loader: BatchLoader, device: torch.device,
                     learning_rate: float | None) -> tuple[Progress, State]:
    """Put a -resume checkpoint's training state (require_training_state's) back: the optimizer's
    per-parameter state, with its learning rate (replaced when `learning_rate` is given), the
    loader's place and the random numbers. The optimizer's other settings stay the run's (rmsprop's,
    alpha -decay_rate's): the file's are those for a file train.py wrote, and no file should set
    them. Returns the run's progress and the carried state (all streams, on `device`)."""
    saved = checkpoint["resume"]
    check_loader_position(saved["loader_position"], checkpoint["iteration"], loader, path)
    settings = optimizer.state_dict()["param_groups"]  # the run's, parameters as indices
    optimizer.load_state_dict({"state": in_other_gate_order(saved["optimizer"]["state"], model),
                               "param_groups": settings})
    for group in optimizer.param_groups:
        group["lr"] = saved["learning_rate"] if learning_rate is None else learning_rate
    loader.position["train"] = saved["loader_position"]
    torch.set_rng_state(saved["rng"])
    if device.type == "cuda" and saved["cuda_rng"] is not None:
        try:
            torch.cuda.set_rng_state(saved["cuda_rng"])
        except RuntimeError:  # its size or contents are not this machine's CUDA generator's
            raise UserError(f"{path}: its CUDA random-number state (cuda_rng) does not fit this machine's "
                            f"CUDA generator") from None
    progress = Progress(checkpoint["iteration"], list(checkpoint["train_losses"]),
                        [list(v) for v in checkpoint["val_losses"]], saved["loss0"], saved["seconds"])
    return progress, tuple(part.to(device) for part in saved["hidden"])


def check_loader_position(position: int, iteration: int, loader: BatchLoader, path: str) -> None:
    """The next training batch must be one of the data's: within an epoch's batches for the
    consecutive scheme, the count of batches handed out (one per iteration) for the random one."""
    if loader.scheme == "consecutive" and position >= loader.n_batches("train"):
        raise UserError(f"{path}: its loader_position {position} is past the {loader.n_batches('train')} "
                        f"training batches of an epoch of this data")
    if loader.scheme != "consecutive" and position > iteration:
        raise UserError(f"{path}: its loader_position {position} counts more batches than its {iteration} "
                        f"iterations")


def require_training_state(checkpoint: dict, path: str) -> None:
    """A checkpoint that -resume can continue: one holding a complete resume section that fits its
    model and its own progress (the module docstring's rules)."""
    saved = checkpoint.get("resume")
    if saved is None:
        raise UserError(f"{path} holds weights only (no training state); use -init_from")
    missing = [key for key in RESUME_KEYS if key not in saved] if isinstance(saved, dict) else ["resume"]
    if missing or "data_source" not in run_facts(checkpoint):
        raise UserError(f"{path}: its training state is incomplete ({', '.join(missing) or 'data_source'} "
                        f"missing); use -init_from to start a new run from its weights")
    model = described_model(checkpoint["model"], checkpoint["state_dict"])
    assert model is not None, "validate() found the weights to fit the model"
    problem = (counters_problem(checkpoint, saved) or hidden_problem(saved["hidden"], model, checkpoint["opt"])
               or optimizer_problem(saved["optimizer"], model) or rng_problem(saved))
    if problem:
        raise UserError(f"{path}: its training state is damaged ({problem}); use -init_from to start a new run "
                        f"from its weights")


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
    except (OSError, RuntimeError) as error:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise UserError(f"cannot write checkpoint {path}: {write_failure(error)}; earlier checkpoints are "
                        f"unchanged") from None


def write_failure(error: OSError | RuntimeError) -> str:
    """Why torch.save failed: an OSError's reason (a full disk, no permission), where there is one;
    torch's zip writer reports a short write as a RuntimeError of its own without one, which is a
    full disk; any other error (a RecursionError, which is a RuntimeError, pickling a value nested
    too deep) by its name and first line."""
    cause = error if isinstance(error, OSError) else error.__context__
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    if "inline_container" in str(error) or "PytorchStreamWriter" in str(error):
        return "the disk may be full"
    return f"{type(error).__name__}: {str(error).partition(chr(10))[0][:200]}"


def load_checkpoint(path: str) -> dict:
    """Read a .pt (this project) or .t7 (Torch7 char-rnn) checkpoint and check its structure;
    any problem is a UserError."""
    if os.path.isdir(path):
        raise UserError(f"{path} is a folder, not a checkpoint file")
    with open_regular(path, "checkpoint",
                      missing=f"File {path} does not exist. Are you sure you didn't forget to prepend cv/ ?"):
        pass  # the file opens: the readers below may open it again
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
    check_archive(path)
    try:
        with warnings.catch_warnings():  # torch.load warns of some damage before it raises: one line
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        raise UserError(f"{path} holds objects other than tensors and plain data; refusing to load it, "
                        f"since unpickling them could run code from the file") from None
    except Exception as error:  # torch.load reports damaged files with many exception types
        raise UserError(f"{path} is not a readable checkpoint (truncated or damaged: "
                        f"{type(error).__name__})") from None


def check_archive(path: str) -> None:
    """torch.save writes its zip entries stored, not compressed: refusing any other, and entries that
    claim more bytes together than the file has, torch.load reads no more than the file holds (a
    small file cannot inflate into gigabytes, nor overlapping entries repeat its bytes)."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except Exception as error:  # zipfile reports damage with many exception types
        raise UserError(f"{path} is not a readable checkpoint (truncated or damaged: "
                        f"{type(error).__name__})") from None
    stored = all(e.compress_type == zipfile.ZIP_STORED and e.compress_size == e.file_size for e in entries)
    if not stored or sum(e.file_size for e in entries) > os.path.getsize(path):
        raise UserError(f"{path} is not a checkpoint written by train.py: its zip entries are compressed or "
                        f"larger than the file; refusing to inflate it")


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
    """The model a checkpoint (load_checkpoint's) describes, with its weights (dropout may be replaced)."""
    shape = checkpoint["model"]
    try:
        model = CharRNN(shape["model_type"], shape["vocab_size"], shape["rnn_size"], shape["num_layers"],
                        shape["dropout"] if dropout is None else dropout)
        model.load_state_dict(checkpoint["state_dict"])  # validate() found them to fit
    except (MemoryError, RuntimeError) as error:
        if not out_of_memory(error):
            raise
        numbers = sum(t.numel() for t in checkpoint["state_dict"].values())
        raise UserError(f"{path}: not enough memory for its model ({numbers} weights)") from None
    return model


def out_of_memory(error: BaseException) -> bool:
    """Python's MemoryError, or the RuntimeError of torch's CPU allocator (a process whose memory is
    capped, say)."""
    return isinstance(error, MemoryError) or "can't allocate memory" in str(error)


# ---- the schema (the module docstring's rules) -------------------------------------------------------

def validate(checkpoint: object, path: str) -> dict:
    """The checkpoint, once every part the scripts read is as the module docstring's rules say:
    checked before anything is built from it, each check bounded by the ones before."""
    if not (isinstance(checkpoint, dict) and isinstance(checkpoint.get("format"), str)
            and checkpoint["format"] == FORMAT):
        raise UserError(f"{path} is not a char-rnn checkpoint")
    missing = [key for key in ("model", "state_dict", "vocab", "opt") if not isinstance(checkpoint.get(key), dict)]
    if missing:
        raise UserError(f"{path} is not a complete char-rnn checkpoint (missing or not a dict: {', '.join(missing)})")
    check_shape(checkpoint["model"], path)
    check_weights(checkpoint["state_dict"], checkpoint["model"], path)
    check_vocab(checkpoint["vocab"], checkpoint["model"]["vocab_size"], path)
    check_opt_and_run(checkpoint, path)
    check_progress(checkpoint, path)
    return checkpoint


def finite_number(value: object) -> TypeGuard[int | float]:
    """An int or a finite float (not a bool, not a NaN)."""
    return type(value) is int or (type(value) is float and math.isfinite(value))


def count(value: object) -> TypeGuard[int]:
    return type(value) is int and value >= 0


def dense(value: object, dtype: torch.dtype) -> TypeGuard[torch.Tensor]:
    """A CPU tensor of `dtype` whose numbers lie in order in its storage (not sparse, meta, quantized or
    an expanded view): then it holds no more of them than torch.load read from the file."""
    return (isinstance(value, torch.Tensor) and value.layout == torch.strided and value.device.type == "cpu"
            and value.dtype == dtype and value.is_contiguous())


def dims(shape: torch.Size | tuple[int, ...]) -> str:
    return " x ".join(map(str, shape)) or "a scalar"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def tensor_kind(value: object) -> str:
    """What dense() found a value to be, for a message."""
    if not isinstance(value, torch.Tensor):
        return shown(value)
    if value.layout != torch.strided or value.device.type != "cpu":
        return f"a {str(value.layout).removeprefix('torch.')} tensor on {value.device.type}"
    return f"a tensor of {dtype_name(value.dtype)}{'' if value.is_contiguous() else ', not contiguous'}"


def check_shape(shape: dict, path: str) -> None:
    model_type = shape.get("model_type")
    if not (isinstance(model_type, str) and model_type in LAYERS):
        raise UserError(f"{path}: unknown model type {shown(model_type)}")
    for name in ("vocab_size", "rnn_size", "num_layers"):
        if not (count(shape.get(name)) and shape[name] > 0):
            raise UserError(f"{path}: its model's {name} must be a positive integer, not {shown(shape.get(name))}")
    dropout = shape.get("dropout")
    if not (finite_number(dropout) and 0 <= dropout < 1):
        raise UserError(f"{path}: its model's dropout must be in [0, 1), not {shown(dropout)}")


def check_weights(weights: dict, shape: dict, path: str) -> None:
    """Exactly the weights of the model `shape` describes, checked in an order where each step bounds
    the next: dense tensors hold no more numbers than the file; the model is described (on the meta
    device) only when its sizes are no larger than theirs; only tensors of its shapes are scanned."""
    for name, tensor in weights.items():
        if not isinstance(name, str):
            raise UserError(f"{path}: its state_dict names a weight {shown(name)}, not by a text")
        if not dense(tensor, torch.float32):
            raise UserError(f"{path}: weight {shown(name)} is not a dense float32 tensor (it is "
                            f"{tensor_kind(tensor)})")
    problem = fit_problem(weights, shape)
    if problem:
        raise UserError(f"{path}: the weights do not fit the model it describes ({problem})")
    for name, tensor in weights.items():
        if not torch.isfinite(tensor).all():
            raise UserError(f"checkpoint {path} has NaN or infinite weights ({name}); use an earlier checkpoint")


def described_model(shape: dict, weights: dict) -> CharRNN | None:
    """The model `shape` describes, built on the meta device (shapes, no memory), if its sizes can be
    those of `weights`: no more layers than tensors, no size above all their numbers together; else
    None."""
    numbers = sum(t.numel() for t in weights.values())
    if shape["num_layers"] > len(weights) or max(shape["vocab_size"], shape["rnn_size"]) > numbers:
        return None
    try:
        with torch.device("meta"):
            return CharRNN(shape["model_type"], shape["vocab_size"], shape["rnn_size"], shape["num_layers"])
    except RuntimeError:  # a weight of more bytes than 64 bits count (from weights of 3 GB and more)
        return None


def fit_problem(weights: dict, shape: dict) -> str | None:
    """How the weights differ from those of the model `shape` describes (None: they are the same)."""
    model = described_model(shape, weights)
    if model is None:
        return (f"its {shape['model_type']} of {shown(shape['num_layers'])} x {shown(shape['rnn_size'])} over "
                f"{shown(shape['vocab_size'])} tokens is larger than its {len(weights)} tensors")
    expected = {name: tensor.shape for name, tensor in model.state_dict().items()}
    missing = [name for name in expected if name not in weights]
    if missing:
        return f"{missing[0]} missing"
    unexpected = [name for name in weights if name not in expected]
    if unexpected:
        return f"unexpected weight {shown(unexpected[0])}"
    wrong = [name for name in expected if weights[name].shape != expected[name]]
    if wrong:
        return f"{wrong[0]} is {dims(weights[wrong[0]].shape)}, not {dims(expected[wrong[0]])}"
    return None


def check_vocab(vocab: dict, vocab_size: int, path: str) -> None:
    """One token per id of the model, in an encoding Python knows (or bytes), the tokens as any
    vocabulary's (util.vocab.token_problem: distinct single characters, bytes in a byte vocabulary)."""
    tokens, encoding = vocab.get("tokens"), vocab.get("encoding")
    if not isinstance(encoding, str) or not (encoding == BYTES or text_encoding(encoding)):
        raise UserError(f"{path}: its vocabulary's encoding {shown(encoding)} is neither bytes nor a text "
                        f"encoding Python knows")
    if not (isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)):
        raise UserError(f"{path}: its vocabulary's tokens are not a list of texts")
    problem = token_problem(tokens, len(set(tokens)), encoding)
    if problem:
        raise UserError(f"{path}: its vocabulary: {problem}")
    if len(tokens) != vocab_size:
        raise UserError(f"{path}: its vocabulary has {len(tokens)} tokens, its model {vocab_size}")


def text_encoding(encoding: str) -> bool:
    try:
        check_text_encoding(encoding)
    except UserError:  # its message would show the name whole
        return False
    return True


def check_opt_and_run(checkpoint: dict, path: str) -> None:
    for name, value in checkpoint["opt"].items():
        if not isinstance(name, str):
            raise UserError(f"{path}: its opt names an option {shown(name)}, not by a text")
        if not isinstance(value, PLAIN):
            raise UserError(f"{path}: its saved option {shown(name)} is {shown(value)}, not a plain value")
    run = checkpoint.get("run")
    if run is not None and not isinstance(run, dict):
        raise UserError(f"{path}: its run facts are {shown(run)}, not a dict")
    source = run_facts(checkpoint).get("data_source")
    if source is not None and not (isinstance(source, str) and source in DATA_SOURCES):
        raise UserError(f"{path}: its data_source {shown(source)} is neither h5 nor data_dir")


def check_progress(checkpoint: dict, path: str) -> None:
    iteration, epoch, val_loss = checkpoint.get("iteration"), checkpoint.get("epoch"), checkpoint.get("val_loss")
    train_losses, val_losses = checkpoint.get("train_losses"), checkpoint.get("val_losses")
    if not count(iteration):
        raise UserError(f"{path}: its iteration must be a count, not {shown(iteration)}")
    if not (finite_number(epoch) and epoch >= 0):
        raise UserError(f"{path}: its epoch must be a finite number >= 0, not {shown(epoch)}")
    if not (isinstance(train_losses, list) and all(map(finite_number, train_losses))):
        raise UserError(f"{path}: its train_losses are not a list of finite numbers")
    if not (isinstance(val_losses, list) and all(map(val_point, val_losses))):
        raise UserError(f"{path}: its val_losses are not [iteration, finite loss] pairs")
    if not (val_loss is None or finite_number(val_loss)):
        raise UserError(f"{path}: its val_loss must be None or a finite number, not {shown(val_loss)}")


def val_point(value: object) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and count(value[0]) and finite_number(value[1])


# ---- the schema of the resume section (require_training_state) ----------------------------------------

def counters_problem(checkpoint: dict, saved: dict) -> str | None:
    rate, position, loss0, seconds = (saved[key] for key in ("learning_rate", "loader_position", "loss0", "seconds"))
    if not (finite_number(rate) and rate > 0):
        return f"learning_rate {shown(rate)}, not a positive number"
    if not count(position):
        return f"loader_position {shown(position)}, not a count"
    if not (loss0 is None or finite_number(loss0)):
        return f"loss0 {shown(loss0)}, not a finite number"
    if not (finite_number(seconds) and seconds >= 0):
        return f"seconds {shown(seconds)}, not a finite number >= 0"
    if len(checkpoint["train_losses"]) != checkpoint["iteration"]:
        return f"{len(checkpoint['train_losses'])} train losses for {checkpoint['iteration']} iterations"
    if any(point[0] > checkpoint["iteration"] for point in checkpoint["val_losses"]):
        return f"a validation after its iteration {checkpoint['iteration']}"
    return None


def hidden_problem(hidden: object, model: CharRNN, opt: dict) -> str | None:
    """The carried state: the model's zero_state for the run's batch_size, which it pins to a size the
    file holds (before the data is cut into batches of it)."""
    if not (isinstance(hidden, (list, tuple)) and hidden
            and all(dense(part, torch.float32) and part.dim() == 3 for part in hidden)):
        return "hidden is not a list of float32 tensors of num_layers x batch_size x rnn_size"
    streams = hidden[0].shape[1]
    expected = [part.shape for part in model.zero_state(streams)]
    if [part.shape for part in hidden] != expected:
        return f"hidden is {', '.join(dims(part.shape) for part in hidden)}, not {', '.join(map(dims, expected))}"
    if streams != opt.get("batch_size"):
        return f"hidden holds {streams} streams, its batch_size is {shown(opt.get('batch_size'))}"
    if not all(torch.isfinite(part).all() for part in hidden):
        return "hidden holds NaN or infinite numbers"
    return None


def optimizer_problem(saved: object, model: CharRNN) -> str | None:
    """RMSprop's state of the model's parameters, as parameter_state says each parameter's is (of the
    parameters that have one: none before the first step)."""
    state = saved.get("state") if isinstance(saved, dict) else None
    if not isinstance(state, dict):
        return "optimizer is not an optimizer's state_dict"
    parameters, layout = list(model.parameters()), parameter_state()
    for index, entry in state.items():
        if not (count(index) and index < len(parameters)):
            return f"optimizer state for a parameter {shown(index)} the model does not have"
        if not (isinstance(entry, dict) and entry.keys() == layout.keys()):
            return f"optimizer state of parameter {index} is not {', '.join(layout)}"
        for name, (dtype, size) in layout.items():
            want = parameters[index].shape if size is None else size
            value = entry[name]
            if not (dense(value, dtype) and value.shape == want and torch.isfinite(value).all()):
                return (f"optimizer {name} of parameter {index} is not a finite {dtype_name(dtype)} tensor of "
                        f"shape {tuple(want)}")
    return None


@functools.cache
def parameter_state() -> dict[str, tuple[torch.dtype, torch.Size | None]]:
    """What util.training.rmsprop's optimizer keeps of each parameter once it has stepped: {name:
    (dtype, shape, None for the parameter's own)}, found by one step on a parameter of 2 numbers."""
    parameter = torch.nn.Parameter(torch.zeros(2))
    optimizer = rmsprop([parameter], 1.0, 0.5)
    parameter.grad = torch.zeros(2)
    optimizer.step()
    return {name: (value.dtype, None if value.shape == parameter.shape else value.shape)
            for name, value in optimizer.state[parameter].items()}


def rng_problem(saved: dict) -> str | None:
    """rng must be a state torch.set_rng_state takes (tried, then the current one put back); cuda_rng,
    for CUDA only, at least a byte tensor (restore_training tries it there)."""
    rng, cuda_rng = saved["rng"], saved["cuda_rng"]
    if not dense(rng, torch.uint8):
        return "rng is not a random-number state"
    current = torch.get_rng_state()
    try:
        torch.set_rng_state(rng)
    except RuntimeError:  # not of the generator's size, or not a valid state of it
        return "rng is not a random-number state of this torch"
    finally:
        torch.set_rng_state(current)
    if not (cuda_rng is None or dense(cuda_rng, torch.uint8)):
        return "cuda_rng is not a random-number state"
    return None
