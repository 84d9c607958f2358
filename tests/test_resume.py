"""-resume, signals, crashes and full disks, as a user meets them (docs/behaviour.md §2.3, §2.4).

Every train.py run here is a real subprocess. They are started together by the module fixture
`runs` (a few at a time: each spends a second or so importing torch), in chains where one run
needs another's checkpoint, and each test waits for the chains it looks at.

The central claim checked: training 2N iterations in one go, and training N then resuming for N
more, give BIT-IDENTICAL weights, optimizer state, carried hidden state, RNG state, the same
printed losses and the same CSV log (but for its `seconds` column), for lstm (fused kernel, with
dropout between the layers and validation in eval mode in between), gru, rnn, and lstm under
-precision bf16; with the learning rate already decayed at the resume point; whether the first
part ended by -max_epochs, at a mid-epoch checkpoint, or by SIGINT / SIGTERM.
"""
import csv
import errno
import hashlib
import os
import pickle
import random
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from conftest import assert_user_error, run_script
from model import CharRNN
from runner import Runs, ok
from util import checkpoint as checkpoint_module
from util.checkpoint import FORMAT, load_checkpoint, restore_training, save_checkpoint, training_state
from util.data import BatchLoader, load_data_dir, stream_split
from util.errors import UserError
from util.training import Progress, rmsprop
from watched import Watched, start_script


def make_text(length: int, seed: int) -> str:
    rng = random.Random(seed)
    words = ["to", "be", "or", "not", "that", "is", "the", "question", "whether", "tis", "nobler", "in", "the",
             "mind", "suffer", "slings", "and", "arrows", "of", "outrageous", "fortune", "take", "arms", "against",
             "a", "sea", "troubles"]
    out = ""
    while len(out) < length:
        out += rng.choice(words) + rng.choice([" ", " ", " ", ", ", ".\n"])
    return out[:length]


