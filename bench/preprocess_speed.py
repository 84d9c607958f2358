"""Preprocessing speed and memory: util.corpus.preprocess against a plain per-character loop.

    python bench/preprocess_speed.py                  # builds a ~100 MB mixed English/Chinese text
    python bench/preprocess_speed.py -size_mb 20      # smaller
    python bench/preprocess_speed.py -input big.txt   # your own UTF-8 file

Each contender runs in its own subprocess, so its peak resident memory is not mixed up with the
other's or with building the text. The peak is the child's own VmHWM from /proc/self/status
(Linux): ru_maxrss is not used there because Linux carries the parent's high-water mark into a
child across vfork/exec, which inflates small figures (elsewhere ru_maxrss from os.wait4 is the
fallback). A third child that only imports the same modules gives the interpreter + imports
baseline, which is reported separately and subtracted. The plain loop runs on a slice of the text (-naive_mb) when
the text is larger, and its speed is compared in MB/s. Not part of the test run.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

SHAKESPEARE = os.path.join(REPO, "data", "tinyshakespeare", "input.txt")
CHINESE_CANDIDATES = [os.path.join(REPO, "data", "hongloumeng", "input.txt"),
                      os.path.join(REPO, "data", "hongloumeng.txt"), "/work/shared/data/hongloumeng.txt"]
MB = 1 << 20
TARGET_MB_S, TARGET_MEMORY = 50.0, 3.0


# ---- the contenders (run inside a worker subprocess) ----------------------------------------------

def run_ours(path: str, h5: str, js: str) -> dict:
    from util.corpus import preprocess

    vocab, sizes = preprocess(path, h5, js, 0.05, 0.0, "utf-8", log=lambda _: None)
    return {"vocab": len(vocab), "tokens": sizes.train + sizes.val + sizes.test}


def run_naive(path: str, h5: str, js: str) -> dict:
    """What a straightforward script does: read it all, a dict lookup per character, write."""
    import h5py
    import numpy as np

    with open(path, encoding="utf-8", newline="") as handle:
        text = handle.read()
    if text.startswith("\ufeff"):
        text = text[1:]
    tokens = sorted(set(text))
    token_to_idx = {t: i + 1 for i, t in enumerate(tokens)}
    dtype = np.uint8 if len(tokens) <= 255 else np.uint16 if len(tokens) <= 65535 else np.uint32
    ids = np.empty(len(text), dtype=dtype)
    for i, ch in enumerate(text):
        ids[i] = token_to_idx[ch]
    total = len(ids)
    val = int(0.05 * total)
    with h5py.File(h5, "w") as f:
        f.create_dataset("train", data=ids[:total - val])
        f.create_dataset("val", data=ids[total - val:])
        f.create_dataset("test", data=ids[:0])
    with open(js, "w", encoding="utf-8") as f:
        json.dump({"idx_to_token": {str(i): t for t, i in token_to_idx.items()}, "token_to_idx": token_to_idx},
                  f, ensure_ascii=False)
    return {"vocab": len(tokens), "tokens": total}


def own_peak_rss() -> int | None:
    """This process's peak resident memory in bytes (VmHWM), or None where /proc is missing."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def worker(kind: str, path: str, h5: str, js: str) -> None:
    import h5py  # noqa: F401  the same imports for every kind, so the baseline is comparable
    import numpy  # noqa: F401

    import util.corpus  # noqa: F401

    report: dict[str, float | None] = {"rss_after_imports": own_peak_rss()}
    if kind != "baseline":
        start, cpu = time.perf_counter(), time.process_time()
        report.update((run_ours if kind == "ours" else run_naive)(path, h5, js))
        report["seconds"] = time.perf_counter() - start
        report["cpu_seconds"] = time.process_time() - cpu
    report["own_peak_rss"] = own_peak_rss()
    print(json.dumps(report))


def measure(kind: str, path: str, folder: str) -> dict:
    """Run one contender in a child process; add its own peak RSS (bytes) from wait4."""
    h5, js = os.path.join(folder, f"{kind}.h5"), os.path.join(folder, f"{kind}.json")
    child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", kind, path, h5, js],
                             stdout=subprocess.PIPE, cwd=REPO)
    assert child.stdout is not None  # stdout=PIPE
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        sys.exit(f"{kind} worker failed with status {child.returncode}")
    report = json.loads(out)
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is KiB on Linux, bytes on macOS
    report["peak_rss"] = report["own_peak_rss"] or usage.ru_maxrss * scale
    report["bytes"] = os.path.getsize(path)
    report["h5"], report["json"] = h5, js
    return report


# ---- the text ---------------------------------------------------------------------------------------

