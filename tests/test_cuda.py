"""CUDA against the CPU reference (issue 20): every cell (lstm, gru, rnn) and every path of
model/char_rnn.py's table, at vocabularies 65 and 2,583 (its two columns), in IEEE float32 (TF32 off,
as util.device.select_device sets up a CUDA device); the carried state; -precision bf16; generation
with 1 and 64 streams, also replayed as CUDA graphs; train.py, sample.py and -resume on -gpuid 0;
two processes on one GPU.

Written with unittest, not pytest's functions, so that bench/gpu_check.sh can run it with the
standard library alone on a GPU machine that has no pytest (from the repository root:
`python3 -m unittest discover -v -s tests -p test_cuda.py`); pytest runs it as well. Where
torch.cuda.is_available() is False every CUDA test is skipped with the reason (pytest -rs shows it).
ReferenceHarnessOnCpu runs the same checks with the CPU as the device under test, so that their
code is exercised on every machine.
"""
import contextlib
import copy
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import torch

from model import CharRNN
from model.char_rnn import KERNEL_ONE_HOT_LIMIT, Stepper
from util import generate
from util.device import bf16_capable, select_device, use_ieee_float32
from util.generate import Sampling, sample_steps, stream_generators
from util.training import forward_backward

REPO = Path(__file__).resolve().parent.parent
CUDA = torch.cuda.is_available()
NO_CUDA = ("no CUDA device (torch.cuda.is_available() is False): these checks run on a GPU machine, "
           "see bench/gpu_check.sh")
CPU = torch.device("cpu")
CELLS = ("lstm", "gru", "rnn")
VOCABS = (65, 2583)  # the path table's columns: up to KERNEL_ONE_HOT_LIMIT and above it
assert VOCABS[0] <= KERNEL_ONE_HOT_LIMIT < VOCABS[1]
SIZE, BATCH, LENGTH = 32, 5, 12
# float32 on both sides, sums taken in other orders; TF32 (10-bit mantissa) would miss by about 1e-3
RTOL, ATOL = 1e-5, 1e-5
GRAD_ATOL = 1e-5  # times the largest gradient of the tensor

Forward = Callable[[torch.Tensor, tuple[torch.Tensor, ...]], tuple[torch.Tensor, tuple[torch.Tensor, ...]]]


def random_model(cell: str, vocab: int, layers: int, dropout: float = 0.0) -> CharRNN:
    """Weights uniform in [-0.5, 0.5], large enough that every gate and nonlinearity matters."""
    torch.manual_seed(0)
    model = CharRNN(cell, vocab, SIZE, layers, dropout)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.5, 0.5)
    return model


