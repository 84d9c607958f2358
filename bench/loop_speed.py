"""train.py's whole loop, this tree against another commit's, side by side: what one iteration
costs each, all of it (the step, the read-back, the checks, the progress line and the log row), on
the same text and options.

    .venv/bin/python bench/loop_speed.py -base REV [-config 2x128] [-iters 200] [-rounds 4]
        [-print_every 1] [-threads 1]

REV's tree is exported (git archive) into a temporary folder; both trees run with this
interpreter. The two run in turns, `rounds` times each, the order swapped every round, one at a
time. A measurement is two train.py runs of LSTM `config` on batch 50 x 50 of tiny Shakespeare
(../shared/data/tinyshakespeare.txt), `iters` and 2 x `iters` iterations long, each validating
once, at its end, on one batch: the difference of their wall-clock times over `iters` is the cost
of an iteration, the set-up and the validation cancelled. Printed: each tree's median over its
measurements and the ratio base / this tree (above 1: this tree is faster).
"""
import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEXT = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"


def export(revision: str, folder: Path) -> Path:
    """REV's committed tree, written into folder/tree."""
    tree = folder / "tree"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def run_seconds(tree: Path, work: Path, args: argparse.Namespace, iterations: int) -> float:
    """The wall-clock seconds of one train.py run of `tree`, `iterations` long, in a fresh folder."""
    rnn_size, num_layers = (int(n) for n in args.config.split("x")[::-1])
    run = Path(tempfile.mkdtemp(dir=work))
    (run / "data").mkdir()
    (run / "data" / "input.txt").write_bytes(TEXT.read_bytes())
    batches_per_epoch = int(TEXT.stat().st_size * 0.95) // (50 * 50)
    command = [sys.executable, str(tree / "train.py"), "-data_dir", "data", "-rnn_size", str(rnn_size),
               "-num_layers", str(num_layers), "-gpuid", "-1", "-threads", str(args.threads),
               "-max_epochs", str((iterations + 0.5) / batches_per_epoch), "-eval_val_every", str(10 ** 6),
               "-val_max_batches", "1", "-print_every", str(args.print_every)]
    started = time.perf_counter()
    subprocess.run(command, cwd=run, check=True, capture_output=True)
    return time.perf_counter() - started


def seconds_per_iteration(tree: Path, work: Path, args: argparse.Namespace) -> float:
    """What one more iteration costs a run of `tree`, all of the loop included: the difference of a
    run of 2 x iters and one of iters, over iters (the set-up and the last validation cancel)."""
    short = run_seconds(tree, work, args, args.iters)
    long = run_seconds(tree, work, args, 2 * args.iters)
    return (long - short) / args.iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-base", required=True, help="the commit to compare with (a git revision)")
    parser.add_argument("-config", default="2x128", help="LAYERSxSIZE of the LSTM")
    parser.add_argument("-iters", type=int, default=200)
    parser.add_argument("-rounds", type=int, default=4)
    parser.add_argument("-print_every", type=int, default=1)
    parser.add_argument("-threads", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        trees = {"base": export(args.base, work), "this": REPO}
        times: dict[str, list[float]] = {name: [] for name in trees}
        for k in range(args.rounds):
            for name in (list(trees) if k % 2 == 0 else list(trees)[::-1]):
                times[name].append(seconds_per_iteration(trees[name], work, args))
    base, this = (statistics.median(times[name]) for name in ("base", "this"))
    print(f"LSTM {args.config}, batch 50 x 50, -print_every {args.print_every}, -threads {args.threads}, "
          f"{args.iters} iterations x {args.rounds} runs each")
    for name, label, median in (("base", f"base {args.base}", base), ("this", "this tree", this)):
        runs = ", ".join(f"{1000 * t:.2f}" for t in times[name])
        print(f"  {label:<24} {1000 * median:7.2f} ms/iteration   (runs: {runs})")
    print(f"  ratio base / this tree: {base / this:.3f}")


if __name__ == "__main__":
    main()
