"""preprocess.py's files as torch-rnn reads them (docs/behaviour.md §2.1).

torch-rnn's train.lua loads an HDF5 file through util/DataLoader.lua, which reads the three
datasets with torch-hdf5. Both are written out again below from their sources
(jcjohnson/torch-rnn util/DataLoader.lua, deepmind/torch-hdf5 luasrc/ffi.lua and dataset.lua), with
Lua's arithmetic (math.floor, `%`, a division by zero), so that the tests state what torch-rnn
makes of the files this project writes.
"""
import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from util import corpus
from util.data import read_h5_json, stream_split

# torch-hdf5's hdf5._getTorchType: an integer dataset becomes the Torch tensor of its width, whatever
# its sign (ByteTensor, ShortTensor, IntTensor, LongTensor), and HDF5DataSet:all() reads the file's
# integers into that tensor's memory in the dataset's own native type: the bits are kept.
TORCH_TENSOR_OF_WIDTH = {1: np.uint8, 2: np.int16, 4: np.int32, 8: np.int64}


class LuaError(Exception):
    """Where torch-rnn's train.lua would stop with a Lua or Torch error."""


def torch_hdf5_all(dataset: h5py.Dataset) -> np.ndarray:
    """f:read(name):all(): the dataset as the Torch tensor torch-hdf5 makes of it."""
    values = dataset[()]
    if values.dtype.kind not in "iu":
        raise LuaError(f"not an integer dataset: {values.dtype}")
    return values.view(TORCH_TENSOR_OF_WIDTH[values.dtype.itemsize])


def lua_mod(a: float, b: float) -> float:
    """Lua's a % b, a - floor(a / b) * b; LuaJIT gives NaN for b = 0."""
    return math.nan if b == 0 else a - math.floor(a / b) * b


def torch_range(v: np.ndarray, first: float, last: float) -> np.ndarray:
    """v[{{first, last}}] on a 1-D Torch tensor: 1-based and inclusive; an empty tensor has no
    dimension to index, and a bound outside 1..#v (NaN included) is an error."""
    if len(v) == 0:
        raise LuaError("indexing an empty tensor")
    if not (1 <= first <= last <= len(v)):  # False for NaN
        raise LuaError(f"index {{{first}, {last}}} out of range for a tensor of {len(v)}")
    return v[int(first) - 1:int(last)]


def torch_view(v: np.ndarray, n: float, t: int) -> np.ndarray:
    """v:view(n, -1, t), which needs n >= 1 and n * t dividing #v."""
    if not (n >= 1 and len(v) % (n * t) == 0):
        raise LuaError(f"cannot view {len(v)} elements as {n} x -1 x {t}")
    return v.reshape(int(n), -1, t)


def data_loader(h5_path: Path, N: int, T: int) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """DataLoader:__init: each split's (vx, vy), (n_batches, batch_size, T) arrays of 1-based ids
    (batch k is vx[k - 1]), and what it printed."""
    with h5py.File(h5_path, "r") as f:
        splits = {name: torch_hdf5_all(f[name]) for name in ("train", "val", "test")}  # each one must exist
    printed, loaded = [], {}
    for split, v in splits.items():
        num = len(v)
        n_cur = N
        if num - 1 < N * T:  # `if (N * T > num - 1)`
            n_cur = math.floor((num - 1) / T)
            printed.append(f"Not enough {split} data, reducing batch size to {n_cur}")
        extra = lua_mod(num, n_cur * T)
        if extra == 0:  # "Ensure that `vy` is non-empty"
            extra = n_cur * T
        try:
            vx = torch_view(torch_range(v, 1, num - extra), n_cur, T).transpose(1, 0, 2)
            vy = torch_view(torch_range(v, 2, num - extra + 1), n_cur, T).transpose(1, 0, 2)
        except LuaError as error:
            raise LuaError(f"{split}: {error}, after printing {printed}") from None
        loaded[split] = (vx, vy)
    return loaded, printed


def preprocessed(tmp_path: Path, text: str, val_frac: float = 0.05,
                 test_frac: float = 0.0) -> tuple[Path, Path, list[str]]:
    """preprocess.py's files for `text`, and what it said."""
    source = tmp_path / "input.txt"
    source.write_text(text, encoding="utf-8", newline="")
    h5, js = tmp_path / "out.h5", tmp_path / "out.json"
    said: list[str] = []
    corpus.preprocess(str(source), str(h5), str(js), val_frac, test_frac, log=said.append)
    return h5, js, said


