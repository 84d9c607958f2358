"""Watching a run learn (docs/behaviour.md §2.10): samples while training (-sample_every), which
never change the run, and the d2l book's clipping of the gradients' global norm (-grad_norm)."""
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from conftest import data_folder, run_script
from model import CharRNN
from runner import Runs, ok
from util.errors import LINE_BREAKS
from util.training import forward_backward

TEXT = "the cat sat on the mat. the dog ate the hat.\n" * 40  # 1800 characters, 14 distinct
RUN = ["-rnn_size", 32, "-num_layers", 1, "-batch_size", 4, "-seq_length", 10, "-max_epochs", 4,
       "-gpuid", -1, "-threads", 1, "-print_every", 1000, "-dropout", 0.3]
SAMPLES = ["-sample_every", 2, "-sample_prime", "the,dog", "-sample_length", 30]
SAMPLE = re.compile(r"^sample at epoch (\d+\.\d\d): (.*)$", re.M)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    root = tmp_path_factory.mktemp("watching")
    data = data_folder(root / "data", TEXT)
    with Runs(workers=3, root=root) as r:
        r.start("plain", "train.py", "-data_dir", data, *RUN)
        r.start("samples", "train.py", "-data_dir", data, *RUN, *SAMPLES)
        r.start("greedy", "train.py", "-data_dir", data, *RUN, *SAMPLES, "-sample_temperature", 0)
        r.start("drawn_first", "train.py", "-data_dir", data, *RUN, "-sample_every", 1, "-sample_length", 20)
        r.start("norm", "train.py", "-data_dir", data, *RUN, "-grad_norm", 0.5)
        random_run = ["-data_dir", data, *RUN, "-print_every", 1, "-minibatch", "random", "-eval_val_every", 7]
        r.start("random", "train.py", *random_run)
        r.start("random_half", "train.py", *random_run[:-2], "-eval_val_every", 7, "-max_epochs", 2)
        r.start("random_resumed", "train.py", "-resume", r.folder("random_half") / "cv" / "lm_epoch2.pt",
                "-max_epochs", 4, after=("random_half",), cwd=r.folder("random_half"))
        yield r


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def test_samples_do_not_change_the_run(runs):
    plain, samples = ok(runs["plain"]), ok(runs["samples"])
    for name in ("lm_epoch2.pt", "lm_epoch4.pt"):
        a, b = load(runs.folder("plain") / "cv" / name), load(runs.folder("samples") / "cv" / name)
        for key, weight in a["state_dict"].items():
            assert torch.equal(weight, b["state_dict"][key]), key
        assert torch.equal(a["resume"]["rng"], b["resume"]["rng"])  # the run's random numbers, untouched
    assert [line for line in plain.stdout.splitlines() if "epoch" in line and "elapsed" not in line] == \
        [line for line in samples.stdout.splitlines() if "epoch" in line and "elapsed" not in line
         and not line.startswith("sample at")]


