"""Script runs that execute together: the one runner of the test suite.

Starting python and importing torch costs a second or more per script run, so the test modules
that run many start them all at the beginning, a few at a time, and each test waits for the runs
it looks at:

    runs = Runs(workers=3, root=tmp_path)
    runs.start("base", "train.py", "-data_dir", data)           # in a new folder root/base
    runs.start("again", "sample.py", checkpoint, after=("base",))
    runs.submit("cold", my_job, checkpoint)                      # any callable
    ok(runs["base"])                                             # waits; status 0, no traceback

Jobs start in the order they were submitted, so a job that waits for others (`after`) must be
submitted after them: it then never waits on a job that cannot start.
"""
from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from conftest import run_script


class Runs:
    """Named jobs (script runs, or any callables) on a pool of `workers` threads; runs[name] waits
    for one and returns its result (or raises its exception). `root` is where start() makes each
    run's folder. Use as a context manager, or call close(): runs not yet started are cancelled
    (a test that was skipped or deselected leaves them unneeded), running ones are waited for."""

    def __init__(self, workers: int, root: Path | None = None) -> None:
        self.root = root
        self.pool = ThreadPoolExecutor(workers)
        self.futures: dict[str, Future] = {}

    def submit(self, name: str, job: Callable[..., Any], *args: Any, after: Iterable[str] = (),
               **kwargs: Any) -> None:
        """Run job(*args, **kwargs) as `name` once the jobs named in `after` have finished."""
        assert name not in self.futures, f"two runs named {name}"
        waits = tuple(after)

        def run() -> Any:
            for other in waits:
                self[other]
            return job(*args, **kwargs)
        self.futures[name] = self.pool.submit(run)

    def start(self, name: str, script: str, *args: Any, cwd: Path | None = None, after: Iterable[str] = (),
              timeout: float = 300) -> None:
        """Run `python script *args` (conftest.run_script) as `name`, in `cwd` (default: the new
        folder root/name), once the runs named in `after` have finished."""
        self.submit(name, run_script, script, *args, cwd=cwd or self.folder(name), timeout=timeout, after=after)

    def folder(self, name: str) -> Path:
        """root/name, created if missing: the folder start() runs `name` in by default."""
        assert self.root is not None, "Runs(root=...) is needed for run folders"
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def __getitem__(self, name: str) -> Any:
        return self.futures[name].result()

    def results(self) -> dict[str, Any]:
        """Every job's result by name, waiting for all of them."""
        return {name: future.result() for name, future in self.futures.items()}

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Runs:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """Check a script run succeeded: status 0 and no traceback on stderr. Returns the run."""
    assert result.returncode == 0, (result.args, result.stdout[-1500:], result.stderr[-3000:])
    assert "Traceback" not in result.stderr, (result.args, result.stderr[-3000:])
    return result
