"""util/data.py: the random training-batch scheme (d2l's data_iter_random) beside the consecutive one.

The ids in these tests are positions in the text (np.arange), so a batch says where it was cut from."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from util.data import BatchLoader, RandomBatches, char_rnn_splits, load_training_data, stream_split
from util.errors import UserError


def h5_splits(n_train, B, T, n_val=None):
    """Splits as read from an HDF5 file: train is text positions 0..n_train-1, val and test follow."""
    n_val = B * T + 1 if n_val is None else n_val
    ids = np.arange(n_train + n_val, dtype=np.int32)
    return {"train": stream_split(ids[:n_train], B, T), "val": stream_split(ids[n_train:], B, T),
            "test": stream_split(ids[:0], B, T)}


def epoch(loader, e):
    """Epoch e's batches, handed out from position e * n_batches."""
    loader.position["train"] = e * loader.n_batches("train")
    return [loader.next_batch("train") for _ in range(loader.n_batches("train"))]


def check_epoch(batches, B, T, start_of):
    """Each row of each batch is T consecutive text positions, its targets the next ones; no two
    subsequences of the epoch overlap; all start at the same offset modulo T. start_of maps a text
    position to (row, column) of the stream it lies in and checks the subsequence stays in the split."""
    seen = []
    for x, y in batches:
        assert x.shape == y.shape == (B, T) and x.dtype == y.dtype == torch.long
        assert x.is_contiguous() and y.is_contiguous()
        assert torch.equal(x, x[:, :1] + torch.arange(T)) and torch.equal(y, x + 1)
        seen += x.flatten().tolist()
        for first in x[:, 0].tolist():
            start_of(first)
    assert len(seen) == len(set(seen)) == len(batches) * B * T
    columns = {start_of(first)[1] % T for x, _ in batches for first in x[:, 0].tolist()}
    assert len(columns) == 1


def stream_start(n_train, T):
    def start_of(position):
        assert position >= 0 and position + T + 1 <= n_train  # inputs and targets inside train
        return 0, position
    return start_of


def char_rnn_start(row_length, train_columns, T):
    def start_of(position):
        row, column = divmod(position, row_length)
        assert column + T <= train_columns  # inside the row's train block, never into the next row
        return row, column
    return start_of


def char_rnn_layout(length, B, T, train_frac=0.8, val_frac=0.2):
    splits = char_rnn_splits(np.arange(length, dtype=np.int32), B, T, train_frac, val_frac)
    row_length = (length // (B * T)) * T
    return splits, row_length, splits["train"].n_batches * T


# ---- the batches -----------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 7), st.integers(0, 40), st.integers(0, 2 ** 32))
def test_stream_batches_are_shifted_disjoint_subsequences_of_train(B, T, extra, seed):
    n_train = (B + 1) * T + extra
    loader = BatchLoader(h5_splits(n_train, B, T), B, T, "random", seed)
    n = loader.n_batches("train")
    assert n == (n_train - T) // T // B  # subsequences at the largest offset T - 1, batch_size a batch
    for e in range(3):
        check_epoch(epoch(loader, e), B, T, stream_start(n_train, T))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 6), st.integers(3, 12), st.integers(0, 2 ** 32))
def test_char_rnn_batches_stay_inside_their_row_and_train(B, T, blocks, seed):
    splits, row_length, train_columns = char_rnn_layout(blocks * B * T + T - 1, B, T)
    loader = BatchLoader(splits, B, T, "random", seed)
    per_row = (train_columns - (T - 1)) // T
    assert loader.n_batches("train") == B * per_row // B
    for e in range(3):
        check_epoch(epoch(loader, e), B, T, char_rnn_start(row_length, train_columns, T))


