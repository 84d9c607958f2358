"""Measure how well a checkpoint predicts text: mean loss in nats per character, bits per character
and perplexity (char-rnn's PR 142 and issue 158). Works with this project's .pt checkpoints and
with Torch7 char-rnn .t7 checkpoints.

    python evaluate.py cv/lm_lstm_epoch30.00_1.3950.t7 -data_dir data/tinyshakespeare
    python evaluate.py cv/lm_epoch30.pt -input some_other_text.txt

-data_dir DIR: char-rnn's batches over DIR/input.txt (the whole text cut to a multiple of
  batch_size x seq_length, laid out as batch_size rows, the splits taken as column blocks) and the
  mean loss over the chosen split, from a zero state carried across its batches: char-rnn's
  eval_split, so `-split val` gives the validation loss char-rnn reported for the same options.
  -batch_size, -seq_length, -train_frac and -val_frac default to the checkpoint's.
-input FILE: the whole file as one stream, from a zero state: every character after the first is
  predicted once, from all that precede it (the exact loss of the text under the model; it is fed
  in chunks of INPUT_CHUNK characters with the state carried, which changes only the speed).

Either way the text is tokenised as the checkpoint was trained (bytes for char-rnn's .t7 files;
with -data_dir, -encoding may name the codec the folder's text is written in instead) and must use
only characters of the checkpoint's vocabulary; token ids are the checkpoint's.

    python evaluate.py -list cv

-list DIR (alone: no checkpoint argument, no other option) lists the checkpoints of DIR with their
epoch, iteration, train and val loss, each run's best marked, without loading their weights
(util/listing.py describes the format).
"""
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from model import CharRNN
from util.checkpoint import (
    checkpoint_vocab,
    load_checkpoint,
    model_from_checkpoint,
)
from util.corpus import DecodeError, preprocess
from util.data import SPLITS, BatchLoader, char_rnn_splits, id_storage, load_data_dir, read_h5_json
from util.device import GPU_OPTIONS, THREADS_OPTION, configure_cpu, select_device
from util.errors import UserError, diagnostic, run_main
from util.listing import list_checkpoints
from util.options import Option, Parsed, lua_number, parse_options, recorded_values
from util.training import evaluate_split
from util.vocab import BYTES, Vocab, check_text_encoding

OPTIONS = [
    Option("data_dir", "", "folder with input.txt: evaluate on char-rnn's split of it (see -split)"),
    Option("input", "", "text file: evaluate on the whole of it, as one stream"),
    Option("split", "val", "with -data_dir: train, val or test"),
    Option("batch_size", 0, "with -data_dir: sequences per batch; 0 = the checkpoint's (else 50)"),
    Option("seq_length", 0, "with -data_dir: time steps per batch; 0 = the checkpoint's (else 50)"),
    Option("train_frac", 0.0, "with -data_dir: fraction of batches for training; 0 = the checkpoint's (else 0.95)"),
    Option("val_frac", 0.0, "with -data_dir: fraction of batches for validation; 0 = the checkpoint's (else 0.05)"),
    Option("encoding", "", "with -data_dir: text codec of input.txt (utf-8, latin-1, ...; bytes for a byte-level "
                           "model); '' = the checkpoint's"),
    *GPU_OPTIONS,
    THREADS_OPTION,
    Option("verbose", 1, "0 = print only the result line; diagnostics go to stderr"),
    Option("list", "", "folder: list its checkpoints (epoch, iteration, losses, each run's best) instead; "
           "alone, without a checkpoint or other options"),
]
DESCRIPTION = "Loss, bits per character and perplexity of a checkpoint on text; -list DIR lists checkpoints."
CHECKPOINT = [("checkpoint", "model checkpoint (.pt or char-rnn .t7); not with -list")]
FALLBACKS = {"batch_size": 50, "seq_length": 50, "train_frac": 0.95, "val_frac": 0.05}
DATA_DIR_ONLY = ("split", "batch_size", "seq_length", "train_frac", "val_frac", "encoding")
# -input's chunk length: it changes only the speed, never the loss. Each model call has a fixed
# cost, so chunks are long enough that it no longer shows (longer ones were no faster), while a
# chunk's logits (chunk x vocabulary floats) stay small even for large vocabularies. Timed with
# evaluate.py -input on a real char-rnn checkpoint; figures and command in bench/README.md.
INPUT_CHUNK = 1000


