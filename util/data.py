"""Reading preprocessed data back and cutting it into batches.

Two sources, each with its reference project's batches:
- torch-rnn's HDF5/JSON pair: each split separately laid out as batch_size contiguous streams.
- char-rnn's `-data_dir` folder with `input.txt`: the whole text laid out as batch_size rows, the
  splits taken as column blocks (so val losses compare with char-rnn's).
Either way a split is batch_size rows of n_batches * seq_length inputs, each row's targets the
tokens one on, and batch k is the k-th seq_length-wide column block of both.

Nothing the size of a split is built: a batch is cut from the split's ids as stored when it is asked
for (Split.cut). On a GPU, whose memory holds them, the consecutive batches' layout of each split is
copied there once instead (ResidentSplit, BatchLoader.keep_on): a batch is then a slice cut on the
device, with no work on the host and no copy from it per batch. Training maps the HDF5 datasets
from the file (np.memmap, map_h5_json) instead of reading them in, and takes the files' 1-based ids
to 0-based one batch at a time, so its memory does not grow with the corpus. A chunked dataset
(compressed, say), whose bytes are not the ids as they are, is read into memory instead. The pages
of the map that batches have read count in the process's resident memory, but they are the file's
page cache, which the kernel drops under memory pressure.

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
import codecs
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TypeVar

import h5py
import numpy as np
import torch

from util.corpus import DecodeError, preprocess
from util.device import memory_bytes
from util.errors import UserError
from util.files import regular_file
from util.options import lua_number
from util.vocab import BYTES, Vocab, check_text_encoding, read_json

SPLITS = ("train", "val", "test")
SCHEMES = ("consecutive", "random")  # how training batches are handed out (module docstring)


# ids checked per read when a split is mapped: the check holds one buffer of this many, never the split
CHECK_TOKENS = 1 << 22
# The most a chunked (compressed) split may hold per byte it stores, since it is read into memory:
# text ids compress 3-5 times; deflate's own limit is about 1,000.
MAX_EXPANSION = 100
SMALL_VOCAB = 256  # a vocabulary this small passes check_vocab_size whatever the splits hold: a byte vocabulary's size
# the share of a GPU's memory that the splits' ids may take there (BatchLoader.keep_on); the model,
# its gradients, RMSprop's state and the activations need the rest
RESIDENT_SHARE = 1 / 8
Taken = TypeVar("Taken")  # what a reader of the splits makes of each dataset (read_splits)
IdCheck = Callable[[np.ndarray], None]


def read_h5_json(h5_path: str, json_path: str) -> tuple[Vocab, dict[str, np.ndarray]]:
    """Load our or torch-rnn's files: the vocabulary and each split's 0-based ids, read into memory
    (evaluate.py, the -data_dir cache); training maps the files instead (map_h5_json)."""
    vocab = read_vocab(json_path)
    storage = id_storage(len(vocab))

    def in_memory(dataset: h5py.Dataset, check: IdCheck) -> np.ndarray:
        ids = dataset[()]
        check(ids)
        zero_based = ids if ids.dtype == storage else np.empty(ids.shape, storage)
        np.subtract(ids, 1, out=zero_based, casting="unsafe")  # in place where it can: `ids - 1` is a copy
        return zero_based

    return vocab, read_splits(h5_path, json_path, len(vocab), in_memory)


def map_h5_json(h5_path: str, json_path: str) -> tuple[Vocab, dict[str, "Tokens"]]:
    """The same files as training reads them: the vocabulary and each split's ids as stored
    (1-based), mapped from the file where the dataset allows (map_ids), so that no split is read in."""
    vocab = read_vocab(json_path)
    return vocab, read_splits(h5_path, json_path, len(vocab), map_ids)


def read_vocab(json_path: str) -> Vocab:
    return Vocab.from_json(read_json(json_path), json_path)


def read_splits(h5_path: str, json_path: str, vocab_size: int,
                take: Callable[[h5py.Dataset, IdCheck], Taken]) -> dict[str, Taken]:
    """Each split's dataset, checked (split_dataset), as `take` makes it; `take` runs the check it is
    given on every id of the dataset (ids outside 1..vocab_size: the files do not match)."""
    file_size = regular_file(h5_path, "data file",
                             missing=f"data file {h5_path} does not exist (run preprocess.py first)").st_size
    try:
        with h5py.File(h5_path, "r") as h5:
            datasets = {name: split_dataset(h5, name, h5_path, file_size) for name in SPLITS
                        if name in h5 or name != "test"}
            check_vocab_size(vocab_size, sum(len(dataset) for dataset in datasets.values()), h5_path, json_path)
            return {name: take(dataset, functools.partial(check_ids, vocab_size=vocab_size, message=(
                        f"{h5_path} does not match {json_path}: split '{name}' has ids outside 1..{vocab_size}")))
                    for name, dataset in datasets.items()}
    except FileNotFoundError:
        raise UserError(f"data file {h5_path} does not exist (run preprocess.py first)") from None
    except (OSError, KeyError, TypeError, ValueError, RuntimeError) as error:  # RuntimeError: a link loop
        raise UserError(f"cannot read data file {h5_path}: {str(error).splitlines()[0]}") from None


def split_dataset(h5: h5py.File, name: str, h5_path: str, file_size: int) -> h5py.Dataset:
    """The split's dataset, once it is known to be what preprocess.py and torch-rnn write: a dataset
    of the file itself (no soft or external link), a 1-D array of integers, its ids stored in this
    file (no external storage, no virtual dataset), all of them (no fill values standing in for
    unwritten ones), in no more room than the file has. Reading it then costs at most what the
    file's size allows: a contiguous dataset is its bytes; a chunked one, which is read into memory,
    holds at most MAX_EXPANSION times its stored bytes."""
    if name not in h5:
        raise UserError(f"{h5_path} has no '{name}' dataset")
    if not isinstance(h5.get(name, getlink=True), h5py.HardLink):
        raise UserError(f"{h5_path}: '{name}' is a link to elsewhere, not a dataset of the file")
    dataset = h5[name]
    if not isinstance(dataset, h5py.Dataset) or dataset.shape is None or len(dataset.shape) != 1 \
            or dataset.dtype.kind not in "iu":
        raise UserError(f"{h5_path}: dataset '{name}' is not a 1-D array of integer ids")
    if dataset.external or dataset.is_virtual:
        raise UserError(f"{h5_path}: dataset '{name}' keeps its ids outside the file (external storage or a "
                        f"virtual dataset); give a file that holds them (h5repack copies them in)")
    declared = dataset.size * dataset.dtype.itemsize
    stored = dataset.id.get_storage_size()
    if dataset.chunks is None:  # contiguous or compact: the ids as they are, where the header says
        whole = stored == declared and (dataset.id.get_offset() or 0) + stored <= file_size
    else:  # chunked, compressed maybe: the chunks written, however small
        whole = 0 < stored <= file_size
    if declared and not whole:
        raise UserError(f"{h5_path}: dataset '{name}' declares {len(dataset):,} ids ({declared:,} bytes) but the "
                        f"file stores {stored:,} bytes of them in {file_size:,}: it is damaged or was not "
                        f"written whole")
    if declared > MAX_EXPANSION * stored:
        raise UserError(f"{h5_path}: dataset '{name}' expands {stored:,} stored bytes into {declared:,}, more than "
                        f"{MAX_EXPANSION} to 1, to be read into memory; store it uncompressed (h5repack -l CONTI)")
    return dataset


def check_vocab_size(vocab_size: int, ids: int, h5_path: str, json_path: str) -> None:
    """Every token of a vocabulary built from a text occurs in it, so the splits hold at least as many
    ids as it has tokens: a vocabulary larger than that (and a model as large) belongs to other data.
    Up to SMALL_VOCAB tokens pass anyway: a toy text whose test split was left out may hold fewer."""
    if vocab_size > max(ids, SMALL_VOCAB):
        raise UserError(f"{json_path} does not match {h5_path}: a vocabulary of {vocab_size:,} tokens, but the "
                        f"splits hold only {ids:,} ids, and every token of a text's vocabulary occurs in it")


def check_ids(ids: np.ndarray, vocab_size: int, message: str) -> None:
    if len(ids) and (ids.min() < 1 or ids.max() > vocab_size):
        raise UserError(message)


def map_ids(dataset: h5py.Dataset, check: IdCheck) -> "Tokens":
    """A split's ids as stored: a read-only np.memmap over the file where they lie in it as plain
    bytes (a contiguous dataset: preprocess.py's and torch-rnn's); a chunked one (compressed, say)
    cannot be mapped and is read into memory instead."""
    offset = dataset.id.get_offset()  # None until written, and for storage other than contiguous
    if offset is None or dataset.id.get_create_plist().get_layout() != h5py.h5d.CONTIGUOUS:
        ids = dataset[()]
        check(ids)
        return Tokens(ids, base=1)
    # checked through reads, not through the map: every page read through the map would stay resident
    buffer = np.empty(min(len(dataset), CHECK_TOKENS), dataset.dtype)
    for start in range(0, len(dataset), CHECK_TOKENS):
        part = buffer[:min(CHECK_TOKENS, len(dataset) - start)]
        dataset.read_direct(part, np.s_[start:start + len(part)])
        check(part)
    try:
        return Tokens(np.memmap(dataset.file.filename, dataset.dtype, "r", offset, dataset.shape), base=1)
    except (OSError, ValueError):  # a file system that cannot map files
        return Tokens(dataset[()], base=1)


def id_storage(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint8 if vocab_size <= 256 else np.int32)


def load_data_dir(data_dir: str, log: Callable[[str], None] = print,
                  encoding: str | None = None) -> tuple[Vocab, np.ndarray]:
    """The cache (prepare_data_dir) read into memory: the vocabulary and the text's 0-based ids."""
    vocab, splits = read_h5_json(*prepare_data_dir(data_dir, log, encoding))
    return vocab, np.concatenate([splits[name] for name in SPLITS if name in splits])


