"""Sampling speed: characters per second, as sample.py generates them.

    .venv/bin/python bench/sample_speed.py [-chars 1500] [-repeats 3] [-seconds 4] [-streams 1,8,64,256]

Table 1, one stream, one character at a time, one thread (sample.py's setting for one sample):
  nn.LSTM   stepping torch.nn.LSTM(V, H, L) on a (1, 1, V) one-hot, then Linear, softmax, multinomial;
  before    the loop sample.py ran before the generator issue: CharRNN.step, softmax(logits / T),
            torch.multinomial, .item();
  now       util/generate.sample_steps, the loop sample.py runs now (a Stepper, noise drawn in blocks,
            the draw written out).
Table 2, LSTM 2 x 128, V = 65: -num_samples N streams as one batch (sample_steps with N generators),
aggregate characters per second and the ratio to one stream, at one thread and at every core
(sample.py uses every core for N > 1).

Contenders of a row are timed alternately, `repeats` times each after a warm-up, and the best round
counts (the least disturbed by other work on the machine); a round stops early after -seconds.
Denormals are flushed to zero, as sample.py runs. Besides wall-clock chars/s, table 1 gives chars
per CPU-second of this process.
Targets (issue 16): now >= before in every row (aim: 2x); N = 64 >= 20x one stream.
"""
import argparse
import os
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from model import CharRNN
from util.generate import Sampling, sample_steps, stream_generators

CONFIGS = [(2, 128, 65), (3, 512, 65), (2, 256, 2583)]  # (layers, rnn_size, vocabulary)
TEMPERATURE = 0.8
Run = Callable[[int, float], int]  # (characters, deadline) -> characters generated


def baseline_sampler(num_layers: int, rnn_size: int, vocab_size: int) -> Run:
    lstm, decoder = nn.LSTM(vocab_size, rnn_size, num_layers), nn.Linear(rnn_size, vocab_size)

    def run(chars: int, deadline: float) -> int:
        h = torch.zeros(num_layers, 1, rnn_size)
        state, token = (h, h.clone()), torch.zeros(1, dtype=torch.long)
        done = 0
        while done < chars and time.perf_counter() < deadline:
            x = F.one_hot(token.view(1, 1), vocab_size).float()
            top, state = lstm(x, state)
            logits = decoder(top[0])
            token = torch.multinomial(torch.softmax(logits / TEMPERATURE, dim=-1), 1)[:, 0]
            int(token.item())
            done += 1
        return done
    return run


def model_for(num_layers: int, rnn_size: int, vocab_size: int) -> CharRNN:
    model = CharRNN("lstm", vocab_size, rnn_size, num_layers).eval()
    model.initialize()
    return model


def before_sampler(model: CharRNN) -> Run:
    def run(chars: int, deadline: float) -> int:  # sample.py's loop before issue 16
        state = model.zero_state(1)
        logits, state = model.step(torch.zeros(1, dtype=torch.long), state)
        done = 0
        while done < chars and time.perf_counter() < deadline:
            token = torch.multinomial(torch.softmax(logits / TEMPERATURE, dim=-1), 1)[:, 0]
            int(token.item())
            done += 1
            logits, state = model.step(token, state)
        return done
    return run


def streams_sampler(model: CharRNN, streams: int) -> Run:
    def run(chars: int, deadline: float) -> int:  # chars per stream; returns all streams' characters
        generators = stream_generators(list(range(streams)), torch.device("cpu"), 0)
        done = 0
        for _ in sample_steps(model, [0], chars, Sampling(TEMPERATURE), generators):
            done += streams
            if time.perf_counter() > deadline:
                break
        return done
    return run


def chars_per_second(run: Run, chars: int, seconds: float) -> tuple[float, float]:
    """(chars per wall-clock second, chars per CPU-second of this process)."""
    started, cpu_started = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        done = run(chars, started + seconds)
    return done / (time.perf_counter() - started), done / (time.process_time() - cpu_started)


def best_rounds(samplers: dict[str, tuple[Run, int, int]], repeats: int, seconds: float) -> dict[str, tuple]:
    """name -> (best wall chars/s, best CPU chars/s); samplers: name -> (run, chars, threads)."""
    best = dict.fromkeys(samplers, (0.0, 0.0))
    for run, chars, threads in samplers.values():  # warm-up
        torch.set_num_threads(threads)
        chars_per_second(run, max(1, chars // 8), seconds / 4)
    for _ in range(repeats):
        for name, (run, chars, threads) in samplers.items():
            torch.set_num_threads(threads)
            wall, cpu = chars_per_second(run, chars, seconds)
            best[name] = (max(best[name][0], wall), max(best[name][1], cpu))
    return best


def one_stream_table(args: argparse.Namespace) -> None:
    print(f"{'':<22} {'----------- wall clock, chars/s -----------':>46}   {'---- per CPU-second ----':>24}")
    print(f"{'config':<22} {'nn.LSTM':>10} {'before':>10} {'now':>10} {'now/before':>11}"
          f"   {'before':>9} {'now':>9} {'ratio':>6}")
    for layers, size, vocab in CONFIGS:
        model = model_for(layers, size, vocab)
        best = best_rounds({"nn.LSTM": (baseline_sampler(layers, size, vocab), args.chars, 1),
                            "before": (before_sampler(model), args.chars, 1),
                            "now": (streams_sampler(model, 1), args.chars, 1)}, args.repeats, args.seconds)
        wall = {name: value[0] for name, value in best.items()}
        cpu = {name: value[1] for name, value in best.items()}
        print(f"{f'{layers}x{size} lstm, V={vocab}':<22} {wall['nn.LSTM']:>10,.0f} {wall['before']:>10,.0f} "
              f"{wall['now']:>10,.0f} {wall['now'] / wall['before']:>10.2f}x   {cpu['before']:>9,.0f} "
              f"{cpu['now']:>9,.0f} {cpu['now'] / cpu['before']:>5.2f}x", flush=True)


def streams_table(args: argparse.Namespace) -> None:
    model, cores = model_for(2, 128, 65), len(os.sched_getaffinity(0))
    counts = [int(n) for n in args.streams.split(",")]
    samplers = {f"{n}@{threads}": (streams_sampler(model, n), max(50, args.chars // n), threads)
                for n in counts for threads in sorted({1, cores})}
    best = best_rounds(samplers, args.repeats, args.seconds)
    single = best["1@1"][0]
    print("\n-num_samples N, LSTM 2x128, V=65: aggregate chars/s (ratio to one stream at 1 thread)")
    print(f"{'N':>5} {'1 thread':>12} {'ratio':>8} {f'{cores} threads':>12} {'ratio':>8}")
    for n in counts:
        one, every = best[f"{n}@1"][0], best[f"{n}@{cores}"][0]
        print(f"{n:>5} {one:>12,.0f} {one / single:>7.1f}x {every:>12,.0f} {every / single:>7.1f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-chars", type=int, default=1500, help="characters per timed round (per stream: / N)")
    parser.add_argument("-repeats", type=int, default=3, help="timed rounds per sampler")
    parser.add_argument("-seconds", type=float, default=4.0, help="a round stops early after this long")
    parser.add_argument("-streams", default="1,8,64,256", help="the N of table 2")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_flush_denormal(True)  # as sample.py runs (util.device.configure_cpu)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, load average {load:.1f}; "
          f"{args.chars} chars x {args.repeats} rounds, best round counts")
    one_stream_table(args)
    streams_table(args)


if __name__ == "__main__":
    main()