@dataclass
class Result:
    loss: float  # mean negative log-likelihood, nats per character
    characters: int  # characters scored
    source: str  # what was scored, for the result line
    split: str = ""  # with -data_dir, the split's name

    @property
    def bits(self) -> float:
        return self.loss / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    def line(self) -> str:
        return (f"{self.split + ' ' if self.split else ''}loss {self.loss:.6f} nats/char, {self.bits:.6f} bits/char, "
                f"perplexity {self.perplexity:.4f} ({self.characters} characters, {self.source})")


def check_source(opt: SimpleNamespace, given: set[str]) -> None:
    """Exactly one of -data_dir and -input, and only options that apply to it."""
    if bool(opt.data_dir) == bool(opt.input):
        raise UserError("give either -data_dir DIR (char-rnn's split of DIR/input.txt) or -input FILE "
                        "(a whole text), " + ("not both" if opt.data_dir else "one of them"))
    if opt.input and given & set(DATA_DIR_ONLY):
        names = ", ".join(f"-{name}" for name in DATA_DIR_ONLY if name in given)
        raise UserError(f"{names} only apply with -data_dir; -input FILE is evaluated as one stream")
    if opt.split not in SPLITS:
        raise UserError(f"-split must be train, val or test, not '{opt.split}'")
    if opt.encoding not in ("", BYTES):
        check_text_encoding(opt.encoding)


def resolve_options(opt: SimpleNamespace, saved: dict) -> None:
    """Check the batch shape and fractions; 0 means the checkpoint's value (else char-rnn's default)."""
    for name, fallback in FALLBACKS.items():
        value = getattr(opt, name)
        if value < 0 or (isinstance(fallback, float) and value > 1):
            raise UserError(f"-{name} must be {'in [0, 1]' if isinstance(fallback, float) else '0 or more'}, "
                            f"not {lua_number(value)}")
        if value == 0:
            value = saved.get(name, fallback)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                value = fallback
            setattr(opt, name, int(value) if isinstance(fallback, int) else float(value))
    if opt.train_frac + opt.val_frac > 1 + 1e-12:
        raise UserError(f"-train_frac {lua_number(opt.train_frac)} and -val_frac {lua_number(opt.val_frac)} "
                        f"sum to more than 1")


def tokenise(path: str, encoding: str, what: str) -> tuple[Vocab, np.ndarray]:
    """The file's tokens in `encoding` (a UTF-8 BOM dropped, as preprocess.py does) as 0-based ids
    of their own sorted vocabulary; chunked through util.corpus, so memory stays small."""
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise UserError(f"{path} is empty: there is nothing to evaluate")
    with tempfile.TemporaryDirectory(prefix="evaluate-") as folder:
        h5_path, json_path = os.path.join(folder, "tokens.h5"), os.path.join(folder, "tokens.json")
        try:
            preprocess(path, h5_path, json_path, 0.0, 0.0, encoding, log=lambda _: None)
        except DecodeError as error:
            raise UserError(f"{str(error).split(';')[0]}, but {what} reads {encoding} text") from None
        vocab, splits = read_h5_json(h5_path, json_path)
    return vocab, splits["train"]


def describe(token: str, vocab: Vocab) -> str:
    if vocab.is_bytes and ord(token) >= 128:
        return f"byte 0x{ord(token):02x}"
    return repr(token)


