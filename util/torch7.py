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
"""

from __future__ import annotations

import builtins
import os
import re
import struct
import sys
from pathlib import Path

import numpy as np
import torch

_NIL, _NUMBER, _STRING, _TABLE, _TORCH, _BOOLEAN = range(6)
_FUNCTION_TAGS = (6, 7, 8)

# Element types by the name inside torch.<Name>Storage / torch.<Name>Tensor.
_ELEMENT_DTYPES = {
    "Double": np.float64, "Float": np.float32, "Half": np.float16, "Long": np.int64,
    "Int": np.int32, "Short": np.int16, "Char": np.int8, "Byte": np.uint8,
}
# cutorch serialises a Cuda tensor exactly like the host tensor of the same element type;
# the float one is plain "torch.CudaTensor".
_ARRAY_CLASS = re.compile(r"torch\.(Cuda)?(Double|Float|Half|Long|Int|Short|Char|Byte)?(Storage|Tensor)")

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


class _ParseError(Exception):
    def __init__(self, message: str, pos: int) -> None:
        super().__init__(message)
        self.message = message
        self.pos = pos


class _Reader:
    def __init__(self, data: bytes, long_size: int) -> None:
        self.data = data
        self.pos = 0
        self.long = struct.Struct("<q" if long_size == 8 else "<i")
        self.long_dtype = np.dtype("<i8" if long_size == 8 else "<i4")
        self.objects: dict[int, object] = {}

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
        obj = self.object()
        if self.pos != len(self.data):
            raise self.fail(f"{len(self.data) - self.pos} unexpected bytes after the object")
        return obj

    def object(self) -> object:
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
        return self.table(index) if tag == _TABLE else self.torch_object(index)

    def table(self, index: int) -> dict:
        table: dict = {}
        self.objects[index] = table  # before the contents, which may refer back to it
        count = self.int32()
        if count < 0 or 8 * count > len(self.data) - self.pos:  # a pair takes at least two tags
            raise self.fail(f"bad table size {count}")
        for _ in range(count):
            key, value = self.object(), self.object()
            table[_table_key(key, self)] = value
        return table

    def torch_object(self, index: int) -> builtins.object:
        name = self.string()
        if _is_version(name):  # else the file predates versions and this was the class name
            name = self.string()
        match = _ARRAY_CLASS.fullmatch(name)
        if match and (match[1] or match[2]):
            dtype = np.dtype(_ELEMENT_DTYPES[match[2] or "Float"])
            array = self.storage(dtype) if match[3] == "Storage" else self.tensor(dtype)
            self.objects[index] = array
            return array
        obj = TorchObject(name)
        self.objects[index] = obj  # before the fields: nngraph nodes point back at each other
        obj.attrs = self.object()
        return obj

    def file_dtype(self, dtype: np.dtype) -> np.dtype:
        return self.long_dtype if dtype == np.int64 else dtype.newbyteorder("<")

    def storage(self, dtype: np.dtype) -> np.ndarray:
        size = self.long_value()
        file_dtype = self.file_dtype(dtype)
        if size < 0 or size * file_dtype.itemsize > len(self.data) - self.pos:
            raise self.fail(f"bad storage size {size}")
        return np.frombuffer(self.take(size * file_dtype.itemsize), file_dtype).astype(dtype)

    def tensor(self, dtype: np.dtype) -> np.ndarray:
        ndim = self.int32()
        if ndim < 0 or 2 * ndim * self.long.size > len(self.data) - self.pos:
            raise self.fail(f"bad tensor dimension count {ndim}")
        sizes, strides = self.longs(ndim), self.longs(ndim)
        offset = self.long_value() - 1
        storage = self.object()
        if min(sizes + strides + [offset], default=0) < 0:
            raise self.fail(f"bad tensor layout: sizes {sizes}, strides {strides}, offset {offset + 1}")
        if ndim == 0 or 0 in sizes:  # Torch7's empty tensor has no dimensions
            return np.zeros(sizes or [0], dtype)
        if not isinstance(storage, np.ndarray) or storage.dtype != dtype:
            raise self.fail(f"tensor of {dtype} without a storage of that type")
        last = offset + sum((size - 1) * stride for size, stride in zip(sizes, strides, strict=True))
        if last >= storage.size:
            raise self.fail(f"tensor reaches element {last + 1} of a storage of {storage.size}")
        view = np.lib.stride_tricks.as_strided(
            storage[offset:], shape=sizes, strides=[s * dtype.itemsize for s in strides])
        return view.copy()  # C-contiguous and independent of other views of the storage


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
    readable .t7 file.
    """
    data = Path(path).read_bytes()
    errors = []
    # 64-bit Linux builds write 8-byte longs, Windows/32-bit builds 4-byte ones. The wrong guess
    # misreads the first tensor size and then fails a bounds check or leaves bytes over.
    for long_size in (8, 4):
        old_limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(old_limit, 100_000))  # nngraph graphs nest one level per node
        try:
            return _Reader(data, long_size).read_file()
        except _ParseError as error:
            errors.append(error)
        except RecursionError:
            raise ValueError(f"{path}: objects nested too deeply") from None
        finally:
            sys.setrecursionlimit(old_limit)
    # Report the guess that got further: its error is the one about the file, not the guess.
    furthest = max(errors, key=lambda e: e.pos)
    raise ValueError(f"{path}: not a readable Torch7 file: {furthest.message} (at byte {furthest.pos})")


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


