"""evaluate.py: loss, bits per character and perplexity of .pt and char-rnn .t7 checkpoints.

The char-rnn checkpoints here are built with t7_graphs' nngraph builders (the graphs of char-rnn's
model/{LSTM,GRU,RNN}.lua) and written by t7_writer; their losses are recomputed independently from
char-rnn's equations (t7_graphs.char_rnn_step, numpy, float64) over char-rnn's batches, written out
again below from its CharSplitLMMinibatchLoader and eval_split. The runs as a user makes them
(subprocesses) start together at the beginning of the module; the rest runs in this process.
"""
import itertools
import math
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_user_error
from runner import Runs, ok
from t7_graphs import BUILDERS, NNGraph, char_rnn_step
from t7_writer import write_t7
from util.errors import UserError
from util.torch7 import TorchObject

import evaluate

SHARED = Path(__file__).resolve().parents[2] / "shared" / "t7"  # ../shared/t7 from the repo root
STOCK = SHARED / "stock" / "lm_lstm_epoch18.18_2.2153.t7"
STOCK_TEXT = SHARED / "stock" / "input.txt"
FIXTURES = Path(__file__).parent / "fixtures" / "t7"
CPU = ["-gpuid", "-1", "-threads", "1"]
# Batch shape and split saved in the hand-built checkpoints' opt: 330 bytes give 15 blocks of 3 x 7,
# train 10, val 3, test 2 (test_frac 0.1)
SAVED_OPT = {"batch_size": 3, "seq_length": 7, "train_frac": 0.7, "val_frac": 0.2}
RESULT = re.compile(r"^(?:(train|val|test) )?loss (\d+\.\d{6}) nats/char, (\d+\.\d{6}) bits/char, "
                    r"perplexity (\d+\.\d{4}) \((\d+) characters, (.+)\)$")

# Texts as char-rnn reads them (bytes). "utf8": valid UTF-8 with a non-ASCII character, so the folder's
# cache holds code points and a byte-level checkpoint needs the bytes; "bytes": not valid UTF-8.
ALPHABETS = {"utf8": ["a", "b", "é", " ", "\n"], "bytes": [b"a", b"\xe9", b"\xff", b" ", b"\n"]}
# The checkpoints' vocabularies: the bytes of those texts and one byte they never use ('z').
VOCABS = {"utf8": ["\n", " ", "a", "b", "z", "\xa9", "\xc3"], "bytes": ["\n", " ", "a", "z", "\xe9", "\xff"]}


# ---- helpers ----------------------------------------------------------------------------------------

