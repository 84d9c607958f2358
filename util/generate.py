"""Generating text from a model: the one loop that sample.py, train.py's -sample_every, the Python
API (util/charmodel.py) and serve.py run.

Sampling is char-rnn's sample.lua for any number of streams at once: the primetext is fed first
(without one, the first character comes from a uniform distribution), then each next character is
the argmax of the logits, or a draw from softmax(logits / temperature) after the top-k and top-p
filters. A draw is torch.multinomial's own method, written out: the argmax of p / q for
exponential noise q. That is the same number multinomial gives for the same random numbers, without
its checks (a synchronising .item() per character), and it lets every stream draw its noise from its
own generator, a block of steps at a time.

On a GPU the characters are read back READBACK_WINDOW steps at a time (util.training.readback_window):
each read waits for every kernel queued, and a step of char-rnn's sizes is mostly launches, so a
read per character would leave the GPU idle while the host queues the next step. The characters are
the same; a consumer that stops early has had up to a window of steps computed in vain.

On CUDA (`graphs`, sample.py's -cuda_graphs) a window of steps is captured once as a CUDA graph
(SamplingGraph) and replayed, one launch where a step of char-rnn's sizes makes dozens; the noise is
still drawn outside it, from the same generators in the same blocks, so the characters are the same.

Beam search keeps the `beam_size` most probable continuations at every step.
"""
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from model import CharRNN
from model.char_rnn import Stepper
from util.errors import diagnostic
from util.training import cuda_graph, readback_window, refused_capture, side_stream

DRAW_BLOCK_STEPS = 64  # steps of noise drawn per stream at once (fewer at a large vocabulary)
DRAW_STREAM_FLOATS = 1 << 16  # the most numbers one stream draws at once


@dataclass(frozen=True)
class Sampling:
    """How the next character is chosen. temperature scales the logits; top_k keeps the k most
    likely characters (0 = all); top_p keeps the fewest most likely characters whose probabilities
    add up to at least p (1 = all); sample False takes the argmax (the filters then change nothing)."""
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    sample: bool = True


