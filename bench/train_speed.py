"""Training speed: characters per second of one training step (batch 50 x 50 by default, RMSprop,
element-wise gradient clamp), three ways side by side in one process:

  plain    char-rnn's graph step by step (CharRNN.forward_steps: one-hot input, the cell's Linears),
           then log_softmax + NLL, backward, torch.nn.utils.clip_grad_value_, RMSprop.
  nn.LSTM  torch.nn.LSTM (nn.RNN for the RNN row) on one-hot input, batch_first, a Linear decoder,
           log_softmax + NLL, backward, clip_grad_value_, RMSprop: what a plain PyTorch script does.
  ours     this project's step exactly as train.py runs it: train.forward_backward(model, x, y,
           state, grad_clip), loss.item(), optimizer.step() with
           torch.optim.RMSprop(params, lr, alpha=decay_rate, eps=1e-8).

    .venv/bin/python bench/train_speed.py [-configs 2x128,2x256,3x512,2x256v2583,gru2x128,rnn2x128]
        [-rounds 7] [-seconds 1.0] [-iters 0] [-threads 0] [-memory_iters 10,40] [-no_flops] [-no_memory]
        [-mallopt]

util.device.configure_cpu(threads) is called once, as train.py does, before anything is built: it
sets the thread count and flushes denormals to zero for the whole process, so every contender runs
under the same settings. Every contender trains on the same random batches of the row's vocabulary
(four batches in turn) and carries its state from batch to batch, as training does; all calls
loss.item() once a step, as train.py does. The contenders of a row are timed in turns (`rounds`
rounds, the order rotated each round, each round about `seconds` long, or `iters` steps each when
-iters is given) after a warm-up, and the table gives each one's median round: the machine may be
shared, and interleaving spreads a disturbance over all contenders instead of one.

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
train.py on data/tinyshakespeare (a fresh Python process per run, checkpoints into a temporary
folder), at two iteration counts: the peak must not grow with the number of iterations.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import train  # noqa: E402
from model import CharRNN  # noqa: E402
from util.device import configure_cpu  # noqa: E402

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


def random_batches(vocab_size: int, batch_size: int, seq_length: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    data = torch.randint(0, vocab_size, (batch_size, N_BATCHES * seq_length + 1), generator=generator)
    return [(data[:, k * seq_length:(k + 1) * seq_length].contiguous(),
             data[:, k * seq_length + 1:(k + 1) * seq_length + 1].contiguous()) for k in range(N_BATCHES)]


def rmsprop(params):
    """The optimizer as train.py builds it."""
    return torch.optim.RMSprop(params, lr=LEARNING_RATE, alpha=DECAY_RATE, eps=1e-8)


def plain_trainer(cell: str, vocab_size: int, layers: int, size: int, batches):
    """char-rnn's per-step graph, trained by a plain loop."""
    model = CharRNN(cell, vocab_size, size, layers)
    model.initialize()
    model.train()
    params = list(model.parameters())
    optimizer = rmsprop(params)
    carry = {"state": model.zero_state(batches[0][0].shape[0]), "k": 0}

    def step() -> float:
        x, y = batches[carry["k"] % len(batches)]
        carry["k"] += 1
        logits, state = model.forward_steps(x, carry["state"])
        loss = F.nll_loss(F.log_softmax(logits.reshape(-1, vocab_size), dim=1), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        (loss * x.shape[1]).backward()
        torch.nn.utils.clip_grad_value_(params, GRAD_CLIP)
        optimizer.step()
        carry["state"] = tuple(part.detach() for part in state)
        return loss.item()
    return step


def torch_nn_trainer(cell: str, vocab_size: int, layers: int, size: int, batches):
    """nn.LSTM (or nn.RNN with tanh) on one-hot input, as a plain PyTorch script trains it."""
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
    carry = {"state": (h, h.clone()) if cell == "lstm" else h, "k": 0}

    def step() -> float:
        x, y = batches[carry["k"] % len(batches)]
        carry["k"] += 1
        top, state = rnn(F.one_hot(x, vocab_size).float(), carry["state"])
        logits = decoder(top)
        loss = F.nll_loss(F.log_softmax(logits.reshape(-1, vocab_size), dim=1), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        (loss * x.shape[1]).backward()
        torch.nn.utils.clip_grad_value_(params, GRAD_CLIP)
        optimizer.step()
        carry["state"] = tuple(part.detach() for part in state) if cell == "lstm" else state.detach()
        return loss.item()
    return step


def our_trainer(cell: str, vocab_size: int, layers: int, size: int, batches):
    """train.py's step: forward_backward, then the optimizer."""
    model = CharRNN(cell, vocab_size, size, layers)
    model.initialize()
    model.train()
    optimizer = rmsprop(list(model.parameters()))
    carry = {"state": model.zero_state(batches[0][0].shape[0]), "k": 0}

    def step() -> float:
        x, y = batches[carry["k"] % len(batches)]
        carry["k"] += 1
        loss, carry["state"] = train.forward_backward(model, x, y, carry["state"], GRAD_CLIP)
        value = loss.item()
        optimizer.step()
        return value
    return step


def time_steps(step, iters: int) -> float:
    started = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - started) / iters


def measure_row(trainers: dict, rounds: int, seconds: float, iters: int) -> dict:
    """Median seconds per step of each trainer, timed in interleaved rounds."""
    per_round = {}
    for name, step in trainers.items():
        step()  # warm-up: first calls allocate and pick kernels
        step()
        warm = time_steps(step, 1)
        per_round[name] = iters or max(1, round(seconds / warm))
    times = {name: [] for name in trainers}
    names = list(trainers)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(time_steps(trainers[name], per_round[name]))
    return {name: statistics.median(values) for name, values in times.items()}


# ---- useful GFLOP/s against a matrix-multiply bound ----------------------------------------------

def mm_operands(m: int, k: int, n: int, layout: str):
    """Operands of an m x k by k x n product in the layout of a Linear's forward ('fwd': x @ W.t()),
    its input gradient ('dx': g @ W) or its weight gradient ('dw': g.t() @ x), and an output."""
    if layout == "fwd":
        a, b = torch.randn(m, k), torch.randn(n, k).t()
    elif layout == "dx":
        a, b = torch.randn(m, k), torch.randn(k, n)
    else:
        a, b = torch.randn(k, m).t(), torch.randn(k, n)
    return a, b, torch.empty(m, n)


def lstm_products(vocab_size: int, layers: int, size: int, batch: int, seq: int):
    """(m, k, n, layout, count) of every useful product of one LSTM training step (see the docstring):
    count > 1 for the per-step products, made `seq` times in a row."""
    rows, gates = batch * seq, 4 * size
    products = []
    for n in range(layers):
        if n > 0:  # layer 1's input product is a gather
            products += [(rows, size, gates, "fwd", 1), (rows, gates, size, "dx", 1), (gates, rows, size, "dw", 1)]
        products += [(batch, size, gates, "fwd", seq), (batch, gates, size, "dx", seq), (gates, rows, size, "dw", 1)]
    products += [(rows, size, vocab_size, "fwd", 1), (rows, vocab_size, size, "dx", 1),
                 (vocab_size, rows, size, "dw", 1)]
    return products


def products_runner(products):
    """A closure making every product of the list once, with torch.mm on preallocated operands."""
    operands = {key[:4]: mm_operands(*key[:4]) for key in products}
    plan = [(operands[key[:4]], key[4]) for key in products]

    def run() -> None:
        for (a, b, out), count in plan:
            for _ in range(count):
                torch.mm(a, b, out=out)
    return run


def flop_report(products, step_seconds: float, bound_seconds: float, repeats: int) -> str:
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
sys.argv = ["train.py"] + sys.argv[1:]
sys.path.insert(0, os.getcwd())
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


def peak_memory_kb(iterations: int, threads: int, n_train: int, mallopt: bool) -> tuple[int | None, str]:
    with tempfile.TemporaryDirectory() as folder:
        args = ["-data_dir", "data/tinyshakespeare", "-model", "lstm", "-rnn_size", "512", "-num_layers", "3",
                "-gpuid", "-1", "-threads", str(threads), "-max_epochs", repr((iterations + 0.5) / n_train),
                "-print_every", "1000000", "-eval_val_every", "1000000", "-checkpoint_dir", folder]
        env = dict(os.environ)
        if mallopt:  # keep_freed_memory() for the child, through glibc's environment variables
            env.update(MALLOC_MMAP_THRESHOLD_=str(1 << 30), MALLOC_TRIM_THRESHOLD_=str(1 << 30))
        result = subprocess.run([sys.executable, "-c", MEMORY_CHILD, *args], cwd=REPO, capture_output=True,
                                text=True, env=env)
    peaks = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("VmHWM_kB")]
    if result.returncode or not peaks:
        return None, (result.stderr.strip().splitlines() or ["no output"])[-1]
    return int(peaks[0]), ""


