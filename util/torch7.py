"""Read Torch7 ``.t7`` files and convert karpathy/char-rnn checkpoints.

Torch7's binary serialisation (torch/File.lua, generic/Tensor.c, generic/Storage.c), little-endian:

    object := int32 type tag, then by tag
      0 nil      nothing
      1 number   float64
      2 string   int32 length, bytes
      3 table    int32 object index; unless the index was seen before (then it is a reference to
                 that object): int32 count, then count (key object, value object) pairs
      4 torch    int32 object index (references as for tables); string "V <version>" (missing in
                 files older than the versioning scheme); string class name; then the class's data:
                   *Storage: long n, n raw elements
                   *Tensor:  int32 ndim, ndim longs sizes, ndim longs strides,
                             long 1-based storage offset, storage object (nil when empty)
                   others (nn modules, ...): one object, normally the table of the instance's fields
      5 boolean  int32, 1 = true
      6, 7, 8    Lua function (bytecode): rejected, nothing from the file is ever executed

``long`` is the C long of the machine that wrote the file: 8 bytes on 64-bit Linux/macOS, 4 on
Windows and 32-bit builds; the file does not say which, so both are tried (see ``read_t7``).

A file is untrusted input: whatever it declares, reading it takes time and memory in proportion to
its size (memory up to about 10 times it, for a file of nothing but tiny tables), and a bad file is
a ValueError. So:

- every count, length and size in the file is checked against the bytes left in it before
  anything is allocated for it;
- tensors are copied out of their storages, and many tensors can view one storage (or view it
  with stride 0, repeating elements): all the tensors of a file together may hold at most as many
  bytes (at the file's element sizes) as the file has. char-rnn's tensors are non-overlapping
  views of its flattened parameter storage, so they hold no more than their storages;
- objects are read without recursion, so nesting takes no stack, and nest at most ``MAX_DEPTH``
  deep, for the code that walks what was read (a stock 2-layer LSTM checkpoint nests 60 deep);
- the converter checks the type of everything it takes from the file (the options: numbers,
  strings and booleans only), checks that the model's graph is one that char-rnn builds (a DAG,
  where a Dropout has one input and is no output) before it walks it, in time linear in its size,
  and describes a value from the file in a message by its kind, never by its contents (a table
  may be nested thousands deep, a string megabytes long).
"""

from __future__ import annotations

import math
import os
import re
import struct
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch

_NIL, _NUMBER, _STRING, _TABLE, _TORCH, _BOOLEAN = range(6)
_FUNCTION_TAGS = (6, 7, 8)

MAX_DEPTH = 10_000
"""How deep objects may nest in a file that read_t7 reads."""
_MAX_DIMS = 32  # numpy 1.x's limit (2.x allows 64); char-rnn's weights have 2
_MAX_WHOLE = 2**53  # a double holds every whole number up to here exactly

# Element types by the name inside torch.<Name>Storage / torch.<Name>Tensor.
_ELEMENT_DTYPES = {
    "Double": np.float64, "Float": np.float32, "Half": np.float16, "Long": np.int64,
    "Int": np.int32, "Short": np.int16, "Char": np.int8, "Byte": np.uint8,
}
# cutorch serialises a Cuda tensor exactly like the host tensor of the same element type;
# the float one is plain "torch.CudaTensor".
_ARRAY_CLASS = re.compile(r"torch\.(Cuda)?(Double|Float|Half|Long|Int|Short|Char|Byte)?(Storage|Tensor)")

_Layout = tuple[list[int], list[int], int]  # a tensor's sizes, strides and 0-based storage offset

_INT32 = struct.Struct("<i")
_FLOAT64 = struct.Struct("<d")


class TorchObject:
    """An instance of a Torch class that is not a tensor or storage (an nn module, an nngraph
    node, ...): its class name and what the file holds for it, normally its fields as a dict."""

    def __init__(self, typename: str) -> None:
        self.typename = typename
        self.attrs: object = None

    def __repr__(self) -> str:
        # Fields may hold cycles (nngraph nodes) and huge tensors: keep the repr short.
        return f"<TorchObject {self.typename}>"


