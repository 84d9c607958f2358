"""Fuzzing the .pt loader (issue 19): seeded mutations of a real tiny checkpoint, each loaded as
sample.py loads a file (then checked for -resume, where it has a resume section), must give a model
or a UserError naming the file in one line: never another exception, never more than CASE_SECONDS,
never more memory than the cap. All cases run in one child process capped at MEMORY_LIMIT_MB of
address space (test_hostile_checkpoints.load_in_capped_child).

Two kinds of mutation of test_hostile_checkpoints.tiny_checkpoint:
- structure-aware, on the dict before torch.save: a random place in it (any key or item, at any
  depth: the shape, a weight, a token, an option, the optimizer's state, ...) removed, replaced by a
  hostile value (wrong types, huge or negative numbers, NaN, long or nested values, tensors that are
  meta, sparse, expanded, of other dtypes and shapes), changed as its type allows, or joined by a
  stranger; one to three of them per file;
- byte-level, on the saved zip: its headers' sizes, methods and name lengths, the end record's
  counts and offsets, random bytes of the pickle or anywhere, truncation.
"""
import io
import math
import random
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from conftest import RESIDENT_LIMIT_MB
from test_hostile_checkpoints import (
    CASE_SECONDS,
    NESTED,
    Outcome,
    entry_headers,
    load_in_capped_child,
    tiny_checkpoint,
    write,
)

SEED = 19
STRUCTURED, BYTE_LEVEL = 300, 120


# ---- structure-aware mutations ------------------------------------------------------------------------

def hostile_values() -> list[object]:
    return [None, True, False, 0, -1, 1, 3, 2 ** 31, 10 ** 9, 2 ** 64, 2 ** 100, -(10 ** 12), 0.5, -0.5, 1e300,
            -1e300, math.nan, math.inf, -math.inf, "", "x", "lstm", "bytes", "utf-8", "\u2028", "é" * 1000, NESTED,
            [], {}, [1, 2], [[3, 2.5]], {"a": 1}, {1: 2}, torch.zeros(0), torch.zeros(3), torch.tensor(2.0),
            torch.zeros(2, 3, dtype=torch.float64), torch.zeros(4, dtype=torch.uint8),
            torch.empty(10 ** 6, 10 ** 6, device="meta"), torch.zeros(3, 3).to_sparse(),
            torch.zeros(3, dtype=torch.complex64), torch.zeros(1).expand(10 ** 5, 10 ** 5),
            torch.full((2, 2), math.nan)]


def changed_tensor(rng: random.Random, value: torch.Tensor) -> object:
    if value.layout != torch.strided or value.device.type != "cpu" or not value.is_contiguous():
        return rng.choice(hostile_values())  # a hostile tensor already, which copies could make huge
    flat = value.flatten()
    options: list[Callable[[], object]] = [
        lambda: flat, lambda: flat[:-1] if len(flat) else flat, lambda: torch.cat([value, value]),
        lambda: value.double(), lambda: value.half(), lambda: value.long() if value.is_floating_point() else value,
        lambda: value.t() if value.dim() == 2 else value.unsqueeze(0), lambda: flat[:1].expand(10 ** 4, 10 ** 4),
        lambda: value.clone().fill_(math.nan) if value.is_floating_point() else value,
        lambda: torch.zeros(*(rng.randint(0, 40) for _ in range(rng.randint(0, 3)))),
        lambda: value[1:] if value.dim() else value, lambda: value.to_sparse() if value.dim() else value,
    ]
    return rng.choice(options)()


def changed(rng: random.Random, value: object) -> object:
    """`value` changed as its type allows: a neighbouring or far-off number, a text cut or grown, a
    list cut, doubled or nested, a tensor of another shape, dtype or layout."""
    if isinstance(value, torch.Tensor):
        return changed_tensor(rng, value)
    if isinstance(value, bool):
        return rng.choice([not value, int(value), str(value)])
    if isinstance(value, int):
        return rng.choice([-value, value + 1, value - 1, value * 10 ** rng.randint(1, 12), 2 ** rng.randint(31, 100),
                           float(value), str(value)])
    if isinstance(value, float):
        return rng.choice([-value, value * 1e300, math.nan, math.inf, str(value), round(value) if math.isfinite(value)
                           else 0])
    if isinstance(value, str):
        return rng.choice(["", value * 2, value[:1], value + "x", value.upper(), chr(rng.randint(0, 0x10FFFF))])
    if isinstance(value, list):
        return rng.choice([value[:-1], value + value, value[::-1], [value], [*value, rng.choice(hostile_values())]])
    if isinstance(value, dict):
        keys = list(value)
        return rng.choice([{key: value[key] for key in keys[:-1]}, {**value, "stranger": 1}, {**value, 99: [0]}])
    return rng.choice(hostile_values())