def distinct_text(vocab_size: int) -> str:
    """A text of vocab_size distinct code points (from U+10000: 4 UTF-8 bytes each), shuffled,
    repeated to at least 4,000 tokens."""
    characters = np.array([chr(0x10000 + i) for i in range(vocab_size)])
    order = np.random.default_rng(vocab_size).permutation(vocab_size)
    return "".join(characters[order]) * max(2, 4000 // vocab_size)


# ---- ids and their types ----------------------------------------------------------------------------

@pytest.mark.parametrize("vocab_size, stored", [(65, np.uint8), (300, np.uint16), (32767, np.uint16),
                                                (32768, np.uint32)])
def test_torch_rnn_reads_every_id_as_written(tmp_path, vocab_size, stored):
    """uint8 up to 255 tokens, uint16 up to 32,767 and uint32 above: torch-hdf5 reads every id back
    unchanged, and its batches are this project's (stream_split) for the same shape."""
    h5, js, _ = preprocessed(tmp_path, distinct_text(vocab_size), 0.1, 0.1)
    with h5py.File(h5) as f:
        assert {f[name].dtype for name in f} == {np.dtype(stored)}
    loaded, printed = data_loader(h5, 3, 5)
    assert printed == []
    _, ours = read_h5_json(str(h5), str(js))
    for name, (vx, vy) in loaded.items():
        assert vx.min() >= 1 and vx.max() <= vocab_size
        split = stream_split(ours[name], 3, 5)
        # torch-rnn's batch k is vx[k]; this project's is the k-th 5-wide column block of split.x
        assert len(vx) == split.n_batches
        assert np.array_equal(vx.transpose(1, 0, 2).reshape(3, -1) - 1, split.x)
        assert np.array_equal(vy.transpose(1, 0, 2).reshape(3, -1) - 1, split.y)


def test_uint16_ids_above_32767_would_turn_negative_in_torch_rnn(tmp_path):
    """Why 2-byte ids stop at 32,767: the ShortTensor torch-hdf5 makes of uint16 is signed."""
    with h5py.File(tmp_path / "old.h5", "w") as f:
        for name in ("train", "val", "test"):
            f.create_dataset(name, data=np.array([1, 32767, 32768, 40000, 65535] * 20, dtype=np.uint16))
    (vx, _), *_ = data_loader(tmp_path / "old.h5", 2, 4)[0].values()
    assert sorted(set(vx.ravel().tolist())) == [-32768, -25536, -1, 1, 32767]


# ---- splits -----------------------------------------------------------------------------------------

def test_default_empty_test_split_stops_torch_rnn_as_its_own_preprocess_does(tmp_path):
    """-test_frac 0 (the default) writes an empty test dataset, as torch-rnn's preprocess.py does for
    --test_frac 0: DataLoader.lua reads all three splits and gets a batch size of -1 for it. Any
    -test_frac that gives the test split more than seq_length tokens loads."""
    text = "".join(np.random.default_rng(0).choice(list("abcdefgh \n"), 2000))
    h5, _, said = preprocessed(tmp_path, text)
    assert "the test split is empty" in said[-1] and "for torch-rnn give -test_frac" in said[-1]
    with pytest.raises(LuaError, match=r"^test: indexing an empty tensor, .*reducing batch size to -1'\]$"):
        data_loader(h5, 50, 4)
    h5, _, said = preprocessed(tmp_path, text, 0.05, 0.05)
    assert not any(line.startswith("note:") for line in said)
    loaded, printed = data_loader(h5, 50, 4)
    # 100 tokens each: fewer than one 50 x 4 batch, so torch-rnn shrinks the batch (train.py would not)
    assert printed == [f"Not enough {name} data, reducing batch size to 24" for name in ("val", "test")]
    assert [len(loaded[name][0]) for name in ("train", "val", "test")] == [8, 1, 1]


def test_torch_rnn_needs_more_than_seq_length_tokens_in_every_split(tmp_path):
    text = "".join(np.random.default_rng(1).choice(list("abcdefgh \n"), 100))
    h5, _, _ = preprocessed(tmp_path, text, 0.05, 0.05)  # 5 tokens of val and test
    with pytest.raises(LuaError, match="out of range"):
        data_loader(h5, 2, 5)  # batch size floor(4 / 5) = 0: 5 % 0 is NaN
    loaded, _ = data_loader(h5, 2, 4)
    assert loaded["val"][0].shape == (1, 1, 4)


# ---- the vocabulary --------------------------------------------------------------------------------

def test_what_torch_rnn_takes_from_the_json(tmp_path):
    """train.lua keeps idx_to_token (keys through tonumber); cjson hands each token over as its UTF-8
    bytes: a character is a string of 1 to 4 bytes, and a byte token above 127 (stored as the
    character of that value) the two bytes of that character, not the byte itself."""
    _, js, _ = preprocessed(tmp_path, "aé红😀\n" * 20)
    table = json.loads(js.read_bytes())["idx_to_token"]
    assert sorted(int(key) for key in table) == list(range(1, 6))
    assert sorted(len(token.encode()) for token in table.values()) == [1, 1, 2, 3, 4]
    data = tmp_path / "bytes.bin"
    data.write_bytes(b"\xe7a\n" * 20)
    corpus.preprocess(str(data), str(tmp_path / "b.h5"), str(tmp_path / "b.json"), 0.1, 0.1, "bytes",
                      log=lambda _: None)
    table = json.loads((tmp_path / "b.json").read_bytes())["idx_to_token"]
    assert table["3"] == "\xe7" and b'"3": "\xc3\xa7"' in (tmp_path / "b.json").read_bytes()
