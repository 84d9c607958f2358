"""train.py end to end, as a user runs it (docs/behaviour.md §2.2-§2.5).

Starting python + torch costs most of every run, so the runs are started together at the beginning
of the module, a few at a time, and each test waits for the runs it looks at (`runs[name]`).
"""
import csv
import itertools
import math
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from runner import Runs, ok
from util.data import load_data_dir

TEXT = "the cat sat on the mat. the dog ate the hat.\n" * 55  # 2475 characters, 14 distinct
VOCAB = sorted(set(TEXT))
BATCH, SEQ = 4, 10
# char-rnn's split of TEXT: 61 blocks of 4 x 10 characters, train floor(61 * 0.95) = 57, val the rest
N_BATCHES = len(TEXT) // (BATCH * SEQ)
N_TRAIN = int(N_BATCHES * 0.95)
N_VAL = N_BATCHES - N_TRAIN
assert (N_BATCHES, N_TRAIN, N_VAL) == (61, 57, 4)
MAX_EPOCHS, EVAL_EVERY = 3.5, 20
ITERATIONS = int(MAX_EPOCHS * N_TRAIN)  # 199: the last iteration is mid-epoch
SMALL = ["-batch_size", BATCH, "-seq_length", SEQ, "-gpuid", -1, "-threads", 1]
BASE = ["-model", "lstm", "-rnn_size", 32, "-num_layers", 1, *SMALL, "-max_epochs", MAX_EPOCHS,
        "-eval_val_every", EVAL_EVERY, "-learning_rate_decay_after", 1]

PROGRESS = re.compile(r"^(\d+)/(\d+) \(epoch (\d+\.\d{3})\), train_loss = (\d+\.\d{8}), "
                      r"grad/param norm = (\d\.\d{4}e[+-]\d\d), time/batch = (\d+\.\d{4})s$")
CSV_HEADER = ["iteration", "epoch", "train_loss", "val_loss", "learning_rate", "seconds"]
CHECKPOINT_KEYS = {"model", "state_dict", "vocab", "opt", "iteration", "epoch", "train_losses", "val_losses",
                   "val_loss", "resume"}


# ---- helpers ------------------------------------------------------------------------------------

def write_data_dir(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "input.txt").write_bytes(text.encode("utf-8"))
    return folder


def progress(result) -> list[tuple[int, int, float, float, float]]:
    """(iteration, iterations, epoch, train_loss, grad/param norm) of every progress line; every line
    that starts like one must match the format exactly."""
    rows = []
    for line in result.stdout.splitlines():
        if re.match(r"^\d+/\d+ ", line):
            match = PROGRESS.match(line)
            assert match, f"progress line not in char-rnn's format: {line!r}"
            i, n, epoch, loss, norm, _ = match.groups()
            rows.append((int(i), int(n), float(epoch), float(loss), float(norm)))
    return rows


