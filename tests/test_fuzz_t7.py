"""Structure-aware fuzzing of util.torch7 (issue 19): a few hundred seeded mutations of valid char-rnn
checkpoints, each of which must load as a checkpoint whose every field has its type, or fail
with a short ValueError, in one forked child under test_hostile_t7.load_in_child's address-space
cap and time limit.

The checkpoints are built here (t7_graphs: LSTM, GRU and RNN of 1 and 2 layers, with and without
dropout, 8- and 4-byte longs). Two kinds of mutation:
- of the bytes, knowing what each field is (t7_writer.t7_bytes): type tags, object indices (a
  reference to another object), table counts, string lengths and contents, class names, tensor
  dimensions, sizes, strides and offsets, storage sizes and contents, numbers (inf, NaN, huge,
  negative), and cuts, deletions and repeats;
- of the objects before they are written: a value anywhere in the checkpoint (the options, the
  history, the graph's nodes, modules and tensors) replaced by a number, string, table, tensor or
  Torch object where another belongs, or by another object of the checkpoint (sharing, cycles),
  and keys renamed.
A failure names the file and the mutation that made it.
"""
from __future__ import annotations

import math
import random
import struct
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from t7_graphs import char_rnn_checkpoint
from t7_writer import Field, TensorView, t7_bytes, write_t7
from test_hostile_t7 import assert_short_error, load_in_child
from util.torch7 import TableKey, TorchObject

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="load_in_child reads /proc")

SEED = 19
BYTE_MUTATIONS = 320
OBJECT_MUTATIONS = 160
TOKENS = ["\n", " ", "a", "b", "c", "\xe9"]
MODELS = [(model, layers, dropout) for model in ("lstm", "gru", "rnn") for layers in (1, 2) for dropout in (0.0, 0.5)]

INT32_VALUES = [0, 1, -1, 2, 3, 4, 5, 6, 7, 8, 9, 40, 1000, 2**31 - 1, -(2**31)]
LONG_VALUES = [0, 1, -1, 2, 1000, 2**31 - 1, -(2**31), 2**40, 2**62, 2**63 - 1, -(2**63)]
NUMBERS = [math.inf, -math.inf, math.nan, 0.0, -0.0, -1.0, 0.5, 1e300, -1e300, 2.0**53 + 2, 5e-324]
CLASS_NAMES = ["torch.FloatTensor", "torch.DoubleTensor", "torch.LongTensor", "torch.ByteTensor", "torch.CudaTensor",
               "torch.FloatStorage", "torch.DoubleStorage", "torch.LongStorage", "torch.CharStorage", "torch.Tensor",
               "nn.gModule", "nn.Linear", "nn.Dropout", "nngraph.Node", "OneHot", "nn.LogSoftMax", ""]


# --- mutations of the bytes -------------------------------------------------------------------

Splice = tuple[int, int, bytes]  # replace data[start:end] by the bytes


def int_splice(field: Field, value: int) -> Splice:
    bits = 8 * field.size
    value = max(-(2 ** (bits - 1)), min(2 ** (bits - 1) - 1, value))
    return field.offset, field.offset + field.size, value.to_bytes(field.size, "little", signed=True)


def int_value(rng: random.Random, field: Field, data: bytes, fields: list[Field]) -> int:
    original = int.from_bytes(data[field.offset:field.offset + field.size], "little", signed=True)
    same_kind = [f for f in fields if f.kind == field.kind]
    other = rng.choice(same_kind)  # another object's index: a reference to it
    choices = [original + 1, original - 1, 2 * original, -original,
               int.from_bytes(data[other.offset:other.offset + other.size], "little", signed=True)]
    return rng.choice(choices + (INT32_VALUES if field.size == 4 else LONG_VALUES))


def string_splice(rng: random.Random, field: Field, data: bytes) -> Splice:
    """A new string in place of the one whose bytes `field` is (its length, just before, too)."""
    old = data[field.offset:field.offset + field.size]
    if field.kind == "class":
        new = rng.choice(CLASS_NAMES).encode()
    else:
        new = rng.choice([b"", old[::-1], old + b"x", old[:-1], b"V 1", b"V x", b"lstm", b"\xff" * 300])
    return field.offset - 4, field.offset + field.size, struct.pack("<i", len(new)) + new


def splice_for(rng: random.Random, field: Field, data: bytes, fields: list[Field]) -> Splice:
    """One mutation of `field`."""
    end = field.offset + field.size
    shape = rng.random()
    if shape < 0.05:
        return field.offset, len(data), b""  # the file cut here
    if shape < 0.1:
        return field.offset, end, b""  # the field left out
    if shape < 0.15:
        return field.offset, end, data[field.offset:end] * 2  # the field twice
    if field.kind == "number":
        return field.offset, end, struct.pack("<d", rng.choice(NUMBERS))
    if field.kind in ("text", "class", "version"):
        return string_splice(rng, field, data)
    if field.kind in ("elements", "raw"):
        position = rng.randrange(field.offset, end)
        return position, position + 1, bytes([rng.randrange(256)])
    return int_splice(field, int_value(rng, field, data, fields))


