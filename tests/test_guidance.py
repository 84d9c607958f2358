"""What train.py tells the user and keeps for them (docs/behaviour.md §2.3, §2.10): the best
checkpoint, over-fitting and -early_stop, names no two iterations share, -keep, -val_max_batches
and the notice when validation costs too much, the validation line's extras.

The runs start together at the beginning of the module (tests/runner.py). A memorising run: a
two-layer LSTM of 59,164 parameters on 1,680 training characters, whose validation loss is lowest
at epoch 15 and rises from epoch 16 on (it rises more than 1% above the minimum at 16, 17 and 18).
"""
import csv
import itertools
import math
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import REPO, data_folder
from runner import Runs, ok
from util.checkpoint import model_from_checkpoint
from util.data import load_training_data
from util.guidance import format_duration, validation_cost_notice
from util.training import evaluate_split, rises_since_best, spread_batches

WORDS = "the quick brown fox jumps over lazy dog and cat sat on mat with hat".split()  # noqa: SIM905
CPU = ["-gpuid", -1, "-threads", 1, "-print_every", 1000]
MEMORISE = ["-rnn_size", 64, "-num_layers", 2, "-batch_size", 4, "-seq_length", 20, "-learning_rate", 1e-2,
            "-train_frac", 0.8, "-val_frac", 0.2, *CPU]
MEMORISE_TRAIN = 21  # training batches per epoch
# an improving run: a small model, 1 epoch of 190 batches, validated every 10 iterations
IMPROVE = ["-rnn_size", 32, "-num_layers", 1, "-batch_size", 10, "-seq_length", 20, "-max_epochs", 1,
           "-eval_val_every", 10, *CPU]
VALIDATION = re.compile(r"^validation loss at epoch (\d+\.\d\d): (\d+\.\d{4}) \(perplexity (\S+); (best so far|best "
                        r"\d+\.\d{4} at epoch \d+\.\d\d)(; on \d+ of \d+ batches)?; elapsed \S+, about \S+ left\)$",
                        re.M)


