"""THE bad-input matrix: every way a user can hand the three scripts something wrong.

Each case runs the real script on the command line a user would type, in a folder of its own that
a setup function fills, and asserts the user-facing contract (docs/behaviour.md §2, §2.1, §2.3,
§2.4, §2.6): status 1, exactly one line on stderr starting with 'Error:' and naming the problem, no
traceback, and no file in the folder created, removed or changed (names, sizes, mtimes and
contents; train.py fails before it creates its checkpoint folder in every case here, so that is
not allowed either).

Inputs that look bad but are valid (a text of carriage returns only, binary data with
-encoding bytes, a lone BOM in bytes mode) are checked for success and a round trip separately.

Speed: a script run spends ~1.3 s importing torch, and there are ~80 cases. By default the cases
are forked from zygotes (conftest.run_script; tests/zygote.py: a Python that has imported torch,
numpy and h5py once forks a child per case); CHAR_RNN_TEST_SUBPROCESS=1 runs every case as a fresh
`python script.py ...` instead. test_zygote_runs_like_a_subprocess compares the two.

The option-parser properties at the end run in-process on the real option tables of the scripts.
"""
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from conftest import assert_user_error, decode_outputs, run_script
from model import CharRNN
from runner import Runs
from util.checkpoint import FORMAT
from util.corpus import preprocess
from util.data import load_data_dir
from util.errors import UserError
from util.options import Option, lua_number, parse_options
from util.vocab import Vocab
from zygote import Zygote, forking

import preprocess as preprocess_script
import sample as sample_script
import train as train_script

TEXT = "the quick brown fox jumps over the lazy dog; she sells sea shells.\n" * 9  # 603 characters
VOCAB = sorted(set(TEXT))
OTHER_TEXT = "ZYXWVUTSRQPONMLKJIHGFEDCBA 0123456789 !?\n" * 20
SMALL = ["-batch_size", "2", "-seq_length", "5", "-rnn_size", "8", "-num_layers", "1", "-gpuid", "-1",
         "-threads", "1", "-max_epochs", "0.1", "-print_every", "1000"]
DATA = ["-data_dir", "data", *SMALL]
OUT = ["-output_h5", "out.h5", "-output_json", "out.json"]
IN = ["-input", "input.txt", *OUT]
TIMEOUT = 120


# ---- running a case ----------------------------------------------------------------------------------

# ---- shared material, built once in-process --------------------------------------------------------

@dataclass
class Shared:
    root: Path
    data: Path        # a -data_dir folder: input.txt and its cache, fresh
    h5: Path          # preprocess.py's output for TEXT
    json: Path
    other_h5: Path    # ... and for OTHER_TEXT (a larger vocabulary)
    other_json: Path


def build_shared(root: Path) -> Shared:
    data = root / "data"
    data.mkdir(parents=True)
    (data / "input.txt").write_text(TEXT, encoding="utf-8")
    load_data_dir(str(data), log=lambda _: None)
    for name, text in (("text", TEXT), ("other", OTHER_TEXT)):
        (root / f"{name}.txt").write_text(text, encoding="utf-8")
        preprocess(str(root / f"{name}.txt"), str(root / f"{name}.h5"), str(root / f"{name}.json"), 0.1, 0.0,
                   log=lambda _: None)
    return Shared(root, data, root / "text.h5", root / "text.json", root / "other.h5", root / "other.json")


def copy_data(tmp: Path, shared: Shared, name: str = "data") -> Path:
    shutil.copytree(shared.data, tmp / name)  # copy2: mtimes kept, so the cache stays fresh
    return tmp / name


def copy_pair(tmp: Path, shared: Shared, h5: Path | None = None, js: Path | None = None) -> None:
    shutil.copy2(h5 or shared.h5, tmp / "d.h5")
    shutil.copy2(js or shared.json, tmp / "d.json")


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def checkpoint(tokens: list[str] = VOCAB, *, rnn_size: int = 8, resume: bool = True, data_dir: str = "data") -> dict:
    """A checkpoint as train.py writes one (lstm 1 x rnn_size, batch 2 x 5 on `data_dir`)."""
    torch.manual_seed(0)
    model = CharRNN("lstm", len(tokens), rnn_size, 1)
    model.initialize()
    optimizer = torch.optim.RMSprop(model.parameters(), lr=2e-3, alpha=0.95, eps=1e-8)
    opt = {o.name: o.default for o in train_script.OPTIONS}
    opt.update(data_dir=data_dir, data_source="data_dir", batch_size=2, seq_length=5, rnn_size=rnn_size,
               num_layers=1, model="lstm", gpuid=-1, threads=1, max_epochs=0.1, print_every=1000)
    saved = {"format": FORMAT, "model": model.shape(), "state_dict": model.state_dict(),
             "vocab": {"tokens": list(tokens), "encoding": "utf-8"}, "opt": opt, "iteration": 3, "epoch": 0.05,
             "train_losses": [3.0, 2.9, 2.8], "val_losses": [], "val_loss": None}
    if resume:
        saved["resume"] = {"optimizer": optimizer.state_dict(), "learning_rate": 2e-3, "loader_position": 3,
                           "hidden": list(model.zero_state(2)), "rng": torch.get_rng_state(), "cuda_rng": None,
                           "loss0": 3.0, "seconds": 0.1}
    return saved


