"""-encoding of train.py and evaluate.py on a -data_dir folder (docs/behaviour.md §2.2, §2.7): which
tokens a folder's text becomes, the cache each encoding gets beside input.txt, and the notices and
errors. The runs start together at the beginning of the module, a few at a time."""
import json
from pathlib import Path

import pytest
import torch

from conftest import assert_user_error
from runner import Runs, ok
from util.corpus import preprocess
from util.data import data_dir_cache
from util.errors import UserError

# only Latin-1 characters, so that one text is written both in UTF-8 and in Latin-1
TEXT = "café crème, déjà vu à noël\n" * 20
TINY = ["-rnn_size", "8", "-num_layers", "1", "-batch_size", "2", "-seq_length", "4", "-max_epochs", "1",
        "-print_every", "1000", "-gpuid", "-1", "-threads", "1"]
CHECKPOINT = Path("cv") / "lm_epoch1.pt"


def folder(root: Path, name: str, data: bytes) -> Path:
    path = root / name
    path.mkdir()
    (path / "input.txt").write_bytes(data)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoding")
    utf8 = folder(root, "utf8", TEXT.encode("utf-8"))
    latin = folder(root, "latin", TEXT.encode("latin-1"))
    latin2 = folder(root, "latin2", TEXT.encode("latin-1"))
    (root / "pair.txt").write_text(TEXT, encoding="utf-8")
    preprocess(str(root / "pair.txt"), str(root / "pair.h5"), str(root / "pair.json"), 0.05, 0.0, log=lambda _: None)
    with Runs(workers=3, root=root) as r:
        start_runs(r, root, utf8, latin, latin2)
        yield r


def start_runs(r: Runs, root: Path, utf8: Path, latin: Path, latin2: Path) -> None:
    train, evaluate = "train.py", "evaluate.py"
    r.start("bytes", train, "-data_dir", utf8, "-encoding", "bytes", *TINY)
    r.start("latin1", train, "-data_dir", latin, "-encoding", "latin-1", *TINY)
    r.start("bytes_of_latin", train, "-data_dir", latin2, "-encoding", "bytes", *TINY)
    r.start("unknown", train, "-data_dir", utf8, "-encoding", "rot13", *TINY)
    r.start("pair_as_bytes", train, "-input_h5", root / "pair.h5", "-input_json", root / "pair.json",
            "-encoding", "bytes", *TINY)
    r.start("utf8_after_bytes", train, "-data_dir", utf8, *TINY, after=("bytes",))
    r.start("bytes_again", train, "-data_dir", latin2, "-encoding", "bytes", *TINY, after=("bytes_of_latin",))
    r.start("default_on_latin", train, "-data_dir", latin2, *TINY, after=("bytes_again",))
    r.start("strict_utf8_on_latin", train, "-data_dir", latin2, "-encoding", "utf-8", *TINY,
            after=("default_on_latin",))
    byte_model, latin_model = r.folder("bytes") / CHECKPOINT, r.folder("latin1") / CHECKPOINT
    utf8_model = r.folder("utf8_after_bytes") / CHECKPOINT
    cpu = ["-gpuid", "-1", "-threads", "1"]
    r.start("init_bytes_as_utf8", train, "-init_from", byte_model, "-data_dir", utf8, "-encoding", "utf-8", *TINY,
            after=("bytes",))
    r.start("resume_as_utf8", train, "-resume", byte_model, "-encoding", "utf-8", *TINY, after=("bytes",))
    r.start("eval_bytes", evaluate, byte_model, "-data_dir", utf8, *cpu, after=("bytes",))
    quiet = [*cpu, "-verbose", "0"]  # errors alone on stderr
    r.start("eval_bytes_as_utf8", evaluate, byte_model, "-data_dir", utf8, "-encoding", "utf-8", *quiet,
            after=("bytes",))
    r.start("eval_latin1", evaluate, latin_model, "-data_dir", latin, *cpu, after=("latin1",))
    r.start("eval_latin1_model_on_utf8", evaluate, latin_model, "-data_dir", utf8, "-encoding", "utf-8", *cpu,
            after=("latin1", "utf8_after_bytes"))
    r.start("eval_utf8_model_on_latin", evaluate, utf8_model, "-data_dir", latin, *quiet,
            after=("utf8_after_bytes", "eval_latin1"))


def saved(run_folder: Path) -> dict:
    return torch.load(run_folder / CHECKPOINT, weights_only=True)


def loss_of(result) -> float:
    return float(result.stdout.split()[2])


# ---- train.py ---------------------------------------------------------------------------------------