def map_data_dir(data_dir: str, log: Callable[[str], None] = print,
                 encoding: str | None = None) -> tuple[Vocab, "Tokens"]:
    """The cache (prepare_data_dir) mapped, as training reads it: the vocabulary and the text's Tokens
    (the cache's one non-empty split as mapped; splits joined in memory for a cache of several)."""
    vocab, splits = map_h5_json(*prepare_data_dir(data_dir, log, encoding))
    parts = [splits[name] for name in SPLITS if name in splits and len(splits[name])]
    if len(parts) == 1:
        return vocab, parts[0]
    return vocab, Tokens(np.concatenate([part.stored for part in parts] or [np.empty(0, np.uint8)]), base=1)


def prepare_data_dir(data_dir: str, log: Callable[[str], None] = print,
                     encoding: str | None = None) -> tuple[str, str]:
    """char-rnn's folder: input.txt, preprocessed into a cache beside it (data_dir_cache) when the
    cache is missing, older than input.txt or of another encoding.

    encoding None (the default): UTF-8 code points, or bytes with a notice when the text is not
    UTF-8. Any other encoding is read as asked, and text that does not decode in it is an error:
    'bytes' gives byte tokens (char-rnn's; what a char-rnn .t7 model was trained on), never with that
    notice, 'utf-8' gives code points or the error, a codec such as latin-1 its characters."""
    text = os.path.join(data_dir, "input.txt")
    regular_file(text, "input file", missing=f"data folder {data_dir} has no input.txt")
    h5_path, json_path = data_dir_cache(data_dir, encoding)
    # the default cache may hold either: the UTF-8 tokens asked for, or the bytes they fell back to
    accepted = {"utf-8", BYTES} if encoding is None else {codec_key(encoding)}
    stale = cache_is_stale(text, h5_path, json_path, accepted)
    if stale:
        log(f"one-time setup: preprocessing {text} into {h5_path} and {json_path}")
        try:
            preprocess(text, h5_path, json_path, 0.0, 0.0, encoding or "utf-8", log=lambda _: None)
        except DecodeError as error:
            if encoding is not None:
                raise
            log(f"notice: {error}; using byte-level tokens, as char-rnn does")
            preprocess(text, h5_path, json_path, 0.0, 0.0, BYTES, log=lambda _: None)
    if not stale and encoding is None and read_vocab(json_path).is_bytes:
        log(f"notice: {text} is not valid UTF-8; using byte-level tokens, as char-rnn does")
    return h5_path, json_path