BATCH, SEQ = 3, 7
TEXT = make_text(1050, seed=5)          # 50 blocks of 3 x 7: train int(50 * 0.95) = 47, val 3
N_TRAIN = int(len(TEXT) // (BATCH * SEQ) * 0.95)
assert N_TRAIN == 47
EVAL_EVERY = 7
END = 2 * N_TRAIN                       # the uninterrupted runs: 2 epochs
RATE, DECAY = 0.01, 0.5
BIG = 512  # rnn_size whose checkpoints (~25 MB) take long enough to write to be caught mid-write

PROGRESS = re.compile(r"^(\d+)/(\d+) \(epoch \d+\.\d{3}\), train_loss = (\d+\.\d{8}),")
STOPPED = re.compile(r"^stopped at iteration (\d+); checkpoint (\S+); continue with: python train.py -resume (\S+)$",
                     re.M)
# what a process killed mid-write may leave: the temporary file of a checkpoint, the best copy, the index
# or the loss plot
TEMPORARY = r"\.(lm_epoch[\d.]+\.pt|lm_best\.pt|lm_index\.csv|lm_loss\.png)\.\d+\.tmp"
WRITTEN = ("lm_log.csv", "lm_index.csv", "lm_loss.png", "lm.lock")  # what a run writes besides its checkpoints


def name(iteration: int) -> str:
    """The checkpoint name docs/behaviour.md §2.3 gives `iteration` of this text."""
    if iteration % N_TRAIN == 0:
        return f"lm_epoch{iteration // N_TRAIN}.pt"
    return f"lm_epoch{iteration / N_TRAIN:.2f}.pt"


def common(r: Runs) -> list:
    """The options every run here shares, on the text in root/data."""
    return ["-data_dir", r.folder("data"), "-batch_size", BATCH, "-seq_length", SEQ, "-gpuid", -1, "-threads", 1,
            "-learning_rate", RATE, "-learning_rate_decay", DECAY, "-learning_rate_decay_after", 1,
            "-eval_val_every", EVAL_EVERY, "-dropout", 0.3, "-print_every", 1]


def shape(model: str, rnn_size: int = 16) -> list:
    return ["-model", model, "-rnn_size", rnn_size, "-num_layers", 2]


def start_train(cwd: Path, *args) -> Watched:
    return start_script("train.py", cwd, *args)


def progress_at_least(iteration: int):
    def predicate(line: str) -> bool:
        match = PROGRESS.match(line)
        return bool(match) and int(match.group(1)) >= iteration
    return predicate


def losses(stdout: str) -> dict[int, str]:
    """iteration -> the printed train loss (as printed: 8 decimals)."""
    found = {}
    for line in stdout.splitlines():
        match = PROGRESS.match(line)
        if match:
            found[int(match.group(1))] = match.group(3)
    return found


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_log(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def without_seconds(rows: list[list[str]]) -> list[list[str]]:
    header = rows[0]
    assert header == ["iteration", "epoch", "train_loss", "val_loss", "learning_rate", "seconds"]
    return [row[:5] for row in rows]


def differences(a, b, where: str = "") -> list[str]:
    """Every place two checkpoint parts differ; tensors must be torch.equal (same dtype, bits)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype \
            and a.shape == b.shape and torch.equal(a, b)
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{where} keys {sorted(set(a) ^ set(b))}"]
        return [d for k in a for d in differences(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where} length {len(a)} != {len(b)}"]
        return [d for n, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{where}[{n}]")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def assert_same_run_state(path_a: Path, path_b: Path) -> None:
    """Weights, optimizer state, carried hidden state, RNG, learning rate, loader position, loss
    histories: everything a run's future depends on, bit for bit."""
    a, b = load(path_a), load(path_b)
    diffs = differences(a["state_dict"], b["state_dict"], "state_dict")
    assert not diffs, f"weights differ between {path_a} and {path_b}: {diffs[:5]}"
    for key in ("iteration", "epoch", "train_losses", "val_losses", "val_loss", "model", "vocab"):
        diffs += differences(a[key], b[key], key)
    for key in ("optimizer", "hidden", "rng", "learning_rate", "loader_position", "loss0"):
        diffs += differences(a["resume"][key], b["resume"][key], f"resume.{key}")
    assert not diffs, f"{path_a} and {path_b} differ: {diffs[:8]}"


# ---- the runs, started together -----------------------------------------------------------------

def run_train(r: Runs, folder: str, *args: object) -> subprocess.CompletedProcess:
    """train.py *args in the folder root/`folder` (created if missing), waiting for it to end."""
    return run_script("train.py", *args, cwd=r.folder(folder), timeout=300)


def chain_lstm(r: Runs) -> dict:
    """A: 2 epochs in one go. M: resume A's mid-epoch checkpoint (iteration 14, before any decay)
    elsewhere, printing every 5; D: the same with another -decay_rate. I: -init_from A's last
    checkpoint for 1 epoch; I2: resume I's mid-epoch checkpoint (a run started with -init_from must
    be resumable too)."""
    out = {"A": run_train(r, "A_lstm", *common(r), *shape("lstm"), "-max_epochs", 2)}
    a_cv = r.root / "A_lstm" / "cv"
    out["M"] = run_train(r, "M_lstm", "-resume", a_cv / name(14), "-print_every", 5)
    out["D"] = run_train(r, "D_lstm", "-resume", a_cv / name(14), "-decay_rate", 0.5)
    out["I"] = run_train(r, "I_lstm", *common(r), "-init_from", a_cv / name(END), "-max_epochs", 1)
    out["I2"] = run_train(r, "I2_lstm", "-resume", r.root / "I_lstm" / "cv" / name(28))
    return out


def chain_extend(r: Runs) -> dict:
    """B: the same run as A, but -max_epochs 1; then -resume it in place with -max_epochs 2 (and
    the shape, batch and seed options repeated with their unchanged values, which is no conflict)."""
    out = {"B": run_train(r, "B_lstm", *common(r), *shape("lstm"), "-max_epochs", 1)}
    out["B2"] = run_train(r, "B_lstm", "-resume", "cv/" + name(N_TRAIN), "-max_epochs", 2, "-model", "lstm",
                          "-rnn_size", 16, "-batch_size", BATCH, "-seed", 123)
    return out


def chain_other_model(r: Runs, model: str) -> dict:
    """2 epochs; then resume the checkpoint at iteration 56 (epoch 1.19: after the first decay)."""
    out = {"A": run_train(r, f"A_{model}", *common(r), *shape(model), "-max_epochs", 2)}
    out["M"] = run_train(r, f"M_{model}", "-resume", r.root / f"A_{model}" / "cv" / name(56))
    return out


def chain_bf16(r: Runs) -> dict:
    """The lstm run in bfloat16 autocast (-precision bf16) for 2 epochs; then resume the checkpoint at
    iteration 56, which keeps the precision."""
    out = {"A": run_train(r, "A_bf16", *common(r), *shape("lstm"), "-precision", "bf16", "-max_epochs", 2)}
    out["M"] = run_train(r, "M_bf16", "-resume", r.root / "A_bf16" / "cv" / name(56))
    return out


def interrupt(r: Runs, folder_name: str, number: int, after: int = 3) -> dict:
    """Start A's lstm run with -max_epochs 1000, send `number` once it has printed `after`
    progress lines, then resume the checkpoint it names up to A's end point (or a later one, with
    a reference run of its own, if the signal landed after it)."""
    folder = r.folder(folder_name)
    run = start_train(folder, *common(r), *shape("lstm"), "-max_epochs", 1000)
    run.wait_for(progress_at_least(after))
    sent = time.monotonic()
    run.process.send_signal(number)
    returncode, stdout, stderr = run.finish()
    out = {"returncode": returncode, "stdout": stdout, "stderr": stderr, "exit_seconds": time.monotonic() - sent,
           "folder": folder}
    stopped = STOPPED.search(out["stdout"])
    if returncode != 128 + number or not stopped:
        return out
    iteration = int(stopped.group(1))
    out["iteration"], out["checkpoint"] = iteration, stopped.group(2)
    out["log_before"] = read_log(folder / "cv" / "lm_log.csv")
    end_epochs = 2 if iteration < END else iteration // N_TRAIN + 2
    out["end"] = end_epochs * N_TRAIN
    out["resumed"] = run_script("train.py", "-resume", stopped.group(2), "-max_epochs", end_epochs, cwd=folder,
                                timeout=300)
    if end_epochs != 2:  # the signal came late: an uninterrupted reference to the same end
        out["reference"] = run_train(r, f"{folder_name}_reference", *common(r), *shape("lstm"), "-max_epochs",
                                     end_epochs)
        out["reference_folder"] = r.root / f"{folder_name}_reference"
    return out


def new_entry(folder: Path, known: set[str], timeout: float) -> bool:
    """Spin until `folder` holds a name not in `known` (a checkpoint write has begun)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if set(os.listdir(folder)) - known:
            return True
        time.sleep(0.0005)  # noticing within a millisecond is enough: a write takes tens of them
    return False


def double_interrupt(r: Runs) -> dict:
    """SIGINT, then a second SIGINT the moment the next checkpoint write begins (every iteration
    writes one of ~25 MB, so the second signal lands inside the write)."""
    folder = r.folder("double")
    run = start_train(folder, *common(r), *shape("lstm", BIG), "-max_epochs", 1000, "-eval_val_every", 1)
    run.wait_for(progress_at_least(2))
    known = set(os.listdir(folder / "cv"))
    run.process.send_signal(signal.SIGINT)
    new_entry(folder / "cv", known, timeout=10)
    run.process.send_signal(signal.SIGINT)
    returncode, stdout, stderr = run.finish(60)
    return {"returncode": returncode, "stdout": stdout, "stderr": stderr, "folder": folder}


def kill_during_write(r: Runs, trial: int, delay: float | None) -> dict:
    """A run that writes a ~25 MB checkpoint after every iteration, SIGKILLed either the moment a
    new file appears in its checkpoint folder (delay None: inside the write, which takes far longer
    than noticing the file) or after `delay` seconds (anywhere). Returns what the folder held."""
    folder = r.folder(f"kill{trial}")
    cv = folder / "cv"
    run = start_train(folder, *common(r), *shape("lstm", BIG), "-max_epochs", 1000, "-eval_val_every", 1,
                      "-print_every", 1000)
    line = run.wait_for(lambda text: text.startswith("saved checkpoint "))
    out = {"folder": folder, "first": folder / line.split()[-1] if line else None}
    if line is None:  # the run ended before its first checkpoint
        out["returncode"], _, out["stderr"] = run.finish()
        return out
    out["first_digest"] = digest(out["first"])
    if delay is None:
        new_entry(cv, set(os.listdir(cv)), timeout=30)
    else:
        time.sleep(delay)
    run.process.kill()
    out["returncode"], _, out["stderr"] = run.finish()
    out["leftovers"] = sorted(p.name for p in cv.iterdir()
                              if not p.name.endswith(".pt") and p.name not in WRITTEN)
    return out


def disk_full(r: Runs) -> dict:
    """The checkpoint folder on a 320 KiB tmpfs: a few checkpoints fit, then the disk is full."""
    folder = r.folder("full")
    cv = folder / "cv"
    cv.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=320k", "tmpfs", str(cv)], capture_output=True,
                           text=True)
    if mount.returncode != 0:
        return {"skip": f"cannot mount a tmpfs: {mount.stderr.strip()}"}
    try:
        run = start_train(folder, *common(r), *shape("lstm", 24), "-max_epochs", 2, "-eval_val_every", 1,
                          "-print_every", 1000)
        line = run.wait_for(lambda text: text.startswith("saved checkpoint "))
        first = folder / line.split()[-1] if line else None
        digest_before = digest(first) if first else None
        returncode, stdout, stderr = run.finish()
        return {"returncode": returncode, "stdout": stdout, "stderr": stderr, "first": first, "folder": folder,
                "first_digest": digest_before, "files": {p.name: p.read_bytes() for p in sorted(cv.iterdir())}}
    finally:
        subprocess.run(["umount", str(cv)], check=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    root = tmp_path_factory.mktemp("resume")
    for folder in (root / "data", root / "other"):  # the text, and the same text in another folder
        folder.mkdir()
        (folder / "input.txt").write_text(TEXT, encoding="utf-8")
        load_data_dir(str(folder), log=lambda _: None)  # the cache, built once before runs read it together
    with Runs(workers=3, root=root) as r:
        r.submit("lstm", chain_lstm, r)
        r.submit("extend", chain_extend, r)
        r.submit("sigint", interrupt, r, "sigint", signal.SIGINT)
        r.submit("sigterm", interrupt, r, "sigterm", signal.SIGTERM)
        r.submit("gru", chain_other_model, r, "gru")
        r.submit("rnn", chain_other_model, r, "rnn")
        r.submit("bf16", chain_bf16, r)
        r.submit("kill0", kill_during_write, r, 0, None)
        r.submit("kill1", kill_during_write, r, 1, 0.35)
        r.submit("double", double_interrupt, r)
        r.submit("full", disk_full, r)
        yield r


# ---- resume equality ------------------------------------------------------------------------------

def test_a_checkpoints_optimizer_state_has_its_weights_layout():
    """RMSprop's per-parameter state is saved in the state_dict's order (LSTM gates i, f, o, g, as
    checkpoints of every version hold them), whatever order the model keeps, and restored into it."""
    torch.manual_seed(0)
    model = CharRNN("lstm", 7, 4, 2)
    model.initialize()
    optimizer = rmsprop(list(model.parameters()), 1e-3, 0.95)
    for p in model.parameters():
        optimizer.state[p] = {"step": torch.tensor(3.0), "square_avg": p.detach().clone()}
    progress = Progress(1, [2.0], [], 2.0, 0.0)
    training = training_state(model, optimizer, 0, model.zero_state(2), torch.device("cpu"), progress)
    weights = list(model.state_dict().values())
    for index, values in training["optimizer"]["state"].items():
        assert torch.equal(values["square_avg"], weights[index]) and values["step"] == 3.0
    fresh = rmsprop(list(model.parameters()), 1e-3, 0.95)
    splits = {name: stream_split(torch.arange(7).repeat(20).numpy(), 2, 3) for name in ("train", "val", "test")}
    checkpoint = {"resume": training, "iteration": 1, "train_losses": [2.0], "val_losses": []}
    restore_training(checkpoint, "x.pt", model, fresh, BatchLoader(splits, 2, 3), torch.device("cpu"), None)
    for p in model.parameters():
        assert torch.equal(fresh.state[p]["square_avg"], p.detach())


def test_max_epochs_then_resume_in_place_equals_one_run(runs):
    """N iterations (-max_epochs 1), then -resume with -max_epochs 2 in the same folder: every
    checkpoint the resumed run writes equals the one-go run's, and so do the losses and the log."""
    a, b, b2 = ok(runs["lstm"]["A"]), ok(runs["extend"]["B"]), ok(runs["extend"]["B2"])
    a_cv, b_cv = runs.root / "A_lstm" / "cv", runs.root / "B_lstm" / "cv"
    assert f"resuming at iteration {N_TRAIN + 1} of {END}" in b2.stdout
    # the learning rate was decayed at the end of epoch 1, before the checkpoint the run resumes from
    assert load(b_cv / name(N_TRAIN))["resume"]["learning_rate"] == pytest.approx(RATE * DECAY, rel=1e-12)
    assert load(b_cv / name(END))["resume"]["learning_rate"] == pytest.approx(RATE * DECAY ** 2, rel=1e-12)
    written = sorted(p.name for p in b_cv.glob("*.pt"))
    assert written == sorted(p.name for p in a_cv.glob("*.pt"))
    for checkpoint in written:
        assert_same_run_state(a_cv / checkpoint, b_cv / checkpoint)
    one_go, first, second = losses(a.stdout), losses(b.stdout), losses(b2.stdout)
    assert sorted(first) == list(range(1, N_TRAIN + 1)) and sorted(second) == list(range(N_TRAIN + 1, END + 1))
    assert {**first, **second} == one_go
    assert without_seconds(read_log(b_cv / "lm_log.csv")) == without_seconds(read_log(a_cv / "lm_log.csv"))
    assert len(read_log(a_cv / "lm_log.csv")) == END + 1


def test_resume_mid_epoch_elsewhere_keeps_the_checkpoints_options(runs):
    """Resuming A's checkpoint at iteration 14 into another folder, with -print_every 5 given:
    printing follows the new value, everything else (-eval_val_every 7, -max_epochs 2, dropout,
    decay) the checkpoint's, and the end state is A's."""
    a, m = ok(runs["lstm"]["A"]), ok(runs["lstm"]["M"])
    a_cv, m_cv = runs.root / "A_lstm" / "cv", runs.root / "M_lstm" / "cv"
    printed = losses(m.stdout)
    assert sorted(printed) == list(range(15, END + 1, 5)), sorted(printed)
    one_go = losses(a.stdout)
    assert printed == {i: one_go[i] for i in printed}
    expected = sorted({name(i) for i in range(15, END + 1) if i % EVAL_EVERY == 0 or i % N_TRAIN == 0} | {name(END)})
    assert sorted(p.name for p in m_cv.glob("lm_epoch*.pt")) == expected
    for checkpoint in expected:
        assert_same_run_state(a_cv / checkpoint, m_cv / checkpoint)


def test_resume_with_another_decay_rate_uses_it(runs):
    """-decay_rate given with -resume is RMSprop's from then on (the optimizer state alone would
    bring back the saved one), and the checkpoints record it."""
    a, d = ok(runs["lstm"]["A"]), ok(runs["lstm"]["D"])
    saved = load(runs.root / "D_lstm" / "cv" / name(END))
    assert load(runs.root / "A_lstm" / "cv" / name(14))["opt"]["decay_rate"] != 0.5
    assert saved["opt"]["decay_rate"] == 0.5
    assert {group["alpha"] for group in saved["resume"]["optimizer"]["param_groups"]} == {0.5}
    one_go, resumed = losses(a.stdout), losses(d.stdout)
    assert resumed[15] == one_go[15] and resumed[END] != one_go[END]  # the first step with 0.5 comes after 15's loss


@pytest.mark.parametrize("run", ["gru", "rnn", "bf16"])
def test_resume_after_a_decay_other_models_and_bf16(runs, run):
    a, m = ok(runs[run]["A"]), ok(runs[run]["M"])
    a_cv, m_cv = runs.root / f"A_{run}" / "cv", runs.root / f"M_{run}" / "cv"
    assert load(a_cv / name(56))["resume"]["learning_rate"] == pytest.approx(RATE * DECAY, rel=1e-12)
    assert f"resuming at iteration 57 of {END}" in m.stdout
    assert losses(m.stdout) == {i: loss for i, loss in losses(a.stdout).items() if i > 56}
    assert_same_run_state(a_cv / name(END), m_cv / name(END))
    assert load(m_cv / name(END))["opt"]["precision"] == ("bf16" if run == "bf16" else "fp32")


def test_run_started_with_init_from_can_be_resumed(runs):
    """A run begun with -init_from stores that option; resuming its checkpoint is still a resume
    (not 'both -init_from and -resume') and ends where the uninterrupted run ended."""
    i, i2 = ok(runs["lstm"]["I"]), runs["lstm"]["I2"]
    ok(i2)
    i_cv, i2_cv = runs.root / "I_lstm" / "cv", runs.root / "I2_lstm" / "cv"
    assert_same_run_state(i_cv / name(N_TRAIN), i2_cv / name(N_TRAIN))
    assert losses(i2.stdout) == {k: v for k, v in losses(i.stdout).items() if k > 28}


# ---- -resume option rules ---------------------------------------------------------------------------

@pytest.mark.parametrize("option, value", [
    ("rnn_size", "32"), ("num_layers", "3"), ("model", "gru"), ("batch_size", "4"), ("seq_length", "9"),
    ("data_dir", "OTHER"), ("seed", "7"),
])
def test_conflicting_shape_data_or_seed_is_an_error(runs, option, value, tmp_path, monkeypatch):
    """In-process (train.main): the conflict is found before anything is loaded or written (the
    one-line message end to end: tests/test_bad_input.py, tr_resume_conflicting_*)."""
    import train

    ok(runs["lstm"]["A"])
    value = str(runs.folder("other")) if value == "OTHER" else value
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as error:
        train.main(["-resume", str(runs.root / "A_lstm" / "cv" / name(N_TRAIN)), f"-{option}", value])
    message = str(error.value)
    assert f"-{option} {value}" in message and "conflicts" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []


# ---- signals -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("which, status", [("sigint", 130), ("sigterm", 143)])
def test_signal_saves_a_checkpoint_that_resumes_exactly(runs, which, status):
    out = runs[which]
    assert out["returncode"] == status, (out["stdout"][-1500:], out["stderr"][-3000:])
    assert "Traceback" not in out["stderr"]
    assert "iteration" in out, out["stdout"][-1500:]
    assert out["exit_seconds"] < 60  # it stops after the step in progress, not at the end of the run
    iteration, path = out["iteration"], out["folder"] / out["checkpoint"]
    assert out["checkpoint"] == f"cv/{name(iteration)}"  # the usual name, and the message says where it is
    last_line = out["stdout"].splitlines()[-1]  # the best checkpoint, if a validation came before the signal
    assert re.fullmatch(r"(best checkpoint: cv/lm_best\.pt \(epoch [\d.]+, iteration \d+, val loss [\d.]+\)|no "
                        r"validation loss was measured, so there is no best checkpoint); last checkpoint: "
                        + re.escape(f"cv/{name(iteration)}"), last_line), last_line
    saved = load(path)  # weights_only=True
    assert saved["iteration"] == iteration and len(saved["train_losses"]) == iteration
    assert [row[0] for row in out["log_before"][1:]] == [str(i) for i in range(1, iteration + 1)]
    resumed = ok(out["resumed"])
    assert f"resuming at iteration {iteration + 1} of {out['end']}" in resumed.stdout
    if "reference" in out:
        reference, reference_cv = ok(out["reference"]), out["reference_folder"] / "cv"
    else:
        reference, reference_cv = ok(runs["lstm"]["A"]), runs.root / "A_lstm" / "cv"
    assert_same_run_state(reference_cv / name(out["end"]), out["folder"] / "cv" / name(out["end"]))
    one_go = losses(reference.stdout)
    both = {**losses(out["stdout"]), **losses(resumed.stdout)}
    assert both == one_go
    assert without_seconds(read_log(out["folder"] / "cv" / "lm_log.csv")) == \
        without_seconds(read_log(reference_cv / "lm_log.csv"))


def test_second_sigint_exits_at_once_leaving_only_whole_checkpoints(runs):
    out = runs["double"]
    assert out["returncode"] == 130, (out["stdout"][-1500:], out["stderr"][-3000:])
    assert "Traceback" not in out["stderr"]
    cv = out["folder"] / "cv"
    for path in cv.iterdir():
        if path.name.endswith(".pt"):
            load(path)
        else:  # anything else is the log, the index or a temporary file, never a checkpoint's name
            assert path.name in WRITTEN or re.fullmatch(TEMPORARY, path.name), path.name



# ---- SIGKILL while a checkpoint is written ---------------------------------------------------------------

@pytest.mark.parametrize("trial", ["kill0", "kill1"])
def test_sigkill_never_leaves_a_damaged_checkpoint(runs, trial):
    out = runs[trial]
    assert out["first"] is not None, out.get("stderr")
    assert out["returncode"] == -signal.SIGKILL
    assert digest(out["first"]) == out["first_digest"], "an earlier checkpoint changed"
    checkpoints = sorted((out["folder"] / "cv").glob("*.pt"))
    assert out["first"] in checkpoints
    for path in checkpoints:
        saved = load(path)
        assert path.name in ("lm_best.pt", name(saved["iteration"]))
    for leftover in out["leftovers"]:  # only this run's temporary files, named as they are written
        assert re.fullmatch(TEMPORARY, leftover), leftover


# ---- the disk fills up mid-run ------------------------------------------------------------------------

def test_disk_full_mid_run_is_one_line_and_keeps_earlier_checkpoints(runs):
    out = runs["full"]
    if "skip" in out:
        pytest.skip(out["skip"])
    result = subprocess.CompletedProcess([], out["returncode"], out["stdout"], out["stderr"])
    assert out["first"] is not None, out["stderr"][-2000:]
    assert_user_error(result, "cv")
    files = out["files"]
    assert hashlib.sha256(files[out["first"].name]).hexdigest() == out["first_digest"]
    checkpoints = [n for n in files if n.endswith(".pt")]
    assert len(checkpoints) >= 2
    for checkpoint in checkpoints:
        path = out["folder"] / "copy.pt"
        path.write_bytes(files[checkpoint])
        assert load(path)["iteration"] >= 1
    leftovers = [n for n in files if not n.endswith(".pt") and n not in WRITTEN]
    assert not leftovers, f"temporary files left on the full disk: {leftovers}"


class StorageFull:
    """A torch.save that writes part of the file, then fails as a full disk makes it fail:
    OSError(ENOSPC) from the file, or the RuntimeError torch's zip writer raises instead."""

    def __init__(self, error: BaseException):
        self.error = error

    def __call__(self, obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04" + b"\0" * 5000)
        raise self.error


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 768 vs 662"),
], ids=["oserror", "torch_runtime_error"])
def test_save_checkpoint_on_a_full_disk(tmp_path, monkeypatch, error):
    path = tmp_path / "lm_epoch3.pt"
    torch.save({"format": FORMAT, "state_dict": {"w": torch.ones(3)}}, path)
    before = path.read_bytes()
    monkeypatch.setattr(checkpoint_module.torch, "save", StorageFull(error))
    with pytest.raises(UserError) as raised:
        save_checkpoint(str(path), {"format": FORMAT, "state_dict": {"w": torch.zeros(3)}})
    assert str(path) in str(raised.value) and "\n" not in str(raised.value)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left


def test_real_full_tmpfs_in_process(tmp_path):
    """save_checkpoint onto a really full file system (not a simulated error)."""
    folder = tmp_path / "small"
    folder.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True,
                           text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mount.stderr.strip()}")
    try:
        path = folder / "lm_epoch1.pt"
        save_checkpoint(str(path), {"format": FORMAT, "state_dict": {"w": torch.ones(100)}})
        before = path.read_bytes()
        with pytest.raises(UserError):
            save_checkpoint(str(path), {"format": FORMAT, "state_dict": {"w": torch.zeros(100_000)}})
        assert path.read_bytes() == before
        assert sorted(p.name for p in folder.iterdir()) == [path.name]
    finally:
        subprocess.run(["umount", str(folder)], check=False)