def memorise_text() -> str:
    rng = random.Random(1)
    return "\n".join(" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(60))


def validations(stdout: str) -> list[tuple[float, float, str]]:
    return [(float(epoch), float(loss), best) for epoch, loss, _, best, _ in VALIDATION.findall(stdout)]


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def index(folder: Path) -> list[dict]:
    with open(folder / "lm_index.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    root = tmp_path_factory.mktemp("guidance")
    memorise = data_folder(root / "memorise", memorise_text())
    shakespeare = (REPO / "data" / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    improve = data_folder(root / "improve", shakespeare[:40_000])
    whole = data_folder(root / "whole", shakespeare)
    with Runs(workers=3, root=root) as r:
        m = ["-data_dir", memorise, *MEMORISE]
        r.start("memorise", "train.py", *m, "-max_epochs", 20)
        r.start("early_stop", "train.py", *m, "-max_epochs", 30, "-early_stop", 3)
        r.start("keep", "train.py", *m, "-max_epochs", 20, "-keep", 2)
        r.start("part", "train.py", *m, "-max_epochs", 16)
        r.start("resumed", "train.py", "-resume", r.folder("part") / "cv" / "lm_epoch16.pt", "-max_epochs", 20,
                after=("part",))
        r.start("improve", "train.py", "-data_dir", improve, *IMPROVE, "-overfit_patience", 1)  # the most sensitive
        r.start("every1", "train.py", "-data_dir", improve, *IMPROVE, "-max_epochs", 0.1, "-eval_val_every", 1,
                "-val_max_batches", 2)
        r.start("subset", "train.py", "-data_dir", improve, *IMPROVE, "-max_epochs", 0.2, "-val_max_batches", 3)
        r.start("all_batches", "train.py", "-data_dir", improve, *IMPROVE, "-max_epochs", 0.2, "-val_max_batches", 10)
        r.start("full_pass", "train.py", "-data_dir", improve, *IMPROVE, "-max_epochs", 0.2)
        # the whole of tiny Shakespeare, half of it val: 223 batches of 50 x 50 to validate after every step
        costly = ["-data_dir", whole, "-train_frac", 0.5, "-val_frac", 0.5, "-eval_val_every", 1, "-max_epochs", 0.009,
                  *CPU]
        r.start("costly", "train.py", *costly)
        yield r


# ---- the best checkpoint -----------------------------------------------------------------------------

@dataclass
class Memorised:
    """Where the memorising run's validation loss is lowest, and where it has risen (by more than
    RISE_MARGIN) for the third validation in a row: read from the run itself, since the exact
    trajectory of 420 steps of a chaotic fit differs with the CPU's rounding (one machine's lowest
    is at epoch 15, another's at 12)."""
    best: int
    third_rise: int

    @property
    def iteration(self) -> int:
        return self.best * MEMORISE_TRAIN

    @property
    def best_line_start(self) -> str:
        return f"best checkpoint: cv/lm_best.pt (epoch {self.best}.00, iteration {self.iteration}, "


@pytest.fixture(scope="module")
def memorised(runs) -> Memorised:
    losses = [loss for _, loss, _ in validations(ok(runs["memorise"]).stdout)]
    points = [[epoch * MEMORISE_TRAIN, loss] for epoch, loss in enumerate(losses, start=1)]
    third = next(k for k in range(1, len(points) + 1) if rises_since_best(points[:k]) == 3)
    found = Memorised(losses.index(min(losses)) + 1, third)
    # what the tests below rely on: an over-fit, before the 16 epochs of the run that is resumed
    assert 5 <= found.best <= 16 and found.best < found.third_rise <= 19, (found, losses)
    return found


def test_the_best_checkpoint_is_the_lowest_validation_loss(runs, memorised):
    result = ok(runs["memorise"])
    printed = validations(result.stdout)
    assert len(printed) == 20
    cv = runs.folder("memorise") / "cv"
    best = load(cv / "lm_best.pt")
    assert best["iteration"] == memorised.iteration
    assert best["val_loss"] == min(v for _, v in best["val_losses"])
    at_best = load(cv / f"lm_epoch{memorised.best}.pt")
    assert torch.equal(best["state_dict"]["decoder.weight"], at_best["state_dict"]["decoder.weight"])
    assert "resume" in best  # a whole checkpoint: -resume continues it
    # "best so far" at the first validation and at the lowest, not after it
    marks = [best_text for _, _, best_text in printed]
    assert marks[0] == marks[memorised.best - 1] == "best so far"
    assert all(mark.startswith("best ") and mark != "best so far" for mark in marks[memorised.best:])
    assert result.stdout.splitlines()[-1] == (
        f"{memorised.best_line_start}val loss {best['val_loss']:.4f}); last checkpoint: cv/lm_epoch20.pt")


def test_the_best_checkpoint_survives_resume(runs, memorised):
    whole, resumed = ok(runs["memorise"]), ok(runs["resumed"])
    assert "resuming at iteration 337 of 420" in resumed.stdout
    assert "best so far" not in resumed.stdout  # epochs 17-20 are all worse than the best, before the resume
    assert resumed.stdout.splitlines()[-1] == whole.stdout.splitlines()[-1]
    best = load(runs.folder("part") / "cv" / "lm_best.pt")
    assert best["iteration"] == memorised.iteration
    # the over-fitting notice counts the rises from before the resume as well as after it
    assert resumed.stdout.count("notice: the validation loss has risen for 3 validations") == \
        (memorised.third_rise > 16)


def test_the_validation_line_adds_perplexity_and_time(runs):
    stdout = ok(runs["memorise"]).stdout
    exact = load(runs.folder("memorise") / "cv" / "lm_epoch20.pt")["val_losses"]
    printed = re.findall(r"^validation loss at epoch [\d.]+: [\d.]+ \(perplexity (\S+);", stdout, re.M)
    assert printed == [f"{math.exp(loss):.2f}" for _, loss in exact]
    assert format_duration(0.42) == "0.4s" and format_duration(45) == "45s" and format_duration(185) == "3m05s"
    assert format_duration(7380) == "2h03m"


# ---- over-fitting and -early_stop --------------------------------------------------------------------

def test_a_memorising_run_is_told_once_with_advice(runs, memorised):
    stdout = ok(runs["memorise"]).stdout
    notices = [line for line in stdout.splitlines() if line.startswith("notice: the validation loss has risen")]
    assert len(notices) == 1
    notice = notices[0]
    assert "for 3 validations in a row" in notice and f"at epoch {memorised.best}.00" in notice
    assert "over-fitting its 1,680 training characters" in notice and "cv/lm_best.pt" in notice
    assert "-dropout 0.5" in notice and "-rnn_size 32 (" in notice and f"-max_epochs {memorised.best}" in notice
    lines = stdout.splitlines()
    at = lines.index(notice)
    third = f"validation loss at epoch {memorised.third_rise}.00"
    assert lines[at - 1].startswith(third) or lines[at - 2].startswith(third)


def test_an_improving_run_is_not_told_it_over_fits(runs):
    stdout = ok(runs["improve"]).stdout
    losses = [loss for _, loss, _ in validations(stdout)]
    assert len(losses) == 19
    # it improves, with the noise of small batches (rises of up to 0.3%), and even at -overfit_patience 1
    # (one rise is enough) nothing is said
    assert losses[-1] == min(losses) and losses[-1] < losses[0] - 0.15
    assert any(later > earlier for earlier, later in itertools.pairwise(losses))
    assert "over-fitting" not in stdout and "stopping early" not in stdout


def test_rises_count_only_what_is_more_than_one_percent_above_the_best():
    assert rises_since_best([[1, 2.0], [2, 2.5], [3, 2.6]]) == 2
    assert rises_since_best([[1, 2.0], [2, 2.5], [3, 2.01], [4, 2.6]]) == 1  # 2.01 is noise, not a rise
    assert rises_since_best([[1, 3.0], [2, 2.0]]) == 0 and rises_since_best([]) == 0


def test_early_stop_ends_the_run_and_names_the_best(runs, memorised):
    result = ok(runs["early_stop"])
    lines = result.stdout.splitlines()
    assert "stopping early (-early_stop 3): the validation loss has risen for 3 validations in a row since its " \
           "lowest" in result.stdout
    assert lines[-1].startswith(memorised.best_line_start)
    assert lines[-1].endswith(f"last checkpoint: cv/lm_epoch{memorised.third_rise}.pt")
    cv = runs.folder("early_stop") / "cv"
    assert (cv / f"lm_epoch{memorised.third_rise}.pt").exists()
    assert not (cv / f"lm_epoch{memorised.third_rise + 1}.pt").exists()


# ---- checkpoint files --------------------------------------------------------------------------------

def test_keep_deletes_only_old_checkpoints_never_the_best_or_the_newest(runs, memorised):
    ok(runs["keep"])
    cv = runs.folder("keep") / "cv"
    kept = ["lm_best.pt", f"lm_epoch{memorised.best}.pt", "lm_epoch19.pt", "lm_epoch20.pt"]
    assert sorted(p.name for p in cv.glob("*.pt")) == sorted(kept)
    assert sorted(row["checkpoint"] for row in index(cv)) == sorted(kept)
    assert load(cv / "lm_best.pt")["iteration"] == memorised.iteration


def test_no_two_iterations_share_a_name_at_eval_val_every_1(runs):
    result = ok(runs["every1"])
    saved = re.findall(r"^saved checkpoint (\S+)$", result.stdout, re.M)
    # 0.1 of 190 batches, 3 decimals (at 2, iterations 1 and 2 would both be lm_epoch0.01.pt)
    assert len(saved) == 19 == len(set(saved))
    assert saved[:2] == ["cv/lm_epoch0.005.pt", "cv/lm_epoch0.011.pt"]
    cv = runs.folder("every1") / "cv"
    assert len(list(cv.glob("lm_epoch*.pt"))) == 19
    rows = index(cv)
    assert [row["checkpoint"] for row in rows if row["checkpoint"] != "lm_best.pt"] == \
        [Path(name).name for name in saved]
    assert all(row["val_loss"] for row in rows)


# ---- validation that scales ----------------------------------------------------------------------------

def test_val_max_batches_spreads_the_same_batches_every_time():
    assert spread_batches(10, 3) == [0, 3, 6] == spread_batches(10, 3)
    assert spread_batches(10, 0) == spread_batches(10, 10) == spread_batches(10, 99) == list(range(10))
    assert spread_batches(20_008, 4) == [0, 5002, 10004, 15006]


def test_val_max_batches_at_least_the_split_is_the_full_pass(runs):
    full, capped = ok(runs["full_pass"]), ok(runs["all_batches"])
    assert [v[:2] for v in validations(full.stdout)] == [v[:2] for v in validations(capped.stdout)]
    assert "batches;" not in full.stdout


def test_val_max_batches_is_the_loss_of_those_batches(runs):
    result = ok(runs["subset"])
    assert "; on 3 of 10 batches;" in result.stdout
    checkpoint = load(runs.folder("subset") / "cv" / "lm_epoch0.200.pt")
    model = model_from_checkpoint(checkpoint, "subset")
    _, loader = load_training_data(SimpleNamespace(**checkpoint["opt"]), "data_dir", log=lambda _: None)
    torch.set_num_threads(1)  # as the run (conftest puts the count back)
    subset = evaluate_split(model, loader, "val", torch.device("cpu"), max_batches=3)
    assert subset == pytest.approx(checkpoint["val_loss"], abs=1e-6)
    assert evaluate_split(model, loader, "val", torch.device("cpu")) != pytest.approx(subset, abs=1e-3)


def test_a_costly_validation_is_noticed_with_the_option_that_fixes_it(runs):
    stdout = ok(runs["costly"]).stdout
    notices = [line for line in stdout.splitlines() if line.startswith("notice: a validation pass over 223 batches")]
    assert len(notices) == 1, stdout
    suggestion = int(re.search(r"-val_max_batches (\d+) validates on an evenly spread", notices[0]).group(1))
    assert 1 <= suggestion < 223
    assert "of training between validations (every 1 iterations)" in notices[0]


def test_the_cost_notice_needs_both_a_noticeable_pass_and_a_large_share():
    assert validation_cost_notice(0.5, 10, 1, 0.01, measured=True) is None  # under a second
    assert validation_cost_notice(10.0, 100, 1000, 0.1, measured=True) is None  # 10 s of 100 s: a tenth
    notice = validation_cost_notice(150.0, 20_008, 1000, 0.03, measured=False)
    assert notice is not None and "will take about 2m30s, 5.0x the 30s of training" in notice
    assert "-val_max_batches 1000 " in notice
