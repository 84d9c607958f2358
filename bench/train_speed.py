"""Training speed: characters per second of one training step (batch 50 x 50 by default, RMSprop,
element-wise gradient clamp), side by side in one run:

  plain    char-rnn's graph step by step (CharRNN.forward_steps: one-hot input, the cell's Linears),
           then log_softmax + NLL, backward, torch.nn.utils.clip_grad_value_, RMSprop.
  nn.LSTM  torch.nn.LSTM (nn.RNN for the RNN row) on one-hot input, batch_first, a Linear decoder,
           log_softmax + NLL, backward, clip_grad_value_, RMSprop: what a plain PyTorch script does.
  nn+kept  the same nn.LSTM script in a process set up as train.py sets up its own: it shows how much
           of ours/nn.LSTM comes from that set-up (freed memory kept for reuse) and how much from the
           step itself.
  ours     this project's step exactly as train.py runs it: util.training.forward_backward(model, x, y,
           state, grad_clip), loss.item(), optimizer.step() with
           torch.optim.RMSprop(params, lr, alpha=decay_rate, eps=1e-8), in a process set up by
           util.device.configure_cpu(threads) as train.py does.

    .venv/bin/python bench/train_speed.py [-configs 2x128,2x256,3x512,2x256v2583,gru2x128,rnn2x128]
        [-processes 3] [-rounds 5] [-seconds 1.0] [-iters 0] [-threads 0] [-memory_iters 10,40,160]
        [-no_flops] [-no_memory] [-bf16]

Each contender runs in its own Python process, because train.py's set-up is process-wide: glibc's
malloc told to keep freed memory (util.device.keep_freed_memory), which spares a step the page
faults of allocating its large temporaries afresh. Every process uses the same number of threads
and flushes denormals to zero; plain and nn.LSTM keep glibc's default allocator, as a plain script
does. Every contender trains on the same random batches of the row's vocabulary (four batches in
turn) and carries its state from batch to batch, as training does; all call loss.item() once a
step, as train.py does. The contenders of a row are timed in turns (`rounds` rounds, the order
rotated each round, each round about `seconds` long, or `iters` steps each when -iters is given;
only one process runs at a time) after a warm-up: the machine may be shared, and interleaving
spreads a disturbance over all contenders instead of one. This is done `processes` times, each
time with a fresh process per contender, one set after another, and the table gives each
contender's median round over all of them. A process's speed depends on more than the machine's
load: with glibc's default allocator whether a step page-faults depends on where the process's
first allocations landed (its adaptive mmap threshold), which differs from one start to the next
(2 x 128, nn.LSTM: 71K-108K chars/s over six fresh processes, 0-8,000 faults a step), so one
process per contender would measure that luck. Under each row, the medians of the single processes
of nn.LSTM and ours show the spread.

With -bf16 each row also times train.py's step with -precision bf16 (bfloat16 autocast) and the
nn.LSTM script under the same autocast, both in processes set up as train.py's, in the same
rounds; they are printed as a second table, apart from the float32 targets.

For the 3 x 512 row the benchmark also prints the useful GFLOP/s of our step and its fraction of a
bound computed from matrix-multiply rates measured in the same run. Useful work counts only the
matrix products of char-rnn's model math, forward and backward, as 2*m*k*n flops each, per step:
  forward   layers 2..L input products (T*B x H x 4H), every layer's recurrent products
            (T times B x H x 4H), the decoder (T*B x H x V);
  backward  for each of those, the gradient of its input (same size; the recurrent one per step)
            and of its weight (same size, one product over all T*B rows).
Layer 1's one-hot input product is not counted (in the model's math it is a gather, its gradient a
scatter-add), nor are element-wise operations, the loss, the clamp and the optimizer. The bound is
the time torch.mm takes for exactly those products, on matrices of the same shapes and layouts
(the batched T*B-row products as single products, the per-step B-row products as T products in a
row), i.e. sum(flops / rate): it is timed as one more contender of the row, in the same turns as
the training steps, so that both see the same machine. Fraction = bound time / our step's time.
Each shape's own rate is printed too, for the record.

Memory: peak resident memory (VmHWM of /proc/self/status) of a 3 x 512 LSTM training run of
train.py on data/tinyshakespeare (a fresh Python process per run, validation every 20 iterations,
checkpoints into a temporary folder), at several iteration counts: the peak must not grow with the
number of iterations. One more run at the middle count shows the peak with glibc's default
allocator (train.py with keep_freed_memory switched off).
"""
import argparse
import functools
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from model import CharRNN, State  # noqa: E402
from util.data import char_rnn_splits, load_data_dir  # noqa: E402
from util.device import configure_cpu  # noqa: E402
from util.training import forward_backward, rmsprop as char_rnn_rmsprop  # noqa: E402