def losses(result) -> list[float]:
    return [row[3] for row in progress(result)]


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def tensors_in(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from tensors_in(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from tensors_in(item)


def checkpoint_name(iteration: int, prefix: str = "lm_", n_train: int = N_TRAIN) -> str:
    """The name docs/behaviour.md §2.3 gives the checkpoint written after `iteration` (of the base
    run's data)."""
    if iteration % n_train == 0:
        return f"{prefix}epoch{iteration // n_train}.pt"
    return f"{prefix}epoch{iteration / n_train:.2f}.pt"


SAVED_AT = sorted({i for i in range(1, ITERATIONS + 1) if i % EVAL_EVERY == 0 or i % N_TRAIN == 0} | {ITERATIONS})


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def lstm_parameters(vocab: int, hidden: int, layers: int) -> int:
    total = hidden * vocab + vocab  # decoder
    for n in range(layers):
        total += 4 * hidden * ((vocab if n == 0 else hidden) + 1) + 4 * hidden * (hidden + 1)
    return total


def gru_parameters(vocab: int, hidden: int, layers: int) -> int:
    total = hidden * vocab + vocab
    for n in range(layers):
        total += 3 * hidden * ((vocab if n == 0 else hidden) + 1) + 2 * hidden * (hidden + 1) + hidden * (hidden + 1)
    return total


def rnn_parameters(vocab: int, hidden: int, layers: int) -> int:
    total = hidden * vocab + vocab
    for n in range(layers):
        total += hidden * ((vocab if n == 0 else hidden) + 1) + hidden * (hidden + 1)
    return total


# ---- the runs, started together ------------------------------------------------------------------

HUGE_RATES = {"exploding": "1e3", "overflow": "1e38"}  # the second makes the weights infinite in one step


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    root = tmp_path_factory.mktemp("train")
    data = write_data_dir(root / "data", TEXT)
    # Build char-rnn's cache (input.h5/json beside input.txt) now, as train.py's first use would:
    # runs started together on a folder without it would all preprocess into the same files.
    load_data_dir(str(data), log=lambda _: None)
    with Runs(workers=3, root=root) as r:
        d = ["-data_dir", data]
        # the base run: lstm 1 x 32, 3.5 epochs, checkpoints every 20 iterations, decay from epoch 1
        r.start("base", "train.py", *d, *BASE)
        r.start("same_seed", "train.py", *d, *BASE, "-checkpoint_dir", "made/on/demand", "-savefile", "NAME")
        r.start("other_seed", "train.py", *d, *BASE, "-seed", 124)
        # torch-rnn's data files: preprocess.py's default output in the cwd is picked up
        r.start("h5_default", "preprocess.py", "-input", data / "input.txt")
        r.start("explode_" + "exploding", "train.py", *d, "-rnn_size", 16, "-num_layers", 1, *SMALL,
                "-eval_val_every", 1, "-checkpoint_dir", "ck", "-learning_rate", HUGE_RATES["exploding"])
        r.start("explode_" + "overflow", "train.py", *d, "-rnn_size", 16, "-num_layers", 1, *SMALL,
                "-eval_val_every", 1, "-checkpoint_dir", "ck", "-learning_rate", HUGE_RATES["overflow"])
        r.start("bf16", "train.py", *d, "-model", "lstm", "-rnn_size", 32, "-num_layers", 1, *SMALL, "-max_epochs", 1,
                "-eval_val_every", EVAL_EVERY, "-precision", "bf16")
        r.start("gpu_fallback", "train.py", *d, "-rnn_size", 16, "-num_layers", 1, "-batch_size", BATCH,
                "-seq_length", SEQ, "-max_epochs", 0.2, "-gpuid", 0, "-opencl", 1, "-threads", 1)
        # after the runs they depend on
        h5_cwd = r.folder("h5_default")
        r.start("h5_train", "train.py", "-model", "gru", "-rnn_size", 16, "-num_layers", 2, *SMALL, "-max_epochs", 0.5,
                after=("h5_default",), cwd=h5_cwd)
        h5, js = h5_cwd / "data" / "input.h5", h5_cwd / "data" / "input.json"
        r.start("h5_explicit", "train.py", "-input_h5", h5, "-input_json", js, "-model", "rnn", "-rnn_size", 16,
                "-num_layers", 2, *SMALL, "-max_epochs", 0.5, after=("h5_default",))
        r.start("data_dir_wins", "train.py", "-data_dir", data, "-input_json", js, "-rnn_size", 8, "-num_layers", 1,
                *SMALL, "-max_epochs", 0.1, "-checkpoint_dir", "cv_data_dir", after=("h5_default",), cwd=h5_cwd)
        start_from = r.folder("base") / "cv" / checkpoint_name(ITERATIONS)
        r.start("init_from", "train.py", *d, *SMALL, "-init_from", start_from, "-model", "gru", "-rnn_size", 8,
                "-num_layers", 3, "-max_epochs", 0.1, "-learning_rate", 1e-6, after=("base",))
        # a run started with -init_from resumes with the shape it trained (not the options it was given)
        r.start("init_from_resumed", "train.py", "-resume", r.folder("init_from") / "cv" / checkpoint_name(5),
                "-max_epochs", 0.2, "-rnn_size", 32, after=("init_from",))
        # a checkpoint of the layout before `run` (data_source in opt, opt's shape the model's) resumes alike
        mid_run = r.folder("base") / "cv" / checkpoint_name(40)
        old_layout = r.folder("old_layout") / "old.pt"
        r.submit("old_layout_written", write_old_layout, mid_run, old_layout, after=("base",))
        r.start("old_layout_resumed", "train.py", "-resume", old_layout, "-max_epochs", 1,
                after=("old_layout_written",))
        r.start("new_layout_resumed", "train.py", "-resume", mid_run, "-max_epochs", 1, after=("base",))
        yield r


def write_old_layout(source: Path, path: Path) -> None:
    """`source` as train.py wrote checkpoints before they had a `run` section."""
    checkpoint = load(source)
    run = checkpoint.pop("run")
    shape = checkpoint["model"]
    checkpoint["opt"].update(run, model=shape["model_type"], rnn_size=shape["rnn_size"],
                             num_layers=shape["num_layers"])
    torch.save(checkpoint, path)


# ---- training works ------------------------------------------------------------------------------

def test_loss_falls_on_repetitive_text(runs):
    result = runs["base"]
    assert result.returncode == 0, result.stderr
    rows = progress(result)
    assert [row[0] for row in rows] == list(range(1, ITERATIONS + 1))  # -print_every 1
    assert all(row[1] == ITERATIONS for row in rows)
    assert [row[2] for row in rows] == [round(i / N_TRAIN, 3) for i in range(1, ITERATIONS + 1)]
    first, last = rows[0][3], rows[-1][3]
    assert abs(first - math.log(len(VOCAB))) < 0.3  # starts near uniform guessing
    assert last < 1.5 and last < first - 1.0
    assert all(row[4] > 0 for row in rows)


def test_start_of_training_lines(runs):
    result = runs["base"]
    lines = result.stdout.splitlines()
    head = lines[:next(n for n, line in enumerate(lines) if PROGRESS.match(line))]
    data_dir = runs.root / "data"
    assert f"data: {data_dir / 'input.txt'} (char-rnn splits: train_frac 0.95, val_frac 0.05)" in head
    assert f"vocab size: {len(VOCAB)}" in head
    assert f"batches: train {N_TRAIN}, val {N_VAL}, test 0" in head
    assert f"number of parameters in the model: {lstm_parameters(len(VOCAB), 32, 1)}" in head
    assert lstm_parameters(len(VOCAB), 32, 1) == 6606
    assert not any(line.startswith("warning") for line in head)  # 57 training batches: no warning


def test_same_seed_same_run_other_seed_other_run(runs):
    base, same, other = runs["base"], runs["same_seed"], runs["other_seed"]
    for result in (base, same, other):
        assert result.returncode == 0, result.stderr
    assert [row[3:] for row in progress(same)] == [row[3:] for row in progress(base)]
    assert losses(other) != losses(base) and losses(other)[0] != losses(base)[0]
    name = checkpoint_name(ITERATIONS)
    a = load(runs.folder("base") / "cv" / name)["state_dict"]
    b = load(runs.folder("same_seed") / "made/on/demand" / checkpoint_name(ITERATIONS, "lm_NAME_"))["state_dict"]
    c = load(runs.folder("other_seed") / "cv" / name)["state_dict"]
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not any(torch.equal(a[k], c[k]) for k in a)


# ---- checkpoints and the log -----------------------------------------------------------------------

def test_checkpoint_names(runs):
    folder = runs.folder("base") / "cv"
    expected = {checkpoint_name(i) for i in SAVED_AT}
    # spelled out: epoch ends, -eval_val_every mid-epoch, and the last iteration (199 / 57 = 3.49)
    assert {"lm_epoch1.pt", "lm_epoch2.pt", "lm_epoch3.pt", "lm_epoch0.35.pt", "lm_epoch0.70.pt",
            "lm_epoch1.05.pt", "lm_epoch3.16.pt", "lm_epoch3.49.pt"} <= expected
    assert len(expected) == len(SAVED_AT) == 13
    # nothing else: no temporary files left behind
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        expected | {"lm_log.csv", "lm_index.csv", "lm_best.pt", "lm_loss.png", "lm.lock"})
    saved_lines = [line for line in runs["base"].stdout.splitlines() if line.startswith("saved checkpoint")]
    assert saved_lines == [f"saved checkpoint {Path('cv') / checkpoint_name(i)}" for i in SAVED_AT]


def test_savefile_and_checkpoint_dir_created(runs):
    result = runs["same_seed"]
    assert result.returncode == 0, result.stderr
    folder = runs.folder("same_seed") / "made" / "on" / "demand"
    expected = {checkpoint_name(i, "lm_NAME_") for i in SAVED_AT}
    assert "lm_NAME_epoch1.pt" in expected and "lm_NAME_epoch3.49.pt" in expected
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        expected | {"lm_NAME_log.csv", "lm_NAME_index.csv", "lm_NAME_best.pt", "lm_NAME_loss.png", "lm_NAME.lock"})
    assert not (runs.folder("same_seed") / "cv").exists()
    rows = read_csv(folder / "lm_NAME_log.csv")
    assert rows[0] == CSV_HEADER and len(rows) == ITERATIONS + 1


