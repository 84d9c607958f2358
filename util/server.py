"""serve.py's HTTP side: the standard library's ThreadingHTTPServer, one thread per connection, all
of them sharing one loaded model (util.charmodel.CharModel, whose generate and stream keep their
state per call). The model computes for one request at a time (Server.model_lock): a /generate
call whole, a stream piece by piece, so streams advance together.

    GET /           the page (util/page.html); a client that asks for JSON only gets /info's JSON
    GET /generate   {"start_text", "completions": [...], "time"}: torch-rnn-server's reply
    GET /stream     server-sent events: {"text": ...} as the text is generated, then an `end` event
    GET /info       the model, its vocabulary size and the server's limits

A bad request is a 4xx reply with {"error": message, "message": message} ("message" is the field
rnn-writer shows); it never reaches stderr as a traceback. A client that goes away mid-stream has
its generation closed at the next piece.
"""
import ipaddress
import json
import math
import re
import signal
import socket
import sys
import threading
import time
import traceback
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from util.charmodel import CharModel
from util.errors import UserError, diagnostic

PAGE = Path(__file__).with_name("page.html")
DEFAULT_LENGTH = 200  # characters, when a request names no length (fewer if -max_length is lower)
MAX_FIELDS = 32  # query fields parsed at most; more is a bad request
LOGGED_TARGET = 120  # characters of a request's path logged (a long prime stays on one short line)
# the parameters of each endpoint; /stream sends one continuation, so it has no n
STREAM_PARAMETERS = ("start_text", "length", "temperature", "top_k", "top_p", "sample", "stop", "seed")
GENERATE_PARAMETERS = ("start_text", "n", *STREAM_PARAMETERS[1:])
INTEGER = re.compile(r"[+-]?[0-9]{1,30}")  # a seed may be any integer; 30 digits is plenty
# a client gone, or one that has read nothing for Handler.timeout seconds
DISCONNECTS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


@dataclass(frozen=True)
class Limits:
    max_length: int  # most characters a request may ask for
    max_samples: int  # most completions a /generate request may ask for


class BadRequest(Exception):
    """A request the server refuses: its status and a one-line message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def query_values(query: str, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query string's parameters, each named at most once and each one of `allowed`."""
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, errors="strict", max_num_fields=MAX_FIELDS)
    except UnicodeDecodeError:
        raise BadRequest("the query string is not UTF-8 once percent-decoded") from None
    except ValueError:
        raise BadRequest(f"the query string has more than {MAX_FIELDS} parameters") from None
    values: dict[str, str] = {}
    for name, value in pairs:
        if name not in allowed:
            raise BadRequest(f"unknown parameter {name!r} (known: {', '.join(allowed)})")
        if name in values:
            raise BadRequest(f"parameter {name} is given twice")
        values[name] = value
    return values


def raw_value(query: str, name: str) -> str:
    """A parameter's value as it stands in the query string, still percent-encoded ('' if absent)."""
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if urllib.parse.unquote_plus(key) == name:
            return value
    return ""


def present(values: dict[str, str], name: str) -> str | None:
    """A parameter's text, None when absent; a parameter with an empty value is missing its value."""
    text = values.get(name)
    if text is not None and not text.strip():
        raise BadRequest(f"parameter {name} has no value")
    return text


def integer(values: dict[str, str], name: str, default: int) -> int:
    text = present(values, name)
    if text is None:
        return default
    if not INTEGER.fullmatch(text.strip()):
        raise BadRequest(f"{name} must be an integer, not {text!r}")
    return int(text)


