"""Validation cost on a large corpus: seconds per validation pass, whole and with -val_max_batches,
against the training step, and the share of a run's wall time spent validating, in one run.

    .venv/bin/python bench/val_speed.py                    # 1 GiB corpus; the full pass takes minutes
    .venv/bin/python bench/val_speed.py -size_mb 50 -full_batches 2000   # quick: extrapolated full pass

The corpus is synthetic and deterministic: -size_mb MiB (default 1024) of "words" drawn with a
seeded numpy generator from a fixed 65-character alphabet (52 letters, 11 punctuation marks, space
and newline; roughly one character in 6.4 a space, one in 64 a newline), written in 4 MiB chunks
into a temporary folder under the system's temp folder, which is removed at the end, on an error,
Ctrl-C or SIGTERM too. It is preprocessed with util.corpus.preprocess as preprocess.py does
(-val_frac 0.05 by default) and loaded as train.py loads -input_h5/-input_json
(util.data.load_training_data). The model is train.py's default: CharRNN("lstm", V, 128, 2),
initialize(), batch 50 x 50 (-rnn_size, -num_layers, -batch_size, -seq_length change them).

Measured, in this order, in one process set up as train.py's (util.device.configure_cpu):
  step     train.py's training step: util.training.forward_backward, loss.item(), optimizer.step()
           of util.training.rmsprop at train.py's defaults, the state carried from batch to batch;
           the median of -steps steps after -warmup steps.
  full     one full validation pass, util.training.evaluate_split(..., max_batches=0): measured once,
           whole. With -full_batches N the pass over N evenly spread batches is timed instead and
           scaled to the whole split, and the output says "extrapolated".
  subsets  passes with -val_max_batches at train.py's suggestion (util.training.suggested_val_batches
           of the full pass, the split's batches and -eval_val_every steps) and at each of
           -fixed_batches (default 100,1000): -repeats passes each, in turns, the order rotated each
           round; the median counts.
  step     the median of -steps more steps, after all passes, to show whether the machine changed.
The share of wall time spent validating is pass / (pass + eval_val_every * step), and the notice
applies when a full pass is more than util.training.VALIDATION_SHARE of eval_val_every * step.
Peak memory is resource.getrusage's ru_maxrss of this process. Not part of the test run, and no
timing is asserted anywhere: run it by hand from a clone (bench/README.md).
"""
import argparse
import contextlib
import csv
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType, SimpleNamespace

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from model import CharRNN, State  # noqa: E402
from util.corpus import preprocess  # noqa: E402
from util.data import BatchLoader, load_training_data  # noqa: E402
from util.device import configure_cpu, manual_seed  # noqa: E402
from util.training import (  # noqa: E402
    VALIDATION_SHARE,
    evaluate_split,
    forward_backward,
    rmsprop,
    suggested_val_batches,
)

MIB = 1 << 20
CHUNK_BYTES = 4 * MIB
WORD_CHARACTERS = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!$&',-.3:;?"  # 63, + space and newline
SPACES, NEWLINES = 36, 4  # of the 256 values of a random byte: the rest map onto WORD_CHARACTERS
SEED = 20240611
DRIFT = 0.2  # a change of the step time beyond this (before -> after the passes) is reported
LEARNING_RATE, DECAY_RATE, GRAD_CLIP = 0.002, 0.95, 5.0  # train.py's defaults


# ---- the corpus ------------------------------------------------------------------------------------

def byte_table() -> np.ndarray:
    """The 256-entry map from a uniform random byte to a corpus character."""
    table = np.empty(256, dtype=np.uint8)
    table[:SPACES] = ord(" ")
    table[SPACES:SPACES + NEWLINES] = ord("\n")
    words = np.frombuffer(WORD_CHARACTERS, dtype=np.uint8)
    table[SPACES + NEWLINES:] = np.resize(words, 256 - SPACES - NEWLINES)
    return table


def write_corpus(path: str, size_bytes: int, seed: int = SEED) -> None:
    """size_bytes of synthetic text, the same for the same size and seed, written chunk by chunk."""
    rng, table = np.random.default_rng(seed), byte_table()
    with open(path, "wb") as handle:
        left = size_bytes
        while left > 0:
            n = min(CHUNK_BYTES, left)
            handle.write(table[rng.integers(0, 256, n, dtype=np.uint8)].tobytes())
            left -= n