# name -> (cell, vocabulary, layers, rnn_size)
CONFIGS = {
    "2x128": ("lstm", 65, 2, 128),
    "2x256": ("lstm", 65, 2, 256),
    "3x512": ("lstm", 65, 3, 512),
    "2x256v2583": ("lstm", 2583, 2, 256),
    "gru2x128": ("gru", 65, 2, 128),
    "rnn2x128": ("rnn", 65, 2, 128),
}
TARGETS = {"2x128": 1.1, "2x256": 1.05, "3x512": 0.95, "2x256v2583": 1.8}  # ours / nn.LSTM
LEARNING_RATE, DECAY_RATE, GRAD_CLIP = 2e-3, 0.95, 5.0
N_BATCHES = 4

Batch = tuple[torch.Tensor, torch.Tensor]  # (x, y), each (batch, seq_length)
Step = Callable[[], float]  # one training step, returning its loss
Trainer = Callable[[str, int, int, int, list[Batch]], Step]  # (cell, vocabulary, layers, rnn_size, batches)
Product = tuple[int, int, int, str, int]  # a matrix product: (m, k, n, layout, count), see lstm_products
FlopRow = tuple[str, list[Product], float, float]  # (label, products, our step's seconds, the bound's seconds)


def random_batches(vocab_size: int, batch_size: int, seq_length: int, seed: int = 0) -> list[Batch]:
    generator = torch.Generator().manual_seed(seed)
    data = torch.randint(0, vocab_size, (batch_size, N_BATCHES * seq_length + 1), generator=generator)
    return [(data[:, k * seq_length:(k + 1) * seq_length].contiguous(),
             data[:, k * seq_length + 1:(k + 1) * seq_length + 1].contiguous()) for k in range(N_BATCHES)]


def rmsprop(params: list[nn.Parameter]) -> torch.optim.RMSprop:
    return char_rnn_rmsprop(params, LEARNING_RATE, DECAY_RATE)


