"""Copy check speed and memory: util.copycheck on a ~10 MiB training text against a plain `in` search.

    .venv/bin/python bench/copy_check_speed.py                       # English and Chinese, 10 MiB each
    .venv/bin/python bench/copy_check_speed.py -texts english -size_mb 50 -chars 5000

For each text (tiny Shakespeare, or 红楼梦, repeated to -size_mb MiB and cut at a line end), a
child process reads the file with util.copycheck.read_corpus (read, decode, index) and checks
three samples of -chars characters against it, each -repeats times (the median counts):
  mixed    half copied passages (40 to 200 characters from random places of the text), half random
           characters of the text's alphabet, alternating;
  random   random characters of the alphabet only: no copied passage, so the longest-passage
           search ends below min_copy (the most scans);
  copied   one passage of the text, whole.
The child's peak resident memory (resource.getrusage's ru_maxrss) is read after its imports, after
read_corpus and after the checks. The text file is written by the parent a piece at a time, so the
parent stays small (Linux carries a parent's high-water mark into its child). Then, on the source
file alone (about 1 MiB of English, 2.5 MiB of Chinese), the mixed sample is checked by
util.copycheck and by a plain script: `window in text` for each window of min_copy characters
(the share) and for the longest match from each sample position (the matching statistics, each
one at least the previous one less one). Both must give the same figures; the speed ratio is
printed. Not part of the test run.
"""
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from importlib.metadata import version
from typing import TypeVar

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

SOURCES = {"english": os.path.join(REPO, "data", "tinyshakespeare", "input.txt"),
           "chinese": os.path.join(REPO, "data", "hongloumeng", "input.txt")}
MB = 1 << 20
T = TypeVar("T")


def peak_mb() -> float:
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / MB


def samples(text: str, chars: int, seed: int = 0) -> dict[str, str]:
    """The three samples described in the module docstring, the same for a given text and seed."""
    generator = random.Random(seed)
    alphabet = sorted(set(text))
    parts: list[str] = []
    while sum(map(len, parts)) < chars:
        length = generator.randint(40, 200)
        if len(parts) % 2:
            parts.append("".join(generator.choices(alphabet, k=length)))
        else:
            start = generator.randrange(len(text) - length)
            parts.append(text[start:start + length])
    start = generator.randrange(len(text) - chars)
    return {"mixed": "".join(parts)[:chars], "random": "".join(generator.choices(alphabet, k=chars)),
            "copied": text[start:start + chars]}


def timed(function: Callable[[], T], repeats: int) -> tuple[float, T]:
    """The median wall time of `repeats` calls (at least one), and the last call's result."""
    times = []
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def naive_check(text: str, sample: str, min_copy: int) -> tuple[int, float]:
    """(longest, copied share) with Python's `in`: what a plain script does."""
    copied = [False] * len(sample)
    for start in range(len(sample) - min_copy + 1):
        if sample[start:start + min_copy] in text:
            copied[start:start + min_copy] = [True] * min_copy
    longest = length = 0
    for start in range(len(sample)):
        length = max(length - 1, 0)  # what matched from start-1 less its first character matches from start
        while start + length < len(sample) and sample[start:start + length + 1] in text:
            length += 1
        longest = max(longest, length)
    return longest, sum(copied) / len(sample) if sample else 0.0


def worker(path: str, source: str, chars: int, repeats: int) -> dict:
    """Runs in the child: read_corpus and the checks on the big file, then the comparison with
    the plain script on the source file."""
    import numpy

    from util.copycheck import COPY_LENGTH, Corpus, read_corpus

    report: dict = {"numpy": numpy.__version__, "torch": version("torch"), "peak_imports_mb": peak_mb()}
    start = time.perf_counter()
    corpus = read_corpus(path, "utf-8")
    report.update(build_s=time.perf_counter() - start, peak_build_mb=peak_mb(), tokens=len(corpus),
                  file_mb=os.path.getsize(path) / MB)
    with open(source, encoding="utf-8") as handle:
        text = handle.read()
    checks = {}
    for name, sample in samples(text, chars).items():
        seconds, result = timed(partial(corpus.check, sample), repeats)
        checks[name] = {"seconds": seconds, "longest": result.longest, "share": result.copied_share}
    report.update(checks=checks, peak_checks_mb=peak_mb())
    del corpus
    sample = samples(text, chars)["mixed"]
    small_build, small = timed(partial(Corpus, text), 1)
    ours_s, ours = timed(partial(small.check, sample), repeats)
    naive_s, naive = timed(partial(naive_check, text, sample, COPY_LENGTH), 1)
    if (ours.longest, round(ours.copied_share, 12)) != (naive[0], round(naive[1], 12)):
        sys.exit(f"results differ: ours {ours.longest}, {ours.copied_share}; plain {naive}")
    report["small"] = {"chars": len(text), "build_s": small_build, "check_s": ours_s, "naive_s": naive_s,
                       "longest": ours.longest, "share": ours.copied_share}
    return report


