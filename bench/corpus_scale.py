"""Training start on large corpora: train.py's peak resident memory and its seconds to the first
iteration, on synthetic corpora of growing size (the splits are memory-mapped, so the peak should not
grow with the corpus).

    .venv/bin/python bench/corpus_scale.py                                 # 1, 4 and 10 GiB
    .venv/bin/python bench/corpus_scale.py -sizes 0.25,1 -sources h5        # quick
    .venv/bin/python bench/corpus_scale.py -baseline ../before -baseline_sizes 1   # and another tree's code

For each size (-sizes, GiB) the corpus is bench/val_speed.py's (a seeded synthetic text of 65
characters, written in chunks), in a temporary folder under the system's temp folder that is removed
after each size, on an error, Ctrl-C and SIGTERM too. The free disk is checked first; a size that
does not fit is skipped, with a note. Then for each source (-sources):
  h5        preprocess.py at its defaults (-val_frac 0.05), then train.py -input_h5 -input_json
  data_dir  the text as DIR/input.txt, its cache built by preprocess.py as train.py's first use builds
            it (-val_frac 0 -test_frac 0 into DIR/input.h5 and input.json), then train.py -data_dir DIR
train.py runs at its defaults on the CPU (-gpuid -1: lstm 2x128, batch 50 x 50, all cores) with
-print_every 1, a fresh process per run, killed (SIGKILL, so no checkpoint) once it prints its first
iteration. Measured: its seconds to the 'vocab size' line (the data loaded) and to the first
iteration line, and its peak resident memory: VmHWM of /proc/PID/status read at the first iteration
(the child's own: the high-water mark starts afresh at exec, unlike ru_maxrss), with RssAnon and
RssFile then (the resident pages of a mapped split are file-backed). With -baseline the same runs
are made with another tree's train.py and preprocess.py (a clone of the code before a change), at
-baseline_sizes only (default 1 GiB: code that reads the splits in needs several times the corpus in
memory). A run whose resident memory passes -max_rss_gib (default 3/4 of the memory available at the
start) is killed and reported as such, before the machine's out-of-memory killer would pick a
process. Not part of the test run.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from val_speed import terminated_as_exit, write_corpus  # noqa: E402  (this folder: the same corpus)

GIB, MIB = 1 << 30, 1 << 20
SOURCES = ("h5", "data_dir")
FIRST_ITERATION = re.compile(r"^1/\d+ \(epoch .*time/batch = ([0-9.]+)s")
GOAL_PEAK_MIB, GOAL_SECONDS = 300, 30.0  # the largest size against the 1 GiB run, and its first iteration


@dataclass
class Start:
    """One train.py run to its first iteration (or to its kill for using too much memory)."""
    tree: str  # "this" or "baseline"
    source: str
    size_gib: float
    data_seconds: float = float("nan")  # to the 'vocab size' line
    first_seconds: float = float("nan")  # to the first iteration line
    peak: int = 0  # VmHWM, bytes
    anon: int = 0  # RssAnon at the first iteration
    file: int = 0  # RssFile at the first iteration
    step_seconds: float = float("nan")  # the first iteration's own time/batch
    batches: str = ""  # train.py's 'batches:' line, or why there is no first iteration


def memory_of(pid: int) -> dict[str, int]:
    """VmHWM, VmRSS, RssAnon and RssFile of a live process, in bytes (Linux); {} once it is gone."""
    found = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                    found[key] = int(value.split()[0]) * 1024
    except OSError:
        return {}
    return found


def watch(child: subprocess.Popen, limit: int, killed: threading.Event) -> None:
    """Kill the child if its resident memory passes `limit`: before the machine's out-of-memory
    killer would pick a process, perhaps another's."""
    while child.poll() is None:
        if memory_of(child.pid).get("VmRSS", 0) > limit:
            killed.set()
            child.kill()
            return
        time.sleep(0.05)