def plain_trainer(cell: str, vocab_size: int, layers: int, size: int, batches: list[Batch]) -> Step:
    """char-rnn's per-step graph, trained by a plain loop."""
    model = CharRNN(cell, vocab_size, size, layers)
    model.initialize()
    model.train()
    params = list(model.parameters())
    optimizer = rmsprop(params)
    state = model.zero_state(batches[0][0].shape[0])
    turns = itertools.cycle(batches)

    def step() -> float:
        nonlocal state
        x, y = next(turns)
        logits, new_state = model.forward_steps(x, state)
        loss = F.nll_loss(F.log_softmax(logits.reshape(-1, vocab_size), dim=1), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        (loss * x.shape[1]).backward()
        torch.nn.utils.clip_grad_value_(params, GRAD_CLIP)
        optimizer.step()
        state = tuple(part.detach() for part in new_state)
        return loss.item()
    return step


def torch_nn_trainer(cell: str, vocab_size: int, layers: int, size: int, batches: list[Batch],
                     precision: str = "fp32") -> Step:
    """nn.LSTM (or nn.RNN with tanh) on one-hot input, as a plain PyTorch script trains it; with
    precision bf16 its forward pass runs under bfloat16 autocast."""
    rnn: nn.RNNBase
    if cell == "lstm":
        rnn = nn.LSTM(vocab_size, size, layers, batch_first=True)
    else:
        rnn = nn.RNN(vocab_size, size, layers, nonlinearity="tanh", batch_first=True)
    decoder = nn.Linear(size, vocab_size)
    params = list(rnn.parameters()) + list(decoder.parameters())
    with torch.no_grad():
        for p in params:
            p.uniform_(-0.08, 0.08)
    optimizer = rmsprop(params)
    batch_size = batches[0][0].shape[0]
    h = torch.zeros(layers, batch_size, size)
    state: tuple[torch.Tensor, torch.Tensor] | torch.Tensor = (h, h.clone()) if cell == "lstm" else h  # nn's hx
    turns = itertools.cycle(batches)

    def step() -> float:
        nonlocal state
        x, y = next(turns)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            top, new_state = rnn(F.one_hot(x, vocab_size).float(), state)
            logits = decoder(top)
        loss = F.nll_loss(F.log_softmax(logits.reshape(-1, vocab_size).float(), dim=1), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        (loss * x.shape[1]).backward()
        torch.nn.utils.clip_grad_value_(params, GRAD_CLIP)
        optimizer.step()
        state = (new_state[0].detach(), new_state[1].detach()) if cell == "lstm" else new_state.detach()
        return loss.item()
    return step


def our_trainer(cell: str, vocab_size: int, layers: int, size: int, batches: list[Batch],
                precision: str = "fp32") -> Step:
    """train.py's step: forward_backward, then the optimizer."""
    model = CharRNN(cell, vocab_size, size, layers)
    model.initialize()
    model.train()
    optimizer = rmsprop(list(model.parameters()))
    state: State = model.zero_state(batches[0][0].shape[0])
    turns = itertools.cycle(batches)

    def step() -> float:
        nonlocal state
        x, y = next(turns)
        loss, state = forward_backward(model, x, y, state, GRAD_CLIP, precision)
        value = loss.item()
        optimizer.step()
        return value
    return step


def time_steps(step: Callable[[], object], iters: int) -> float:
    started = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - started) / iters


# ---- contenders in their own processes ---------------------------------------------------------------

TRAINERS: dict[str, Trainer] = {
    "plain": plain_trainer, "nn": torch_nn_trainer, "nn_kept": torch_nn_trainer, "ours": our_trainer,
    "nn_bf16": functools.partial(torch_nn_trainer, precision="bf16"),
    "ours_bf16": functools.partial(our_trainer, precision="bf16")}
TRAIN_PY_SETUP = ("nn_kept", "ours", "nn_bf16", "ours_bf16")  # processes set up by configure_cpu, as train.py's


def worker(contender: str, config: str, threads: int, batch: int, seq: int) -> None:
    """One contender's process: sets itself up, builds its step, warms up and prints one step's
    seconds; then for each number N read from stdin runs N steps and prints seconds per step."""
    if contender in TRAIN_PY_SETUP:
        configure_cpu(threads)
    else:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(True)
    torch.manual_seed(0)
    cell, vocab_size, layers, size = CONFIGS[config]
    step: Callable[[], object]
    if contender == "bound":
        step = products_runner(lstm_products(vocab_size, layers, size, batch, seq))
    else:
        step = TRAINERS[contender](cell, vocab_size, layers, size, random_batches(vocab_size, batch, seq))
    step()  # warm-up: first calls allocate and pick kernels
    step()
    print(time_steps(step, 1), flush=True)
    for line in sys.stdin:
        print(time_steps(step, int(line)), flush=True)


class Contender:
    """A worker process, driven over its stdin and stdout."""

    def __init__(self, contender: str, config: str, threads: int, batch: int, seq: int):
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "-worker", contender, "-configs", config,
             "-threads", str(threads), "-batch_size", str(batch), "-seq_length", str(seq)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdin is not None and self.process.stdout is not None  # both are pipes, as asked
        self.stdin, self.stdout = self.process.stdin, self.process.stdout
        self.warm_seconds = self._answer()

    def run(self, steps: int) -> float:
        self.stdin.write(f"{steps}\n")
        self.stdin.flush()
        return self._answer()

    def _answer(self) -> float:
        line = self.stdout.readline()
        if not line:
            raise SystemExit(f"a benchmark worker failed (exit status {self.process.wait()})")
        return float(line)

    def close(self) -> None:
        self.stdin.close()
        self.process.wait()


def measure_processes(wanted: list[str], config: str, threads: int, batch: int, seq: int, rounds: int,
                      seconds: float, iters: int) -> dict[str, list[float]]:
    """Seconds per step of each round of each contender, timed in interleaved rounds in one fresh
    process per contender."""
    contenders: dict[str, Contender] = {}
    try:
        for who in wanted:
            contenders[who] = Contender(who, config, threads, batch, seq)
        steps = {name: iters or max(1, round(seconds / c.warm_seconds)) for name, c in contenders.items()}
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for r in range(rounds):
            for name in wanted[r % len(wanted):] + wanted[:r % len(wanted)]:
                times[name].append(contenders[name].run(steps[name]))
        return times
    finally:
        for contender in contenders.values():
            contender.close()


def measure_row(wanted: list[str], config: str, threads: int, batch: int, seq: int, processes: int, rounds: int,
                seconds: float, iters: int) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Each contender's median seconds per step over all rounds of all its processes, and the
    median of each process by itself."""
    per_process: dict[str, list[list[float]]] = {name: [] for name in wanted}
    for _ in range(processes):
        times = measure_processes(wanted, config, threads, batch, seq, rounds, seconds, iters)
        for name, values in times.items():
            per_process[name].append(values)
    overall = {name: statistics.median(v for values in runs for v in values) for name, runs in per_process.items()}
    return overall, {name: [statistics.median(values) for values in runs] for name, runs in per_process.items()}


# ---- useful GFLOP/s against a matrix-multiply bound ----------------------------------------------

def mm_operands(m: int, k: int, n: int, layout: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Operands of an m x k by k x n product in the layout of a Linear's forward ('fwd': x @ W.t()),
    its input gradient ('dx': g @ W) or its weight gradient ('dw': g.t() @ x), and an output."""
    if layout == "fwd":
        a, b = torch.randn(m, k), torch.randn(n, k).t()
    elif layout == "dx":
        a, b = torch.randn(m, k), torch.randn(k, n)
    else:
        a, b = torch.randn(k, m).t(), torch.randn(k, n)
    return a, b, torch.empty(m, n)


def lstm_products(vocab_size: int, layers: int, size: int, batch: int, seq: int) -> list[Product]:
    """(m, k, n, layout, count) of every useful product of one LSTM training step (see the docstring):
    count > 1 for the per-step products, made `seq` times in a row."""
    rows, gates = batch * seq, 4 * size
    products: list[Product] = []
    for n in range(layers):
        if n > 0:  # layer 1's input product is a gather
            products += [(rows, size, gates, "fwd", 1), (rows, gates, size, "dx", 1), (gates, rows, size, "dw", 1)]
        products += [(batch, size, gates, "fwd", seq), (batch, gates, size, "dx", seq), (gates, rows, size, "dw", 1)]
    products += [(rows, size, vocab_size, "fwd", 1), (rows, vocab_size, size, "dx", 1),
                 (vocab_size, rows, size, "dw", 1)]
    return products


def products_runner(products: list[Product]) -> Callable[[], None]:
    """A closure making every product of the list once, with torch.mm on preallocated operands."""
    operands = {key[:4]: mm_operands(*key[:4]) for key in products}
    plan = [(operands[key[:4]], key[4]) for key in products]

    def run() -> None:
        for (a, b, out), count in plan:
            for _ in range(count):
                torch.mm(a, b, out=out)
    return run


def flop_report(products: list[Product], step_seconds: float, bound_seconds: float, repeats: int) -> str:
    """The useful GFLOP/s of our step and its fraction of the bound (the products' own time)."""
    flops = sum(2.0 * m * k * n * count for m, k, n, _, count in products)
    lines = []
    for key in dict.fromkeys(products):  # each shape's own rate, for the record
        m, k, n, layout, count = key
        run = products_runner([key])
        run()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
        work = 2.0 * m * k * n * count
        lines.append(f"    torch.mm {m}x{k}x{n} ({layout}{f', {count} in a row' if count > 1 else ''}): "
                     f"{work / statistics.median(times) / 1e9:.0f} GFLOP/s, "
                     f"{work * products.count(key) / 1e9:.2f} GFLOP a step")
    return "\n".join([
        f"  useful work per step {flops / 1e9:.2f} GFLOP (the matrix products of forward + backward; not layer 1's "
        f"one-hot product, a gather)",
        *lines,
        f"  bound: all those products back to back take {bound_seconds * 1e3:.0f} ms "
        f"= {flops / bound_seconds / 1e9:.0f} GFLOP/s (median of rounds timed in turns with the steps)",
        f"  ours: {step_seconds * 1e3:.0f} ms per step = {flops / step_seconds / 1e9:.0f} GFLOP/s useful, "
        f"{bound_seconds / step_seconds:.0%} of the bound"])


# ---- peak memory -----------------------------------------------------------------------------------

MEMORY_CHILD = """
import os, runpy, sys
sys.path.insert(0, os.getcwd())
if sys.argv[1] == "default-malloc":
    import util.device
    util.device.keep_freed_memory = lambda: False
sys.argv = ["train.py"] + sys.argv[2:]
try:
    runpy.run_path("train.py", run_name="__main__")
except SystemExit as stop:
    if stop.code:
        raise
finally:
    with open("/proc/self/status") as status:
        peak = [line.split()[1] for line in status if line.startswith("VmHWM:")][0]
    print("VmHWM_kB", peak, flush=True)
"""


def peak_memory_kb(iterations: int, threads: int, n_train: int, malloc: str) -> tuple[int | None, str]:
    """VmHWM of a 3 x 512 train.py run of `iterations` steps; malloc 'kept' (as train.py) or
    'default-malloc' (glibc's defaults)."""
    with tempfile.TemporaryDirectory() as folder:
        args = ["-data_dir", "data/tinyshakespeare", "-model", "lstm", "-rnn_size", "512", "-num_layers", "3",
                "-gpuid", "-1", "-threads", str(threads), "-max_epochs", repr((iterations + 0.5) / n_train),
                "-print_every", "1000000", "-eval_val_every", "20", "-checkpoint_dir", folder]
        result = subprocess.run([sys.executable, "-c", MEMORY_CHILD, malloc, *args], cwd=REPO, capture_output=True,
                                text=True)
    peaks = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("VmHWM_kB")]
    if result.returncode or not peaks:
        return None, (result.stderr.strip().splitlines() or ["no output"])[-1]
    return int(peaks[0]), ""