# ---- loading never runs code from the file ------------------------------------------------------------

class RunsCode:
    """Unpickling this runs a shell command (touches a marker file)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def malicious_files(folder: Path, marker: Path) -> dict[str, Path]:
    paths = {}
    paths["raw_pickle"] = folder / "raw.pt"
    paths["raw_pickle"].write_bytes(pickle.dumps(RunsCode(marker)))
    paths["torch_zip"] = folder / "zip.pt"
    torch.save(RunsCode(marker), paths["torch_zip"])
    paths["torch_legacy"] = folder / "legacy.pt"
    torch.save(RunsCode(marker), paths["torch_legacy"], _use_new_zipfile_serialization=False)
    paths["inside_checkpoint"] = folder / "lm_epoch1.pt"  # looks like ours, with one poisoned entry
    torch.save({"format": FORMAT, "model": {"model_type": "lstm", "vocab_size": 2, "rnn_size": 4, "num_layers": 1,
                                            "dropout": 0.0},
                "state_dict": {}, "vocab": {"tokens": ["a", "b"], "encoding": "utf-8"},
                "opt": {"poison": RunsCode(marker)},
                "resume": {}}, paths["inside_checkpoint"])
    for path in paths.values():
        assert path.stat().st_size > 0
    assert not marker.exists()
    return paths


@pytest.mark.parametrize("kind", ["raw_pickle", "torch_zip", "torch_legacy", "inside_checkpoint"])
def test_load_checkpoint_refuses_code(tmp_path, kind):
    marker = tmp_path / "MARKER"
    path = malicious_files(tmp_path, marker)[kind]
    with pytest.raises(UserError) as error:
        load_checkpoint(str(path))
    assert path.name in str(error.value)
    assert not marker.exists(), "loading the checkpoint ran code from it"


@pytest.fixture(scope="module")
def malicious_runs(runs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("malicious")
    marker = folder / "MARKER"
    paths = malicious_files(folder, marker)
    commands = {
        "sample_inside": ("sample.py", paths["inside_checkpoint"], "-gpuid", -1),
        "resume_inside": ("train.py", "-resume", paths["inside_checkpoint"]),
        "init_from_inside": ("train.py", "-data_dir", runs.folder("data"), "-batch_size", BATCH, "-seq_length", SEQ,
                             "-gpuid", -1, "-max_epochs", 0.1, "-init_from", paths["inside_checkpoint"]),
    }
    for key, command in commands.items():
        runs.start(key, *command, cwd=folder)
    return {key: runs[key] for key in commands}, marker, folder


@pytest.mark.parametrize("command", ["sample_inside", "resume_inside", "init_from_inside"])
def test_scripts_refuse_code_in_checkpoints(malicious_runs, command):
    results, marker, folder = malicious_runs
    assert_user_error(results[command], ".pt")
    assert not marker.exists(), f"{command} ran code from the checkpoint"
    assert not (folder / "cv").exists()
