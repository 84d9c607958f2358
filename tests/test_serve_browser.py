"""serve.py's page in a real browser: headless Chromium (Debian's `chromium`; .ci/run installs it when
missing) loads the page from a server in a subprocess; the test types a Chinese prime, clicks
Generate with the mouse, reads the streamed text back from the DOM, then clicks Stop during a long
generation and checks the server's generation ended, and shows an error message from the server.

The browser is driven over the Chrome DevTools Protocol on --remote-debugging-port, with a small
WebSocket client written here on the standard library (no new dependency). A screenshot of the
page after the first generation is saved in the test's temporary folder (its path is printed;
`pytest -s` shows it), and also to $SERVE_SCREENSHOT when that is set: to look at, not committed.
"""
import base64
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import torch

from model import CharRNN
from server_process import ServerProcess, get_json
from util.checkpoint import FORMAT, save_checkpoint

CJK_TEXT = "第一回甄士隐梦幻识通灵贾雨村风尘怀闺秀\n"
CJK_TOKENS = sorted(set(CJK_TEXT))
PRIME = "第一回"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DEVTOOLS_LINE = re.compile(r"DevTools listening on (ws://\S+)")


class WebSocket:
    """A client WebSocket (RFC 6455) for text messages: enough for the DevTools protocol."""

    def __init__(self, url: str, timeout: float = 30):
        parts = urlsplit(url)
        self.socket = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.socket.sendall(f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                            .encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.receive_some()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        assert head.split()[1] == b"101", head

    def receive_some(self) -> bytes:
        chunk = self.socket.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the browser closed the DevTools connection")
        return chunk

    def take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self.buffer += self.receive_some()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def send(self, text: str) -> None:
        payload, mask = text.encode("utf-8"), os.urandom(4)
        n = len(payload)
        length = bytes([0x80 | n]) if n < 126 else (
            struct.pack("!BH", 0x80 | 126, n) if n < 1 << 16 else struct.pack("!BQ", 0x80 | 127, n))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.socket.sendall(b"\x81" + length + mask + masked)

    def receive(self) -> str:
        """The next text message (fragments joined; pings and other control frames skipped)."""
        message = b""
        while True:
            first, second = self.take(2)
            n = second & 0x7F
            if n == 126:
                n = struct.unpack("!H", self.take(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self.take(8))[0]
            payload = self.take(n)
            opcode = first & 0x0F
            if opcode == 8:
                raise ConnectionError("the browser closed the DevTools connection")
            if opcode in (0, 1):
                message += payload
                if first & 0x80:
                    return message.decode("utf-8")

    def close(self) -> None:
        self.socket.close()


class DevTools:
    """Commands to one page over the DevTools protocol; events are ignored."""

    def __init__(self, url: str):
        self.socket, self.next_id = WebSocket(url), 0

    def call(self, method: str, **params: Any) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.socket.receive())
            if reply.get("id") == self.next_id:
                assert "error" not in reply, (method, reply["error"])
                return reply["result"]

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20) -> Any:
        """The value of `expression` once it is truthy, polled."""
        deadline = time.monotonic() + timeout
        while not (value := self.evaluate(expression)):
            assert time.monotonic() < deadline, f"timed out waiting for {expression}"
            time.sleep(0.05)
        return value

    def click(self, element_id: str) -> None:
        """A left click at the element's centre, as the mouse makes it."""
        x, y = self.evaluate(f"(() => {{ const r = document.getElementById('{element_id}').getBoundingClientRect();"
                             f" return [r.x + r.width / 2, r.y + r.height / 2]; }})()")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def type_into(self, element_id: str, text: str) -> None:
        """Empty the element, focus it and type `text` into it, as the keyboard does."""
        self.evaluate(f"(() => {{ const e = document.getElementById('{element_id}'); e.value = ''; e.focus(); }})()")
        if text:
            self.call("Input.insertText", text=text)

    def set_slider(self, element_id: str, value: int | float) -> None:
        self.evaluate(f"(() => {{ const s = document.getElementById('{element_id}'); s.value = {value};"
                      f" s.dispatchEvent(new Event('input')); }})()")


