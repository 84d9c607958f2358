"""Text file -> vocabulary + token ids in torch-rnn's HDF5/JSON layout.

The file is read twice in fixed-size chunks: the first pass validates the text, counts tokens and
collects the vocabulary; the second maps tokens to ids and writes them straight into the HDF5
datasets. Memory stays around one chunk whatever the file size. Both outputs are written under
temporary names and renamed into place only once the second pass has found the file as the first
read it (TextFile), so an error, a change to the input or a signal leaves the old outputs as they were.
"""
import codecs
import hashlib
import itertools
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import h5py
import numpy as np

from util.errors import UserError
from util.files import open_regular, replaced_together
from util.vocab import BYTES, Vocab, check_text_encoding, has_utf8_bom

# 1 MiB: each chunk's temporaries (decoded text, code points, index arrays) stay cache-sized;
# 16 MiB chunks ran at half the speed and 3-4x the peak memory (bench/preprocess_speed.py).
CHUNK_BYTES = 1 << 20
MAX_CODE_POINT = 0x110000


class DecodeError(UserError):
    """The text does not decode in the chosen encoding."""


class InputChanged(UserError):
    """The input file changed while it was being read."""


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


class Identity(NamedTuple):
    """What tells one state of a file from another, bar its bytes."""
    size: int
    mtime_ns: int
    device: int
    inode: int

    @classmethod
    def of(cls, info: os.stat_result) -> "Identity":
        return cls(info.st_size, info.st_mtime_ns, info.st_dev, info.st_ino)


class TextFile:
    """The input, opened once (a regular file only: util.files) and read in two passes through the one
    descriptor. Each pass reads the bytes the file held when it was opened, no more, hashing them,
    and ends with a check that it read what the first pass read: the same bytes (SHA-256; cheap
    beside the decoding), and the path still naming this file, of the same size and modification
    time. A file written to meanwhile would otherwise give ids of one text for the vocabulary of
    another (id 0, say, for a character the first pass never saw)."""

    def __init__(self, path: str):
        self.path = path
        self.handle = open_regular(path, "input file")
        self.identity = Identity.of(os.fstat(self.handle.fileno()))
        self.digest: bytes | None = None  # of the first pass's bytes

    def __enter__(self) -> "TextFile":
        return self

    def __exit__(self, *_: object) -> None:
        self.handle.close()

    def chunks(self) -> Iterator[bytes]:
        """One pass: the file's bytes from the start, CHUNK_BYTES at a time; InputChanged at its end
        if the file changed."""
        self.handle.seek(0)
        digest = hashlib.sha256()
        left = self.identity.size
        while left > 0 and (chunk := self.handle.read(min(CHUNK_BYTES, left))):
            digest.update(chunk)
            left -= len(chunk)
            yield chunk
        if self.digest is None:
            self.digest = digest.digest()
        if left or digest.digest() != self.digest or not self.unchanged():
            raise self.changed()

    def unchanged(self) -> bool:
        try:
            named = Identity.of(os.stat(self.path))
        except OSError:  # removed, or renamed away
            return False
        return Identity.of(os.fstat(self.handle.fileno())) == self.identity == named

    def is_named_by(self, path: str) -> bool:
        """Whether `path` names the file open."""
        named = Identity.of(os.stat(path))
        return (named.device, named.inode) == (self.identity.device, self.identity.inode)

    def changed(self) -> "InputChanged":
        return InputChanged(f"input file {self.path} changed while it was being read (it is read twice); nothing "
                            f"was written: run again once nothing writes to it")


def _code_point_chunks(source: TextFile, encoding: str) -> Iterator[np.ndarray]:
    """One pass over the file: its tokens as integer arrays (code points, or byte values)."""
    chunks = source.chunks()
    if encoding == BYTES:
        yield from (np.frombuffer(chunk, dtype=np.uint8) for chunk in chunks)
        return
    check_text_encoding(encoding)
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    drops_bom = has_utf8_bom(codecs.BOM_UTF8, encoding)  # a leading BOM is no token (utf-8-sig drops it itself)
    offset = 0  # file offset of the first byte of `chunk`
    for chunk in itertools.chain(chunks, [None]):  # None: the final call, which flushes the decoder
        data = chunk or b""
        pending = len(decoder.getstate()[0])
        try:
            text = decoder.decode(data, final=chunk is None)
            if drops_bom and text:
                text, drops_bom = text.removeprefix("\ufeff"), False
            codes = text.encode("utf-32-le")
        except UnicodeError as error:
            raise _decode_error(source.path, encoding, error, offset - pending) from None
        if codes:
            yield np.frombuffer(codes, dtype=np.uint32)
        offset += len(data)


