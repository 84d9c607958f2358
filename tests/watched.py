"""A script run whose output is watched as it comes: start it, wait for a line, signal it, finish.

    run = start_script("train.py", folder, "-max_epochs", 1000)
    run.wait_for(lambda line: line.startswith("1/"))
    run.process.send_signal(signal.SIGTERM)
    returncode, stdout, stderr = run.finish()
"""
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import REPO


def start_script(script: str, cwd: Path, *args: object) -> "Watched":
    """`python REPO/script *args` in `cwd`, its output read as it comes."""
    return Watched(subprocess.Popen([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd,
                                    env={**os.environ, "PYTHONIOENCODING": "utf-8"}, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace"))


class Watched:
    """A running script whose output is read as it comes (by threads, so the pipes never fill)."""

    def __init__(self, process: subprocess.Popen):
        self.process = process
        self.lines: list[str] = []  # stdout's
        self.error_lines: list[str] = []  # stderr's
        self.open_pipes = 2
        self.condition = threading.Condition()
        self.threads = [threading.Thread(target=self._read, args=(process.stdout, self.lines), daemon=True),
                        threading.Thread(target=self._read, args=(process.stderr, self.error_lines), daemon=True)]
        for thread in self.threads:
            thread.start()

    def _read(self, pipe, lines: list[str]) -> None:
        for line in pipe:
            with self.condition:
                lines.append(line)
                self.condition.notify_all()
        with self.condition:
            self.open_pipes -= 1
            self.condition.notify_all()

    @property
    def stderr(self) -> str:
        return "".join(self.error_lines)

    def wait_for(self, predicate, timeout: float = 120, stderr: bool = False) -> str | None:
        """The first line of stdout (of stderr with `stderr`) satisfying predicate, waiting for it; None if
        the output ended first."""
        lines = self.error_lines if stderr else self.lines
        deadline = time.monotonic() + timeout
        seen = 0
        with self.condition:
            while True:
                for line in lines[seen:]:
                    if predicate(line):
                        return line
                seen = len(lines)
                if self.open_pipes == 0 or time.monotonic() > deadline:
                    return None
                self.condition.wait(timeout=max(0.0, deadline - time.monotonic()))

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for thread in self.threads:
            thread.join(timeout=30)
        return self.process.returncode, "".join(self.lines), self.stderr
