"""Reading preprocessed data back and cutting it into batches.

Two sources, each with its reference project's batches:
- torch-rnn's HDF5/JSON pair: each split separately laid out as batch_size contiguous streams.
- char-rnn's `-data_dir` folder with `input.txt`: the whole text laid out as batch_size rows, the
  splits taken as column blocks (so val losses compare with char-rnn's).
Either way a split is a pair of (batch_size, n_batches * seq_length) arrays of 0-based ids, and
batch k is the k-th seq_length-wide column block of both.

Two schemes hand out the training batches (validation and test are always consecutive):
- "consecutive" (the default; char-rnn's, and d2l's data_iter_consecutive): batch k of every epoch is
  the k-th column block, so a row's state can be carried from one batch to the next.
  position["train"] is the index of the next batch within the epoch, wrapping round to 0.
- "random" (d2l's data_iter_random, 动手学深度学习 ch. 6): each epoch starts at a random offset in
  [0, seq_length), cuts the text after it into non-overlapping subsequences of seq_length tokens
  (targets shifted by one), shuffles them and hands them out batch_size at a time; the state is meant
  to be zeroed for every batch. Subsequences never cross the end of the train split. They are drawn
  from contiguous text only: with the HDF5 source from the whole train stream (the tail that the
  consecutive layout leaves over included); with char-rnn's -data_dir layout within each of the
  batch_size rows, each a separate piece of the text (running on from a row's end into the next row
  would join text that is not adjacent). Targets are the split's y, as for the consecutive scheme.
  Every epoch has the same number of batches, as many as the subsequences at the largest offset fill
  (the rest of an epoch's subsequences, chosen at random as in d2l, are left out of it), so the run's
  iteration count does not depend on the offsets drawn. The offset and order of epoch e are a pure
  function of (seed, e) (PCG64 raw bits from SeedSequence([seed, e]), stable across numpy
  versions), and position["train"] is the global count of training batches handed out (epoch
  position // n_batches, batch position % n_batches): restoring it resumes the same batches
  without saving any generator state.
"""
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import h5py
import numpy as np
import torch

from util.corpus import DecodeError, preprocess
from util.errors import UserError
from util.options import lua_number
from util.vocab import BYTES, Vocab

SPLITS = ("train", "val", "test")
SCHEMES = ("consecutive", "random")  # how training batches are handed out (module docstring)


def read_h5_json(h5_path: str, json_path: str) -> tuple[Vocab, dict[str, np.ndarray]]:
    """Load our or torch-rnn's files: the vocabulary and each split's 0-based ids."""
    try:
        with open(json_path, encoding="utf-8") as handle:
            vocab = Vocab.from_json(json.load(handle), json_path)
    except FileNotFoundError:
        raise UserError(f"vocabulary file {json_path} does not exist (run preprocess.py first)") from None
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read vocabulary file {json_path}: {error}") from None
    splits = {}
    try:
        with h5py.File(h5_path, "r") as h5:
            for name in SPLITS:
                if name in h5:
                    splits[name] = h5[name][()]
                elif name != "test":
                    raise UserError(f"{h5_path} has no '{name}' dataset")
    except FileNotFoundError:
        raise UserError(f"data file {h5_path} does not exist (run preprocess.py first)") from None
    except (OSError, KeyError, TypeError) as error:
        raise UserError(f"cannot read data file {h5_path}: {str(error).splitlines()[0]}") from None
    for name, ids in splits.items():
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise UserError(f"{h5_path}: dataset '{name}' is not a 1-D array of integer ids")
        if len(ids) and (ids.min() < 1 or ids.max() > len(vocab)):
            raise UserError(f"{h5_path} does not match {json_path}: split '{name}' has ids outside 1..{len(vocab)}")
        splits[name] = (ids - 1).astype(id_storage(len(vocab)), copy=False)
    return vocab, splits


def id_storage(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint8 if vocab_size <= 256 else np.int32)