def test_char_rnn_rows_are_not_joined():
    """train_frac 1: a row's train block ends where the next row begins in the text, and still no
    subsequence runs across (the rows are separate pieces of text in the layout's own terms)."""
    B, T = 3, 4
    splits = char_rnn_splits(np.arange(3 * 10 * 4, dtype=np.int32), B, T, 1.0, 0.0)
    loader = BatchLoader(splits, B, T, "random", 7)
    assert loader.n_batches("train") == 9  # 9 whole subsequences per row at offset 3, 3 rows
    for e in range(5):
        for x, _ in epoch(loader, e):
            assert (x[:, 0] // 40 == x[:, -1] // 40).all()


def test_stream_tail_beyond_the_consecutive_layout_is_used():
    B, T = 2, 3
    n_train = 5 * B * T + 5  # the consecutive layout leaves the last 4 positions out
    splits = h5_splits(n_train, B, T)
    used = splits["train"].n_batches * B * T
    loader = BatchLoader(splits, B, T, "random", 1)
    reached = max(x.max().item() for e in range(30) for x, _ in epoch(loader, e))
    assert reached >= used


def test_offsets_cover_zero_to_seq_length():
    B, T = 2, 5
    loader = BatchLoader(h5_splits(20 * B * T, B, T), B, T, "random", 3)
    offsets = {epoch(loader, e)[0][0][0, 0].item() % T for e in range(60)}
    assert offsets == set(range(T))


# ---- order, determinism, resume --------------------------------------------------------------------

def same(a, b):
    """Two (x, y) batches are equal."""
    return all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


def firsts(batches):
    return [x[:, 0].tolist() for x, _ in batches]


@pytest.mark.parametrize("source", ["h5", "char_rnn"])
def test_order_depends_on_seed_and_epoch_only(source):
    B, T = 4, 5
    splits = h5_splits(40 * B * T, B, T) if source == "h5" else char_rnn_layout(40 * B * T, B, T)[0]
    a, b, c = (BatchLoader(splits, B, T, "random", seed) for seed in (11, 11, 12))
    epochs_a = [firsts(epoch(a, e)) for e in range(3)]
    assert [firsts(epoch(b, e)) for e in range(3)] == epochs_a
    assert epochs_a[0] != epochs_a[1] != epochs_a[2] != epochs_a[0]
    assert firsts(epoch(c, 0)) != epochs_a[0]
    assert firsts(epoch(a, 1)) == epochs_a[1]  # an epoch planned again, out of order, is the same


@pytest.mark.parametrize("source", ["h5", "char_rnn"])
def test_resume_from_saved_position_gives_the_remaining_batches(source):
    B, T = 3, 4
    splits = h5_splits(12 * B * T, B, T) if source == "h5" else char_rnn_layout(15 * B * T, B, T)[0]
    uninterrupted = BatchLoader(splits, B, T, "random", 5)
    n = uninterrupted.n_batches("train")
    run = [uninterrupted.next_batch("train") for _ in range(3 * n + 2)]
    assert uninterrupted.position["train"] == 3 * n + 2  # the global count: no wrapping
    for stop in (1, n - 1, n, n + 3, 2 * n):
        first = BatchLoader(splits, B, T, "random", 5)
        for _ in range(stop):
            first.next_batch("train")
        saved = first.position["train"]
        resumed = BatchLoader(splits, B, T, "random", 5)  # a new process: nothing but the position
        resumed.position["train"] = saved
        rest = [resumed.next_batch("train") for _ in range(len(run) - stop)]
        assert all(same(a, b) for a, b in zip(run[stop:], rest, strict=True))
        assert resumed.n_batches("train") == n


def test_first_epoch_is_pinned():
    """PCG64's raw bits and SeedSequence are stable across numpy versions; a change here would make
    checkpoints resume onto other batches."""
    loader = BatchLoader(h5_splits(10 * 2 * 3 + 10, 2, 3), 2, 3, "random", 123)
    rows, starts = loader.random.plan(0)
    assert rows.tolist() == [[0] * 2] * loader.n_batches("train")
    assert starts.tolist() == PINNED_STARTS


PINNED_STARTS = [[0, 60], [9, 6], [36, 3], [57, 48], [30, 18], [63, 27], [54, 66], [42, 39], [51, 12], [21, 33],
                 [24, 15]]


def test_negative_seed_is_accepted():
    loader = BatchLoader(h5_splits(200, 2, 3), 2, 3, "random", -1)
    assert firsts(epoch(loader, 0)) != firsts(epoch(BatchLoader(h5_splits(200, 2, 3), 2, 3, "random", 1), 0))


# ---- validation, the consecutive scheme, errors ------------------------------------------------------

@pytest.mark.parametrize("source", ["h5", "char_rnn"])
def test_validation_and_layout_stay_consecutive(source):
    B, T = 3, 4
    if source == "h5":
        splits = h5_splits(12 * B * T, B, T, n_val=4 * B * T + 1)
    else:
        splits = char_rnn_layout(15 * B * T, B, T)[0]
    consecutive, random = BatchLoader(splits, B, T), BatchLoader(splits, B, T, "random", 9)
    assert random.n_batches("val") == consecutive.n_batches("val") > 0
    for k in range(consecutive.n_batches("val")):
        assert same(consecutive.batch("val", k), random.batch("val", k))
    for _ in range(consecutive.n_batches("val") + 1):
        assert same(consecutive.next_batch("val"), random.next_batch("val"))
    assert random.position["val"] == consecutive.position["val"] == 1
    assert same(consecutive.batch("train", 2), random.batch("train", 2))


def test_consecutive_scheme_is_the_default_and_unchanged():
    B, T = 2, 4
    splits = h5_splits(3 * B * T + 1, B, T)
    default, named = BatchLoader(splits, B, T), BatchLoader(splits, B, T, "consecutive", 99)
    assert default.random is None and named.random is None
    for _ in range(7):
        assert same(default.next_batch("train"), named.next_batch("train"))
    assert default.position["train"] == named.position["train"] == 1  # still wrapping within the epoch
    assert default.n_batches("train") == 3


@pytest.mark.parametrize("source", ["h5", "char_rnn"])
def test_too_few_subsequences_for_one_batch(source):
    B, T = 5, 4
    if source == "h5":
        splits = h5_splits(B * T + 1, B, T)  # one consecutive batch, 5 subsequences only at offset 0
    else:
        splits = char_rnn_layout(2 * B * T, B, T, 0.5, 0.5)[0]  # one train block: 1 per row at offset 0
    assert BatchLoader(splits, B, T).n_batches("train") == 1
    with pytest.raises(UserError) as error:
        BatchLoader(splits, B, T, "random", 0)
    message = str(error.value)
    assert "the train split is too small" in message and f"{B} x {T}" in message
    assert "-batch_size" in message and "-seq_length" in message


def test_unknown_scheme():
    with pytest.raises(UserError, match=r"unknown batch scheme 'shuffled' \(choose from consecutive, random\)"):
        BatchLoader(h5_splits(100, 2, 3), 2, 3, "shuffled")


def test_random_batches_of_a_split_directly():
    split = stream_split(np.arange(50, dtype=np.uint8), 2, 3)
    batches = RandomBatches(split, 2, 3, seed=4)
    assert batches.n_batches == (50 - 3) // 3 // 2
    x, y = batches.batch(0)
    assert x.dtype == torch.long and torch.equal(y, x + 1)


def test_load_training_data_passes_the_scheme(tmp_path):
    (tmp_path / "input.txt").write_text("abcdefghij" * 60, encoding="utf-8")
    opt = SimpleNamespace(batch_size=4, seq_length=5, train_frac=0.9, val_frac=0.1, data_dir=str(tmp_path),
                          input_h5="", input_json="")
    _, consecutive = load_training_data(opt, "data_dir", log=lambda _: None)
    _, random = load_training_data(opt, "data_dir", log=lambda _: None, scheme="random", seed=2)
    assert consecutive.scheme == "consecutive" and random.scheme == "random"
    assert (consecutive.n_batches("train"), random.n_batches("train")) == (27, 26)
