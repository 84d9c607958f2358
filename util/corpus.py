"""Text file -> vocabulary + token ids in torch-rnn's HDF5/JSON layout.

The file is read twice in fixed-size chunks: the first pass validates the text, counts tokens and
collects the vocabulary; the second maps tokens to ids and writes them straight into the HDF5
datasets. Memory stays around one chunk whatever the file size, and nothing is written until the
whole input is known to be good.
"""
import codecs
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import h5py
import numpy as np

from util.errors import UserError
from util.vocab import BYTES, Vocab, check_text_encoding, has_utf8_bom

# 1 MiB: each chunk's temporaries (decoded text, code points, index arrays) stay cache-sized;
# 16 MiB chunks ran at half the speed and 3-4x the peak memory (bench/preprocess_speed.py).
CHUNK_BYTES = 1 << 20
MAX_CODE_POINT = 0x110000


class DecodeError(UserError):
    """The text does not decode in the chosen encoding."""


@dataclass
class SplitSizes:
    train: int
    val: int
    test: int


# The largest vocabulary stored in 2-byte ids: torch-hdf5 (torch-rnn's reader) picks the Torch type by
# the width alone, so 2-byte ids become a signed ShortTensor and ids above 32,767 would turn negative.
MAX_UINT16_VOCAB = 32767


def id_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds ids 1..vocab_size and that torch-rnn reads back unchanged:
    uint8 up to 255 tokens, uint16 up to 32,767, else uint32 (1-byte ids become torch-hdf5's unsigned
    ByteTensor, 2- and 4-byte ids its signed Short/IntTensor)."""
    if vocab_size <= 255:
        return np.dtype(np.uint8)
    return np.dtype(np.uint16 if vocab_size <= MAX_UINT16_VOCAB else np.uint32)


def _open_input(path: str) -> BinaryIO:
    """The input file opened for reading, or a UserError saying why it cannot be."""
    try:
        return open(path, "rb")
    except IsADirectoryError:
        raise UserError(f"{path} is a directory, not a text file") from None
    except FileNotFoundError:
        raise UserError(f"input file {path} does not exist") from None
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror}") from None


def _code_point_chunks(path: str, encoding: str) -> Iterator[np.ndarray]:
    """Yield the file's tokens as integer arrays (code points, or byte values)."""
    with _open_input(path) as handle:
        if encoding == BYTES:
            while chunk := handle.read(CHUNK_BYTES):
                yield np.frombuffer(chunk, dtype=np.uint8)
            return
        check_text_encoding(encoding)
        decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
        # file offset of the first byte of `chunk`
        offset = len(codecs.BOM_UTF8) if has_utf8_bom(handle.read(len(codecs.BOM_UTF8)), encoding) else 0
        handle.seek(offset)
        while True:
            chunk = handle.read(CHUNK_BYTES)
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as error:
                position = offset - pending + error.start
                raise DecodeError(
                    f"{path} is not valid {encoding}: cannot decode byte 0x{error.object[error.start]:02x} "
                    f"at offset {position}; try -encoding bytes or -encoding latin-1") from None
            if text:
                yield np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
            if not chunk:
                return
            offset += len(chunk)


def scan(path: str, encoding: str) -> tuple[Vocab, int]:
    """First pass: the vocabulary and the number of tokens."""
    seen = np.zeros(256 if encoding == BYTES else MAX_CODE_POINT, dtype=bool)
    total = 0
    for values in _code_point_chunks(path, encoding):
        seen[values] = True  # presence only: a bincount per chunk cost 3x more (int64 copy + table)
        total += len(values)
    present = np.flatnonzero(seen)
    return Vocab([chr(int(c)) for c in present], encoding), total


def split_sizes(total: int, val_frac: float, test_frac: float) -> SplitSizes:
    """torch-rnn's contiguous split: train is the head, then val, then test."""
    val, test = int(val_frac * total), int(test_frac * total)
    sizes = SplitSizes(total - val - test, val, test)
    splits = (("train", 1, sizes.train), ("val", val_frac, val), ("test", test_frac, test))
    too_small = [name for name, frac, size in splits if frac > 0 and size <= 0]
    if too_small:
        raise UserError(f"the text ({total} tokens) is too short to give the {' and '.join(too_small)} "
                        f"split at least one token; use a longer text or other -val_frac/-test_frac")
    return sizes


