"""Generate text from a checkpoint, as char-rnn's sample.lua does, and more: top-k and top-p
filters, many samples in one batch, stop texts, beam search, a copy check, an interactive mode.

    python sample.py cv/lm_epoch30.pt -temperature 0.8
    python sample.py cv/lm_epoch30.pt -primetext 分开 -num_samples 4 -top_k 40 -stop $'\\n\\n' -check_copy 1

The generation itself is the Python API's (util/charmodel.py); this is its command line.
"""
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import BinaryIO

from util.charmodel import CharModel, Request
from util.copycheck import Corpus, read_corpus, report_line
from util.device import CUDA_GRAPHS_OPTION, GPU_OPTIONS, configure_cpu, graphs_requested, manual_seed, select_device
from util.errors import UserError, diagnostic, run_main
from util.files import read_regular, replaced_atomically
from util.options import Option, parse_options

SAMPLE_DELIMITER = "=" * 20  # the line between samples, as gpt-2-simple writes it
MANY_STREAMS = 64  # streams (or beam width) from which sampling uses every core
# The longest -primefile read: a prompt, fed a character at a time (a 2 x 128 LSTM on one core primes
# about 7,000 characters a second), so no corpus and no device (/dev/zero) is taken for one.
PRIMEFILE_LIMIT = 1 << 20

OPTIONS = [
    Option("seed", 123, "random number generator's seed (each of -num_samples has its own, mixed from it)"),
    Option("sample", 1, "0 = take the most likely character (argmax), 1 = sample from the distribution"),
    Option("primetext", "", "text used to prime the hidden state; printed before the generated text"),
    Option("primefile", "", "read the primetext from this file (at most 1 MiB)"),
    Option("length", 2000, "number of characters to generate, not counting the primetext (the most, with -stop)"),
    Option("temperature", 1.0, "higher is more diverse, lower more conservative; must be > 0"),
    Option("top_k", 0, "draw only from the K most likely characters; 0 = all"),
    Option("top_p", 1.0, "draw only from the most likely characters that make up probability P (nucleus); 1 = all"),
    Option("num_samples", 1, "samples generated at once, printed one after another between lines of ="),
    Option("stop", "", "end a sample where this text first appears (the text itself left out), e.g. $'\\n\\n'"),
    Option("beam_size", 0, "with -sample 0: the most probable text a beam search of this width finds; 0 = off"),
    Option("check_copy", "", "a text file (1 = the training text named in the checkpoint): report on stderr "
                             "how much of each sample occurs in it verbatim"),
    Option("output", "", "write the samples to this file instead of stdout"),
    Option("overwrite", 0, "1 = let -output replace an existing file"),
    Option("interactive", 0, "read a primetext per line from stdin and print a continuation of each"),
    Option("skip_unk", 0, "1 = drop primetext characters missing from the vocabulary, with a warning"),
    *GPU_OPTIONS,
    CUDA_GRAPHS_OPTION,
    Option("verbose", 1, "0 = print only the generated text; diagnostics go to stderr"),
]


def main(argv: list[str]) -> None:
    opt = parse_options(argv, "sample.py", "Sample text from a trained character model.", OPTIONS,
                        positional=[("checkpoint", "model checkpoint to sample from")]).values
    check_output(opt)
    graphs = graphs_requested(opt.cuda_graphs)
    manual_seed(opt.seed)  # the seed's range checked; torch's own generator also seeded, as before
    model = CharModel.load(opt.checkpoint)
    if opt.interactive and (opt.primetext or opt.primefile):
        raise UserError("-interactive reads each primetext from stdin: give it without -primetext and -primefile")
    request = make_request(model, opt, [] if opt.interactive else prime_ids(model, opt))
    corpus = copy_corpus(model, opt.check_copy)
    model.to(select_device(opt.gpuid, opt.opencl, log=diagnostic))  # after every check of the options
    model.cuda_graphs = graphs
    # A step's products are small: below about MANY_STREAMS rows a second thread costs more in
    # hand-over than it saves (bench/sample_speed.py), and on a busy machine far more.
    configure_cpu(0 if max(request.num_samples, request.beam_size) >= MANY_STREAMS else 1)
    if opt.verbose:
        diagnostic(f"loaded {opt.checkpoint}: {model.describe()}")
    with output_stream(opt) as out:
        if opt.interactive:
            run_interactive(model, opt, request, out, corpus)
        else:
            write_samples(model, request, out, corpus, opt.check_copy)


def prime_ids(model: CharModel, opt: SimpleNamespace) -> list[int]:
    """The primetext (or the primefile's text) as token ids, unknown characters handled."""
    text: str | bytes = command_line_text(model, opt.primetext)
    if opt.primefile:
        text = read_regular(opt.primefile, "-primefile", PRIMEFILE_LIMIT, why=", the most a primetext may be")
    try:
        ids = model.prime_ids(text, bool(opt.skip_unk), "primetext", " (use -skip_unk 1 to drop them)")
        dropped = model.unknown_names(text)
    except UnicodeDecodeError as error:
        raise UserError(f"-primefile {opt.primefile} is not valid {model.vocab.encoding} "
                        f"(byte offset {error.start})") from None
    if dropped:
        diagnostic(f"warning: dropping primetext characters not in the vocabulary: {dropped}")
    return ids