def test_checkpoint_contents(runs):
    result = runs["base"]
    printed = losses(result)
    val_printed = [float(v) for v in re.findall(r"^validation loss at epoch \d+\.\d\d: (\d+\.\d{4}) \(perplexity .*\)$",
                                                result.stdout, re.M)]
    assert len(val_printed) == len(SAVED_AT)
    folder = runs.folder("base") / "cv"
    for n, iteration in enumerate(SAVED_AT):
        checkpoint = load(folder / checkpoint_name(iteration))
        assert checkpoint.keys() >= CHECKPOINT_KEYS
        assert checkpoint["iteration"] == iteration
        assert checkpoint["epoch"] == pytest.approx(iteration / N_TRAIN)
        assert checkpoint["model"]["model_type"] == "lstm"
        assert (checkpoint["model"]["rnn_size"], checkpoint["model"]["num_layers"]) == (32, 1)
        assert checkpoint["vocab"]["tokens"] == VOCAB
        assert checkpoint["opt"]["rnn_size"] == 32 and checkpoint["opt"]["seed"] == 123
        assert checkpoint["train_losses"] == pytest.approx(printed[:iteration], abs=1e-8)
        assert [v[0] for v in checkpoint["val_losses"]] == SAVED_AT[:n + 1]
        assert checkpoint["val_loss"] == pytest.approx(val_printed[n], abs=1e-4)
        assert checkpoint["val_losses"][-1][1] == checkpoint["val_loss"]
        assert isinstance(checkpoint["resume"], dict)
        found = list(tensors_in(checkpoint))
        assert len(found) > len(checkpoint["state_dict"])  # weights, optimizer state, hidden state, RNG
        assert all(t.device.type == "cpu" for t in found)
        assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())
    # the weights change between checkpoints
    first, last = (load(folder / checkpoint_name(i))["state_dict"] for i in (SAVED_AT[0], SAVED_AT[-1]))
    assert not torch.equal(first["decoder.weight"], last["decoder.weight"])