def train_to_first_iteration(start: Start, tree: str, data_args: list[str], folder: str, limit: int) -> Start:
    """`tree`'s train.py on the data until its first iteration line: the times, its memory then."""
    command = [sys.executable, os.path.join(tree, "train.py"), *data_args, "-gpuid", "-1", "-print_every", "1",
               "-eval_val_every", "1000000000", "-checkpoint_dir", os.path.join(folder, "cv")]
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})  # each line when it is said
    assert child.stdout is not None  # stdout=PIPE
    killed = threading.Event()
    threading.Thread(target=watch, args=(child, limit, killed), daemon=True).start()
    said = []
    try:
        for line in child.stdout:
            said.append(line.rstrip("\n"))
            if line.startswith("vocab size"):
                start.data_seconds = time.perf_counter() - started
            elif line.startswith("batches:"):
                start.batches = line.strip()
            elif first := FIRST_ITERATION.match(line):
                start.first_seconds, start.step_seconds = time.perf_counter() - started, float(first.group(1))
                memory = memory_of(child.pid)
                start.peak, start.anon, start.file = memory["VmHWM"], memory["RssAnon"], memory["RssFile"]
                return start
    finally:
        child.kill()
        child.wait()
    if killed.is_set():
        start.batches = f"killed at {limit / GIB:.1f} GiB resident (-max_rss_gib) before its first iteration"
        return start
    sys.exit(f"train.py ({tree}) ended before its first iteration:\n" + "\n".join(said[-20:]))


def preprocess(tree: str, text: str, h5: str, js: str, fractions: list[str]) -> float:
    """`tree`'s preprocess.py on the text; its seconds."""
    started = time.perf_counter()
    subprocess.run([sys.executable, os.path.join(tree, "preprocess.py"), "-input", text, "-output_h5", h5,
                    "-output_json", js, "-quiet", *fractions], cwd=tree, check=True)
    return time.perf_counter() - started


def runs_at(size_gib: float, args: argparse.Namespace, folder: str) -> list[Start]:
    """Every source and tree at one size, on one corpus written into `folder`."""
    trees = [("this", REPO)] + ([("baseline", args.baseline)] if args.baseline and size_gib in args.baseline_sizes
                                else [])
    text = os.path.join(folder, "data", "input.txt")
    os.makedirs(os.path.dirname(text))
    started = time.perf_counter()
    write_corpus(text, int(size_gib * GIB))
    print(f"{size_gib:g} GiB: corpus written in {time.perf_counter() - started:.1f} s", flush=True)
    starts = []
    for source in args.sources:
        if source == "h5":
            h5, js = os.path.join(folder, "input.h5"), os.path.join(folder, "input.json")
            seconds = preprocess(REPO, text, h5, js, [])
            data_args = ["-input_h5", h5, "-input_json", js]
        else:  # the cache train.py -data_dir would build on first use
            h5, js = os.path.join(folder, "data", "input.h5"), os.path.join(folder, "data", "input.json")
            seconds = preprocess(REPO, text, h5, js, ["-val_frac", "0", "-test_frac", "0"])
            data_args = ["-data_dir", os.path.dirname(text)]
        print(f"  {source}: preprocessed in {seconds:.1f} s", flush=True)
        for tree, path in trees:
            run = train_to_first_iteration(Start(tree, source, size_gib), path, data_args, folder, args.max_rss)
            starts.append(run)
            print(f"  {source}, {tree}: first iteration at {run.first_seconds:.1f} s, peak {run.peak / MIB:,.0f} "
                  f"MiB {run.batches}", flush=True)
        if source == "h5":
            os.remove(h5)  # disk for the next source
    return starts


def needed_bytes(size_gib: float) -> int:
    """Disk a size needs at once: the text and one HDF5 file (one byte a token: about the text's
    size), with room to spare."""
    return int(size_gib * GIB * 2.2) + 256 * MIB