def tiny_shakespeare_train_batches(batch: int, seq: int) -> int:
    """Training batches per epoch of train.py on data/tinyshakespeare with the default fractions."""
    _, ids = load_data_dir(os.path.join(REPO, "data", "tinyshakespeare"), log=lambda _: None)
    return char_rnn_splits(ids, batch, seq, train_frac=0.95, val_frac=0.05)["train"].n_batches


def memory_report(counts: list[int], threads: int) -> None:
    n_train = tiny_shakespeare_train_batches(50, 50)
    print(f"\npeak memory (VmHWM) of train.py, lstm 3x512 on data/tinyshakespeare, batch 50 x 50, "
          f"{threads} threads, validation every 20 iterations:")
    peaks: list[int | None] = []
    for count in counts:
        peak, error = peak_memory_kb(count, threads, n_train, "kept")
        peaks.append(peak)
        print(f"  {count:>5} iterations: " + (f"{peak / 1024:,.0f} MiB" if peak else f"failed: {error}"), flush=True)
    measured = [peak for peak in peaks if peak]
    if len(measured) == len(peaks) > 1:  # every run gave its peak
        print(f"  from {counts[0]} to {counts[-1]} iterations: {(measured[-1] - measured[0]) / 1024:+,.1f} MiB; "
              f"range {(max(measured) - min(measured)) / 1024:,.1f} MiB")
    middle = counts[len(counts) // 2]
    peak, error = peak_memory_kb(middle, threads, n_train, "default-malloc")
    print(f"  {middle:>5} iterations with glibc's default malloc (freed memory not kept): "
          + (f"{peak / 1024:,.0f} MiB" if peak else f"failed: {error}"), flush=True)


# ---- the tables ------------------------------------------------------------------------------------

def row_contenders(name: str, flops: bool, bf16: bool) -> list[str]:
    """The contenders timed in a row: those of its cell, the matrix-multiply bound where its GFLOP/s
    are reported (3 x 512 LSTM), the bf16 ones with -bf16."""
    cell, _, layers, size = CONFIGS[name]
    wanted = ["plain", "ours"] if cell == "gru" else ["plain", "nn", "nn_kept", "ours"]
    if cell == "lstm" and (layers, size) == (3, 512) and flops:
        wanted.append("bound")
    if bf16:
        wanted += ["ours_bf16"] if cell == "gru" else ["nn_bf16", "ours_bf16"]
    return wanted


def column(speed: dict[str, float], who: str) -> str:
    return f"{speed[who]:>8,.0f}" if who in speed else f"{'-':>8}"


def ratio(speed: dict[str, float], who: str, width: int) -> str:
    return f"{speed['ours'] / speed[who]:>{width - 1}.2f}x" if who in speed else f"{'-':>{width}}"


def print_header(args: argparse.Namespace, threads: int) -> None:
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {threads} threads, {os.cpu_count()} cores, load average {load:.1f}; "
          f"batch {args.batch_size} x {args.seq_length}; {args.processes} x {args.rounds} interleaved rounds of "
          f"{f'{args.iters} steps' if args.iters else f'~{args.seconds:g} s'} (processes x rounds), medians; "
          f"training chars/s")
    print(f"{'config':<24} {'plain':>8} {'nn.LSTM':>8} {'nn+kept':>8} {'ours':>8} {'ours/nn':>8} {'target':>7} "
          f"{'ours/nn+kept':>12} {'ours/plain':>10}")


