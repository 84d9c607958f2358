"""util/data.py: training's splits mapped from the HDF5 file (map_h5_json) instead of read in, and
batches cut on demand, give the same batches as the splits built whole in memory, as they were
built before (x and y arrays, y = x shifted, char-rnn's rolled by one); resume from a saved position;
a chunked (compressed) file read in instead; and no copy of a split in memory."""
import json
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from util import corpus, data
from util.data import (
    BatchLoader,
    Tokens,
    char_rnn_splits,
    load_training_data,
    map_h5_json,
    read_h5_json,
    stream_split,
)
from util.errors import UserError

B, T = 4, 7
SEED = 31


def quiet(_):
    pass


def write_text(path: Path, size: int, alphabet: str = "abcdefghij klmnopqrstuvwxyz,.\n") -> Path:
    rng = np.random.default_rng(size)
    path.write_text("".join(np.array(list(alphabet))[rng.integers(0, len(alphabet), size)]), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path, Path, Path]:
    """preprocess.py's files for one text: with val and test splits (-input_h5), and without (the
    -data_dir cache)."""
    folder = tmp_path_factory.mktemp("mapped")
    text = write_text(folder / "input.txt", 9000)
    corpus.preprocess(str(text), str(folder / "s.h5"), str(folder / "s.json"), 0.1, 0.05, log=quiet)
    corpus.preprocess(str(text), str(folder / "input.h5"), str(folder / "input.json"), 0.0, 0.0, log=quiet)
    return folder / "s.h5", folder / "s.json", folder / "input.h5", folder / "input.json"


# ---- the splits as they were built before: whole arrays in memory -----------------------------------

def reference_stream(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, the stream) of torch-rnn's layout, as arrays."""
    n = max(len(ids) - 1, 0) // (B * T) * (B * T)
    return ids[:n].reshape(B, -1), ids[1:n + 1].reshape(B, -1), ids


def reference_char_rnn(ids: np.ndarray, train_frac: float, val_frac: float) -> dict[str, tuple]:
    """{split: (x, y)} of char-rnn's layout, as arrays (np.roll for y)."""
    n = len(ids) // (B * T)
    flat = ids[:n * B * T]
    x, y = flat.reshape(B, -1), np.roll(flat, -1).reshape(B, -1)
    n_train = int(n * train_frac)
    n_val = n - n_train if 1 - (train_frac + val_frac) <= 0 else int(n * val_frac)
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n)}
    return {name: (x[:, lo * T:hi * T], y[:, lo * T:hi * T]) for name, (lo, hi) in bounds.items()}


