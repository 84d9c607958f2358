"""serve.py (README "Serving") end to end: real servers on free loopback ports, in subprocesses, spoken
to over HTTP with the standard library.

The module fixture builds three small checkpoints (an ASCII LSTM, a Chinese GRU, a byte-level
Torch7 RNN) and starts every server at once (starting python and importing torch is most of the
cost): one per checkpoint, and two more for the SIGINT and SIGTERM tests, which stop theirs.
"""
import json
import re
import socket
import threading
import time
import urllib.parse
from pathlib import Path
from unittest.mock import ANY

import numpy as np
import pytest
import torch

from conftest import TINY_TEXT, assert_user_error, run_script
from model import CharRNN
from server_process import (
    SIGNALS,
    ServerProcess,
    first_event,
    get,
    get_json,
    host_port,
    open_stream,
    read_events,
    streamed,
)
from t7_graphs import BUILDERS, NNGraph
from t7_writer import write_t7
from util.checkpoint import FORMAT, save_checkpoint
from util.errors import UserError

import serve

ASCII_TOKENS = sorted(set(TINY_TEXT))
CJK_TEXT = "第一回甄士隐梦幻识通灵贾雨村风尘怀闺秀\n"
CJK_TOKENS = sorted(set(CJK_TEXT))
BYTE_TOKENS = sorted({chr(b) for b in (CJK_TEXT + TINY_TEXT).encode("utf-8")})
MAX_LENGTH = 200_000  # long enough that a stream of it runs for many seconds (the disconnect test)
MAX_SAMPLES = 4
CLIENTS = 8


def checkpoint(model_type: str, tokens: list[str], size: int, layers: int, encoding: str = "utf-8") -> dict:
    """What load_checkpoint needs of a train.py checkpoint: format, shape, weights and vocabulary."""
    torch.manual_seed(len(tokens))
    model = CharRNN(model_type, len(tokens), size, layers)
    model.initialize()
    return {"format": FORMAT, "model": model.shape(), "state_dict": model.state_dict(),
            "vocab": {"tokens": tokens, "encoding": encoding}, "opt": {}, "iteration": 1, "epoch": 1.0,
            "train_losses": [], "val_losses": [], "val_loss": None}


def write_byte_t7(path: Path) -> None:
    """A char-rnn Torch7 checkpoint (byte-level, as every char-rnn model is) of a 1 x 16 RNN."""
    graph = NNGraph(np.random.default_rng(0), np.float32)
    gmodule, _ = BUILDERS["rnn"](graph, len(BYTE_TOKENS), 16, 1, 0.0)
    write_t7(path, {"protos": {"rnn": gmodule}, "vocab": {t: i for i, t in enumerate(BYTE_TOKENS, 1)},
                    "opt": {"model": "rnn", "rnn_size": 16, "num_layers": 1, "dropout": 0, "seq_length": 50}})


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("serve")
    save_checkpoint(str(folder / "ascii.pt"), checkpoint("lstm", ASCII_TOKENS, 32, 2))
    save_checkpoint(str(folder / "cjk.pt"), checkpoint("gru", CJK_TOKENS, 16, 2))
    write_byte_t7(folder / "bytes.t7")
    return folder


@pytest.fixture(scope="module")
def servers(folder):
    limits = ("-max_length", MAX_LENGTH, "-max_samples", MAX_SAMPLES)
    started = {"ascii": ServerProcess(folder / "ascii.pt", *limits, folder=folder, name="ascii"),
               "cjk": ServerProcess(folder / "cjk.pt", folder=folder, name="cjk"),
               "t7": ServerProcess(folder / "bytes.t7", folder=folder, name="t7"),
               **{name: ServerProcess(folder / "ascii.pt", *limits, folder=folder, name=name) for name in SIGNALS}}
    yield started
    for server in started.values():
        server.kill()


@pytest.fixture(scope="module")
def base(servers) -> str:
    return servers["ascii"].url()


def quiet(server: ServerProcess) -> None:
    """Nothing the server printed so far is a traceback."""
    assert "Traceback" not in server.stderr(), server.stderr()


def query(**parameters: object) -> str:
    return urllib.parse.urlencode(parameters, quote_via=urllib.parse.quote)


# ---- the JSON endpoint (torch-rnn-server's) --------------------------------------------------------

