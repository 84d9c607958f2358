"""A small Torch7 binary writer, for building test fixtures (the format is described in
util/torch7.py). Python values map to Lua ones as follows: None -> nil, bool -> boolean,
int/float -> number, str -> string (latin-1), dict/list -> table (a list is keyed 1..n),
TorchObject -> an instance of its class holding its attrs, numpy array -> a contiguous tensor
with its own storage, TensorView -> a tensor over a storage that other views may share.
Writing the same Python object twice writes a reference, as torch.save does."""

from __future__ import annotations

import struct
from pathlib import Path

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


def write_t7(path: str | Path, obj: object, long_size: int = 8, cuda: bool = False) -> None:
    """Write `obj` as torch.save would on a machine with `long_size`-byte longs; `cuda` names
    tensors and storages after cutorch's classes (torch.CudaTensor, torch.CudaDoubleTensor...)."""
    writer = _Writer(long_size, cuda)
    writer.object(obj)
    Path(path).write_bytes(b"".join(writer.chunks))


class _Writer:
    def __init__(self, long_size: int, cuda: bool) -> None:
        self.long = "<q" if long_size == 8 else "<i"
        self.cuda = cuda
        self.chunks: list[bytes] = []
        self.indices: dict[tuple[str, int], int] = {}
        self.keep_alive: list[object] = []  # so that id()s stay unique while writing

    def int32(self, value: int) -> None:
        self.chunks.append(struct.pack("<i", value))

    def longs(self, *values: int) -> None:
        self.chunks.append(struct.pack(self.long[0] + self.long[1] * len(values), *values))

    def string(self, value: str) -> None:
        raw = value.encode("latin-1")
        self.int32(len(raw))
        self.chunks.append(raw)

    def reference(self, tag: int, kind: str, obj: object) -> bool:
        """Write the tag and object index; True if the object was written before."""
        self.int32(tag)
        key = (kind, id(obj))
        seen = key in self.indices
        if not seen:
            self.indices[key] = len(self.indices) + 1
            self.keep_alive.append(obj)
        self.int32(self.indices[key])
        return seen

    def class_name(self, name: str) -> None:
        self.string("V 1")
        self.string(name)

    def array_class(self, dtype: np.dtype, kind: str) -> str:
        name = _TYPE_NAMES[dtype]
        if self.cuda:
            return f"torch.Cuda{'' if name == 'Float' else name}{kind}"
        return f"torch.{name}{kind}"

    def object(self, obj: object) -> None:
        if obj is None:
            self.int32(0)
        elif isinstance(obj, bool):
            self.int32(5)
            self.int32(int(obj))
        elif isinstance(obj, (int, float)):
            self.int32(1)
            self.chunks.append(struct.pack("<d", obj))
        elif isinstance(obj, str):
            self.int32(2)
            self.string(obj)
        elif isinstance(obj, (dict, list)):
            if not self.reference(3, "table", obj):
                items = obj.items() if isinstance(obj, dict) else enumerate(obj, 1)
                self.int32(len(obj))
                for key, value in items:
                    self.object(key.value if isinstance(key, TableKey) else key)
                    self.object(value)
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
        else:
            raise TypeError(f"cannot write {type(obj).__name__}")

    def tensor(self, key: object, view: TensorView) -> None:
        if self.reference(4, "object", key):
            return
        self.class_name(self.array_class(view.storage.dtype, "Tensor"))
        if view.storage.size == 0:  # Torch7's empty tensor: no dimensions, no storage
            self.int32(0)
            self.longs(1)
            self.int32(0)
            return
        self.int32(len(view.shape))
        self.longs(*view.shape)
        self.longs(*view.strides)
        self.longs(view.offset + 1)
        if not self.reference(4, "storage", view.storage):
            self.class_name(self.array_class(view.storage.dtype, "Storage"))
            self.longs(view.storage.size)
            data = view.storage.astype(view.storage.dtype.newbyteorder("<"))
            if data.dtype.kind == "i" and data.itemsize == 8 and self.long == "<i":
                data = data.astype("<i4")  # a LongStorage holds C longs
            self.chunks.append(data.tobytes())