def fields_of(value: object) -> dict:
    """The fields of a Torch object (or a table) as a dict; {} for anything else."""
    attrs = value.attrs if isinstance(value, TorchObject) else value
    return attrs if isinstance(attrs, dict) else {}


class TableKey:
    """A Lua table key that Python cannot hash (a table or a tensor); Lua compares such keys by
    identity, and so does this wrapper: ``TableKey(a) == TableKey(b)`` iff ``a is b``."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TableKey) and other.value is self.value

    def __hash__(self) -> int:
        return id(self.value)


def describe(value: object) -> str:
    """A value read from a file, for a message: numbers, booleans and the start of a string as
    they are, anything else by its kind (never by its contents, which are unbounded)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else f"{value[:40]!r}..."
    if isinstance(value, TorchObject):
        return f"a {describe(value.typename)} object"
    if isinstance(value, TableKey):
        return describe(value.value)
    kinds = {type(None): "nil", dict: "a table", np.ndarray: "a tensor"}
    return kinds.get(type(value), "a value")


class _ParseError(Exception):
    def __init__(self, message: str, pos: int) -> None:
        super().__init__(message)
        self.message = message
        self.pos = pos


class _Pending(ABC):
    """An object whose contents, `left` more objects, are still to be read into it."""

    left: int

    @abstractmethod
    def add(self, value: object) -> None:
        """Take the next of the contents."""

    @abstractmethod
    def finish(self) -> object:
        """The object, once `left` is 0."""


class _Table(_Pending):
    """A table: `count` (key, value) pairs."""

    def __init__(self, table: dict, count: int, reader: _Reader) -> None:
        self.table, self.reader, self.left = table, reader, 2 * count
        self.key: object = None

    def add(self, value: object) -> None:
        self.left -= 1
        if self.left % 2:
            self.key = _table_key(value, self.reader)
        else:
            self.table[self.key] = value

    def finish(self) -> object:
        return self.table


class _Fields(_Pending):
    """A Torch object's fields: one object, normally a table."""

    def __init__(self, obj: TorchObject) -> None:
        self.obj, self.left = obj, 1

    def add(self, value: object) -> None:
        self.obj.attrs, self.left = value, 0

    def finish(self) -> object:
        return self.obj


class _TensorStorage(_Pending):
    """A tensor's storage, read after its layout."""

    def __init__(self, reader: _Reader, index: int, dtype: np.dtype, layout: _Layout) -> None:
        self.reader, self.index, self.dtype, self.layout, self.left = reader, index, dtype, layout, 1
        self.storage: object = None

    def add(self, value: object) -> None:
        self.storage, self.left = value, 0

    def finish(self) -> object:
        tensor = self.reader.tensor(self.dtype, *self.layout, self.storage)
        self.reader.objects[self.index] = tensor
        return tensor