def available_memory() -> int:
    """MemAvailable of /proc/meminfo, in bytes."""
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def report(starts: list[Start]) -> None:
    print("\ncorpus    source    code      data loaded s  first iteration s  (its step s)  peak RSS MiB  anon MiB  "
          "file MiB  batches")
    for s in starts:
        print(f"{s.size_gib:4g} GiB  {s.source:<8}  {s.tree:<8}  {s.data_seconds:13.1f}  {s.first_seconds:17.1f}  "
              f"{s.step_seconds:12.2f}  {s.peak / MIB:12,.0f}  {s.anon / MIB:8,.0f}  {s.file / MIB:8,.0f}  {s.batches}")
    print("(seconds from train.py's start; data loaded: its 'vocab size' line; its step: the first iteration's "
          "time/batch; peak: VmHWM at the first iteration; anon, file: RssAnon and RssFile then)")
    for tree in ("this", "baseline"):
        for source in SOURCES:
            runs = {s.size_gib: s for s in starts if s.tree == tree and s.source == source}
            if 1 not in runs or max(runs) <= 1:
                continue
            one, largest = runs[1], runs[max(runs)]
            if not (one.peak and largest.peak):
                print(f"goal ({tree}, {source}): NOT met, a run was killed")
                continue
            grown = (largest.peak - one.peak) / MIB
            met = grown <= GOAL_PEAK_MIB and largest.first_seconds <= GOAL_SECONDS
            print(f"goal ({tree}, {source}): at {max(runs):g} GiB the peak is {grown:+,.0f} MiB from 1 GiB's "
                  f"(at most +{GOAL_PEAK_MIB}) and the first iteration at {largest.first_seconds:.1f} s (at most "
                  f"{GOAL_SECONDS:g}): {'met' if met else 'NOT met'}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-sizes", default="1,4,10", help="corpus sizes in GiB, comma-separated")
    parser.add_argument("-sources", default="h5,data_dir", help="h5 and/or data_dir (docstring)")
    parser.add_argument("-baseline", default="", help="another tree (a clone) whose train.py and preprocess.py "
                                                      "are run too")
    parser.add_argument("-baseline_sizes", default="1", help="the sizes (GiB) at which -baseline runs")
    parser.add_argument("-folder", default=tempfile.gettempdir(), help="where the temporary folders go")
    parser.add_argument("-max_rss_gib", type=float, default=0.0,
                        help="a train.py run is killed past this resident memory; 0 = 3/4 of the memory available")
    args = parser.parse_args()
    try:
        args.sizes = [float(n) for n in args.sizes.split(",") if n]
        args.baseline_sizes = [float(n) for n in args.baseline_sizes.split(",") if n]
    except ValueError:
        parser.error("-sizes and -baseline_sizes are comma-separated numbers of GiB")
    args.sources = [s for s in args.sources.split(",") if s]
    if not args.sizes or any(n <= 0 for n in args.sizes) or not set(args.sources) <= set(SOURCES):
        parser.error(f"-sizes must be positive and -sources from {', '.join(SOURCES)}")
    if args.baseline and not os.path.isfile(os.path.join(args.baseline, "train.py")):
        parser.error(f"-baseline {args.baseline} has no train.py")
    args.max_rss = int(args.max_rss_gib * GIB) or available_memory() * 3 // 4
    return args


def main() -> None:
    args = parse_args()
    print(f"{os.cpu_count()} cores, {available_memory() / GIB:.1f} GiB memory available (train.py killed past "
          f"{args.max_rss / GIB:.1f} GiB), load average {os.getloadavg()[0]:.1f}, temporary folders under "
          f"{args.folder}", flush=True)
    started = time.perf_counter()
    starts: list[Start] = []
    with terminated_as_exit():
        for size in args.sizes:
            free = shutil.disk_usage(args.folder).free
            if free < needed_bytes(size):
                print(f"{size:g} GiB: skipped, {needed_bytes(size) / GIB:.1f} GiB of disk needed and "
                      f"{free / GIB:.1f} free under {args.folder} (-sizes for smaller corpora)", flush=True)
                continue
            with tempfile.TemporaryDirectory(prefix="corpus_scale_", dir=args.folder) as folder:
                starts += runs_at(size, args, folder)
    report(starts)
    print(f"load average {os.getloadavg()[0]:.1f} at the end; the benchmark took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