def place(rng: random.Random, root: dict) -> tuple[dict | list, object]:
    """A random place in the checkpoint, (its container, its key or index): from the root down, each
    step going on into a dict or list with probability 0.7."""
    container: dict | list = root
    key: object = rng.choice(list(root))
    while True:
        value = container[key]
        children = list(value) if isinstance(value, dict) else list(range(len(value))) if isinstance(value, list) \
            else []
        if not children or rng.random() < 0.3:
            return container, key
        container, key = value, rng.choice(children)


def mutate(rng: random.Random, checkpoint: dict) -> None:
    container, key = place(rng, checkpoint)
    action = rng.choice(["remove", "replace", "change", "change", "add"])
    if action == "remove":
        del container[key]
    elif action == "replace":
        container[key] = rng.choice(hostile_values())
    elif action == "change":
        container[key] = changed(rng, container[key])
    elif isinstance(container, dict):
        container[rng.choice(["stranger", 7, "resume", "run", "layers.9.h2h.weight"])] = rng.choice(hostile_values())
    else:
        container.insert(rng.randint(0, len(container)), rng.choice(hostile_values()))


# ---- byte-level mutations -------------------------------------------------------------------------------

def header_fields(data: bytes) -> list[tuple[int, int]]:
    """(offset, width) of every size, method, name-length and CRC field of the zip's headers, and of
    its end record's counts, size and offset."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
    fields = []
    for name in names:
        local, central = entry_headers(data, name)
        fields += [(local + 8, 2), (local + 14, 4), (local + 18, 4), (local + 22, 4), (local + 26, 2), (local + 28, 2),
                   (central + 10, 2), (central + 16, 4), (central + 20, 4), (central + 24, 4), (central + 28, 2),
                   (central + 42, 4)]
    end = data.rindex(b"PK\x05\x06")
    return [*fields, (end + 8, 2), (end + 10, 2), (end + 12, 4), (end + 16, 4)]


def byte_mutation(rng: random.Random, data: bytes, fields: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    kind = rng.choice(["field", "field", "field", "pickle", "anywhere", "truncate"])
    if kind == "field":
        at, width = rng.choice(fields)
        limit = 1 << (8 * width)
        value = rng.choice([0, 1, 8, 99, len(data), len(data) + 1, limit - 1, rng.randrange(limit)]) % limit
        out[at:at + width] = value.to_bytes(width, "little")
    elif kind == "pickle":
        start = data.index(b"\x80\x02")  # data.pkl, stored as it is, starts with PROTO 2
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(start, start + 400)] = rng.randrange(256)
    elif kind == "anywhere":
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] = rng.randrange(256)
    else:
        del out[rng.randrange(len(out)):]
    return bytes(out)


# ---- the run ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory) -> tuple[dict[str, Outcome], dict[str, int]]:
    folder = tmp_path_factory.mktemp("fuzz")
    rng = random.Random(SEED)
    paths = []
    for n in range(STRUCTURED):
        checkpoint = tiny_checkpoint(rng.choice(["lstm", "gru", "rnn"]))
        for _ in range(rng.randint(1, 3)):
            mutate(rng, checkpoint)
        paths.append(write(folder / f"structured{n}.pt", checkpoint))
    original = write(folder / "original.pt", tiny_checkpoint()).read_bytes()
    fields = header_fields(original)
    for n in range(BYTE_LEVEL):
        path = folder / f"bytes{n}.pt"
        path.write_bytes(byte_mutation(rng, original, fields))
        paths.append(path)
    return load_in_capped_child(paths, timeout=240)


def test_every_mutation_loads_or_is_one_user_error(fuzzed):
    outcomes, _ = fuzzed
    bad = {path: outcome for path, outcome in outcomes.items() if not (
        outcome.outcome == "loaded" or (outcome.outcome.startswith("UserError: ") and path in outcome.outcome))}
    assert not bad, next(iter(bad.items()))
    messages = [outcome.outcome for outcome in outcomes.values() if outcome.outcome != "loaded"]
    assert all("\n" not in message and len(message) < 600 for message in messages), max(messages, key=len)
    loaded = len(outcomes) - len(messages)
    assert 10 < loaded < len(outcomes) / 2, loaded  # the mutations reach both outcomes, mostly refusals


def test_every_mutation_is_quick_and_small(fuzzed):
    outcomes, memory = fuzzed
    slowest = max(outcomes.items(), key=lambda item: item[1].seconds)
    assert slowest[1].seconds < CASE_SECONDS / 2, slowest
    assert memory["VmHWM"] < RESIDENT_LIMIT_MB, memory


def test_the_byte_mutations_reach_the_archive_checks(fuzzed):
    """Not every byte-level mutation is caught by the first check (the zip magic): some get past
    zipfile's reading of the central directory, some past the archive checks into torch.load."""
    outcomes, _ = fuzzed
    byte_level = [outcome.outcome for path, outcome in outcomes.items() if Path(path).name.startswith("bytes")]
    reasons = {"archive": "zip entries", "damaged": "truncated or damaged", "pickle": "holds objects"}
    found = {reason: sum(text in outcome for outcome in byte_level) for reason, text in reasons.items()}
    assert all(found.values()), found