class _Reader:
    def __init__(self, data: bytes, long_size: int) -> None:
        self.data = data
        self.pos = 0
        self.long = struct.Struct("<q" if long_size == 8 else "<i")
        self.long_dtype = np.dtype("<i8" if long_size == 8 else "<i4")
        self.objects: dict[int, object] = {}
        self.storages: dict[int, np.ndarray] = {}  # by id: a tensor's storage must be one of these
        self.copy_budget = len(data)  # bytes the tensors' copies may still take (module docstring)

    def fail(self, message: str) -> _ParseError:
        return _ParseError(message, self.pos)

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"needs {n} more bytes but the file ends (truncated or not a .t7 file)")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def int32(self) -> int:
        return _INT32.unpack(self.take(4))[0]

    def long_value(self) -> int:
        return self.long.unpack(self.take(self.long.size))[0]

    def longs(self, n: int) -> list[int]:
        return [self.long_value() for _ in range(n)]

    def string(self) -> str:
        # Lua strings are bytes; latin-1 maps each byte to the char of the same code, losslessly.
        return self.take(self.int32()).decode("latin-1")

    def read_file(self) -> object:
        obj = self.read_object()
        if self.pos != len(self.data):
            raise self.fail(f"{len(self.data) - self.pos} unexpected bytes after the object")
        return obj

    def read_object(self) -> object:
        """The next object, read without recursion: the objects being filled wait on a stack, so
        nesting takes memory (bounded by the file's size) but no interpreter or C stack."""
        stack: list[_Pending] = []
        while True:
            value = self.begin_object()
            if isinstance(value, _Pending) and value.left:
                if len(stack) == MAX_DEPTH:
                    raise self.fail(f"objects nested too deeply (more than {MAX_DEPTH} levels)")
                stack.append(value)
                continue
            if isinstance(value, _Pending):  # an empty table
                value = value.finish()
            while stack:  # hand the value to the object waiting for it, finishing those it fills
                stack[-1].add(value)
                if stack[-1].left:
                    break
                value = stack.pop().finish()
            else:
                return value

    def begin_object(self) -> object:
        """An object read whole (a number, a reference, a storage...), or the _Pending of a table,
        Torch object or tensor, whose contents follow."""
        tag = self.int32()
        if tag == _NIL:
            return None
        if tag == _NUMBER:
            return _FLOAT64.unpack(self.take(8))[0]
        if tag == _STRING:
            return self.string()
        if tag == _BOOLEAN:
            return self.int32() == 1
        if tag in _FUNCTION_TAGS:
            raise self.fail("holds a serialised Lua function, which is not supported")
        if tag not in (_TABLE, _TORCH):
            raise self.fail(f"unknown type tag {tag}")
        index = self.int32()
        if index in self.objects:
            return self.objects[index]
        return self.begin_table(index) if tag == _TABLE else self.begin_torch_object(index)

    def begin_table(self, index: int) -> _Pending:
        table: dict = {}
        self.objects[index] = table  # before the contents, which may refer back to it
        count = self.int32()
        if count < 0 or 8 * count > len(self.data) - self.pos:  # a pair takes at least two tags
            raise self.fail(f"bad table size {count}")
        return _Table(table, count, self)

    def begin_torch_object(self, index: int) -> object:
        name = self.string()
        if _is_version(name):  # else the file predates versions and this was the class name
            name = self.string()
        match = _ARRAY_CLASS.fullmatch(name)
        if match and (match[1] or match[2]):
            dtype = np.dtype(_ELEMENT_DTYPES[match[2] or "Float"])
            if match[3] == "Tensor":
                return _TensorStorage(self, index, dtype, self.tensor_layout())
            storage = self.storage(dtype)
            self.objects[index] = storage
            return storage
        obj = TorchObject(name)
        self.objects[index] = obj  # before the fields: nngraph nodes point back at each other
        return _Fields(obj)

    def file_dtype(self, dtype: np.dtype) -> np.dtype:
        return self.long_dtype if dtype == np.int64 else dtype.newbyteorder("<")

    def storage(self, dtype: np.dtype) -> np.ndarray:
        size = self.long_value()
        file_dtype = self.file_dtype(dtype)
        if size < 0 or size * file_dtype.itemsize > len(self.data) - self.pos:
            raise self.fail(f"bad storage size {size}")
        storage = np.frombuffer(self.take(size * file_dtype.itemsize), file_dtype).astype(dtype)
        self.storages[id(storage)] = storage
        return storage

    def tensor_layout(self) -> _Layout:
        """A tensor's sizes, strides and 0-based storage offset."""
        ndim = self.int32()
        if not 0 <= ndim <= _MAX_DIMS:
            raise self.fail(f"bad tensor dimension count {ndim}")
        sizes, strides = self.longs(ndim), self.longs(ndim)
        return sizes, strides, self.long_value() - 1

    def tensor(self, dtype: np.dtype, sizes: list[int], strides: list[int], offset: int,
               storage: object) -> np.ndarray:
        if not sizes:  # Torch7's empty tensor has no dimensions
            return np.zeros(0, dtype)
        # Torch7 drops a tensor's dimensions from the first of size 0 on: sizes are >= 1.
        if min(sizes) < 1 or min(strides) < 0 or offset < 0:
            raise self.fail("bad tensor layout (a size below 1, a negative stride or offset)")
        known = self.storages.get(id(storage))  # not a tensor or any other array
        if known is None or known is not storage or known.dtype != dtype:
            raise self.fail(f"tensor of {dtype} without a storage of that type")
        self.spend(math.prod(sizes) * self.file_dtype(dtype).itemsize)
        last = offset + sum((size - 1) * stride for size, stride in zip(sizes, strides, strict=True))
        if last >= known.size:
            raise self.fail(f"tensor reaches element {last + 1} of a storage of {known.size}")
        # A dimension of size 1 is never stepped along, whatever its stride says.
        byte_strides = [stride * dtype.itemsize if size > 1 else 0 for size, stride in zip(sizes, strides, strict=True)]
        view = np.lib.stride_tricks.as_strided(known[offset:], shape=sizes, strides=byte_strides)
        return view.copy()  # C-contiguous and independent of other views of the storage

    def spend(self, nbytes: int) -> None:
        if nbytes > self.copy_budget:
            raise self.fail(f"its tensors would hold more than the file's {len(self.data)} bytes "
                            f"(views of one storage that overlap or repeat elements)")
        self.copy_budget -= nbytes


