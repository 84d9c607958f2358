"""The zygote: one warm Python that has imported torch, numpy and h5py once and forks a child per
script run, which runs the script file as __main__ (runpy) with the run's argv, cwd, stdout and
stderr, exactly as `python script.py ...` would apart from those three modules being imported
already. An uncaught exception prints the interpreter's traceback and exits 1, as the interpreter
does. A script start costs seconds of CPU importing torch; a fork costs milliseconds.

conftest.run_script runs scripts here (Set CHAR_RNN_TEST_SUBPROCESS=1 for a fresh interpreter per
run); test_bad_input checks that a run here gives what a fresh interpreter gives.
"""
import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

ZYGOTE = r'''
import io, json, os, runpy, signal, sys, traceback
import h5py, numpy, torch  # the slow imports, once; nothing else runs before the fork
repo = sys.argv[1]
for request in sys.stdin:
    job = json.loads(request)
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            signal.alarm(job["timeout"])
            os.chdir(job["cwd"])
            os.dup2(os.open(job["stdin"] or os.devnull, os.O_RDONLY), 0)
            os.dup2(os.open(job["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 1)
            os.dup2(os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
            sys.stdin = io.TextIOWrapper(open(0, "rb", closefd=False), encoding="utf-8")
            sys.stdout = io.TextIOWrapper(open(1, "wb", closefd=False), encoding="utf-8", errors="strict")
            sys.stderr = io.TextIOWrapper(open(2, "wb", closefd=False), encoding="utf-8", errors="backslashreplace",
                                          line_buffering=True)
            sys.argv = [job["script"], *job["args"]]
            sys.path[0] = repo
            try:
                runpy.run_path(job["script"], run_name="__main__")
                code = 0
            except SystemExit as exit:
                if exit.code is None:
                    code = 0
                elif isinstance(exit.code, int):
                    code = exit.code
                else:
                    print(exit.code, file=sys.stderr)
                    code = 1
            except BaseException:
                traceback.print_exc()
                code = 1
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:
                    pass
        finally:
            os._exit(code & 0xFF)
    _, status = os.waitpid(pid, 0)
    print(json.dumps(os.waitstatus_to_exitcode(status)), flush=True)
'''


class Zygote:
    """One warm interpreter that forks a child per script run, one run at a time."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.lock = threading.Lock()
        self.count = 0
        self.process = subprocess.Popen([sys.executable, "-c", ZYGOTE, str(REPO)], cwd=logs, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True,
                                        env={**os.environ, "PYTHONIOENCODING": "utf-8"})

    def run(self, script: str, args: list, cwd: Path, timeout: float = 120, stdin: bytes | None = None,
            binary: bool = False) -> subprocess.CompletedProcess:
        """The run's status, stdout and stderr, as subprocess.run gives them (text, UTF-8; stdout
        as bytes when `binary`), `stdin` on its standard input (else nothing); a run past
        `timeout` raises subprocess.TimeoutExpired, as there."""
        with self.lock:
            self.count += 1
            out, err = self.logs / f"{self.count}.out", self.logs / f"{self.count}.err"
            given = self.logs / f"{self.count}.in"
            if stdin is not None:
                given.write_bytes(stdin)
            job = {"script": str(REPO / script), "args": list(map(str, args)), "cwd": str(cwd), "stdout": str(out),
                   "stderr": str(err), "stdin": "" if stdin is None else str(given), "timeout": max(1, round(timeout))}
            assert self.process.stdin and self.process.stdout
            self.process.stdin.write(json.dumps(job) + "\n")
            self.process.stdin.flush()
            reply = self.process.stdout.readline()
            assert reply, "the zygote died"
            status = json.loads(reply)
        if status == -signal.SIGALRM:
            raise subprocess.TimeoutExpired([script, *map(str, args)], timeout)
        stdout = out.read_bytes()
        return subprocess.CompletedProcess([script, *map(str, args)], status,
                                           stdout if binary else stdout.decode("utf-8", errors="replace"),
                                           err.read_bytes().decode("utf-8", errors="replace"))

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.wait(timeout=30)


IDLE: list[Zygote] = []  # zygotes between runs, for the next run_forked of any thread
IDLE_LOCK = threading.Lock()


def forking() -> bool:
    """Whether script runs may be forked from a zygote (CHAR_RNN_TEST_SUBPROCESS=1 says no)."""
    return os.environ.get("CHAR_RNN_TEST_SUBPROCESS") != "1"


def run_forked(script: str, args: list, cwd: Path, timeout: float, stdin: bytes | None = None,
               binary: bool = False) -> subprocess.CompletedProcess:
    """Zygote.run on an idle zygote (a new one when every zygote is busy: one per concurrent run)."""
    with IDLE_LOCK:
        zygote = IDLE.pop() if IDLE else None
    if zygote is None:
        zygote = Zygote(Path(tempfile.mkdtemp(prefix="zygote")))
    try:
        return zygote.run(script, args, cwd, timeout, stdin, binary)
    finally:
        with IDLE_LOCK:
            if zygote.alive():
                IDLE.append(zygote)


@atexit.register
def close_idle() -> None:
    with IDLE_LOCK:
        for zygote in IDLE:
            zygote.close()
            shutil.rmtree(zygote.logs, ignore_errors=True)
        IDLE.clear()