def onto_checkpoint(ids: np.ndarray, data_vocab: Vocab, vocab: Vocab, text: str, path: str) -> np.ndarray:
    """Data ids (of the data's own vocabulary) as the checkpoint's ids for the same characters."""
    missing = [t for t in data_vocab.tokens if t not in vocab.index]
    if missing:
        names = " ".join(describe(t, data_vocab) for t in missing[:20])
        more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise UserError(f"{text} has {len(missing)} character(s) that are not in the vocabulary of {path}: "
                        f"{names}{more}; the model cannot score them")
    if data_vocab.tokens == vocab.tokens:
        return ids
    mapping = np.array([vocab.index[t] for t in data_vocab.tokens], dtype=id_storage(len(vocab)))
    return mapping[ids]


def data_dir_ids(data_dir: str, vocab: Vocab, path: str, log, encoding: str = "") -> tuple[np.ndarray, str]:
    """DIR/input.txt as the checkpoint's ids, read in `encoding` (-encoding), by default as the
    checkpoint was trained: bytes for a byte-level model such as a char-rnn .t7, else its codec, where
    text that does not decode is an error (a byte fallback would score other characters)."""
    text = os.path.join(data_dir, "input.txt")
    chosen = encoding or vocab.encoding
    if (chosen == BYTES) != vocab.is_bytes:
        raise UserError(f"-encoding {chosen} does not fit {path}, a model of "
                        f"{'bytes: give -encoding bytes' if vocab.is_bytes else 'characters: give their codec'}, "
                        f"or leave -encoding out to read the text as the checkpoint was trained")
    try:
        data_vocab, ids = load_data_dir(data_dir, log, chosen)
    except DecodeError as error:
        head = str(error).split(";")[0]
        raise UserError(f"{head} (-encoding {chosen})" if encoding else
                        f"{head}, but {path} reads {chosen} text; give the text's codec with -encoding") from None
    return onto_checkpoint(ids, data_vocab, vocab, text, path), text


def evaluate_data_dir(model: CharRNN, vocab: Vocab, opt: SimpleNamespace, device: torch.device,
                      log: Callable[[str], None]) -> Result:
    """char-rnn's eval_split on the chosen split of DIR/input.txt (util.training.evaluate_split)."""
    ids, text = data_dir_ids(opt.data_dir, vocab, opt.checkpoint, log, opt.encoding)
    batch_size, seq_length = opt.batch_size, opt.seq_length
    splits = char_rnn_splits(ids, batch_size, seq_length, opt.train_frac, opt.val_frac)
    counts = ", ".join(f"{name} {splits[name].n_batches}" for name in SPLITS)
    log(f"data: {text}, {len(ids)} characters; char-rnn batches of {batch_size} x {seq_length}, train_frac "
        f"{lua_number(opt.train_frac)}, val_frac {lua_number(opt.val_frac)}: {counts}")
    chosen = splits[opt.split]
    if not chosen.wanted:
        raise UserError(f"there is no {opt.split} split: -train_frac {lua_number(opt.train_frac)} and -val_frac "
                        f"{lua_number(opt.val_frac)} leave no fraction for it")
    if chosen.n_batches == 0:
        raise UserError(f"the {opt.split} split of {text} ({len(ids)} characters; batches: {counts}) is too "
                        f"small for one batch of {batch_size} x {seq_length} characters; use a smaller "
                        f"-batch_size or -seq_length")
    for name, split in splits.items():  # only the chosen split has to hold a batch here
        split.wanted = name == opt.split
    loader = BatchLoader(splits, batch_size, seq_length)
    loader.keep_on(device)
    loss = evaluate_split(model, loader, opt.split, device)
    assert loss is not None  # only a stop test ends a pass early, and none is given: SIGTERM raises
    return Result(loss, chosen.n_batches * batch_size * seq_length, f"split {opt.split} of {opt.data_dir}",
                  opt.split)


