"""Sampling speed: characters per second, batch 1, one character at a time, as sample.py draws them.

    .venv/bin/python bench/sample_speed.py [-chars 1500] [-repeats 3] [-seconds 4] [-threads 0]

For each configuration it compares
  nn.LSTM  stepping torch.nn.LSTM(V, H, L) on a (1, 1, V) one-hot, then Linear, softmax, multinomial;
  ours     this project's CharRNN.step, the loop sample.py runs (model.step, softmax of logits / T,
           multinomial, .item() to write the character).
Both run under torch.inference_mode() on the CPU. The two are timed alternately, `repeats` times
each after a warm-up, and the best round counts (the least disturbed by other work on the machine).
A round stops early after -seconds, so that a slow row on a busy machine cannot run for minutes.
Besides wall-clock chars/s, the table gives chars per CPU-second of this process: on a busy
machine that is the steadier figure, and with one thread (-threads 1) it is what the wall clock
would read on an idle core. (With several threads it also counts threads spinning while they wait.)
Targets: ours >= 2x nn.LSTM in every row, and >= 5,000 chars/s at 2 x 128.
"""
import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from model import CharRNN

CONFIGS = [(2, 128, 65), (3, 512, 65), (2, 256, 2583)]  # (layers, rnn_size, vocabulary)
TEMPERATURE = 0.8


def baseline_sampler(num_layers: int, rnn_size: int, vocab_size: int):
    lstm, decoder = nn.LSTM(vocab_size, rnn_size, num_layers), nn.Linear(rnn_size, vocab_size)

    def run(chars: int, deadline: float) -> list[int]:
        h = torch.zeros(num_layers, 1, rnn_size)
        state, token = (h, h.clone()), torch.zeros(1, dtype=torch.long)
        out: list[int] = []
        while len(out) < chars and time.perf_counter() < deadline:
            x = F.one_hot(token.view(1, 1), vocab_size).float()
            top, state = lstm(x, state)
            logits = decoder(top[0])
            token = torch.multinomial(torch.softmax(logits / TEMPERATURE, dim=-1), 1)[:, 0]
            out.append(int(token.item()))
        return out
    return run


def our_sampler(num_layers: int, rnn_size: int, vocab_size: int):
    model = CharRNN("lstm", vocab_size, rnn_size, num_layers).eval()
    model.initialize()

    def run(chars: int, deadline: float) -> list[int]:  # sample.py's generation loop
        state = model.zero_state(1)
        logits, state = model.step(torch.zeros(1, dtype=torch.long), state)
        out: list[int] = []
        while len(out) < chars and time.perf_counter() < deadline:
            probabilities = torch.softmax(logits / TEMPERATURE, dim=-1)
            token = torch.multinomial(probabilities, 1)[:, 0]
            out.append(int(token.item()))
            logits, state = model.step(token, state)
        return out
    return run


def chars_per_second(run, chars: int, seconds: float) -> tuple[float, float]:
    """(chars per wall-clock second, chars per CPU-second of this process)."""
    started, cpu_started = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        done = len(run(chars, started + seconds))
    return done / (time.perf_counter() - started), done / (time.process_time() - cpu_started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-chars", type=int, default=1500, help="characters per timed round")
    parser.add_argument("-repeats", type=int, default=3, help="timed rounds per sampler")
    parser.add_argument("-seconds", type=float, default=4.0, help="a round stops early after this long")
    parser.add_argument("-threads", type=int, default=0,
                        help="torch threads of both samplers; 0 = PyTorch's default (sample.py uses 1: -threads 1 "
                             "times its setting)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
          f"load average {load:.1f}; {args.chars} chars x {args.repeats} rounds, best round counts")
    print(f"{'':<22} {'------ wall clock, chars/s ------':>36}   {'------ per CPU-second ------':>32}")
    print(f"{'config':<22} {'nn.LSTM':>12} {'ours':>12} {'ratio':>8}   {'nn.LSTM':>10} {'ours':>10} {'ratio':>8}")
    for layers, size, vocab in CONFIGS:
        samplers = {"nn.LSTM": baseline_sampler(layers, size, vocab), "ours": our_sampler(layers, size, vocab)}
        wall, cpu = dict.fromkeys(samplers, 0.0), dict.fromkeys(samplers, 0.0)
        for run in samplers.values():  # warm-up
            chars_per_second(run, 200, args.seconds / 4)
        for _ in range(args.repeats):
            for name, run in samplers.items():
                round_wall, round_cpu = chars_per_second(run, args.chars, args.seconds)
                wall[name], cpu[name] = max(wall[name], round_wall), max(cpu[name], round_cpu)
        config = f"{layers}x{size} lstm, V={vocab}"
        print(f"{config:<22} {wall['nn.LSTM']:>12,.0f} {wall['ours']:>12,.0f} {wall['ours'] / wall['nn.LSTM']:>7.2f}x"
              f"   {cpu['nn.LSTM']:>10,.0f} {cpu['ours']:>10,.0f} {cpu['ours'] / cpu['nn.LSTM']:>7.2f}x", flush=True)


if __name__ == "__main__":
    main()