def write_text(source: str, path: str, size: int) -> None:
    """The source file repeated to `size` bytes, the last copy cut at a line end."""
    with open(source, "rb") as handle:
        block = handle.read()
    with open(path, "wb") as out:
        for _ in range(size // len(block)):
            out.write(block)
        rest = block[:size % len(block)]
        out.write(rest[:rest.rfind(b"\n") + 1])


def measure(name: str, folder: str, size_mb: float, chars: int, repeats: int) -> dict:
    path = os.path.join(folder, f"{name}.txt")
    write_text(SOURCES[name], path, int(size_mb * MB))
    child = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", path, SOURCES[name],
                            str(chars), str(repeats)], capture_output=True, text=True, cwd=REPO)
    if child.returncode:
        sys.exit(f"{name}: worker failed ({child.returncode}): {child.stderr.strip()}")
    return json.loads(child.stdout)


def show(name: str, r: dict, chars: int) -> None:
    index_mb = r["peak_build_mb"] - r["peak_imports_mb"]
    print(f"{name}: {r['file_mb']:.1f} MiB file, {r['tokens']:,} characters")
    print(f"  read_corpus (read, decode, index): {r['build_s']:.2f} s; peak RSS {r['peak_build_mb']:.0f} MiB "
          f"(imports {r['peak_imports_mb']:.0f} MiB, so +{index_mb:.0f} MiB = {index_mb / r['file_mb']:.1f}x the file)")
    for sample, c in r["checks"].items():
        print(f"  check, {chars:,}-character {sample:<6} sample: {c['seconds']:.3f} s  "
              f"(longest {c['longest']:,}, copied share {c['share']:.1%})")
    total = r["build_s"] + r["checks"]["mixed"]["seconds"]
    print(f"  read_corpus + one mixed check: {total:.2f} s; peak RSS after the checks {r['peak_checks_mb']:.0f} MiB")
    s = r["small"]
    print(f"  on the source file alone ({s['chars']:,} characters), mixed sample (longest {s['longest']:,}, "
          f"share {s['share']:.1%}, the same from both): Corpus {s['build_s']:.3f} s + check {s['check_s']:.3f} s "
          f"against the plain `in` script's {s['naive_s']:.2f} s: {s['naive_s'] / s['check_s']:,.0f}x the check, "
          f"{s['naive_s'] / (s['build_s'] + s['check_s']):,.0f}x build + check")


def main(argv: list[str]) -> None:
    from util.options import Option, parse_options

    opt = parse_options(argv, "bench/copy_check_speed.py", __doc__.splitlines()[0], [
        Option("texts", "english,chinese", "the texts, comma-separated (english, chinese)"),
        Option("size_mb", 10.0, "size of each repeated text in MiB"),
        Option("chars", 2000, "characters per sample"),
        Option("repeats", 3, "timed checks per sample (the median counts)"),
    ]).values
    names = [n for n in opt.texts.split(",") if n]
    if unknown := [n for n in names if n not in SOURCES]:
        sys.exit(f"unknown text(s): {', '.join(unknown)} (use {', '.join(SOURCES)})")
    print(f"cpu cores: {os.cpu_count()}, python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as folder:
        results = {name: measure(name, folder, opt.size_mb, opt.chars, opt.repeats) for name in names}
    first = next(iter(results.values()))
    print(f"numpy {first['numpy']}, torch {first['torch']}")
    for name, result in results.items():
        show(name, result, opt.chars)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))))
    else:
        from util.errors import run_main

        run_main(main)
