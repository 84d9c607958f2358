"""One prepared GPU check (issue 20), started by bench/gpu_check.sh: at most 8 minutes on one GPU,
no internet, one table at the end.

    bench/gpu_check.sh            # a GPU machine: ${PYTHON:-python3} with the system's torch, numpy, h5py
    bench/gpu_check.sh --cpu      # the dry run on a CPU machine: every part, tiny sizes

  (a) tests/test_cuda.py through the standard library's unittest (no pytest needed): CUDA against
      the CPU reference for every cell and path, the scripts on -gpuid 0, two processes on one GPU.
  (b) training characters per second, batch 50 x 50: train.py's step (util.training.TrainingStep:
      forward_backward, its clamp and RMSprop, replayed as a CUDA graph as train.py does by default,
      the losses read back READBACK_WINDOW steps at a time) against a bare nn.LSTM script on one-hot
      input (cuDNN's kernel, loss.item() every step, as a plain script does), LSTM 2x128, 2x256 and
      3x512 at vocabulary 65 and 2x256 at 2,583, in float32 (IEEE, as train.py sets a CUDA device
      up) and under bf16 autocast; train.py's step also with graphs off (-cuda_graphs 0), the
      nn.LSTM script also with PyTorch's defaults (cuDNN's RNNs in TF32). Then the user's command,
      `train.py -rnn_size 256 -num_layers 2` on the lyrics, its time/batch in fp32 and bf16 (with
      -accurate_gpu_timing 1: time/batch is otherwise the time to queue a step).
  (c) sampling characters per second: util.generate.sample_steps (sample.py's loop, its windows
      replayed as CUDA graphs) with 1 and 64 streams, one stream also with graphs off, against
      stepping nn.LSTM with one stream.
  (d) two processes on one GPU: whether NCCL takes them (a bare all_reduce under torchrun), then
      train.py under torchrun against one process: its losses and its speed.
  (e) graphs exact: how far the weights of (b)'s float32 step replayed as a CUDA graph are from the
      same step run eagerly, after a few steps from the same start (anything but 0 fails).

The contenders of (b) share this process and are timed in interleaved rounds (each one's median
round counts); every round ends by synchronising the GPU, so a round measures the GPU's work.
(a) checks that cuDNN takes the model's weights without a copy.
The lyrics (jaychou_lyrics.txt: 63,282 characters, 2,583 distinct) are copyrighted and not bundled:
the user's command runs on a text of the same length and vocabulary made from the bundled 红楼梦
(lyrics_like_text).
--cpu runs every part on the CPU with tiny sizes (the CUDA tests are then skipped, and the two
processes talk over gloo): a dry run of the script, whose figures are no benchmark.
"""
import argparse
import contextlib
import functools
import itertools
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

import torch
import torch.nn.functional as F
from torch import nn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from model import CharRNN, State  # noqa: E402
from util.data import load_data_dir  # noqa: E402
from util.device import bf16_capable, synchronize, use_ieee_float32  # noqa: E402
from util.generate import Sampling, sample_steps, stream_generators  # noqa: E402
from util.training import GRAPH_WARMUP, READBACK_WINDOW, TrainingStep, graphs_used, rmsprop  # noqa: E402

LEARNING_RATE, DECAY_RATE, GRAD_CLIP, TEMPERATURE = 2e-3, 0.95, 5.0, 0.8
LYRICS_LENGTH, LYRICS_VOCABULARY = 63_282, 2_583
PROGRESS = re.compile(r"^(\d+)/\d+ \(epoch [\d.]+\), train_loss = ([\d.]+), .*time/batch = ([\d.]+)s", re.M)
GLOO_NOTICE = "talk over gloo"  # util.distributed.on_device's notice for processes sharing a GPU
Config = tuple[int, int, int]  # (vocabulary, layers, rnn_size) of an LSTM
Step = Callable[[], float]


@dataclass(frozen=True)
class Mode:
    """The sizes of the GPU check, or of its CPU dry run."""
    device: torch.device
    gpuid: str
    train_configs: tuple[Config, ...]
    batch: int
    seq: int
    rounds: int
    round_seconds: float
    command: tuple[str, ...]  # the user's command's options, besides -data_dir, -gpuid and where it writes
    sample_configs: tuple[Config, ...]
    sample_chars: int  # per stream and round
    two_process_text: int  # characters of tiny Shakespeare for (d)
    two_process_args: tuple[str, ...]
    budget: float  # seconds for the whole check