def _decode_error(path: str, encoding: str, error: UnicodeError, start: int) -> DecodeError:
    """The one line for text that does not decode; `start`: the file offset of error.object[0]."""
    hint = "; try -encoding bytes or -encoding latin-1"
    if isinstance(error, UnicodeDecodeError) and error.start < len(error.object) and "BOM" not in error.reason:
        return DecodeError(f"{path} is not valid {encoding}: cannot decode byte 0x{error.object[error.start]:02x} "
                           f"at offset {start + error.start}{hint}")
    if isinstance(error, UnicodeEncodeError):  # a lone surrogate, which utf-7 and raw_unicode_escape can give
        surrogate = ord(error.object[error.start])
        return DecodeError(f"{path} is not valid {encoding} text: it decodes to U+{surrogate:04X}, a lone surrogate, "
                           f"which is no character{hint}")
    # utf-16 and utf-32 with no byte-order mark: a bare UnicodeError before Python 3.13, since then a
    # UnicodeDecodeError at byte 0 whose reason says so
    reason = error.reason if isinstance(error, UnicodeDecodeError) else error
    return DecodeError(f"{path} is not valid {encoding}: {reason}{hint}")


def scan(path: str, encoding: str) -> tuple[Vocab, int]:
    """The first pass on its own (tests): the vocabulary and the number of tokens."""
    with TextFile(path) as source:
        return _scan(source, encoding)


def _scan(source: TextFile, encoding: str) -> tuple[Vocab, int]:
    """First pass: the vocabulary and the number of tokens."""
    seen = np.zeros(256 if encoding == BYTES else MAX_CODE_POINT, dtype=bool)
    total = 0
    for values in _code_point_chunks(source, encoding):
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
    """Tokenize `path` and write the HDF5 splits and the JSON vocabulary (together: util.files)."""
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise UserError("-val_frac and -test_frac must be in [0, 1) and their sum below 1: they leave nothing "
                        "for training otherwise")
    with TextFile(path) as source:
        vocab, total = _scan(source, encoding)
        if total == 0:
            raise UserError(f"{path} is empty: there is nothing to train on")
        sizes = split_sizes(total, val_frac, test_frac)
        _check_outputs(source, output_h5, output_json)
        dtype = id_dtype(len(vocab))
        with replaced_together([output_h5, output_json], f"{output_h5} and {output_json}") as (h5_tmp, json_tmp):
            _write_splits(source, encoding, vocab, sizes, h5_tmp, dtype)
            with open(json_tmp, "w", encoding="utf-8") as handle:
                json.dump({**vocab.to_json(), "source": os.path.abspath(path),
                           "sizes": {"train": sizes.train, "val": sizes.val, "test": sizes.test}},
                          handle, ensure_ascii=False)
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


def _write_splits(source: TextFile, encoding: str, vocab: Vocab, sizes: SplitSizes, h5_path: str,
                  dtype: np.dtype) -> None:
    """Second pass: the ids, written straight into the HDF5 datasets."""
    lookup = np.zeros(256 if encoding == BYTES else MAX_CODE_POINT, dtype=dtype)
    lookup[[ord(t) for t in vocab.tokens]] = np.arange(1, len(vocab) + 1, dtype=dtype)
    with h5py.File(h5_path, "w") as h5:
        datasets = [(h5.create_dataset(name, (size,), dtype=dtype), size)
                    for name, size in (("train", sizes.train), ("val", sizes.val), ("test", sizes.test))]
        written = 0
        try:
            for values in _code_point_chunks(source, encoding):
                written = _write_ids(datasets, lookup[values], written)
        except DecodeError:  # the first pass decoded these bytes: they are others now
            raise source.changed() from None


def _check_outputs(source: TextFile, output_h5: str, output_json: str) -> None:
    """A UserError unless both outputs are distinct files, not the input (the file open, whatever its
    name names now), in folders that exist (made now if missing) and can be written."""
    if os.path.abspath(output_h5) == os.path.abspath(output_json):
        raise UserError("-output_h5 and -output_json must be different files")
    for output in (output_h5, output_json):
        if os.path.exists(output) and source.is_named_by(output):
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