def random_text(kind: str, n_bytes: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pieces = ALPHABETS[kind]
    out = b""
    while len(out) < n_bytes:
        piece = pieces[rng.integers(len(pieces))]
        out += piece.encode("utf-8") if isinstance(piece, str) else piece
    return out


def write_char_rnn(path: Path, model: str, tokens: list[str], H: int, n: int, p: float = 0.0,
                   long_size: int = 8, cuda: bool = False, seed: int = 0, opt: dict | None = None) -> dict:
    """A char-rnn checkpoint as train.lua saves it; returns the Linears' (weight, bias) by role.
    The vocabulary table is numbered in a shuffled order: ids must follow the table, not sorting."""
    rng = np.random.default_rng(seed)
    g = NNGraph(rng, np.float32 if cuda else np.float64)
    gmodule, w = BUILDERS[model](g, len(tokens), H, n, p)
    order = [tokens[i] for i in rng.permutation(len(tokens))]
    write_t7(path, {
        "protos": {"rnn": gmodule, "criterion": TorchObject("nn.ClassNLLCriterion")},
        "opt": {"model": model, "rnn_size": H, "num_layers": n, "dropout": p, "seed": 123,
                **(SAVED_OPT if opt is None else opt)},
        "vocab": {t: i for i, t in enumerate(order, 1)},
        "train_losses": [2.0], "val_losses": {1: 2.0}, "val_loss": 2.0, "i": 1, "epoch": 0.1,
    }, long_size=long_size, cuda=cuda)
    return {"w": w, "model": model, "n": n, "H": H, "order": order}


def reference_losses(net: dict, token_ids: list[list[int]]) -> list[float]:
    """Negative log-likelihoods of each stream's tokens 2.. given those before them, char-rnn's
    equations in float64 from a zero state; `token_ids` are 1-based ids of the checkpoint."""
    model, n, H = net["model"], net["n"], net["H"]
    losses = []
    for stream in token_ids:
        state = [np.zeros(H) for _ in range(2 * n if model == "lstm" else n)]
        for token, target in itertools.pairwise(stream):
            state, logp = char_rnn_step(model, net["w"], token, state, n)
            losses.append(-logp[target - 1])
    return losses


def char_rnn_ids(net: dict, data: bytes) -> np.ndarray:
    index = {t: i for i, t in enumerate(net["order"], 1)}  # the checkpoint's 1-based ids
    return np.array([index[chr(b)] for b in data])


def reference_split_loss(net: dict, data: bytes, split: str, batch_size: int, seq_length: int,
                         train_frac: float, val_frac: float) -> tuple[float, int]:
    """char-rnn's eval_split on its CharSplitLMMinibatchLoader batches: the mean loss per character of
    `split` and the number of characters scored."""
    ids = char_rnn_ids(net, data)
    n_batches = len(ids) // (batch_size * seq_length)
    ids = ids[:n_batches * batch_size * seq_length]
    ydata = np.concatenate([ids[1:], ids[:1]])  # ydata[-1] = data[1]
    x, y = ids.reshape(batch_size, -1), ydata.reshape(batch_size, -1)
    test_frac = max(0, 1 - (train_frac + val_frac))
    n_train = math.floor(n_batches * train_frac)
    if test_frac == 0:
        n_val, n_test = n_batches - n_train, 0
    else:
        n_val = math.floor(n_batches * val_frac)
        n_test = n_batches - n_val - n_train
    first, count = {"train": (0, n_train), "val": (n_train, n_val), "test": (n_train + n_val, n_test)}[split]
    columns = slice(first * seq_length, (first + count) * seq_length)
    # Every x[b, t] is followed by y[b, t] within the split; a stream's state carries across batches.
    streams = [[*x[b, columns], y[b, columns][-1]] for b in range(batch_size)]
    for b in range(batch_size):
        assert list(y[b, columns][:-1]) == list(x[b, columns][1:])
    losses = reference_losses(net, streams)
    return float(np.mean(losses)), len(losses)


def run(*argv) -> evaluate.Result:
    return evaluate.evaluate([str(a) for a in argv])


def parse(line: str) -> tuple:
    match = RESULT.match(line)
    assert match, line
    split, nats, bits, perplexity, characters, source = match.groups()
    return split, float(nats), float(bits), float(perplexity), int(characters), source


def data_dir(folder: Path, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "input.txt").write_bytes(data)
    return folder


# ---- files and the runs as a user makes them --------------------------------------------------------

PT_TEXT = "the cat sat on the mat. the café is near the bar.\n" * 36  # 1836 characters, 'é' among them


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("evaluate")
    f = {"folder": folder, "small_t7": folder / "small.t7", "floattensor": folder / "floattensor.t7",
         "missing": folder / "missing.t7"}
    write_char_rnn(f["small_t7"], "lstm", VOCABS["utf8"], 4, 2)
    f["small_data"] = data_dir(folder / "small", random_text("utf8", 330, 1))
    shutil.copy(FIXTURES / "floattensor.t7", f["floattensor"])
    f["pt_data"] = data_dir(folder / "pt", PT_TEXT.encode("utf-8"))
    f["pt_cv"] = folder / "pt_cv"
    if STOCK.exists():
        f["stock_eval"] = data_dir(folder / "stock_eval", STOCK_TEXT.read_bytes())
        f["stock_train"] = data_dir(folder / "stock_train", STOCK_TEXT.read_bytes())
        f["stock_cv"] = folder / "stock_cv"
    return f


def cases(f: dict[str, Path]) -> dict[str, tuple]:
    runs = {
        "quiet": ("evaluate.py", f["small_t7"], "-data_dir", f["small_data"], "-verbose", 0, *CPU),
        "pt_train": ("train.py", "-data_dir", f["pt_data"], "-model", "gru", "-rnn_size", 16, "-num_layers", 2,
                     "-batch_size", 4, "-seq_length", 10, "-max_epochs", 1, "-dropout", 0.1,
                     "-checkpoint_dir", f["pt_cv"], "-print_every", 100, *CPU),
        "missing": ("evaluate.py", f["missing"], "-data_dir", f["small_data"], *CPU),
        "not_char_rnn": ("evaluate.py", f["floattensor"], "-input", f["small_data"] / "input.txt", *CPU),
        "neither": ("evaluate.py", f["small_t7"], *CPU),
    }
    if STOCK.exists():
        runs["stock_eval"] = ("evaluate.py", STOCK, "-data_dir", f["stock_eval"], "-gpuid", -1)
        runs["stock_sample"] = ("sample.py", STOCK, "-gpuid", -1, "-length", 500, "-verbose", 0)
        runs["stock_train"] = ("train.py", "-init_from", STOCK, "-data_dir", f["stock_train"], "-max_epochs", 0.06,
                               "-checkpoint_dir", f["stock_cv"], *CPU)
    return runs


@pytest.fixture(scope="module")
def runs(files: dict[str, Path]) -> Iterator[Runs]:
    order = ["stock_train", "pt_train", "stock_eval", "stock_sample"]  # longest first
    todo = sorted(cases(files).items(), key=lambda item: order.index(item[0]) if item[0] in order else 9)
    with Runs(workers=2) as r:
        for name, args in todo:
            r.start(name, *args, cwd=files["folder"])
        yield r


def needs_stock():
    if not STOCK.exists():
        pytest.skip(f"{STOCK} is not available")


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


# ---- the stock char-rnn checkpoint (a real Torch7 run, 4-byte longs) ---------------------------------

def test_stock_checkpoint_validation_loss_is_the_one_in_its_name(runs):
    needs_stock()
    result = ok(runs["stock_eval"])
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout  # diagnostics go to stderr
    split, nats, _bits, _perplexity, characters, _ = parse(lines[0])
    # char-rnn's split of 147,060 bytes in blocks of 50 x 50: 58 blocks, train 55, val 3
    assert split == "val" and characters == 3 * 50 * 50
    assert abs(nats - 2.2153) < 1e-3, nats
    assert abs(nats - 2.215263) < 1e-5  # float64, computed independently of this project
    assert "lstm, 2 x 128, vocabulary 21 (bytes)" in result.stderr


def test_stock_checkpoint_samples_its_alphabet(runs):
    needs_stock()
    result = ok(runs["stock_sample"])
    assert result.stdout.endswith("\n")
    text = result.stdout[:-1]
    assert len(text) == 500 and set(text) <= set("0123456789abcdefghijk")
    assert len(set(text)) > 10  # a sampled text, not one repeated character


def test_train_init_from_stock_checkpoint_continues_from_its_weights(runs, files):
    needs_stock()
    result = ok(runs["stock_train"])
    assert "loaded the model from" in result.stdout and "lstm, 2 x 128" in result.stdout
    train_losses = [float(m) for m in re.findall(r"train_loss = (\d+\.\d+)", result.stdout)]
    assert len(train_losses) == 3  # int(0.06 * 55)
    assert train_losses[0] < 2.5  # a fresh model starts near ln 21 = 3.04
    saved = list(files["stock_cv"].glob("lm_epoch*.pt"))
    assert len(saved) == 1
    checkpoint = torch.load(saved[0], weights_only=True)
    assert checkpoint["vocab"]["tokens"] == list("0123456789abcdefghijk") and checkpoint["val_loss"] < 2.5
    # the .pt written from the .t7's weights evaluates to what training measured
    result = run(saved[0], "-data_dir", files["stock_train"], *CPU)
    assert result.loss == pytest.approx(checkpoint["val_loss"], abs=1e-6)


# ---- hand-built char-rnn checkpoints against char-rnn's equations ------------------------------------

@pytest.mark.parametrize("model, H, n, p, cuda, long_size, kind", [
    ("lstm", 5, 2, 0.0, False, 8, "utf8"),
    ("lstm", 4, 1, 0.25, True, 4, "bytes"),
    ("gru", 4, 2, 0.5, True, 4, "utf8"),
    ("gru", 3, 1, 0.0, False, 8, "bytes"),
    ("rnn", 5, 2, 0.0, False, 4, "utf8"),
    ("rnn", 4, 3, 0.3, True, 8, "bytes"),
])
def test_char_rnn_checkpoint_matches_char_rnn_equations(tmp_path, model, H, n, p, cuda, long_size, kind):
    net = write_char_rnn(tmp_path / "cp.t7", model, VOCABS[kind], H, n, p, long_size, cuda, seed=H * 10 + n)
    data = random_text(kind, 330, seed=n)
    folder = data_dir(tmp_path / "data", data)
    for split in ("val", "test"):
        expected, count = reference_split_loss(net, data, split, **SAVED_OPT)
        result = run(tmp_path / "cp.t7", "-data_dir", folder, "-split", split, *CPU)
        assert result.characters == count == {"val": 3, "test": 2}[split] * 21
        assert result.loss == pytest.approx(expected, abs=1e-5), split
    # the checkpoint's batch shape and split are only defaults
    expected, count = reference_split_loss(net, data, "train", 2, 4, 0.5, 0.5)
    result = run(tmp_path / "cp.t7", "-data_dir", folder, "-split", "train", "-batch_size", 2, "-seq_length", 4,
                 "-train_frac", 0.5, "-val_frac", 0.5, *CPU)
    assert (result.characters, result.loss) == (count, pytest.approx(expected, abs=1e-5))


def test_utf8_bom_is_a_token_of_byte_level_checkpoints(tmp_path):
    # The folder's cache (code points) drops a BOM, as preprocess.py does; char-rnn read its bytes.
    tokens = ["\n", " ", "a", "b", "\xbb", "\xbf", "\xef"]
    net = write_char_rnn(tmp_path / "cp.t7", "rnn", tokens, 4, 1, seed=5)
    data = b"\xef\xbb\xbf" + random_text("utf8", 400, 3).replace("é".encode(), b"b")
    folder = data_dir(tmp_path / "data", data)
    expected, _ = reference_split_loss(net, data, "train", **SAVED_OPT)
    result = run(tmp_path / "cp.t7", "-data_dir", folder, "-split", "train", *CPU)
    assert result.loss == pytest.approx(expected, abs=1e-5)


def test_defaults_without_options_in_the_checkpoint(tmp_path):
    write_char_rnn(tmp_path / "cp.t7", "rnn", VOCABS["utf8"], 3, 1, opt={})
    folder = data_dir(tmp_path / "data", random_text("utf8", 50 * 50 * 25, 4))
    result = run(tmp_path / "cp.t7", "-data_dir", folder, *CPU)
    # batch 50 x 50, train_frac 0.95, val_frac 0.05: 25 blocks, train 23, val 2
    assert result.characters == 2 * 50 * 50


# ---- -input: the whole text as one stream ------------------------------------------------------------

@pytest.mark.parametrize("model, cuda, long_size", [("lstm", False, 4), ("gru", True, 8)])
def test_input_is_the_loss_of_the_whole_text(tmp_path, capsys, model, cuda, long_size):
    net = write_char_rnn(tmp_path / "cp.t7", model, VOCABS["bytes"], 4, 2, 0.0, long_size, cuda, seed=7)
    data = random_text("bytes", 1500, 6)  # longer than evaluate.INPUT_CHUNK
    (tmp_path / "text.txt").write_bytes(data)
    losses = reference_losses(net, [list(char_rnn_ids(net, data))])
    evaluate.main([str(tmp_path / "cp.t7"), "-input", str(tmp_path / "text.txt"), *CPU])
    split, nats, bits, perplexity, characters, source = parse(capsys.readouterr().out.rstrip("\n"))
    assert split is None and characters == len(data) - 1 == len(losses)
    assert source == f"all of {tmp_path / 'text.txt'}"
    assert nats == pytest.approx(np.mean(losses), abs=2e-6)
    assert bits == pytest.approx(nats / math.log(2), abs=2e-6)
    assert perplexity == pytest.approx(math.exp(nats), abs=1e-4)


def test_input_chunking_does_not_change_the_loss(files):
    checkpoint = evaluate.load_checkpoint(str(files["small_t7"]))
    model = evaluate.model_from_checkpoint(checkpoint, "small")
    ids = np.random.default_rng(0).integers(0, 7, 400).astype(np.uint8)
    losses = [evaluate.evaluate_stream(model, ids, torch.device("cpu"), chunk) for chunk in (1, 7, 50, 399, 1000)]
    assert max(losses) - min(losses) < 1e-6


# ---- this project's .pt checkpoints -------------------------------------------------------------------

def test_pt_checkpoint_val_loss_equals_the_one_training_measured(runs, files):
    ok(runs["pt_train"])
    checkpoint = torch.load(files["pt_cv"] / "lm_epoch1.pt", weights_only=True)
    assert checkpoint["vocab"]["encoding"] == "utf-8" and "é" in checkpoint["vocab"]["tokens"]
    result = run(files["pt_cv"] / "lm_epoch1.pt", "-data_dir", files["pt_data"], *CPU)
    # 1836 characters in blocks of 4 x 10: 45 blocks, train 42, val 3
    assert result.characters == 3 * 40
    assert result.loss == pytest.approx(checkpoint["val_loss"], abs=1e-6)
    # code points, not bytes: the whole text scores one prediction per character
    (files["folder"] / "pt_text.txt").write_text(PT_TEXT, encoding="utf-8")
    result = run(files["pt_cv"] / "lm_epoch1.pt", "-input", files["folder"] / "pt_text.txt", *CPU)
    assert result.characters == len(PT_TEXT) - 1 and result.loss < math.log(len(checkpoint["vocab"]["tokens"]))


# ---- output and errors ----------------------------------------------------------------------------------

def test_verbose_0_prints_only_the_result(runs, files):
    result = ok(runs["quiet"])
    assert result.stderr == ""
    split, _nats, _bits, _perplexity, characters, source = parse(result.stdout.rstrip("\n"))
    assert result.stdout.count("\n") == 1 and split == "val" and characters == 3 * 21
    assert source == f"split val of {files['small_data']}"


def test_errors_are_one_line(runs, files):
    assert_user_error(runs["missing"], f"File {files['missing']} does not exist")
    assert_user_error(runs["not_char_rnn"], "is not a char-rnn checkpoint")
    assert_user_error(runs["neither"], "-data_dir", "-input")


@pytest.mark.parametrize("argv, fragments", [
    (["-input", "{text}", "-data_dir", "{data}"], ["not both"]),
    ([], ["either -data_dir", "-input"]),
    (["-data_dir", "{data}", "-split", "bogus"], ["-split must be train, val or test", "bogus"]),
    (["-input", "{text}", "-split", "val", "-seq_length", 5], ["-split, -seq_length only apply with -data_dir"]),
    (["-data_dir", "{data}", "-batch_size", -2], ["-batch_size must be 0 or more"]),
    (["-data_dir", "{data}", "-train_frac", 0.8, "-val_frac", 0.3], ["sum to more than 1"]),
    (["-data_dir", "{data}", "-split", "test", "-train_frac", 0.5, "-val_frac", 0.5], ["no test split"]),
    (["-data_dir", "{data}", "-batch_size", 10], ["val split", "too small", "-batch_size or -seq_length"]),
    (["-data_dir", "{nowhere}"], ["has no input.txt"]),
    (["-input", "{nowhere}"], ["does not exist"]),
    (["-data_dir", "{bad}"], ["2 character(s) that are not in the vocabulary", "'q'", "byte 0xff"]),
    (["-input", "{bad}/input.txt"], ["2 character(s) that are not in the vocabulary", "'q'", "byte 0xff"]),
])
def test_bad_input(files, tmp_path, argv, fragments):
    paths = {"data": files["small_data"], "text": files["small_data"] / "input.txt", "nowhere": tmp_path / "nowhere",
             "bad": data_dir(tmp_path / "bad", b"a b\nq\xff ab" * 20)}
    argv = [str(files["small_t7"]), *(str(a).format(**paths) for a in argv), *CPU]
    with pytest.raises(UserError) as error:
        evaluate.evaluate(argv)
    for fragment in fragments:
        assert fragment in str(error.value), (fragment, str(error.value))


def test_split_too_small_for_the_checkpoints_batches(tmp_path, files):
    folder = data_dir(tmp_path / "data", b"ab a\n" * 6)  # 30 bytes: one block of 3 x 7, all of it test
    with pytest.raises(UserError, match=r"the val split of .*\(30 characters; batches: train 0, val 0, test 1\) is "
                                        r"too small for one batch of 3 x 7 characters"):
        run(files["small_t7"], "-data_dir", folder, *CPU)


def test_text_not_in_the_checkpoints_encoding(tmp_path, runs, files):
    ok(runs["pt_train"])
    (tmp_path / "latin1.txt").write_bytes("the café".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1.txt is not valid utf-8: cannot decode byte 0xe9 at offset 7, "
                                        r"but .*lm_epoch1.pt reads utf-8 text"):
        run(files["pt_cv"] / "lm_epoch1.pt", "-input", tmp_path / "latin1.txt", *CPU)
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(UserError, match="empty"):
        run(files["small_t7"], "-input", tmp_path / "empty.txt", *CPU)