def find_browser() -> str:
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    pytest.skip("no Chromium to drive: Debian's `chromium` package is not installed (.ci/run installs it; "
                "`apt-get install chromium` where that cannot run)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve_browser")
    torch.manual_seed(0)
    model = CharRNN("gru", len(CJK_TOKENS), 16, 2)
    model.initialize()
    save_checkpoint(str(folder / "cjk.pt"), {
        "format": FORMAT, "model": model.shape(), "state_dict": model.state_dict(),
        "vocab": {"tokens": CJK_TOKENS, "encoding": "utf-8"}, "opt": {}, "iteration": 1, "epoch": 1.0,
        "train_losses": [], "val_losses": [], "val_loss": None})
    process = ServerProcess(folder / "cjk.pt", "-max_length", 1_000_000, folder=folder, name="cjk")
    yield process
    process.kill()


@pytest.fixture(scope="module")
def browser() -> str:
    return find_browser()


@pytest.fixture(scope="module")
def page(browser, server, tmp_path_factory):
    """DevTools on a headless Chromium showing the server's page, loaded."""
    base = server.url()
    profile = tmp_path_factory.mktemp("chromium")
    process = subprocess.Popen([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                "--no-first-run", "--no-default-browser-check", "--remote-debugging-port=0",
                                f"--user-data-dir={profile}", "--window-size=1000,900", base],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        endpoint = devtools_endpoint(process)
        with urllib.request.urlopen(f"http://{urlsplit(endpoint).netloc}/json/list", timeout=30) as reply:
            targets = json.load(reply)
        target = next(t for t in targets if t["type"] == "page" and t["url"].startswith(base))
        tools = DevTools(target["webSocketDebuggerUrl"])
        tools.wait_for("document.readyState === 'complete' && "
                       "document.getElementById('model')?.textContent.includes('vocabulary')")
        yield tools
        tools.socket.close()
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def devtools_endpoint(process: subprocess.Popen, timeout: float = 30) -> str:
    """The browser's DevTools WebSocket URL, from the line it prints on stderr at start-up."""
    found: list[str] = []

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            if not found and (match := DEVTOOLS_LINE.search(line)):
                found.append(match.group(1))
    reader = threading.Thread(target=read, daemon=True)  # keeps draining stderr afterwards
    reader.start()
    deadline = time.monotonic() + timeout
    while not found:
        assert process.poll() is None, f"chromium exited with status {process.returncode}"
        assert time.monotonic() < deadline, "chromium printed no DevTools address"
        time.sleep(0.05)
    return found[0]


def state(page: DevTools) -> str:
    return page.evaluate("document.body.dataset.state")


def test_generate_streams_into_the_page(page, tmp_path):
    page.type_into("prime", PRIME)
    page.set_slider("length", 120)
    page.set_slider("temperature", 0.8)
    page.set_slider("top_k", 10)
    page.click("generate")
    page.wait_for("['done', 'error'].includes(document.body.dataset.state)")
    status = page.evaluate("document.getElementById('status').textContent")
    assert state(page) == "done", status
    assert status.startswith("done: 120 characters")
    assert page.evaluate("document.getElementById('output-prime').textContent") == PRIME
    text = page.evaluate("document.getElementById('output-text').textContent")
    assert len(text) == 120 and set(text) <= set(CJK_TOKENS), text
    shot = base64.b64decode(page.call("Page.captureScreenshot", format="png")["data"])
    for path in (tmp_path / "serve_page.png", *([Path(os.environ["SERVE_SCREENSHOT"])]
                                               if os.environ.get("SERVE_SCREENSHOT") else [])):
        path.write_bytes(shot)
        print(f"screenshot of the page: {path}")


def test_stop_ends_the_generation_on_the_server(page, server):
    page.type_into("prime", "")
    page.set_slider("length", 1_000_000)
    page.click("generate")
    page.wait_for("document.getElementById('output-text').textContent.length > 50")
    assert state(page) == "generating"
    page.click("stop")
    page.wait_for("document.body.dataset.state === 'stopped'")
    assert page.evaluate("document.getElementById('status').textContent").startswith("stopped after")
    deadline = time.monotonic() + 10
    while get_json(server.url() + "info")[1]["active"]:
        assert time.monotonic() < deadline, "the server went on generating after Stop"
        time.sleep(0.05)
    assert "went away" in server.stderr() and "Traceback" not in server.stderr()


def test_an_error_from_the_server_is_shown(page):
    page.type_into("prime", "第一中")
    page.click("generate")
    page.wait_for("document.body.dataset.state === 'error'")
    message = page.evaluate("document.getElementById('status').textContent")
    assert "not in the model's vocabulary" in message and "'中'" in message