def write_checkpoint(tmp: Path, saved: dict | None = None, name: str = "ck.pt") -> Path:
    path = tmp / name
    torch.save(saved if saved is not None else checkpoint(), path)
    return path


# ---- setups ---------------------------------------------------------------------------------------------

def text_file(content: bytes, name: str = "input.txt", old_output: bool = True):
    def setup(tmp: Path, shared: Shared):
        (tmp / name).write_bytes(content)
        if old_output:  # an earlier output must survive a failed run
            (tmp / "out.h5").write_bytes(b"an earlier output, not to be replaced")
    return setup


def folder(name: str):
    return lambda tmp, shared: (tmp / name).mkdir()


def data(tmp: Path, shared: Shared):
    copy_data(tmp, shared)


def pair(tmp: Path, shared: Shared):
    copy_pair(tmp, shared)


def pair_then(change: Callable[[Path], None]):
    def setup(tmp: Path, shared: Shared):
        copy_pair(tmp, shared)
        change(tmp)
    return setup


def h5_without_val(tmp: Path, shared: Shared):
    copy_pair(tmp, shared)
    with h5py.File(tmp / "d.h5", "w") as h5:
        h5.create_dataset("train", data=np.arange(1, 11, dtype=np.uint8))


def data_with_checkpoint(make: Callable[[Path], None]):
    def setup(tmp: Path, shared: Shared):
        copy_data(tmp, shared)
        make(tmp)
    return setup


def nan_checkpoint(tmp: Path):
    saved = checkpoint()
    saved["state_dict"]["decoder.weight"][0, 0] = float("nan")
    write_checkpoint(tmp, saved)


def mismatched_weights(tmp: Path):
    saved = checkpoint()
    saved["state_dict"] = checkpoint(rnn_size=16)["state_dict"]  # says 8, holds 16
    write_checkpoint(tmp, saved)


def with_checkpoint(tmp: Path, shared: Shared):
    write_checkpoint(tmp)


def truncated_checkpoint(tmp: Path):
    truncate(write_checkpoint(tmp))


def empty_data_dir(tmp: Path, shared: Shared):
    (tmp / "data").mkdir()
    (tmp / "data" / "input.txt").write_bytes(b"")


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes((i * 37 + 11) % 256 for i in range(300))


# ---- the matrix --------------------------------------------------------------------------------------------

@dataclass
class Case:
    id: str
    script: str
    args: list
    setup: Callable[[Path, Shared], None] | None
    fragments: tuple[str, ...]


