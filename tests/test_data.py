"""util/data.py: reading HDF5/JSON pairs, the two batch layouts, the -data_dir cache, BatchLoader
(docs/behaviour.md §2.2 data source and training-data paragraphs)."""
import json
import math
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from conftest import REPO
from util import corpus, data as util_data
from util.data import BatchLoader, Tokens, char_rnn_splits, load_data_dir, read_h5_json, stream_split
from util.errors import UserError

SHAKESPEARE = REPO / "data" / "tinyshakespeare" / "input.txt"
HONGLOUMENG = REPO / "data" / "hongloumeng" / "input.txt"


def quiet(_):
    pass


# ---- read_h5_json ------------------------------------------------------------------------------------

def test_read_our_files(tmp_path):
    text = "hello, world\r\n红楼梦 " * 30
    src = tmp_path / "in.txt"
    src.write_text(text, encoding="utf-8", newline="")
    h5, js = tmp_path / "o.h5", tmp_path / "o.json"
    corpus.preprocess(str(src), str(h5), str(js), 0.1, 0.1, log=quiet)
    vocab, splits = read_h5_json(str(h5), str(js))
    assert vocab.tokens == sorted(set(text)) and vocab.encoding == "utf-8"
    n = len(text)
    val, test = int(0.1 * n), int(0.1 * n)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [n - val - test, val, test]
    joined = np.concatenate([splits["train"], splits["val"], splits["test"]])
    assert "".join(vocab.tokens[i] for i in joined) == text  # 0-based ids in memory
    assert joined.dtype == np.uint8 and joined.min() == 0


def test_read_bytes_vocabulary(tmp_path):
    data = bytes(range(256)) * 3
    src = tmp_path / "in.bin"
    src.write_bytes(data)
    h5, js = tmp_path / "o.h5", tmp_path / "o.json"
    corpus.preprocess(str(src), str(h5), str(js), 0.0, 0.0, "bytes", log=quiet)
    vocab, splits = read_h5_json(str(h5), str(js))
    assert vocab.is_bytes and len(vocab) == 256
    assert splits["train"].dtype == np.uint8 and bytes(splits["train"].tolist()) == data


def test_read_large_vocabulary_uses_int32(tmp_path):
    text = "".join(chr(0x4E00 + i) for i in range(300)) * 2
    src = tmp_path / "in.txt"
    src.write_text(text, encoding="utf-8")
    h5, js = tmp_path / "o.h5", tmp_path / "o.json"
    corpus.preprocess(str(src), str(h5), str(js), 0.5, 0.0, log=quiet)
    vocab, splits = read_h5_json(str(h5), str(js))
    assert splits["train"].dtype == np.int32 and splits["val"].max() == 299
    assert "".join(vocab.tokens[i] for i in splits["val"]) == text[300:]


def write_torch_rnn_pair(folder, text, with_test=True, tokens=None):
    """What jcjohnson/torch-rnn's scripts/preprocess.py writes: ids in order of first appearance,
    uint8 datasets, a JSON with only idx_to_token/token_to_idx."""
    token_to_idx = {}
    for ch in tokens or text:
        token_to_idx.setdefault(ch, len(token_to_idx) + 1)
    ids = np.array([token_to_idx[ch] for ch in text], dtype=np.uint8)
    h5, js = os.path.join(folder, "tr.h5"), os.path.join(folder, "tr.json")
    with h5py.File(h5, "w") as f:
        f.create_dataset("train", data=ids[:-10])
        f.create_dataset("val", data=ids[-10:-5])
        if with_test:
            f.create_dataset("test", data=ids[-5:])
    with open(js, "w") as f:
        json.dump({"token_to_idx": token_to_idx, "idx_to_token": {v: k for k, v in token_to_idx.items()}}, f)
    return h5, js, token_to_idx


