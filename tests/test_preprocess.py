"""preprocess.py end to end, as a user runs it, plus in-process properties of util/corpus.py
(docs/behaviour.md §2.1)."""
import os
import tempfile
from pathlib import Path
from unittest import mock

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from conftest import assert_user_error, decode_outputs, read_outputs, run_script
from util import corpus
from util.errors import UserError


def run_preprocess(tmp_path: Path, source: Path, *extra: str):
    """preprocess.py on `source`, writing tmp_path/out.h5 and tmp_path/out.json."""
    h5, js = tmp_path / "out.h5", tmp_path / "out.json"
    result = run_script("preprocess.py", "-input", source, "-output_h5", h5, "-output_json", js, *extra,
                        cwd=tmp_path)
    return result, h5, js


def write(tmp_path: Path, data: bytes | str, name: str = "input.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


MIXED = "第一回　甄士隐梦幻识通灵\r\nline two\rline three\n\ttab ünïcödé 😀 end\r\n\r\r\n"


# ---- round trips ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    MIXED,
    "crlf only\r\nsecond\r\nthird\r\n" * 5,
    "cr only\rsecond\rthird\r" * 5,
    "红楼梦" * 20 + "\n",
    "no final newline at all, just ASCII",
])
def test_round_trip_utf8(tmp_path, text):
    result, h5, js = run_preprocess(tmp_path, write(tmp_path, text), "-val_frac", "0.1", "-test_frac", "0.1")
    assert result.returncode == 0, result.stderr
    assert decode_outputs(h5, js) == text
    _, vocab = read_outputs(h5, js)
    assert vocab["encoding"] == "utf-8"
    tokens = [vocab["idx_to_token"][str(i)] for i in range(1, len(vocab["idx_to_token"]) + 1)]
    assert tokens == sorted(set(text))  # sorted by value, ids 1..N, \r is an ordinary token
    assert vocab["token_to_idx"] == {t: i + 1 for i, t in enumerate(tokens)}