CASES = [
    # preprocess.py: the input file
    Case("pp_empty", "preprocess.py", IN, text_file(b""), ("input.txt", "empty")),
    Case("pp_missing", "preprocess.py", ["-input", "nope.txt", *OUT], None, ("nope.txt", "does not exist")),
    Case("pp_line_break_in_name", "preprocess.py", ["-input", "no\rpe\n.txt", *OUT], None,
         ("no\\rpe\\n.txt", "does not exist")),
    Case("pp_directory", "preprocess.py", ["-input", "folder", *OUT], folder("folder"), ("folder", "directory")),
    Case("pp_not_utf8", "preprocess.py", IN, text_file("café au lait\n".encode("latin-1") * 3),
         ("input.txt", "offset 3", "0xe9", "-encoding bytes")),
    Case("pp_bom_only", "preprocess.py", IN, text_file(b"\xef\xbb\xbf"), ("input.txt", "empty")),
    Case("pp_binary", "preprocess.py", ["-input", "image.png", *OUT], text_file(PNG, "image.png"),
         ("image.png", "offset 0", "0x89", "-encoding bytes")),
    Case("pp_binary_late", "preprocess.py", IN, text_file(b"ok so far\n" * 20 + b"\x00\xfe\x01"),
         ("offset 201", "0xfe")),
    # preprocess.py: options
    Case("pp_no_input", "preprocess.py", OUT, None, ("-input", "required")),
    Case("pp_unknown_option", "preprocess.py", [*IN, "-vocab_size", "10"],
         text_file(TEXT.encode()), ("-vocab_size",)),
    Case("pp_missing_value", "preprocess.py", ["-input", "input.txt", "-output_json"], text_file(TEXT.encode()),
         ("-output_json", "needs a value")),
    Case("pp_val_frac_type", "preprocess.py", [*IN, "-val_frac", "half"], text_file(TEXT.encode()),
         ("-val_frac", "half")),
    Case("pp_test_frac_negative", "preprocess.py", [*IN, "-test_frac", "-0.5"],
         text_file(TEXT.encode()), ("-test_frac",)),
    Case("pp_unknown_encoding", "preprocess.py", [*IN, "-encoding", "ebcdic-xx"],
         text_file(TEXT.encode()), ("ebcdic-xx",)),
    Case("pp_not_a_text_encoding", "preprocess.py", [*IN, "-encoding", "rot13"], text_file(TEXT.encode()),
         ("rot13", "text encoding")),
    Case("pp_quiet_value", "preprocess.py", [*IN, "-quiet=2"], text_file(TEXT.encode()),
         ("-quiet", "2")),
    # the output would replace the input text (an easy slip: the user's text would be lost)
    Case("pp_output_h5_is_input", "preprocess.py", ["-input", "input.txt", "-output_h5", "input.txt", "-output_json",
                                                   "out.json"], text_file(TEXT.encode(), old_output=False),
         ("input.txt",)),
    Case("pp_output_json_is_input", "preprocess.py", ["-input", "input.txt", "-output_h5", "out.h5", "-output_json",
                                                     "./input.txt"], text_file(TEXT.encode(), old_output=False),
         ("input.txt",)),

    # train.py: options
    Case("tr_unknown_option", "train.py", [*DATA, "-bogus_option", "1"], data, ("bogus_option",)),
    Case("tr_missing_value", "train.py", [*DATA, "-rnn_size"], data, ("-rnn_size", "needs a value")),
    Case("tr_int_type", "train.py", [*DATA, "-seq_length", "5.5"], data, ("-seq_length", "5.5")),
    Case("tr_float_type", "train.py", [*DATA, "-learning_rate", "fast"], data, ("-learning_rate", "fast")),
    Case("tr_int_digit_lookalike", "train.py", [*DATA, "-rnn_size", "\u00b2"], data, ("-rnn_size",)),
    Case("tr_gpuid_type", "train.py", [*DATA, "-gpuid", "cpu"], data, ("-gpuid", "cpu")),
    Case("tr_batch_negative", "train.py", [*DATA, "-batch_size", "-4"], data, ("-batch_size", "-4")),
    Case("tr_seq_zero", "train.py", [*DATA, "-seq_length", "0"], data, ("-seq_length", "0")),
    Case("tr_rnn_size_zero", "train.py", [*DATA, "-rnn_size", "0"], data, ("-rnn_size", "0")),
    Case("tr_num_layers_negative", "train.py", [*DATA, "-num_layers", "-1"], data, ("-num_layers", "-1")),
    Case("tr_dropout_negative", "train.py", [*DATA, "-dropout", "-0.1"], data, ("-dropout", "-0.1")),
    Case("tr_batch_size_text", "train.py", [*DATA, "-batch_size", "abc"], data, ("-batch_size", "abc")),
    Case("tr_rnn_size_negative", "train.py", [*DATA, "-rnn_size", "-8"], data, ("-rnn_size", "-8")),
    Case("tr_max_epochs_zero", "train.py", [*DATA, "-max_epochs", "0"], data, ("-max_epochs", "0")),
    Case("tr_max_epochs_tiny", "train.py", [*DATA, "-max_epochs", "0.001"], data, ("-max_epochs", "0.001")),
    Case("tr_max_epochs_nan", "train.py", [*DATA, "-max_epochs", "nan"], data, ("-max_epochs",)),
    Case("tr_max_epochs_inf", "train.py", [*DATA, "-max_epochs", "inf"], data, ("-max_epochs",)),
    Case("tr_learning_rate_zero", "train.py", [*DATA, "-learning_rate", "0"], data, ("-learning_rate", "0")),
    Case("tr_learning_rate_nan", "train.py", [*DATA, "-learning_rate", "nan"], data, ("-learning_rate",)),
    Case("tr_decay_rate_negative", "train.py", [*DATA, "-decay_rate", "-1"], data, ("-decay_rate",)),
    Case("tr_grad_clip_zero", "train.py", [*DATA, "-grad_clip", "0"], data, ("-grad_clip",)),
    Case("tr_eval_every_zero", "train.py", [*DATA, "-eval_val_every", "0"], data, ("-eval_val_every",)),
    # watching a run (docs/behaviour.md §2.10) and guidance (§2.9): values checked before training
    Case("tr_sample_every_negative", "train.py", [*DATA, "-sample_every", "-1"], data, ("-sample_every", "-1")),
    Case("tr_sample_prime_empty_prefix", "train.py", [*DATA, "-sample_every", "1", "-sample_prime", "the,,dog"], data,
         ("-sample_prime", "empty prefix")),
    Case("tr_sample_prime_unknown", "train.py", [*DATA, "-sample_every", "1", "-sample_prime", "the,分开"], data,
         ("-sample_prime", "分开", "not in the vocabulary")),
    Case("tr_sample_length_negative", "train.py", [*DATA, "-sample_length", "-5"], data, ("-sample_length",)),
    Case("tr_sample_temperature_negative", "train.py", [*DATA, "-sample_temperature", "-1"], data,
         ("-sample_temperature",)),
    Case("tr_grad_norm_negative", "train.py", [*DATA, "-grad_norm", "-1"], data, ("-grad_norm",)),
    Case("tr_grad_norm_and_clip", "train.py", [*DATA, "-grad_norm", "1", "-grad_clip", "5"], data,
         ("-grad_clip", "-grad_norm", "not both")),
    *(Case(f"tr_{option[1:]}_negative", "train.py", [*DATA, option, "-1"], data, (option,))
      for option in ("-keep", "-val_max_batches", "-overfit_patience", "-early_stop")),
    *(Case(f"tr_{option[1:]}_2", "train.py", [*DATA, option, "2"], data, (option, "must be 0 or 1, not 2"))
      for option in ("-accurate_gpu_timing", "-cuda_graphs")),
    Case("tr_print_every_negative", "train.py", [*DATA, "-print_every", "-1"], data, ("-print_every", "-1")),
    Case("tr_dropout_1", "train.py", [*DATA, "-dropout", "1"], data, ("-dropout", "1")),
    Case("tr_dropout_nan", "train.py", [*DATA, "-dropout", "nan"], data, ("-dropout", "nan")),
    Case("tr_unknown_model", "train.py", [*DATA, "-model", "transformer"], data, ("-model", "transformer")),
    Case("tr_unknown_precision", "train.py", [*DATA, "-precision", "fp16"], data, ("-precision", "fp16")),
    Case("tr_threads_beyond_int", "train.py", [*DATA, "-threads", "4294967296"], data, ("-threads", "4294967296")),
    Case("tr_learning_rate_decay_negative", "train.py", [*DATA, "-learning_rate_decay", "-0.5"], data,
         ("-learning_rate_decay", "-0.5")),
    Case("tr_line_break_in_value", "train.py", [*DATA, "-model", "lstm\ngru\u2028rnn"], data,
         ("-model", "lstm\\ngru\\u2028rnn")),
    Case("tr_train_frac", "train.py", [*DATA, "-train_frac", "1.5"], data, ("-train_frac",)),
    Case("tr_fractions_sum", "train.py", [*DATA, "-train_frac", "0.9", "-val_frac", "0.2"], data,
         ("-train_frac", "-val_frac")),
    Case("tr_seed_overflow", "train.py", [*DATA, "-seed", str(2 ** 64)], data, ("-seed",)),
    Case("tr_checkpoint_dir_is_a_file", "train.py", [*DATA, "-checkpoint_dir", "notes.txt"],
         data_with_checkpoint(lambda tmp: (tmp / "notes.txt").write_text("my notes\n")), ("notes.txt",)),
    Case("tr_init_from_and_resume", "train.py", [*DATA, "-init_from", "ck.pt", "-resume", "ck.pt"],
         data_with_checkpoint(write_checkpoint), ("-init_from", "-resume")),

    # train.py: data files
    Case("tr_h5_missing", "train.py", ["-input_h5", "nope.h5", "-input_json", "d.json", *SMALL], pair,
         ("nope.h5", "does not exist")),
    Case("tr_json_missing", "train.py", ["-input_h5", "d.h5", "-input_json", "nope.json", *SMALL], pair,
         ("nope.json", "does not exist")),
    Case("tr_h5_truncated", "train.py", ["-input_h5", "d.h5", "-input_json", "d.json", *SMALL],
         pair_then(lambda tmp: truncate(tmp / "d.h5")), ("d.h5",)),
    Case("tr_h5_is_text", "train.py", ["-input_h5", "d.h5", "-input_json", "d.json", *SMALL],
         pair_then(lambda tmp: (tmp / "d.h5").write_text(TEXT)), ("d.h5",)),
    Case("tr_h5_without_val", "train.py", ["-input_h5", "d.h5", "-input_json", "d.json", *SMALL], h5_without_val,
         ("d.h5", "val")),
    Case("tr_json_truncated", "train.py", ["-input_h5", "d.h5", "-input_json", "d.json", *SMALL],
         pair_then(lambda tmp: truncate(tmp / "d.json")), ("d.json",)),
    Case("tr_json_not_vocabulary", "train.py", ["-input_h5", "d.h5", "-input_json", "d.json", *SMALL],
         pair_then(lambda tmp: (tmp / "d.json").write_text('{"sizes": {"train": 3}}')), ("d.json", "vocabulary")),
    Case("tr_json_not_utf8", "train.py", ["-input_h5", "d.h5", "-input_json", "d.json", *SMALL],
         pair_then(lambda tmp: (tmp / "d.json").write_bytes(b'{"idx_to_token": {"1": "\xff"}}')), ("d.json",)),
    Case("tr_h5_json_mismatched", "train.py", ["-input_h5", "d.h5", "-input_json", "d.json", *SMALL],
         lambda tmp, shared: copy_pair(tmp, shared, h5=shared.other_h5), ("d.h5", "d.json", "does not match")),
    Case("tr_data_dir_missing", "train.py", ["-data_dir", "nowhere", *SMALL], None, ("nowhere", "input.txt")),
    Case("tr_data_dir_empty_text", "train.py", DATA, empty_data_dir, ("input.txt", "empty")),
    Case("tr_corpus_below_one_batch", "train.py", ["-data_dir", "data", "-gpuid", "-1", "-batch_size", "50",
                                                   "-seq_length", "50"], data,
         ("too small", "50 x 50", "-batch_size", "-seq_length")),
    Case("tr_h5_below_one_batch", "train.py", ["-input_h5", "d.h5", "-input_json", "d.json", "-gpuid", "-1",
                                               "-batch_size", "20", "-seq_length", "30"], pair,
         ("too small", "-batch_size", "-seq_length")),
    Case("tr_batch_of_2_to_the_62", "train.py", [*DATA, "-batch_size", str(2 ** 62)], data,
         ("too small", f"{2 ** 62} x 5", "-batch_size")),
    Case("tr_model_beyond_memory", "train.py", [*DATA, "-rnn_size", "100000"], data,
         ("-model lstm at 1 x 100000", "GiB", "more than this CPU's", "-rnn_size")),
    Case("tr_ten_billion_layers", "train.py", [*DATA, "-num_layers", str(10 ** 10)], data,  # building: days
         ("x 8", "GiB", "-num_layers")),
    Case("tr_rnn_size_beyond_64_bits", "train.py", [*DATA, "-rnn_size", str(2 ** 62)], data,
         ("more bytes than 64 bits count", "-rnn_size")),
    Case("tr_val_below_one_batch", "train.py", [*DATA, "-train_frac", "0.5", "-val_frac", "0.001"], data,
         ("val", "too small")),

    # train.py -init_from
    Case("tr_init_from_missing", "train.py", [*DATA, "-init_from", "cv/nope.pt"], data,
         ("cv/nope.pt", "does not exist")),
    Case("tr_init_from_truncated", "train.py", [*DATA, "-init_from", "ck.pt"],
         data_with_checkpoint(truncated_checkpoint),
         ("ck.pt", "truncated")),
    Case("tr_init_from_text", "train.py", [*DATA, "-init_from", "ck.pt"],
         data_with_checkpoint(lambda tmp: (tmp / "ck.pt").write_text("not a checkpoint\n")), ("ck.pt",)),
    Case("tr_init_from_tensor", "train.py", [*DATA, "-init_from", "ck.pt"],
         data_with_checkpoint(lambda tmp: write_checkpoint(tmp, torch.zeros(3))),
         ("ck.pt", "not a char-rnn checkpoint")),
    Case("tr_init_from_directory", "train.py", [*DATA, "-init_from", "data"], data, ("data",)),
    Case("tr_init_from_other_vocabulary", "train.py", [*DATA, "-init_from", "ck.pt"],
         data_with_checkpoint(lambda tmp: write_checkpoint(tmp, checkpoint(sorted(set(OTHER_TEXT))))),
         ("ck.pt", "vocabulary", f"({len(set(OTHER_TEXT))} tokens)", f"the data's ({len(VOCAB)} tokens)")),
    Case("tr_init_from_nan", "train.py", [*DATA, "-init_from", "ck.pt"], data_with_checkpoint(nan_checkpoint),
         ("ck.pt", "NaN")),
    Case("tr_init_from_weights_do_not_fit", "train.py", [*DATA, "-init_from", "ck.pt"],
         data_with_checkpoint(mismatched_weights), ("ck.pt", "do not fit")),

    # train.py -resume
    Case("tr_resume_missing", "train.py", ["-resume", "cv/nope.pt"], data, ("cv/nope.pt", "does not exist")),
    Case("tr_resume_truncated", "train.py", ["-resume", "ck.pt"], data_with_checkpoint(truncated_checkpoint),
         ("ck.pt", "truncated")),
    Case("tr_resume_json", "train.py", ["-resume", "ck.pt"],
         data_with_checkpoint(lambda tmp: (tmp / "ck.pt").write_text('{"format": "char-rnn-pytorch 1"}')), ("ck.pt",)),
    Case("tr_resume_other_vocabulary", "train.py", ["-resume", "ck.pt"],
         data_with_checkpoint(lambda tmp: write_checkpoint(tmp, checkpoint(VOCAB[:-1]))), ("ck.pt", "vocabulary")),
    Case("tr_resume_weights_only", "train.py", ["-resume", "ck.pt"],
         data_with_checkpoint(lambda tmp: write_checkpoint(tmp, checkpoint(resume=False))), ("ck.pt", "-init_from")),
    Case("tr_resume_nan", "train.py", ["-resume", "ck.pt"], data_with_checkpoint(nan_checkpoint), ("ck.pt", "NaN")),
    Case("tr_resume_conflicting_shape", "train.py", ["-resume", "ck.pt", "-rnn_size", "32"],
         data_with_checkpoint(write_checkpoint), ("-rnn_size 32", "8", "conflicts")),
    Case("tr_resume_conflicting_seed", "train.py", ["-resume", "ck.pt", "-seed", "7"],
         data_with_checkpoint(write_checkpoint), ("-seed 7", "conflicts")),
    Case("tr_resume_conflicting_data", "train.py", ["-resume", "ck.pt", "-data_dir", "other"],
         lambda tmp, shared: (copy_data(tmp, shared), copy_data(tmp, shared, "other"), write_checkpoint(tmp)),
         ("-data_dir other", "conflicts")),
    Case("tr_resume_bad_option", "train.py", ["-resume", "ck.pt", "-dropout", "2"],
         data_with_checkpoint(write_checkpoint),
         ("-dropout", "2")),

    # sample.py
    Case("sa_no_checkpoint", "sample.py", ["-length", "5"], None, ("missing argument", "checkpoint")),
    Case("sa_extra_argument", "sample.py", ["ck.pt", "extra", "-gpuid", "-1"], with_checkpoint,
         ("unexpected argument 'extra'",)),
    Case("sa_unknown_option", "sample.py", ["ck.pt", "-top_q", "5"], with_checkpoint, ("-top_q",)),
    Case("sa_temperature_zero", "sample.py", ["ck.pt", "-temperature", "0"], with_checkpoint,
         ("-temperature", "0")),
    Case("sa_temperature_nan", "sample.py", ["ck.pt", "-temperature", "nan"], with_checkpoint,
         ("-temperature",)),
    Case("sa_cuda_graphs_2", "sample.py", ["ck.pt", "-cuda_graphs", "2"], with_checkpoint,
         ("-cuda_graphs", "must be 0 or 1, not 2")),
    Case("sa_length_type", "sample.py", ["ck.pt", "-length", "ten"], with_checkpoint,
         ("-length", "ten")),
    Case("sa_seed_overflow", "sample.py", ["ck.pt", "-gpuid", "-1", "-seed", str(2 ** 64)],
         with_checkpoint, ("-seed",)),
    Case("sa_unknown_primetext", "sample.py", ["ck.pt", "-gpuid", "-1", "-primetext", "Quiet Zebra"],
         with_checkpoint, ("'Q'", "'Z'", "-skip_unk")),
    Case("sa_primefile_not_utf8", "sample.py", ["ck.pt", "-gpuid", "-1", "-primefile", "prime.txt"],
         lambda tmp, shared: (write_checkpoint(tmp), (tmp / "prime.txt").write_bytes(b"the \xff fox")),
         ("-primefile", "prime.txt")),
    Case("sa_primefile_missing", "sample.py", ["ck.pt", "-gpuid", "-1", "-primefile", "prime.txt"],
         with_checkpoint, ("-primefile", "prime.txt")),
    Case("sa_checkpoint_missing", "sample.py", ["cv/nope.pt", "-gpuid", "-1"], None,
         ("cv/nope.pt", "does not exist", "prepend cv/")),
    Case("sa_checkpoint_directory", "sample.py", ["cv", "-gpuid", "-1"], folder("cv"), ("cv",)),
    Case("sa_checkpoint_truncated", "sample.py", ["ck.pt", "-gpuid", "-1"],
         lambda tmp, shared: truncated_checkpoint(tmp),
         ("ck.pt", "truncated")),
    Case("sa_checkpoint_nan", "sample.py", ["ck.pt", "-gpuid", "-1"], lambda tmp, shared: nan_checkpoint(tmp),
         ("ck.pt", "NaN")),
    Case("sa_checkpoint_is_text", "sample.py", ["input.txt", "-gpuid", "-1"],
         text_file(TEXT.encode(), old_output=False),
         ("input.txt",)),
    Case("sa_checkpoint_weights_do_not_fit", "sample.py", ["ck.pt", "-gpuid", "-1"],
         lambda tmp, shared: mismatched_weights(tmp), ("ck.pt", "do not fit")),
]
assert len({case.id for case in CASES}) == len(CASES)