def test_the_run_keeps_a_loss_plot(runs):
    stdout = ok(runs["plain"]).stdout
    assert stdout.count("loss plot: cv/lm_loss.png (redrawn at every validation)") == 1
    png = (runs.folder("plain") / "cv" / "lm_loss.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000
    from matplotlib.image import imread
    pixels = imread(str(runs.folder("plain") / "cv" / "lm_loss.png"))
    assert pixels.shape[:2] == (600, 1000) and len({tuple(p) for p in pixels.reshape(-1, pixels.shape[2])}) > 50


def test_samples_come_at_every_nth_validation_for_each_prefix(runs):
    found = SAMPLE.findall(ok(runs["samples"]).stdout)
    assert [epoch for epoch, _ in found] == ["2.00", "2.00", "4.00", "4.00"]
    assert [text[:3] for _, text in found] == ["the", "dog", "the", "dog"]
    assert all(len(text.replace("\\n", "\n")) == 3 + 30 for _, text in found)


def test_a_greedy_sample_is_what_sample_py_prints_for_that_checkpoint(runs):
    found = SAMPLE.findall(ok(runs["greedy"]).stdout)
    checkpoint = runs.folder("greedy") / "cv" / "lm_epoch4.pt"
    for prefix, (_, text) in zip(["the", "dog"], found[2:], strict=True):
        sampled = ok(run_script("sample.py", checkpoint, "-sample", 0, "-primetext", prefix, "-length", 30,
                                "-gpuid", -1, "-verbose", 0))
        assert sampled.stdout[:-1].translate(LINE_BREAKS) == text


def test_without_a_prefix_the_first_character_is_drawn(runs):
    found = SAMPLE.findall(ok(runs["drawn_first"]).stdout)
    assert len(found) == 4 and all(len(text.replace("\\n", "\n")) == 20 for _, text in found)
    assert len({text for _, text in found}) == 4


# ---- -minibatch random ------------------------------------------------------------------------------

def progress_losses(stdout: str) -> dict[int, str]:
    found = re.findall(r"^(\d+)/\d+ \(epoch [\d.]+\), train_loss = ([\d.]+),", stdout, re.M)
    return {int(i): loss for i, loss in found}


def test_random_minibatches_train_differently_and_resume_exactly(runs):
    whole, half, resumed = ok(runs["random"]), ok(runs["random_half"]), ok(runs["random_resumed"])
    one_go = progress_losses(whole.stdout)
    assert len(one_go) == 4 * 41
    assert {**progress_losses(half.stdout), **progress_losses(resumed.stdout)} == one_go
    end_whole = load(runs.folder("random") / "cv" / "lm_epoch4.pt")
    end_resumed = load(runs.folder("random_half") / "cv" / "lm_epoch4.pt")
    for key, weight in end_whole["state_dict"].items():
        assert torch.equal(weight, end_resumed["state_dict"][key]), key
    # the random scheme's position counts every batch handed out (41 an epoch here, the consecutive 42)
    assert end_whole["opt"]["minibatch"] == "random" and end_whole["resume"]["loader_position"] == 4 * 41
    consecutive = load(runs.folder("plain") / "cv" / "lm_epoch4.pt")
    assert not torch.equal(consecutive["state_dict"]["decoder.weight"], end_whole["state_dict"]["decoder.weight"])


# ---- -grad_norm ---------------------------------------------------------------------------------

def gradients(model: CharRNN, **clip: float) -> list[torch.Tensor]:
    torch.manual_seed(5)
    x, y = torch.randint(0, 11, (3, 7)), torch.randint(0, 11, (3, 7))
    forward_backward(model, x, y, model.zero_state(3), **clip)  # type: ignore[arg-type]
    return [p.grad.clone() for p in model.parameters()]


def test_grad_norm_scales_all_gradients_as_clip_grad_norm_does():
    torch.manual_seed(0)
    model = CharRNN("lstm", 11, 8, 2)
    model.initialize()
    raw = gradients(model, grad_clip=1e9)
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in raw]))
    assert total > 0.5
    clipped = gradients(model, grad_clip=1e-9, grad_norm=0.5)  # the clamp is not applied with -grad_norm
    expected = [g * (0.5 / (total + 1e-6)) for g in raw]  # clip_grad_norm_'s arithmetic, as in d2l
    for got, want in zip(clipped, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
    after = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in clipped]))
    assert after == pytest.approx(0.5, rel=1e-5)
    # a bound above the norm changes nothing
    for got, want in zip(gradients(model, grad_clip=1e-9, grad_norm=1e6), raw, strict=True):
        assert torch.equal(got, want)


def test_a_run_with_grad_norm_trains_and_records_it(runs):
    result = ok(runs["norm"])
    end = load(runs.folder("norm") / "cv" / "lm_epoch4.pt")
    assert end["opt"]["grad_norm"] == 0.5
    plain = load(runs.folder("plain") / "cv" / "lm_epoch4.pt")
    assert not torch.equal(end["state_dict"]["decoder.weight"], plain["state_dict"]["decoder.weight"])
    assert "validation loss at epoch 4.00" in result.stdout


# ---- -init_from keeps the checkpoint's dropout ------------------------------------------------------

def test_init_from_keeps_the_checkpoints_dropout_unless_given(runs, tmp_path):
    ok(runs["plain"])
    start = runs.folder("plain") / "cv" / "lm_epoch2.pt"  # trained with -dropout 0.3
    data = data_folder(tmp_path / "data", TEXT)
    short = ["-data_dir", data, "-batch_size", 4, "-seq_length", 10, "-max_epochs", 0.1, "-gpuid", -1,
             "-threads", 1, "-init_from", start]
    kept = ok(run_script("train.py", *short, cwd=tmp_path))
    assert "replaces the checkpoint's" not in kept.stdout
    assert load(tmp_path / "cv" / "lm_epoch0.10.pt")["model"]["dropout"] == 0.3
    given = ok(run_script("train.py", *short, "-dropout", 0, "-checkpoint_dir", "cv0", cwd=tmp_path))
    assert "-dropout 0 replaces the checkpoint's 0.3" in given.stdout
    assert load(tmp_path / "cv0" / "lm_epoch0.10.pt")["model"]["dropout"] == 0.0