def preprocess(path: str, output_h5: str, output_json: str, val_frac: float, test_frac: float,
               encoding: str = "utf-8", log: Callable[[str], None] = print) -> tuple[Vocab, SplitSizes]:
    """Tokenize `path` and write the HDF5 splits and the JSON vocabulary (each atomically)."""
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise UserError("-val_frac and -test_frac must be in [0, 1) and their sum below 1: they leave nothing "
                        "for training otherwise")
    vocab, total = scan(path, encoding)
    if total == 0:
        raise UserError(f"{path} is empty: there is nothing to train on")
    sizes = split_sizes(total, val_frac, test_frac)
    _check_outputs(path, output_h5, output_json)
    dtype = id_dtype(len(vocab))
    lookup = np.zeros(256 if encoding == BYTES else MAX_CODE_POINT, dtype=dtype)
    lookup[[ord(t) for t in vocab.tokens]] = np.arange(1, len(vocab) + 1, dtype=dtype)

    # Names of this process's own, so that runs preprocessing the same folder at once do not collide.
    h5_tmp, json_tmp = (f"{output}.{os.getpid()}.tmp" for output in (output_h5, output_json))
    try:
        with h5py.File(h5_tmp, "w") as h5:
            datasets = [(h5.create_dataset(name, (size,), dtype=dtype), size)
                        for name, size in (("train", sizes.train), ("val", sizes.val), ("test", sizes.test))]
            written = 0
            for values in _code_point_chunks(path, encoding):
                written = _write_ids(datasets, lookup[values], written)
        with open(json_tmp, "w", encoding="utf-8") as handle:
            json.dump({**vocab.to_json(), "source": os.path.abspath(path),
                       "sizes": {"train": sizes.train, "val": sizes.val, "test": sizes.test}},
                      handle, ensure_ascii=False)
        os.replace(h5_tmp, output_h5)
        os.replace(json_tmp, output_json)
    except OSError as error:
        raise UserError(f"cannot write {output_h5} and {output_json}: {error.strerror or error}") from None
    finally:
        for leftover in (h5_tmp, json_tmp):
            if os.path.exists(leftover):
                os.remove(leftover)
    log(f"vocabulary size: {len(vocab)} ({'bytes' if encoding == BYTES else encoding}), ids stored as {dtype.name}")
    log(f"tokens: train {sizes.train}, val {sizes.val}, test {sizes.test}")
    log(f"wrote {output_h5} and {output_json}")
    empty = [name for name, size in (("val", sizes.val), ("test", sizes.test)) if size == 0]
    if empty:
        # as torch-rnn's own preprocess.py writes them; said here, because its loader fails on them much later
        log(f"note: the {' and '.join(empty)} split{'s are' if len(empty) > 1 else ' is'} empty: fine for train.py, "
            f"but torch-rnn's train.lua cannot load an empty split; for torch-rnn give "
            f"{' and '.join(f'-{name}_frac' for name in empty)} (its default: 0.1)")
    return vocab, sizes


def _check_outputs(path: str, output_h5: str, output_json: str) -> None:
    """A UserError unless both outputs are distinct files, not the input, in folders that exist (made
    now if missing) and can be written."""
    if os.path.abspath(output_h5) == os.path.abspath(output_json):
        raise UserError("-output_h5 and -output_json must be different files")
    for output in (output_h5, output_json):
        if os.path.exists(output) and os.path.samefile(output, path):
            raise UserError(f"output {output} is the input file; choose another -output_h5/-output_json")
        if os.path.isdir(output):
            raise UserError(f"output {output} is a folder, not a file name")
        folder = os.path.dirname(os.path.abspath(output))
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create output folder {folder}: {error.strerror}") from None
        if not os.access(folder, os.W_OK):
            raise UserError(f"cannot write to folder {folder}")


def _write_ids(datasets: list, ids: np.ndarray, written: int) -> int:
    """Write the ids of tokens written..written+len(ids) into the splits they fall in."""
    start = 0  # position of the current split's first token in the whole text
    for dataset, size in datasets:
        lo, hi = max(written, start), min(written + len(ids), start + size)
        if lo < hi:
            dataset[lo - start:hi - start] = ids[lo - written:hi - written]
        start += size
    return written + len(ids)