def report_row(name: str, args: argparse.Namespace, threads: int) -> tuple[FlopRow | None, str | None]:
    """Times a row and prints its line of the float32 table (and the single processes' speeds);
    returns what its GFLOP/s report needs (if it has one) and its line of the bf16 table (with -bf16)."""
    cell, vocab_size, layers, size = CONFIGS[name]
    B, T = args.batch_size, args.seq_length
    seconds, per_process = measure_row(row_contenders(name, not args.no_flops, args.bf16), name, threads, B, T,
                                       args.processes, args.rounds, args.seconds, args.iters)
    speed = {who: B * T / value for who, value in seconds.items()}
    label = f"{cell} {layers}x{size} V={vocab_size}"
    target = f">={TARGETS[name]:.2f}" if name in TARGETS else "-"
    print(f"{label:<24} {column(speed, 'plain')} {column(speed, 'nn')} {column(speed, 'nn_kept')} "
          f"{column(speed, 'ours')} {ratio(speed, 'nn', 8)} {target:>7} {ratio(speed, 'nn_kept', 12)} "
          f"{ratio(speed, 'plain', 10)}", flush=True)
    if args.processes > 1:
        print("    single processes: " + "; ".join(
            f"{who} " + " ".join(f"{B * T / value / 1e3:.1f}K" for value in per_process[who])
            for who in ("nn", "ours") if who in per_process), flush=True)
    flop_row = None
    if "bound" in seconds:
        flop_row = (label, lstm_products(vocab_size, layers, size, B, T), seconds["ours"], seconds["bound"])
    if not args.bf16:
        return flop_row, None
    nn_bf16 = speed.get("nn_bf16")
    return flop_row, (f"{label:<24} {column(speed, 'ours')} {speed['ours_bf16']:>9,.0f} "
                      f"{speed['ours_bf16'] / speed['ours']:>8.2f}x {column(speed, 'nn_bf16')} "
                      + (f"{speed['ours_bf16'] / nn_bf16:>13.2f}x" if nn_bf16 else f"{'-':>14}"))