def number(values: dict[str, str], name: str, default: float) -> float:
    text = present(values, name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise BadRequest(f"{name} must be a number, not {text!r}")
    return value


def generation_arguments(values: dict[str, str], limits: Limits) -> dict[str, Any]:
    """The keyword arguments of CharModel.stream for a request's parameters, the server's limits checked
    (the model's check() judges the rest: temperature, top_k, top_p, the prime's characters)."""
    length = integer(values, "length", min(DEFAULT_LENGTH, limits.max_length))
    if length > limits.max_length:
        raise BadRequest(f"length must be at most {limits.max_length} (the server's -max_length), not {length}")
    seed = None if present(values, "seed") is None else integer(values, "seed", 0)
    sample = present(values, "sample")
    if sample not in (None, "0", "1"):
        raise BadRequest(f"sample must be 0 or 1, not {sample!r}")
    return {"prime": values.get("start_text", ""), "length": length,
            "temperature": number(values, "temperature", 1.0), "top_k": integer(values, "top_k", 0),
            "top_p": number(values, "top_p", 1.0), "sample": sample != "0", "stop": values.get("stop", ""),
            "seed": seed}


def sample_count(values: dict[str, str], limits: Limits) -> int:
    n = integer(values, "n", 1)
    if n < 1:
        raise BadRequest(f"n must be 1 or more, not {n}")
    if n > limits.max_samples:
        raise BadRequest(f"n must be at most {limits.max_samples} (the server's -max_samples), not {n}")
    return n


class Server(ThreadingHTTPServer):
    """The listening socket, the shared model, the limits, and the count of generations running."""
    daemon_threads = True  # a connection left open does not keep the process alive after a stop
    block_on_close = False  # nor does server_close wait for it (serve_until_stopped waits for generations)
    request_queue_size = 128  # connections waiting to be accepted (socketserver's 5 drops some of 16 at once)

    def __init__(self, address: tuple, family: int, model: CharModel, limits: Limits, quiet: bool, page: bytes):
        self.address_family = family
        self.model, self.limits, self.quiet, self.page = model, limits, quiet, page
        self.stopping = threading.Event()
        self.active, self.lock = 0, threading.Lock()
        # Held while the model computes: a whole /generate call, or one piece of a stream. Threads
        # stepping the model at once fight over the GIL for every small kernel call and make fewer
        # characters per second together than one alone (bench/serve_load.py, bench/README.md).
        self.model_lock = threading.Lock()
        super().__init__(address, Handler)

    @contextmanager
    def working(self) -> Iterator[None]:
        """Counts a generation as running while the block runs (/info's "active")."""
        with self.lock:
            self.active += 1
        try:
            yield
        finally:
            with self.lock:
                self.active -= 1

    def info(self) -> dict[str, Any]:
        vocab = self.model.vocab
        return {"model": self.model.describe(), "checkpoint": Path(self.model.path).name,
                "vocab_size": len(vocab), "byte_level": vocab.is_bytes, "max_length": self.limits.max_length,
                "max_samples": self.limits.max_samples, "default_length": min(DEFAULT_LENGTH, self.limits.max_length),
                "active": self.active}

    def handle_error(self, request: Any, client_address: Any) -> None:
        """An exception that escaped a handler: a client gone is one quiet line, anything else a bug."""
        if isinstance(sys.exc_info()[1], DISCONNECTS):
            self.note(f"{client_address[0]}: the client closed the connection")
        else:
            diagnostic(f"internal error serving {client_address[0]}:")
            traceback.print_exc()

    def note(self, line: str) -> None:
        if not self.quiet:
            diagnostic(line)


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"  # keep-alive for the JSON replies; a stream ends by closing
    server_version = "char-rnn-serve"
    disable_nagle_algorithm = True  # a streamed piece leaves at once, not after the previous one's ACK
    timeout = 60  # seconds a connection may sit idle (or half-sent) before it is closed

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        try:
            self.route(url.path, url.query)
        except BadRequest as error:
            self.send_json(error.status, {"error": str(error), "message": str(error)})
        except UserError as error:
            self.send_json(400, {"error": str(error), "message": str(error)})
        except DISCONNECTS:
            self.close_connection = True
            self.server.note(f"{self.client_address[0]}: the client went away before the reply")

    def route(self, path: str, query: str) -> None:
        if path == "/":
            if wants_json_only(self.headers.get("Accept", "")):
                self.send_json(200, {"message": "char-rnn server: " + self.server.model.describe(),
                                     **self.server.info()})
            else:  # the page reads no parameters: a link with some still opens it
                self.send_body(200, "text/html; charset=utf-8", self.server.page)
        elif path == "/generate":
            self.generate(query)
        elif path == "/stream":
            self.stream(query)
        elif path == "/info":
            query_values(query, ())
            self.send_json(200, self.server.info())
        else:
            raise BadRequest(f"no such page: {path} (try /, /generate, /stream or /info)", 404)

    def generate(self, query: str) -> None:
        """torch-rnn-server's /generate: start_text echoed as it came (percent-encoded: rnn-writer
        decodes it to match the reply to its request), the completions, and the time as a string."""
        values = query_values(query, GENERATE_PARAMETERS)
        arguments = generation_arguments(values, self.server.limits)
        n = sample_count(values, self.server.limits)
        start = time.perf_counter()
        with self.server.working(), self.server.model_lock:
            completions = self.server.model.generate(**arguments, num_samples=n)
        self.send_json(200, {"start_text": raw_value(query, "start_text"), "completions": completions,
                             "time": f"{time.perf_counter() - start:.2f}"})

    def stream(self, query: str) -> None:
        """Server-sent events: each piece as `data: {"text": ...}`, then `event: end` with the count of
        characters, the seconds taken, and whether the server's shutdown cut it short."""
        arguments = generation_arguments(query_values(query, STREAM_PARAMETERS), self.server.limits)
        model = self.server.model
        request = model.check(**arguments)  # an error is a JSON reply, before any event
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        pieces, characters, start, shutdown = model.pieces(request), 0, time.perf_counter(), False
        try:
            with self.server.working():  # until the end event is sent: a shutdown waits for it
                for piece in one_at_a_time(pieces, self.server.model_lock):
                    self.send_event("message", {"text": piece})
                    characters += len(piece)
                    if self.server.stopping.is_set():
                        shutdown = True
                        break
                self.send_event("end", {"characters": characters, "seconds": round(time.perf_counter() - start, 3),
                                        "shutdown": shutdown})
        except DISCONNECTS:
            self.server.note(f"{self.client_address[0]}: the client went away after {characters} characters; "
                             f"generation stopped")
        finally:
            # a generator's close() frees the generation's work at once, whichever way the loop ended
            pieces.close()

    def send_event(self, event: str, data: dict[str, Any]) -> None:
        line = json.dumps(data, ensure_ascii=False)
        head = "" if event == "message" else f"event: {event}\n"
        self.wfile.write(f"{head}data: {line}\n\n".encode())

    def send_json(self, status: int, body: dict[str, Any]) -> None:
        self.send_body(status, "application/json; charset=utf-8",
                       json.dumps(body, ensure_ascii=False).encode("utf-8") + b"\n")

    def send_body(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (a malformed request line, an unsupported method, a request line
        over 64 KiB) as JSON like the rest, the connection then closed."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # a request line that did not parse: reply with a status line
            self.request_version = "HTTP/1.0"
        text = message or self.responses.get(code, ("error",))[0]
        with suppress(*DISCONNECTS):
            self.send_json(code, {"error": text, "message": text})

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = getattr(self, "path", "")  # http.server sets it only once the request line parses
        target = path if len(path) <= LOGGED_TARGET else path[:LOGGED_TARGET] + "..."
        self.server.note(f"{self.client_address[0]} {self.command or '-'} {target or '-'} {code}")

    def log_message(self, format: str, *args: Any) -> None:
        self.server.note(f"{self.client_address[0]}: {(format % args)[:200]}")


def one_at_a_time(pieces: Iterator[str], lock: threading.Lock) -> Iterator[str]:
    """The pieces, each made while holding `lock` (released while the piece is sent): streams take
    turns with each other and with /generate calls. The turns are not strict (a FIFO hand-over per
    piece cost 40% of the characters per second, 4 streams at once): a stream's pieces come in
    bursts, 0.1 s apart at most in that measurement."""
    while True:
        with lock:
            piece = next(pieces, None)
        if piece is None:
            return
        yield piece


def wants_json_only(accept: str) -> bool:
    """Whether an Accept header asks for JSON and not HTML (rnn-writer's check that the server is up)."""
    return "application/json" in accept and "text/html" not in accept


def open_server(host: str, port: int, model: CharModel, limits: Limits, quiet: bool = False) -> Server:
    """A server bound to host:port (port 0: any free one), with a warning when the address is not loopback;
    a name that does not resolve or an address that cannot be bound is a UserError."""
    if not 0 <= port <= 65535:
        raise UserError(f"-port must be from 0 to 65535, not {port}")
    try:
        found = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise UserError(f"cannot listen on -host {host!r}: {error.strerror}") from None
    family, _, _, _, address = found[0]
    try:
        loopback = ipaddress.ip_address(str(address[0]).partition("%")[0]).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        diagnostic(f"warning: -host {host or address[0]} is not loopback: the model is then reachable by anyone "
                   f"who can reach this machine")
    page = PAGE.read_bytes()
    try:
        return Server(address, family, model, limits, quiet, page)
    except OSError as error:
        raise UserError(f"cannot listen on {host}:{port}: {error.strerror}") from None


def url(server: Server) -> str:
    host, port = server.server_address[:2]
    host = host.decode() if isinstance(host, bytes) else host
    shown = f"[{host}]" if server.address_family == socket.AF_INET6 else host
    return f"http://{shown}:{port}/"


def serve_until_stopped(server: Server, grace: float = 2.0) -> None:
    """Serve until SIGINT or SIGTERM; then stop listening, end the streams at their next piece and wait
    up to `grace` seconds for the generations still running. The signal handler only sets a flag,
    which the loop reads between requests: an exception raised from it could land anywhere in
    socketserver's code (while it starts a request's thread, say) and be taken for that request's."""
    stop = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda signum, frame: stop.set())
    server.timeout = 0.2  # seconds handle_request waits for a connection before the flag is read again
    try:
        while not stop.is_set():
            server.handle_request()
    finally:
        server.stopping.set()
        server.server_close()
        deadline = time.monotonic() + grace
        while server.active and time.monotonic() < deadline:
            time.sleep(0.02)