def codec_key(encoding: str) -> str:
    """'bytes', or Python's own name of a text codec (latin-1 and iso-8859-1 are both iso8859-1);
    a UserError for an unknown codec."""
    if encoding == BYTES:
        return BYTES
    check_text_encoding(encoding)
    return codecs.lookup(encoding).name


def data_dir_cache(data_dir: str, encoding: str | None) -> tuple[str, str]:
    """The HDF5/JSON cache of DIR/input.txt read in `encoding` (load_data_dir), beside it:
    input.h5/input.json for UTF-8 and the default, input.bytes.h5/input.bytes.json for bytes, and
    input.CODEC.h5/input.CODEC.json for another codec (CODEC as codec_key names it), so that tokens
    of one encoding never replace another's."""
    key = "utf-8" if encoding is None else codec_key(encoding)
    stem = "input" if key == "utf-8" else f"input.{key}"
    return os.path.join(data_dir, f"{stem}.h5"), os.path.join(data_dir, f"{stem}.json")


def cache_is_stale(text: str, h5_path: str, json_path: str, accepted: set[str]) -> bool:
    """Whether the cache must be rebuilt: a file missing, older than the text, or its vocabulary of an
    encoding (codec_key) not in `accepted`, or unreadable (then rebuilding replaces it)."""
    if not (os.path.exists(h5_path) and os.path.exists(json_path)):
        return True
    if os.path.getmtime(text) > min(os.path.getmtime(h5_path), os.path.getmtime(json_path)):
        return True
    try:
        encoding = read_vocab(json_path).encoding
    except UserError:
        return True
    return codec_key(encoding) not in accepted


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
        vocab, split_ids = map_h5_json(opt.input_h5, opt.input_json)
        splits = {name: stream_split(ids, batch_size, seq_length) for name, ids in split_ids.items()}
    else:
        log(f"data: {os.path.join(opt.data_dir, 'input.txt')} (char-rnn splits: train_frac "
            f"{lua_number(opt.train_frac)}, val_frac {lua_number(opt.val_frac)})")
        vocab, ids = map_data_dir(opt.data_dir, log, encoding)
        splits = char_rnn_splits(ids, batch_size, seq_length, opt.train_frac, opt.val_frac)
    return vocab, BatchLoader(splits, batch_size, seq_length, scheme, seed)