def test_training_log_csv(runs):
    result = runs["base"]
    rows = read_csv(runs.folder("base") / "cv" / "lm_log.csv")
    assert rows[0] == CSV_HEADER
    body = rows[1:]
    assert [int(row[0]) for row in body] == list(range(1, ITERATIONS + 1))
    assert [float(row[2]) for row in body] == pytest.approx(losses(result), abs=1e-8)
    assert [float(row[1]) for row in body] == pytest.approx([i / N_TRAIN for i in range(1, ITERATIONS + 1)],
                                                             abs=1e-4)
    assert [int(row[0]) for row in body if row[3]] == SAVED_AT  # val loss on the checkpoint rows only
    seconds = [float(row[5]) for row in body]
    assert all(b >= a for a, b in itertools.pairwise(seconds)) and seconds[-1] > 0


def test_learning_rate_decay(runs):
    result = runs["base"]
    lines = result.stdout.splitlines()
    decays = [n for n, line in enumerate(lines) if line.startswith("decayed learning rate")]
    assert [lines[n] for n in decays] == ["decayed learning rate by a factor 0.97 to 0.00194",
                                          "decayed learning rate by a factor 0.97 to 0.0018818",
                                          "decayed learning rate by a factor 0.97 to 0.001825346"]
    # printed right after the last iteration of epochs 1, 2, 3
    assert [PROGRESS.match(lines[n - 1]).group(1) for n in decays] == ["57", "114", "171"]
    rates = [float(row[4]) for row in read_csv(runs.folder("base") / "cv" / "lm_log.csv")[1:]]
    assert rates[:56] == [0.002] * 56
    assert rates[56:113] == pytest.approx([0.00194] * 57)
    assert rates[113:170] == pytest.approx([0.0018818] * 57)
    assert rates[170:] == pytest.approx([0.001825346] * 29, rel=1e-5)


# ---- data sources -----------------------------------------------------------------------------------

