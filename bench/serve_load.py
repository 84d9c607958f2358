"""Serving load: requests per second and latency of serve.py's /generate, n=1, length=200.

    .venv/bin/python bench/serve_load.py [-checkpoint cv/lm_epoch30.pt] [-requests 96] [-rounds 3]
        [-clients 1,4,16] [-threads 1,0] [-length 200]

Starts `python serve.py CHECKPOINT -port 0 -gpuid -1 -quiet -threads T` on a free loopback port (by
default on an LSTM 2 x 128 over a 65-character vocabulary, char-rnn's default size, random
weights: the speed does not depend on them), and for each -threads value T and each number of
clients C sends a fixed number of requests (-requests, after a warm-up of C requests) from C
client threads, each request on a connection of its own, as rnn-writer makes them. Prints the
requests per second over the whole batch and the 50th and 99th percentile of a request's latency
(from connecting to the last byte of the reply). Loopback only: nothing leaves the machine.
"""
import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from model import CharRNN
from util.checkpoint import FORMAT, save_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
URL_LINE = re.compile(r" at (http://\S+/) ")


def default_checkpoint(folder: str) -> str:
    """An LSTM 2 x 128 over 65 characters, saved as train.py saves one (the parts serve.py reads)."""
    tokens = [chr(c) for c in range(32, 97)]
    torch.manual_seed(0)
    model = CharRNN("lstm", len(tokens), 128, 2)
    model.initialize()
    path = os.path.join(folder, "lstm_2x128.pt")
    save_checkpoint(path, {"format": FORMAT, "model": model.shape(), "state_dict": model.state_dict(),
                           "vocab": {"tokens": tokens, "encoding": "utf-8"}, "opt": {}, "iteration": 0,
                           "epoch": 0.0, "train_losses": [], "val_losses": [], "val_loss": None})
    return path


def start_server(checkpoint: str, threads: int, max_length: int) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, os.path.join(REPO, "serve.py"), checkpoint, "-port", "0",
                                "-gpuid", "-1", "-quiet", "-threads", str(threads), "-max_length", str(max_length)],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        if match := URL_LINE.search(line):
            return process, match.group(1)
    raise SystemExit(f"serve.py exited with status {process.wait()} before serving")


def request(base: str, length: int, seed: int) -> float:
    """Seconds for one GET /generate?n=1&length=..., reply read in full."""
    start = time.perf_counter()
    with urllib.request.urlopen(f"{base}generate?n=1&length={length}&seed={seed}", timeout=300) as reply:
        reply.read()
        assert reply.status == 200
    return time.perf_counter() - start


def percentile(sorted_values: list[float], share: float) -> float:
    """The nearest-rank percentile: the smallest value with at least `share` of the values at or below it."""
    return sorted_values[max(0, math.ceil(share * len(sorted_values)) - 1)]


def load(base: str, clients: int, requests: int, length: int, rounds: int) -> tuple[float, float, float]:
    """(requests per second, p50 seconds, p99 seconds) of `requests` requests from `clients` threads:
    of the round (of `rounds`) with the most requests per second, the least disturbed by other work."""
    best: tuple[float, float, float] = (0.0, 0.0, 0.0)
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda seed: request(base, length, seed), range(clients)))  # warm-up
        for _ in range(rounds):
            start = time.perf_counter()
            latencies = sorted(pool.map(lambda seed: request(base, length, seed), range(requests)))
            rate = requests / (time.perf_counter() - start)
            if rate > best[0]:
                best = (rate, percentile(latencies, 0.5), percentile(latencies, 0.99))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-checkpoint", default="", help="checkpoint to serve (default: a random LSTM 2 x 128, V 65)")
    parser.add_argument("-requests", type=int, default=96, help="requests timed per row")
    parser.add_argument("-clients", default="1,4,16", help="numbers of concurrent clients, one row each")
    parser.add_argument("-threads", default="1,0", help="serve.py -threads values, one table each (0 = all cores)")
    parser.add_argument("-length", type=int, default=200, help="characters per request")
    parser.add_argument("-rounds", type=int, default=3, help="timed rounds per row; the fastest is shown")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable); "
          f"{args.requests} requests per round, best of {args.rounds}, n=1, length={args.length}")
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = args.checkpoint or default_checkpoint(folder)
        for threads in (int(t) for t in args.threads.split(",")):
            process, base = start_server(checkpoint, threads, args.length)
            try:
                print(f"\nserve.py -threads {threads}  ({os.path.basename(checkpoint)})")
                print(f"{'clients':>8} {'requests/s':>11} {'p50 ms':>8} {'p99 ms':>8}")
                for clients in (int(c) for c in args.clients.split(",")):
                    rate, p50, p99 = load(base, clients, args.requests, args.length, args.rounds)
                    print(f"{clients:>8} {rate:>11.1f} {p50 * 1000:>8.0f} {p99 * 1000:>8.0f}", flush=True)
            finally:
                process.terminate()
                process.wait()


if __name__ == "__main__":
    main()
