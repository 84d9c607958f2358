"""A small Torch7 binary writer, for building test fixtures (the format is described in
util/torch7.py). Python values map to Lua ones as follows: None -> nil, bool -> boolean,
int/float -> number, str -> string (latin-1), dict/list -> table (a list is keyed 1..n),
TorchObject -> an instance of its class holding its attrs, numpy array -> a contiguous tensor
with its own storage, TensorView -> a tensor over a storage that other views may share, Raw ->
bytes written as they are. Writing the same Python object twice writes a reference, as torch.save
does. t7_bytes also says where each field of the format lies in the bytes, for mutating them."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np

from util.torch7 import TableKey, TorchObject

_TYPE_NAMES = {
    np.dtype(np.float64): "Double", np.dtype(np.float32): "Float", np.dtype(np.float16): "Half",
    np.dtype(np.int64): "Long", np.dtype(np.int32): "Int", np.dtype(np.int16): "Short",
    np.dtype(np.int8): "Char", np.dtype(np.uint8): "Byte",
}


class TensorView:
    """A tensor over `storage` (a 1-D array) with Torch's size/stride/offset (0-based here)."""

    def __init__(self, storage: np.ndarray, shape: tuple, strides: tuple, offset: int = 0) -> None:
        self.storage, self.shape, self.strides, self.offset = storage, shape, strides, offset


class Raw:
    """Bytes written as they are where an object goes: a hand-made encoding, such as one nested
    deeper than this recursive writer can go. Its object indices must not clash with the writer's,
    which count from 1."""

    def __init__(self, data: bytes) -> None:
        self.data = data


class Field(NamedTuple):
    """Where one field of the format lies in t7_bytes' output. Kinds: tag, index (an object's),
    count (a table's pairs), length (a string's), text (a string's bytes), version, class (a class
    name's bytes), boolean, number, ndim, size, stride, storage_offset, storage_size (longs),
    elements (a storage's bytes), raw (a Raw's bytes)."""

    offset: int
    size: int
    kind: str


def write_t7(path: str | Path, obj: object, long_size: int = 8, cuda: bool = False) -> None:
    """Write `obj` as torch.save would on a machine with `long_size`-byte longs; `cuda` names
    tensors and storages after cutorch's classes (torch.CudaTensor, torch.CudaDoubleTensor...)."""
    Path(path).write_bytes(t7_bytes(obj, long_size, cuda)[0])


def t7_bytes(obj: object, long_size: int = 8, cuda: bool = False) -> tuple[bytes, list[Field]]:
    """What write_t7 writes, and where each field of it lies."""
    writer = _Writer(long_size, cuda)
    writer.object(obj)
    return b"".join(writer.chunks), writer.fields


class _Writer:
    def __init__(self, long_size: int, cuda: bool) -> None:
        self.long = "<q" if long_size == 8 else "<i"
        self.cuda = cuda
        self.chunks: list[bytes] = []
        self.fields: list[Field] = []
        self.size = 0
        self.indices: dict[tuple[str, int], int] = {}
        self.keep_alive: list[object] = []  # so that id()s stay unique while writing

    def put(self, kind: str, data: bytes) -> None:
        self.fields.append(Field(self.size, len(data), kind))
        self.chunks.append(data)
        self.size += len(data)

    def int32(self, kind: str, value: int) -> None:
        self.put(kind, struct.pack("<i", value))

    def longs(self, kind: str, *values: int) -> None:
        for value in values:
            self.put(kind, struct.pack(self.long, value))

    def string(self, value: str, kind: str = "text") -> None:
        raw = value.encode("latin-1")
        self.int32("length", len(raw))
        self.put(kind, raw)

    def reference(self, tag: int, kind: str, obj: object) -> bool:
        """Write the tag and object index; True if the object was written before."""
        self.int32("tag", tag)
        key = (kind, id(obj))
        seen = key in self.indices
        if not seen:
            self.indices[key] = len(self.indices) + 1
            self.keep_alive.append(obj)
        self.int32("index", self.indices[key])
        return seen

    def class_name(self, name: str) -> None:
        self.string("V 1", "version")
        self.string(name, "class")

    def array_class(self, dtype: np.dtype, kind: str) -> str:
        name = _TYPE_NAMES[dtype]
        if self.cuda:
            return f"torch.Cuda{'' if name == 'Float' else name}{kind}"
        return f"torch.{name}{kind}"

    def object(self, obj: object) -> None:
        if obj is None:
            self.int32("tag", 0)
        elif isinstance(obj, bool):
            self.int32("tag", 5)
            self.int32("boolean", int(obj))
        elif isinstance(obj, (int, float)):
            self.int32("tag", 1)
            self.put("number", struct.pack("<d", obj))
        elif isinstance(obj, str):
            self.int32("tag", 2)
            self.string(obj)
        elif isinstance(obj, (dict, list)):
            self.table(obj)
        elif isinstance(obj, TorchObject):
            if not self.reference(4, "object", obj):
                self.class_name(obj.typename)
                self.object(obj.attrs)
        elif isinstance(obj, np.ndarray):
            storage = np.ascontiguousarray(obj).reshape(-1)
            strides = [s // obj.itemsize for s in np.ascontiguousarray(obj).strides]
            self.tensor(obj, TensorView(storage, obj.shape, tuple(strides)))
        elif isinstance(obj, TensorView):
            self.tensor(obj, obj)
        elif isinstance(obj, Raw):
            self.put("raw", obj.data)
        else:
            raise TypeError(f"cannot write {type(obj).__name__}")

    def table(self, table: dict | list) -> None:
        if self.reference(3, "table", table):
            return
        items = table.items() if isinstance(table, dict) else enumerate(table, 1)
        self.int32("count", len(table))
        for key, value in items:
            self.object(key.value if isinstance(key, TableKey) else key)
            self.object(value)

    def tensor(self, key: object, view: TensorView) -> None:
        if self.reference(4, "object", key):
            return
        self.class_name(self.array_class(view.storage.dtype, "Tensor"))
        if view.storage.size == 0:  # Torch7's empty tensor: no dimensions, no storage
            self.int32("ndim", 0)
            self.longs("storage_offset", 1)
            self.int32("tag", 0)
            return
        self.int32("ndim", len(view.shape))
        self.longs("size", *view.shape)
        self.longs("stride", *view.strides)
        self.longs("storage_offset", view.offset + 1)
        if not self.reference(4, "storage", view.storage):
            self.class_name(self.array_class(view.storage.dtype, "Storage"))
            self.longs("storage_size", view.storage.size)
            data = view.storage.astype(view.storage.dtype.newbyteorder("<"))
            if data.dtype.kind == "i" and data.itemsize == 8 and self.long == "<i":
                data = data.astype("<i4")  # a LongStorage holds C longs
            self.put("elements", data.tobytes())
