"""Hostile and broken data files (issue 19): every file a user hands the scripts works or gives one
error line, within bounded memory and time, and never costs data already written.

Most cases run in-process, each in a forked child (`bounded`) under an address-space cap and an
alarm, so that a regression shows as a MemoryError or a timeout instead of taking the machine down;
a few run the real scripts end to end. The files are tiny and built here: a 2 KB HDF5 file that
declares a trillion ids, a vocabulary nested 100,000 deep, FIFOs and character devices.
"""
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import MEMORY_LIMIT_MB, REPO, assert_user_error, decode_outputs, limit_growth, run_script
from model import CharRNN
from util import corpus, data, files, vocab as vocab_module
from util.checkpoint import FORMAT
from util.corpus import InputChanged
from util.data import load_data_dir, map_h5_json, read_h5_json
from util.errors import UserError
from util.files import open_regular, read_regular, regular_file, replaced_together, signals_held
from util.vocab import Vocab, check_text_encoding

import evaluate as evaluate_script
import sample as sample_script

OLD = b"an earlier output, to be left as it was"
TEXT = "the quick brown fox jumps over the lazy dog\n" * 20


# ---- running a case in a bounded child -------------------------------------------------------------

def bounded(work: Callable[[], object], seconds: int = 20) -> tuple[str, str]:
    """Run work() in a forked child whose address space may grow by conftest.HEADROOM_MB and which is killed
    after `seconds`: ("ok", repr of the result), ("UserError", message), ("crash", type: message)
    or ("killed", signal name)."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(reader)
            limit_growth()
            signal.alarm(seconds)
            try:
                outcome = ("ok", repr(work())[:300])
            except UserError as error:
                outcome = ("UserError", str(error))
            except BaseException as error:  # what a case must not do, reported
                outcome = ("crash", f"{type(error).__name__}: {str(error)[:300]}")
            os.write(writer, pickle.dumps(outcome))
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        received = pipe.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return "killed", signal.Signals(os.WTERMSIG(status)).name
    return pickle.loads(received)


def refused(work: Callable[[], object], *fragments: str) -> str:
    """work() ends in a one-line UserError holding every fragment, within bounds."""
    kind, message = bounded(work)
    assert kind == "UserError", (kind, message)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


# ---- util.files: only regular files are read --------------------------------------------------------

def special_files(tmp_path: Path) -> dict[str, Path]:
    """A path of every kind that is not a regular file."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "socket"))  # the file stays after the socket closes
    server.close()
    (tmp_path / "zero-link").symlink_to("/dev/zero")
    return {"zero": Path("/dev/zero"), "urandom": Path("/dev/urandom"), "fifo": tmp_path / "fifo",
            "folder": tmp_path / "folder", "socket": tmp_path / "socket", "link to /dev/zero": tmp_path / "zero-link"}


KINDS = {"zero": "character device", "urandom": "character device", "fifo": "FIFO", "folder": "directory",
         "socket": "socket", "link to /dev/zero": "character device"}


@pytest.mark.parametrize("name", list(KINDS))
def test_only_regular_files_are_opened(tmp_path, name):
    path = special_files(tmp_path)[name]
    refused(lambda: open_regular(str(path), "input file").read(), f"input file {path} is a", KINDS[name],
            "not a regular file")
    refused(lambda: read_regular(str(path), "-primefile", 100), "-primefile", KINDS[name])


def test_a_fifo_swapped_in_after_the_check_is_caught_without_hanging(tmp_path, fifo, monkeypatch):
    """The path is checked before the open and the open descriptor after it: a FIFO that replaces a
    regular file in between opens at once (O_NONBLOCK) and is refused."""
    regular = tmp_path / "regular.txt"
    regular.write_text("text")
    real_stat = os.stat
    monkeypatch.setattr(files.os, "stat", lambda path, *a, **k: real_stat(regular if path == str(fifo) else path))
    refused(lambda: open_regular(str(fifo), "input file"), "FIFO")


def test_missing_and_unreadable_names(tmp_path):
    refused(lambda: regular_file(str(tmp_path / "nope"), "data file"), f"data file {tmp_path / 'nope'} does not exist")
    refused(lambda: regular_file(str(tmp_path / "nope"), "data file", missing="no such thing"), "no such thing")
    refused(lambda: regular_file("bad\0name", "input file"), "cannot read input file")


