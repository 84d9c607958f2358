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

    def torch_object(self, index: int) -> object:
        name = self.string()
        if name.startswith("V "):  # as torch.File:readObject: a version string, then the name
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
        last = offset + sum((size - 1) * stride for size, stride in zip(sizes, strides))
        if last >= storage.size:
            raise self.fail(f"tensor reaches element {last + 1} of a storage of {storage.size}")
        view = np.lib.stride_tricks.as_strided(
            storage[offset:], shape=sizes, strides=[s * dtype.itemsize for s in strides])
        return view.copy()  # C-contiguous and independent of other views of the storage


def _table_key(key: object, reader: _Reader) -> object:
    if key is None:
        raise reader.fail("table key is nil")
    if isinstance(key, float) and key.is_integer():
        return int(key)  # Lua arrays are tables keyed 1..n
    if isinstance(key, (dict, np.ndarray)):
        return TableKey(key)
    return key


def read_t7(path: str) -> object:
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
    error = max(errors, key=lambda e: e.pos)
    raise ValueError(f"{path}: not a readable Torch7 file: {error.message} (at byte {error.pos})")