@dataclass(frozen=True)
class Tokens:
    """A run of token ids as stored: `stored - base` are the 0-based ids. The base is subtracted from
    each batch as it is cut, never from the whole run, so that a mapped split is not copied."""
    stored: np.ndarray  # an np.memmap over the HDF5 file (map_h5_json), or an array in memory
    base: int = 0  # the first id: 1 in the HDF5 files (torch-rnn's Lua ids), 0 for arrays of 0-based ids

    def __len__(self) -> int:
        return len(self.stored)

    def at(self, index: np.ndarray) -> np.ndarray:
        """The 0-based ids at the positions `index` (an integer array of any shape), in memory."""
        values = np.asarray(self.stored[index])
        return values - self.base if self.base else values


@dataclass
class Split:
    """A split's layout: batch_size rows, row r's inputs the `width` tokens from starts[r] and its
    targets the tokens one on; batch k is the k-th seq_length-wide column block. Batches are cut from
    `tokens` when asked for (cut), so nothing the size of the split is built."""
    tokens: Tokens  # the split's own ids (HDF5), or the whole text (char-rnn's layout)
    starts: np.ndarray  # (batch_size,) the position in tokens of each row's first input
    width: int  # n_batches * seq_length
    n_batches: int
    wanted: bool  # the split was asked for, so having no batch is the user's problem
    stream: bool = False  # tokens is one contiguous stream, the split's (HDF5): the random scheme draws from it all
    wrap: int | None = None  # char-rnn's: position `wrap` (the layout's end) reads as 0, the last target wrapping

    @property
    def x(self) -> np.ndarray:
        """The inputs as one (batch_size, width) array of 0-based ids, built whole (tests, small splits)."""
        return self.at(self.starts[:, None] + np.arange(self.width))

    @property
    def y(self) -> np.ndarray:
        """The targets, as x."""
        return self.at(self.starts[:, None] + np.arange(1, self.width + 1))

    def at(self, index: np.ndarray) -> np.ndarray:
        """The 0-based ids at the positions `index` of tokens, as the layout reads them."""
        if self.wrap is not None:
            index = np.where(index == self.wrap, 0, index)
        return self.tokens.at(index)

    def cut(self, firsts: np.ndarray, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) as (len(firsts), length) long tensors: `length` tokens from each position
        in `firsts`, and the tokens one on."""
        window = torch.from_numpy(self.at(firsts[:, None] + np.arange(length + 1)).astype(np.int64))
        return window[:, :-1].contiguous(), window[:, 1:].contiguous()

    def streams(self) -> tuple[np.ndarray, int]:
        """The rows of contiguous text: where each begins in tokens, and its length in inputs. The
        whole stream where the split is one, else the layout's batch_size rows (char-rnn's column block)."""
        if self.stream:
            return np.zeros(1, dtype=np.int64), max(len(self.tokens) - 1, 0)
        return self.starts, self.width


def stream_split(ids: "np.ndarray | Tokens", batch_size: int, seq_length: int) -> Split:
    """torch-rnn's layout: batch_size contiguous streams, y = x shifted by one within the split.
    `ids`: the split's 0-based ids, or its Tokens."""
    tokens = ids if isinstance(ids, Tokens) else Tokens(ids)
    n_batches = max(len(tokens) - 1, 0) // (batch_size * seq_length)
    width = n_batches * seq_length
    return Split(tokens, np.arange(batch_size) * width, width, n_batches, wanted=len(tokens) > 0, stream=True)