GPU_MODE = Mode(torch.device("cuda"), "0", ((65, 2, 128), (65, 2, 256), (65, 3, 512), (2583, 2, 256)), 50, 50,
                5, 0.5, ("-rnn_size", "256", "-num_layers", "2", "-max_epochs", "3"),
                ((65, 2, 128), (2583, 2, 256)), 500, 110_000,
                ("-rnn_size", "128", "-num_layers", "2", "-max_epochs", "1"), 450.0)
CPU_MODE = Mode(torch.device("cpu"), "-1", ((65, 2, 32), (65, 2, 64), (65, 3, 64), (2583, 2, 64)), 8, 16,
                2, 0.05, ("-rnn_size", "32", "-num_layers", "2", "-batch_size", "10", "-seq_length", "20",
                          "-max_epochs", "0.05", "-threads", "2"),
                ((65, 2, 32), (2583, 2, 32)), 60, 6_000,
                ("-rnn_size", "32", "-num_layers", "2", "-batch_size", "10", "-seq_length", "20",
                 "-max_epochs", "0.5", "-threads", "1"), 170.0)


# ---- the table -------------------------------------------------------------------------------------

COLUMNS = ("fp32", "bf16", "ref fp32", "ref bf16", "x fp32", "x bf16")


@dataclass
class Row:
    part: str
    what: str
    cells: dict[str, str] = field(default_factory=dict)
    note: str = ""


ROWS: list[Row] = []
STARTED = time.perf_counter()
CHILDREN: set[int] = set()  # process groups of running commands, ended if this check is stopped


def print_table() -> None:
    width = max(len(row.what) for row in ROWS) if ROWS else 10
    print("\n== GPU check: one table ==  fp32/bf16: this project's figure; ref: the reference's (the nn.LSTM "
          "script; one process in (d)); x: ours / ref")
    print(f"{'part':<4} {'what':<{width}} " + " ".join(f"{c:>10}" for c in COLUMNS) + "  note")
    for row in ROWS:
        print(f"{row.part:<4} {row.what:<{width}} " + " ".join(f"{row.cells.get(c, '-'):>10}" for c in COLUMNS)
              + (f"  {row.note}" if row.note else ""))
    print(f"(the check took {time.perf_counter() - STARTED:.0f} s)", flush=True)


def rate(chars_per_second: float) -> str:
    return f"{chars_per_second:,.0f}"


def ratio(ours: float | None, reference: float | None) -> str:
    return f"{ours / reference:.2f}x" if ours and reference else "-"


def on_terminate(number: int, _frame: FrameType | None) -> None:
    """bench/gpu_check.sh's time limit: end the running command, print what was done."""
    for group in list(CHILDREN):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    ROWS.append(Row("-", "stopped", note=f"{signal.Signals(number).name} after "
                                         f"{time.perf_counter() - STARTED:.0f} s; the table holds what was done"))
    print_table()
    os._exit(124)


def run_command(command: list[str], timeout: float, env: dict[str, str] | None = None) -> tuple[int | None, str]:
    """The exit status (None after `timeout` seconds) and the output (stdout and stderr) of a command
    run in the repository root, in a process group of its own: ended whole on a timeout, torchrun's
    workers included."""
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "PYTHONIOENCODING": "utf-8", **(env or {})},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8",
                               errors="replace", start_new_session=True)
    CHILDREN.add(process.pid)
    try:
        output, _ = process.communicate(timeout=max(1.0, timeout))
        return process.returncode, output
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        return None, output + f"\n(stopped after {timeout:.0f} s)"
    finally:
        CHILDREN.discard(process.pid)


def remaining(mode: Mode) -> float:
    return mode.budget - (time.perf_counter() - STARTED)


def enough_time(mode: Mode, share: float) -> bool:
    """Whether more than `share` of the budget is left: what a part needs to start, so that the
    parts after it still fit."""
    return remaining(mode) > share * mode.budget


def say(text: str) -> None:
    print(text, flush=True)


# ---- (a) the CUDA tests ----------------------------------------------------------------------------