@contextlib.contextmanager
def terminated_as_exit() -> Iterator[None]:
    """SIGTERM raises SystemExit while inside, so that the temporary folder is removed then too."""
    def stop(number: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + number)
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class Corpus:
    h5: str
    json: str
    write_seconds: float
    preprocess_seconds: float


def make_corpus(folder: str, size_mb: float, val_frac: float) -> Corpus:
    """The text in `folder`, preprocessed there as preprocess.py does; the text itself is removed."""
    text, h5, js = (os.path.join(folder, name) for name in ("input.txt", "input.h5", "input.json"))
    started = time.perf_counter()
    write_corpus(text, int(size_mb * MIB))
    written = time.perf_counter()
    preprocess(text, h5, js, val_frac, 0.0, "utf-8", log=lambda _: None)
    done = time.perf_counter()
    os.remove(text)
    return Corpus(h5, js, written - started, done - written)


# ---- the timings -----------------------------------------------------------------------------------

@dataclass
class Timing:
    seconds: float
    others: float | None  # CPU cores other processes kept busy meanwhile (None: no /proc/stat)


class OtherWork:
    """Times an interval and the other processes' CPU use in it: the whole machine's busy time
    (/proc/stat: user, nice, system, irq, softirq, steal) less this process's own (os.times), over
    the wall time; a run on an idle machine shows about 0."""

    def __init__(self) -> None:
        self.started, self.busy = time.perf_counter(), self.cpu_seconds()

    @staticmethod
    def cpu_seconds() -> tuple[float, float] | None:
        """(all processes' busy CPU seconds, this process's), or None where /proc/stat is missing."""
        try:
            with open("/proc/stat") as stat:
                fields = [int(value) for value in stat.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        own = os.times()  # its children's once they have ended (a train.py run)
        return ((sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK"),
                own.user + own.system + own.children_user + own.children_system)

    def stop(self, seconds: float | None = None) -> Timing:
        """The interval's Timing; `seconds` replaces its wall time in the result (a median step)."""
        wall, busy = time.perf_counter() - self.started, self.cpu_seconds()
        others = None
        if busy is not None and self.busy is not None:
            others = max(0.0, (busy[0] - self.busy[0]) - (busy[1] - self.busy[1])) / wall
        return Timing(wall if seconds is None else seconds, others)


class Stepper:
    """train.py's training step on the loader's train split, the state carried from step to step."""

    def __init__(self, model: CharRNN, loader: BatchLoader):
        self.model, self.loader = model, loader
        self.optimizer = rmsprop(list(model.parameters()), LEARNING_RATE, DECAY_RATE)
        self.state: State = model.zero_state(loader.batch_size)

    def seconds(self, steps: int) -> list[float]:
        """The seconds of each of `steps` steps."""
        self.model.train()
        times = []
        for _ in range(steps):
            started = time.perf_counter()
            x, y = self.loader.next_batch("train")
            loss, self.state = forward_backward(self.model, x, y, self.state, GRAD_CLIP)
            loss.item()
            self.optimizer.step()
            times.append(time.perf_counter() - started)
        return times

    def median(self, steps: int) -> Timing:
        meter = OtherWork()
        return meter.stop(statistics.median(self.seconds(steps)))


def timed_pass(model: CharRNN, loader: BatchLoader, max_batches: int) -> Timing:
    meter = OtherWork()
    evaluate_split(model, loader, "val", torch.device("cpu"), max_batches=max_batches)
    return meter.stop()


def full_pass(model: CharRNN, loader: BatchLoader, full_batches: int) -> Timing:
    """The whole split's pass, or (full_batches > 0) that many spread batches' scaled to the split."""
    n_val = loader.n_batches("val")
    if 0 < full_batches < n_val:
        timing = timed_pass(model, loader, full_batches)
        return Timing(timing.seconds * n_val / full_batches, timing.others)
    return timed_pass(model, loader, 0)


def subset_passes(model: CharRNN, loader: BatchLoader, counts: list[int], repeats: int) -> dict[int, Timing]:
    """The median seconds of a pass over each count of batches, the counts timed in turns, and the
    most other work seen in any of its passes."""
    times: dict[int, list[Timing]] = {count: [] for count in counts}
    for r in range(repeats):
        for count in counts[r % len(counts):] + counts[:r % len(counts)]:
            times[count].append(timed_pass(model, loader, count))
    return {count: Timing(statistics.median(t.seconds for t in timings), most_others(timings))
            for count, timings in times.items()}


def most_others(timings: list[Timing]) -> float | None:
    known = [t.others for t in timings if t.others is not None]
    return max(known) if known else None


@dataclass
class Measured:
    n_val: int
    step: Timing  # median seconds per training step, before the passes
    step_after: Timing  # the same, after them
    full: Timing  # a full validation pass
    suggestion: int  # suggested_val_batches' number
    subsets: dict[int, Timing]  # -val_max_batches -> a pass


def measure(model: CharRNN, loader: BatchLoader, args: argparse.Namespace, say: "Say") -> Measured:
    stepper = Stepper(model, loader)
    stepper.seconds(args.warmup)
    timed_pass(model, loader, min(10, loader.n_batches("val")))  # the evaluation path's warm-up
    step = stepper.median(args.steps)
    say(f"training step: {step.seconds * 1e3:.1f} ms (median of {args.steps})")
    n_val = loader.n_batches("val")
    full = full_pass(model, loader, args.full_batches)
    say(f"full validation pass: {full.seconds:.1f} s{extrapolated(args, n_val)}")
    suggestion = suggested_val_batches(full.seconds, n_val, args.eval_val_every * step.seconds)
    counts = list(dict.fromkeys([suggestion, *args.fixed_batches]))
    timed = subset_passes(model, loader, [count for count in counts if count < n_val], args.repeats)
    subsets = {count: timed.get(count, full) for count in counts}  # a count of n_val or more: the full pass
    step_after = stepper.median(args.steps)
    return Measured(n_val, step, step_after, full, suggestion, subsets)


def extrapolated(args: argparse.Namespace, n_val: int) -> str:
    if 0 < args.full_batches < n_val:
        return f" (EXTRAPOLATED from a pass over {args.full_batches:,} of the {n_val:,} batches)"
    return " (measured whole)"


# ---- a real train.py run (-train_py) -------------------------------------------------------------

TRAIN_PY = os.path.join(REPO, "train.py")


def train_py_has_val_max_batches() -> bool:
    help_text = subprocess.run([sys.executable, TRAIN_PY, "-help"], capture_output=True, text=True, cwd=REPO)
    return "-val_max_batches" in help_text.stdout + help_text.stderr


@dataclass
class TrainRun:
    val_max_batches: int
    wall: Timing  # seconds of the whole train.py process
    steps: float  # seconds in training steps (the last row of its log's `seconds`)
    lines: list[str]  # its validation lines and notices


def run_train_py(corpus: Corpus, args: argparse.Namespace, folder: str, n_train: int,
                 val_max_batches: int) -> TrainRun:
    """train.py on the preprocessed corpus for -train_iters iterations, validating once (at the end),
    in a fresh working folder under `folder`."""
    cwd = tempfile.mkdtemp(prefix="train_py_", dir=folder)
    command = [sys.executable, TRAIN_PY, "-input_h5", corpus.h5, "-input_json", corpus.json, "-gpuid", "-1",
               "-threads", str(args.threads), "-max_epochs", repr((args.train_iters + 0.5) / n_train),
               "-eval_val_every", str(args.train_iters), "-print_every", str(args.train_iters),
               "-batch_size", str(args.batch_size), "-seq_length", str(args.seq_length),
               "-rnn_size", str(args.rnn_size), "-num_layers", str(args.num_layers),
               "-checkpoint_dir", "cv", "-val_max_batches", str(val_max_batches)]
    meter = OtherWork()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    wall = meter.stop()
    if result.returncode:
        raise RuntimeError(f"train.py failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    with open(os.path.join(cwd, "cv", "lm_log.csv"), newline="") as handle:
        steps = float(list(csv.DictReader(handle))[-1]["seconds"])
    lines = [line for line in result.stdout.splitlines() if line.startswith(("notice:", "validation loss"))]
    return TrainRun(val_max_batches, wall, steps, lines)


def train_py_runs(corpus: Corpus, args: argparse.Namespace, folder: str, n_train: int, measured: "Measured",
                  say: "Say") -> list[TrainRun]:
    """The whole split's validation, then -val_max_batches at the suggestion for the run's own
    -train_iters steps between validations (from the measured pass and step)."""
    subset = suggested_val_batches(measured.full.seconds, measured.n_val, args.train_iters * measured.step.seconds)
    runs = []
    for val_max_batches in (0, subset):
        say(f"train.py -val_max_batches {val_max_batches}, {args.train_iters} iterations")
        runs.append(run_train_py(corpus, args, folder, n_train, val_max_batches))
    return runs


def report_train_py(runs: list[TrainRun], args: argparse.Namespace) -> None:
    print(f"\ntrain.py, {args.train_iters} iterations, one validation (-eval_val_every {args.train_iters}), "
          f"-gpuid -1; the suggestion for {args.train_iters} steps between validations; wall time of the whole "
          f"process (start-up and loading the data included)")
    print(f"{'':<46} {'wall s':>8} {'steps s':>8} {'rest s':>8} {'full/this':>9} {'others':>6}")
    for run in runs:
        name = f"-val_max_batches {run.val_max_batches}" + (" (suggested)" if run.val_max_batches
                                                            else " (the whole split)")
        wall = run.wall.seconds
        print(f"{name:<46} {wall:>8.1f} {run.steps:>8.1f} {wall - run.steps:>8.1f} "
              f"{runs[0].wall.seconds / wall:>8.2f}x {others(run.wall):>6}")
        print("\n".join(f"    train.py: {line}" for line in run.lines))


# ---- the report ------------------------------------------------------------------------------------

class Say:
    """Progress lines on stderr, so that stdout holds the table only."""

    def __call__(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)


def share(seconds: float, interval: float) -> str:
    return f"{seconds / (seconds + interval):.1%}"


def others(timing: Timing) -> str:
    return "-" if timing.others is None else f"{timing.others:.2f}"


def print_header(args: argparse.Namespace, vocab_size: int, load: float) -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, load average "
          f"{load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    print(f"{args.size_mb:g} MiB synthetic corpus, vocab {vocab_size}, val_frac {args.val_frac:g}; "
          f"lstm {args.num_layers}x{args.rnn_size}, batch {args.batch_size} x {args.seq_length}")


def report(measured: Measured, args: argparse.Namespace) -> None:
    m, every = measured, args.eval_val_every
    interval, full = every * m.step.seconds, m.full.seconds
    label = "full pass, -val_max_batches 0" + (" (EXTRAPOLATED)" if 0 < args.full_batches < m.n_val else "")
    print(f"{'':<46} {'batches':>8} {'s/pass':>8} {'full/this':>9} {f'val share @{every}':>15} {'others':>6}")
    print(f"{label:<46} {m.n_val:>8,} {full:>8.2f} {1:>8.2f}x {share(full, interval):>15} {others(m.full):>6}")
    for count, timing in m.subsets.items():
        name = f"-val_max_batches {count}" + (" (suggested)" if count == m.suggestion else "")
        print(f"{name:<46} {min(count, m.n_val):>8,} {timing.seconds:>8.2f} {full / timing.seconds:>8.2f}x "
              f"{share(timing.seconds, interval):>15} {others(timing):>6}")
    drift = m.step_after.seconds / m.step.seconds - 1
    print(f"{'training step s (median, before the passes)':<46} {'':>8} {m.step.seconds:>8.4f} {'':>9} {'':>15} "
          f"{others(m.step):>6}")
    print(f"{'training step s (median, after the passes)':<46} {'':>8} {m.step_after.seconds:>8.4f} {'':>9} "
          f"{f'({drift:+.1%})':>15} {others(m.step_after):>6}")
    print("(val share: pass / (pass + eval_val_every x step); others: CPU cores other processes kept busy "
          "meanwhile, the most in any pass of the row)")
    if abs(drift) > DRIFT:
        print(f"WARNING: the step time changed by more than {DRIFT:.0%} during the run: the machine was busy, "
              f"the figures are not reliable")
    print(f"{every} steps between evaluations: {interval:.1f} s; a full pass is {full / interval:.0%} of that "
          f"(notice above {VALIDATION_SHARE:.0%}: {'yes' if full > VALIDATION_SHARE * interval else 'no'}); "
          f"suggested -val_max_batches {m.suggestion:,} = suggested_val_batches({full:.2f}, {m.n_val}, "
          f"{interval:.2f})")


def print_footer(corpus: Corpus, peak: int, started: float) -> None:
    print(f"peak memory (ru_maxrss): {peak / MIB:,.0f} MiB; corpus written in {corpus.write_seconds:.1f} s, "
          f"preprocessed in {corpus.preprocess_seconds:.1f} s; benchmark took {time.perf_counter() - started:.0f} s")


# ---- main ------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-size_mb", type=float, default=1024, help="synthetic corpus size in MiB")
    parser.add_argument("-val_frac", type=float, default=0.05, help="as preprocess.py's")
    parser.add_argument("-full_batches", type=int, default=0,
                        help="0: time the full pass whole; N: time N spread batches and extrapolate (quick runs)")
    parser.add_argument("-fixed_batches", default="100,1000", help="-val_max_batches values timed besides "
                                                                   "the suggestion")
    parser.add_argument("-eval_val_every", type=int, default=1000, help="as train.py's")
    parser.add_argument("-steps", type=int, default=100, help="timed training steps (median), before and after")
    parser.add_argument("-warmup", type=int, default=10, help="untimed training steps first")
    parser.add_argument("-repeats", type=int, default=3, help="passes per -val_max_batches value (median)")
    parser.add_argument("-train_py", action="store_true",
                        help="also time real train.py runs on the corpus, with and without -val_max_batches")
    parser.add_argument("-train_iters", type=int, default=300, help="iterations of each -train_py run")
    parser.add_argument("-threads", type=int, default=0, help="CPU threads; 0 = all cores (as train.py)")
    parser.add_argument("-batch_size", type=int, default=50)
    parser.add_argument("-seq_length", type=int, default=50)
    parser.add_argument("-rnn_size", type=int, default=128)
    parser.add_argument("-num_layers", type=int, default=2)
    return parser


def parse_args() -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args()
    try:
        args.fixed_batches = [int(n) for n in args.fixed_batches.split(",") if n]
    except ValueError:
        parser.error(f"-fixed_batches must be a comma-separated list of integers, not {args.fixed_batches!r}")
    if args.size_mb <= 0 or args.steps < 1 or args.repeats < 1 or args.eval_val_every < 1 \
            or any(n < 1 for n in args.fixed_batches):
        parser.error("-size_mb, -steps, -repeats, -eval_val_every and -fixed_batches must be positive")
    if args.train_py and (args.train_iters < 1 or not train_py_has_val_max_batches()):
        parser.error("-train_py needs -train_iters of at least 1 and a train.py with -val_max_batches")
    return args


def main() -> None:
    args = parse_args()
    say = Say()
    configure_cpu(args.threads)
    manual_seed(123)  # train.py's default -seed
    started, load = time.perf_counter(), os.getloadavg()[0]
    with terminated_as_exit(), tempfile.TemporaryDirectory(prefix="val_speed_") as folder:
        say(f"writing and preprocessing a {args.size_mb:g} MiB corpus in {folder}")
        corpus = make_corpus(folder, args.size_mb, args.val_frac)
        opt = SimpleNamespace(input_h5=corpus.h5, input_json=corpus.json, batch_size=args.batch_size,
                              seq_length=args.seq_length)
        vocab, loader = load_training_data(opt, "h5", say)
        model = CharRNN("lstm", len(vocab), args.rnn_size, args.num_layers)
        model.initialize()
        say(f"vocab {len(vocab)}; batches: train {loader.n_batches('train'):,}, val {loader.n_batches('val'):,}")
        measured = measure(model, loader, args, say)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux; before any train.py
        runs = train_py_runs(corpus, args, folder, loader.n_batches("train"), measured, say) if args.train_py else []
    print_header(args, len(vocab), load)
    report(measured, args)
    if runs:
        report_train_py(runs, args)
    print_footer(corpus, peak, started)


if __name__ == "__main__":
    main()