def reference_random(inputs: np.ndarray, targets: np.ndarray, g: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch g of the random scheme cut from (rows, length) arrays (the module docstring's recipe)."""
    per_epoch = len(inputs) * ((inputs.shape[1] - (T - 1)) // T) // B
    bits = np.random.PCG64(np.random.SeedSequence([SEED, g // per_epoch]))
    offset = int(bits.random_raw()) % T
    per_row = (inputs.shape[1] - offset) // T
    chosen = np.argsort(bits.random_raw(len(inputs) * per_row), kind="stable")[:per_epoch * B]
    picked = chosen.reshape(per_epoch, B)[g % per_epoch]
    rows, columns = picked // per_row, (offset + picked % per_row * T)[:, None] + np.arange(T)
    return (torch.from_numpy(inputs[rows[:, None], columns]).long(),
            torch.from_numpy(targets[rows[:, None], columns]).long())


def block(x: np.ndarray, y: np.ndarray, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.from_numpy(np.ascontiguousarray(x[:, k * T:(k + 1) * T])).long(),
            torch.from_numpy(np.ascontiguousarray(y[:, k * T:(k + 1) * T])).long())


def same(a, b) -> bool:
    return all(u.dtype == v.dtype == torch.long and u.is_contiguous() and torch.equal(u, v)
               for u, v in zip(a, b, strict=True))


# ---- the same batches --------------------------------------------------------------------------------

def test_mapped_stream_batches_are_the_arrays_batches(files):
    h5, js, _, _ = files
    _, mapped = map_h5_json(str(h5), str(js))
    _, in_memory = read_h5_json(str(h5), str(js))
    assert all(isinstance(mapped[name].stored, np.memmap) and mapped[name].base == 1 for name in ("train", "val"))
    splits = {name: stream_split(tokens, B, T) for name, tokens in mapped.items()}
    consecutive, random = BatchLoader(splits, B, T), BatchLoader(splits, B, T, "random", SEED)
    for name, ids in in_memory.items():
        x, y, stream = reference_stream(ids)
        assert splits[name].n_batches == x.shape[1] // T > 0
        assert np.array_equal(splits[name].x, x) and np.array_equal(splits[name].y, y)
        for k in range(splits[name].n_batches + 1):  # round the end, to the first again
            assert same(consecutive.next_batch(name), block(x, y, k % splits[name].n_batches))
    stream = in_memory["train"]
    for g in range(2 * random.n_batches("train") + 3):
        assert same(random.next_batch("train"), reference_random(stream[None, :-1], stream[None, 1:], g))


@pytest.mark.parametrize("train_frac, val_frac", [(0.9, 0.1), (0.8, 0.1), (1.0, 0.0)])
def test_mapped_char_rnn_batches_are_the_arrays_batches(files, train_frac, val_frac):
    """The -data_dir cache (one train split) mapped, in char-rnn's layout: the rolled last target too."""
    _, _, h5, js = files
    _, mapped = map_h5_json(str(h5), str(js))
    ids = read_h5_json(str(h5), str(js))[1]["train"]
    assert len(mapped["val"]) == len(mapped["test"]) == 0
    splits = char_rnn_splits(mapped["train"], B, T, train_frac, val_frac)
    expected = reference_char_rnn(ids, train_frac, val_frac)
    loader = BatchLoader(splits, B, T)
    for name, (x, y) in expected.items():
        assert np.array_equal(splits[name].x, x) and np.array_equal(splits[name].y, y)
        for k in range(splits[name].n_batches):
            assert same(loader.next_batch(name), block(x, y, k))
    last = [name for name in ("train", "val", "test") if splits[name].n_batches][-1]
    assert splits[last].y[-1, -1] == ids[0]  # the layout's last target wraps round to the first token
    random = BatchLoader(splits, B, T, "random", SEED)
    for g in range(2 * random.n_batches("train") + 3):
        assert same(random.next_batch("train"), reference_random(*expected["train"], g))


@pytest.mark.parametrize("scheme", ["consecutive", "random"])
@pytest.mark.parametrize("source", ["h5", "data_dir"])
def test_resume_on_mapped_splits(files, scheme, source):
    """A new process maps the files again and gets nothing but the saved position: the same batches."""
    h5, js, cache_h5, cache_js = files

    def loader() -> BatchLoader:
        if source == "h5":
            tokens = map_h5_json(str(h5), str(js))[1]
            return BatchLoader({name: stream_split(t, B, T) for name, t in tokens.items()}, B, T, scheme, SEED)
        return BatchLoader(char_rnn_splits(map_h5_json(str(cache_h5), str(cache_js))[1]["train"], B, T, 0.9, 0.1),
                           B, T, scheme, SEED)

    whole = loader()
    run = [whole.next_batch("train") for _ in range(whole.n_batches("train") + 5)]
    first = loader()
    for _ in range(11):
        first.next_batch("train")
    resumed = loader()
    resumed.position["train"] = first.position["train"]
    assert all(same(a, resumed.next_batch("train")) for a in run[11:])


def test_training_maps_the_h5_source(files):
    h5, js, _, _ = files
    opt = type("Opt", (), {"input_h5": str(h5), "input_json": str(js), "batch_size": B, "seq_length": T})()
    _, loader = load_training_data(opt, "h5", log=quiet)
    assert all(isinstance(loader.splits[name].tokens.stored, np.memmap) for name in ("train", "val", "test"))


# ---- memory -----------------------------------------------------------------------------------------

def test_a_mapped_split_is_never_in_memory(tmp_path, monkeypatch):
    """Mapping, checking and cutting batches of a 3 MB split allocate a small part of it (the check's
    buffer, made small here); reading it in allocates it whole, once (no `ids - 1` copy)."""
    monkeypatch.setattr(data, "CHECK_TOKENS", 1 << 16)
    text = write_text(tmp_path / "big.txt", 3 << 20)
    h5, js = tmp_path / "big.h5", tmp_path / "big.json"
    corpus.preprocess(str(text), str(h5), str(js), 0.05, 0.0, log=quiet)

    def peak_of(work) -> int:
        tracemalloc.start()
        try:
            work()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    def train_from_map() -> None:
        tokens = map_h5_json(str(h5), str(js))[1]
        loader = BatchLoader({name: stream_split(t, 50, 50) for name, t in tokens.items()}, 50, 50)
        for k in range(loader.n_batches("val")):
            loader.batch("val", k)
        for _ in range(100):
            loader.next_batch("train")

    size = (3 << 20) * 0.95
    assert peak_of(train_from_map) < size / 20
    assert size <= peak_of(lambda: read_h5_json(str(h5), str(js))) < 1.2 * size


# ---- what cannot be mapped, and errors ----------------------------------------------------------------

def test_chunked_and_compressed_files_are_read_instead(files, tmp_path):
    h5, js, _, _ = files
    with h5py.File(h5) as source, h5py.File(tmp_path / "gz.h5", "w") as gz:
        for name in ("train", "val", "test"):
            gz.create_dataset(name, data=source[name][()], compression="gzip", chunks=(64,))
        gz.create_dataset("extra", data=np.arange(3))  # other datasets are ignored, as before
    _, mapped = map_h5_json(str(h5), str(js))
    _, read = map_h5_json(str(tmp_path / "gz.h5"), str(js))
    a, b = (BatchLoader({n: stream_split(t, B, T) for n, t in s.items()}, B, T) for s in (mapped, read))
    for name in ("train", "val"):
        assert not isinstance(read[name].stored, np.memmap) and read[name].base == 1
        assert a.n_batches(name) == b.n_batches(name) > 0
        for k in range(a.n_batches(name)):
            assert same(a.batch(name, k), b.batch(name, k))


def test_big_endian_and_wide_ids_are_mapped(tmp_path):
    h5, js = tmp_path / "be.h5", tmp_path / "be.json"
    ids = np.arange(1, 301, dtype=np.uint16).repeat(3)
    with h5py.File(h5, "w") as f:
        f.create_dataset("train", data=ids.astype(">u2"))
        f.create_dataset("val", data=ids[:100].astype(">u4"))
    js.write_text(json.dumps({"idx_to_token": {str(i): chr(0x4E00 + i) for i in range(1, 301)}}), encoding="utf-8")
    _, mapped = map_h5_json(str(h5), str(js))
    assert isinstance(mapped["train"].stored, np.memmap)
    split = stream_split(mapped["train"], B, T)
    assert np.array_equal(split.x, (ids[:split.x.size] - 1).reshape(B, -1))
    x, y = BatchLoader({"train": split, "val": stream_split(mapped["val"], B, T)}, B, T).batch("train", 3)
    assert x.tolist() == (ids[:split.x.size].reshape(B, -1)[:, 21:28] - 1).tolist()
    assert y.tolist() == (ids[1:split.x.size + 1].reshape(B, -1)[:, 21:28] - 1).tolist()
    assert mapped["val"].at(np.array([0, 99])).tolist() == [0, 33]


def test_ids_outside_the_vocabulary_in_any_part_of_a_mapped_split(files, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "CHECK_TOKENS", 1000)
    h5, js, _, _ = files
    for position, value in ((0, 0), (1999, 0), (-1, 200)):  # first, a part's last, the last one
        copy = tmp_path / f"bad{position}.h5"
        copy.write_bytes(h5.read_bytes())
        with h5py.File(copy, "r+") as f:
            f["train"][position] = value
        with pytest.raises(UserError, match=r"does not match .*split 'train' has ids outside 1\.\.\d+"):
            map_h5_json(str(copy), str(js))


def test_a_file_system_that_cannot_map_falls_back_to_reading(files, monkeypatch):
    h5, js, _, _ = files

    def refuse(*_args, **_kwargs):
        raise OSError(19, "No such device")

    _, mapped = map_h5_json(str(h5), str(js))
    memmap = np.memmap
    monkeypatch.setattr(np, "memmap", refuse)
    _, read = map_h5_json(str(h5), str(js))
    assert isinstance(mapped["train"].stored, memmap) and not isinstance(read["train"].stored, memmap)
    assert np.array_equal(read["train"].stored, mapped["train"].stored)


def test_tokens_of_a_plain_array_are_zero_based():
    tokens = Tokens(np.arange(5, dtype=np.uint8))
    assert len(tokens) == 5 and tokens.at(np.array([[4, 0]])).tolist() == [[4, 0]]
    assert Tokens(np.arange(1, 6, dtype=np.uint8), base=1).at(np.array([0, 4])).tolist() == [0, 4]