def unittest_summary(output: str) -> str:
    """'N tests: P passed, F failed, E errors, S skipped' from unittest's output, with the skip reasons."""
    ran = re.search(r"^Ran (\d+) tests? in ([\d.]+)s", output, re.M)
    status = ([None, *re.finditer(r"^(OK|FAILED)(?: \((.*)\))?\s*$", output, re.M)])[-1]  # the last
    if not ran or not status:
        return "no unittest summary (see the output above)"
    counts = {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", status.group(2) or "")}
    failed, errors, skipped = counts.get("failures", 0), counts.get("errors", 0), counts.get("skipped", 0)
    tests = int(ran.group(1)) + (skipped if sys.version_info >= (3, 12) else 0)  # 3.12 runs no skipped test
    passed = tests - failed - errors - skipped - counts.get("expected_failures", 0)
    reasons = sorted(set(re.findall(r"skipped '([^']*)'", output)))
    return (f"{tests} tests: {passed} passed, {failed} failed, {errors} errors, {skipped} skipped "
            f"in {float(ran.group(2)):.0f} s" + "".join(f"; skipped: {reason}" for reason in reasons))


def part_tests(mode: Mode) -> None:
    say("(a) tests/test_cuda.py ...")
    # discover imports tests/test_cuda.py by its path: a "tests" package installed in site-packages
    # would take the name tests.test_cuda
    status, output = run_command([sys.executable, "-m", "unittest", "discover", "-v", "-s", "tests", "-p",
                                  "test_cuda.py"], min(240.0, remaining(mode) - 0.6 * mode.budget))
    summary = unittest_summary(output)
    if status != 0:
        say(output[-6000:])
    say(f"(a) {summary}")
    ROWS.append(Row("(a)", "tests/test_cuda.py (unittest)", note=("" if status == 0 else "FAILED: ") + summary))


# ---- (b) training speed ----------------------------------------------------------------------------

def random_batches(vocab: int, mode: Mode) -> list[tuple[torch.Tensor, torch.Tensor]]:
    data = torch.randint(0, vocab, (mode.batch, 4 * mode.seq + 1), generator=torch.Generator().manual_seed(0))
    return [(data[:, k * mode.seq:(k + 1) * mode.seq].to(mode.device),
             data[:, k * mode.seq + 1:(k + 1) * mode.seq + 1].to(mode.device)) for k in range(4)]


def fresh_model(config: Config, mode: Mode, precision: str, graphed: bool) -> tuple[CharRNN, TrainingStep]:
    """train.py's LSTM of `config`, initialised from seed 0, on the device, and train.py's step for
    it (util.training.TrainingStep: its clamp, RMSprop, and a CUDA graph where `graphed`)."""
    vocab, layers, size = config
    torch.manual_seed(0)
    model = CharRNN("lstm", vocab, size, layers)
    model.initialize()
    model.to(mode.device).train()
    optimizer = rmsprop(list(model.parameters()), LEARNING_RATE, DECAY_RATE, capturable=graphed)
    return model, TrainingStep(model, optimizer, GRAD_CLIP, precision, 0.0, graphed, say)


def ours_step(config: Config, mode: Mode, precision: str, graphed: bool) -> Step:
    """train.py's step, the losses read back READBACK_WINDOW steps at a time, as train.py does."""
    model, update = fresh_model(config, mode, precision, graphed)
    state: State = model.zero_state(mode.batch)
    turns = itertools.cycle(random_batches(config[0], mode))
    unread: list[torch.Tensor] = []

    def step() -> float:
        nonlocal state
        loss, _, state = update(*next(turns), state, printing=False)
        unread.append(loss)
        if len(unread) < READBACK_WINDOW:
            return 0.0
        values = torch.stack(unread).tolist()
        unread.clear()
        return values[-1]
    return step


def graph_distance(config: Config, mode: Mode, steps: int = 2 * GRAPH_WARMUP + 8) -> float:
    """How far the weights of train.py's step replayed as a CUDA graph are from the same step's
    eager after `steps` steps from the same start (0.0: bit for bit); raises when the capture failed
    (TrainingStep then goes on eager, and 0.0 would prove nothing)."""
    (graphed, graphed_step), (eager, eager_step) = (fresh_model(config, mode, "fp32", on) for on in (True, False))
    batches = random_batches(config[0], mode)
    states = [graphed.zero_state(mode.batch), eager.zero_state(mode.batch)]
    for k in range(steps):
        for n, update in enumerate((graphed_step, eager_step)):
            states[n] = update(*batches[k % len(batches)], states[n], printing=False)[2]
    if not graphed_step.graphed:
        raise RuntimeError("the capture failed (its notice is printed above)")
    return max((a.detach() - b.detach()).abs().max().item()
               for a, b in zip(graphed.parameters(), eager.parameters(), strict=True))


def nn_step(config: Config, mode: Mode, precision: str, tf32: bool = False) -> Step:
    """A bare script: nn.LSTM on one-hot input, a Linear decoder, the same loss, clamp and RMSprop;
    with tf32 each step runs under PyTorch's own default for cuDNN (with_tf32)."""
    vocab, layers, size = config
    rnn = nn.LSTM(vocab, size, layers, batch_first=True).to(mode.device)
    decoder = nn.Linear(size, vocab).to(mode.device)
    params = list(rnn.parameters()) + list(decoder.parameters())
    with torch.no_grad():
        for p in params:
            p.uniform_(-0.08, 0.08)
    optimizer = torch.optim.RMSprop(params, lr=LEARNING_RATE, alpha=DECAY_RATE, eps=1e-8)
    h = torch.zeros(layers, mode.batch, size, device=mode.device)
    state = (h, h.clone())
    turns = itertools.cycle(random_batches(vocab, mode))

    def step() -> float:
        nonlocal state
        x, y = next(turns)
        with torch.autocast(mode.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            top, new_state = rnn(F.one_hot(x, vocab).float(), state)
            logits = decoder(top)
        loss = F.cross_entropy(logits.reshape(-1, vocab).float(), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        (loss * x.shape[1]).backward()
        torch.nn.utils.clip_grad_value_(params, GRAD_CLIP)
        value = loss.item()
        optimizer.step()
        state = (new_state[0].detach(), new_state[1].detach())
        return value
    return with_tf32(step) if tf32 else step


def with_tf32(step: Step) -> Step:
    """A step under PyTorch's own default for cuDNN (TF32), the rest of the check in IEEE float32."""
    def run() -> float:
        set_cudnn_tf32(True)
        try:
            return step()
        finally:
            set_cudnn_tf32(False)
    return run


def set_cudnn_tf32(on: bool) -> None:
    with warnings.catch_warnings():  # newer torch's deprecation notice of the legacy switch
        warnings.simplefilter("ignore")
        torch.backends.cudnn.allow_tf32 = on


def warmed_up(makers: dict[str, Callable[[], Step]], mode: Mode,
              failures: dict[str, str]) -> tuple[dict[str, Step], dict[str, int]]:
    """Each contender built and run three times (the first calls pick kernels and allocate), with
    its steps per round from the third; one that raises is left out, its error in `failures`."""
    steps, counts = {}, {}
    for name, make in makers.items():
        try:
            step = make()
            step()
            step()
            synchronize(mode.device)  # a step may only queue work: time it to its end
            started = time.perf_counter()
            step()
            synchronize(mode.device)
        except Exception as error:  # a contender that fails is reported; the others are still timed
            failures[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}"
            continue
        steps[name] = step
        counts[name] = max(1, round(mode.round_seconds / max(time.perf_counter() - started, 1e-6)))
    return steps, counts


def median_seconds(makers: dict[str, Callable[[], Step]], mode: Mode,
                   failures: dict[str, str]) -> dict[str, float]:
    """Each contender's median seconds per step over interleaved rounds (the order rotated each
    round), after warmed_up."""
    steps, counts = warmed_up(makers, mode, failures)
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for r in range(mode.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            synchronize(mode.device)
            started = time.perf_counter()
            for _ in range(counts[name]):
                steps[name]()
            synchronize(mode.device)
            times[name].append((time.perf_counter() - started) / counts[name])
    return {name: statistics.median(values) for name, values in times.items()}


def part_training(mode: Mode) -> None:
    bf16 = bf16_capable(mode.device)
    for config in mode.train_configs:
        vocab, layers, size = config
        what = f"train chars/s, lstm {layers}x{size} V={vocab:,}, {mode.batch}x{mode.seq}"
        if not enough_time(mode, 0.33):
            ROWS.append(Row("(b)", what, note="skipped: the time budget ran out"))
            continue
        graphed = graphs_used(True, mode.device, False)  # train.py's default here
        makers: dict[str, Callable[[], Step]] = {
            "ours": functools.partial(ours_step, config, mode, "fp32", graphed),
            "nn": functools.partial(nn_step, config, mode, "fp32"),
            "nn_tf32": functools.partial(nn_step, config, mode, "fp32", tf32=True)}
        if graphed:
            makers["ours_eager"] = functools.partial(ours_step, config, mode, "fp32", False)
        if bf16:
            makers.update(ours_bf16=functools.partial(ours_step, config, mode, "bf16", graphed),
                          nn_bf16=functools.partial(nn_step, config, mode, "bf16"))
        if bf16 and graphed:
            makers["ours_bf16_eager"] = functools.partial(ours_step, config, mode, "bf16", False)
        failures: dict[str, str] = {}
        seconds = median_seconds(makers, mode, failures)
        speed = {name: mode.batch * mode.seq / value for name, value in seconds.items()}
        cells = {column: rate(speed[name]) for column, name in (("fp32", "ours"), ("ref fp32", "nn"),
                                                                  ("bf16", "ours_bf16"), ("ref bf16", "nn_bf16"))
                 if name in speed}
        cells.update({"x fp32": ratio(speed.get("ours"), speed.get("nn")),
                      "x bf16": ratio(speed.get("ours_bf16"), speed.get("nn_bf16"))})
        eager = [f"{rate(speed[name])} {precision}" for name, precision in (("ours_eager", "fp32"),
                                                                               ("ours_bf16_eager", "bf16"))
                 if name in speed]
        notes = [f"graphs off (-cuda_graphs 0): {', '.join(eager)}" if eager else "",
                 f"nn.LSTM in TF32 (PyTorch's default): {rate(speed['nn_tf32'])}" if "nn_tf32" in speed else "",
                 "" if bf16 else "no bf16: this GPU has no bfloat16 arithmetic",
                 *(f"{name} FAILED: {error}" for name, error in failures.items())]
        ROWS.append(Row("(b)", what, cells, "; ".join(note for note in notes if note)))
        say(f"(b) {what}: " + ", ".join(f"{name} {rate(value)}" for name, value in speed.items()))
        if mode.device.type == "cuda":
            torch.cuda.empty_cache()


def lyrics_like_text(length: int = LYRICS_LENGTH, vocabulary: int = LYRICS_VOCABULARY) -> str:
    """`length` characters with exactly `vocabulary` distinct ones, the lyrics' figures, made of
    红楼梦: its text kept to its `vocabulary` most frequent characters, cut so that those of them
    that had not appeared yet still fit at the end."""
    with open(os.path.join(REPO, "data", "hongloumeng", "input.txt"), encoding="utf-8") as handle:
        text = handle.read()
    common = {character for character, _ in Counter(text).most_common(vocabulary)}
    kept = [character for character in text if character in common]
    cut, missing = length, list[str]()
    for _ in range(100):  # the cut shrinks by the characters missing from it, which can grow as it shrinks
        missing = sorted(common - set(kept[:cut]))
        if cut + len(missing) == length:
            break
        cut = length - len(missing)
    return "".join(kept[:cut]) + "".join(missing)


def train_run(folder: str, args: list[str], mode: Mode, seconds: float) -> tuple[int | None, str, float]:
    started = time.perf_counter()
    status, output = run_command([sys.executable, os.path.join(REPO, "train.py"), *args, "-gpuid", mode.gpuid,
                                  "-checkpoint_dir", folder], seconds)
    return status, output, time.perf_counter() - started


def batch_seconds(output: str) -> float | None:
    """The median time/batch of a train.py run's progress lines, past the first three (warm-up)."""
    times = [float(seconds) for _, _, seconds in PROGRESS.findall(output)][3:]
    return statistics.median(times) if times else None


def part_command(mode: Mode, folder: str) -> None:
    """The user's command on a lyrics-like text, in fp32 and bf16, one after the other."""
    data = os.path.join(folder, "lyrics")
    os.makedirs(data)
    with open(os.path.join(data, "input.txt"), "w", encoding="utf-8") as handle:
        handle.write(lyrics_like_text())
    load_data_dir(data, log=lambda _: None)  # preprocessed once, so that neither run's time includes it
    what = "train chars/s, the user's command, V=2,583"
    found: dict[str, float] = {}
    notes = [f"train.py {' '.join(mode.command)} on a lyrics-like text"]
    for precision in ("fp32", "bf16"):
        if not enough_time(mode, 0.2):
            notes.append(f"{precision} skipped: the time budget ran out")
            continue
        status, output, seconds = train_run(os.path.join(folder, f"cv_{precision}"),
                                            ["-data_dir", data, *mode.command, "-precision", precision,
                                             "-accurate_gpu_timing", "1"], mode, 120)
        per_batch = batch_seconds(output)
        vocab = re.search(r"^vocab size: (\d+)", output, re.M)
        if status != 0 or per_batch is None:
            say(output[-3000:])
            notes.append(f"{precision} FAILED (exit status {status})")
            continue
        batch = int(option(mode.command, "-batch_size", "50")) * int(option(mode.command, "-seq_length", "50"))
        found[precision] = batch / per_batch
        notes.append(f"{precision}: {per_batch:.4f} s/batch, run {seconds:.0f} s, "
                     f"vocab {vocab.group(1) if vocab else '?'}")
        say(f"(b) the user's command, {precision}: {per_batch:.4f} s/batch")
    ROWS.append(Row("(b)", what, {name: rate(value) for name, value in found.items()}, "; ".join(notes)))


def option(args: tuple[str, ...], name: str, default: str) -> str:
    return args[args.index(name) + 1] if name in args else default


# ---- (c) sampling speed ----------------------------------------------------------------------------

def sampler(model: CharRNN, streams: int, chars: int, device: torch.device,
            graphs: bool = True) -> Callable[[], int]:
    """sample.py's loop for `streams` streams of `chars` characters, its windows replayed as CUDA
    graphs as sample.py does by default (or not: -cuda_graphs 0); returns the characters made."""
    def run() -> int:
        generators = stream_generators(list(range(streams)), device, 0)
        for _ in sample_steps(model, [0], chars, Sampling(TEMPERATURE), generators, graphs=graphs):
            pass
        return streams * chars
    return run


def nn_sampler(config: Config, chars: int, device: torch.device) -> Callable[[], int]:
    """Stepping nn.LSTM on a (1, 1, V) one-hot, softmax, multinomial, .item() per character."""
    vocab, layers, size = config
    lstm, decoder = nn.LSTM(vocab, size, layers).to(device), nn.Linear(size, vocab).to(device)

    def run() -> int:
        with torch.inference_mode():
            h = torch.zeros(layers, 1, size, device=device)
            state, token = (h, h.clone()), torch.zeros(1, dtype=torch.long, device=device)
            for _ in range(chars):
                top, state = lstm(F.one_hot(token.view(1, 1), vocab).float(), state)
                token = torch.multinomial(torch.softmax(decoder(top[0]) / TEMPERATURE, dim=-1), 1)[:, 0]
                int(token.item())
        return chars
    return run


def best_rate(run: Callable[[], int], rounds: int = 3) -> float:
    """Characters per second of the best of `rounds` rounds, after one round of warm-up."""
    run()
    best = 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        made = run()
        best = max(best, made / (time.perf_counter() - started))
    return best


def part_sampling(mode: Mode) -> None:
    for config in mode.sample_configs:
        vocab, layers, size = config
        if not enough_time(mode, 0.17):
            ROWS.append(Row("(c)", f"sample chars/s, lstm {layers}x{size} V={vocab:,}", note="skipped: time budget"))
            continue
        torch.manual_seed(0)
        model = CharRNN("lstm", vocab, size, layers)
        model.initialize()
        model.to(mode.device).eval()
        one = best_rate(sampler(model, 1, mode.sample_chars, mode.device))
        many = best_rate(sampler(model, 64, mode.sample_chars, mode.device))
        eager = best_rate(sampler(model, 1, mode.sample_chars, mode.device, graphs=False))
        reference = best_rate(nn_sampler(config, mode.sample_chars, mode.device))
        ROWS.append(Row("(c)", f"sample chars/s, lstm {layers}x{size} V={vocab:,}, 1 stream",
                        {"fp32": rate(one), "ref fp32": rate(reference), "x fp32": ratio(one, reference)},
                        f"ref: stepping nn.LSTM; graphs off {rate(eager)} ({ratio(one, eager)} from graphs)"))
        ROWS.append(Row("(c)", f"sample chars/s, lstm {layers}x{size} V={vocab:,}, 64 streams",
                        {"fp32": rate(many)}, f"{many / one:.1f}x one stream (all streams' characters)"))
        say(f"(c) lstm {layers}x{size} V={vocab}: 1 stream {rate(one)} (graphs off {rate(eager)}), "
            f"64 streams {rate(many)}, nn.LSTM {rate(reference)} chars/s")


# ---- (d) two processes on one GPU --------------------------------------------------------------------

def probe_nccl() -> None:
    """One process of the NCCL probe (run under torchrun by nccl_verdict): an all_reduce on GPU 0."""
    import torch.distributed as dist

    dist.init_process_group("nccl")
    torch.cuda.set_device(0)
    value = torch.ones(1, device="cuda")
    dist.all_reduce(value)
    torch.cuda.synchronize()
    print(f"probe: all_reduce gave {value.item():g}", flush=True)
    dist.destroy_process_group()


def torchrun(processes: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *args]


def nccl_verdict(one_gpu: dict[str, str]) -> str:
    status, output = run_command(torchrun(2, os.path.abspath(__file__), "--probe"), 90,
                                 {**one_gpu, "NCCL_DEBUG": "WARN"})
    if status == 0 and output.count("probe: all_reduce gave 2") == 2:
        return "NCCL took 2 processes on one GPU"
    reason = re.search(r"Duplicate GPU detected[^\n]*", output)
    if reason:
        return f"NCCL refused them ({reason.group(0).strip()[:80]})"
    # the worker's own exception, not torchrun's report of the failed worker
    errors = [line for line in re.findall(r"^[\w.]+(?:Error|Exception): .*$", output, re.M)
              if "ChildFailed" not in line]
    return f"NCCL failed (exit status {status}: {(errors[0] if errors else output[-200:]).strip()[:120]})"


def max_relative_difference(one: dict[int, float], two: dict[int, float]) -> float | None:
    if not one or one.keys() != two.keys():
        return None
    return max(abs(two[i] - loss) / max(abs(loss), 1e-12) for i, loss in one.items())


def part_two_processes(mode: Mode, folder: str) -> None:
    gpu = mode.device.type == "cuda"
    one_gpu = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]} if gpu else {}
    verdict = nccl_verdict(one_gpu) if gpu else "no NCCL on the CPU"
    data = os.path.join(folder, "shakespeare")
    os.makedirs(data)
    with open(os.path.join(REPO, "data", "tinyshakespeare", "input.txt"), encoding="utf-8") as handle:
        text = handle.read(mode.two_process_text)
    with open(os.path.join(data, "input.txt"), "w", encoding="utf-8") as handle:
        handle.write(text)
    load_data_dir(data, log=lambda _: None)
    args = ["-data_dir", data, *mode.two_process_args, "-gpuid", mode.gpuid, "-print_every", "1"]
    status_one, one = run_command([sys.executable, os.path.join(REPO, "train.py"), *args,
                                   "-checkpoint_dir", os.path.join(folder, "one")], 120, one_gpu)
    status_two, two = run_command(torchrun(2, os.path.join(REPO, "train.py"), *args,
                                           "-checkpoint_dir", os.path.join(folder, "two")), 150, one_gpu)
    if status_one != 0 or status_two != 0:
        say(one[-2000:] + "\n" + two[-3000:])
    losses = [{int(i): float(loss) for i, loss, _ in PROGRESS.findall(output)} for output in (one, two)]
    difference = max_relative_difference(*losses)
    backend = "gloo (processes sharing the GPU)" if GLOO_NOTICE in two else ("NCCL" if gpu else "gloo")
    chars = int(option(mode.two_process_args, "-batch_size", "50")) * int(option(mode.two_process_args,
                                                                               "-seq_length", "50"))
    speeds = [chars / seconds if (seconds := batch_seconds(output)) else None for output in (one, two)]
    agreement = "losses: no comparison (a run failed)" if difference is None else (
        f"losses as one process's: max relative difference {difference:.1e} "
        f"({'within' if difference <= 1e-5 else 'OVER'} 1e-5)")
    ROWS.append(Row("(d)", "train chars/s, torchrun 2 processes vs 1",
                    {"fp32": rate(speeds[1]) if speeds[1] else "-", "ref fp32": rate(speeds[0]) if speeds[0] else "-",
                     "x fp32": ratio(speeds[1], speeds[0])},
                    f"train.py {' '.join(mode.two_process_args)}, exit status {status_one}/{status_two}; "
                    f"{verdict}; train.py talked over {backend}; {agreement}"))
    say(f"(d) {verdict}; train.py: {backend}; {agreement}")


# ---- (e) graphs exact ------------------------------------------------------------------------------

def part_graph_exactness(mode: Mode) -> None:
    """graph_distance at (b)'s sizes: train.py's graphed step against its eager step, bit for bit."""
    for config in mode.train_configs:
        vocab, layers, size = config
        what = f"graphed step's weights from eager's, lstm {layers}x{size} V={vocab:,}"
        if not graphs_used(True, mode.device, False):
            ROWS.append(Row("(e)", what, note="skipped: no CUDA graphs on the CPU"))
            continue
        distance = graph_distance(config, mode)
        ROWS.append(Row("(e)", what, {"fp32": f"{distance:.1e}"},
                        f"after {2 * GRAPH_WARMUP + 8} steps" + ("" if distance == 0 else "; NOT EXACT: FAILED")))
        say(f"(e) {what}: {distance:.1e}")
        torch.cuda.empty_cache()


# ---- main ------------------------------------------------------------------------------------------

def describe(mode: Mode) -> None:
    say(f"GPU check ({'CPU dry run' if mode.device.type == 'cpu' else 'CUDA'}): torch {torch.__version__}, "
        f"Python {platform.python_version()}, {os.cpu_count()} cores")
    if mode.device.type != "cuda":
        return
    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    nccl = nccl_version()
    say(f"  {torch.cuda.get_device_name(index)}, compute capability {major}.{minor}, "
        f"{torch.cuda.get_device_properties(index).total_memory / 2 ** 30:.0f} GiB; CUDA {torch.version.cuda}, "
        f"cuDNN {torch.backends.cudnn.version()}, NCCL {nccl}; {torch.cuda.device_count()} visible device(s)")
    say(f"  float32 in IEEE (TF32 off, as train.py sets up a CUDA device); bf16: "
        f"{'bfloat16 arithmetic' if bf16_capable(mode.device) else 'none (compute capability below 8.0)'}")


def guarded(name: str, part: Callable[[Mode], None], mode: Mode) -> None:
    """A part that raises leaves a row saying so, and the parts after it still run: one pass on a
    lent GPU should bring back everything that works."""
    started = time.perf_counter()
    try:
        part(mode)
    except Exception as error:
        traceback.print_exc()
        message = str(error).splitlines()[0][:200] if str(error) else ""
        ROWS.append(Row(name, "part stopped", note=f"FAILED: {type(error).__name__}: {message}"))
    say(f"{name} done in {time.perf_counter() - started:.0f} s")


def nccl_version() -> str:
    try:
        import torch.cuda.nccl

        version = torch.cuda.nccl.version()
    except (ImportError, RuntimeError, AttributeError):
        return "?"
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="the dry run on the CPU, tiny sizes")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)  # one process of (d)'s probe
    args = parser.parse_args()
    if args.probe:
        probe_nccl()
        return 0
    if not args.cpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False); bench/gpu_check.sh --cpu is the dry "
              "run for a CPU machine", file=sys.stderr)
        return 2
    mode = CPU_MODE if args.cpu else GPU_MODE
    signal.signal(signal.SIGTERM, on_terminate)
    if mode.device.type == "cuda":
        torch.cuda.set_device(0)
        use_ieee_float32()
    torch.set_flush_denormal(True)  # as train.py runs (util.device.configure_cpu): the CPU's denormals are slow
    describe(mode)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as folder:
        for name, part in (("(a)", part_tests), ("(b)", part_training), ("(b)", lambda m: part_command(m, folder)),
                           ("(c)", part_sampling), ("(d)", lambda m: part_two_processes(m, folder)),
                           ("(e)", part_graph_exactness)):
            guarded(name, part, mode)
    print_table()
    return 0 if all("FAILED" not in row.note and "OVER" not in row.note for row in ROWS) else 1


if __name__ == "__main__":
    sys.exit(main())