def test_round_trip_across_real_chunks(tmp_path):
    """A file over two of the real CHUNK_BYTES, with 3- and 4-byte characters cut at every chunk edge."""
    unit = "红楼梦 abc😀\r\n"  # 20 bytes: chunk edges fall inside multi-byte characters
    text = unit * (2 * corpus.CHUNK_BYTES // len(unit.encode()) + 3)
    assert len(text.encode()) > 2 * corpus.CHUNK_BYTES
    result, h5, js = run_preprocess(tmp_path, write(tmp_path, b"\xef\xbb\xbf" + text.encode()), "-val_frac", "0.3",
                                    "-test_frac", "0.2")
    assert result.returncode == 0, result.stderr
    splits, vocab = read_outputs(h5, js)
    assert len(vocab["idx_to_token"]) == len(set(unit))
    n = len(text)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [n - int(0.3 * n) - int(0.2 * n), int(0.3 * n),
                                                                   int(0.2 * n)]
    table = np.array([""] + [vocab["idx_to_token"][str(i)] for i in range(1, len(vocab["idx_to_token"]) + 1)])
    ids = np.concatenate([splits["train"], splits["val"], splits["test"]])
    assert "".join(table[ids].tolist()) == text


def test_round_trip_bytes(tmp_path):
    data = bytes(range(256)) + b"\xff\xfe invalid \xc3\x28 utf-8 \xe4\xb8\r\n\r\x00" + bytes(range(255, -1, -1))
    result, h5, js = run_preprocess(tmp_path, write(tmp_path, data), "-encoding", "bytes", "-val_frac", "0.2")
    assert result.returncode == 0, result.stderr
    assert decode_outputs(h5, js) == data
    splits, vocab = read_outputs(h5, js)
    assert vocab["encoding"] == "bytes"
    assert vocab["idx_to_token"] == {str(b + 1): chr(b) for b in range(256)}
    assert all(ids.dtype == np.uint16 for ids in splits.values())  # 256 tokens > 255
    assert "vocabulary size: 256" in result.stdout


def test_bytes_mode_reads_utf8_as_bytes(tmp_path):
    text = "é😀"
    result, h5, js = run_preprocess(tmp_path, write(tmp_path, text * 10), "-encoding", "bytes")
    assert result.returncode == 0, result.stderr
    _, vocab = read_outputs(h5, js)
    assert sorted(vocab["token_to_idx"]) == sorted(chr(b) for b in set(text.encode()))
    assert decode_outputs(h5, js) == (text * 10).encode()


def test_other_codec(tmp_path):
    text = "Grüße, señor – ½\r\n" * 4
    result, h5, js = run_preprocess(tmp_path, write(tmp_path, text.encode("latin-1", "replace")), "-encoding",
                                    "latin-1")
    assert result.returncode == 0, result.stderr
    assert decode_outputs(h5, js) == text.encode("latin-1", "replace").decode("latin-1")


def test_leading_bom_is_not_a_token(tmp_path):
    text = "hello\nworld\n\ufeffinner BOM stays\n"
    result, h5, js = run_preprocess(tmp_path, write(tmp_path, b"\xef\xbb\xbf" + text.encode()))
    assert result.returncode == 0, result.stderr
    assert decode_outputs(h5, js) == text  # only the leading BOM goes
    splits, _ = read_outputs(h5, js)
    assert sum(len(s) for s in splits.values()) == len(text)
    # in bytes mode the BOM bytes are tokens like any other
    result, h5, js = run_preprocess(tmp_path, tmp_path / "input.txt", "-encoding", "bytes")
    assert decode_outputs(h5, js) == b"\xef\xbb\xbf" + text.encode()


# ---- splits, dtypes, summary ------------------------------------------------------------------------

@pytest.mark.parametrize("n, val_frac, test_frac", [
    (1000, 0.05, 0.0), (1000, 0.1, 0.1), (997, 0.05, 0.05), (333, 0.3, 0.7 - 0.3), (10, 0.1, 0.0), (50, 0.0, 0.02),
])
def test_split_sizes_and_order(tmp_path, n, val_frac, test_frac):
    rng = np.random.default_rng(n)
    text = "".join(rng.choice(list("abcdefgh\n"), n))
    result, h5, js = run_preprocess(tmp_path, write(tmp_path, text), "-val_frac", repr(val_frac),
                                    "-test_frac", repr(test_frac))
    assert result.returncode == 0, result.stderr
    splits, vocab = read_outputs(h5, js)
    val, test = int(val_frac * n), int(test_frac * n)
    assert {k: len(v) for k, v in splits.items()} == {"train": n - val - test, "val": val, "test": test}
    table = vocab["idx_to_token"]
    as_text = {k: "".join(table[str(i)] for i in v) for k, v in splits.items()}
    assert as_text["train"] == text[:n - val - test]
    assert as_text["val"] == text[n - val - test:n - test]
    assert as_text["test"] == text[n - test:]
    assert f"tokens: train {n - val - test}, val {val}, test {test}" in result.stdout
    assert vocab["sizes"] == {"train": n - val - test, "val": val, "test": test}


def test_default_fractions(tmp_path):
    result, h5, _ = run_preprocess(tmp_path, write(tmp_path, "x" * 1000))
    assert "tokens: train 950, val 50, test 0" in result.stdout
    with h5py.File(h5) as f:
        assert sorted(f) == ["test", "train", "val"] and f["test"].shape == (0,)


def test_uint8_up_to_255_tokens(tmp_path):
    text = "".join(chr(0x100 + i) for i in range(255)) + "\n"  # 256 distinct
    result, h5, js = run_preprocess(tmp_path, write(tmp_path, text[:255]), "-val_frac", "0")
    splits, vocab = read_outputs(h5, js)
    assert len(vocab["idx_to_token"]) == 255 and splits["train"].dtype == np.uint8
    assert int(splits["train"].max()) == 255
    result, h5, js = run_preprocess(tmp_path, write(tmp_path, text), "-val_frac", "0")
    assert read_outputs(h5, js)[0]["train"].dtype == np.uint16
    assert "uint16" in result.stdout


def test_uint16_for_300_cjk_characters(tmp_path):
    chars = [chr(0x4E00 + 7 * i) for i in range(300)]
    text = "".join(chars[(i * 37) % 300] for i in range(3000)) + "\n"
    result, h5, js = run_preprocess(tmp_path, write(tmp_path, text))
    assert result.returncode == 0, result.stderr
    splits, vocab = read_outputs(h5, js)
    assert len(vocab["idx_to_token"]) == 301
    assert all(s.dtype == np.uint16 for s in splits.values())
    assert decode_outputs(h5, js) == text
    assert "vocabulary size: 301" in result.stdout and "uint16" in result.stdout


def test_uint32_above_65535_tokens(tmp_path):
    text = "".join(map(chr, range(0x10000, 0x20000))) + "\n"  # 65537 distinct code points, 262 KB
    result, h5, js = run_preprocess(tmp_path, write(tmp_path, text), "-quiet", "1")
    assert result.returncode == 0, result.stderr
    splits, vocab = read_outputs(h5, js)
    assert len(vocab["idx_to_token"]) == 65537
    assert all(s.dtype == np.uint32 for s in splits.values())
    assert decode_outputs(h5, js) == text


def test_id_dtype():
    """2-byte ids only up to 32,767 tokens: torch-rnn's reader takes them as signed shorts
    (tests/test_torch_rnn_files.py)."""
    assert [corpus.id_dtype(n) for n in (1, 255, 256, 32767, 32768, 65535, 65536)] == [
        np.uint8, np.uint8, np.uint16, np.uint16, np.uint32, np.uint32, np.uint32]


def test_summary_and_quiet(tmp_path, tiny_file):
    result, h5, js = run_preprocess(tmp_path, tiny_file)
    assert result.returncode == 0 and result.stderr == ""
    n = len(tiny_file.read_text())
    vocab_size = len(set(tiny_file.read_text()))
    val = int(0.05 * n)
    out = result.stdout
    assert f"vocabulary size: {vocab_size}" in out and "uint8" in out
    assert f"train {n - val}, val {val}, test 0" in out
    assert str(h5) in out and str(js) in out
    h5.unlink()
    js.unlink()
    result, h5, js = run_preprocess(tmp_path, tiny_file, "-quiet", "1")
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""
    assert decode_outputs(h5, js) == tiny_file.read_text()


def test_bare_quiet_flag(tmp_path, tiny_file):
    result, _, _ = run_preprocess(tmp_path, tiny_file, "--quiet")
    assert result.returncode == 0 and result.stdout == "", result.stderr


@pytest.mark.parametrize("spelling", [["-input"], ["--input"], ["-input_txt"], ["--input_txt"], ["--input="]])
def test_input_spellings(tmp_path, tiny_file, spelling):
    args = [spelling[0] + str(tiny_file)] if spelling[0].endswith("=") else [spelling[0], str(tiny_file)]
    result = run_script("preprocess.py", *args, cwd=tmp_path)  # default outputs, relative to cwd
    assert result.returncode == 0, result.stderr
    assert decode_outputs(tmp_path / "data/input.h5", tmp_path / "data/input.json") == tiny_file.read_text()
    assert not list(tmp_path.glob("data/*.tmp"))


def test_overwrites_existing_outputs(tmp_path):
    run_preprocess(tmp_path, write(tmp_path, "first text"))
    result, h5, js = run_preprocess(tmp_path, write(tmp_path, "second, longer text\n"))
    assert result.returncode == 0
    assert decode_outputs(h5, js) == "second, longer text\n"


# ---- bad input: status 1, one line, nothing written ---------------------------------------------------

OLD_H5 = b"old h5 contents, not HDF5"


def check_nothing_written(tmp_path: Path, h5: Path, js: Path):
    assert h5.read_bytes() == OLD_H5  # an existing output is left byte-identical
    assert not js.exists()            # and a missing one is not created
    assert not list(tmp_path.rglob("*.tmp"))


def failing_run(tmp_path: Path, source, *extra):
    h5, js = tmp_path / "out.h5", tmp_path / "out.json"
    h5.write_bytes(OLD_H5)
    result = run_script("preprocess.py", "-input", source, "-output_h5", h5, "-output_json", js, *extra,
                        cwd=tmp_path)
    return result, h5, js


def test_missing_input(tmp_path):
    result, h5, js = failing_run(tmp_path, tmp_path / "nope.txt")
    assert_user_error(result, "nope.txt", "does not exist")
    check_nothing_written(tmp_path, h5, js)


def test_directory_input(tmp_path):
    (tmp_path / "folder").mkdir()
    result, h5, js = failing_run(tmp_path, tmp_path / "folder")
    assert_user_error(result, "folder", "directory")
    check_nothing_written(tmp_path, h5, js)


@pytest.mark.parametrize("content, extra", [(b"", []), (b"", ["-encoding", "bytes"]), (b"\xef\xbb\xbf", [])])
def test_empty_input(tmp_path, content, extra):
    result, h5, js = failing_run(tmp_path, write(tmp_path, content), *extra)
    assert_user_error(result, "input.txt", "empty")
    check_nothing_written(tmp_path, h5, js)


@pytest.mark.parametrize("data, offset, byte", [
    (b"abcdefg\xffxyz", 7, "0xff"),
    (b"\xff", 0, "0xff"),
    ("红楼梦".encode() + b"\xc3\x28", 9, "0xc3"),
    (b"\xef\xbb\xbfabcdefg\x80", 10, "0x80"),  # the offset counts the BOM
    ("ab红".encode()[:-1], 2, "0xe7"),           # truncated at end of file
    (b"x" * 100 + "é".encode() + b"\xed\xa0\x80", 102, "0xed"),  # an encoded surrogate
])
def test_invalid_utf8_names_offset(tmp_path, data, offset, byte):
    result, h5, js = failing_run(tmp_path, write(tmp_path, data))
    line = assert_user_error(result, "input.txt", f"offset {offset}", byte, "-encoding bytes", "latin-1")
    assert "utf-8" in line
    check_nothing_written(tmp_path, h5, js)


@pytest.mark.parametrize("val, test", [("-0.1", "0"), ("1.5", "0"), ("0", "-0.01"), ("0", "2"), ("0.6", "0.5"),
                                        ("nan", "0")])
def test_bad_fractions(tmp_path, tiny_file, val, test):
    result, h5, js = failing_run(tmp_path, tiny_file, "-val_frac", val, "-test_frac", test)
    assert_user_error(result, "-val_frac", "-test_frac")
    check_nothing_written(tmp_path, h5, js)


def test_output_folder_cannot_be_created(tmp_path, tiny_file):
    blocker = tmp_path / "regular_file"
    blocker.write_text("I am a file")
    h5, js = blocker / "sub" / "out.h5", tmp_path / "out.json"
    js.write_bytes(OLD_H5)
    result = run_script("preprocess.py", "-input", tiny_file, "-output_h5", h5, "-output_json", js, cwd=tmp_path)
    assert_user_error(result, "cannot create output folder", "regular_file")
    assert js.read_bytes() == OLD_H5 and blocker.read_text() == "I am a file"
    assert not list(tmp_path.rglob("*.tmp"))


def test_nothing_written_when_json_output_is_a_folder(tmp_path, tiny_file):
    h5, js = tmp_path / "out.h5", tmp_path / "out.json"
    js.mkdir()
    result = run_script("preprocess.py", "-input", tiny_file, "-output_h5", h5, "-output_json", js, cwd=tmp_path)
    assert_user_error(result)
    assert not h5.exists()


@pytest.mark.parametrize("text, val, test, split", [
    ("abc", "0.1", "0", "val"), ("abcdefghi", "0", "0.1", "test"), ("abc", "0.1", "0.1", "val and test"),
])
def test_text_too_short_for_splits(tmp_path, text, val, test, split):
    result, h5, js = failing_run(tmp_path, write(tmp_path, text), "-val_frac", val, "-test_frac", test)
    assert_user_error(result, f"({len(text)} tokens)", f"the {split} split", "too short")
    check_nothing_written(tmp_path, h5, js)


def test_fractions_leaving_no_training_text(tmp_path):
    result, h5, js = failing_run(tmp_path, write(tmp_path, "abcd"), "-val_frac", "0.5", "-test_frac", "0.5")
    assert_user_error(result, "leave nothing for training")
    check_nothing_written(tmp_path, h5, js)


def test_unknown_encoding(tmp_path, tiny_file):
    result, h5, js = failing_run(tmp_path, tiny_file, "-encoding", "klingon")
    assert_user_error(result, "klingon")
    check_nothing_written(tmp_path, h5, js)


# ---- in-process: decode-error offsets across chunk boundaries ------------------------------------------

def decode_error(path, chunk_bytes):
    with mock.patch.object(corpus, "CHUNK_BYTES", chunk_bytes), pytest.raises(corpus.DecodeError) as error:
        corpus.scan(str(path), "utf-8")
    return str(error.value)


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 5, 7, 64])
def test_offset_beyond_first_chunk(tmp_path, monkeypatch, chunk):
    """The offset is the file offset, whatever chunk the bad byte falls in (bad byte at 50)."""
    data = ("é红" * 10).encode() + b"\xff" + b"tail"  # 50 bytes of valid text first
    path = write(tmp_path, data)
    monkeypatch.setattr(corpus, "CHUNK_BYTES", chunk)
    with pytest.raises(corpus.DecodeError, match=r"byte 0xff at offset 50;"):
        corpus.scan(str(path), "utf-8")
    # a multi-byte character cut by the end of a chunk and then broken
    path = write(tmp_path, b"abcdefghij" + "红".encode()[:2] + b"Z")
    with pytest.raises(corpus.DecodeError, match=r"byte 0xe7 at offset 10;"):
        corpus.scan(str(path), "utf-8")
    path = write(tmp_path, b"\xef\xbb\xbf" + b"0123456789" * 3 + b"\x80")
    with pytest.raises(corpus.DecodeError, match=r"byte 0x80 at offset 33;"):
        corpus.scan(str(path), "utf-8")


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 5])
def test_bom_with_tiny_chunks(tmp_path, monkeypatch, chunk):
    path = write(tmp_path, b"\xef\xbb\xbf" + "hello 红楼梦".encode())
    monkeypatch.setattr(corpus, "CHUNK_BYTES", chunk)
    vocab, total = corpus.scan(str(path), "utf-8")
    assert total == 9 and "\ufeff" not in vocab.tokens