class _ForwardGraph:
    """The forward graph of an nngraph gModule, navigated by module class names.

    ``gModule.forwardnodes`` lists the forward graph's nodes; there a node's ``children`` are the
    nodes that consume its output. ``gModule.outnode`` (a backward-graph node that shares its
    ``data`` table with its forward twin) lists the gModule's outputs in order in
    ``data.mapindex``."""

    def __init__(self, gmodule: TorchObject, describe: str) -> None:
        self.describe = describe
        fields = fields_of(gmodule)
        nodes = _array_part(fields.get("forwardnodes"))
        if not nodes or not all(isinstance(n, TorchObject) and isinstance(n.attrs, dict) for n in nodes):
            raise self.error("has no forward nodes")
        self.consumers = {n: _array_part(fields_of(n).get("children")) for n in nodes}
        self.producers: dict[TorchObject, list[TorchObject]] = {n: [] for n in nodes}
        for node, consumers in self.consumers.items():
            for consumer in consumers:
                self.producers.setdefault(consumer, []).append(node)
        by_data = {id(fields_of(n).get("data")): n for n in nodes}
        out_data = fields_of(fields_of(fields.get("outnode")).get("data"))
        outputs = [by_data.get(id(data)) for data in _array_part(out_data.get("mapindex"))]
        if None in outputs:
            raise self.error("has outputs outside its forward graph")
        self.outputs: list[TorchObject] = [node for node in outputs if node is not None]

    def error(self, problem: str) -> ValueError:
        return ValueError(f"{self.describe} {problem}")

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
        (which char-rnn puts between layers when dropout > 0)."""
        found = []
        for consumer in self.consumers.get(node, []):
            if self.kind(consumer) == "nn.Dropout":
                found += self.consumers_of_kind(consumer, kind)
            elif self.kind(consumer) == kind:
                found.append(consumer)
        return found

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
            raise self.error(f"adds a {self.kind(partner)} to a Linear where char-rnn adds a Linear")
        return total, partner

    def linear(self, node: TorchObject, shape: tuple[int, int],
               name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """A Linear node's (weight, bias); `name` is checked against its nngraph annotation."""
        annotations = fields_of(fields_of(node).get("data")).get("annotations")
        label = annotations.get("name") if isinstance(annotations, dict) else None
        if name is not None and label is not None and label != name:
            raise self.error(f"has Linear '{label}' where '{name}' was expected")
        fields = fields_of(self.module(node))
        weight = fields.get("weight")
        if not isinstance(weight, np.ndarray) or weight.shape != shape:
            raise self.error(f"has a Linear weight of shape {getattr(weight, 'shape', None)} where "
                             f"{shape} was expected")
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