def char_rnn_splits(ids: "np.ndarray | Tokens", batch_size: int, seq_length: int, train_frac: float,
                    val_frac: float) -> dict[str, Split]:
    """char-rnn's CharSplitLMMinibatchLoader: one layout of the whole text, splits as column blocks.
    `ids`: the text's 0-based ids, or its Tokens."""
    tokens = ids if isinstance(ids, Tokens) else Tokens(ids)
    span = batch_size * seq_length
    n_batches = len(tokens) // span
    row = n_batches * seq_length  # the text's first n_batches * span tokens as batch_size rows
    n_train = int(n_batches * train_frac)
    test_frac = max(0.0, 1 - (train_frac + val_frac))
    n_val = n_batches - n_train if test_frac == 0 else int(n_batches * val_frac)
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n_batches)}
    wanted = {"train": True, "val": val_frac > 0, "test": test_frac > 0}
    # a batch_size above the text's length gives no batches: no more rows than tokens are laid out for it
    rows = np.arange(min(batch_size, len(tokens))) * row
    # y is x shifted over the whole layout: the last target wraps round to the first token
    return {name: Split(tokens, rows + lo * seq_length, (hi - lo) * seq_length, hi - lo, wanted[name],
                        wrap=n_batches * span)
            for name, (lo, hi) in bounds.items()}