def inputs(model: CharRNN, batch: int = BATCH) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Token ids (batch, LENGTH) using the first and the last column of the one-hot, and a random
    state (an LSTM's cell state larger than h), on the CPU."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randint(0, model.vocab_size, (batch, LENGTH), generator=generator)
    x[0, 0], x[-1, -1] = 0, model.vocab_size - 1
    parts = len(model.layers[0].state_names)
    state = tuple((torch.rand(model.num_layers, batch, SIZE, generator=generator) * 2 - 1) * (1 + 2 * k)
                  for k in range(parts))
    return x, state


def on(device: torch.device, tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(t.to(device) for t in tensors)


def training_pass(model: CharRNN, x: torch.Tensor, state: tuple[torch.Tensor, ...],
                  forward: Forward) -> dict[str, torch.Tensor]:
    """Logits, final state, and the gradients (of every weight and of the input state) of a fixed
    random projection of both, all brought to the CPU."""
    state = tuple(part.detach().clone().requires_grad_(True) for part in state)
    model.zero_grad(set_to_none=True)
    logits, new_state = forward(x, state)
    generator = torch.Generator().manual_seed(3)
    loss = (logits * torch.randn(logits.shape, generator=generator).to(logits.device)).sum()
    for part in new_state:
        loss = loss + (part * torch.randn(part.shape, generator=generator).to(part.device)).sum()
    loss.backward()
    found = {"logits": logits, **{f"state {k}": part for k, part in enumerate(new_state)}}
    found.update({f"d state {k}": part.grad for k, part in enumerate(state)})
    found.update({f"d {name}": p.grad for name, p in model.named_parameters()})
    return {name: value.detach().cpu() for name, value in found.items() if value is not None}


def assert_matches(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    assert actual.keys() == expected.keys(), (what, sorted(actual), sorted(expected))
    for name, want in expected.items():
        atol = GRAD_ATOL * max(want.abs().max().item(), 1e-30) if name.startswith("d ") else ATOL
        torch.testing.assert_close(actual[name], want, rtol=RTOL, atol=atol,
                                   msg=lambda m, name=name: f"{what}, {name}: {m}")


def check_training(device: torch.device, cell: str, vocab: int, layers: int) -> None:
    """The training path (train mode, no dropout) on `device` against forward_steps on the CPU:
    outputs, state and gradients; the state comes out contiguous (it is carried into cuDNN)."""
    model = random_model(cell, vocab, layers).train()
    x, state = inputs(model)
    expected = training_pass(model, x, state, model.forward_steps)
    moved = copy.deepcopy(model).to(device)
    actual = training_pass(moved, x.to(device), on(device, state), moved)
    assert_matches(actual, expected, f"{cell} V={vocab} {layers} layers, training on {device}")
    _, carried = moved(x.to(device), on(device, state))
    assert all(part.is_contiguous() for part in carried), "the carried state is strided"


def check_evaluation(device: torch.device, cell: str, vocab: int, layers: int, dropout: float) -> None:
    """Eval mode (validation; dropout is then the identity, so a model with dropout compares too)."""
    model = random_model(cell, vocab, layers, dropout).eval()
    x, state = inputs(model)
    moved = copy.deepcopy(model).to(device)
    with torch.no_grad():
        logits, new_state = model.forward_steps(x, state)
        got_logits, got_state = moved(x.to(device), on(device, state))
    expected = {"logits": logits, **{f"state {k}": p for k, p in enumerate(new_state)}}
    actual = {"logits": got_logits.cpu(), **{f"state {k}": p.cpu() for k, p in enumerate(got_state)}}
    assert_matches(actual, expected, f"{cell} V={vocab} {layers} layers dropout {dropout}, eval on {device}")


def check_steps(device: torch.device, cell: str, vocab: int, layers: int) -> None:
    """Sampling's one character at a time (CharRNN.step, Stepper) on `device` against forward_steps
    on the CPU, step by step."""
    model = random_model(cell, vocab, layers).eval()
    x, state = inputs(model)
    moved = copy.deepcopy(model).to(device)
    with torch.no_grad():
        logits, final = model.forward_steps(x, state)
        stepper, step_state = Stepper(moved), on(device, state)
        layered = [tuple(part[n].to(device) for part in state) for n in range(layers)]
        for t in range(LENGTH):
            token = x[:, t].to(device)
            step_logits, step_state = moved.step(token, step_state)
            stepper_logits, layered = stepper.step(token, layered)
            for name, got in (("step", step_logits), ("Stepper", stepper_logits)):
                torch.testing.assert_close(got.cpu(), logits[:, t], rtol=RTOL, atol=ATOL,
                                           msg=lambda m, name=name, t=t: f"{cell} V={vocab} {name} t={t}: {m}")
    for k, part in enumerate(final):
        torch.testing.assert_close(step_state[k].cpu(), part, rtol=RTOL, atol=ATOL)


def check_strided_state(device: torch.device, cell: str, vocab: int) -> None:
    """A process's rows of a batch (a strided view, as under torchrun) give what a contiguous copy
    gives: cuDNN itself takes no strided state."""
    model = random_model(cell, vocab, 2).to(device).train()
    x, state = inputs(model, 2 * BATCH)
    rows = tuple(part.to(device)[:, BATCH:] for part in state)
    assert not rows[0].is_contiguous()
    with torch.no_grad():
        strided = model(x[BATCH:].to(device), rows)
        copied = model(x[BATCH:].to(device), tuple(part.contiguous() for part in rows))
    assert torch.equal(strided[0], copied[0])
    for a, b in zip(strided[1], copied[1], strict=True):
        assert torch.equal(a, b) and a.is_contiguous()


def check_generation(device: torch.device, vocab: int, streams: int = 64) -> None:
    """util.generate.sample_steps on `device`: the argmax of 1 stream as on the CPU; `streams`
    streams drawn at once, valid, not all alike, the same again from the same seeds."""
    model = random_model("lstm", vocab, 2).eval()
    moved = copy.deepcopy(model).to(device)
    greedy = Sampling(sample=False)
    on_cpu = list(sample_steps(model, [1, 2], 100, greedy, stream_generators([0], CPU, 0)))
    assert list(sample_steps(moved, [1, 2], 100, greedy, stream_generators([0], device, 0))) == on_cpu
    seeds = list(range(100, 100 + streams))
    drawn = list(sample_steps(moved, [1, 2], 60, Sampling(0.8), stream_generators(seeds, device, 0)))
    assert all(len(step) == streams and all(0 <= t < vocab for t in step) for step in drawn)
    assert len({tuple(step[k] for step in drawn) for k in range(streams)}) > 1, "every stream drew the same"
    assert list(sample_steps(moved, [1, 2], 60, Sampling(0.8), stream_generators(seeds, device, 0))) == drawn


def check_stream_alone_and_among_many(device: torch.device, vocab: int, streams: int = 64) -> None:
    """A stream drawn among `streams` gives what it gives alone from the same seed (README: the
    first sample of -num_samples draws from the seed itself). util.generate.Noise draws a block of
    steps per stream at once, fewer steps per block for many streams at a large vocabulary; the
    CPU's generator gives the same numbers in any blocks, CUDA's (Philox) may depend on the shape."""
    model = random_model("lstm", vocab, 2).eval().to(device)
    seeds = list(range(100, 100 + streams))
    drawn = list(sample_steps(model, [1, 2], 60, Sampling(0.8), stream_generators(seeds, device, 0)))
    for k in sorted({0, streams // 2, streams - 1}):
        alone = list(sample_steps(model, [1, 2], 60, Sampling(0.8), stream_generators([seeds[k]], device, 0)))
        assert [step[k] for step in drawn] == [step[0] for step in alone], f"stream {k} of {streams}, V={vocab}"


def check_shorter_generation_starts_the_longer(device: torch.device, vocab: int) -> None:
    """A generation of 5, 30 or 60 characters is the start of one of 130 from the same seed: util.generate
    .Noise asks a stream's generator for blocks of one size whatever the length (fewer numbers, once, for
    a generation shorter than a block), and CUDA's first call gives its numbers whatever its size."""
    model = random_model("lstm", vocab, 2).eval().to(device)
    longest = [step[0] for step in sample_steps(model, [1, 2], 130, Sampling(0.8), stream_generators([7], device, 0))]
    for length in (5, 30, 60):
        drawn = [step[0] for step in sample_steps(model, [1, 2], length, Sampling(0.8),
                                                  stream_generators([7], device, 0))]
        assert drawn == longest[:length], f"{length} characters, V={vocab}"


@contextlib.contextmanager
def captures_counted() -> Iterator[list]:
    """A list that holds the replay of every capture util.generate makes meanwhile (one that raised
    is not counted: sample_steps then goes on without a graph, with the same characters)."""
    captured: list = []
    real_capture = generate.cuda_graph

    def counted(body: Callable[[], None]) -> Callable[[], None]:
        replay = real_capture(body)
        captured.append(replay)
        return replay

    with mock.patch.object(generate, "cuda_graph", counted):
        yield captured


GRAPH_SAMPLINGS = ((Sampling(0.8), 1, 100), (Sampling(0.7, top_k=5, top_p=0.9), 64, 70),
                   (Sampling(sample=False), 3, 50))


def check_graphed_generation(device: torch.device, cell: str, vocab: int) -> int:
    """sample_steps with graphs (util.generate.SamplingGraph on CUDA) gives the characters it gives
    without, for draws, filters and the argmax at 1, 64 and 3 streams, each longer than two windows.
    Returns how many captures succeeded (one per generation on CUDA, none on the CPU)."""
    model = random_model(cell, vocab, 2).eval().to(device)
    with captures_counted() as captured:
        for sampling, streams, length in GRAPH_SAMPLINGS:
            seeds = list(range(7, 7 + streams))
            eager, graphed = (list(sample_steps(model, [1, 2], length, sampling, stream_generators(seeds, device, 0),
                                                graphs=graphs)) for graphs in (False, True))
            assert graphed == eager, f"{cell} V={vocab} {sampling} x{streams}"
    return len(captured)


class ReferenceHarnessOnCpu(unittest.TestCase):
    """The checks with the CPU as the device under test (the CPU's fast paths against forward_steps;
    tests/test_model.py covers those in depth): keeps the CUDA checks' code working without a GPU."""

    def test_the_checks_run_on_the_cpu(self):
        for cell, vocab in (("lstm", 65), ("lstm", 2583), ("gru", 65), ("rnn", 65)):
            with self.subTest(cell=cell, vocab=vocab):
                check_training(CPU, cell, vocab, 2)
                check_evaluation(CPU, cell, vocab, 2, 0.5)
                check_steps(CPU, cell, vocab, 2)
        check_strided_state(CPU, "lstm", 65)
        check_generation(CPU, 65, streams=8)
        assert check_graphed_generation(CPU, "lstm", 65) == 0
        check_stream_alone_and_among_many(CPU, 2583, streams=8)
        check_shorter_generation_starts_the_longer(CPU, 2583)


@unittest.skipUnless(CUDA, NO_CUDA)
class PathsOnCuda(unittest.TestCase):
    """Every cell and path of the table on CUDA against the CPU reference, in IEEE float32."""

    device = torch.device("cuda")

    @classmethod
    def setUpClass(cls):
        use_ieee_float32()

    def test_training_paths_match_the_cpu_reference(self):
        for cell in CELLS:
            for vocab in VOCABS:
                for layers in (1, 2, 3):
                    with self.subTest(cell=cell, vocab=vocab, layers=layers):
                        check_training(self.device, cell, vocab, layers)

    def test_evaluation_with_and_without_dropout_matches_the_cpu_reference(self):
        for cell in CELLS:
            for vocab in VOCABS:
                for dropout in (0.0, 0.5):
                    with self.subTest(cell=cell, vocab=vocab, dropout=dropout):
                        check_evaluation(self.device, cell, vocab, 2, dropout)

    def test_sampling_steps_match_the_cpu_reference(self):
        for cell in CELLS:
            for vocab in VOCABS:
                with self.subTest(cell=cell, vocab=vocab):
                    check_steps(self.device, cell, vocab, 2)

    def test_a_strided_state_gives_what_a_contiguous_one_gives(self):
        for cell in CELLS:
            for vocab in VOCABS:
                with self.subTest(cell=cell, vocab=vocab):
                    check_strided_state(self.device, cell, vocab)

    def test_training_with_dropout_runs_and_draws_masks(self):
        for cell in CELLS:
            with self.subTest(cell=cell):
                model = random_model(cell, 65, 2, dropout=0.5).to(self.device).train()
                x, state = inputs(model)
                first, carried = model(x.to(self.device), on(self.device, state))
                second, _ = model(x.to(self.device), on(self.device, state))
                assert torch.isfinite(first).all() and not torch.equal(first, second)
                assert all(part.is_contiguous() for part in carried)

    def test_the_kernels_weights_are_one_cudnn_buffer_taken_without_a_copy(self):
        """CharRNN.share_cudnn_buffer: after .to(cuda) the weights of each kernel call (all layers;
        each layer alone for a model with dropout, kernel_per_layer) are views of one storage, kept
        through an optimizer step and a state_dict loaded into place, and cuDNN warns of no "not
        part of single contiguous chunk of memory" (its copy at every call), training or not."""
        for cell in ("lstm", "rnn"):
            for dropout in (0.0, 0.5):
                with self.subTest(cell=cell, dropout=dropout):
                    model = random_model(cell, 65, 3, dropout).to(self.device)
                    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3)
                    kernel_weights = type(model.layers[0]).kernel_weights
                    calls = [model.layers[n:n + 1] for n in range(3)] if dropout else [model.layers]
                    for _ in range(2):
                        storages = [{w.untyped_storage().data_ptr() for w in kernel_weights(layers)}
                                    for layers in calls]
                        assert all(len(one) == 1 for one in storages) and len(set.union(*storages)) == len(calls)
                        x, state = inputs(model)
                        with warnings.catch_warnings():
                            warnings.simplefilter("error")  # a warning fails the test
                            logits, _ = model.train()(x.to(self.device), on(self.device, state))
                            logits.sum().backward()
                            with torch.no_grad():
                                model.eval()(x.to(self.device), on(self.device, state))
                        optimizer.step()
                        model.load_state_dict(random_model(cell, 65, 3, dropout).state_dict())

    def test_generation_with_1_and_64_streams(self):
        for vocab in VOCABS:
            with self.subTest(vocab=vocab):
                check_generation(self.device, vocab)

    def test_sampling_replayed_as_cuda_graphs_gives_the_eager_characters(self):
        for cell in CELLS:
            for vocab in VOCABS:
                with self.subTest(cell=cell, vocab=vocab):
                    assert check_graphed_generation(self.device, cell, vocab) == len(GRAPH_SAMPLINGS)

    def test_generations_graphed_in_four_threads_at_once_are_those_made_alone(self):
        """serve.py gives each request a thread: their captures and replays overlap."""
        model = random_model("lstm", 65, 2).eval().to(self.device)

        def generated(seed: int) -> list[list[int]]:
            return list(sample_steps(model, [1], 300, Sampling(0.9), stream_generators([seed], self.device, 0),
                                     graphs=True))

        with captures_counted() as captured:
            alone = [generated(seed) for seed in range(4)]
            with ThreadPoolExecutor(4) as pool:
                assert list(pool.map(generated, range(4))) == alone
        assert len(captured) == 8

    def test_a_stream_draws_alike_alone_and_among_64(self):
        for vocab in VOCABS:
            with self.subTest(vocab=vocab):
                check_stream_alone_and_among_many(self.device, vocab)

    def test_a_shorter_generation_is_the_start_of_a_longer_one(self):
        for vocab in VOCABS:
            with self.subTest(vocab=vocab):
                check_shorter_generation_starts_the_longer(self.device, vocab)

    def test_select_device_sets_ieee_float32_and_bf16_follows_the_capability(self):
        torch.backends.cudnn.allow_tf32 = True  # PyTorch's default, which select_device must undo
        device = select_device(0, log=lambda _: None)
        assert device.type == "cuda" and not torch.backends.cudnn.allow_tf32
        assert not torch.backends.cuda.matmul.allow_tf32
        major, _ = torch.cuda.get_device_capability(device)
        assert bf16_capable(device) == (major >= 8)

    def test_bf16_autocast_follows_float32(self):
        if not bf16_capable(self.device):
            self.skipTest("this GPU has no bfloat16 arithmetic (compute capability below 8.0): bf16 runs in float32")
        for cell in CELLS:
            for vocab in VOCABS:
                with self.subTest(cell=cell, vocab=vocab):
                    model = random_model(cell, vocab, 2).to(self.device).train()
                    autocast_in_kernel: list[bool] = []
                    kernel = model.layers[0].kernel
                    if kernel is not None:  # float32 there: autocast would run cuDNN's RNN in float16
                        def spy(*args, seen=autocast_in_kernel, real=kernel, **options):
                            seen.append(torch.is_autocast_enabled("cuda"))
                            return real(*args, **options)

                        model.layers[0].kernel = spy
                    x, state = inputs(model)
                    x, y = x.to(self.device), x.roll(1, dims=1).to(self.device)
                    exact, _ = forward_backward(model, x, y, on(self.device, state), 5.0, "fp32")
                    loss, carried = forward_backward(model, x, y, on(self.device, state), 5.0, "bf16")
                    assert not any(autocast_in_kernel) and len(autocast_in_kernel) == (0 if kernel is None else 2)
                    assert abs(loss.item() / exact.item() - 1) < 2e-2, (loss.item(), exact.item())
                    assert all(part.dtype == torch.float32 and part.is_contiguous() for part in carried)
                    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ---- the scripts on -gpuid 0 -------------------------------------------------------------------------

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"  # 81 characters
SMALL = ["-rnn_size", "16", "-num_layers", "2", "-threads", "1", "-print_every", "1", "-eval_val_every", "1000"]
# 4 batches of 2 x 8: train 3, val 1; one epoch is 3 iterations
THREE = ["-data_dir", "three", "-batch_size", "2", "-seq_length", "8", "-train_frac", "0.75", "-val_frac", "0.25",
         "-max_epochs", "1", *SMALL]
# 30 batches of 4 x 8: train 28, val 2
LONGER = ["-data_dir", "longer", "-batch_size", "4", "-seq_length", "8", *SMALL]
PROGRESS = re.compile(r"^(\d+)/\d+ \(epoch [\d.]+\), train_loss = ([\d.]+),", re.M)


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """A script as a user runs it; cuBLAS set up to give the same numbers from run to run."""
    full_env = {**os.environ, "PYTHONIOENCODING": "utf-8", "CUBLAS_WORKSPACE_CONFIG": ":4096:8", **(env or {})}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, encoding="utf-8", errors="replace",
                          timeout=300, env=full_env)


def script(name: str, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run([sys.executable, str(REPO / name), *args], cwd, env)


def torchrun(processes: int, *args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                str(REPO / "train.py"), *args], cwd, env)


def losses(result: subprocess.CompletedProcess) -> dict[int, float]:
    return {int(i): float(loss) for i, loss in PROGRESS.findall(result.stdout)}


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def succeeded(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, (result.args, result.stdout[-3000:], result.stderr[-3000:])
    return result


@unittest.skipUnless(CUDA, NO_CUDA)
class ScriptsOnCuda(unittest.TestCase):
    """train.py, sample.py, -resume and torchrun on -gpuid 0, started together in setUpClass (each
    spends seconds starting torch and CUDA) and awaited by the tests that read them."""

    @classmethod
    def setUpClass(cls):
        from util.data import load_data_dir

        cls.folder = Path(tempfile.mkdtemp(prefix="test_cuda_"))
        for name, text in (("three", TEXT), ("longer", TEXT * 12)):
            (cls.folder / name).mkdir()
            (cls.folder / name / "input.txt").write_text(text, encoding="utf-8")
            load_data_dir(str(cls.folder / name), log=lambda _: None)  # once, before runs read it together
        one_gpu = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]}
        cls.pool = ThreadPoolExecutor(max_workers=12)
        here = cls.folder

        def train(*args: str, env: dict[str, str] | None = None) -> Future:
            return cls.pool.submit(script, "train.py", *args, cwd=here, env=env)

        def then(first: Future, *args: str, name: str = "train.py") -> Future:
            return cls.pool.submit(lambda: (first.result(), script(name, *args, cwd=here))[1])

        cls.runs = {"cpu3": train(*THREE, "-gpuid", "-1", "-checkpoint_dir", "cpu3"),
                    "gpu3": train(*THREE, "-gpuid", "0", "-checkpoint_dir", "gpu3"),
                    "full": train(*LONGER, "-max_epochs", "2", "-gpuid", "0", "-checkpoint_dir", "full"),
                    "half": train(*LONGER, "-max_epochs", "1", "-gpuid", "0", "-checkpoint_dir", "half"),
                    "full_dropout": train(*LONGER, "-max_epochs", "2", "-dropout", "0.3", "-gpuid", "0",
                                          "-checkpoint_dir", "full_dropout"),
                    "half_dropout": train(*LONGER, "-max_epochs", "1", "-dropout", "0.3", "-gpuid", "0",
                                          "-checkpoint_dir", "half_dropout"),
                    **{name: train(*LONGER, "-max_epochs", "2", "-dropout", "0.3", "-learning_rate_decay_after", "1",
                                   "-cuda_graphs", graphs, "-gpuid", "0", "-checkpoint_dir", name)
                       for name, graphs in (("graphed", "1"), ("eager", "0"))},
                    "two": cls.pool.submit(torchrun, 2, *LONGER, "-max_epochs", "1", "-gpuid", "0",
                                           "-checkpoint_dir", "two", cwd=here, env=one_gpu)}
        for dropout in ("", "_dropout"):
            cls.runs["resumed" + dropout] = then(cls.runs["half" + dropout], "-resume", f"half{dropout}/lm_epoch1.pt",
                                                 "-max_epochs", "2", "-checkpoint_dir", "resumed" + dropout)
        sampled = ["gpu3/lm_epoch1.pt", "-length", "200", "-verbose", "0"]
        for name, args in (("sample_gpu", [*sampled, "-sample", "0", "-gpuid", "0"]),
                           ("sample_cpu", [*sampled, "-sample", "0", "-gpuid", "-1"]),
                           ("sample_drawn", [*sampled, "-num_samples", "3", "-seed", "7", "-gpuid", "0"])):
            cls.runs[name] = then(cls.runs["gpu3"], *args, name="sample.py")

    @classmethod
    def tearDownClass(cls):
        cls.pool.shutdown(wait=True)
        shutil.rmtree(cls.folder, ignore_errors=True)

    def result(self, name: str) -> subprocess.CompletedProcess:
        return succeeded(self.runs[name].result())

    def test_three_iterations_on_the_gpu_match_the_cpu(self):
        gpu, cpu = self.result("gpu3"), self.result("cpu3")
        assert "no GPU found" not in gpu.stdout
        on_gpu, on_cpu = losses(gpu), losses(cpu)
        assert sorted(on_gpu) == sorted(on_cpu) == [1, 2, 3]
        for i, loss in on_cpu.items():
            assert abs(on_gpu[i] - loss) <= 1e-5 * loss, (i, on_gpu[i], loss)
        for name, weight in weights(self.folder / "cpu3" / "lm_epoch1.pt").items():
            torch.testing.assert_close(weights(self.folder / "gpu3" / "lm_epoch1.pt")[name], weight,
                                       rtol=1e-4, atol=1e-5)

    def test_sample_on_the_gpu(self):
        gpu, cpu = self.result("sample_gpu"), self.result("sample_cpu")
        assert gpu.stdout == cpu.stdout and len(gpu.stdout) >= 200  # the argmax, as on the CPU
        assert len(self.result("sample_drawn").stdout) >= 3 * 200  # three drawn samples

    def test_resume_on_the_gpu_is_exact_with_and_without_dropout(self):
        for dropout in ("", "_dropout"):  # with dropout: kernel_per_layer's masks come from torch's generator
            with self.subTest(dropout=bool(dropout)):
                full, resumed = self.result("full" + dropout), self.result("resumed" + dropout)
                epoch = max(losses(self.result("half" + dropout)))
                after = {i: loss for i, loss in losses(full).items() if i > epoch}
                assert len(after) == epoch and losses(resumed) == after
                expected = torch.load(self.folder / ("full" + dropout) / "lm_epoch2.pt", weights_only=True)
                actual = torch.load(self.folder / ("resumed" + dropout) / "lm_epoch2.pt", weights_only=True)
                for name, weight in expected["state_dict"].items():
                    assert torch.equal(actual["state_dict"][name], weight), name
                for a, b in zip(actual["resume"]["hidden"], expected["resume"]["hidden"], strict=True):
                    assert torch.equal(a, b)

    def test_steps_replayed_as_cuda_graphs_are_the_eager_steps_bit_for_bit(self):
        """With dropout and a learning-rate decay at epoch 1 (the graph captured again after it)."""
        graphed, eager = self.result("graphed"), self.result("eager")
        assert "could not be captured" not in graphed.stdout
        assert losses(graphed) == losses(eager) and len(losses(eager)) > 10
        assert "decayed learning rate" in eager.stdout
        expected = torch.load(self.folder / "eager" / "lm_epoch2.pt", weights_only=True)
        actual = torch.load(self.folder / "graphed" / "lm_epoch2.pt", weights_only=True)
        for name, weight in expected["state_dict"].items():
            assert torch.equal(actual["state_dict"][name], weight), name
        assert actual["resume"]["rng"].equal(expected["resume"]["rng"])
        assert actual["resume"]["cuda_rng"].equal(expected["resume"]["cuda_rng"])

    def test_two_processes_on_one_gpu_match_one(self):
        two, one = self.result("two"), self.result("half")
        assert "data parallel: 2 processes, 2 streams each" in two.stdout
        assert "talk over gloo" in two.stdout  # NCCL takes no two processes on one GPU
        assert losses(two).keys() == losses(one).keys() and len(losses(one)) > 20
        for i, loss in losses(one).items():
            assert abs(losses(two)[i] - loss) <= 1e-5 * loss + 1e-5, (i, losses(two)[i], loss)
        for name, weight in weights(self.folder / "half" / "lm_epoch1.pt").items():
            torch.testing.assert_close(weights(self.folder / "two" / "lm_epoch1.pt")[name], weight,
                                       rtol=1e-4, atol=1e-4)


if __name__ == "__main__":
    unittest.main()
