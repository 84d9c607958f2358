"""Shared test helpers.

Import the plain helpers from any test file with

    from conftest import REPO, TINY_TEXT, run_script, assert_user_error, read_outputs, decode_outputs

(pytest puts tests/ on sys.path), and request `tiny_file` as a fixture. Script runs that execute
together (a pool of them, results by name) are runner.Runs; the .t7 fixture builders are t7_writer
and t7_graphs. Everything runs on the CPU; subprocesses use the interpreter running the tests.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
"""The repository root (the folder holding preprocess.py, train.py, ...)."""

if str(REPO) not in sys.path:  # so `import util.corpus` works however pytest was started
    sys.path.insert(0, str(REPO))

from zygote import forking, run_forked  # noqa: E402

TINY_TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
"""A short ASCII text with a newline-heavy layout like tiny Shakespeare (76 characters)."""


SCRIPT_HEADROOM_MB = 850
"""What a capped script may allocate beyond its imports: room for a tiny model and its data, far below
the gigabytes a hostile file asks for."""


def imports_footprint_mb() -> dict[str, int]:
    """A new interpreter's VmPeak (address space) and VmHWM (peak resident memory), in MiB, once it has
    imported torch, numpy and h5py: about 640 and 240 with the CPU build of torch; over 3,000 and 800
    with a CUDA build, which maps its CUDA libraries at import."""
    probe = ("import torch, numpy, h5py; from pathlib import Path; "
             "print(*(l.split()[1] for l in Path('/proc/self/status').read_text().splitlines() "
             "if l.startswith(('VmPeak:', 'VmHWM:'))))")
    peak, resident = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                    check=True).stdout.split()
    return {"VmPeak": int(peak) >> 10, "VmHWM": int(resident) >> 10}


IMPORTS_MB = imports_footprint_mb()

MEMORY_LIMIT_MB = IMPORTS_MB["VmPeak"] + SCRIPT_HEADROOM_MB
"""A script's address space under `run_script(..., memory_mb=MEMORY_LIMIT_MB)`: its imports, measured
with the torch build running the tests, and SCRIPT_HEADROOM_MB."""

RESIDENT_LIMIT_MB = IMPORTS_MB["VmHWM"] + 560
"""The most resident memory (VmHWM) a capped child that loads small files may reach: its imports and
room for the files, far below an inflated archive."""


def run_script(script: str, *args: str, cwd: str | os.PathLike | None = None, timeout: float = 120,
               env: dict | None = None, memory_mb: int | None = None,
               fresh: bool = False) -> subprocess.CompletedProcess:
    """Run `python REPO/script *args` as a user would and return the CompletedProcess.

    stdout/stderr are captured as text (UTF-8). `cwd` defaults to the repository root: pass a
    temporary folder whenever the script could write to a default path (data/input.h5, cv/).
    `env` entries are added to a copy of os.environ. `memory_mb` caps the script's address space
    (RLIMIT_AS): an allocation past it fails in the script, as MemoryError or a failed mmap.
    Never raises on a non-zero exit status; a run past `timeout` raises subprocess.TimeoutExpired.
    A run without `env` and `memory_mb` is forked from a zygote (tests/zygote.py: torch already
    imported) unless `fresh` or CHAR_RNN_TEST_SUBPROCESS=1 asks for a new interpreter.
    """
    if forking() and not (fresh or env or memory_mb):
        return run_forked(script, list(args), Path(cwd or REPO), timeout)
    full_env = {**os.environ, "PYTHONIOENCODING": "utf-8", **(env or {})}
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=str(cwd or REPO),
                          capture_output=True, text=True, encoding="utf-8", errors="replace",
                          timeout=timeout, env=full_env,
                          preexec_fn=None if memory_mb is None else lambda: limit_memory(memory_mb))


def limit_memory(megabytes: int) -> None:
    """Cap this process's address space (for a child, between fork and exec)."""
    import resource

    limit = megabytes << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


HEADROOM_MB = 512
"""What a forked test child may allocate beyond the address space it inherits (limit_growth; about 650 MB
once torch is imported): far more than small files need (the .t7 fuzz test's child, loading 480, grows
by under 10 MB), far less than the gigabytes a hostile file asks for."""


def limit_growth(megabytes: int = HEADROOM_MB) -> None:
    """Cap this process's address space at what it has now (VmSize) plus `megabytes`: for a child forked
    from pytest, which inherits torch and everything the tests imported."""
    pages = int(Path("/proc/self/statm").read_text().split()[0])
    limit_memory((pages * os.sysconf("SC_PAGE_SIZE") >> 20) + megabytes)


def data_folder(folder: Path, text: str) -> Path:
    """A char-rnn -data_dir: folder/input.txt holding `text` (UTF-8), its cache (input.h5/json)
    built now, as train.py's first use would build it: runs started together on a folder without
    it would all preprocess into the same files."""
    from util.data import load_data_dir

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "input.txt").write_text(text, encoding="utf-8")
    load_data_dir(str(folder), log=lambda _: None)
    return folder


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Check a script failed the user-facing way: status 1, one stderr line starting 'Error:',
    no traceback, and every fragment (case-sensitive) in that line. Returns the line."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error:"), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def read_outputs(h5_path: str | os.PathLike, json_path: str | os.PathLike) -> tuple[dict, dict]:
    """The raw contents of a preprocess.py output pair: ({split: ndarray}, parsed JSON)."""
    import h5py

    with open(json_path, encoding="utf-8") as handle:
        vocab = json.load(handle)
    with h5py.File(h5_path, "r") as h5:
        splits = {name: h5[name][()] for name in h5}
    return splits, vocab


def decode_outputs(h5_path: str | os.PathLike, json_path: str | os.PathLike) -> str | bytes:
    """train + val + test mapped back through the JSON's idx_to_token: the text (str), or the
    bytes when the JSON says encoding 'bytes'. A round trip gives back the input file."""
    splits, vocab = read_outputs(h5_path, json_path)
    table = vocab["idx_to_token"]
    ids = [int(i) for name in ("train", "val", "test") if name in splits for i in splits[name]]
    text = "".join(table[str(i)] for i in ids)
    return bytes(ord(c) for c in text) if vocab.get("encoding") == "bytes" else text


@pytest.fixture
def tiny_file(tmp_path: Path) -> Path:
    """TINY_TEXT written (UTF-8, no newline translation) to tmp_path/input.txt."""
    path = tmp_path / "input.txt"
    path.write_bytes(TINY_TEXT.encode("utf-8"))
    return path


@pytest.fixture(autouse=True)
def restore_torch_cpu_settings():
    """Scripts run in-process (sample.main) set the thread count and flush denormals to zero for
    the whole process; put both back so later tests (hypothesis needs subnormals) are unaffected."""
    import torch
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    torch.set_flush_denormal(False)