def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under root: folders by name, files by size, mtime and content hash."""
    state = {}
    for folder_path, folders, files in os.walk(root):
        for name in folders:
            state[os.path.relpath(os.path.join(folder_path, name), root)] = ("folder",)
        for name in files:
            path = os.path.join(folder_path, name)
            info = os.lstat(path)
            with open(path, "rb") as handle:
                content = hashlib.sha256(handle.read()).hexdigest()
            state[os.path.relpath(path, root)] = ("file", info.st_size, info.st_mtime_ns, content)
    return state


def run_case(case: Case, tmp: Path, shared: Shared):
    tmp.mkdir(parents=True)
    if case.setup:
        case.setup(tmp, shared)
    before = snapshot(tmp)
    result = run_script(case.script, *case.args, cwd=tmp, timeout=TIMEOUT)
    return result, before, snapshot(tmp)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """Every case's (result, folder before, folder after): two at a time forked from zygotes, or three
    at a time as fresh interpreters."""
    root = tmp_path_factory.mktemp("bad_input")
    shared = build_shared(root / "shared")
    with Runs(workers=2 if forking() else 3) as runs:
        for case in CASES:
            runs.submit(case.id, run_case, case, root / case.id, shared)
        return runs.results()


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(matrix, case):
    result, before, after = matrix[case.id]
    assert_user_error(result, *case.fragments)
    changed = sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))
    assert not changed, f"files created, removed or changed: {changed}"


def test_zygote_runs_like_a_subprocess(tmp_path):
    """The fast path above gives what a fresh interpreter gives: status, stdout, stderr, traceback."""
    zygote = Zygote(tmp_path)
    try:
        for script, args in (("preprocess.py", ["-help"]), ("preprocess.py", ["-input", "nope.txt"]),
                             ("train.py", ["-max_epochs", "nan", "-data_dir", "x", "-gpuid", "-1"])):
            fresh = run_script(script, *args, cwd=tmp_path, fresh=True)
            forked = zygote.run(script, args, tmp_path)
            assert (forked.returncode, forked.stdout, forked.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
        crash = tmp_path / "crash.py"
        crash.write_text("import sys\nprint('out')\nraise ValueError('boom')\n")
        forked = zygote.run(str(crash), [], tmp_path)
        fresh = subprocess.run([sys.executable, str(crash)], capture_output=True, text=True, cwd=tmp_path)
        assert forked.returncode == fresh.returncode == 1 and forked.stdout == fresh.stdout == "out\n"
        assert forked.stderr.startswith("Traceback (most recent call last):") and forked.stderr.endswith(
            "ValueError: boom\n")
    finally:
        zygote.close()


# ---- valid inputs that look bad ---------------------------------------------------------------------

@pytest.mark.parametrize("data, extra", [
    (b"\r" * 40, []),                                     # carriage returns only: one token, an ordinary text
    (b"\xef\xbb\xbf" + b"line one\rline two\r" * 4, []),  # a BOM, then old-Mac line ends
    (PNG, ["-encoding", "bytes"]),                        # binary, read as bytes
    (b"\xef\xbb\xbf", ["-encoding", "bytes", "-val_frac", "0"]),  # a lone BOM is 3 byte tokens in bytes mode
    ("a\x00b\x00ünïcödé\x00".encode() * 3, []),           # NUL characters are characters
], ids=["cr_only", "bom_cr", "binary_bytes", "bom_only_bytes", "nul"])
def test_valid_inputs_that_look_bad(tmp_path, data, extra):
    (tmp_path / "input.txt").write_bytes(data)
    result = run_script("preprocess.py", "-input", "input.txt", *OUT, *extra, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    decoded = decode_outputs(tmp_path / "out.h5", tmp_path / "out.json")
    if "bytes" in extra:
        assert decoded == data
    else:
        assert decoded == data.decode("utf-8").removeprefix("\ufeff")


# ---- option-parser properties, on the real option tables ------------------------------------------------

SCRIPTS = {
    "preprocess.py": (preprocess_script.OPTIONS, []),
    "train.py": (train_script.OPTIONS, []),
    "sample.py": (sample_script.OPTIONS, [("checkpoint", "model checkpoint to sample from")]),
}


def value_strategy(option: Option):
    kind = option.kind
    if kind is bool:
        return st.sampled_from([0, 1])
    if kind is int:
        return st.integers(-(2 ** 40), 2 ** 40)
    if kind is float:
        return st.floats(allow_nan=False, allow_infinity=False, width=64).map(lambda x: float(f"{x:.14g}"))
    return st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)


@st.composite
def command_lines(draw, script: str):
    """(argv, {name: value}) for a random selection of the script's options with well-typed values,
    each spelled -name value, --name value, -name=value or --name=value (flags also bare), and the
    positional arguments anywhere between them."""
    options, positional = SCRIPTS[script]
    chosen = draw(st.lists(st.sampled_from(options), unique_by=lambda o: o.name, max_size=len(options)))
    expected, units = {}, []
    for option in chosen:
        value = draw(value_strategy(option))
        spelled = draw(st.sampled_from([option.name, *option.aliases]))
        dashes = draw(st.sampled_from(["-", "--"]))
        text = lua_number(value) if isinstance(value, (int, float)) else value
        form = draw(st.sampled_from(["separate", "inline", "bare"] if option.kind is bool and value == 1
                                    else ["separate", "inline"]))
        units.append({"separate": [f"{dashes}{spelled}", text], "inline": [f"{dashes}{spelled}={text}"],
                      "bare": [f"{dashes}{spelled}"]}[form])
        expected[option.name] = value
    for name, _ in positional:
        path = draw(st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_./]{0,20}\.pt", fullmatch=True))
        units.insert(draw(st.integers(0, len(units))), [path])
        expected[name] = path
    if script == "preprocess.py" and "input" not in expected:
        units.append(["-input", "x.txt"])
        expected["input"] = "x.txt"
    return [token for unit in units for token in unit], expected


@pytest.mark.parametrize("script", list(SCRIPTS))
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_well_typed_command_lines_parse_to_their_values(script, data):
    argv, expected = data.draw(command_lines(script))
    options, positional = SCRIPTS[script]
    parsed = parse_options(argv, script, "", options, positional)
    for name, value in expected.items():
        got = getattr(parsed.values, name)
        assert got == value and type(got) is type(value), (argv, name, got, value)
    assert parsed.given == {n for n in expected if n not in dict(positional)}
    for option in options:  # the others keep their defaults
        if option.name not in expected:
            assert getattr(parsed.values, option.name) == option.default


def not_an_int(text: str) -> bool:
    """What Python reads as an integer (int(), or a float with an integral value) is one."""
    try:
        int(text)
        return False
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return True
    return not np.isfinite(number) or number != int(number)


def digit_lookalike(text: str) -> bool:
    """Text that str.isdigit() accepts but int() does not ('²', '①')."""
    return text.strip().lstrip("+-").isdigit() and not_an_int(text)


@pytest.mark.parametrize("encoding", [None, 5, "rot13", "idna"])
def test_vocabulary_with_an_unusable_encoding_is_a_user_error(encoding):
    """What a hand-edited input.json or checkpoint may hold: not a string, a bytes-to-bytes codec,
    or a codec that cannot replace what it cannot encode (sample.py's output needs that)."""
    with pytest.raises(UserError, match="unknown text encoding"):
        Vocab.from_json({"idx_to_token": {"1": "a"}, "encoding": encoding})


@pytest.mark.parametrize("name", ["ck.pt", "model.t7"])
def test_unreadable_checkpoint_is_a_user_error(tmp_path, monkeypatch, name):
    """A checkpoint the user may not read (or a disk error): the tests run as root, where chmod
    cannot take read permission away, so the open (util.files.open_regular's) fails here instead."""
    import util.checkpoint
    import util.files

    path = tmp_path / name
    path.write_bytes(b"PK\x03\x04 whatever")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(util.files.os, "open", refuse)
    with pytest.raises(UserError) as error:
        util.checkpoint.load_checkpoint(str(path))
    assert str(error.value) == f"cannot read checkpoint {path}: Permission denied"


@pytest.mark.parametrize("text", ["\u00b2", "\u2460"])
def test_digit_lookalikes_are_user_errors(text):
    """str.isdigit() is true for superscripts and circled digits, which int() rejects."""
    assert digit_lookalike(text)
    with pytest.raises(UserError) as error:
        parse_options(["-rnn_size", text], "train.py", "", train_script.OPTIONS)
    assert "-rnn_size" in str(error.value)


def not_a_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text.strip().lower() != "nan"
    return False


TYPED = [(script, option) for script, (options, _) in SCRIPTS.items() for option in options
         if option.kind in (int, float, bool)]


@pytest.mark.parametrize("script, option", TYPED, ids=[f"{s}:{o.name}" for s, o in TYPED])
@settings(max_examples=15, deadline=None)
@given(text=st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=10),
       dashes=st.sampled_from(["-", "--"]), inline=st.booleans(), before=st.integers(0, 3))