def load_data_dir(data_dir: str, log: Callable[[str], None] = print,
                  encoding: str | None = None) -> tuple[Vocab, np.ndarray]:
    """char-rnn's folder: input.txt, preprocessed into a cache beside it when missing or stale.

    By default the tokens are UTF-8 code points (cache input.h5/input.json), or bytes with a notice
    when the text is not UTF-8. encoding='bytes' asks for byte tokens, as a char-rnn (.t7) model was
    trained on; they get a cache of their own (input.bytes.h5/input.bytes.json)."""
    text = os.path.join(data_dir, "input.txt")
    stem = "input.bytes" if encoding == BYTES else "input"
    h5_path, json_path = os.path.join(data_dir, f"{stem}.h5"), os.path.join(data_dir, f"{stem}.json")
    if not os.path.isfile(text):
        raise UserError(f"data folder {data_dir} has no input.txt")
    stale = not (os.path.exists(h5_path) and os.path.exists(json_path)) or \
        os.path.getmtime(text) > min(os.path.getmtime(h5_path), os.path.getmtime(json_path))
    if stale:
        log(f"one-time setup: preprocessing {text} into {h5_path} and {json_path}")
        try:
            preprocess(text, h5_path, json_path, 0.0, 0.0, encoding or "utf-8", log=lambda _: None)
        except DecodeError as error:
            log(f"notice: {error}; using byte-level tokens, as char-rnn does")
            preprocess(text, h5_path, json_path, 0.0, 0.0, BYTES, log=lambda _: None)
    vocab, splits = read_h5_json(h5_path, json_path)
    if vocab.is_bytes and not stale and encoding != BYTES:
        log(f"notice: {text} is not valid UTF-8; using byte-level tokens, as char-rnn does")
    return vocab, np.concatenate([splits[name] for name in SPLITS if name in splits])


def data_source(opt: SimpleNamespace, given: set[str]) -> str:
    """An explicit -data_dir wins; else the HDF5/JSON pair when named or when preprocess.py's default
    output exists; else char-rnn's bundled folder."""
    if "data_dir" in given:
        return "data_dir"
    if given & {"input_h5", "input_json"} or os.path.exists(opt.input_h5):
        return "h5"
    return "data_dir"


def load_training_data(opt: SimpleNamespace, source: str, log: Callable[[str], None] = print,
                       encoding: str | None = None, scheme: str = "consecutive",
                       seed: int = 0) -> tuple[Vocab, "BatchLoader"]:
    """The vocabulary and a loader over `source` ('h5' or 'data_dir') with opt's batch shape;
    `encoding` as in load_data_dir, `scheme` and `seed` as in BatchLoader."""
    batch_size, seq_length = opt.batch_size, opt.seq_length
    if source == "h5":
        log(f"data: {opt.input_h5} and {opt.input_json} (preprocessed splits)")
        vocab, split_ids = read_h5_json(opt.input_h5, opt.input_json)
        splits = {name: stream_split(ids, batch_size, seq_length) for name, ids in split_ids.items()}
    else:
        log(f"data: {os.path.join(opt.data_dir, 'input.txt')} (char-rnn splits: train_frac "
            f"{lua_number(opt.train_frac)}, val_frac {lua_number(opt.val_frac)})")
        vocab, ids = load_data_dir(opt.data_dir, log, encoding)
        splits = char_rnn_splits(ids, batch_size, seq_length, opt.train_frac, opt.val_frac)
    return vocab, BatchLoader(splits, batch_size, seq_length, scheme, seed)


@dataclass
class Split:
    x: np.ndarray  # (batch_size, n_batches * seq_length)
    y: np.ndarray
    n_batches: int
    wanted: bool  # the split was asked for, so having no batch is the user's problem
    text: np.ndarray | None = None  # the split's ids as one contiguous stream, where it is one (HDF5)

    def streams(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, length) arrays of inputs and their targets, each row contiguous text: the whole
        stream where the split has one, else the layout's batch_size rows (char-rnn's column block)."""
        if self.text is not None:
            return self.text[None, :-1], self.text[None, 1:]
        return self.x, self.y


def stream_split(ids: np.ndarray, batch_size: int, seq_length: int) -> Split:
    """torch-rnn's layout: batch_size contiguous streams, y = x shifted by one within the split."""
    span = batch_size * seq_length
    n_batches = max(len(ids) - 1, 0) // span
    used = n_batches * span
    return Split(ids[:used].reshape(batch_size, -1), ids[1:used + 1].reshape(batch_size, -1), n_batches,
                 wanted=len(ids) > 0, text=ids)


def char_rnn_splits(ids: np.ndarray, batch_size: int, seq_length: int, train_frac: float,
                    val_frac: float) -> dict[str, Split]:
    """char-rnn's CharSplitLMMinibatchLoader: one layout of the whole text, splits as column blocks."""
    span = batch_size * seq_length
    n_batches = len(ids) // span
    data = ids[:n_batches * span]
    targets = np.roll(data, -1)  # y is x shifted over the whole text; the last target wraps around
    x, y = data.reshape(batch_size, -1), targets.reshape(batch_size, -1)
    n_train = int(n_batches * train_frac)
    test_frac = max(0.0, 1 - (train_frac + val_frac))
    n_val = n_batches - n_train if test_frac == 0 else int(n_batches * val_frac)
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n_batches)}
    wanted = {"train": True, "val": val_frac > 0, "test": test_frac > 0}
    return {name: Split(x[:, lo * seq_length:hi * seq_length], y[:, lo * seq_length:hi * seq_length], hi - lo,
                        wanted[name])
            for name, (lo, hi) in bounds.items()}