def test_data_h5_in_cwd_used_by_default(runs):
    assert runs["h5_default"].returncode == 0, runs["h5_default"].stderr
    result = runs["h5_train"]
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert "data: data/input.h5 and data/input.json (preprocessed splits)" in out
    # torch-rnn's splits of preprocess.py's default 95/5: each split its own batch_size streams
    n_val = int(0.05 * len(TEXT))
    n_train = len(TEXT) - n_val
    train_batches, val_batches = (n_train - 1) // (BATCH * SEQ), (n_val - 1) // (BATCH * SEQ)
    assert (train_batches, val_batches) == (58, 3)
    assert f"batches: train {train_batches}, val {val_batches}, test 0" in out
    assert f"vocab size: {len(VOCAB)}" in out
    assert f"number of parameters in the model: {gru_parameters(len(VOCAB), 16, 2)}" in out
    assert len(progress(result)) == int(0.5 * train_batches)
    assert checkpoint_name(29, n_train=58) == "lm_epoch0.50.pt"
    checkpoint = load(runs.folder("h5_default") / "cv" / "lm_epoch0.50.pt")
    assert checkpoint["model"]["model_type"] == "gru" and checkpoint["model"]["num_layers"] == 2


def test_data_explicit_h5_json(runs):
    result = runs["h5_explicit"]
    assert result.returncode == 0, result.stderr
    h5_dir = runs.folder("h5_default") / "data"
    assert f"data: {h5_dir / 'input.h5'} and {h5_dir / 'input.json'} (preprocessed splits)" in result.stdout
    assert "batches: train 58, val 3, test 0" in result.stdout
    assert f"number of parameters in the model: {rnn_parameters(len(VOCAB), 16, 2)}" in result.stdout
    assert losses(result)[-1] < losses(result)[0]


def test_data_dir_wins(runs):
    """An explicit -data_dir is used even with -input_json given and data/input.h5 in the cwd."""
    result = runs["data_dir_wins"]
    assert result.returncode == 0, result.stderr
    assert (runs.folder("h5_default") / "data" / "input.h5").is_file()
    assert (runs.folder("h5_default") / "cv_data_dir" / checkpoint_name(5)).is_file()
    data_dir = runs.root / "data"
    assert f"data: {data_dir / 'input.txt'} (char-rnn splits: train_frac 0.95, val_frac 0.05)" in result.stdout
    assert f"batches: train {N_TRAIN}, val {N_VAL}, test 0" in result.stdout
    # the folder holds char-rnn's cache of the text
    assert (data_dir / "input.h5").exists() and (data_dir / "input.json").exists()


# ---- -init_from ----------------------------------------------------------------------------------------

def test_init_from_starts_from_the_checkpoint(runs):
    base, result = runs["base"], runs["init_from"]
    assert result.returncode == 0, result.stderr
    source = runs.folder("base") / "cv" / checkpoint_name(ITERATIONS)
    # the checkpoint's shape wins over -model gru -rnn_size 8 -num_layers 3
    assert f"loaded the model from {source}: lstm, 1 x 32" in result.stdout
    assert f"number of parameters in the model: {lstm_parameters(len(VOCAB), 32, 1)}" in result.stdout
    fresh_first = losses(base)[0]
    init_losses = losses(result)
    assert len(init_losses) == int(0.1 * N_TRAIN) == 5
    assert init_losses[0] < fresh_first - 1.0 and init_losses[0] < 1.5
    start = load(source)
    end = load(runs.folder("init_from") / "cv" / checkpoint_name(5))
    assert end["model"]["model_type"] == "lstm"
    assert (end["model"]["rnn_size"], end["model"]["num_layers"]) == (32, 1)
    # opt records the command line; the shape the run trained is the checkpoint's `model`
    assert (end["opt"]["model"], end["opt"]["rnn_size"], end["opt"]["num_layers"]) == ("gru", 8, 3)
    assert end["run"] == {"data_source": "data_dir"}
    assert end["iteration"] == 5  # counters start fresh
    assert end["train_losses"] == pytest.approx(init_losses, abs=1e-8)
    for name, weight in start["state_dict"].items():
        moved = (end["state_dict"][name] - weight).abs().max().item()
        assert moved < 1e-4, name  # -learning_rate 1e-6 for 5 steps
    assert any(not torch.equal(end["state_dict"][k], v) for k, v in start["state_dict"].items())  # it trained
    # the learned forget-gate biases are kept, not reset to 1
    learned = start["state_dict"]["layers.0.i2h.bias"][32:64]
    assert (learned - 1).abs().max() > 0.01
    torch.testing.assert_close(end["state_dict"]["layers.0.i2h.bias"][32:64], learned, rtol=0, atol=1e-4)


