"""The Python API: load a checkpoint (.pt or Torch7 .t7) once, then generate text with every option
of sample.py. sample.py and serve.py are command lines over it.

    from util.charmodel import CharModel
    model = CharModel.load("cv/lm_epoch30.pt")
    model.generate("分开", length=200, temperature=0.8, top_k=40, num_samples=4, stop="\\n\\n", seed=1)

Each call keeps its own state, so one CharModel serves several threads at once.
"""
import codecs
import os
import secrets
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass

import torch

from model import CharRNN
from util.checkpoint import checkpoint_vocab, load_checkpoint, model_from_checkpoint, run_facts
from util.errors import UserError
from util.generate import Sampling, beam_search, sample_steps, stream_generators
from util.options import lua_number
from util.vocab import Vocab, read_json, unknown_names

SEED_RANGE = 2 ** 64


@dataclass(frozen=True)
class Request:
    """One call's settings, checked (see CharModel.check); prime and stop as token ids."""
    prime: list[int]
    length: int
    sampling: Sampling
    num_samples: int
    stop: list[int]
    seed: int
    beam_size: int


class CharModel:
    """A trained character model with its vocabulary, ready to generate."""

    def __init__(self, model: CharRNN, vocab: Vocab, path: str, training_text: str | None = None):
        self.model, self.vocab, self.path = model.eval(), vocab, path
        self.training_text = training_text  # the text it was trained on, where that file still exists
        self.device = model.decoder.weight.device
        self.cuda_graphs = True  # sampling on CUDA replays its steps as CUDA graphs (util.generate.sample_steps)

    @classmethod
    def load(cls, path: str, device: str | torch.device = "cpu") -> "CharModel":
        """The checkpoint's model on `device`; any problem with the file is a UserError."""
        checkpoint = load_checkpoint(path)
        model = model_from_checkpoint(checkpoint, path).to(device)
        return cls(model, checkpoint_vocab(checkpoint), path, training_text_path(checkpoint))

    def to(self, device: str | torch.device) -> "CharModel":
        """The model moved to `device` (in place); returns self."""
        self.model.to(device)
        self.device = self.model.decoder.weight.device
        return self

    def describe(self) -> str:
        model = self.model
        return f"{model.model_type}, {model.num_layers} x {model.rnn_size}, vocabulary {len(self.vocab)}"

    def prime_ids(self, prime: str | bytes, skip_unknown: bool = False, name: str = "prime",
                  hint: str = "") -> list[int]:
        """The text as token ids (a file's bytes decode in the vocabulary's encoding). Characters
        missing from the vocabulary are a UserError naming them (then `hint`), or dropped with
        skip_unknown."""
        tokens = self.vocab.text_to_tokens(self.as_given(prime))
        unknown = unknown_names(tokens, self.vocab)
        if unknown and not skip_unknown:
            raise UserError(f"the {name} has characters that are not in the model's vocabulary: {unknown}{hint}")
        return [self.vocab.index[t] for t in tokens if t in self.vocab.index]

    def unknown_names(self, text: str | bytes) -> str:
        """The text's characters missing from the vocabulary, as prime_ids names them ("" if none)."""
        return unknown_names(self.vocab.text_to_tokens(self.as_given(text)), self.vocab)

    def as_given(self, text: str | bytes) -> str | bytes:
        """A str for a byte-level model as its UTF-8 bytes, whatever the locale (the command line
        hands over bytes itself, os.fsencode of what it read)."""
        return text.encode("utf-8", errors="surrogateescape") if self.vocab.is_bytes and isinstance(text, str) else text

    def check(self, prime: str | bytes = "", length: int = 2000, **settings) -> Request:
        """The call's settings checked, as `request` checks them, the prime's characters too."""
        return self.request(self.prime_ids(prime), length, **settings)

    def request(self, prime: list[int], length: int = 2000, *, temperature: float = 1.0, top_k: int = 0,
                top_p: float = 1.0, sample: bool = True, num_samples: int = 1, stop: str | bytes = "",
                seed: int | None = None, beam_size: int = 0, prefix: str = "") -> Request:
        """The settings for a prime of token ids, checked: a UserError for the first bad value, naming
        it (prefix "-" for the command line's spelling). generate and stream check first, so that an
        error comes before any text."""
        def bad(name: str, rule: str, value: object) -> UserError:
            return UserError(f"{prefix}{name} must be {rule}, not {lua_number(value)}")
        if length < 0:
            raise bad("length", "0 or more", length)
        if not temperature > 0:
            raise bad("temperature", "greater than 0", temperature)
        if top_k < 0:
            raise bad("top_k", "0 (no filter) or more", top_k)
        if not 0 < top_p <= 1:
            raise bad("top_p", "in (0, 1]", top_p)
        if num_samples < 1:
            raise bad("num_samples", "1 or more", num_samples)
        if beam_size < 0:
            raise bad("beam_size", "0 (no beam search) or more", beam_size)
        if beam_size and sample:
            raise UserError(f"{prefix}beam_size searches for the most probable text and draws nothing: "
                            f"use it with {prefix}sample 0")
        if beam_size and num_samples > beam_size:
            raise UserError(f"{prefix}num_samples {num_samples} is more than a beam of {beam_size} keeps")
        stop_ids = self.prime_ids(stop, name=f"{prefix}stop text") if stop else []
        return Request(prime, length, Sampling(temperature, top_k, top_p, sample), num_samples,
                       stop_ids, secrets.randbits(63) if seed is None else seed % SEED_RANGE, beam_size)

    def generate(self, prime: str | bytes = "", length: int = 2000, **settings) -> list[str]:
        """num_samples continuations of `prime` (the prime not included), generated as one batch.
        Settings: temperature, top_k, top_p, sample (False = argmax), num_samples, stop (a text that
        ends a continuation, itself left out), seed (stream 0 draws from it, the others from seeds
        mixed from it and their number, see stream_seed; None = any), beam_size (with sample=False:
        the most probable continuations a beam of that width finds)."""
        request = self.check(prime, length, **settings)
        return [self.decode(ids) for ids in self.generate_ids(request)]

    def stream(self, prime: str | bytes = "", length: int = 2000, **settings) -> Generator[str, None, None]:
        """One continuation, in pieces as they are generated (whole characters, also from a
        byte-level model). Settings as generate's, without num_samples and beam_size. Closing the
        iterator stops the generation."""
        return self.pieces(self.check(prime, length, **settings))

    def pieces(self, request: Request) -> Generator[str, None, None]:
        """stream's pieces for a checked request."""
        decoder = self.piece_decoder()
        for ids in self.stream_ids(request):
            piece = decoder(ids)
            if piece:
                yield piece
        rest = decoder([], final=True)
        if rest:
            yield rest

    def generate_ids(self, request: Request) -> list[list[int]]:
        """Each continuation's token ids, cut before its first stop text."""
        if request.beam_size:
            return beam_search(self.model, request.prime, request.length, request.beam_size, request.stop,
                               request.num_samples)
        steps = sample_steps(self.model, request.prime, request.length, request.sampling, self.generators(request),
                             graphs=self.cuda_graphs)
        if not request.stop:
            return [list(ids) for ids in zip(*steps, strict=True)] or [[] for _ in range(request.num_samples)]
        streams: list[list[int]] = [[] for _ in range(request.num_samples)]
        running = set(range(request.num_samples))
        for step in steps:
            for k in list(running):
                streams[k].append(step[k])
                if request.stop and streams[k][-len(request.stop):] == request.stop:
                    running.discard(k)
            if not running:
                break
        return [cut_at_stop(ids, request.stop) for ids in streams]

    def stream_ids(self, request: Request) -> Iterator[list[int]]:
        """The first continuation's ids as they come; ids that may begin the stop text are held back
        until they turn out not to."""
        ids: list[int] = []
        sent = 0
        for step in sample_steps(self.model, request.prime, request.length, request.sampling,
                                 self.generators(request)[:1], graphs=self.cuda_graphs):
            ids.append(step[0])
            if request.stop and ids[-len(request.stop):] == request.stop:
                yield ids[sent:len(ids) - len(request.stop)]
                return
            ready = len(ids) - held_back(ids, request.stop)
            yield ids[sent:ready]
            sent = ready
        yield ids[sent:]

    def generators(self, request: Request) -> list[torch.Generator]:
        """Each stream's generator (stream_seed). On the CPU the first, seeded with the seed itself,
        first makes the draws that building the model makes, so that sample.py -seed S writes the
        text it always wrote for S; the others have no such past to follow."""
        skip = sum(p.numel() for p in self.model.parameters()) if self.device.type == "cpu" else 0
        seeds = [stream_seed(request.seed, k) for k in range(request.num_samples)]
        return stream_generators(seeds[:1], self.device, skip) + stream_generators(seeds[1:], self.device, 0)

    def tokens(self, ids: list[int]) -> list[str]:
        return [self.vocab.tokens[i] for i in ids]

    def decode(self, ids: list[int]) -> str:
        """Token ids as text; a byte-level model's bytes decode as UTF-8, what is not replaced."""
        text = "".join(self.tokens(ids))
        return bytes(ord(t) for t in text).decode("utf-8", errors="replace") if self.vocab.is_bytes else text

    def sample_text(self, ids: list[int]) -> str | bytes:
        """Token ids as the text they are in the training data: characters, or a byte-level model's bytes."""
        text = "".join(self.tokens(ids))
        return bytes(ord(t) for t in text) if self.vocab.is_bytes else text

    def piece_decoder(self) -> Callable[..., str]:
        """A function of ids (and final=) to the text they complete: a byte-level model's bytes go
        through an incremental UTF-8 decoder, so that a character split across pieces comes whole."""
        if not self.vocab.is_bytes:
            return lambda ids, final=False: "".join(self.tokens(ids))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return lambda ids, final=False: decoder.decode(bytes(ord(t) for t in self.tokens(ids)), final)