class RandomBatches:
    """d2l's random minibatches over a split's contiguous streams (module docstring): batch g of the
    run, counted over all epochs, is a pure function of (seed, g)."""

    def __init__(self, split: Split, batch_size: int, seq_length: int, seed: int):
        self.inputs, self.targets = split.streams()
        self.batch_size, self.seq_length, self.seed = batch_size, seq_length, seed
        rows, length = self.inputs.shape
        fewest = rows * (max(length - (seq_length - 1), 0) // seq_length)  # at the largest offset
        self.n_batches = fewest // batch_size
        if self.n_batches == 0:
            raise UserError(f"the train split is too small for one batch of {batch_size} x {seq_length} tokens "
                            f"drawn at random ({fewest} non-overlapping subsequences of {seq_length} at the "
                            f"largest offset); use a smaller -batch_size or -seq_length")
        self.planned: tuple[int, np.ndarray, np.ndarray] | None = None  # the latest epoch's plan

    def plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Epoch `epoch`'s subsequences as (n_batches, batch_size) arrays of rows and start columns."""
        if self.planned is not None and self.planned[0] == epoch:
            return self.planned[1], self.planned[2]
        bits = np.random.PCG64(np.random.SeedSequence([self.seed % 2 ** 64, epoch]))
        offset = int(bits.random_raw()) % self.seq_length
        per_row = (self.inputs.shape[1] - offset) // self.seq_length
        keys = bits.random_raw(self.inputs.shape[0] * per_row)
        chosen = np.argsort(keys, kind="stable")[:self.n_batches * self.batch_size]
        rows = (chosen // per_row).reshape(self.n_batches, self.batch_size)
        starts = (offset + chosen % per_row * self.seq_length).reshape(self.n_batches, self.batch_size)
        self.planned = (epoch, rows, starts)
        return rows, starts

    def batch(self, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The g-th batch of the run (epoch g // n_batches): (x, y), each (batch_size, seq_length)."""
        rows, starts = self.plan(g // self.n_batches)
        k = g % self.n_batches
        columns = starts[k][:, None] + np.arange(self.seq_length)
        picked = rows[k][:, None], columns
        return torch.from_numpy(self.inputs[picked]).long(), torch.from_numpy(self.targets[picked]).long()


class BatchLoader:
    """Hands out batches of each split in order, wrapping around; remembers where train is.

    scheme "random" hands out the training batches in d2l's random order for `seed` instead (module
    docstring); position["train"] then counts the batches handed out over all epochs. batch(split, k)
    is the layout's k-th block under either scheme (what evaluation reads)."""

    def __init__(self, splits: dict[str, Split], batch_size: int, seq_length: int, scheme: str = "consecutive",
                 seed: int = 0):
        if scheme not in SCHEMES:
            raise UserError(f"unknown batch scheme '{scheme}' (choose from {', '.join(SCHEMES)})")
        self.splits, self.scheme = splits, scheme
        self.batch_size, self.seq_length = batch_size, seq_length
        self.position = dict.fromkeys(splits, 0)
        for name in ("train", "val"):
            if splits[name].wanted and splits[name].n_batches == 0:
                raise UserError(f"the {name} split is too small for one batch of {batch_size} x {seq_length} "
                                f"tokens; use a smaller -batch_size or -seq_length")
        self.random = RandomBatches(splits["train"], batch_size, seq_length, seed) if scheme == "random" else None

    def n_batches(self, split: str) -> int:
        """Batches per epoch: the scheme's for train, the layout's for the others."""
        if split == "train" and self.random is not None:
            return self.random.n_batches
        return self.splits[split].n_batches if split in self.splits else 0

    def batch(self, split: str, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self.splits[split], self.seq_length
        x = torch.from_numpy(np.ascontiguousarray(s.x[:, k * t:(k + 1) * t])).long()
        y = torch.from_numpy(np.ascontiguousarray(s.y[:, k * t:(k + 1) * t])).long()
        return x, y

    def next_batch(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.position[split]
        if split == "train" and self.random is not None:
            self.position[split] = k + 1
            return self.random.batch(k)
        self.position[split] = (k + 1) % self.n_batches(split)
        return self.batch(split, k)
