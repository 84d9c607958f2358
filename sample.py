"""Generate text from a checkpoint, as char-rnn's sample.lua does.

    python sample.py cv/lm_epoch30.pt -temperature 0.8
"""
import sys
from types import SimpleNamespace

from util.checkpoint import checkpoint_vocab, load_checkpoint, model_from_checkpoint
from util.device import GPU_OPTIONS, configure_cpu, manual_seed, select_device
from util.errors import UserError, diagnostic, run_main
from util.generate import generate
from util.options import Option, lua_number, parse_options
from util.vocab import Vocab

OPTIONS = [
    Option("seed", 123, "random number generator's seed"),
    Option("sample", 1, "0 = take the most likely character (argmax), 1 = sample from the distribution"),
    Option("primetext", "", "text used to prime the hidden state; printed before the generated text"),
    Option("primefile", "", "read the primetext from this file"),
    Option("length", 2000, "number of characters to generate, not counting the primetext"),
    Option("temperature", 1.0, "higher is more diverse, lower more conservative; must be > 0"),
    Option("skip_unk", 0, "1 = drop primetext characters missing from the vocabulary, with a warning"),
    *GPU_OPTIONS,
    Option("verbose", 1, "0 = print only the generated text; diagnostics go to stderr"),
]


def prime_tokens(opt: SimpleNamespace, vocab: Vocab) -> list[int]:
    """The primetext (or the primefile's text) as token indices, unknown characters handled."""
    text: str | bytes = opt.primetext
    if opt.primefile:
        try:
            with open(opt.primefile, "rb") as handle:
                text = handle.read()
        except OSError as error:
            raise UserError(f"cannot read -primefile {opt.primefile}: {error.strerror}") from None
    try:
        tokens = vocab.text_to_tokens(text)
    except UnicodeDecodeError as error:
        raise UserError(f"-primefile {opt.primefile} is not valid {vocab.encoding} "
                        f"(byte offset {error.start})") from None
    unknown = sorted({t for t in tokens if t not in vocab.index})
    if unknown:
        names = " ".join(repr(t) for t in unknown[:20])
        if not opt.skip_unk:
            raise UserError(f"the primetext has characters that are not in the model's vocabulary: {names} "
                            f"(use -skip_unk 1 to drop them)")
        diagnostic(f"warning: dropping primetext characters not in the vocabulary: {names}")
    return [vocab.index[t] for t in tokens if t in vocab.index]


def main(argv: list[str]) -> None:
    opt = parse_options(argv, "sample.py", "Sample text from a trained character model.", OPTIONS,
                        positional=[("checkpoint", "model checkpoint to sample from")]).values
    if not opt.temperature > 0:
        raise UserError(f"-temperature must be greater than 0, not {lua_number(opt.temperature)}")
    if opt.length < 0:
        raise UserError(f"-length must be 0 or more, not {opt.length}")
    checkpoint = load_checkpoint(opt.checkpoint)
    vocab = checkpoint_vocab(checkpoint)
    prime = prime_tokens(opt, vocab)
    device = select_device(opt.gpuid, opt.opencl, log=diagnostic)
    # One character at a time, every product is tiny: a second thread only adds hand-over costs
    # (measured with bench/sample_speed.py), so sampling uses one.
    configure_cpu(1)
    manual_seed(opt.seed)
    model = model_from_checkpoint(checkpoint, opt.checkpoint).to(device).eval()
    if opt.verbose:
        shape = checkpoint["model"]
        diagnostic(f"loaded {opt.checkpoint}: {shape['model_type']}, {shape['num_layers']} x {shape['rnn_size']}, "
                   f"vocabulary {len(vocab)}")
    out, encode = sys.stdout.buffer, vocab.token_encoder()
    for index in prime:
        out.write(encode(vocab.tokens[index]))
    out.flush()
    for index in generate(model, prime, opt.length, opt.temperature if opt.sample else 0.0):
        out.write(encode(vocab.tokens[index]))
        out.flush()
    out.write(encode("\n"))
    out.flush()

if __name__ == "__main__":
    run_main(main)