def make_request(model: CharModel, opt: SimpleNamespace, prime: list[int]) -> Request:
    return model.request(prime, opt.length, temperature=opt.temperature, top_k=opt.top_k, top_p=opt.top_p,
                         sample=bool(opt.sample), num_samples=opt.num_samples,
                         stop=command_line_text(model, opt.stop), seed=opt.seed,
                         beam_size=opt.beam_size, prefix="-")


def command_line_text(model: CharModel, text: str) -> str | bytes:
    """A command-line text for a byte-level model as the bytes the command line gave, even when
    they are not UTF-8 (Python decoded them with surrogateescape; os.fsencode undoes it)."""
    return os.fsencode(text) if model.vocab.is_bytes else text


def check_output(opt: SimpleNamespace) -> None:
    """-output's folder must exist, and its file must not, unless -overwrite 1."""
    if not opt.output:
        return
    folder = os.path.dirname(os.path.abspath(opt.output))
    if not os.path.isdir(folder):
        raise UserError(f"-output {opt.output}: the folder {folder} does not exist")
    if os.path.isdir(opt.output):
        raise UserError(f"-output {opt.output} is a folder")
    if os.path.exists(opt.output) and not opt.overwrite:
        raise UserError(f"-output {opt.output} exists; give -overwrite 1 to replace it")


@contextmanager
def output_stream(opt: SimpleNamespace) -> Iterator[BinaryIO]:
    """stdout, or -output's file, which appears whole when sampling ends (and not at all on an error)."""
    if not opt.output:
        yield sys.stdout.buffer
        return
    with replaced_atomically(opt.output, f"-output {opt.output}") as temporary, open(temporary, "wb") as out:
        yield out


def copy_corpus(model: CharModel, check_copy: str) -> Corpus | None:
    """-check_copy's text, indexed (read before sampling, so that a bad file stops the run first)."""
    if not check_copy:
        return None
    path = model.training_text if check_copy == "1" else check_copy
    if path is None:
        raise UserError(f"-check_copy 1: the training text named in {model.path} is not on disk; "
                        f"give the file instead")
    return read_corpus(path, model.vocab.encoding)


def write_samples(model: CharModel, request: Request, out: BinaryIO, corpus: Corpus | None,
                  corpus_name: str) -> None:
    """Each sample (primetext, continuation, newline) with a delimiter line between samples; one
    sample goes out a character at a time, as it is generated. Then the copy check's report."""
    encode = model.vocab.token_encoder()
    prime = b"".join(encode(t) for t in model.tokens(request.prime))
    if request.num_samples == 1 and not request.beam_size:
        samples = [stream_one(model, request, out, prime, encode)]
    else:
        samples = model.generate_ids(request)
        for k, ids in enumerate(samples):
            delimiter = encode(SAMPLE_DELIMITER + "\n") if k else b""
            out.write(delimiter + prime + b"".join(encode(t) for t in model.tokens(ids)) + encode("\n"))
        out.flush()
    if corpus is not None:
        name = model.training_text if corpus_name == "1" else corpus_name
        for k, ids in enumerate(samples):
            label = f"sample {k + 1}" if len(samples) > 1 else ""
            diagnostic(report_line(corpus.check(model.sample_text(ids)), str(name), label))


def stream_one(model: CharModel, request: Request, out: BinaryIO, prime: bytes, encode) -> list[int]:
    """One sample written as it is generated, each character flushed; its continuation's ids."""
    out.write(prime)
    out.flush()
    generated: list[int] = []
    for ids in model.stream_ids(request):
        for token in model.tokens(ids):
            out.write(encode(token))
            out.flush()
        generated += ids
    out.write(encode("\n"))
    out.flush()
    return generated


def run_interactive(model: CharModel, opt: SimpleNamespace, request: Request, out: BinaryIO,
                    corpus: Corpus | None) -> None:
    """A continuation of each line of stdin, the state fresh for each; line n draws as -seed
    seed + n would, so that a line given twice gets new text. A line with
    characters outside the vocabulary gets a warning and no continuation."""
    prompt = sys.stdin.isatty()
    for n, line in enumerate(input_lines(prompt)):
        try:
            prime = model.prime_ids(line, bool(opt.skip_unk), "line")
        except UserError as error:
            diagnostic(f"warning: {error}")
            continue
        seed = request.seed + n
        write_samples(model, Request(prime, request.length, request.sampling, request.num_samples, request.stop,
                                     seed, request.beam_size), out, corpus, opt.check_copy)


def input_lines(prompt: bool) -> Iterator[str]:
    """stdin's lines without their line break, until end of input; a prompt on stderr at a terminal."""
    while True:
        if prompt:
            sys.stderr.write("> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            return
        yield line.rstrip("\r\n")


if __name__ == "__main__":
    run_main(main)