def _is_version(text: str) -> bool:
    """Whether torch.File:readObject takes `text` for a version: "V " and a number."""
    if not text.startswith("V "):
        return False
    try:
        float(text[2:])
    except ValueError:
        return False
    return True


def _table_key(key: object, reader: _Reader) -> object:
    if key is None:
        raise reader.fail("table key is nil")
    if isinstance(key, float) and key.is_integer():
        return int(key)  # Lua arrays are tables keyed 1..n
    if isinstance(key, (dict, np.ndarray)):
        return TableKey(key)
    return key


def read_t7(path: str | os.PathLike) -> object:
    """Read a Torch7 binary file (``torch.save`` default mode).

    Numbers are floats (integral table keys are ints), strings are str (latin-1: one char per
    byte), tables are dicts, tensors and storages are numpy arrays (a ``CudaTensor`` as float32),
    other Torch classes are ``TorchObject``s. An object stored once is one Python object, so
    shared and cyclic structures keep their shape. Raises ValueError if the file is not a
    readable .t7 file, breaks a limit of the module docstring, or needs more memory than there is
    (reading takes memory in proportion to the file's size).
    """
    errors: list[tuple[int, str]] = []  # not the exceptions, which would keep each try's objects
    try:
        data = Path(path).read_bytes()
        # 64-bit Linux builds write 8-byte longs, Windows/32-bit builds 4-byte ones. The wrong guess
        # misreads the first tensor size and then fails a bounds check or leaves bytes over.
        for long_size in (8, 4):
            try:
                return _Reader(data, long_size).read_file()
            except _ParseError as error:
                errors.append((error.pos, error.message))
    except MemoryError:
        raise ValueError(f"{path}: not enough memory to read its {os.path.getsize(path):,} bytes") from None
    # Report the guess that got further: its error is the one about the file, not the guess.
    pos, message = max(errors, key=lambda error: error[0])
    raise ValueError(f"{path}: not a readable Torch7 file: {message} (at byte {pos})")


def _array_part(table: object) -> list:
    """The values of a Lua table's keys 1..n (its "array part"), in order."""
    if not isinstance(table, dict):
        return []
    values: list = []
    while len(values) + 1 in table:
        values.append(table[len(values) + 1])
    return values


def _tokens(vocab: object, path: str | os.PathLike) -> list[str]:
    """char-rnn's vocab table {char: index 1..V} as the list of chars by 0-based index."""
    if not isinstance(vocab, dict) or not vocab:
        raise ValueError(f"{path}: the vocabulary is not a non-empty table")
    tokens: list = [None] * len(vocab)
    for char, index in vocab.items():
        if not (isinstance(char, str) and len(char) == 1 and isinstance(index, float)
                and index.is_integer() and 1 <= index <= len(vocab) and tokens[int(index) - 1] is None):
            raise ValueError(f"{path}: the vocabulary is not a map from single bytes to 1..{len(vocab)}")
        tokens[int(index) - 1] = char
    return tokens