def print_bf16_table(rows: list[str]) -> None:
    print(f"\n-precision bf16 (bfloat16 autocast; reported apart from the float32 targets), training chars/s\n"
          f"{'config':<24} {'ours':>8} {'ours bf16':>9} {'bf16/fp32':>9} {'nn bf16':>8} {'ours/nn bf16':>14}")
    print("\n".join(rows))
    print("(nn bf16: the nn.LSTM script under the same autocast, in a process set up as train.py's)")


# ---- main ------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-configs", default=",".join(CONFIGS), help=f"rows, from {','.join(CONFIGS)}")
    parser.add_argument("-processes", type=int, default=3,
                        help="fresh processes per contender, one set after another (median over all their rounds)")
    parser.add_argument("-rounds", type=int, default=5, help="timed rounds per process (median counts)")
    parser.add_argument("-seconds", type=float, default=1.0, help="length of a round (sets its steps)")
    parser.add_argument("-iters", type=int, default=0, help="steps per round instead of -seconds")
    parser.add_argument("-threads", type=int, default=0, help="CPU threads; 0 = all cores (as train.py)")
    parser.add_argument("-batch_size", type=int, default=50)
    parser.add_argument("-seq_length", type=int, default=50)
    parser.add_argument("-memory_iters", default="10,40,160", help="iteration counts of the peak-memory runs")
    parser.add_argument("-no_flops", action="store_true", help="skip the GFLOP/s report")
    parser.add_argument("-no_memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("-bf16", action="store_true",
                        help="also time train.py's step and the nn.LSTM script (set up alike) under bfloat16 "
                             "autocast (-precision bf16), in the same rounds, and print them as a second table")
    parser.add_argument("-worker", choices=[*TRAINERS, "bound"], help=argparse.SUPPRESS)
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    threads = args.threads or len(os.sched_getaffinity(0))
    if args.worker:
        worker(args.worker, args.configs, threads, args.batch_size, args.seq_length)
        return
    names = [name for name in args.configs.split(",") if name]
    unknown = [name for name in names if name not in CONFIGS]
    if unknown:
        parser.error(f"unknown config {', '.join(unknown)}; known: {', '.join(CONFIGS)}")
    if args.processes < 1 or args.rounds < 1:
        parser.error("-processes and -rounds must be at least 1")

    started = time.perf_counter()
    torch.set_num_threads(threads)  # for the per-shape matrix-multiply rates measured here
    print_header(args, threads)
    flop_rows: list[FlopRow] = []
    bf16_rows: list[str] = []
    for name in names:
        flop_row, bf16_row = report_row(name, args, threads)
        if flop_row is not None:
            flop_rows.append(flop_row)
        if bf16_row is not None:
            bf16_rows.append(bf16_row)
    print("(nn.LSTM: nn.RNN for the rnn row; none for char-rnn's GRU, which nn.GRU does not compute. nn+kept: the "
          "nn.LSTM script in a process set up as train.py's)")

    if bf16_rows:
        print_bf16_table(bf16_rows)

    for label, products, step_seconds, bound_seconds in flop_rows:
        print(f"\n{label}: useful GFLOP/s of our step")
        print(flop_report(products, step_seconds, bound_seconds, repeats=max(3, args.rounds)), flush=True)

    if not args.no_memory:
        memory_report([int(n) for n in args.memory_iters.split(",")], threads)
    print(f"\n(benchmark took {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