@settings(max_examples=150, deadline=None)
@given(prefix=st.text(st.characters(exclude_categories=("Cs",)), max_size=40),
       bad=st.sampled_from([b"\xff", b"\x80", b"\xc3(", b"\xe4\xb8", b"\xf0\x9f\x98", b"\xed\xa0\x80", b"\xc0\xaf"]),
       suffix=st.binary(max_size=10), bom=st.booleans(), chunk=st.integers(1, 9))
def test_offset_property(prefix, bad, suffix, bom, chunk):
    body = prefix.encode() + bad + suffix
    data = (b"\xef\xbb\xbf" if bom else b"") + body
    try:
        body.decode("utf-8")
        assume(False)  # the suffix completed the bad sequence (b"\xe4\xb8" + b"\x80")
    except UnicodeDecodeError as error:
        expected_offset = error.start + (3 if bom else 0)
        expected_byte = body[error.start]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "t.txt"
        path.write_bytes(data)
        message = decode_error(path, chunk)
    assert f"cannot decode byte 0x{expected_byte:02x} at offset {expected_offset};" in message


# ---- in-process: round-trip properties ----------------------------------------------------------------

FRACTIONS = st.sampled_from([0.0, 0.05, 0.25, 0.5])


def preprocess_in_process(data: bytes, encoding: str, val_frac: float, test_frac: float):
    """Run util.corpus.preprocess on `data` with small chunks; return (decoded, sizes) or the UserError."""
    with tempfile.TemporaryDirectory() as folder:
        src, h5, js = (os.path.join(folder, n) for n in ("in.txt", "out.h5", "out.json"))
        with open(src, "wb") as handle:
            handle.write(data)
        with mock.patch.object(corpus, "CHUNK_BYTES", 7):
            try:
                _, sizes = corpus.preprocess(src, h5, js, val_frac, test_frac, encoding, log=lambda _: None)
            except UserError as error:
                assert sorted(os.listdir(folder)) == ["in.txt"]
                return error, None
        splits, vocab = read_outputs(h5, js)
        assert sorted(os.listdir(folder)) == ["in.txt", "out.h5", "out.json"]
        ids = np.concatenate([splits["train"], splits["val"], splits["test"]])
        if len(ids):
            assert ids.min() >= 1 and ids.max() <= len(vocab["idx_to_token"])
        assert [int(k) for k in vocab["idx_to_token"]] == list(range(1, len(vocab["idx_to_token"]) + 1))
        tokens = list(vocab["idx_to_token"].values())
        assert tokens == sorted(tokens)
        return decode_outputs(h5, js), sizes


