"""Hostile and broken .pt files (issue 19): every file a user hands to sample.py, train.py -init_from
or -resume, evaluate.py or serve.py loads, or is one error line, in bounded memory and seconds.

Each file is built at test time from a tiny real checkpoint (tiny_checkpoint: what train.py writes
at iteration 3 of a run on test_bad_input's TEXT) by torch.save, or by rewriting its zip archive.
Most cases run in-process against util.checkpoint. The cases about memory run in one child process
whose address space is capped (load_in_capped_child: RLIMIT_AS at conftest.MEMORY_LIMIT_MB), so that
a file the loader believed would fail there, at once, instead of taking the machine's memory or
minutes. A handful run end to end as a user runs them, most forked from a zygote (tests/zygote.py);
a failed -resume must leave its folder as it was.
"""
import io
import json
import math
import pickletools
import shutil
import struct
import subprocess
import sys
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from conftest import MEMORY_LIMIT_MB, REPO, RESIDENT_LIMIT_MB, assert_user_error, data_folder, limit_memory, run_script
from model import CharRNN
from runner import Runs, ok
from test_bad_input import TEXT, VOCAB, snapshot
from util.checkpoint import (
    build_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    require_training_state,
    save_checkpoint,
    training_state,
)
from util.errors import UserError
from util.options import parse_options
from util.training import Progress, rmsprop
from util.vocab import Vocab

import train as train_script

BATCH, LAYERS, HIDDEN = 2, 2, 8
DEEP = 20_000  # nesting that a recursive repr, str or pickle of the value cannot get through
NESTED = "<a list nested DEEP deep>"  # written as such a list by write()
CASE_SECONDS = 10  # the most a case may take in the capped child (2-core CI included)


# ---- the files ---------------------------------------------------------------------------------------

def tiny_checkpoint(model_type: str = "lstm") -> dict:
    """What train.py writes at iteration 3 of a run on TEXT in the -data_dir 'data': 2 x 8, batch 2 x 5,
    the optimizer stepped once (so that it has per-parameter state), a carried state that is not zero."""
    torch.manual_seed(0)
    vocab = Vocab(VOCAB)
    model = CharRNN(model_type, len(vocab), HIDDEN, LAYERS)
    model.initialize()
    optimizer = rmsprop(list(model.parameters()), 2e-3, 0.95)
    for parameter in model.parameters():
        parameter.grad = torch.full_like(parameter, 0.01)
    optimizer.step()
    opt = {option.name: option.default for option in train_script.OPTIONS}
    opt.update(data_dir="data", batch_size=BATCH, seq_length=5, rnn_size=HIDDEN, num_layers=LAYERS, model=model_type,
               gpuid=-1, threads=1, max_epochs=0.1, print_every=1000)
    progress = Progress(3, [3.0, 2.9, 2.8], [[3, 2.7]], 3.0, 0.1)
    hidden = tuple(torch.rand_like(part) for part in model.zero_state(BATCH))
    training = training_state(model, optimizer, 3, hidden, torch.device("cpu"), progress)
    return build_checkpoint(model, vocab, opt, {"data_source": "data_dir"}, progress, 57, 2.7, training)


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def write(path: Path, content: object) -> Path:
    """torch.save, then each NESTED string in the pickle replaced by a list nested DEEP deep (which
    torch.save's recursive pickler could not write itself)."""
    torch.save(content, path)
    placeholder = NESTED.encode()
    if placeholder in path.read_bytes():  # the pickle is stored as it is
        text = b"X" + struct.pack("<I", len(placeholder)) + placeholder
        deep = b"]" * DEEP + b"a" * (DEEP - 1)  # DEEP empty lists, each appended to the one before
        rewrite_archive(path, on_pickle(lambda data: data.replace(text, deep)))
    return path