def _val_losses(value: object) -> list[list]:
    # char-rnn keys them by the iteration each was measured at; a .pt lists [iteration, loss]
    # pairs. Entries that are not a number keyed by a number are dropped.
    if not isinstance(value, dict):
        return []
    numbers = {key: loss for key, loss in value.items()
               if isinstance(key, (int, float)) and isinstance(loss, (int, float))}
    return [[_plain(key), loss] for key, loss in sorted(numbers.items())]


def load_char_rnn_checkpoint(path: str | os.PathLike) -> dict:
    """Convert a karpathy/char-rnn checkpoint (``lm_*.t7``) to this project's layout.

    The Linear modules are told apart by their place in the nngraph gModule that char-rnn's
    model/{LSTM,GRU,RNN}.lua build, not by shapes or module order. Raises ValueError if the file
    is not a readable char-rnn checkpoint.
    """
    checkpoint = read_t7(path)
    fields = checkpoint if isinstance(checkpoint, dict) else {}
    protos, opt = fields.get("protos"), fields.get("opt")
    rnn = protos.get("rnn") if isinstance(protos, dict) else None
    if not (isinstance(rnn, TorchObject) and rnn.typename == "nn.gModule" and isinstance(opt, dict)
            and "vocab" in fields):
        raise ValueError(f"{path} is not a char-rnn checkpoint (it lacks protos.rnn, opt or vocab)")
    model_type = opt.get("model")
    if model_type not in _MODELS:
        raise ValueError(f"{path}: unsupported char-rnn model type {model_type!r}")
    convert_layer, blocks, outputs_per_layer = _MODELS[model_type]
    tokens = _tokens(fields["vocab"], path)
    hidden, num_layers = _plain(opt.get("rnn_size")), _plain(opt.get("num_layers"))
    if not (isinstance(hidden, int) and isinstance(num_layers, int) and hidden > 0 and num_layers > 0):
        raise ValueError(f"{path}: bad char-rnn rnn_size {hidden!r} or num_layers {num_layers!r}")
    graph = _ForwardGraph(rnn, f"{path}: the char-rnn {model_type} graph")
    if len(graph.outputs) != outputs_per_layer * num_layers + 1:
        raise graph.error(f"has {len(graph.outputs)} outputs, not those of {num_layers} layers")

    # Layer 1 reads OneHot(token); layer L > 1 reads layer L-1's new h, the last of its outputs.
    x = graph.only(graph.nodes_of_kind("OneHot"), "OneHot modules")
    state: dict[str, np.ndarray] = {}
    for layer in range(num_layers):
        shape = (blocks * hidden, len(tokens) if layer == 0 else hidden)
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
    state["decoder.weight"], state["decoder.bias"] = graph.linear(
        decoder, (len(tokens), hidden), "decoder")

    return {
        "model_type": model_type,
        "rnn_size": hidden,
        "num_layers": num_layers,
        "dropout": float(opt.get("dropout", 0.0)),  # char-rnn had no dropout before the option
        "tokens": tokens,
        "encoding": "bytes",
        "state_dict": {name: torch.from_numpy(np.ascontiguousarray(value, np.float32))
                       for name, value in state.items()},
        "opt": {key: _plain(value) for key, value in opt.items()},
        "iteration": int(fields.get("i", 0)),
        "epoch": float(fields.get("epoch", 0.0)),
        "val_loss": fields.get("val_loss"),
        "train_losses": _array_part(fields.get("train_losses")),
        "val_losses": _val_losses(fields.get("val_losses")),
    }