def build_text(path: str, size: int) -> None:
    """Tiny Shakespeare with a line of 红楼梦 after every 20 English lines, repeated to `size` bytes
    (cut at a line end, so the file is valid UTF-8 and has a mixed vocabulary)."""
    with open(SHAKESPEARE, encoding="utf-8") as f:
        english = f.read().splitlines(keepends=True)
    chinese_path = next((p for p in CHINESE_CANDIDATES if os.path.exists(p)), None)
    chinese = []
    if chinese_path:
        with open(chinese_path, encoding="utf-8") as f:
            chinese = [line if line.endswith("\n") else line + "\n" for line in f.read().splitlines() if line.strip()]
    lines, c = [], 0
    for i, line in enumerate(english):
        lines.append(line)
        if chinese and i % 20 == 19:
            lines.append(chinese[c % len(chinese)])
            c += 1
    block = "".join(lines).encode("utf-8")
    with open(path, "wb") as f:
        written = 0
        while written < size:
            piece = block[:size - written]
            if len(piece) < len(block):
                piece = piece[:piece.rfind(b"\n") + 1] or piece[:1]
            f.write(piece)
            written += len(piece)


def slice_text(source: str, path: str, size: int) -> None:
    with open(source, "rb") as f:
        data = f.read(size)
    cut = data.rfind(b"\n") + 1
    with open(path, "wb") as f:
        f.write(data[:cut] if cut else data)


# ---- main -------------------------------------------------------------------------------------------

def main(argv: list[str]) -> None:
    from util.options import Option, parse_options

    opt = parse_options(argv, "bench/preprocess_speed.py", __doc__.splitlines()[0], [
        Option("input", "", "UTF-8 text to use instead of the generated one"),
        Option("size_mb", 100.0, "size of the generated text in MiB"),
        Option("naive_mb", 20.0, "largest slice (MiB) the plain per-character loop is run on"),
        Option("folder", "", "where to write the text and outputs (default: a temporary folder)"),
    ]).values
    with tempfile.TemporaryDirectory(dir=opt.folder or None) as folder:
        path = opt.input
        if not path:
            path = os.path.join(folder, "bench.txt")
            start = time.perf_counter()
            build_text(path, int(opt.size_mb * MB))
            print(f"built {path}: {os.path.getsize(path) / MB:.1f} MiB in {time.perf_counter() - start:.1f}s")
        size = os.path.getsize(path)
        naive_path = path
        if size > opt.naive_mb * MB:
            naive_path = os.path.join(folder, "naive_slice.txt")
            slice_text(path, naive_path, int(opt.naive_mb * MB))
        print(f"cpu cores: {os.cpu_count()}, python {sys.version.split()[0]}")

        baseline = measure("baseline", path, folder)["peak_rss"]
        ours = measure("ours", path, folder)
        naive = measure("naive", naive_path, folder)

        print(f"interpreter + imports baseline: {baseline / MB:.0f} MiB peak RSS")
        rows = []
        for name, r in (("util.corpus.preprocess", ours), ("per-character loop", naive)):
            mb_s, cpu_mb_s = r["bytes"] / MB / r["seconds"], r["bytes"] / MB / r["cpu_seconds"]
            extra = max(r["peak_rss"] - baseline, 0)
            rows.append((mb_s, cpu_mb_s))
            print(f"{name:<22} {r['bytes'] / MB:6.1f} MiB {r['tokens']:>12,} tokens  vocab {r['vocab']:>5}  "
                  f"wall {r['seconds']:6.2f}s = {mb_s:6.1f} MiB/s  cpu {r['cpu_seconds']:6.2f}s = "
                  f"{cpu_mb_s:6.1f} MiB/s  peak RSS {r['peak_rss'] / MB:5.0f} MiB = "
                  f"{r['peak_rss'] / r['bytes']:.2f}x file (above baseline {extra / MB:.0f} MiB = "
                  f"{extra / r['bytes']:.2f}x)")
        print(f"speed ratio (ours / per-character loop): {rows[0][0] / rows[1][0]:.1f}x wall, "
              f"{rows[0][1] / rows[1][1]:.1f}x cpu")
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        if load > (os.cpu_count() or 1):
            print(f"note: load average {load:.1f} on {os.cpu_count()} cores: wall times are inflated, "
                  f"cpu times are the fairer figure")
        if naive_path != path:
            print(f"(the per-character loop ran on the first {naive['bytes'] / MB:.1f} MiB; compare MiB/s)")
        with open(ours["json"], encoding="utf-8") as f:
            assert len(json.load(f)["idx_to_token"]) == ours["vocab"]
        speed_ok = rows[0][0] >= TARGET_MB_S
        memory_ok = ours["peak_rss"] <= TARGET_MEMORY * ours["bytes"]
        print(f"target >= {TARGET_MB_S:.0f} MiB/s (wall): {'met' if speed_ok else 'MISSED'}; "
              f"peak <= {TARGET_MEMORY:.0f}x file size: {'met' if memory_ok else 'MISSED'}")


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--worker":
        worker(*sys.argv[2:])
    else:
        from util.errors import run_main

        run_main(main)