def test_generate_answers_as_torch_rnn_server(base, servers):
    status, body = get_json(base + "generate?start_text=Speak%2C%20speak&n=3&length=40&temperature=0.8&seed=7")
    assert status == 200
    assert set(body) == {"start_text", "completions", "time"}
    assert body["start_text"] == "Speak%2C%20speak"  # as it came, percent-encoded: rnn-writer decodes it
    assert re.fullmatch(r"\d+\.\d\d", body["time"])
    assert len(body["completions"]) == 3 and len(set(body["completions"])) == 3
    for completion in body["completions"]:
        assert len(completion) == 40 and set(completion) <= set(ASCII_TOKENS)
    assert get_json(base + "generate?start_text=Speak%2C%20speak&n=3&length=40&temperature=0.8&seed=7")[1][
        "completions"] == body["completions"]  # the seed makes it repeatable
    status, body = get_json(base + "generate")  # torch-rnn-server's defaults: no prime, one completion
    assert status == 200 and body["start_text"] == "" and len(body["completions"]) == 1
    assert len(body["completions"][0]) == 200
    quiet(servers["ascii"])


def test_generate_takes_the_generator_settings(base):
    def completions(**parameters: object) -> list[str]:
        status, body = get_json(base + "generate?" + query(start_text="All:", n=2, length=60, **parameters))
        assert status == 200, body
        return body["completions"]

    greedy = completions(sample=0)
    assert greedy[0] == greedy[1]
    assert completions(top_k=1, seed=3) == greedy  # one character left: the argmax
    assert completions(top_p=0.5, temperature=0.7, seed=3) == completions(top_p=0.5, temperature=0.7, seed=3)
    for completion in completions(stop="e", seed=5):
        assert "e" not in completion and len(completion) <= 60


def test_root_is_the_page_and_json_clients_get_a_message(base):
    status, headers, page = get(base, headers={"Accept": "text/html,*/*"})
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    text = page.decode("utf-8")
    for piece in ('id="prime"', 'id="temperature"', 'id="length"', 'id="top_k"', ">Generate<", ">Stop<", "/stream?"):
        assert piece in text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)  # nothing from elsewhere
    status, headers, body = get(base, headers={"Accept": "application/json"})  # rnn-writer's start-up check
    info = json.loads(body)
    assert status == 200 and info["message"].startswith("char-rnn server: lstm, 2 x 32")
    status, info = get_json(base + "info")
    assert status == 200
    assert info == {"model": "lstm, 2 x 32, vocabulary 30", "checkpoint": "ascii.pt", "vocab_size": 30,
                    "byte_level": False, "max_length": MAX_LENGTH, "max_samples": MAX_SAMPLES,
                    "default_length": 200, "active": 0}


# ---- the stream ------------------------------------------------------------------------------------

def test_stream_sends_the_text_generate_gives(base, servers):
    text, end = streamed(base, "start_text=Speak&length=300&temperature=0.9&top_k=10&seed=11")
    assert len(text) == 300 and end["characters"] == 300 and end["shutdown"] is False
    assert get_json(base + "generate?start_text=Speak&length=300&temperature=0.9&top_k=10&seed=11")[1] == {
        "start_text": "Speak", "completions": [text], "time": ANY}
    response = open_stream(base, "length=50&seed=1")
    events = read_events(response)
    assert len(events) == 51  # one event per character of this model, then the end
    quiet(servers["ascii"])


# ---- bad requests ----------------------------------------------------------------------------------

BAD_REQUESTS = [
    ("generate?n=", 400, "parameter n has no value"),
    ("generate?length=&n=2", 400, "parameter length has no value"),
    ("generate?n=three", 400, "n must be an integer, not 'three'"),
    ("generate?length=1e3", 400, "length must be an integer"),
    ("generate?temperature=warm", 400, "temperature must be a number, not 'warm'"),
    ("generate?top_p=nan", 400, "top_p must be a number"),
    ("generate?top_k=1.5", 400, "top_k must be an integer"),
    ("generate?seed=lucky", 400, "seed must be an integer"),
    ("generate?temperature=0", 400, "temperature must be greater than 0, not 0"),
    ("generate?temperature=-0.5", 400, "temperature must be greater than 0, not -0.5"),
    (f"generate?length={MAX_LENGTH + 1}", 400, f"length must be at most {MAX_LENGTH} (the server's -max_length)"),
    (f"generate?n={MAX_SAMPLES + 1}", 400, f"n must be at most {MAX_SAMPLES} (the server's -max_samples)"),
    ("generate?n=0", 400, "n must be 1 or more, not 0"),
    ("generate?length=-1", 400, "length must be 0 or more"),
    ("generate?top_k=-1", 400, "top_k must be 0"),
    ("generate?top_p=1.5", 400, "top_p must be in (0, 1]"),
    ("generate?sample=2", 400, "sample must be 0 or 1"),
    ("generate?start_text=Speak%20%E4%B8%ADQ", 400, "not in the model's vocabulary: 'Q' '中'"),
    ("generate?stop=%E4%B8%AD", 400, "stop text has characters that are not in the model's vocabulary"),
    ("generate?start_text=%FF", 400, "not UTF-8"),
    ("generate?temp=0.5", 400, "unknown parameter 'temp'"),
    ("generate?n=1&n=2", 400, "parameter n is given twice"),
    ("stream?start_text=%E4%B8%AD", 400, "'中'"),
    ("stream?temperature=0", 400, "temperature must be greater than 0"),
    (f"stream?length={MAX_LENGTH + 1}", 400, "-max_length"),
    ("stream?n=2", 400, "unknown parameter 'n'"),
    ("info?x=1", 400, "unknown parameter 'x'"),
    ("nowhere", 404, "no such page: /nowhere"),
    ("generate/more", 404, "no such page"),
]