def stream_seed(seed: int, stream: int) -> int:
    """Stream 0's seed is the seed itself (one sample is what it always was); stream k's is
    splitmix64 of seed + k * golden ratio, so that neighbouring seeds share no stream (seed + k
    would give -seed 1's second sample to -seed 2's first)."""
    if stream == 0:
        return seed % SEED_RANGE
    z = (seed + stream * 0x9E3779B97F4A7C15) % SEED_RANGE
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 % SEED_RANGE
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB % SEED_RANGE
    return z ^ (z >> 31)


def held_back(ids: list[int], stop: list[int]) -> int:
    """How many of the last ids could be the start of the stop text (0 without one)."""
    for n in range(min(len(stop) - 1, len(ids)), 0, -1):
        if ids[-n:] == stop[:n]:
            return n
    return 0


def cut_at_stop(ids: list[int], stop: list[int]) -> list[int]:
    """ids before the first occurrence of stop (all of them when it does not occur)."""
    if stop:
        for start in range(len(ids) - len(stop) + 1):
            if ids[start:start + len(stop)] == stop:
                return ids[:start]
    return ids


def training_text_path(checkpoint: dict) -> str | None:
    """The text file the checkpoint's model was trained on, where it still exists: -data_dir's
    input.txt, or the file preprocess.py read (the "source" its JSON records)."""
    opt = checkpoint.get("opt", {})
    if run_facts(checkpoint).get("data_source") == "h5":
        vocabulary = opt.get("input_json")
        try:  # read_json: bounded, whatever the path names now (a FIFO, /dev/zero)
            path = read_json(vocabulary).get("source") if isinstance(vocabulary, str) else None
        except (UserError, AttributeError):
            return None
    else:
        path = os.path.join(str(opt.get("data_dir", "")), "input.txt")
    return path if isinstance(path, str) and os.path.isfile(path) else None