def test_read_torch_rnn_pair(tmp_path):
    text = "The quick brown fox jumps over the lazy dog.\n" * 3
    h5, js, token_to_idx = write_torch_rnn_pair(str(tmp_path), text)
    vocab, splits = read_h5_json(h5, js)
    assert vocab.encoding == "utf-8"  # no 'encoding' key: torch-rnn's text is UTF-8
    assert vocab.tokens == list(token_to_idx)  # their order, not re-sorted
    joined = np.concatenate([splits["train"], splits["val"], splits["test"]])
    assert "".join(vocab.tokens[i] for i in joined) == text
    assert len(splits["val"]) == 5 and len(splits["test"]) == 5


def test_torch_rnn_pair_without_test_split(tmp_path):
    h5, js, _ = write_torch_rnn_pair(str(tmp_path), "abcdefghijklmnopqrstuvwxyz", with_test=False)
    _, splits = read_h5_json(h5, js)
    assert sorted(splits) == ["train", "val"]


def test_mismatched_pair_ids_beyond_vocabulary(tmp_path):
    h5, _, _ = write_torch_rnn_pair(str(tmp_path), "abcdefghijklmnopqrstuvwxyz")  # 26 tokens
    js = tmp_path / "small.json"
    js.write_text(json.dumps({"idx_to_token": {"1": "a", "2": "b", "3": "c"}}))
    with pytest.raises(UserError) as error:
        read_h5_json(h5, str(js))
    message = str(error.value)
    assert "does not match" in message and "small.json" in message and "1..3" in message


def test_id_zero_is_rejected(tmp_path):
    h5, js = tmp_path / "z.h5", tmp_path / "z.json"
    with h5py.File(h5, "w") as f:
        f["train"] = np.array([1, 0, 1], dtype=np.uint8)
        f["val"] = np.array([1], dtype=np.uint8)
    js.write_text(json.dumps({"idx_to_token": {"1": "a"}}))
    with pytest.raises(UserError, match=r"split 'train' has ids outside 1\.\.1"):
        read_h5_json(str(h5), str(js))


def test_missing_val_dataset(tmp_path):
    h5, js = tmp_path / "m.h5", tmp_path / "m.json"
    with h5py.File(h5, "w") as f:
        f["train"] = np.array([1, 2, 1], dtype=np.uint8)
    js.write_text(json.dumps({"idx_to_token": {"1": "a", "2": "b"}}))
    with pytest.raises(UserError, match=r"m\.h5 has no 'val' dataset"):
        read_h5_json(str(h5), str(js))


def test_bad_datasets(tmp_path):
    js = tmp_path / "v.json"
    js.write_text(json.dumps({"idx_to_token": {"1": "a", "2": "b"}}))
    for name, data in [("2d", np.ones((2, 3), dtype=np.uint8)), ("float", np.ones(4, dtype=np.float32))]:
        h5 = tmp_path / f"{name}.h5"
        with h5py.File(h5, "w") as f:
            f["train"] = data
            f["val"] = np.ones(2, dtype=np.uint8)
        with pytest.raises(UserError, match="'train' is not a 1-D array of integer ids"):
            read_h5_json(str(h5), str(js))


@pytest.mark.parametrize("content, fragment", [
    ('{"hello": 1}', "not a vocabulary file"),
    ("[1, 2, 3]", "not a vocabulary file"),
    ('{"idx_to_token": ["a", "b"]}', "not a vocabulary file"),
    ('{"idx_to_token": {"1": "ab"}}', "must map 1..N to single characters"),
    ('{"idx_to_token": {"2": "a"}}', "must map 1..N to single characters"),
    ('{"idx_to_token": {"one": "a"}}', "not a vocabulary file"),
    ("this is not json {", "cannot read vocabulary file"),
    ("", "cannot read vocabulary file"),
])
def test_json_that_is_not_a_vocabulary(tmp_path, content, fragment):
    h5, _, _ = write_torch_rnn_pair(str(tmp_path), "abcdefghijklmnopqrstuvwxyz")
    js = tmp_path / "bad.json"
    js.write_text(content)
    with pytest.raises(UserError) as error:
        read_h5_json(h5, str(js))
    assert fragment in str(error.value) and "bad.json" in str(error.value)