def evaluate_stream(model: CharRNN, ids: np.ndarray, device: torch.device, chunk_length: int | None = None) -> float:
    """Mean loss over one stream: from a zero state, state carried from chunk to chunk, each token
    predicted from all before it."""
    chunk_length = chunk_length or INPUT_CHUNK
    model.eval()
    state = model.zero_state(1)
    tokens = torch.from_numpy(ids.astype(np.int64))
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, chunk_length):
            chunk = tokens[start:start + chunk_length + 1].to(device)
            x, y = chunk[:-1].unsqueeze(0), chunk[1:]
            logits, state = model(x, state)
            # summed in float64 on the CPU (MPS has no float64)
            total += F.cross_entropy(logits[0], y, reduction="none").cpu().double().sum().item()
    return total / (len(ids) - 1)


def evaluate_input(model, vocab: Vocab, opt, device: torch.device, log) -> Result:
    data_vocab, ids = tokenise(opt.input, vocab.encoding, opt.checkpoint)
    ids = onto_checkpoint(ids, data_vocab, vocab, opt.input, opt.checkpoint)
    if len(ids) < 2:
        raise UserError(f"{opt.input} has {len(ids)} character(s): at least 2 are needed to predict one")
    log(f"data: {opt.input}, {len(ids)} characters, evaluated as one stream")
    return Result(evaluate_stream(model, ids, device), len(ids) - 1, f"all of {opt.input}")


def evaluate(argv: list[str]) -> Result:
    parsed = parse_options(argv, "evaluate.py", DESCRIPTION, OPTIONS, positional=CHECKPOINT)
    if "list" in parsed.given:
        raise UserError(f"-list DIR lists the checkpoints of a folder and takes no checkpoint argument "
                        f"(got {parsed.values.checkpoint})")
    opt = parsed.values
    check_source(opt, parsed.given)  # before the (slow) checkpoint load
    checkpoint = load_checkpoint(opt.checkpoint)
    saved = recorded_values([option for option in OPTIONS if option.name in FALLBACKS], checkpoint["opt"],
                            opt.checkpoint)  # each of its option's type
    resolve_options(opt, saved)
    log = diagnostic if opt.verbose else (lambda _: None)
    configure_cpu(opt.threads)
    device = select_device(opt.gpuid, opt.opencl, log=diagnostic)
    vocab = checkpoint_vocab(checkpoint)
    model = model_from_checkpoint(checkpoint, opt.checkpoint).to(device).eval()
    shape = checkpoint["model"]
    log(f"loaded {opt.checkpoint}: {shape['model_type']}, {shape['num_layers']} x {shape['rnn_size']}, "
        f"vocabulary {len(vocab)} ({vocab.encoding})")
    started = time.perf_counter()
    if opt.data_dir:
        result = evaluate_data_dir(model, vocab, opt, device, log)
    else:
        result = evaluate_input(model, vocab, opt, device, log)
    log(f"evaluated in {time.perf_counter() - started:.2f}s on {device}")
    return result


# ---- -list DIR ------------------------------------------------------------------------------------

def list_request(argv: list[str]) -> str | None:
    """The folder of `-list DIR` when argv asks for a listing; None when it names a checkpoint to
    evaluate (evaluate() refuses -list with one). -help is answered by the first parse, whose usage
    line shows the checkpoint argument."""
    try:
        parse_options(argv, "evaluate.py", DESCRIPTION, OPTIONS, positional=CHECKPOINT)
        return None
    except UserError as error:
        try:
            alone = parse_options(argv, "evaluate.py", DESCRIPTION, OPTIONS)
        except UserError:
            raise error from None
        if "list" not in alone.given:
            raise error from None
        return list_folder(alone)


def list_folder(parsed: Parsed) -> str:
    others = [f"-{option.name}" for option in OPTIONS if option.name in parsed.given and option.name != "list"]
    if others:
        raise UserError(f"-list DIR takes no other options ({', '.join(others)} given): it only lists the "
                        f"checkpoints of DIR")
    if not parsed.values.list:
        raise UserError("-list needs a folder, e.g. -list cv")
    return parsed.values.list


def main(argv: list[str]) -> None:
    folder = list_request(argv)
    if folder is not None:
        print("\n".join(list_checkpoints(folder)), flush=True)
    else:
        print(evaluate(argv).line(), flush=True)


if __name__ == "__main__":
    run_main(main)