def tiny_shakespeare_train_batches(batch: int, seq: int) -> int:
    """char-rnn's split of data/tinyshakespeare/input.txt: training batches per epoch."""
    with open(os.path.join(REPO, "data", "tinyshakespeare", "input.txt"), encoding="utf-8") as handle:
        size = len(handle.read())
    return int(size // (batch * seq) * 0.95)


def keep_freed_memory() -> None:
    """glibc only: serve large allocations from the heap instead of fresh mmap()ed pages and never
    hand freed memory back, so that a step's big temporaries reuse pages already mapped."""
    import ctypes
    libc = ctypes.CDLL("libc.so.6")
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)


# ---- main ------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-configs", default=",".join(CONFIGS), help=f"rows, from {','.join(CONFIGS)}")
    parser.add_argument("-rounds", type=int, default=7, help="timed rounds per contender (median counts)")
    parser.add_argument("-seconds", type=float, default=1.0, help="length of a round (sets its steps)")
    parser.add_argument("-iters", type=int, default=0, help="steps per round instead of -seconds")
    parser.add_argument("-threads", type=int, default=0, help="CPU threads; 0 = all cores (as train.py)")
    parser.add_argument("-batch_size", type=int, default=50)
    parser.add_argument("-seq_length", type=int, default=50)
    parser.add_argument("-memory_iters", default="10,40", help="iteration counts of the peak-memory runs")
    parser.add_argument("-no_flops", action="store_true", help="skip the GFLOP/s report")
    parser.add_argument("-no_memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("-mallopt", action="store_true",
                        help="also keep freed memory in the process (glibc mallopt: no mmap, no trim) for every "
                             "contender, to show what page faults of fresh allocations cost")
    args = parser.parse_args()
    names = [name for name in args.configs.split(",") if name]
    unknown = [name for name in names if name not in CONFIGS]
    if unknown:
        parser.error(f"unknown config {', '.join(unknown)}; known: {', '.join(CONFIGS)}")

    started = time.perf_counter()
    configure_cpu(args.threads)  # as train.py: threads, and denormals flushed for every contender
    if args.mallopt:
        keep_freed_memory()
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    load = os.getloadavg()[0]
    B, T = args.batch_size, args.seq_length
    print(f"torch {torch.__version__}, {threads} threads, {os.cpu_count()} cores, load average {load:.1f}; "
          f"{'mallopt: freed memory kept; ' if args.mallopt else ''}"
          f"batch {B} x {T}; {args.rounds} interleaved rounds of "
          f"{f'{args.iters} steps' if args.iters else f'~{args.seconds:g} s'}, medians; training chars/s")
    header = f"{'config':<24} {'plain':>9} {'nn.LSTM':>9} {'ours':>9} {'ours/nn':>8} {'target':>7} {'ours/plain':>10}"
    print(header)
    flop_rows = []
    for name in names:
        cell, vocab_size, layers, size = CONFIGS[name]
        batches = random_batches(vocab_size, B, T)
        trainers = {"plain": plain_trainer(cell, vocab_size, layers, size, batches)}
        if cell != "gru":
            trainers["nn"] = torch_nn_trainer(cell, vocab_size, layers, size, batches)
        trainers["ours"] = our_trainer(cell, vocab_size, layers, size, batches)
        products = None
        if cell == "lstm" and (layers, size) == (3, 512) and not args.no_flops:
            products = lstm_products(vocab_size, layers, size, B, T)
            trainers["bound"] = products_runner(products)
        seconds = measure_row(trainers, args.rounds, args.seconds, args.iters)
        speed = {key: B * T / value for key, value in seconds.items()}
        nn_speed = speed.get("nn")
        label = f"{cell} {layers}x{size} V={vocab_size}"
        ratio = f"{speed['ours'] / nn_speed:>7.2f}x" if nn_speed else f"{'-':>8}"
        target = f">={TARGETS[name]:.2f}" if name in TARGETS else "-"
        print(f"{label:<24} {speed['plain']:>9,.0f} {f'{nn_speed:,.0f}' if nn_speed else '-':>9} "
              f"{speed['ours']:>9,.0f} {ratio} {target:>7} {speed['ours'] / speed['plain']:>9.2f}x", flush=True)
        if products:
            flop_rows.append((label, products, seconds["ours"], seconds["bound"]))
    print("(nn.LSTM column: nn.RNN for the rnn row; none for char-rnn's GRU, which nn.GRU does not compute)")

    for label, products, step_seconds, bound_seconds in flop_rows:
        print(f"\n{label}: useful GFLOP/s of our step")
        print(flop_report(products, step_seconds, bound_seconds, repeats=max(3, args.rounds)), flush=True)

    if not args.no_memory:
        counts = [int(n) for n in args.memory_iters.split(",")]
        n_train = tiny_shakespeare_train_batches(50, 50)
        print(f"\npeak memory (VmHWM) of train.py, lstm 3x512 on data/tinyshakespeare, batch 50 x 50, "
              f"{threads} threads:")
        peaks = []
        for count in counts:
            peak, error = peak_memory_kb(count, args.threads, n_train, args.mallopt)
            peaks.append(peak)
            print(f"  {count:>5} iterations: " + (f"{peak / 1024:,.0f} MiB" if peak else f"failed: {error}"),
                  flush=True)
        if all(peaks) and len(peaks) > 1:
            growth = peaks[-1] - peaks[0]
            print(f"  growth from {counts[0]} to {counts[-1]} iterations: {growth / 1024:+,.1f} MiB")
    print(f"\n(benchmark took {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