def _is_node(value: object) -> bool:
    return isinstance(value, TorchObject) and isinstance(fields_of(value).get("data"), dict)


class _ForwardGraph:
    """The forward graph of an nngraph gModule, navigated by module class names.

    ``gModule.forwardnodes`` lists the forward graph's nodes; there a node's ``children`` are the
    nodes that consume its output. ``gModule.outnode`` (a backward-graph node that shares its
    ``data`` table with its forward twin) lists the gModule's outputs in order in
    ``data.mapindex``. The graph is checked to be what char-rnn's nngraph models are: a DAG of
    nodes, where a Dropout has one input and is no output (see consumers_of_kind)."""

    def __init__(self, gmodule: TorchObject, title: str) -> None:
        self.title = title
        fields = fields_of(gmodule)
        nodes = _array_part(fields.get("forwardnodes"))
        if not nodes or not all(_is_node(n) for n in nodes):
            raise self.error("has no forward nodes")
        self.consumers = {n: _array_part(fields_of(n).get("children")) for n in nodes}
        self.producers: dict[TorchObject, list[TorchObject]] = {n: [] for n in nodes}
        for node, consumers in self.consumers.items():
            for consumer in consumers:
                if not (isinstance(consumer, TorchObject) and consumer in self.producers):
                    raise self.error("has a node whose children are not forward nodes")
                self.producers[consumer].append(node)
        self.check_acyclic()
        if any(len(self.producers[n]) != 1 for n in self.nodes_of_kind("nn.Dropout")):
            raise self.error("has a Dropout that has other than one input")
        self.found: dict[tuple[TorchObject, str], list[TorchObject]] = {}  # consumers_of_kind's
        by_data = {id(fields_of(n)["data"]): n for n in nodes}
        out_data = fields_of(fields_of(fields.get("outnode")).get("data"))
        outputs = [by_data.get(id(data)) for data in _array_part(out_data.get("mapindex"))]
        if None in outputs:
            raise self.error("has outputs outside its forward graph")
        self.outputs: list[TorchObject] = [node for node in outputs if node is not None]
        if any(self.kind(node) == "nn.Dropout" for node in self.outputs):
            raise self.error("outputs a Dropout")

    def error(self, problem: str) -> ValueError:
        return ValueError(f"{self.title} {problem}")

    def check_acyclic(self) -> None:
        """Take nodes whose producers are all taken until none is left (Kahn's algorithm)."""
        waiting = {node: len(producers) for node, producers in self.producers.items()}
        ready = [node for node, count in waiting.items() if count == 0]
        for node in ready:  # grows as nodes become ready
            for consumer in self.consumers[node]:
                waiting[consumer] -= 1
                if waiting[consumer] == 0:
                    ready.append(consumer)
        if len(ready) < len(waiting):
            raise self.error("has a cycle (nngraph's graphs have none)")

    @staticmethod
    def module(node: TorchObject) -> TorchObject | None:
        module = fields_of(fields_of(node).get("data")).get("module")
        return module if isinstance(module, TorchObject) else None

    def kind(self, node: TorchObject) -> str | None:
        module = self.module(node)
        return module.typename if module else None

    def nodes_of_kind(self, kind: str) -> list[TorchObject]:
        return [n for n in self.consumers if self.kind(n) == kind]

    def consumers_of_kind(self, node: TorchObject, kind: str) -> list[TorchObject]:
        """The consumers of a node's output that are `kind` modules, looking through nn.Dropout
        (which char-rnn puts between layers when dropout > 0).

        Linear in the graph's size over all calls, whatever the file: each answer is remembered
        (a bad file could have every layer ask about one node of many consumers), and the node
        asked about is never a Dropout (the outputs and the kinds asked for are none), so each
        Dropout, having one input, is looked through from one node only."""
        if (node, kind) not in self.found:
            found, pending = [], list(self.consumers[node])
            for consumer in pending:  # grows: a Dropout's consumers are looked at in turn
                if self.kind(consumer) == "nn.Dropout":
                    pending += self.consumers[consumer]
                elif self.kind(consumer) == kind:
                    found.append(consumer)
            self.found[node, kind] = found
        return self.found[node, kind]

    def only(self, nodes: list[TorchObject], what: str) -> TorchObject:
        if len(nodes) != 1:
            raise self.error(f"has {len(nodes)} {what}, expected 1")
        return nodes[0]

    def sum_partner(self, linear: TorchObject) -> tuple[TorchObject, TorchObject]:
        """For char-rnn's ``CAddTable{Linear(x), Linear(h)}``: the sum node and the other Linear."""
        total = self.only(self.consumers_of_kind(linear, "nn.CAddTable"), "sums of a Linear")
        others = [p for p in self.producers[total] if p is not linear]
        partner = self.only(others, "terms added to a Linear")
        if self.kind(partner) != "nn.Linear":
            raise self.error(f"adds {describe(self.kind(partner))} to a Linear where char-rnn adds a Linear")
        return total, partner

    def linear(self, node: TorchObject, shape: tuple[int, int],
               name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """A Linear node's (weight, bias); `name` is checked against its nngraph annotation."""
        annotations = fields_of(fields_of(node).get("data")).get("annotations")
        label = annotations.get("name") if isinstance(annotations, dict) else None
        if name is not None and label is not None and not (isinstance(label, str) and label == name):
            raise self.error(f"has a Linear named {describe(label)} where '{name}' was expected")
        fields = fields_of(self.module(node))
        weight = fields.get("weight")
        if not isinstance(weight, np.ndarray) or weight.shape != shape:
            found = weight.shape if isinstance(weight, np.ndarray) else describe(weight)
            raise self.error(f"has a Linear weight of shape {found} where {shape} was expected")
        bias = fields.get("bias")
        if bias is None:  # nn.Linear(in, out, false)
            bias = np.zeros(shape[0])
        if not isinstance(bias, np.ndarray) or bias.shape != shape[:1]:
            raise self.error(f"has a Linear bias that does not match its weight {shape}")
        return weight, bias


def _lstm_layer(graph: _ForwardGraph, x: TorchObject, layer: int, shape: tuple[int, int]) -> dict:
    # model/LSTM.lua: CAddTable{Linear i2h_L(x), Linear h2h_L(prev_h)} -> Reshape(4, H): gates
    # in, forget, out, candidate, which is this project's order too.
    i2h = graph.only(graph.consumers_of_kind(x, "nn.Linear"), f"Linears reading layer {layer + 1}")
    _, h2h = graph.sum_partner(i2h)
    hidden = shape[0] // 4
    return {"i2h": graph.linear(i2h, shape, f"i2h_{layer + 1}"),
            "h2h": graph.linear(h2h, (4 * hidden, hidden), f"h2h_{layer + 1}")}


def _gru_layer(graph: _ForwardGraph, x: TorchObject, layer: int, shape: tuple[int, int]) -> dict:
    # model/GRU.lua: three Linears read x, each added to a Linear of prev_h (or of r * prev_h):
    #   z = Sigmoid(sum), which also feeds MulConstant(-1) (for 1 - z),
    #   r = Sigmoid(sum), which feeds CMulTable{r, prev_h} -> Linear W_h,
    #   candidate = Tanh(sum), where the Linear added to W_x is that W_h.
    hidden = shape[0] // 3
    pairs: dict[str, list] = {"z": [], "r": [], "candidate": []}
    w_h = None
    for w_x in graph.consumers_of_kind(x, "nn.Linear"):
        total, partner = graph.sum_partner(w_x)
        sigmoids = graph.consumers_of_kind(total, "nn.Sigmoid")
        if graph.consumers_of_kind(total, "nn.Tanh"):
            role = "candidate"
        elif len(sigmoids) == 1 and graph.consumers_of_kind(sigmoids[0], "nn.MulConstant"):
            role = "z"
        else:
            role = "r"
            gate = graph.only(sigmoids, f"reset gates in layer {layer + 1}")
            product = graph.only(graph.consumers_of_kind(gate, "nn.CMulTable"), "reset products")
            w_h = graph.only(graph.consumers_of_kind(product, "nn.Linear"), "Linears of r * prev_h")
        pairs[role].append((w_x, partner))
    if any(len(found) != 1 for found in pairs.values()) or pairs["candidate"][0][1] is not w_h:
        raise graph.error(f"does not have char-rnn's GRU structure in layer {layer + 1}")
    (zx, zh), (rx, rh), (cx, ch) = (  # in the order z, r, candidate
        (graph.linear(w_x, (hidden, shape[1])), graph.linear(partner, (hidden, hidden)))
        for [(w_x, partner)] in pairs.values())
    return {"i2h": tuple(np.concatenate(blocks) for blocks in zip(zx, rx, cx, strict=True)),
            "h2h": tuple(np.concatenate(blocks) for blocks in zip(zh, rh, strict=True)),
            "h2h_candidate": ch}


def _rnn_layer(graph: _ForwardGraph, x: TorchObject, layer: int, shape: tuple[int, int]) -> dict:
    # model/RNN.lua: Tanh(CAddTable{Linear(x), Linear(prev_h)}).
    i2h = graph.only(graph.consumers_of_kind(x, "nn.Linear"), f"Linears reading layer {layer + 1}")
    _, h2h = graph.sum_partner(i2h)
    return {"i2h": graph.linear(i2h, shape), "h2h": graph.linear(h2h, (shape[0], shape[0]))}


# model type -> (layer converter, row blocks of a layer's i2h, gModule outputs per layer:
# LSTM layers output c and h, the others h)
_MODELS = {"lstm": (_lstm_layer, 4, 2), "gru": (_gru_layer, 3, 1), "rnn": (_rnn_layer, 1, 1)}


def _plain(value: object) -> object:
    # Lua numbers are all doubles; options such as seq_length are counts, so integral ones
    # become ints.
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _finite(value: object, what: str) -> float:
    if not (isinstance(value, float) and math.isfinite(value)):
        raise ValueError(f"{what} is {describe(value)}, not a finite number")
    return value


def _whole(value: object, what: str, low: int) -> int:
    if not (isinstance(value, float) and value.is_integer() and low <= value <= _MAX_WHOLE):
        raise ValueError(f"{what} is {describe(value)}, not a whole number from {low} to 2^53")
    return int(value)


def _is_iteration(key: object) -> bool:
    return type(key) is int and 0 <= key <= _MAX_WHOLE  # type, not isinstance: a bool is an int


def _options(opt: dict, path: str | os.PathLike) -> dict:
    """opt with integral numbers as ints. torch.CmdLine's options are numbers, strings and booleans:
    anything else (a table could be nested thousands deep) is no char-rnn checkpoint's."""
    for key, value in opt.items():
        if not isinstance(key, str):
            raise ValueError(f"{path}: opt has an option named by {describe(key)}, not by a string")
        if not isinstance(value, (float, str, bool)):
            raise ValueError(f"{path}: option {describe(key)} is {describe(value)}, not a number, string or boolean")
    return {key: _plain(value) for key, value in opt.items()}


def _history(fields: dict, path: str | os.PathLike) -> dict:
    """The training history: where the checkpoint was taken and the losses so far."""
    val_loss = fields.get("val_loss")
    if not (val_loss is None or isinstance(val_loss, float)):
        raise ValueError(f"{path}: val_loss is {describe(val_loss)}, not a number")
    train_losses = fields.get("train_losses", {})
    losses = _array_part(train_losses)
    if not (isinstance(train_losses, dict) and all(isinstance(loss, float) for loss in losses)):
        raise ValueError(f"{path}: train_losses is not a list of numbers")
    # char-rnn keys them by the iteration each was measured at; a .pt lists [iteration, loss] pairs.
    val_losses = fields.get("val_losses", {})
    if not (isinstance(val_losses, dict)
            and all(_is_iteration(key) and isinstance(loss, float) for key, loss in val_losses.items())):
        raise ValueError(f"{path}: val_losses is not a table of losses by iteration")
    return {"iteration": _whole(fields.get("i", 0.0), f"{path}: i (the iteration)", 0),
            "epoch": _finite(fields.get("epoch", 0.0), f"{path}: epoch"),
            "val_loss": val_loss, "train_losses": losses,
            "val_losses": [[key, loss] for key, loss in sorted(val_losses.items())]}


def _state_dict(graph: _ForwardGraph, model_type: str, vocab_size: int, hidden: int,
                num_layers: int) -> dict[str, np.ndarray]:
    """The weights of the char-rnn model `graph` is, by this project's parameter names."""
    convert_layer, blocks, outputs_per_layer = _MODELS[model_type]
    if len(graph.outputs) != outputs_per_layer * num_layers + 1:
        raise graph.error(f"has {len(graph.outputs)} outputs, not those of {num_layers} layers")
    # Layer 1 reads OneHot(token); layer L > 1 reads layer L-1's new h, the last of its outputs.
    x = graph.only(graph.nodes_of_kind("OneHot"), "OneHot modules")
    state: dict[str, np.ndarray] = {}
    for layer in range(num_layers):
        shape = (blocks * hidden, vocab_size if layer == 0 else hidden)
        for name, (weight, bias) in convert_layer(graph, x, layer, shape).items():
            state[f"layers.{layer}.{name}.weight"] = weight
            state[f"layers.{layer}.{name}.bias"] = bias
        x = graph.outputs[outputs_per_layer * (layer + 1) - 1]
    # The last output is LogSoftMax(decoder(top h)).
    if graph.kind(graph.outputs[-1]) != "nn.LogSoftMax":
        raise graph.error("does not end in LogSoftMax")
    decoder = graph.only(graph.producers[graph.outputs[-1]], "inputs of the LogSoftMax")
    if decoder not in graph.consumers_of_kind(x, "nn.Linear"):
        raise graph.error("does not decode the top layer's h")
    state["decoder.weight"], state["decoder.bias"] = graph.linear(decoder, (vocab_size, hidden), "decoder")
    return state


def load_char_rnn_checkpoint(path: str | os.PathLike) -> dict:
    """Convert a karpathy/char-rnn checkpoint (``lm_*.t7``) to this project's layout.

    The Linear modules are told apart by their place in the nngraph gModule that char-rnn's
    model/{LSTM,GRU,RNN}.lua build, not by shapes or module order. Raises ValueError if the file
    is not a readable char-rnn checkpoint; every field of what it returns is checked for type.
    """
    checkpoint = read_t7(path)
    fields = checkpoint if isinstance(checkpoint, dict) else {}
    protos, opt = fields.get("protos"), fields.get("opt")
    rnn = protos.get("rnn") if isinstance(protos, dict) else None
    if not (isinstance(rnn, TorchObject) and rnn.typename == "nn.gModule" and isinstance(opt, dict)
            and "vocab" in fields):
        raise ValueError(f"{path} is not a char-rnn checkpoint (it lacks protos.rnn, opt or vocab)")
    model_type = opt.get("model")
    if not (isinstance(model_type, str) and model_type in _MODELS):
        raise ValueError(f"{path}: unsupported char-rnn model type {describe(model_type)}")
    options = _options(opt, path)
    tokens = _tokens(fields["vocab"], path)
    hidden = _whole(opt.get("rnn_size"), f"{path}: option 'rnn_size'", 1)
    num_layers = _whole(opt.get("num_layers"), f"{path}: option 'num_layers'", 1)
    graph = _ForwardGraph(rnn, f"{path}: the char-rnn {model_type} graph")
    state = _state_dict(graph, model_type, len(tokens), hidden, num_layers)
    with np.errstate(over="ignore"):  # a double past float32's range becomes inf, for validate() to report
        weights = {name: torch.from_numpy(np.ascontiguousarray(value, np.float32)) for name, value in state.items()}
    return {
        "model_type": model_type,
        "rnn_size": hidden,
        "num_layers": num_layers,
        "dropout": _finite(opt.get("dropout", 0.0), f"{path}: option 'dropout'"),  # older char-rnn had no -dropout
        "tokens": tokens,
        "encoding": "bytes",
        "state_dict": weights,
        "opt": options,
        **_history(fields, path),
    }