def test_read_regular_reads_no_more_than_its_limit(tmp_path):
    (tmp_path / "small").write_bytes(b"x" * 100)
    assert read_regular(str(tmp_path / "small"), "f", 100) == b"x" * 100
    refused(lambda: read_regular(str(tmp_path / "small"), "f", 99, why=", the most"),
            "is larger than 99 bytes, the most")
    sparse = tmp_path / "sparse"
    with open(sparse, "wb") as handle:
        handle.truncate(1 << 40)  # a terabyte that takes no room: refused from its size, unread
    refused(lambda: read_regular(str(sparse), "f", 1 << 20), "larger than 1,048,576 bytes")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux /proc")
def test_read_regular_on_a_file_whose_size_says_zero():
    """/proc files are regular and say 0 bytes: the limit holds on what is read, not what is said."""
    assert b"Name:" in read_regular("/proc/self/status", "f", 1 << 20)
    refused(lambda: read_regular("/proc/self/status", "f", 10), "larger than 10 bytes")


# ---- util.files: replaced together, whatever comes ----------------------------------------------------

def test_signals_held_are_delivered_when_the_block_ends():
    caught = []
    previous = signal.signal(signal.SIGTERM, lambda number, _frame: caught.append(("handler", number)))
    try:
        with signals_held():
            signal.raise_signal(signal.SIGTERM)
            time.sleep(0.01)  # a handler would have run by now
            caught.append("block ends")
        assert caught == ["block ends", ("handler", signal.SIGTERM)]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_signal_between_two_renames_waits_for_the_second(tmp_path, monkeypatch):
    """Ctrl-C after the first of a pair is renamed into place: both are replaced, then it stops."""
    paths = [tmp_path / "a.h5", tmp_path / "a.json"]
    for path in paths:
        path.write_bytes(OLD)
    real_replace = os.replace

    def replace_then_interrupt(source, destination):
        real_replace(source, destination)
        signal.raise_signal(signal.SIGINT)
    monkeypatch.setattr(files.os, "replace", replace_then_interrupt)
    with pytest.raises(KeyboardInterrupt), replaced_together([str(p) for p in paths], "the pair") as temporaries:
        for temporary in temporaries:
            Path(temporary).write_bytes(b"new")
    assert [p.read_bytes() for p in paths] == [b"new", b"new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5", "a.json"]


@pytest.mark.parametrize("stop", [KeyboardInterrupt, UserError, OSError])
def test_replaced_together_leaves_old_files_and_no_temporaries(tmp_path, stop):
    paths = [tmp_path / "a.h5", tmp_path / "a.json"]
    for path in paths:
        path.write_bytes(OLD)
    with pytest.raises(UserError if stop is OSError else stop), \
            replaced_together([str(p) for p in paths], "the pair") as temporaries:
        Path(temporaries[0]).write_bytes(b"half")
        raise stop("stopped")
    assert [p.read_bytes() for p in paths] == [OLD, OLD]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5", "a.json"]


# ---- preprocess.py: the input changing between and during its two passes -------------------------------

def earlier_outputs(tmp_path: Path) -> tuple[Path, Path]:
    h5, js = tmp_path / "out.h5", tmp_path / "out.json"
    h5.write_bytes(OLD)
    js.write_bytes(OLD)
    return h5, js