def mutate_bytes(rng: random.Random, data: bytes, fields: list[Field]) -> tuple[bytes, str]:
    """1 to 3 mutations of fields chosen by kind first (so that the rare kinds, such as a storage's
    size, are chosen as often as the common ones), and what they were."""
    kinds = sorted({f.kind for f in fields})
    splices: list[Splice] = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        kind = rng.choice(kinds)
        field = rng.choice([f for f in fields if f.kind == kind])
        splice = splice_for(rng, field, data, fields)
        if all(splice[1] <= start or splice[0] >= end for start, end, _ in splices):  # no overlaps
            splices.append(splice)
    for start, end, new in sorted(splices, reverse=True):
        data = data[:start] + new + data[end:]
    return data, "; ".join(f"bytes {start}:{end} := {new[:16].hex()}" for start, end, new in splices)


# --- mutations of the objects -----------------------------------------------------------------

def slots(root: object) -> list[tuple[object, object]]:
    """Every (container, key) of a value reachable from `root`: dict keys, list indices and the
    attrs of Torch objects (key None), each container once."""
    found, seen, todo = [], set(), [root]
    while todo:
        container = todo.pop()
        if id(container) in seen:
            continue
        seen.add(id(container))
        if isinstance(container, dict):
            items = list(container.items())
        elif isinstance(container, list):
            items = list(enumerate(container))
        elif isinstance(container, TorchObject):
            items = [(None, container.attrs)]
        else:
            continue
        for key, value in items:
            found.append((container, key))
            todo.append(value)
    return found


def hostile_value(rng: random.Random, everything: list[tuple[object, object]]) -> object:
    container, key = rng.choice(everything)
    another = container.attrs if isinstance(container, TorchObject) else container[key]  # sharing, cycles
    return rng.choice([
        *NUMBERS, 1.0, 4.0, True, False, None, "", "lstm", "x" * 1000, {}, {1: {}}, [1.0, {}], [2.0, 3.0],
        {"weight": np.ones((4, 6))}, np.ones(3), np.zeros((2, 2), np.int64),
        TensorView(np.zeros(2, np.float32), (2**20, 2**20), (0, 0)), TorchObject("nn.Dropout"),
        TorchObject("nngraph.Node"), another, container,
    ])


def put(container: object, key: object, value: object) -> None:
    if isinstance(container, TorchObject):
        container.attrs = value
    else:
        container[key] = value


def rename(rng: random.Random, container: dict, key: object) -> object:
    new_key = rng.choice(["", "weight", "children", "data", "module", "mapindex", "name", 1, 2, 1.5, True,
                          TableKey({})])
    container[new_key] = container.pop(key)
    return new_key


def mutate_objects(rng: random.Random, checkpoint: dict) -> str:
    """1 or 2 changes anywhere in `checkpoint` (half of them in opt and the history, which are few
    beside the graph), and what they were."""
    done = []
    for _ in range(rng.choice([1, 1, 2])):
        everything = slots(checkpoint)  # anew: the change before may have renamed a key
        top = [(c, k) for c, k in everything if c is checkpoint or c is checkpoint.get("opt")]
        container, key = rng.choice(top if top and rng.random() < 0.5 else everything)
        if isinstance(container, dict) and key in container and rng.random() < 0.2:
            done.append(f"key {key!r} renamed {rename(rng, container, key)!r}")
            continue
        value = hostile_value(rng, everything)
        put(container, key, value)
        done.append(f"{type(container).__name__}[{key!r}] := {type(value).__name__}")
    return "; ".join(done)


# --- the test ---------------------------------------------------------------------------------

def base(index: int) -> dict:
    model, layers, dropout = MODELS[index % len(MODELS)]
    return char_rnn_checkpoint(model, TOKENS, 4, layers, dropout, seed=index)


@pytest.fixture(scope="module")
def mutants(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, str]:
    """The mutated files and how each was made."""
    folder = tmp_path_factory.mktemp("fuzz")
    rng = random.Random(SEED)
    bases = [(i, long_size, *t7_bytes(base(i), long_size)) for i in range(len(MODELS)) for long_size in (8, 4)]
    made = {}
    for n in range(BYTE_MUTATIONS):
        i, long_size, data, fields = rng.choice(bases)
        mutated, how = mutate_bytes(rng, data, fields)
        made[folder / f"bytes{n}.t7"] = f"{MODELS[i]}, {long_size}-byte longs: {how}"
        (folder / f"bytes{n}.t7").write_bytes(mutated)
    for n in range(OBJECT_MUTATIONS):
        i = rng.randrange(len(MODELS))
        checkpoint = base(i)
        how = mutate_objects(rng, checkpoint)
        made[folder / f"objects{n}.t7"] = f"{MODELS[i]}: {how}"
        try:
            write_t7(folder / f"objects{n}.t7", checkpoint, long_size=rng.choice([8, 4]))
        except RecursionError:  # the writer recursed too deep into a mutated graph: no file
            del made[folder / f"objects{n}.t7"]
    return made


def test_mutated_checkpoints(mutants: dict[Path, str]) -> None:
    results = load_in_child(list(mutants), seconds=50)
    bad = []
    for result in results:
        try:
            if result["outcome"] != "ok":
                assert_short_error(result)
            assert result["seconds"] < 2, result
        except AssertionError as error:
            bad.append(f"{result['path']} ({mutants[Path(result['path'])]}): {error}")
    assert not bad, "\n".join(bad[:10])
    # The mutations reach past the reader: into the converter, and to files that still load.
    tally = Counter("ok" if r["outcome"] == "ok" else "reader" if "not a readable Torch7 file" in r["detail"]
                    else "converter" for r in results)
    print(f"{len(results)} mutants: {dict(tally)}")
    assert tally["ok"] >= 20 and tally["converter"] >= 100 and tally["reader"] >= 100, tally