class RandomBatches:
    """d2l's random minibatches over a split's contiguous streams (module docstring): batch g of the
    run, counted over all epochs, is a pure function of (seed, g)."""

    def __init__(self, split: Split, batch_size: int, seq_length: int, seed: int):
        self.split = split
        self.origins, self.length = split.streams()
        self.batch_size, self.seq_length, self.seed = batch_size, seq_length, seed
        fewest = len(self.origins) * (max(self.length - (seq_length - 1), 0) // seq_length)  # at the largest offset
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
        per_row = (self.length - offset) // self.seq_length
        keys = bits.random_raw(len(self.origins) * per_row)
        chosen = np.argsort(keys, kind="stable")[:self.n_batches * self.batch_size]
        rows = (chosen // per_row).reshape(self.n_batches, self.batch_size)
        starts = (offset + chosen % per_row * self.seq_length).reshape(self.n_batches, self.batch_size)
        self.planned = (epoch, rows, starts)
        return rows, starts

    def batch(self, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The g-th batch of the run (epoch g // n_batches): (x, y), each (batch_size, seq_length)."""
        rows, starts = self.plan(g // self.n_batches)
        k = g % self.n_batches
        return self.split.cut(self.origins[rows[k]] + starts[k], self.seq_length)


class ResidentSplit:
    """A split's consecutive layout on a device: its batch_size rows of width + 1 ids (inputs and the
    last target), uploaded once, a row CHECK_TOKENS ids at a time (the host holds no more than that);
    bytes, or int32 ids for a larger vocabulary. Batch k is the k-th column block, cut on the device."""

    def __init__(self, split: Split, device: torch.device):
        width = split.width + 1
        self.ids = torch.empty(len(split.starts), width, dtype=resident_dtype(split), device=device)
        for row, start in enumerate(split.starts.tolist()):
            for first in range(0, width, CHECK_TOKENS):
                chunk = split.at(start + np.arange(first, min(first + CHECK_TOKENS, width)))
                self.ids[row, first:first + len(chunk)].copy_(torch.from_numpy(chunk.astype(np.int32)))

    def batch(self, k: int, seq_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch k as Split.cut gives it, (inputs, targets) long tensors on the device."""
        window = self.ids[:, k * seq_length:(k + 1) * seq_length + 1]
        return window[:, :-1].long(), window[:, 1:].long()


def resident_dtype(split: Split) -> torch.dtype:
    """Bytes for a split stored as bytes (0-based ids 0..255 either way), else int32."""
    return torch.uint8 if split.tokens.stored.dtype.itemsize == 1 else torch.int32


def resident_bytes(split: Split) -> int:
    """What a split's ResidentSplit takes on the device."""
    return len(split.starts) * (split.width + 1) * resident_dtype(split).itemsize


def device_holds(device: torch.device, nbytes: int) -> bool:
    """Whether `nbytes` of ids go onto `device` (RESIDENT_SHARE of its memory): never the CPU's,
    where cutting each batch from the ids as stored keeps memory flat at any corpus size."""
    memory = memory_bytes(device)
    return device.type != "cpu" and memory is not None and nbytes <= memory * RESIDENT_SHARE


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
        self.resident: dict[str, ResidentSplit] = {}

    def keep_on(self, device: torch.device) -> None:
        """Put the splits' consecutive layouts on `device` where it holds them all (device_holds):
        batch() then cuts there. The random scheme's training batches are still cut on the host."""
        laid_out = [name for name, split in self.splits.items() if split.wanted and split.n_batches > 0
                    and not (name == "train" and self.random is not None)]  # only splits batch() will cut
        if device_holds(device, sum(resident_bytes(self.splits[name]) for name in laid_out)):
            self.resident = {name: ResidentSplit(self.splits[name], device) for name in laid_out}

    def n_batches(self, split: str) -> int:
        """Batches per epoch: the scheme's for train, the layout's for the others."""
        if split == "train" and self.random is not None:
            return self.random.n_batches
        return self.splits[split].n_batches if split in self.splits else 0

    def batch(self, split: str, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch k of the split's consecutive layout: on the device where it is resident, else on the CPU."""
        if split in self.resident:
            return self.resident[split].batch(k, self.seq_length)
        s = self.splits[split]
        return s.cut(s.starts + k * self.seq_length, self.seq_length)

    def next_batch(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.position[split]
        if split == "train" and self.random is not None:
            self.position[split] = k + 1
            return self.random.batch(k)
        self.position[split] = (k + 1) % self.n_batches(split)
        return self.batch(split, k)