def shrink(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def grow(path: Path) -> None:
    with open(path, "ab") as handle:
        handle.write(b"and more")


def rewrite_in_place_keeping_size_and_time(path: Path) -> None:
    """Other bytes, same size, the modification time put back: only the hash can tell. Near both
    ends, so that whichever pass is under way reads some of them and has read others before."""
    info = path.stat()
    data = bytearray(path.read_bytes())
    data[10:13] = data[-13:-10] = b"ZZZ"  # characters the first pass never saw: id 0 if written
    with open(path, "r+b") as handle:
        handle.write(data)
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


def replace_by_rename(path: Path) -> None:
    """An editor's save: a new file renamed over the name (what the first pass read is unchanged)."""
    other = path.with_suffix(".new")
    other.write_bytes(path.read_bytes())
    os.replace(other, path)


CHANGES = {"shrunk": shrink, "grown": grow, "rewritten, same size and time": rewrite_in_place_keeping_size_and_time,
           "replaced by rename": replace_by_rename, "removed": os.remove}


def run_changing(tmp_path: Path, monkeypatch, change: Callable[[Path], None], moment: str) -> str:
    """util.corpus.preprocess with `change` made to its input at `moment`; its error message."""
    source = tmp_path / "input.txt"
    source.write_text(TEXT * 20)  # past the reader's 8 KiB buffer, which a change does not reach
    h5, js = earlier_outputs(tmp_path)
    monkeypatch.setattr(corpus, "CHUNK_BYTES", 64)  # many chunks per pass
    passes = []
    chunks = corpus.TextFile.chunks

    def chunks_changing(self):
        passes.append(None)
        this_pass = len(passes)
        for n, chunk in enumerate(chunks(self)):
            yield chunk
            if n == 0 and moment == f"during pass {this_pass}":
                change(source)
        if moment == "between the passes" and this_pass == 1:
            change(source)
    monkeypatch.setattr(corpus.TextFile, "chunks", chunks_changing)
    with pytest.raises(InputChanged) as error:
        corpus.preprocess(str(source), str(h5), str(js), 0.1, 0.0, log=lambda _: None)
    assert h5.read_bytes() == js.read_bytes() == OLD  # the earlier outputs, byte-identical
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    return str(error.value)


@pytest.mark.parametrize("moment", ["between the passes", "during pass 1", "during pass 2"])
@pytest.mark.parametrize("change", list(CHANGES))
def test_an_input_that_changes_is_refused_and_the_old_outputs_stay(tmp_path, monkeypatch, change, moment):
    message = run_changing(tmp_path, monkeypatch, CHANGES[change], moment)
    assert "changed while it was being read" in message and "nothing was written" in message


def test_an_unchanged_input_passes_the_check(tmp_path, monkeypatch):
    """The check itself costs no false alarm: same text, same outputs, whatever the chunk size."""
    source = tmp_path / "input.txt"
    source.write_text(TEXT)
    monkeypatch.setattr(corpus, "CHUNK_BYTES", 5)
    corpus.preprocess(str(source), str(tmp_path / "o.h5"), str(tmp_path / "o.json"), 0.1, 0.0, log=lambda _: None)
    assert decode_outputs(tmp_path / "o.h5", tmp_path / "o.json") == TEXT


RACE = r'''
import os, runpy, sys
sys.path.insert(0, sys.argv[1])
import util.corpus as corpus
scan = corpus._scan
def scan_then_truncate(source, encoding):
    found = scan(source, encoding)
    with open(source.path, "r+b") as handle:
        handle.truncate(50)  # the ids past 50 would have been written as id 0
    return found
corpus._scan = scan_then_truncate
sys.argv = [os.path.join(sys.argv[1], "preprocess.py"), *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def test_preprocess_script_refuses_an_input_truncated_between_its_passes(tmp_path):
    """End to end: the script's status, its one line, and the earlier outputs byte-identical."""
    (tmp_path / "input.txt").write_text(TEXT)
    h5, js = earlier_outputs(tmp_path)
    result = subprocess.run([sys.executable, "-c", RACE, str(REPO), "-input", "input.txt", "-output_h5", str(h5),
                             "-output_json", str(js)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert_user_error(result, "input.txt", "changed while it was being read")
    assert h5.read_bytes() == js.read_bytes() == OLD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.txt", "out.h5", "out.json"]


# ---- preprocess.py: unbounded inputs and interruption ------------------------------------------------------

@pytest.mark.parametrize("name", ["zero", "urandom", "fifo"])
def test_preprocess_script_refuses_what_is_not_a_file(tmp_path, name):
    path = special_files(tmp_path)[name]
    h5, js = earlier_outputs(tmp_path)
    result = run_script("preprocess.py", "-input", path, "-output_h5", h5, "-output_json", js,
                        cwd=tmp_path, memory_mb=MEMORY_LIMIT_MB, timeout=60)
    assert_user_error(result, str(path), KINDS[name])
    assert h5.read_bytes() == js.read_bytes() == OLD


def big_text(path: Path, megabytes: int) -> None:
    """A text of many characters (CJK and ASCII), decoded slowly enough to be caught mid-pass."""
    block = ("第一回　甄士隐梦幻识通灵 the quick brown fox 😀\n" * 2000).encode()
    with open(path, "wb") as handle:
        for _ in range((megabytes << 20) // len(block)):
            handle.write(block)


def input_position(pid: int, path: Path) -> int | None:
    """How far process `pid` has read `path` (Linux /proc), or None while it has not opened it."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                return int(Path(f"/proc/{pid}/fdinfo/{fd}").read_text().split()[1])
        except OSError:
            continue
    return None


@pytest.mark.skipif(not Path("/proc/self/fdinfo").exists(), reason="Linux /proc")
@pytest.mark.parametrize("number, moment", [(signal.SIGINT, "pass 1"), (signal.SIGTERM, "pass 2")])
def test_preprocess_script_stops_promptly_on_a_signal(tmp_path, number, moment):
    """Ctrl-C while the vocabulary is collected, SIGTERM while the ids are written: within a second,
    one line, status 128 + the signal, no temporary left, the earlier outputs as they were."""
    source = tmp_path / "input.txt"
    big_text(source, 64)
    h5, js = earlier_outputs(tmp_path)
    process = subprocess.Popen([sys.executable, str(REPO / "preprocess.py"), "-input", str(source),
                                "-output_h5", str(h5), "-output_json", str(js)], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            temporaries = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
            position = input_position(process.pid, source)
            if (moment == "pass 1" and position and not temporaries) or (moment == "pass 2" and temporaries):
                break
            time.sleep(0.002)
        sent = time.monotonic()
        process.send_signal(number)
        _, stderr = process.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        process.kill()
    assert process.returncode == 128 + number, stderr
    assert stderr.splitlines() == [f"{signal.Signals(number).name} received: stopped"], stderr
    assert took < 1.5, took  # "under a second", with room for a busy 2-core machine
    assert h5.read_bytes() == js.read_bytes() == OLD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.txt", "out.h5", "out.json"]


# ---- preprocess.py: encodings ---------------------------------------------------------------------------

def stdlib_text_codecs() -> list[str]:
    import encodings
    import pkgutil
    names = sorted({m.name for m in pkgutil.iter_modules(encodings.__path__)} - {"aliases"})
    return [name for name in names if accepted(name)]


def accepted(encoding: str) -> bool:
    try:
        check_text_encoding(encoding)
        return True
    except UserError:
        return False


@pytest.mark.parametrize("encoding", ["punycode", "unicode_escape"])
def test_codecs_that_read_in_pieces_differently_are_refused(encoding):
    """Their incremental decoders are not (punycode decodes each piece alone; unicode_escape misreads
    an octal escape cut by a piece's end): files are read a chunk at a time."""
    refused(lambda: check_text_encoding(encoding), f"'{encoding}'", "in pieces")
    refused(lambda: Vocab.from_json({"idx_to_token": {"1": "a"}, "encoding": encoding}), f"'{encoding}'")


def decodings(data: bytes, encoding: str, chunk: int, folder: Path) -> str:
    """The text util.corpus reads from `data` with `chunk`-byte chunks, or 'error'."""
    path = folder / f"{encoding}.{chunk}.txt"
    path.write_bytes(data)
    corpus.CHUNK_BYTES = chunk
    try:
        with corpus.TextFile(str(path)) as source:
            return "".join(chr(c) for values in corpus._code_point_chunks(source, encoding) for c in values)
    except UserError as error:
        assert "\n" not in str(error)
        return "error"


def test_every_accepted_codec_reads_in_chunks_as_it_reads_whole(tmp_path, monkeypatch):
    """Over all of Python's text codecs that check_text_encoding accepts: text, text cut off, and
    bytes of every value, decoded in chunks of 1 to 5 bytes, give what decoding the whole gives, or
    both fail (one line)."""
    monkeypatch.setattr(corpus, "CHUNK_BYTES", corpus.CHUNK_BYTES)
    text = "Grüße, 世界! 😀 +a-b\\101 \x1b$B\n"
    for encoding in stdlib_text_codecs():
        encoded = text.encode(encoding, errors="replace")
        for given in (encoded, encoded[:-1], encoded[1:], bytes(range(256))):
            try:
                whole = given.decode(encoding)
                whole = whole.removeprefix("\ufeff") if vocab_module.has_utf8_bom(given, encoding) else whole
            except UnicodeError:
                whole = "error"
            for chunk in (1, 2, 3, 5):
                assert decodings(given, encoding, chunk, tmp_path) == whole, (encoding, given, chunk)


@pytest.mark.parametrize("encoding, data, fragment", [
    ("utf-16", "no byte-order mark".encode("utf-16-le"), "does not start with BOM"),
    ("utf-32", "no byte-order mark".encode("utf-32-le"), "does not start with BOM"),
    ("utf-16", b"\xff\xfea\x00b\x00c", "offset 6"),  # an odd byte count
    ("utf-7", b"text +2D0- more", "U+D83D, a lone surrogate"),
    ("raw_unicode_escape", b"text \\ud800 more", "U+D800, a lone surrogate"),
])
def test_text_a_codec_cannot_decode_in_chunks_is_one_line(tmp_path, encoding, data, fragment):
    path = tmp_path / "input.txt"
    path.write_bytes(data)
    refused(lambda: corpus.scan(str(path), encoding), f"not valid {encoding}", fragment)


def test_preprocess_script_names_an_unusable_codec(tmp_path):
    (tmp_path / "input.txt").write_text(TEXT)
    h5, js = earlier_outputs(tmp_path)
    for encoding in ("punycode", "idna"):
        result = run_script("preprocess.py", "-input", "input.txt", "-output_h5", h5, "-output_json", js,
                            "-encoding", encoding, cwd=tmp_path, timeout=60)
        assert_user_error(result, f"'{encoding}'")
    (tmp_path / "input.txt").write_bytes("no byte-order mark".encode("utf-16-le"))
    result = run_script("preprocess.py", "-input", "input.txt", "-output_h5", h5, "-output_json", js,
                        "-encoding", "utf-16", cwd=tmp_path, timeout=60)
    assert_user_error(result, "input.txt", "not valid utf-16")
    assert h5.read_bytes() == js.read_bytes() == OLD


# ---- the HDF5 splits (-input_h5, the -data_dir cache) ----------------------------------------------------

def vocab_json(path: Path, tokens: str = "abc", **extra) -> Path:
    path.write_text(json.dumps({**Vocab(list(tokens)).to_json(), **extra}))
    return path


def h5_file(path: Path, build: Callable[[h5py.File], None]) -> Path:
    with h5py.File(path, "w") as h5:
        build(h5)
    return path


def with_splits(make: Callable[[h5py.File, str], None]) -> Callable[[h5py.File], None]:
    """A file whose train and val splits are both made by make(h5, name)."""
    return lambda h5: [make(h5, name) for name in ("train", "val")]


def virtual(h5: h5py.File, name: str) -> None:
    layout = h5py.VirtualLayout(shape=(1000,), dtype="u1")
    layout[:] = h5py.VirtualSource("/dev/zero", "x", shape=(1000,))
    h5.create_virtual_dataset(name, layout)


HDF5_CASES = {
    # declared sizes the file does not hold: read in, they were gigabytes of fill values
    "2.5e9 ids declared": (with_splits(lambda h5, n: h5.create_dataset(n, (2_500_000_000,), "u1")), "declares"),
    "1e12 ids declared, chunked": (with_splits(lambda h5, n: h5.create_dataset(n, (10 ** 12,), "u1",
                                                                              chunks=(1 << 20,))), "declares"),
    "1e12 ids, one chunk written": (with_splits(lambda h5, n: h5.create_dataset(n, (10 ** 12,), "u1", chunks=(
        1 << 16,), compression="gzip").__setitem__(slice(0, 10), 1)), "to 1"),
    "compression bomb": (with_splits(lambda h5, n: h5.create_dataset(n, data=np.ones(20_000_000, "u1"),
                                                                     chunks=(1 << 20,), compression="gzip",
                                                                     compression_opts=9)), "more than 100 to 1"),
    "external storage on /dev/zero": (with_splits(lambda h5, n: h5.create_dataset(
        n, (1_100_000_000,), "u1", external=[("/dev/zero", 0, h5py.h5f.UNLIMITED)])), "outside the file"),
    "virtual dataset": (with_splits(virtual), "outside the file"),
    "null dataspace": (with_splits(lambda h5, n: h5.create_dataset(n, data=h5py.Empty("u1"))), "1-D array"),
    "scalar": (with_splits(lambda h5, n: h5.create_dataset(n, data=np.uint8(1))), "1-D array"),
    "2-D": (with_splits(lambda h5, n: h5.create_dataset(n, data=np.ones((4, 4), "u1"))), "1-D array"),
    "float": (with_splits(lambda h5, n: h5.create_dataset(n, data=np.ones(16, "f4"))), "integer ids"),
    "string": (with_splits(lambda h5, n: h5.create_dataset(n, data=np.array([b"abc"] * 16))), "integer ids"),
    "variable-length string": (with_splits(lambda h5, n: h5.create_dataset(
        n, data=["abc"] * 16, dtype=h5py.string_dtype())), "integer ids"),
    "compound": (with_splits(lambda h5, n: h5.create_dataset(n, data=np.ones(16, [("a", "u1"), ("b", "u1")]))),
                 "integer ids"),
    "a group": (with_splits(lambda h5, n: h5.create_group(n)), "1-D array"),
    "soft link to itself": (lambda h5: [h5.__setitem__(n, h5py.SoftLink(f"/{n}")) for n in ("train", "val")],
                            "link"),
    "external link to a FIFO": (lambda h5: [h5.__setitem__(n, h5py.ExternalLink("FIFO", "/x"))
                                            for n in ("train", "val")], "link"),
    "ids beyond the vocabulary": (with_splits(lambda h5, n: h5.create_dataset(n, data=np.arange(1, 50, dtype="u1"))),
                                  "ids outside 1..3"),
    "id 0": (with_splits(lambda h5, n: h5.create_dataset(n, data=np.zeros(50, "u1"))), "ids outside 1..3"),
    "negative ids": (with_splits(lambda h5, n: h5.create_dataset(n, data=np.full(50, -1, "i4"))), "outside 1..3"),
    "no val split": (lambda h5: h5.create_dataset("train", data=np.ones(50, "u1")), "no 'val' dataset"),
}


@pytest.mark.parametrize("read", [map_h5_json, read_h5_json], ids=["mapped", "read"])
@pytest.mark.parametrize("case", list(HDF5_CASES))
def test_hostile_hdf5_is_one_line_within_bounds(tmp_path, case, read):
    build, fragment = HDF5_CASES[case]
    os.mkfifo(tmp_path / "FIFO")
    h5 = h5_file(tmp_path / "d.h5", build)
    assert h5.stat().st_size < 200_000
    js = vocab_json(tmp_path / "d.json")
    refused(lambda: read(str(h5), str(js)), "d.h5", fragment)


def test_a_truncated_contiguous_split_is_one_line(tmp_path):
    h5 = h5_file(tmp_path / "d.h5", with_splits(lambda h5, n: h5.create_dataset(n, data=np.ones(100_000, "u1"))))
    h5.write_bytes(h5.read_bytes()[:150_000])
    refused(lambda: map_h5_json(str(h5), str(vocab_json(tmp_path / "d.json"))), "d.h5")


@pytest.mark.parametrize("name", ["zero", "fifo", "folder"])
def test_an_hdf5_path_that_is_not_a_file(tmp_path, name):
    path = special_files(tmp_path)[name]
    refused(lambda: map_h5_json(str(path), str(vocab_json(tmp_path / "d.json"))), "data file", KINDS[name])


def test_good_files_still_map_and_compressed_ones_read(tmp_path):
    """The checks pass preprocess.py's files (mapped) and modestly compressed ones (read in)."""
    (tmp_path / "input.txt").write_text(TEXT)
    corpus.preprocess(str(tmp_path / "input.txt"), str(tmp_path / "d.h5"), str(tmp_path / "d.json"), 0.1, 0.0,
                      log=lambda _: None)
    _, splits = map_h5_json(str(tmp_path / "d.h5"), str(tmp_path / "d.json"))
    assert isinstance(splits["train"].stored, np.memmap)
    ids = np.random.default_rng(0).integers(1, 30, 100_000).astype("u1")
    h5_file(tmp_path / "gz.h5", with_splits(lambda h5, n: h5.create_dataset(n, data=ids, compression="gzip")))
    _, splits = map_h5_json(str(tmp_path / "gz.h5"), str(vocab_json(tmp_path / "gz.json", "".join(map(chr, range(
        65, 95))))))
    assert np.array_equal(splits["val"].stored, ids)


def test_train_script_refuses_a_2kb_file_declaring_billions_of_ids(tmp_path):
    h5 = h5_file(tmp_path / "d.h5", HDF5_CASES["2.5e9 ids declared"][0])
    result = run_script("train.py", "-input_h5", h5, "-input_json", vocab_json(tmp_path / "d.json"), "-gpuid", "-1",
                        cwd=tmp_path, memory_mb=MEMORY_LIMIT_MB, timeout=60)
    assert_user_error(result, "d.h5", "declares 2,500,000,000 ids")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.h5", "d.json"]


# ---- the JSON vocabulary (-input_json, the -data_dir cache) -------------------------------------------------

def small_h5(tmp_path: Path, ids: int = 50) -> Path:
    return h5_file(tmp_path / "d.h5", with_splits(lambda h5, n: h5.create_dataset(n, data=np.ones(ids, "u1"))))


def idx(tokens: list) -> dict:
    return {str(i + 1): t for i, t in enumerate(tokens)}


JSON_CASES = {
    "nested 100,000 deep": ("[" * 100_000 + "]" * 100_000, "nested too deep"),
    "bytes vocabulary with 'ā'": (json.dumps({"idx_to_token": idx(["a", "ā"]), "encoding": "bytes"}),
                                 "not a byte"),
    "number tokens": (json.dumps({"idx_to_token": idx([1, 2])}), "single characters"),
    "null token": (json.dumps({"idx_to_token": idx(["a", None])}), "single characters"),
    "duplicate tokens": (json.dumps({"idx_to_token": idx(["a", "b", "a"])}), "more than once"),
    "token_to_idx disagreeing": (json.dumps({"idx_to_token": idx(["a", "b"]), "token_to_idx": {"a": 2, "b": 1}}),
                                 "token_to_idx is not the inverse"),
    "lone surrogate": ('{"idx_to_token": {"1": "a", "2": "\\ud800"}}', "lone surrogate"),
    "no tokens": ('{"idx_to_token": {}}', "1..N"),
    "encoding not a string": (json.dumps({"idx_to_token": idx(["a"]), "encoding": ["utf-8"]}),
                              "unknown text encoding"),
    "encoding punycode": (json.dumps({"idx_to_token": idx(["a"]), "encoding": "punycode"}), "'punycode'"),
    "a key of 5,000 digits": (json.dumps({"idx_to_token": {"9" * 5000: "a"}}), "not a vocabulary file"),
    "a vocabulary larger than the text": (json.dumps({"idx_to_token": idx([chr(0x10000 + i) for i in range(100_000)])}),
                                          "does not match"),
}


@pytest.mark.parametrize("case", list(JSON_CASES))
def test_hostile_vocabulary_is_one_line_within_bounds(tmp_path, case):
    content, fragment = JSON_CASES[case]
    js = tmp_path / "d.json"
    js.write_text(content)
    h5 = small_h5(tmp_path)
    refused(lambda: map_h5_json(str(h5), str(js)), "d.json", fragment)


def test_a_vocabulary_file_past_the_cap_is_refused_unread(tmp_path):
    js = tmp_path / "d.json"
    with open(js, "wb") as handle:
        handle.truncate(vocab_module.MAX_JSON_BYTES + 1)
    refused(lambda: map_h5_json(str(small_h5(tmp_path)), str(js)), "d.json", "larger than 67,108,864 bytes")


@pytest.mark.parametrize("name", ["zero", "fifo"])
def test_a_vocabulary_path_that_is_not_a_file(tmp_path, name):
    path = special_files(tmp_path)[name]
    refused(lambda: map_h5_json(str(small_h5(tmp_path)), str(path)), "vocabulary file", KINDS[name])


def test_the_vocabulary_may_not_outgrow_the_splits_but_a_small_one_may():
    data.check_vocab_size(1000, 1000, "d.h5", "d.json")
    data.check_vocab_size(data.SMALL_VOCAB, 10, "d.h5", "d.json")
    with pytest.raises(UserError, match="a vocabulary of 1,001 tokens, but the splits hold only 1,000 ids"):
        data.check_vocab_size(1001, 1000, "d.h5", "d.json")


def test_checkpoint_vocabularies_are_checked_too():
    with pytest.raises(UserError, match="not a byte"):
        Vocab(["a", "ā"], "bytes", source="ck.pt")
    with pytest.raises(UserError, match=r"ck\.pt: 1 token"):
        Vocab(["a", "a"], source="ck.pt")


def test_train_script_refuses_a_vocabulary_of_a_million_tokens(tmp_path):
    """1e6 tokens at the default rnn_size were a 3.2 GB model, from a 2 KB HDF5 file."""
    js = tmp_path / "d.json"
    js.write_text(json.dumps({"idx_to_token": idx([chr(0x10000 + i) for i in range(1_000_000)])}))
    result = run_script("train.py", "-input_h5", small_h5(tmp_path), "-input_json", js, "-gpuid", "-1",
                        cwd=tmp_path, memory_mb=MEMORY_LIMIT_MB, timeout=60)
    assert_user_error(result, "d.json", "1,000,000 tokens", "only 100 ids")


# ---- -data_dir: input.txt and the cache beside it --------------------------------------------------------------

@pytest.mark.parametrize("name", ["zero", "fifo"])
def test_a_data_dir_whose_input_is_not_a_file(tmp_path, name):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "input.txt").symlink_to(special_files(tmp_path)[name])
    refused(lambda: load_data_dir(str(folder), log=lambda _: None), "input.txt", KINDS[name])


def test_a_cache_vocabulary_that_is_a_fifo_is_rebuilt(tmp_path):
    """The staleness check reads the cache's JSON bounded too: a FIFO there is stale, not a hang."""
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "input.txt").write_text(TEXT)
    load_data_dir(str(folder), log=lambda _: None)
    (folder / "input.json").unlink()
    os.mkfifo(folder / "input.json")
    kind, found = bounded(lambda: len(load_data_dir(str(folder), log=lambda _: None)[1]))
    assert (kind, found) == ("ok", str(len(TEXT)))
    assert (folder / "input.json").is_file()


# ---- sample.py -primefile and evaluate.py -input ------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A tiny checkpoint over TEXT's characters, as train.py writes one."""
    path = tmp_path_factory.mktemp("model") / "ck.pt"
    tokens = sorted(set(TEXT))
    torch.manual_seed(0)
    model = CharRNN("lstm", len(tokens), 8, 1)
    torch.save({"format": FORMAT, "model": model.shape(), "state_dict": model.state_dict(),
                "vocab": {"tokens": tokens, "encoding": "utf-8"}, "opt": {}, "iteration": 0, "epoch": 0.0,
                "train_losses": [], "val_losses": [], "val_loss": None}, path)
    return path


@pytest.mark.parametrize("name", ["zero", "urandom", "fifo", "folder"])
def test_a_primefile_that_is_not_a_file(tmp_path, model_file, name):
    path = special_files(tmp_path)[name]
    refused(lambda: sample_script.main([str(model_file), "-primefile", str(path), "-length", "5", "-gpuid", "-1"]),
            f"-primefile {path}", KINDS[name])


def test_a_primefile_past_the_cap(tmp_path, model_file):
    path = tmp_path / "prime.txt"
    path.write_text("the fox " * (sample_script.PRIMEFILE_LIMIT // 8) + "!")
    refused(lambda: sample_script.main([str(model_file), "-primefile", str(path), "-gpuid", "-1"]),
            "-primefile", "larger than 1,048,576 bytes")


def test_sample_script_refuses_dev_zero_as_primefile(tmp_path, model_file):
    result = run_script("sample.py", model_file, "-primefile", "/dev/zero", "-gpuid", "-1", cwd=tmp_path,
                        memory_mb=MEMORY_LIMIT_MB, timeout=60)
    assert_user_error(result, "-primefile /dev/zero", "character device")


@pytest.mark.parametrize("name", ["zero", "urandom", "fifo", "folder"])
def test_an_evaluate_input_that_is_not_a_file(tmp_path, model_file, name):
    path = special_files(tmp_path)[name]
    refused(lambda: evaluate_script.evaluate([str(model_file), "-input", str(path), "-gpuid", "-1"]),
            f"input file {path}", KINDS[name])


def test_evaluate_script_refuses_a_fifo_as_input(tmp_path, model_file, fifo):
    result = run_script("evaluate.py", model_file, "-input", fifo, "-gpuid", "-1", "-verbose", "0", cwd=tmp_path,
                        memory_mb=MEMORY_LIMIT_MB, timeout=60)
    assert_user_error(result, "FIFO")


def test_a_checkpoint_naming_a_fifo_as_its_vocabulary_loads(tmp_path, model_file, fifo):
    """sample.py looks up the training text through the checkpoint's -input_json: a FIFO there now
    is read bounded (no text found), not waited on."""
    saved = torch.load(model_file, weights_only=True)
    saved.update(opt={"input_json": str(fifo)}, run={"data_source": "h5"})
    torch.save(saved, tmp_path / "ck.pt")
    from util.charmodel import CharModel
    assert bounded(lambda: CharModel.load(str(tmp_path / "ck.pt")).training_text) == ("ok", "None")