@pytest.mark.parametrize(("path", "status", "fragment"), BAD_REQUESTS, ids=[p for p, _, _ in BAD_REQUESTS])
def test_a_bad_request_is_a_json_error(base, servers, path, status, fragment):
    got, body = get_json(base + path)
    assert got == status and set(body) == {"error", "message"} and body["error"] == body["message"], body
    assert fragment in body["error"], body["error"]
    assert "\n" not in body["error"]
    quiet(servers["ascii"])


def raw_request(base: str, data: bytes) -> bytes:
    with socket.create_connection(host_port(base), timeout=30) as connection:
        connection.sendall(data)
        reply = b""
        while chunk := connection.recv(65536):
            reply += chunk
    return reply


def test_what_is_not_http_get_is_a_json_error(base, servers):
    for data, status in ((b"GET / HTTP/one\r\n\r\n", b"400"), (b"POST /generate HTTP/1.1\r\nHost: x\r\n\r\n", b"501"),
                         (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", b"414")):
        head, _, body = raw_request(base, data).partition(b"\r\n\r\n")
        assert head.split()[1] == status, head
        assert b"application/json" in head and "error" in json.loads(body)
    assert get_json(base + "info")[0] == 200  # still serving
    quiet(servers["ascii"])


# ---- several clients, a client that leaves ---------------------------------------------------------

def run_clients(client, count: int = CLIENTS) -> None:
    """client(k) for k in range(count), each on a thread of its own, all at once; fails on any failure."""
    failures: list[BaseException] = []

    def run(k: int) -> None:
        try:
            client(k)
        except BaseException as error:
            failures.append(error)
            raise

    threads = [threading.Thread(target=run, args=(k,)) for k in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures


def test_eight_clients_are_served_at_once(base, servers):
    """8 long streams at once: each client reads its first piece and waits for the others, so a server
    that served one client at a time would never get past the first; /info counts 8 generations."""
    all_started, counted = threading.Barrier(CLIENTS + 1, timeout=60), threading.Event()

    def client(seed: int) -> None:
        response = open_stream(base, f"length={MAX_LENGTH}&seed={seed}")
        first_event(response)
        all_started.wait()
        counted.wait(60)
        response.close()

    thread = threading.Thread(target=run_clients, args=(client,))
    thread.start()
    all_started.wait()
    active = get_json(base + "info")[1]["active"]
    counted.set()
    thread.join(120)
    assert active == CLIENTS
    wait_for_idle(base, 10)
    quiet(servers["ascii"])


def test_eight_clients_at_once_each_get_their_own_text(base, servers):
    """4 streams and 4 /generate calls at once: each gives the text that /generate gives alone for its seed."""
    texts: dict[int, list[str]] = {}

    def client(seed: int) -> None:
        if seed % 2:
            texts[seed] = [streamed(base, f"start_text=All&length=300&seed={seed}")[0]]
        else:
            texts[seed] = get_json(base + f"generate?start_text=All&length=300&seed={seed}")[1]["completions"]

    run_clients(client)
    for seed, text in texts.items():
        assert get_json(base + f"generate?start_text=All&length=300&seed={seed}")[1]["completions"] == text
    assert len({text[0] for text in texts.values()}) == CLIENTS
    quiet(servers["ascii"])


def wait_for_idle(base: str, seconds: float) -> float:
    """Seconds until /info says no generation is running (fails after `seconds`)."""
    start = time.monotonic()
    while get_json(base + "info")[1]["active"]:
        assert time.monotonic() - start < seconds, "the generation went on"
        time.sleep(0.02)
    return time.monotonic() - start


def test_a_client_that_disconnects_frees_its_generation(base, servers):
    """A stream of MAX_LENGTH characters takes this model many seconds; closing the connection after
    a few pieces ends it within moments."""
    response = open_stream(base, f"length={MAX_LENGTH}")
    first_event(response)
    assert get_json(base + "info")[1]["active"] == 1
    response.close()
    wait_for_idle(base, 5)
    deadline = time.monotonic() + 5
    while "went away" not in servers["ascii"].stderr() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert re.search(r"the client went away after \d+ characters; generation stopped", servers["ascii"].stderr())
    assert get_json(base + "generate?length=5")[0] == 200
    quiet(servers["ascii"])


# ---- Chinese, a byte-level Torch7 model --------------------------------------------------------------

def test_chinese_text(servers):
    base = servers["cjk"].url()
    status, _, raw = get(base + "generate?" + query(start_text="第一回", n=2, length=30, seed=2))
    assert status == 200
    body = json.loads(raw)
    assert body["start_text"] == urllib.parse.quote("第一回")  # echoed as it came
    assert all(len(c) == 30 and set(c) <= set(CJK_TOKENS) for c in body["completions"])  # the prime not in them
    assert json.dumps(body["completions"], ensure_ascii=False).encode() in raw  # UTF-8 in the body, not \u escapes
    text, end = streamed(base, query(start_text="第一回", length=30, seed=2))
    assert text == body["completions"][0] and end["characters"] == 30
    status, error = get_json(base + "generate?" + query(start_text="第一中"))
    assert status == 400 and "'中'" in error["error"]
    quiet(servers["cjk"])


def test_a_byte_level_t7_model(servers):
    base = servers["t7"].url()
    assert get_json(base + "info")[1]["byte_level"] is True
    status, body = get_json(base + "generate?" + query(start_text="第一回 Speak", n=2, length=60, seed=4))
    assert status == 200 and len(body["completions"]) == 2
    response = open_stream(base, query(start_text="第一回 Speak", length=60, seed=4))
    events = read_events(response)
    pieces = [data["text"] for kind, data in events if kind == "message"]
    assert "".join(pieces) == body["completions"][0]
    for piece in pieces:  # whole characters (U+FFFD where the bytes are not UTF-8), never half of one
        piece.encode("utf-8")
    assert 0 < len("".join(pieces)) <= 60 and events[-1][0] == "end"
    status, error = get_json(base + "generate?" + query(start_text="Zebra"))
    assert status == 400 and "'Z'" in error["error"]
    quiet(servers["t7"])


# ---- shutting down, starting up ---------------------------------------------------------------------

@pytest.mark.parametrize("name", list(SIGNALS))
def test_a_signal_stops_the_server_cleanly(servers, name):
    """With a stream in progress: the stream gets its end event (shutdown true), the server prints
    "stopped" and exits 0, without a traceback."""
    server = servers[name]
    response = open_stream(server.url(), f"length={MAX_LENGTH}")
    first_event(response)
    returncode, stdout, stderr = server.stop(SIGNALS[name])
    events = read_events(response)
    assert events[-1][0] == "end" and events[-1][1]["shutdown"] is True
    assert returncode == 0, stderr
    assert stdout.splitlines()[-1] == "stopped"
    assert "Traceback" not in stderr and "Error" not in stderr, stderr


def test_user_errors_at_start_up(folder, base, monkeypatch):
    """One subprocess for the one-line error (run_main's), then serve.main in-process for the rest."""
    assert_user_error(run_script("serve.py", folder / "missing.pt", "-gpuid", -1, cwd=folder),
                      "missing.pt does not exist")

    def serve_forever(server: object) -> None:
        raise AssertionError("serve.py started serving")

    monkeypatch.setattr(serve, "serve_until_stopped", serve_forever)
    port = host_port(base)[1]
    cases = [(["-port", "70000"], "-port must be from 0 to 65535, not 70000"),
             (["-port", str(port)], f"cannot listen on 127.0.0.1:{port}: Address already in use"),
             (["-max_samples", "0"], "-max_samples must be 1 or more, not 0"),
             (["-max_length", "-5"], "-max_length must be 1 or more, not -5"),
             (["-cuda_graphs", "2"], "-cuda_graphs must be 0 or 1, not 2"),
             (["-host", "no-such-host.invalid"], "cannot listen on -host 'no-such-host.invalid'")]
    for options, message in cases:
        with pytest.raises(UserError) as error:
            serve.main([str(folder / "ascii.pt"), *options, "-gpuid", "-1"])
        assert message in str(error.value)


def test_any_address_but_loopback_is_warned_about(folder, capsys):
    from util.charmodel import CharModel
    from util.server import Limits, open_server, url

    model = CharModel.load(str(folder / "ascii.pt"))
    for host, warned in (("127.0.0.1", False), ("localhost", False), ("0.0.0.0", True)):
        server = open_server(host, 0, model, Limits(10, 1), quiet=True)
        server.server_close()
        assert url(server).startswith("http://")
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == warned, lines
        if warned:
            assert lines[0] == (f"warning: -host {host} is not loopback: the model is then reachable by anyone "
                                f"who can reach this machine")
