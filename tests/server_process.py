"""serve.py in a subprocess, as a user starts it, for tests/test_serve.py and tests/test_serve_browser.py.

    server = ServerProcess(checkpoint, "-max_length", 500, folder=tmp_path)   # starts it (-port 0, CPU)
    base = server.url()              # waits for its "serving ... at http://127.0.0.1:PORT/" line
    status, body = get_json(base + "generate?start_text=Speak&n=2")
    returncode, stdout, stderr = server.stop(signal.SIGINT)

Plus small HTTP helpers (standard library only): a JSON GET that returns 4xx replies instead of
raising, and a reader of /stream's server-sent events.
"""
from __future__ import annotations

import http.client
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from conftest import REPO

URL_LINE = re.compile(r" at (http://\S+/) ")


class ServerProcess:
    """`python serve.py checkpoint -port 0 -gpuid -1 *args`, its stdout read line by line on a thread
    and its stderr kept in folder/NAME.stderr."""

    def __init__(self, checkpoint: str | os.PathLike, *args: object, folder: Path, name: str = "serve"):
        self.stderr_path = folder / f"{name}.stderr"
        self.stderr_file = self.stderr_path.open("wb")
        env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "serve.py"), str(checkpoint), "-port", "0", "-gpuid", "-1", *map(str, args)],
            cwd=str(folder), stdout=subprocess.PIPE, stderr=self.stderr_file, stdin=subprocess.DEVNULL, env=env,
            text=True, encoding="utf-8", errors="replace")
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.base: str | None = None

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def url(self, timeout: float = 90) -> str:
        """The server's base URL (ending in /), once it has printed it; fails if it exits first."""
        while self.base is None:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"serve.py printed no URL in {timeout} s; stderr: {self.stderr()}") from None
            if line is None:
                raise AssertionError(f"serve.py exited ({self.process.wait()}) before serving: {self.stderr()}")
            self.stdout.append(line)
            match = URL_LINE.search(line)
            if match:
                self.base = match.group(1)
        return self.base

    def stderr(self) -> str:
        self.stderr_file.flush()
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 20) -> tuple[int, str, str]:
        """Send `signum`, wait for the exit: (status, everything it printed on stdout, its stderr)."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            returncode = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"serve.py did not stop within {timeout} s of signal {signum}; "
                                 f"stderr: {self.stderr()}") from None
        while (line := self.lines.get(timeout=5)) is not None:
            self.stdout.append(line)
        self.stderr_file.close()
        return returncode, "".join(self.stdout), self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.stderr_file.close()


def get(url: str, headers: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of a GET; a 4xx or 5xx reply is returned, not raised."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


def get_json(url: str, timeout: float = 60) -> tuple[int, Any]:
    """(status, parsed JSON body) of a GET whose reply must be JSON, whatever its status."""
    status, headers, body = get(url, timeout=timeout)
    assert headers["Content-Type"] == "application/json; charset=utf-8", (status, headers, body[:200])
    return status, json.loads(body.decode("utf-8"))


def host_port(base: str) -> tuple[str, int]:
    host, _, port = base.removeprefix("http://").rstrip("/").rpartition(":")
    return host, int(port)


def open_stream(base: str, query: str, timeout: float = 60) -> http.client.HTTPResponse:
    """A GET /stream?query whose reply has come (status and headers read, events not yet)."""
    connection = http.client.HTTPConnection(*host_port(base), timeout=timeout)
    connection.request("GET", "/stream?" + query)
    return connection.getresponse()


def read_events(response: http.client.HTTPResponse) -> list[tuple[str, Any]]:
    """Every server-sent event of a reply until the connection closes: (type, parsed JSON data)."""
    events, event, data = [], "message", ""
    for raw in response:
        line = raw.decode("utf-8").rstrip("\n")
        if line.startswith("event: "):
            event = line[len("event: "):]
        elif line.startswith("data: "):
            data += line[len("data: "):]
        elif not line and data:
            events.append((event, json.loads(data)))
            event, data = "message", ""
    return events


def first_event(response: http.client.HTTPResponse) -> dict:
    """The data of a reply's first event (a text piece), read alone: read_events reads the rest."""
    line = response.readline().decode("utf-8")
    assert line.startswith("data: ") and response.readline() == b"\n", line
    return json.loads(line[len("data: "):])


def streamed(base: str, query: str) -> tuple[str, dict]:
    """A whole /stream reply: the text its events carried and the end event's data."""
    response = open_stream(base, query)
    assert response.status == 200, (response.status, response.read())
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    events = read_events(response)
    assert [kind for kind, _ in events[:-1]] == ["message"] * (len(events) - 1) and events[-1][0] == "end", events
    return "".join(data["text"] for _, data in events[:-1]), events[-1][1]


SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM}