def test_a_run_started_with_init_from_resumes_with_its_shape(runs):
    result = ok(runs["init_from_resumed"])
    assert "resuming at iteration 6 of 11" in result.stdout
    end = load(runs.folder("init_from_resumed") / "cv" / checkpoint_name(11))
    assert (end["model"]["model_type"], end["model"]["rnn_size"], end["iteration"]) == ("lstm", 32, 11)
    assert (end["opt"]["model"], end["opt"]["rnn_size"]) == ("gru", 32)  # -rnn_size 32 given on resume


def test_a_checkpoint_without_a_run_section_resumes_exactly_as_one_with_it(runs):
    old, new = ok(runs["old_layout_resumed"]), ok(runs["new_layout_resumed"])
    assert losses(old) == losses(new) and len(losses(old)) == N_TRAIN - 40
    old_end = load(runs.folder("old_layout_resumed") / "cv" / checkpoint_name(N_TRAIN))
    new_end = load(runs.folder("new_layout_resumed") / "cv" / checkpoint_name(N_TRAIN))
    assert old_end["run"] == new_end["run"] == {"data_source": "data_dir"}
    assert "data_source" not in old_end["opt"]
    for name, weight in new_end["state_dict"].items():
        assert torch.equal(old_end["state_dict"][name], weight), name


# ---- aborts ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rate", list(HUGE_RATES))
def test_huge_learning_rate_aborts_without_bad_checkpoint(runs, rate):
    result = runs["explode_" + rate]
    assert result.returncode == 1, (result.stdout[-2000:], result.stderr)
    assert "Traceback" not in result.stderr
    out = result.stdout + result.stderr
    assert "loss is exploding, aborting." in out.splitlines() \
        or re.search(r"^loss is NaN at iteration \d+", out, re.M) or "the weights became NaN or infinite" in out
    named = re.search(r"^the last good checkpoint is (\S+)$|The last good checkpoint is (\S+)$", out, re.M)
    assert named, out[-1000:]
    folder = runs.folder("explode_" + rate) / "ck"
    last_good = named.group(1) or named.group(2)
    checkpoints = sorted(folder.glob("*.pt"))
    if last_good == "none":  # the very first update overflowed: nothing may have been saved
        assert not checkpoints
    else:
        assert (runs.folder("explode_" + rate) / last_good).is_file()
    written = {"lm_log.csv", "lm_index.csv", "lm.lock"} if checkpoints else {"lm_log.csv", "lm.lock"}
    on_disk = {p.name for p in folder.iterdir()} - {"lm_loss.png"}  # the plot, if a validation came first
    assert sorted(on_disk) == sorted({p.name for p in checkpoints} | written)
    for path in checkpoints:
        weights = load(path)["state_dict"]
        bad = [k for k, v in weights.items() if not torch.isfinite(v).all()]
        assert not bad, f"{path.name} holds non-finite weights {bad}"


# ---- devices ---------------------------------------------------------------------------------------

def test_bfloat16_training_follows_float32(runs):
    """-precision bf16: the base run's first epoch in bfloat16 autocast. The losses follow the float32
    run's within bfloat16's precision, the run learns, and the checkpoint records the precision."""
    base, bf16 = runs["base"], runs["bf16"]
    assert bf16.returncode == 0, bf16.stderr
    fp32_losses, bf16_losses = losses(base)[:N_TRAIN], losses(bf16)
    assert len(bf16_losses) == N_TRAIN
    assert bf16_losses != fp32_losses  # bfloat16 did run
    assert abs(bf16_losses[0] - fp32_losses[0]) < 0.01
    assert max(abs(a - b) for a, b in zip(bf16_losses, fp32_losses, strict=True)) < 0.1
    assert bf16_losses[-1] < bf16_losses[0] - 0.3
    checkpoint = load(runs.folder("bf16") / "cv" / checkpoint_name(N_TRAIN))
    assert checkpoint["opt"]["precision"] == "bf16"
    assert all(t.dtype == torch.float32 for t in checkpoint["state_dict"].values())
    assert all(t.dtype == torch.float32 for t in checkpoint["resume"]["hidden"])
    assert math.isfinite(checkpoint["val_loss"])


def test_gpu_requested_without_gpu_falls_back(runs):
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has a GPU")
    result = runs["gpu_fallback"]
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert any("no GPU found" in line for line in out)
    assert any("OpenCL" in line and "-opencl" in line for line in out)
    assert len(progress(result)) == int(0.2 * N_TRAIN) == 11
    assert (runs.folder("gpu_fallback") / "cv" / checkpoint_name(11)).is_file()
