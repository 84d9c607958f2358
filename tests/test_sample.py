"""sample.py as a user runs it (docs/behaviour.md §2.6), plus in-process checks of the distribution
it draws from, its greedy path, its memory use, and the single-step path it relies on
(docs/behaviour.md §3).

Each sample.py run is a subprocess that spends a second or two importing torch, so the module
fixture `runs` starts all of them at once on a small thread pool as soon as the checkpoints are
built, and each test waits for the runs it checks. Running a single test still starts them all.
"""
import io
import itertools
import math
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, TINY_TEXT, assert_user_error
from model import CharRNN
from model.char_rnn import Stepper, stack_layers
from runner import Runs, ok
from util import generate
from util.checkpoint import FORMAT, load_checkpoint, model_from_checkpoint, save_checkpoint
from zygote import forking, run_forked

import sample

ASCII_TOKENS = sorted(set(TINY_TEXT))  # "\n" first: the argmax start without a primetext
CJK_TEXT = "第一回甄士隐梦幻识通灵贾雨村风尘怀闺秀\n"
CJK_TOKENS = sorted(set(CJK_TEXT))
BYTE_TOKENS = [chr(b) for b in range(256)]
PRIME = "Speak"
NO_GPU_NOTICE = "notice: no GPU found"


# ---- checkpoints, built in-process -----------------------------------------------------------------

def checkpoint_dict(model: CharRNN, tokens: list[str], encoding: str = "utf-8",
                    optimizer: torch.optim.Optimizer | None = None) -> dict:
    """The layout train.py's save() writes (weights on the CPU), resume section included."""
    return {
        "format": FORMAT, "model": model.shape(), "state_dict": model.state_dict(),
        "vocab": {"tokens": list(tokens), "encoding": encoding},
        "opt": {"model": model.model_type, "rnn_size": model.rnn_size, "num_layers": model.num_layers,
                "seq_length": 50, "batch_size": 1, "learning_rate": 0.05},
        "iteration": 1, "epoch": 1.0, "train_losses": [3.0], "val_losses": [], "val_loss": None,
        "resume": {"optimizer": optimizer.state_dict() if optimizer else {}, "learning_rate": 0.05,
                   "loader_position": 0, "hidden": list(model.zero_state(1)), "rng": torch.get_rng_state(),
                   "cuda_rng": None, "loss0": 3.0, "seconds": 1.0},
    }


def build_model(model_type: str, tokens: list[str], rnn_size: int, num_layers: int, seed: int = 0) -> CharRNN:
    torch.manual_seed(seed)
    model = CharRNN(model_type, len(tokens), rnn_size, num_layers)
    model.initialize()
    return model


def trained_ascii_checkpoint() -> dict:
    """A 2 x 32 LSTM trained a little on TINY_TEXT: its distributions are far from flat."""
    model = build_model("lstm", ASCII_TOKENS, 32, 2)
    ids = torch.tensor([ASCII_TOKENS.index(c) for c in TINY_TEXT])
    x, y = ids[None, :-1], ids[None, 1:]
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(40):
        logits, _ = model(x, model.zero_state(1))
        loss = F.cross_entropy(logits[0], y[0])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return checkpoint_dict(model, ASCII_TOKENS, optimizer=optimizer)


def byte_checkpoint() -> dict:
    """A byte-level RNN that favours bytes >= 0x80, so its output is almost surely invalid UTF-8."""
    model = build_model("rnn", BYTE_TOKENS, 16, 1)
    with torch.no_grad():
        model.decoder.bias[128:] += 3.0
    return checkpoint_dict(model, BYTE_TOKENS, encoding="bytes")


def save_as_if_on_gpu(path: Path, checkpoint: dict) -> None:
    """Write `checkpoint` with every storage tagged 'cuda:0', as torch.save tags tensors that live
    on a GPU. Without CUDA we cannot make real GPU tensors, but the tag is the only thing that
    differs in the file: torch.save asks torch.serialization.location_tag(storage) for it, so we
    swap that function for the duration of the save. Loading such a file without map_location on
    a machine with no CUDA fails (checked in the test), which shows the simulation is faithful."""
    with mock.patch("torch.serialization.location_tag", lambda storage: "cuda:0"):
        torch.save(checkpoint, path)


