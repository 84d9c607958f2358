"""Checkpoints: named for their epoch, written atomically, loaded without running any code.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only, so that
`torch.load(path, weights_only=True)` reads it. Weights are stored on the CPU.
Torch7 char-rnn checkpoints (.t7) load through util.torch7 into the same layout.
"""
import os
import pickle

import torch

from model import CharRNN
from util.errors import UserError
from util.vocab import Vocab

FORMAT = "char-rnn-pytorch 1"
ZIP_MAGIC = b"PK\x03\x04"


def checkpoint_path(checkpoint_dir: str, savefile: str, iteration: int, iterations_per_epoch: int) -> str:
    """cv/lm_epoch30.pt at the end of epoch 30; cv/lm_epoch30.47.pt in the middle of an epoch."""
    prefix = f"lm_{savefile}_" if savefile else "lm_"
    if iteration % iterations_per_epoch == 0:
        epoch = str(iteration // iterations_per_epoch)
    else:
        epoch = f"{iteration / iterations_per_epoch:.2f}"
    return os.path.join(checkpoint_dir, f"{prefix}epoch{epoch}.pt")


def log_path(checkpoint_dir: str, savefile: str) -> str:
    return os.path.join(checkpoint_dir, f"lm_{savefile}_log.csv" if savefile else "lm_log.csv")


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
    """Read a .pt (this project) or .t7 (Torch7 char-rnn) checkpoint; any problem is a UserError."""
    if os.path.isdir(path):
        raise UserError(f"{path} is a folder, not a checkpoint file")
    if not os.path.isfile(path):
        raise UserError(f"File {path} does not exist. Are you sure you didn't forget to prepend cv/ ?")
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as error:
        raise UserError(f"cannot read checkpoint {path}: {error.strerror}") from None
    if path.endswith(".t7"):
        checkpoint = _load_torch7(path)
    else:
        if magic != ZIP_MAGIC:  # torch.save's format is a zip archive
            raise UserError(f"{path} is not a checkpoint (not a file written by train.py)")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise UserError(f"{path} holds objects other than tensors and plain data; refusing to load it, "
                            f"since unpickling them could run code from the file") from None
        except Exception as error:  # torch.load reports damaged files with many exception types
            raise UserError(f"{path} is not a readable checkpoint (truncated or damaged: "
                            f"{type(error).__name__})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise UserError(f"{path} is not a char-rnn checkpoint")
    for name, tensor in checkpoint["state_dict"].items():
        if not torch.isfinite(tensor).all():
            raise UserError(f"checkpoint {path} has NaN or infinite weights ({name}); use an earlier checkpoint")
    return checkpoint


def _load_torch7(path: str) -> dict:
    from util.torch7 import load_char_rnn_checkpoint
    try:
        t7 = load_char_rnn_checkpoint(path)
    except ValueError as error:
        raise UserError(str(error)) from None
    return {
        "format": FORMAT,
        "model": {"model_type": t7["model_type"], "vocab_size": len(t7["tokens"]), "rnn_size": t7["rnn_size"],
                  "num_layers": t7["num_layers"], "dropout": t7["dropout"]},
        "state_dict": t7["state_dict"],
        "vocab": {"tokens": t7["tokens"], "encoding": t7["encoding"]},
        "opt": t7["opt"], "iteration": t7["iteration"], "epoch": t7["epoch"],
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