def check_sizes(n, val_frac, test_frac, result, sizes):
    val, test = int(val_frac * n), int(test_frac * n)
    if n == 0 or val_frac + test_frac >= 1 or n - val - test <= 0 or (val_frac > 0 and val == 0) or \
            (test_frac > 0 and test == 0):
        assert isinstance(result, UserError)
        return False
    assert (sizes.train, sizes.val, sizes.test) == (n - val - test, val, test)
    return True


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(st.characters(exclude_categories=("Cs",)), max_size=60), val_frac=FRACTIONS,
       test_frac=FRACTIONS)
def test_round_trip_property_text(text, val_frac, test_frac):
    result, sizes = preprocess_in_process(text.encode("utf-8"), "utf-8", val_frac, test_frac)
    expected = text[1:] if text.startswith("\ufeff") else text
    if check_sizes(len(expected), val_frac, test_frac, result, sizes):
        assert result == expected


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=60), val_frac=FRACTIONS, test_frac=FRACTIONS)
def test_round_trip_property_bytes(data, val_frac, test_frac):
    result, sizes = preprocess_in_process(data, "bytes", val_frac, test_frac)
    if check_sizes(len(data), val_frac, test_frac, result, sizes):
        assert result == data


def test_scan_counts_and_vocab(tmp_path):
    path = write(tmp_path, "bca\r\nab😀")
    vocab, total = corpus.scan(str(path), "utf-8")
    assert total == 8 and vocab.tokens == ["\n", "\r", "a", "b", "c", "😀"]
    vocab, total = corpus.scan(str(path), "bytes")
    assert total == len("bca\r\nab😀".encode()) and vocab.is_bytes
    assert vocab.tokens == [chr(b) for b in sorted(set("bca\r\nab😀".encode()))]