def rewrite_archive(path: Path, change: Callable[[str, bytes], bytes]) -> None:
    """Rewrite a torch.save zip, each entry's bytes through change(name, data), entries stored."""
    with zipfile.ZipFile(path) as archive:
        entries = [(info.filename, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in entries:
            archive.writestr(name, change(name, data))


def first_storage_size(pickled: bytes, size: int) -> bytes:
    """The pickle with its first storage's element count (the int before the persistent id's TUPLE
    that starts with 'storage') replaced by `size`."""
    ops = list(pickletools.genops(pickled))
    start = next(n for n, (op, arg, _) in enumerate(ops) if op.name == "BINUNICODE" and arg == "storage")
    end = next(n for n in range(start, len(ops)) if ops[n][0].name == "TUPLE")
    position = ops[end - 1][2]
    assert ops[end - 1][0].name.startswith("BININT")
    return pickled[:position] + b"J" + struct.pack("<i", size) + pickled[ops[end][2]:]


def entry_headers(data: bytes, name: str) -> tuple[int, int]:
    """The offsets of entry `name`'s local header and of its central directory record in a zip."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        local, central = archive.getinfo(name).header_offset, archive.start_dir
    while data[central + 46:central + 46 + len(name)] != name.encode():
        central = data.index(b"PK\x01\x02", central + 4)
    return local, central


def set_entry(path: Path, name: str, method: int, crc: int, compressed: int, size: int) -> None:
    """Entry `name`'s compression method, CRC and sizes, in both of its headers."""
    data = bytearray(path.read_bytes())
    local, central = entry_headers(bytes(data), name)
    for at in (local + 8, central + 10):
        data[at:at + 2] = struct.pack("<H", method)
        data[at + 6:at + 18] = struct.pack("<III", crc, compressed, size)
    path.write_bytes(bytes(data))


def zip_bomb(path: Path, inflated: int = 2500 << 20) -> None:
    """A checkpoint of 2.6 MB whose first storage is a DEFLATE entry inflating to `inflated` bytes of
    zeros, its pickle asking for that many (as a hand-made archive can; torch.save stores every entry).
    The stream is one piece repeated: each MiB of zeros compressed after a full flush is the same."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = compressor.compress(bytes(1 << 20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    stream = piece * (inflated >> 20) + compressor.flush(zlib.Z_FINISH)
    crc = 0
    for _ in range(inflated >> 20):
        crc = zlib.crc32(bytes(1 << 20), crc)
    write(path, tiny_checkpoint())
    name = record(path, "/data/0")
    rewrite_archive(path, lambda entry, data: stream if entry == name else
                    first_storage_size(data, inflated // 4) if entry.endswith("data.pkl") else data)
    set_entry(path, name, zipfile.ZIP_DEFLATED, crc, len(stream), inflated)


def record(path: Path, suffix: str) -> str:
    with zipfile.ZipFile(path) as archive:
        return next(name for name in archive.namelist() if name.endswith(suffix))


# ---- running cases in a child whose memory is capped ----------------------------------------------------

CHILD = r'''
import json, signal, sys, time, traceback
sys.path.insert(0, sys.argv[1])
from util.charmodel import CharModel, training_text_path
from util.checkpoint import checkpoint_vocab, load_checkpoint, model_from_checkpoint, require_training_state
from util.errors import UserError

def expire(*_):
    raise TimeoutError("the case took too long")

def load(path):
    """What sample.py and serve.py do (load, build, generate), then -resume's check."""
    checkpoint = load_checkpoint(path)
    model = CharModel(model_from_checkpoint(checkpoint, path), checkpoint_vocab(checkpoint), path,
                      training_text_path(checkpoint))
    model.generate("", length=3, seed=0)
    if checkpoint.get("resume") is not None:
        require_training_state(checkpoint, path)
    return "loaded"

signal.signal(signal.SIGALRM, expire)
for path in json.loads(sys.stdin.read()):
    started = time.perf_counter()
    signal.alarm(int(sys.argv[2]))
    try:
        outcome = load(path)
    except UserError as error:
        outcome = "UserError: " + str(error)
    except BaseException:
        outcome = "crash: " + traceback.format_exc()
    signal.alarm(0)
    print(json.dumps([path, outcome, time.perf_counter() - started]), flush=True)
status = dict(line.split(":", 1) for line in open("/proc/self/status") if line.startswith(("VmPeak", "VmHWM")))
print(json.dumps({key: int(value.split()[0]) >> 10 for key, value in status.items()}), flush=True)
'''


@dataclass
class Outcome:
    outcome: str  # "loaded", "UserError: <message>" or "crash: <traceback>"
    seconds: float


def load_in_capped_child(paths: list[Path], timeout: float = 300) -> tuple[dict[str, Outcome], dict[str, int]]:
    """Each file loaded as sample.py would (then checked for -resume if it has a resume section), all in
    one fresh interpreter capped at MEMORY_LIMIT_MB of address space; each case is stopped after
    CASE_SECONDS. Returns the outcomes by path and the child's peak memory in MiB (VmPeak: address
    space, VmHWM: resident)."""
    result = subprocess.run([sys.executable, "-c", CHILD, str(REPO), str(CASE_SECONDS)],
                            input=json.dumps([str(p) for p in paths]), capture_output=True, text=True,
                            timeout=timeout, preexec_fn=lambda: limit_memory(MEMORY_LIMIT_MB))
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.returncode == 0 and len(lines) == len(paths) + 1, (result.returncode, result.stdout[-2000:],
                                                                      result.stderr[-3000:])
    return {path: Outcome(outcome, seconds) for path, outcome, seconds in lines[:-1]}, lines[-1]


# ---- the cases ------------------------------------------------------------------------------------------

Change = Callable[[dict], object]  # the checkpoint (changed in place, or another object) to save


def setting(*keys: str | int, value: object) -> Change:
    """Set checkpoint[keys[0]][keys[1]]... to `value` (called, if it is a function, for a fresh one)."""
    def change(checkpoint: dict) -> dict:
        target = checkpoint
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value() if callable(value) else value
        return checkpoint
    return change


def dropping(*keys: str) -> Change:
    def change(checkpoint: dict) -> dict:
        target = checkpoint
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]
        return checkpoint
    return change


def weight(name: str, make: Callable[[torch.Tensor], torch.Tensor]) -> Change:
    """Replace a weight by make(the weight)."""
    return lambda checkpoint: setting("state_dict", name, value=make(checkpoint["state_dict"][name]))(checkpoint)


def tokens(change: Callable[[list[str]], list]) -> Change:
    return lambda checkpoint: setting("vocab", "tokens", value=change(list(VOCAB)))(checkpoint)


def quantized(tensor: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # quantized tensors are deprecated: a file may still hold one
        warnings.simplefilter("ignore")
        return torch.quantize_per_tensor(tensor, 0.1, 0, torch.qint8)


DECODER = "decoder.weight"
BIG = 10 ** 9

LOAD_CASES: dict[str, tuple[Change, tuple[str, ...]]] = {
    # the file as a whole
    "a_list": (lambda checkpoint: [checkpoint], ("not a char-rnn checkpoint",)),
    "a_tensor": (lambda checkpoint: torch.zeros(3), ("not a char-rnn checkpoint",)),
    "no_format": (dropping("format"), ("not a char-rnn checkpoint",)),
    "format_a_list": (setting("format", value=["char-rnn-pytorch 1"]), ("not a char-rnn checkpoint",)),
    "no_model": (dropping("model"), ("missing or not a dict: model",)),
    "no_state_dict": (dropping("state_dict"), ("state_dict",)),
    "no_vocab": (dropping("vocab"), ("vocab",)),
    "no_opt": (dropping("opt"), ("opt",)),
    "opt_a_list": (setting("opt", value=[1, 2]), ("opt",)),
    "state_dict_a_list": (setting("state_dict", value=[torch.zeros(2)]), ("state_dict",)),
    # the model's shape
    "model_type_unknown": (setting("model", "model_type", value="transformer"), ("unknown model type 'transformer'",)),
    "model_type_a_list": (setting("model", "model_type", value=["lstm"]), ("unknown model type a list",)),
    "model_type_nested": (setting("model", "model_type", value=NESTED), ("unknown model type a list",)),
    "rnn_size_negative": (setting("model", "rnn_size", value=-8), ("rnn_size must be a positive integer, not -8",)),
    "rnn_size_a_string": (setting("model", "rnn_size", value="8"), ("rnn_size", "'8'")),
    "rnn_size_a_bool": (setting("model", "rnn_size", value=True), ("rnn_size", "True")),
    "rnn_size_a_float": (setting("model", "rnn_size", value=8.0), ("rnn_size", "not 8.0")),
    "rnn_size_huge_int": (setting("model", "rnn_size", value=2 ** 100), ("an integer of 101 bits",)),
    "num_layers_zero": (setting("model", "num_layers", value=0), ("num_layers", "0")),
    "dropout_one": (setting("model", "dropout", value=1.0), ("dropout must be in [0, 1), not 1.0",)),
    "dropout_negative": (setting("model", "dropout", value=-0.5), ("dropout", "-0.5")),
    "dropout_nan": (setting("model", "dropout", value=math.nan), ("dropout", "nan")),
    "dropout_a_string": (setting("model", "dropout", value="0.5"), ("dropout",)),
    "vocab_size_other": (setting("model", "vocab_size", value=len(VOCAB) + 1), ("do not fit",)),
    # the weights
    "weight_a_string": (setting("state_dict", DECODER, value="weights"), ("decoder.weight", "not a dense float32")),
    "weight_a_list": (setting("state_dict", DECODER, value=[[0.0]]), ("decoder.weight",)),
    "weight_key_an_int": (setting("state_dict", 7, value=torch.zeros(1)), ("names a weight 7",)),
    "weight_meta": (weight(DECODER, lambda t: torch.empty(t.shape, device="meta")), ("not a dense float32",)),
    "weight_sparse": (weight(DECODER, lambda t: t.to_sparse()), ("not a dense float32",)),
    "weight_quantized": (weight(DECODER, quantized), ("not a dense float32",)),
    "weight_complex": (weight(DECODER, lambda t: t.to(torch.complex64)), ("not a dense float32",)),
    "weight_float64": (weight(DECODER, lambda t: t.double()), ("not a dense float32",)),
    "weight_int": (weight(DECODER, lambda t: t.long()), ("not a dense float32",)),
    "weight_transposed": (weight(DECODER, lambda t: t.t().contiguous().t()), ("not a dense float32",)),
    "weight_expanded": (weight(DECODER, lambda t: t[:1, :1].expand(t.shape)), ("not a dense float32",)),
    "weight_wrong_shape": (weight(DECODER, lambda t: t[:, :4].contiguous()),
                           (f"decoder.weight is {len(VOCAB)} x 4, not {len(VOCAB)} x 8",)),
    "weight_missing": (dropping("state_dict", DECODER), ("decoder.weight missing",)),
    "weight_unexpected": (setting("state_dict", "extra.weight", value=torch.zeros(2)), ("unexpected weight 'extra",)),
    "weight_nan": (weight(DECODER, lambda t: t.index_fill(0, torch.tensor([0]), math.nan)), ("NaN or infinite",)),
    "weight_inf": (weight(DECODER, lambda t: t.index_fill(0, torch.tensor([0]), math.inf)), ("NaN or infinite",)),
    "weights_of_another_size": (weight("layers.1.h2h.weight", lambda t: torch.zeros(64, 16)),
                                ("layers.1.h2h.weight is 64 x 16, not 32 x 8",)),
    # the vocabulary
    "tokens_empty": (tokens(lambda t: []), (f"0 tokens, its model {len(VOCAB)}",)),
    "tokens_a_string": (setting("vocab", "tokens", value="".join(VOCAB)), ("not a list of texts",)),
    "token_not_a_string": (tokens(lambda t: [*t[:-1], 7]), ("not a list of texts",)),
    "token_none": (tokens(lambda t: [*t[:-1], None]), ("not a list of texts",)),
    "token_multi_character": (tokens(lambda t: [*t[:-1], "ab"]), ("every token must be a single character",)),
    "token_nested": (tokens(lambda t: [*t[:-1], NESTED]), ("not a list of texts",)),
    "token_twice": (tokens(lambda t: [*t[:-1], t[0]]), ("1 token(s) appear more than once",)),
    "token_a_lone_surrogate": (tokens(lambda t: [*t[:-1], "\ud800"]), ("U+D800 is a lone surrogate",)),
    "tokens_fewer": (tokens(lambda t: t[:-1]), (f"{len(VOCAB) - 1} tokens, its model {len(VOCAB)}",)),
    "tokens_more": (tokens(lambda t: [*t, "Z"]), (f"{len(VOCAB) + 1} tokens, its model {len(VOCAB)}",)),
    "byte_above_255": (lambda c: setting("vocab", "encoding", value="bytes")(tokens(lambda t: [*t[:-1], "ā"])(c)),
                       ("'ā' (U+0101) is not a byte, in a vocabulary of bytes",)),
    "encoding_unknown": (setting("vocab", "encoding", value="ebcdic-xx"), ("'ebcdic-xx'", "encoding")),
    "encoding_bytes_to_bytes": (setting("vocab", "encoding", value="rot13"), ("'rot13'",)),
    "encoding_a_number": (setting("vocab", "encoding", value=8), ("encoding 8",)),
    "encoding_huge": (setting("vocab", "encoding", value="x" * 10 ** 6), ("'xxxxxxxx",)),
    # the options and the run's facts
    "opt_nested": (setting("opt", "seq_length", value=NESTED), ("option 'seq_length' is a list",)),
    "opt_a_table": (setting("opt", "model", value={"type": "lstm"}), ("option 'model' is a dict",)),
    "opt_key_an_int": (setting("opt", 5, value=1), ("names an option 5",)),
    "opt_a_tensor": (setting("opt", "dropout", value=torch.zeros(3)), ("option 'dropout' is a Tensor",)),
    "run_a_list": (setting("run", value=["h5"]), ("run facts are a list",)),
    "data_source_unknown": (setting("run", "data_source", value="ftp"), ("data_source 'ftp'",)),
    "old_data_source_unknown": (lambda c: setting("opt", "data_source", value=5)(dropping("run")(c)),
                                ("data_source 5",)),
    # the progress
    "iteration_negative": (setting("iteration", value=-1), ("iteration must be a count, not -1",)),
    "iteration_a_float": (setting("iteration", value=3.5), ("iteration", "3.5")),
    "iteration_a_string": (setting("iteration", value="3"), ("iteration", "'3'")),
    "epoch_nan": (setting("epoch", value=math.nan), ("epoch", "nan")),
    "epoch_inf": (setting("epoch", value=math.inf), ("epoch", "inf")),
    "train_loss_nan": (setting("train_losses", value=[3.0, math.nan, 2.8]), ("train_losses",)),
    "train_losses_a_dict": (setting("train_losses", value={1: 3.0, "2": 2.9}), ("train_losses",)),
    "val_losses_mixed_keys": (setting("val_losses", value={3: 2.7, "x": 2.0}), ("val_losses",)),
    "val_losses_not_pairs": (setting("val_losses", value=[[3]]), ("val_losses",)),
    "val_loss_inf_in_pairs": (setting("val_losses", value=[[3, math.inf]]), ("val_losses",)),
    "val_loss_nan": (setting("val_loss", value=math.nan), ("val_loss", "nan")),
    "val_loss_a_string": (setting("val_loss", value="low"), ("val_loss", "'low'")),
}

# sizes that would cost gigabytes if believed: run in the capped child
MEMORY_CASES: dict[str, tuple[Change, tuple[str, ...]]] = {
    "num_layers_1e9": (setting("model", "num_layers", value=BIG), ("do not fit", f"{BIG} x 8", "larger than its")),
    "rnn_size_1e9": (setting("model", "rnn_size", value=BIG), ("do not fit", f"2 x {BIG}")),
    "vocab_size_1e9": (setting("model", "vocab_size", value=BIG), ("do not fit",)),
    "all_sizes_1e9": (lambda c: setting("model", "vocab_size", value=BIG)(setting("model", "rnn_size", value=BIG)(c)),
                      ("do not fit",)),
    "expanded_huge": (weight(DECODER, lambda t: t[:1, :1].expand(10 ** 5, 10 ** 5)), ("not a dense float32",)),
}

RESUME_CASES: dict[str, tuple[Change, tuple[str, ...]]] = {
    **{f"no_{key}": (dropping("resume", key), ("incomplete", key)) for key in
       ("optimizer", "learning_rate", "loader_position", "hidden", "rng", "cuda_rng", "loss0", "seconds")},
    "resume_a_list": (setting("resume", value=[]), ("incomplete",)),
    "weights_only": (dropping("resume"), ("weights only",)),
    "no_data_source": (dropping("run"), ("data_source missing",)),
    "learning_rate_nan": (setting("resume", "learning_rate", value=math.nan), ("learning_rate nan",)),
    "learning_rate_zero": (setting("resume", "learning_rate", value=0), ("learning_rate 0",)),
    "learning_rate_a_string": (setting("resume", "learning_rate", value="fast"), ("learning_rate 'fast'",)),
    "loader_position_negative": (setting("resume", "loader_position", value=-1), ("loader_position -1",)),
    "loader_position_a_float": (setting("resume", "loader_position", value=2.5), ("loader_position 2.5",)),
    "loss0_nan": (setting("resume", "loss0", value=math.nan), ("loss0 nan",)),
    "seconds_negative": (setting("resume", "seconds", value=-1.0), ("seconds -1",)),
    "losses_fewer_than_iterations": (setting("iteration", value=4), ("3 train losses for 4 iterations",)),
    "validation_after_the_end": (setting("val_losses", value=[[9, 2.0]]), ("after its iteration 3",)),
    "hidden_one_part": (lambda c: setting("resume", "hidden", value=c["resume"]["hidden"][:1])(c),
                        ("hidden is 2 x 2 x 8, not",)),
    "hidden_more_layers": (setting("resume", "hidden", value=lambda: [torch.zeros(3, BATCH, HIDDEN)] * 2),
                           ("hidden is 3 x 2 x 8, 3 x 2 x 8, not 2 x 2 x 8, 2 x 2 x 8",)),
    "hidden_other_rnn_size": (setting("resume", "hidden", value=lambda: [torch.zeros(LAYERS, BATCH, 4)] * 2),
                              ("not 2 x 2 x 8",)),
    "hidden_other_batch": (setting("resume", "hidden", value=lambda: [torch.zeros(LAYERS, 3, HIDDEN)] * 2),
                           ("3 streams, its batch_size is 2",)),
    "hidden_a_tensor": (setting("resume", "hidden", value=lambda: torch.zeros(LAYERS, BATCH, HIDDEN)), ("hidden",)),
    "hidden_nan": (setting("resume", "hidden", value=lambda: [torch.full((LAYERS, BATCH, HIDDEN), math.nan)] * 2),
                   ("NaN",)),
    "hidden_float64": (setting("resume", "hidden", value=lambda: [torch.zeros(LAYERS, BATCH, HIDDEN).double()] * 2),
                       ("float32",)),
    "optimizer_not_a_dict": (setting("resume", "optimizer", value=[1]), ("optimizer is not",)),
    "optimizer_state_a_list": (setting("resume", "optimizer", "state", value=[]), ("optimizer is not",)),
    "optimizer_state_unknown_parameter": (setting("resume", "optimizer", "state", 99, value={}),
                                          ("parameter 99 the model does not have",)),
    "optimizer_state_missing_part": (dropping("resume", "optimizer", "state", 0, "square_avg"), ("parameter 0",)),
    "optimizer_state_wrong_shape": (setting("resume", "optimizer", "state", 0, "square_avg", value=torch.zeros(3)),
                                    ("square_avg of parameter 0", f"(32, {len(VOCAB)})")),
    "optimizer_step_float64": (setting("resume", "optimizer", "state", 1, "step", value=torch.tensor(1.0).double()),
                               ("step of parameter 1",)),
    "optimizer_state_nan": (lambda c: setting("resume", "optimizer", "state", 2, "square_avg",
                                              value=torch.full_like(c["resume"]["optimizer"]["state"][2]["square_avg"],
                                                                    math.nan))(c), ("square_avg of parameter 2",)),
    "rng_garbage": (setting("resume", "rng", value=lambda: torch.full((5056,), 255, dtype=torch.uint8)), ("rng",)),
    "rng_short": (setting("resume", "rng", value=lambda: torch.zeros(10, dtype=torch.uint8)), ("rng",)),
    "rng_floats": (setting("resume", "rng", value=lambda: torch.zeros(5056)), ("rng",)),
    "rng_a_list": (setting("resume", "rng", value=[1, 2]), ("rng",)),
    "cuda_rng_a_string": (setting("resume", "cuda_rng", value="state"), ("cuda_rng",)),
}

# the options a -resume takes up, each checked with its option's type and range
OPTION_CASES: dict[str, tuple[Change, tuple[str, ...]]] = {
    "opt_dropout_5": (setting("opt", "dropout", value=5.0), ("saved options are not valid", "-dropout", "5")),
    "opt_dropout_negative": (setting("opt", "dropout", value=-1), ("-dropout", "-1")),
    "opt_dropout_nan": (setting("opt", "dropout", value=math.nan), ("-dropout", "nan")),
    "opt_batch_size_1e300": (setting("opt", "batch_size", value=1e300), ("-batch_size must be a 64-bit integer",
                                                                         "1e+300")),
    "opt_batch_size_huge_int": (setting("opt", "batch_size", value=2 ** 100), ("-batch_size", "101 bits")),
    "opt_model_unknown": (setting("opt", "model", value="transformer"), ("-model", "transformer")),
    "opt_learning_rate_a_string": (setting("opt", "learning_rate", value="0.1"), ("-learning_rate must be a number",)),
    "opt_flag_2": (setting("opt", "accurate_gpu_timing", value=2.5), ("-accurate_gpu_timing",)),
    "opt_encoding_unknown": (setting("opt", "encoding", value="ebcdic-xx"), ("ebcdic-xx",)),
}


def saved(tmp_path: Path, change: Change, name: str = "ck.pt") -> Path:
    return write(tmp_path / name, change(tiny_checkpoint()))


def refused(path: Path, *fragments: str, action: Callable[[Path], object]) -> None:
    with pytest.raises(UserError) as error:
        action(path)
    message = str(error.value)
    assert str(path) in message and "\n" not in message and len(message) < 400, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def load_model(path: Path) -> CharRNN:
    return model_from_checkpoint(load_checkpoint(str(path)), str(path))


def resume_check(path: Path) -> None:
    require_training_state(load_checkpoint(str(path)), str(path))


def resumed_options(path: Path) -> None:
    parsed = parse_options(["-resume", str(path)], "train.py", "", train_script.OPTIONS)
    train_script.resumed_options(parsed, load_checkpoint(str(path)))


@pytest.mark.parametrize("case", LOAD_CASES, ids=list(LOAD_CASES))
def test_a_broken_checkpoint_is_refused_in_one_line(tmp_path, case):
    change, fragments = LOAD_CASES[case]
    refused(saved(tmp_path, change), *fragments, action=load_model)


@pytest.mark.parametrize("case", RESUME_CASES, ids=list(RESUME_CASES))
def test_a_broken_training_state_is_refused_by_resume(tmp_path, case):
    change, fragments = RESUME_CASES[case]
    path = saved(tmp_path, change)
    load_model(path)  # the weights are fine: sample.py and -init_from take it
    refused(path, *fragments, action=resume_check)


@pytest.mark.parametrize("case", OPTION_CASES, ids=list(OPTION_CASES))
def test_saved_options_are_checked_as_options(tmp_path, case):
    change, fragments = OPTION_CASES[case]
    refused(saved(tmp_path, change), *fragments, action=resumed_options)


def test_the_tiny_checkpoint_loads_and_resumes(tmp_path):
    """The cases above fail for their change alone: unchanged, every check passes."""
    path = saved(tmp_path, lambda checkpoint: checkpoint)
    load_model(path)
    resume_check(path)
    resumed_options(path)


# ---- the archive -----------------------------------------------------------------------------------------

def on_pickle(change: Callable[[bytes], bytes]) -> Callable[[str, bytes], bytes]:
    return lambda name, data: change(data) if name.endswith("data.pkl") else data


def on_record(suffix: str, content: bytes) -> Callable[[str, bytes], bytes]:
    return lambda name, data: content if name.endswith(suffix) else data


TAMPERED: dict[str, Callable[[str, bytes], bytes]] = {
    # torch.load warns of a pickle protocol other than its own, then loads or fails
    "pickle_protocol": on_pickle(lambda data: b"\x80\x09" + data[2:]),
    "pickle_protocol_truncated": on_pickle(lambda data: b"\x80\x09" + data[2:len(data) // 2]),
    "pickle_truncated": on_pickle(lambda data: data[:len(data) // 2]),
    "storage_size": on_pickle(lambda data: first_storage_size(data, 7)),
    "byteorder": on_record("/byteorder", b"middle"),
    "version": on_record("/version", b"99\n"),
    "format_version": on_record("/.format_version", b"99"),
    "compressed": lambda name, data: data,  # then re-zipped, compressed
}


@pytest.mark.parametrize("tamper", TAMPERED)
def test_a_tampered_archive_loads_or_is_one_line_and_no_warning(tmp_path, capfd, tamper):
    """What torch.load makes of a damaged archive: a model, or a UserError; never its warnings (two
    more lines on stderr)."""
    path = saved(tmp_path, lambda checkpoint: checkpoint)
    rewrite_archive(path, TAMPERED[tamper])
    if tamper == "compressed":  # a re-zipped checkpoint: refused, though it inflates to no more than this
        with zipfile.ZipFile(path) as archive:
            entries = [(info.filename, archive.read(info)) for info in archive.infolist()]
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in entries:
                archive.writestr(name, data)
    capfd.readouterr()
    try:
        load_model(path)
    except UserError as error:
        assert str(path) in str(error) and "\n" not in str(error)
        assert tamper not in ("pickle_protocol", "format_version"), error  # these load
    else:
        assert tamper in ("pickle_protocol", "format_version")
    assert capfd.readouterr() == ("", "")


def test_entries_claiming_more_than_the_file_are_refused(tmp_path):
    """Stored entries whose sizes add up past the file's (a central directory listing one entry's
    bytes twice, say) are refused before torch.load reads any of them."""
    path = saved(tmp_path, lambda checkpoint: checkpoint)
    name, size = record(path, "/data/0"), path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        crc = archive.getinfo(name).CRC
    set_entry(path, name, zipfile.ZIP_STORED, crc, size, size)
    refused(path, "larger than the file", action=load_model)


# ---- memory: the capped child ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def capped(tmp_path_factory) -> tuple[dict[str, Outcome], dict[str, int], dict[str, Path]]:
    folder = tmp_path_factory.mktemp("capped")
    paths = {case: saved(folder, change, f"{case}.pt") for case, (change, _) in MEMORY_CASES.items()}
    zip_bomb(folder / "bomb.pt")
    paths["zip_bomb"] = folder / "bomb.pt"
    paths["valid"] = saved(folder, lambda checkpoint: checkpoint, "valid.pt")
    outcomes, memory = load_in_capped_child(list(paths.values()))
    return {case: outcomes[str(path)] for case, path in paths.items()}, memory, paths


@pytest.mark.parametrize("case", [*MEMORY_CASES, "zip_bomb"])
def test_sizes_are_checked_before_anything_is_allocated(capped, case):
    outcomes, _, paths = capped
    fragments = MEMORY_CASES[case][1] if case in MEMORY_CASES else ("compressed", "refusing to inflate")
    outcome = outcomes[case]
    assert outcome.outcome.startswith(f"UserError: {paths[case]}"), outcome.outcome
    for fragment in fragments:
        assert fragment in outcome.outcome, (fragment, outcome.outcome)
    assert outcome.seconds < 2, outcome


def test_the_capped_child_loads_a_valid_checkpoint(capped):
    """The cap leaves room for a real load (so the refusals above are not out-of-memory errors), and
    the child stayed small: nothing was inflated (VmHWM is its peak resident memory)."""
    outcomes, memory, _ = capped
    assert outcomes["valid"].outcome == "loaded", outcomes["valid"]
    assert memory["VmHWM"] < RESIDENT_LIMIT_MB, memory


def test_the_zip_bomb_is_what_it_claims(tmp_path):
    """The bomb really inflates: its record's stream yields the declared bytes (checked in 64 MiB pieces,
    without holding them) and its pickle asks for them."""
    path = tmp_path / "bomb.pt"
    zip_bomb(path, inflated=256 << 20)
    assert path.stat().st_size < 400_000
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(record(path, "/data/0"))
        assert info.compress_type == zipfile.ZIP_DEFLATED and info.file_size == 256 << 20
        with archive.open(info) as stream:
            total = sum(len(piece) for piece in iter(lambda: stream.read(64 << 20), b""))
    assert total == 256 << 20


# ---- writing ------------------------------------------------------------------------------------------------

def test_a_value_too_deep_to_write_is_reported_as_such(tmp_path):
    """save_checkpoint names the cause (a RecursionError is a RuntimeError, as torch's full-disk error
    is), not a full disk."""
    with pytest.raises(UserError) as error:
        save_checkpoint(str(tmp_path / "ck.pt"), {"opt": {"x": nested(100_000)}})
    assert "RecursionError" in str(error.value) and "disk" not in str(error.value)
    assert list(tmp_path.iterdir()) == []


# ---- end to end -------------------------------------------------------------------------------------------

@dataclass
class Run:
    script: str
    args: list[str]
    change: Change
    fragments: tuple[str, ...]


RESUME = ["-resume", "ck.pt"]
SAMPLE = ["ck.pt", "-length", "5", "-gpuid", "-1"]
RUNS: dict[str, Run] = {
    "sample_bytes_above_255": Run("sample.py", SAMPLE, LOAD_CASES["byte_above_255"][0],
                                  ("is not a byte, in a vocabulary of bytes",)),
    "sample_opt_nested": Run("sample.py", SAMPLE, LOAD_CASES["opt_nested"][0], ("seq_length",)),
    "sample_tokens_fewer": Run("sample.py", SAMPLE, LOAD_CASES["tokens_fewer"][0], (f"{len(VOCAB) - 1} tokens",)),
    "serve_weight_meta": Run("serve.py", ["ck.pt", "-port", "0", "-gpuid", "-1"], LOAD_CASES["weight_meta"][0],
                             ("not a dense float32",)),
    "evaluate_dropout_nan": Run("evaluate.py", ["ck.pt", "-data_dir", "data", "-gpuid", "-1"],
                                LOAD_CASES["dropout_nan"][0], ("dropout",)),
    "init_from_weight_expanded": Run("train.py", ["-init_from", "ck.pt", "-data_dir", "data", "-gpuid", "-1"],
                                     LOAD_CASES["weight_expanded"][0], ("not a dense float32",)),
    "resume_hidden": Run("train.py", RESUME, RESUME_CASES["hidden_more_layers"][0], ("training state", "hidden")),
    "resume_optimizer": Run("train.py", RESUME, RESUME_CASES["optimizer_state_wrong_shape"][0], ("square_avg",)),
    "resume_rng": Run("train.py", RESUME, RESUME_CASES["rng_garbage"][0], ("rng",)),
    "resume_learning_rate": Run("train.py", RESUME, RESUME_CASES["learning_rate_nan"][0], ("learning_rate nan",)),
    "resume_missing_key": Run("train.py", RESUME, RESUME_CASES["no_seconds"][0], ("seconds missing",)),
    "resume_loader_past_the_data": Run("train.py", RESUME, setting("resume", "loader_position", value=10 ** 6),
                                       ("loader_position 1000000", "training batches")),
    "resume_opt_dropout": Run("train.py", RESUME, OPTION_CASES["opt_dropout_5"][0], ("-dropout", "5")),
    "resume_opt_batch_size": Run("train.py", RESUME, OPTION_CASES["opt_batch_size_1e300"][0],
                                 ("hidden holds 2 streams, its batch_size is 1e+300",)),
}
CAPPED_RUNS = {  # the memory cases through the scripts, as a fresh interpreter with the cap
    "sample_num_layers_1e9": Run("sample.py", SAMPLE, MEMORY_CASES["num_layers_1e9"][0], ("do not fit",)),
    "resume_rnn_size_1e9": Run("train.py", RESUME, MEMORY_CASES["rnn_size_1e9"][0], ("do not fit",)),
}


CONTROL = Run("train.py", RESUME, lambda checkpoint: checkpoint, ())


def run_in_folder(folder: Path, data: Path, run: Run, capped: bool) -> tuple:
    """(result, the folder before, after) of `run` on its checkpoint in a folder of its own: forked
    from a zygote (conftest.run_script), or when `capped` as a fresh interpreter capped at
    MEMORY_LIMIT_MB."""
    folder.mkdir()
    shutil.copytree(data, folder / "data")  # copy2: mtimes kept, so the data's cache stays fresh
    write(folder / "ck.pt", run.change(tiny_checkpoint()))
    before = snapshot(folder)
    result = run_script(run.script, *run.args, cwd=folder, memory_mb=MEMORY_LIMIT_MB if capped else None,
                        timeout=60 if capped else 120)
    return result, before, snapshot(folder)


@pytest.fixture(scope="module")
def script_runs(tmp_path_factory) -> dict[str, tuple]:
    """Every run's (result, folder before, after), two at a time: forked, the capped ones fresh."""
    root = tmp_path_factory.mktemp("hostile_runs")
    data = data_folder(root / "shared_data", TEXT)
    with Runs(workers=2) as runs:
        for name, run in {**RUNS, "control_resume": CONTROL}.items():
            runs.submit(name, run_in_folder, root / name, data, run, False)
        for name, run in CAPPED_RUNS.items():
            runs.submit(name, run_in_folder, root / name, data, run, True)
        return runs.results()


@pytest.mark.parametrize("name", [*RUNS, *CAPPED_RUNS])
def test_scripts_refuse_hostile_files_in_one_line_writing_nothing(script_runs, name):
    result, before, after = script_runs[name]
    run = RUNS.get(name) or CAPPED_RUNS[name]
    assert_user_error(result, "ck.pt", *run.fragments)
    changed = sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))
    assert not changed, f"files created, removed or changed: {changed}"


def test_the_tiny_checkpoint_resumes_through_train(script_runs):
    """The control: unchanged, the same checkpoint resumes to the end of its run."""
    result = ok(script_runs["control_resume"][0])
    assert "resuming at iteration 4" in result.stdout


def test_a_number_option_saved_as_an_integer_is_a_number(tmp_path):
    """As parse_options would give it (Lua's numbers come as integers where they are integral)."""
    resumed_options(saved(tmp_path, setting("opt", "learning_rate", value=1)))