def test_bytes_on_utf8_text_trains_on_bytes_from_a_cache_of_their_own(runs):
    out = ok(runs["bytes"]).stdout
    utf8 = runs.root / "utf8"
    assert f"vocab size: {len(set(TEXT.encode()))}" in out and "not valid utf-8" not in out.lower()
    assert "input.bytes.h5" in out and (utf8 / "input.bytes.json").is_file()
    assert json.loads((utf8 / "input.bytes.json").read_text())["encoding"] == "bytes"
    assert saved(runs.folder("bytes"))["vocab"]["encoding"] == "bytes"


def test_the_default_then_reads_code_points_beside_the_byte_cache(runs):
    out = ok(runs["utf8_after_bytes"]).stdout
    utf8 = runs.root / "utf8"
    assert f"vocab size: {len(set(TEXT))}" in out
    assert json.loads((utf8 / "input.json").read_text())["encoding"] == "utf-8"
    assert json.loads((utf8 / "input.bytes.json").read_text())["encoding"] == "bytes"


def test_bytes_on_text_that_is_not_utf8_never_gives_the_notice(runs):
    for name in ("bytes_of_latin", "bytes_again"):
        out = ok(runs[name]).stdout
        assert "notice" not in out and "not valid utf-8" not in out.lower(), out
    assert "one-time setup" in runs["bytes_of_latin"].stdout and "one-time setup" not in runs["bytes_again"].stdout


def test_the_default_on_text_that_is_not_utf8_falls_back_to_bytes_with_the_notice(runs):
    out = ok(runs["default_on_latin"]).stdout
    assert "notice:" in out and "not valid utf-8" in out and "using byte-level tokens" in out
    assert json.loads((runs.root / "latin2" / "input.json").read_text())["encoding"] == "bytes"


def test_an_explicit_utf8_on_text_that_is_not_utf8_is_an_error_that_keeps_the_byte_cache(runs):
    cache = runs.root / "latin2" / "input.h5"
    assert_user_error(runs["strict_utf8_on_latin"], "input.txt is not valid utf-8: cannot decode byte 0xe9 at offset 3",
                      "try -encoding bytes")
    assert json.loads((runs.root / "latin2" / "input.json").read_text())["encoding"] == "bytes" and cache.is_file()


def test_a_codec_reads_its_characters_into_a_cache_named_after_it(runs):
    out = ok(runs["latin1"]).stdout
    assert f"vocab size: {len(set(TEXT))}" in out and "notice" not in out
    assert (runs.root / "latin" / "input.iso8859-1.h5").is_file()
    vocab = saved(runs.folder("latin1"))["vocab"]
    assert vocab["encoding"] == "latin-1" and "é" in vocab["tokens"]


def test_encoding_mistakes_are_one_line_errors(runs):
    assert_user_error(runs["unknown"], "unknown text encoding 'rot13'")
    assert_user_error(runs["pair_as_bytes"], "-encoding bytes does not match", "pair.json, preprocessed as utf-8")
    assert_user_error(runs["init_bytes_as_utf8"], "-encoding utf-8 does not fit", "a byte-level model")
    assert_user_error(runs["resume_as_utf8"], "-encoding utf-8 conflicts with the checkpoint's bytes")


# ---- evaluate.py ------------------------------------------------------------------------------------

def test_evaluate_reads_a_folder_as_the_checkpoint_was_trained(runs):
    for run, model in (("eval_bytes", "bytes"), ("eval_latin1", "latin1")):
        assert loss_of(ok(runs[run])) == pytest.approx(saved(runs.folder(model))["val_loss"], abs=1e-6)


def test_evaluate_encoding_names_the_codec_of_the_same_characters(runs):
    assert loss_of(ok(runs["eval_latin1_model_on_utf8"])) == pytest.approx(loss_of(runs["eval_latin1"]), abs=1e-6)


def test_evaluate_encoding_mistakes_are_one_line_errors(runs):
    assert_user_error(runs["eval_bytes_as_utf8"], "-encoding utf-8 does not fit", "a model of bytes")
    assert_user_error(runs["eval_utf8_model_on_latin"], "is not valid utf-8: cannot decode byte 0xe9 at offset 3",
                      "lm_epoch1.pt reads utf-8 text; give the text's codec with -encoding")


# ---- the cache names --------------------------------------------------------------------------------

def test_each_encoding_has_a_cache_name_of_its_own():
    names = {encoding: Path(data_dir_cache("d", encoding)[0]).name
             for encoding in (None, "utf-8", "UTF8", "bytes", "latin-1", "iso-8859-1", "gb18030")}
    assert names == {None: "input.h5", "utf-8": "input.h5", "UTF8": "input.h5", "bytes": "input.bytes.h5",
                     "latin-1": "input.iso8859-1.h5", "iso-8859-1": "input.iso8859-1.h5",
                     "gb18030": "input.gb18030.h5"}
    with pytest.raises(UserError, match="unknown text encoding 'rot13'"):
        data_dir_cache("d", "rot13")