def test_truncated_hdf5(tmp_path):
    h5, js, _ = write_torch_rnn_pair(str(tmp_path), "abcdefghijklmnopqrstuvwxyz" * 100)
    data = Path(h5).read_bytes()
    Path(h5).write_bytes(data[:len(data) // 2])
    with pytest.raises(UserError) as error:
        read_h5_json(h5, js)
    message = str(error.value)
    assert message.startswith("cannot read data file") and "tr.h5" in message and "\n" not in message


def test_not_hdf5_and_missing_files(tmp_path):
    h5, js, _ = write_torch_rnn_pair(str(tmp_path), "abcdefghijklmnopqrstuvwxyz")
    with pytest.raises(UserError, match="cannot read data file"):
        read_h5_json(js, js)  # a JSON file given as the HDF5
    with pytest.raises(UserError, match=r"data file .*nope\.h5 does not exist"):
        read_h5_json(str(tmp_path / "nope.h5"), js)
    with pytest.raises(UserError, match=r"vocabulary file .*nope\.json does not exist"):
        read_h5_json(h5, str(tmp_path / "nope.json"))


# ---- torch-rnn layout: stream_split -----------------------------------------------------------------

def reference_stream_batches(ids, B, T):
    """torch-rnn's DataLoader, written out: x = v[1..N], y = v[2..N+1] with N the largest
    multiple of B*T below len(v); each viewed as B rows; batch k = columns k*T..(k+1)*T."""
    n = (len(ids) - 1) // (B * T) * (B * T) if len(ids) else 0
    rows = n // B
    batches = []
    for k in range(n // (B * T)):
        x = [[ids[r * rows + k * T + t] for t in range(T)] for r in range(B)]
        y = [[ids[r * rows + k * T + t + 1] for t in range(T)] for r in range(B)]
        batches.append((x, y))
    return batches


@settings(max_examples=100, deadline=None)
@given(length=st.integers(0, 400), B=st.integers(1, 6), T=st.integers(1, 9), seed=st.integers(0, 2 ** 16))
def test_stream_split_matches_direct_construction(length, B, T, seed):
    ids = np.random.default_rng(seed).integers(0, 40, length).astype(np.uint8)
    split = stream_split(ids, B, T)
    expected = reference_stream_batches(ids.tolist(), B, T)
    assert split.n_batches == len(expected) == max(length - 1, 0) // (B * T)
    assert split.wanted == (length > 0)
    assert split.x.shape == split.y.shape == (B, len(expected) * T)
    for k, (x, y) in enumerate(expected):
        assert split.x[:, k * T:(k + 1) * T].tolist() == x
        assert split.y[:, k * T:(k + 1) * T].tolist() == y


def test_stream_split_exact_multiple_leaves_a_next_token():
    ids = np.arange(24, dtype=np.int32)  # 24 = 2 * 3 * 4: needs a 25th token for the last target
    split = stream_split(ids, 2, 3)
    assert split.n_batches == 3
    assert split.x.tolist() == [[0, 1, 2, 3, 4, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17]]
    assert split.y.tolist() == [[1, 2, 3, 4, 5, 6, 7, 8, 9], [10, 11, 12, 13, 14, 15, 16, 17, 18]]
    assert stream_split(np.arange(25), 2, 3).n_batches == 4


# ---- char-rnn layout: char_rnn_splits ----------------------------------------------------------------

def reference_char_rnn(data, batch_size, seq_length, train_frac, val_frac):
    """CharSplitLMMinibatchLoader.create/next_batch (char-rnn, util/CharSplitLMMinibatchLoader.lua
    and train.lua), transcribed with 1-based Lua indices kept in the comments."""
    test_frac = max(0, 1 - (train_frac + val_frac))                   # train.lua
    length = len(data)
    if length % (batch_size * seq_length) != 0:
        data = data[:batch_size * seq_length * math.floor(length / (batch_size * seq_length))]
    ydata = list(data)
    ydata[:-1] = data[1:]                                              # ydata:sub(1,-2):copy(data:sub(2,-1))
    if data:
        ydata[-1] = data[0]                                            # ydata[-1] = data[1]
    row = len(data) // batch_size                                      # data:view(batch_size, -1)
    x_rows = [data[r * row:(r + 1) * row] for r in range(batch_size)]
    y_rows = [ydata[r * row:(r + 1) * row] for r in range(batch_size)]
    nbatches = row // seq_length                                       # :split(seq_length, 2)
    x_batches = [[xr[j * seq_length:(j + 1) * seq_length] for xr in x_rows] for j in range(nbatches)]
    y_batches = [[yr[j * seq_length:(j + 1) * seq_length] for yr in y_rows] for j in range(nbatches)]
    if test_frac == 0:
        ntrain = math.floor(nbatches * train_frac)
        nval = nbatches - ntrain
        ntest = 0
    else:
        ntrain = math.floor(nbatches * train_frac)
        nval = math.floor(nbatches * val_frac)
        ntest = nbatches - nval - ntrain
    offsets = {"train": 0, "val": ntrain, "test": ntrain + nval}       # next_batch: ix + self.ntrain ...
    sizes = {"train": ntrain, "val": nval, "test": ntest}
    return {name: [(x_batches[offsets[name] + i], y_batches[offsets[name] + i]) for i in range(sizes[name])]
            for name in sizes}


@pytest.mark.parametrize("length, B, T, train_frac, val_frac", [
    (1000, 4, 5, 0.95, 0.05), (1000, 4, 5, 0.8, 0.1), (999, 3, 7, 0.5, 0.25), (400, 2, 10, 0.9, 0.1),
    (40, 2, 10, 0.5, 0.5), (200, 5, 4, 0.7, 0.2), (200, 1, 1, 1.0, 0.0), (57, 7, 8, 0.95, 0.05),
])
def test_char_rnn_splits_match_char_rnn(length, B, T, train_frac, val_frac):
    ids = np.random.default_rng(length + B).integers(0, 65, length).astype(np.uint8)
    splits = char_rnn_splits(ids, B, T, train_frac, val_frac)
    expected = reference_char_rnn(ids.tolist(), B, T, train_frac, val_frac)
    loader = None
    for name, batches in expected.items():
        assert splits[name].n_batches == len(batches), name
        for k, (x, y) in enumerate(batches):
            assert splits[name].x[:, k * T:(k + 1) * T].tolist() == x, (name, k)
            assert splits[name].y[:, k * T:(k + 1) * T].tolist() == y, (name, k)
    if splits["train"].n_batches and (val_frac == 0 or splits["val"].n_batches):
        loader = BatchLoader(splits, B, T)
        for name, batches in expected.items():
            for x, y in batches:
                bx, by = loader.next_batch(name)
                assert bx.dtype == torch.long and bx.shape == (B, T)
                assert bx.tolist() == x and by.tolist() == y


@pytest.mark.parametrize("layout", ["char_rnn_bytes", "char_rnn_int32", "h5_one_based", "h5_int64"])
def test_batches_cut_on_the_device_are_the_hosts(layout, monkeypatch):
    """BatchLoader.keep_on: where the device holds the splits (forced here on the CPU, which never
    does), every batch of every split, wrapped last target and 1-based HDF5 ids included, is the
    one cut from the ids as stored; the ids are uploaded row by row in chunks of CHECK_TOKENS."""
    rng = np.random.default_rng(7)
    if layout.startswith("char_rnn"):
        vocab = 65 if layout == "char_rnn_bytes" else 2583
        ids = rng.integers(0, vocab, 1003).astype(np.uint8 if vocab <= 256 else np.int32)
        splits = char_rnn_splits(ids, 3, 7, 0.8, 0.1)
    else:
        dtype = np.uint8 if layout == "h5_one_based" else np.int64
        splits = {name: stream_split(Tokens(rng.integers(1, 66, n).astype(dtype), base=1), 3, 7)
                  for name, n in (("train", 700), ("val", 90), ("test", 0))}
    host = BatchLoader(splits, 3, 7)
    monkeypatch.setattr(util_data, "CHECK_TOKENS", 10)
    monkeypatch.setattr(util_data, "device_holds", lambda device, nbytes: True)
    resident = BatchLoader(splits, 3, 7)
    resident.keep_on(torch.device("cpu"))
    assert set(resident.resident) == {name for name in splits if splits[name].n_batches}
    assert resident.resident["train"].ids.dtype == (torch.uint8 if layout in ("char_rnn_bytes", "h5_one_based")
                                                    else torch.int32)
    for name in resident.resident:
        for k in range(splits[name].n_batches):
            for a, b in zip(resident.batch(name, k), host.batch(name, k), strict=True):
                assert a.dtype == torch.long and a.is_contiguous() and torch.equal(a, b), (name, k)
        for _ in range(splits[name].n_batches + 2):  # next_batch wraps round the same
            assert all(torch.equal(a, b) for a, b in zip(resident.next_batch(name), host.next_batch(name), strict=True))


def test_the_splits_stay_on_the_host_on_the_cpu_and_beyond_the_devices_share(monkeypatch):
    splits = char_rnn_splits(np.zeros(1000, dtype=np.uint8), 2, 5, 0.9, 0.1)
    loader = BatchLoader(splits, 2, 5)
    loader.keep_on(torch.device("cpu"))
    assert loader.resident == {}
    assert util_data.resident_bytes(splits["train"]) == 2 * (90 * 5 + 1)
    monkeypatch.setattr(util_data, "memory_bytes", lambda device: 8000)  # a share of 1,000 bytes
    gpu = torch.device("cuda")
    assert util_data.device_holds(gpu, 1000) and not util_data.device_holds(gpu, 1001)
    assert not util_data.device_holds(torch.device("cpu"), 1)


def test_char_rnn_wraps_last_target_and_val_is_row_tail():
    ids = np.arange(24, dtype=np.int32)  # B=2, T=3: 4 batches, rows of 12
    splits = char_rnn_splits(ids, 2, 3, 0.5, 0.5)
    assert splits["train"].n_batches == 2 and splits["val"].n_batches == 2 and splits["test"].n_batches == 0
    assert splits["train"].x.tolist() == [[0, 1, 2, 3, 4, 5], [12, 13, 14, 15, 16, 17]]
    assert splits["val"].x.tolist() == [[6, 7, 8, 9, 10, 11], [18, 19, 20, 21, 22, 23]]
    assert splits["val"].y.tolist() == [[7, 8, 9, 10, 11, 12], [19, 20, 21, 22, 23, 0]]  # wraps to the 1st
    assert splits["train"].y[0, -1] == 6  # y crosses from the train block into the val block
    truncated = char_rnn_splits(np.arange(29, dtype=np.int32), 2, 3, 0.5, 0.5)  # 24..28 are dropped
    assert truncated["val"].y[1, -1] == 0 and truncated["val"].x.max() == 23


def test_char_rnn_test_split_gets_the_rest():
    ids = np.zeros(100 * 6, dtype=np.uint8)  # 100 batches of 2 x 3
    splits = char_rnn_splits(ids, 2, 3, 0.8, 0.1)  # 1 - 0.9 = 0.0999..: a test split
    assert [splits[s].n_batches for s in ("train", "val", "test")] == [80, 10, 10]
    assert splits["test"].wanted and splits["val"].wanted
    splits = char_rnn_splits(np.zeros(37 * 6, dtype=np.uint8), 2, 3, 0.8, 0.1)
    assert [splits[s].n_batches for s in ("train", "val", "test")] == [29, 3, 5]
    splits = char_rnn_splits(np.zeros(37 * 6, dtype=np.uint8), 2, 3, 0.95, 0.05)  # no test: val takes the rest
    assert [splits[s].n_batches for s in ("train", "val", "test")] == [35, 2, 0]
    assert not splits["test"].wanted


def test_tinyshakespeare_batch_counts():
    data = SHAKESPEARE.read_bytes()
    assert len(data) == 1115394
    vocab = sorted(set(data))
    lookup = np.zeros(256, dtype=np.uint8)
    lookup[vocab] = np.arange(len(vocab))
    ids = lookup[np.frombuffer(data, dtype=np.uint8)]
    splits = char_rnn_splits(ids, 50, 50, 0.95, 0.05)
    counts = [splits[s].n_batches for s in ("train", "val", "test")]
    assert counts == [423, 23, 0] and sum(counts) == 446
    assert splits["train"].x.shape == (50, 423 * 50) and splits["val"].x.shape == (50, 23 * 50)
    row = 446 * 50  # every row is 22300 characters of the text, val is the tail of each
    assert bytes(np.array(vocab, dtype=np.uint8)[splits["val"].x[3]]) == data[4 * row - 23 * 50:4 * row]
    assert splits["val"].y[-1, -1] == ids[0]
    loader = BatchLoader(splits, 50, 50)
    assert (loader.n_batches("train"), loader.n_batches("val"), loader.n_batches("test")) == (423, 23, 0)


def test_bundled_chinese_novel_has_one_token_per_character(tmp_path):
    """data/hongloumeng (红楼梦, data/SOURCES.md) as train.py -data_dir reads it: 4,447 tokens,
    every one a single code point, and the ids decode back to the whole text."""
    shutil.copy(HONGLOUMENG, tmp_path / "input.txt")
    vocab, ids = load_data_dir(str(tmp_path), log=lambda _: None)
    text = HONGLOUMENG.read_text(encoding="utf-8")
    assert len(vocab) == 4447 and len(ids) == len(text) == 879195
    assert "".join(np.array(vocab.tokens)[ids]) == text


# ---- load_data_dir ----------------------------------------------------------------------------------

def test_load_data_dir_builds_reuses_and_rebuilds(tmp_path):
    folder = tmp_path / "shakespeare"
    folder.mkdir()
    text = SHAKESPEARE.read_text()[:5000]
    (folder / "input.txt").write_text(text)
    log = []
    vocab, ids = load_data_dir(str(folder), log=log.append)
    assert len(log) == 1 and "preprocessing" in log[0]
    h5, js = folder / "input.h5", folder / "input.json"
    assert h5.exists() and js.exists()
    assert vocab.tokens == sorted(set(text)) and "".join(vocab.tokens[i] for i in ids) == text
    stamps = (h5.stat().st_mtime_ns, js.stat().st_mtime_ns)

    log.clear()
    vocab2, ids2 = load_data_dir(str(folder), log=log.append)  # reused: no message, files untouched
    assert log == [] and (h5.stat().st_mtime_ns, js.stat().st_mtime_ns) == stamps
    assert vocab2 == vocab and np.array_equal(ids2, ids)

    new_text = "a newer text, with other characters: XYZ!\n" * 10
    (folder / "input.txt").write_text(new_text)
    future = max(stamps) / 1e9 + 10
    os.utime(folder / "input.txt", (future, future))
    vocab3, ids3 = load_data_dir(str(folder), log=log.append)
    assert len(log) == 1 and "preprocessing" in log[0]
    assert "".join(vocab3.tokens[i] for i in ids3) == new_text

    log.clear()
    js.unlink()  # a missing half of the cache is rebuilt too
    load_data_dir(str(folder), log=log.append)
    assert len(log) == 1 and js.exists()


def test_load_data_dir_bytes_fallback(tmp_path):
    data = "café\n".encode() + b"\xff\xfe latin-1 \xe9t\xe9\n"
    (tmp_path / "input.txt").write_bytes(data)
    log = []
    vocab, ids = load_data_dir(str(tmp_path), log=log.append)
    assert vocab.is_bytes and bytes(ord(vocab.tokens[i]) for i in ids) == data
    assert len(log) == 2 and "notice" in log[1] and "offset 6" in log[1] and "byte" in log[1]
    assert json.loads((tmp_path / "input.json").read_text())["encoding"] == "bytes"


def test_load_data_dir_errors(tmp_path):
    with pytest.raises(UserError, match=r"has no input\.txt"):
        load_data_dir(str(tmp_path), log=quiet)
    (tmp_path / "input.txt").write_text("")
    with pytest.raises(UserError, match="empty"):
        load_data_dir(str(tmp_path), log=quiet)


def test_load_bundled_copy(tmp_path):
    shutil.copy(SHAKESPEARE, tmp_path / "input.txt")
    vocab, ids = load_data_dir(str(tmp_path), log=quiet)
    assert len(vocab) == 65 and len(ids) == 1115394 and ids.dtype == np.uint8
    assert [c.n_batches for c in char_rnn_splits(ids, 50, 50, 0.95, 0.05).values()] == [423, 23, 0]


# ---- BatchLoader -----------------------------------------------------------------------------------

def test_batch_loader_wraps_around():
    ids = np.arange(1 + 3 * 2 * 4, dtype=np.int32)  # 3 batches of 2 x 4
    splits = {"train": stream_split(ids, 2, 4), "val": stream_split(ids[:9], 2, 4),
              "test": stream_split(ids[:0], 2, 4)}
    loader = BatchLoader(splits, 2, 4)
    assert (loader.n_batches("train"), loader.n_batches("val"), loader.n_batches("test")) == (3, 1, 0)
    firsts = [loader.next_batch("train")[0][0, 0].item() for _ in range(7)]
    assert firsts == [0, 4, 8, 0, 4, 8, 0]
    assert loader.position["train"] == 1
    x, y = loader.batch("train", 2)
    assert x.tolist() == [[8, 9, 10, 11], [20, 21, 22, 23]] and y.tolist() == [[9, 10, 11, 12], [21, 22, 23, 24]]
    assert x.dtype == torch.long and x.is_contiguous()
    v1, v2 = loader.next_batch("val"), loader.next_batch("val")
    assert torch.equal(v1[0], v2[0])


@pytest.mark.parametrize("which", ["train", "val"])
def test_batch_loader_split_too_small(which):
    big, small = np.arange(1000, dtype=np.int32), np.arange(20, dtype=np.int32)
    splits = {"train": stream_split(small if which == "train" else big, 5, 4),
              "val": stream_split(small if which == "val" else big, 5, 4),
              "test": stream_split(big[:0], 5, 4)}
    with pytest.raises(UserError) as error:
        BatchLoader(splits, 5, 4)
    message = str(error.value)
    assert f"the {which} split" in message and "5 x 4" in message
    assert "-batch_size" in message and "-seq_length" in message


def test_batch_loader_unrequested_splits_may_be_empty():
    ids = np.arange(1000, dtype=np.int32)
    splits = {"train": stream_split(ids, 5, 4), "val": stream_split(ids[:0], 5, 4),
              "test": stream_split(ids[:3], 5, 4)}  # a tiny test split is not an error
    loader = BatchLoader(splits, 5, 4)
    assert loader.n_batches("val") == 0 and loader.n_batches("test") == 0
    char = char_rnn_splits(ids, 5, 4, 1.0, 0.0)  # no val asked for
    assert BatchLoader(char, 5, 4).n_batches("train") == 50
    with pytest.raises(UserError, match="the val split"):
        BatchLoader(char_rnn_splits(ids[:100], 5, 4, 0.8, 0.1), 5, 4)  # 5 batches: 4 train, 0 val, 1 test
    with pytest.raises(UserError, match="the train split"):
        BatchLoader(char_rnn_splits(ids[:19], 5, 4, 0.95, 0.05), 5, 4)  # shorter than one batch