def test_ill_typed_value_names_the_option(script, option, text, dashes, inline, before):
    """Any text that is not a number (an integer, a 0/1 flag) names the option and the text. Texts
    are kept to one line here; util.errors.fail escapes line breaks when it prints a message
    (tr_line_break_in_value, pp_line_break_in_name)."""
    options, positional = SCRIPTS[script]
    wrong = {int: not_an_int, float: not_a_float, bool: lambda t: t not in ("0", "1")}[option.kind]
    if not wrong(text) or digit_lookalike(text):  # the latter: test_digit_lookalikes_are_user_errors
        return
    if option.kind is bool:
        inline = True  # `-quiet 2` is the bare flag, then a stray argument (tests/test_options.py)
    argv = [f"{dashes}{option.name}={text}"] if inline else [f"{dashes}{option.name}", text]
    # some well-typed options first, so that the message must name the right one
    others = [o for o in options if o.kind is int and o.name != option.name][:before]
    prefix = [item for o in others for item in (f"-{o.name}", "1")]
    with pytest.raises(UserError) as error:
        parse_options(prefix + argv + ["x.pt"] * len(positional), script, "", options, positional)
    message = str(error.value)
    assert f"-{option.name}" in message and "\n" not in message
    assert repr(text)[1:-1] in message or text in message


@settings(max_examples=100, deadline=None)
@given(script=st.sampled_from(list(SCRIPTS)), data=st.data())
def test_unknown_option_after_valid_ones_is_named(script, data):
    options, positional = SCRIPTS[script]
    known = {n for o in options for n in (o.name, *o.aliases)}
    argv, _ = data.draw(command_lines(script))
    bogus = data.draw(st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True).filter(
        lambda n: n not in known and n not in ("h", "help") and n.lower() not in ("inf", "nan", "infinity")))
    dashes = data.draw(st.sampled_from(["-", "--"]))
    with pytest.raises(UserError) as error:
        parse_options([*argv, f"{dashes}{bogus}", "1"], script, "", options, positional)
    assert str(error.value).startswith(f"unknown option -{bogus} ")