# ---- running sample.py -----------------------------------------------------------------------------

def run_sample(*args, cwd: Path = REPO, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """`python sample.py *args` with stdout kept as raw bytes (conftest's run_script decodes it,
    which would hide what these tests check: exact bytes, invalid UTF-8 of byte-level models);
    stderr is decoded; `stdin` given on standard input. Forked from a zygote, as run_script's runs are."""
    if forking():
        return run_forked("sample.py", list(args), cwd, 180, stdin, binary=True)
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    result = subprocess.run([sys.executable, str(REPO / "sample.py"), *map(str, args)], cwd=str(cwd), input=stdin,
                            capture_output=True, timeout=180, env=env)
    result.stderr = result.stderr.decode("utf-8", errors="replace")
    return result


def run_in_process(argv: list[str], monkeypatch) -> bytes:
    """sample.main(argv) in this process; returns what it wrote to stdout."""
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", stdout)
    sample.main([str(a) for a in argv])
    return stdout.buffer.getvalue()


def entropy(p: torch.Tensor) -> float:
    p = p.double()
    return -(p * torch.where(p > 0, p.log(), 0.0)).sum().item()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """In-process work here is tiny; PyTorch's worker threads only slow it down on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sample")
    paths = {name: folder / f"{name}.pt" for name in ("ascii", "cjk", "bytes", "gpu", "nan")}
    ascii_checkpoint = trained_ascii_checkpoint()
    save_checkpoint(str(paths["ascii"]), ascii_checkpoint)
    save_checkpoint(str(paths["cjk"]), checkpoint_dict(build_model("gru", CJK_TOKENS, 16, 2), CJK_TOKENS))
    save_checkpoint(str(paths["bytes"]), byte_checkpoint())
    save_as_if_on_gpu(paths["gpu"], ascii_checkpoint)
    broken = checkpoint_dict(build_model("lstm", ASCII_TOKENS, 8, 1), ASCII_TOKENS)
    broken["state_dict"]["layers.0.h2h.weight"][2, 3] = math.nan
    save_checkpoint(str(paths["nan"]), broken)

    data = paths["ascii"].read_bytes()
    paths["truncated"] = folder / "truncated.pt"
    paths["truncated"].write_bytes(data[:len(data) // 2])
    paths["text"] = folder / "notes.pt"
    paths["text"].write_text("these are my notes, not a checkpoint\n", encoding="utf-8")
    paths["prime_ascii"] = folder / "prime.txt"
    paths["prime_ascii"].write_bytes(PRIME.encode())
    paths["prime_cjk"] = folder / "prime_cjk.txt"
    paths["prime_cjk"].write_bytes("甄士隐\n贾雨村".encode())
    paths["missing"] = folder / "no_such_file.pt"
    return paths


def cases(f: dict[str, Path]) -> dict[str, tuple]:
    """Every sample.py run the tests below look at, by name."""
    ascii_, cpu, quiet = f["ascii"], ("-gpuid", "-1"), ("-verbose", "0")
    return {
        "seed1": (ascii_, *cpu, *quiet, "-seed", 1, "-primetext", PRIME, "-length", 200),
        "seed1_again": (ascii_, *cpu, *quiet, "-seed", 1, "-primetext", PRIME, "-length", 200),
        "seed1_primefile": (ascii_, *cpu, *quiet, "-seed", 1, "-primefile", f["prime_ascii"], "-length", 200),
        "seed2_verbose": (ascii_, *cpu, "-seed", 2, "-primetext", PRIME, "-length", 200),
        "argmax": (ascii_, *cpu, *quiet, "-sample", 0, "-length", 100),
        "argmax_prime": (ascii_, *cpu, *quiet, "-sample", 0, "-primetext", PRIME, "-length", 100),
        "cjk": (f["cjk"], *cpu, *quiet, "-primefile", f["prime_cjk"], "-length", 60),
        "bytes": (f["bytes"], *cpu, *quiet, "-primetext", "é", "-length", 300),
        "gpu_saved": (f["gpu"], *cpu, *quiet, "-sample", 0, "-primetext", PRIME, "-length", 100),
        "gpuid0": (ascii_, "-primetext", PRIME, "-length", 50),
        "skip_unk": (ascii_, *cpu, *quiet, "-primetext", "Fixst Qu", "-skip_unk", 1, "-length", 20),
        # bad input
        "missing": (f["missing"], *cpu),
        "text_file": (f["text"], *cpu),
        "truncated": (f["truncated"], *cpu),
        "nan": (f["nan"], *cpu),
        "temperature0": (ascii_, *cpu, "-temperature", 0),
        "temperature-1": (ascii_, *cpu, "-temperature", -1),
        "length-1": (ascii_, *cpu, "-length", -1),
        "unknown": (ascii_, *cpu, "-primetext", "Fixst Qu"),
        "no_primefile": (ascii_, *cpu, "-primefile", f["missing"].with_suffix(".txt")),
    }


@pytest.fixture(scope="module")
def runs(files: dict[str, Path]) -> Iterator[Runs]:
    with Runs(workers=3) as r:
        for name, args in cases(files).items():
            r.submit(name, run_sample, *args)
        r.submit("cold", cold_run, files["ascii"])
        yield r


def assert_error_line(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """conftest's assert_user_error, on a copy of `result` whose stdout is decoded too."""
    text = subprocess.CompletedProcess(result.args, result.returncode,
                                       result.stdout.decode("utf-8", errors="replace"), result.stderr)
    return assert_user_error(text, *fragments)


# ---- the greedy reference ----------------------------------------------------------------------------

def greedy_reference(path: Path, prime: str, length: int) -> tuple[str, float]:
    """Argmax decoding with the model's plain per-step graph (forward_steps), following the rules of
    docs/behaviour.md §2.6: the primetext primes the state; without one, every logit is 0 and the
    argmax is the first vocabulary entry. Returns the text after the primetext and the smallest gap between the
    best and second-best logit over the decisions taken after a primetext."""
    checkpoint = load_checkpoint(str(path))
    tokens = checkpoint["vocab"]["tokens"]
    model = model_from_checkpoint(checkpoint, str(path)).eval()
    with torch.no_grad():
        state = model.zero_state(1)
        logits = torch.zeros(1, len(tokens))
        for character in prime:
            logits, state = model.forward_steps(torch.tensor([[tokens.index(character)]]), state)
            logits = logits[:, 0]
        text, gap = [], math.inf
        for position in range(length):
            best = logits[0].topk(2).values
            if prime or position > 0:
                gap = min(gap, (best[0] - best[1]).item())
            token = int(logits[0].argmax())
            text.append(tokens[token])
            logits, state = model.forward_steps(torch.tensor([[token]]), state)
            logits = logits[:, 0]
    return "".join(text), gap


def cold_run(path: Path) -> subprocess.CompletedProcess:
    """sample.py with sampling on at a temperature so low that nothing but the argmax can be drawn:
    well under the smallest logit gap on the greedy path, so every other character has probability
    below exp(-40) at each step."""
    _, gap = greedy_reference(path, PRIME, 100)
    temperature = gap / 40
    result = run_sample(path, "-gpuid", "-1", "-verbose", "0", "-seed", 7, "-temperature", repr(temperature),
                        "-primetext", PRIME, "-length", 100)
    result.temperature = temperature
    return result


# ---- determinism and output layout -------------------------------------------------------------------

def test_same_seed_same_text_different_seed_different_text(runs):
    first, again = ok(runs["seed1"]).stdout, ok(runs["seed1_again"]).stdout
    other = ok(runs["seed2_verbose"]).stdout
    assert first == again
    assert first != other


def test_stdout_holds_exactly_primetext_generated_characters_and_newline(runs):
    for name in ("seed1", "seed2_verbose"):
        result = ok(runs[name])
        text = result.stdout.decode("utf-8")
        assert text.startswith(PRIME) and text.endswith("\n")
        assert len(text) == len(PRIME) + 200 + 1  # -length counts generated characters only
        assert set(text[len(PRIME):-1]) <= set(ASCII_TOKENS)
    assert ok(runs["seed1"]).stderr == ""  # -verbose 0, -gpuid -1: nothing to say
    diagnostics = ok(runs["seed2_verbose"]).stderr
    assert "loaded" in diagnostics and "lstm" in diagnostics  # diagnostics go to stderr, not stdout


def test_zero_length_without_primetext_prints_only_the_newline(files, monkeypatch):
    assert run_in_process([files["ascii"], "-gpuid", -1, "-verbose", 0, "-length", 0], monkeypatch) == b"\n"


def test_primefile_is_the_same_as_primetext(runs):
    assert ok(runs["seed1_primefile"]).stdout == ok(runs["seed1"]).stdout


# ---- argmax and temperature --------------------------------------------------------------------------

def test_argmax_without_primetext_starts_from_the_first_vocabulary_entry(runs, files):
    expected, _ = greedy_reference(files["ascii"], "", 100)
    assert expected[0] == ASCII_TOKENS[0] == "\n"
    assert ok(runs["argmax"]).stdout.decode("utf-8") == expected + "\n"


def test_argmax_with_primetext_matches_the_per_step_graph(runs, files):
    expected, gap = greedy_reference(files["ascii"], PRIME, 100)
    assert gap > 1e-4, "the reference decode has a near tie; the comparison would hinge on rounding"
    assert ok(runs["argmax_prime"]).stdout.decode("utf-8") == PRIME + expected + "\n"
    assert len(set(expected)) > 3, f"a degenerate model makes this test weak: {expected!r}"


def test_very_low_temperature_samples_the_argmax_text(runs, files):
    expected, _ = greedy_reference(files["ascii"], PRIME, 100)
    result = ok(runs["cold"])
    assert result.temperature < 1
    assert result.stdout.decode("utf-8") == PRIME + expected + "\n"
    warm = ok(runs["seed1"]).stdout.decode("utf-8")  # while at temperature 1 it does not
    assert warm[:len(PRIME) + 100] != PRIME + expected


def test_temperature_reshapes_the_distribution_sample_draws_from(files, monkeypatch):
    """Capture the probabilities sample.py draws the first character after the primetext from, at
    several temperatures: they are softmax(log_softmax(logits) / T) (docs/behaviour.md §2.6), their
    entropy grows with T, T -> 0 puts all the mass on the argmax, large T is near uniform."""
    drawn = []
    real_filtered = generate.filtered_probabilities

    def recording_filtered(logits, sampling):
        probabilities = real_filtered(logits, sampling)
        drawn.append(probabilities.detach().clone())
        return probabilities

    monkeypatch.setattr(generate, "filtered_probabilities", recording_filtered)
    temperatures = [1e-5, 0.01, 0.1, 0.5, 1.0, 2.0, 10.0, 1e4]
    for temperature in temperatures:
        run_in_process([files["ascii"], "-gpuid", -1, "-verbose", 0, "-primetext", PRIME, "-length", 1,
                        "-temperature", repr(temperature)], monkeypatch)
    assert len(drawn) == len(temperatures)

    checkpoint = load_checkpoint(str(files["ascii"]))
    model = model_from_checkpoint(checkpoint, str(files["ascii"])).eval()
    with torch.no_grad():
        prime = torch.tensor([[ASCII_TOKENS.index(c) for c in PRIME]])
        logits, _ = model.forward_steps(prime, model.zero_state(1))
        log_p = F.log_softmax(logits[0, -1].double(), dim=-1)
    vocab_size = len(ASCII_TOKENS)
    for temperature, p in zip(temperatures, drawn, strict=True):
        assert p.shape == (1, vocab_size)
        expected = F.softmax(log_p / temperature, dim=-1)
        assert torch.allclose(p[0].double(), expected, atol=1e-5), temperature
    entropies = [entropy(p) for p in drawn]
    assert all(a < b for a, b in itertools.pairwise(entropies)), entropies
    argmax = int(log_p.argmax())
    assert drawn[0][0, argmax] > 0.999 and entropies[0] < 0.01
    assert (drawn[-1][0] - 1 / vocab_size).abs().max() < 1e-3
    assert entropies[-1] == pytest.approx(math.log(vocab_size), abs=1e-3)


# ---- encodings ------------------------------------------------------------------------------------

def test_cjk_model_writes_valid_utf8_of_the_right_length_after_a_utf8_primefile(runs):
    text = ok(runs["cjk"]).stdout.decode("utf-8")  # strict: raises on invalid UTF-8
    prime = "甄士隐\n贾雨村"
    assert text.startswith(prime) and text.endswith("\n")
    assert len(text) == len(prime) + 60 + 1
    assert set(text[len(prime):-1]) <= set(CJK_TOKENS)


def test_byte_model_writes_raw_bytes(runs):
    data = ok(runs["bytes"]).stdout
    prime = "é".encode()  # a byte model's primetext is the bytes of its UTF-8 encoding
    assert data.startswith(prime) and data.endswith(b"\n")
    assert len(data) == len(prime) + 300 + 1  # one byte per token: no re-encoding of chr(b)
    assert len(data.decode("latin-1")) == len(prime) + 300 + 1
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32", "utf-8-sig"])
def test_output_in_an_encoding_with_a_byte_order_mark_is_one_stream(tmp_path, monkeypatch, encoding):
    """Written character by character, the output still has one byte-order mark, at its start, and
    decodes as a whole to primetext + generated text + newline."""
    path = tmp_path / "ck.pt"
    save_checkpoint(str(path), checkpoint_dict(build_model("lstm", ASCII_TOKENS, 8, 1), ASCII_TOKENS, encoding))
    data = run_in_process([path, "-gpuid", "-1", "-verbose", "0", "-primetext", PRIME, "-length", 40], monkeypatch)
    text = data.decode(encoding)
    assert "\ufeff" not in text and text.startswith(PRIME) and text.endswith("\n")
    assert len(text) == len(PRIME) + 40 + 1
    assert len(data) == len(text.encode(encoding))


def test_byte_model_takes_the_primetext_bytes_as_given(tmp_path, monkeypatch):
    """The command line's bytes, even when they are not UTF-8 (Python hands them over as lone
    surrogates: 0xE9 becomes U+DCE9)."""
    path = tmp_path / "bytes.pt"
    save_checkpoint(str(path), byte_checkpoint())
    data = run_in_process([path, "-gpuid", "-1", "-verbose", "0", "-primetext", "ab\udce9", "-length", 5],
                          monkeypatch)
    assert data.startswith(b"ab\xe9") and len(data) == 3 + 5 + 1


def test_primefile_with_a_utf8_byte_order_mark(tmp_path, monkeypatch, files):
    """A primefile saved with a BOM (as Windows Notepad does) primes with its text: preprocess.py
    drops the BOM too, so it is in no vocabulary."""
    prime = tmp_path / "prime.txt"
    prime.write_bytes(b"\xef\xbb\xbf" + PRIME.encode())
    data = run_in_process([files["ascii"], "-gpuid", "-1", "-verbose", "0", "-sample", "0", "-primefile", prime,
                           "-length", 30], monkeypatch)
    plain = run_in_process([files["ascii"], "-gpuid", "-1", "-verbose", "0", "-sample", "0", "-primetext", PRIME,
                            "-length", 30], monkeypatch)
    assert data == plain and data.startswith(PRIME.encode())


# ---- devices ----------------------------------------------------------------------------------------

def test_checkpoint_saved_on_a_gpu_loads_on_the_cpu(runs, files):
    if not torch.cuda.is_available():  # the file really asks for CUDA when loaded naively
        with pytest.raises((RuntimeError, pickle.UnpicklingError), match="CUDA"):  # torch 2.4: the latter
            torch.load(files["gpu"], weights_only=True)
    assert ok(runs["gpu_saved"]).stdout == ok(runs["argmax_prime"]).stdout


def test_gpuid_0_without_a_gpu_falls_back_to_the_cpu_with_a_notice(runs):
    result = ok(runs["gpuid0"])
    if not (torch.cuda.is_available() or torch.backends.mps.is_available()):
        assert NO_GPU_NOTICE in result.stderr
        assert NO_GPU_NOTICE.encode() not in result.stdout
    text = result.stdout.decode("utf-8")
    assert text.startswith(PRIME) and len(text) == len(PRIME) + 50 + 1


# ---- bad input ----------------------------------------------------------------------------------------

def test_missing_checkpoint(runs, files):
    line = assert_error_line(runs["missing"])
    path = files["missing"]
    assert line == f"Error: File {path} does not exist. Are you sure you didn't forget to prepend cv/ ?"


@pytest.mark.parametrize("name, fragments", [
    ("text_file", ["notes.pt"]),
    ("truncated", ["truncated.pt"]),
    ("nan", ["nan.pt", "NaN"]),
    ("temperature0", ["-temperature", "greater than 0"]),
    ("temperature-1", ["-temperature", "-1"]),
    ("length-1", ["-length", "-1"]),
    ("unknown", ["'x'", "'Q'", "-skip_unk"]),
    ("no_primefile", ["-primefile", "no_such_file.txt"]),
])
def test_bad_input_is_one_error_line(runs, name, fragments):
    result = runs[name]
    assert_error_line(result, *fragments)
    assert result.stdout == b""


def test_skip_unk_drops_unknown_primetext_characters_with_a_warning(runs):
    result = ok(runs["skip_unk"])
    assert "warning" in result.stderr and "'x'" in result.stderr and "'Q'" in result.stderr
    text = result.stdout.decode("utf-8")
    assert text.startswith("Fist u") and len(text) == len("Fist u") + 20 + 1


# ---- memory and the single-step path ---------------------------------------------------------------

def test_sampling_keeps_no_autograd_graph(files, monkeypatch):
    """Memory must not grow with -length: every tensor the loop carries from one character to the
    next (logits, state) must be free of autograd history, which would otherwise chain all steps."""
    seen = []
    real_step = Stepper.step

    def watching_step(self, tokens, state):
        logits, new_state = real_step(self, tokens, state)
        parts = [logits, *(part for layer in new_state for part in layer)]
        seen.append(all(t.grad_fn is None and not t.requires_grad for t in parts))
        return logits, new_state

    monkeypatch.setattr(Stepper, "step", watching_step)
    assert torch.is_grad_enabled()  # the test process has autograd on; sample.py must turn it off
    out = run_in_process([files["ascii"], "-gpuid", -1, "-verbose", 0, "-primetext", PRIME,
                          "-length", 2000], monkeypatch)
    assert len(out.decode("utf-8")) == len(PRIME) + 2000 + 1
    assert len(seen) == len(PRIME) + 2000 - 1 and all(seen)  # no step after the last character


@pytest.mark.parametrize("model_type", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("training", [False, True])
def test_step_equals_the_per_step_graph(model_type, training):
    """CharRNN.step gives exactly forward_steps' numbers, step after step; in training mode with
    dropout too (same masks from the same seed: dropout in the same places). In eval mode the
    Stepper, what sample.py runs, gives them too."""
    torch.manual_seed(3)
    model = CharRNN(model_type, len(ASCII_TOKENS), 24, 3, dropout=0.5 if training else 0.0).train(training)
    model.initialize()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(5)  # far from zero, so that any difference in the arithmetic would show
    tokens = torch.randint(len(ASCII_TOKENS), (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        fast = reference = model.zero_state(2)
        stepper, stepped = Stepper(model), Stepper(model).zero_state(2)
        for t in range(tokens.shape[1]):
            torch.manual_seed(t)
            fast_logits, fast = model.step(tokens[:, t], fast)
            torch.manual_seed(t)
            reference_logits, reference = model.forward_steps(tokens[:, t:t + 1], reference)
            torch.testing.assert_close(fast_logits, reference_logits[:, 0], rtol=0, atol=0)
            for a, b in zip(fast, reference, strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
            if not training:
                stepper_logits, stepped = stepper.step(tokens[:, t], stepped)
                torch.testing.assert_close(stepper_logits, fast_logits, rtol=0, atol=0)
                torch.testing.assert_close(stack_layers(stepped), fast, rtol=0, atol=0)
