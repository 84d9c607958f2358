"""Generating text from a model, one character at a time, as char-rnn's sample.lua does: the
primetext is fed first (without one, the first character comes from a uniform distribution), then
each next character is the argmax of the logits or a draw from softmax(logits / temperature).
sample.py and train.py's -sample_every both use it."""
from collections.abc import Iterator

import torch

from model import CharRNN


def generate(model: CharRNN, prime: list[int], length: int, temperature: float = 1.0,
             generator: torch.Generator | None = None) -> Iterator[int]:
    """The ids of `length` characters after `prime` (ids), one at a time. temperature 0 takes the
    argmax; otherwise a draw with `generator` (torch's global one when None). The model must be in
    eval mode; nothing of its training state (gradients, the global random numbers when a
    generator is given) is touched."""
    device = model.decoder.weight.device
    with torch.inference_mode():
        state = model.zero_state(1)
        logits = torch.zeros(1, model.vocab_size, device=device)  # no primetext: a uniform first character
        for index in prime:
            logits, state = model.step(torch.tensor([index], device=device), state)
        for _ in range(length):
            if temperature > 0:
                probabilities = torch.softmax(logits / temperature, dim=-1)
                token = torch.multinomial(probabilities, 1, generator=generator)[:, 0]
            else:
                token = logits.argmax(dim=-1)
            yield int(token.item())
            logits, state = model.step(token, state)