def filtered_probabilities(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """softmax(logits / temperature) for (streams, V) logits, with the top-k and top-p filters as
    nanoGPT and Hugging Face apply them: top-k on the scaled logits (ties with the k-th kept), then
    top-p on what is left, which keeps every character until the probabilities before it reach p.
    Filtered characters get probability 0; the rest are not renormalised (a draw does not need it)."""
    scaled = logits if sampling.temperature == 1 else logits / sampling.temperature
    if 0 < sampling.top_k < logits.shape[-1]:
        kth = torch.topk(scaled, sampling.top_k, dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probabilities = torch.softmax(scaled, dim=-1)
    if sampling.top_p < 1:
        ordered, order = probabilities.sort(dim=-1, descending=True)
        removed_in_order = ordered.cumsum(dim=-1) - ordered >= sampling.top_p
        removed = torch.zeros_like(removed_in_order).scatter(-1, order, removed_in_order)
        probabilities = probabilities.masked_fill(removed, 0.0)
    return probabilities


class Noise:
    """The exponential noise of each stream's draws, from its own generator, drawn a block of steps
    at a time: on the CPU the same numbers as drawing each step's (1, V) alone, in far fewer calls.
    A block's size depends on the vocabulary alone, never on the number of streams: CUDA's Philox
    numbers for a call depend on the sizes of the calls before it (and so did torch 2.4's CPU
    numbers), so a stream draws alike alone and among others only if its calls are the same. A
    generation shorter than a block draws once, fewer steps: the start of a whole block's numbers."""

    def __init__(self, generators: list[torch.Generator], vocab_size: int, steps: int, device: torch.device):
        self.generators = generators
        self.block_steps = max(1, min(DRAW_BLOCK_STEPS, steps, DRAW_STREAM_FLOATS // vocab_size))
        self.block = torch.empty(len(generators), self.block_steps, vocab_size, device=device)
        self.used = self.block_steps

    def next(self) -> torch.Tensor:
        """The noise for one step, (streams, V)."""
        self.refill_when_used()
        self.used += 1
        return self.block[:, self.used - 1]

    def fill(self, out: torch.Tensor) -> None:
        """out (streams, steps, V) filled with the next steps' noise: what `next` would give for each."""
        done, steps = 0, out.shape[1]
        while done < steps:
            self.refill_when_used()
            count = min(steps - done, self.block_steps - self.used)
            out[:, done:done + count].copy_(self.block[:, self.used:self.used + count])
            self.used, done = self.used + count, done + count

    def refill_when_used(self) -> None:
        if self.used == self.block_steps:
            for row, generator in zip(self.block, self.generators, strict=True):
                row.exponential_(generator=generator)
            self.used = 0


def stream_generators(seeds: list[int], device: torch.device, skip: int) -> list[torch.Generator]:
    """One generator per stream on `device`, seeded, that has first made `skip` draws of uniform
    numbers (sample.py's draws always came after the model's initialisation had made its own)."""
    generators = []
    for seed in seeds:
        generator = torch.Generator(device).manual_seed(seed)
        if skip:
            torch.empty(skip, device=device).uniform_(generator=generator)
        generators.append(generator)
    return generators


def sample_steps(model: CharRNN, prime: list[int], length: int, sampling: Sampling,
                 generators: list[torch.Generator], window: int | None = None,
                 graphs: bool = False) -> Iterator[list[int]]:
    """The characters of len(generators) streams after `prime` (ids), one step at a time: each step's
    list holds one id per stream. Stream k draws from generators[k]. The model must be in eval mode;
    nothing of its training state is touched. Stop iterating to stop generating. The steps are read
    back from the device `window` at a time (the device's readback_window unless given); `graphs`
    replays each window as a CUDA graph where sampling_graphed says so."""
    streams, device = len(generators), model.decoder.weight.device
    window = readback_window(device) if window is None else window
    with torch.inference_mode():
        stepper = Stepper(model)
        logits, state = primed(stepper, prime, streams, device)
        noise = Noise(generators, model.vocab_size, length, device) if sampling.sample else None
        graph = SamplingGraph.made(stepper, sampling, logits, state, window, noise) \
            if sampling_graphed(graphs, device, length, window) else None
        if graph is not None:
            for done in range(0, length, window):
                yield from graph.next_window()[:length - done]
            return
        unread: list[torch.Tensor] = []
        for n in range(length):
            tokens = next_tokens(logits, sampling, None if noise is None else noise.next())
            unread.append(tokens)
            if len(unread) == window or n + 1 == length:
                yield from torch.stack(unread).tolist() if len(unread) > 1 else [tokens.tolist()]
                unread.clear()
            if n + 1 < length:
                logits, state = stepper.step(tokens, state)


def next_tokens(logits: torch.Tensor, sampling: Sampling, noise: torch.Tensor | None) -> torch.Tensor:
    """Each stream's next id: the argmax without noise, else the draw that the noise decides."""
    if noise is None:
        return logits.argmax(dim=-1)
    return (filtered_probabilities(logits, sampling) / noise).argmax(dim=-1)


def sampling_graphed(requested: bool, device: torch.device, length: int, window: int) -> bool:
    """Whether sample_steps replays its windows as a CUDA graph: when asked, on a CUDA device, for
    more than two windows of characters (the capture first runs a window of steps as its warm-up)."""
    return requested and device.type == "cuda" and length > 2 * window


class SamplingGraph:
    """`window` steps of sampling captured as one CUDA graph (util.training.cuda_graph). The graph
    starts from its own copies of the logits and the state, reads each step's noise from its
    `noise` (streams, window, V; filled from the draws' Noise before each replay), writes each
    step's ids into `tokens` (window, streams) and leaves the logits and state after its last step
    in its copies, for the next replay. Its capture follows one run of the same steps on a side
    stream (with noise of ones), as torch.cuda.graphs asks."""

    def __init__(self, stepper: Stepper, sampling: Sampling, logits: torch.Tensor, state: list,
                 window: int, draws: Noise | None):
        streams, device = logits.shape[0], logits.device
        self.draws = draws
        self.logits = torch.empty(streams, stepper.vocab_size, device=device)
        self.state = [tuple(torch.empty_like(part) for part in layer) for layer in state]
        self.noise = None if draws is None else torch.ones(streams, window, stepper.vocab_size, device=device)
        self.tokens = torch.empty(window, streams, dtype=torch.long, device=device)

        def body() -> None:
            logits, state = self.logits, self.state
            for j in range(window):
                tokens = next_tokens(logits, sampling, None if self.noise is None else self.noise[:, j])
                self.tokens[j].copy_(tokens)
                logits, state = stepper.step(tokens, state)
            self.start_from(logits, state)

        self.start_from(logits, state)
        with side_stream(device):
            body()
        self.start_from(logits, state)
        self.replay = cuda_graph(body)

    @classmethod
    def made(cls, stepper: Stepper, sampling: Sampling, logits: torch.Tensor, state: list,
             window: int, draws: Noise | None) -> "SamplingGraph | None":
        """The graph, or None after a notice on stderr when it cannot be captured (the sampling then
        goes on without one)."""
        try:
            return cls(stepper, sampling, logits, state, window, draws)
        except RuntimeError as error:
            diagnostic(refused_capture("sampling", error, "it"))
            return None

    def next_window(self) -> list[list[int]]:
        """The next window's ids, one list per step: its noise drawn, the graph replayed, read back."""
        if self.draws is not None and self.noise is not None:
            self.draws.fill(self.noise)
        self.replay()
        return self.tokens.tolist()

    def start_from(self, logits: torch.Tensor, state: list) -> None:
        """The next replay's first step to follow these logits and this state."""
        self.logits.copy_(logits)
        for parts, new_parts in zip(self.state, state, strict=True):
            for part, new in zip(parts, new_parts, strict=True):
                part.copy_(new)


def primed(stepper: Stepper, prime: list[int], streams: int, device: torch.device) -> tuple[torch.Tensor, list]:
    """The logits and state after the primetext, for `streams` streams: uniform logits (zeros) and
    the zero state without one. The primetext runs once, at batch 1, and is then copied to each stream."""
    state = stepper.zero_state(1)
    logits = torch.zeros(1, stepper.vocab_size, device=device)
    for index in prime:
        logits, state = stepper.step(torch.tensor([index], device=device), state)
    if streams == 1:
        return logits, state
    return logits.expand(streams, -1), [tuple(part.repeat(streams, 1) for part in layer) for layer in state]


def beam_search(model: CharRNN, prime: list[int], length: int, beam_size: int, stop: list[int],
                results: int = 1) -> list[list[int]]:
    """The `results` most probable continuations of `prime` that a beam of `beam_size` finds, best
    first, each `length` ids long or ending with `stop` (ids; none when empty). Hypotheses are
    ranked by their log-probability per character (length normalisation), which for hypotheses of
    one length is their probability. Deterministic."""
    device = model.decoder.weight.device
    with torch.inference_mode():
        stepper = Stepper(model)
        logits, state = primed(stepper, prime, 1, device)
        beams: list[list[int]] = [[]]
        scores = torch.zeros(1, device=device)
        finished: list[tuple[float, list[int]]] = []
        for _ in range(length):
            total = scores[:, None] + torch.log_softmax(logits, dim=-1)
            scores, flat = total.flatten().topk(min(beam_size, total.numel()))
            parents, tokens = (flat // model.vocab_size).tolist(), (flat % model.vocab_size).tolist()
            beams = [beams[p] + [t] for p, t in zip(parents, tokens, strict=True)]
            live = [k for k, beam in enumerate(beams) if not (stop and beam[-len(stop):] == stop)]
            finished += [(scores[k].item() / len(beams[k]), beams[k]) for k in range(len(beams)) if k not in live]
            if not live:
                break
            keep = torch.tensor(live, device=device)
            rows = torch.tensor(parents, device=device)[keep]
            beams, scores = [beams[k] for k in live], scores[keep]
            logits, state = stepper.step(torch.tensor([tokens[k] for k in live], device=device),
                                         [tuple(part[rows] for part in layer) for layer in state])
        else:
            finished += [(score / max(1, length), beam) for score, beam in zip(scores.tolist(), beams, strict=True)]
    finished.sort(key=lambda candidate: -candidate[0])
    return [beam for _, beam in finished[:results]]
