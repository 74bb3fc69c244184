"""The shape of a stored tensor from the first bytes of its file, without reading its data.

``.npy``: the format's header (a Python literal, read with numpy's literal parser, never pickle).
``.pth`` / ``.pt`` written by ``torch.save``: a zip whose first entry is the pickle
``<archive>/data.pkl``, stored uncompressed. That pickle is run by an unpickler that builds
nothing but a record of each tensor's size: its only classes are torch's tensor rebuild
functions (which here return the size) and storage types (placeholders); the storages themselves
are never loaded. Anything else (another class, a compressed or legacy file, too few bytes)
is no shape: None.

Example: the first 4 KiB of ``torch.save(torch.zeros(4, 32, 32))`` -> ``(4, 32, 32)``.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from typing import Any

import numpy as np

#: suffixes (the member name's last part) whose tensor shape :func:`tensor_shape` reads
TENSOR_EXTENSIONS = frozenset({"npy", "pth", "pt"})
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # a zip entry's local header (30 bytes)


def tensor_shape(head: bytes, extension: str) -> tuple[int, ...] | None:
    """The shape of the tensor whose file starts with ``head``; None when it cannot be read from it.

    Raises nothing on malformed bytes: a shape that cannot be read is None.
    """
    try:
        if extension == "npy":
            return _npy_shape(head)
        if extension in ("pth", "pt"):
            return _torch_zip_shape(head)
    except (ValueError, EOFError, struct.error, pickle.UnpicklingError, SyntaxError, TypeError, KeyError, IndexError, AttributeError, RecursionError, MemoryError):
        return None
    return None


def _npy_shape(head: bytes) -> tuple[int, ...] | None:
    f = io.BytesIO(head)
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, _ = read(f)
    return tuple(int(n) for n in shape)


class _Shape(tuple):
    """A tensor's size, as the shape-only unpickler rebuilds it."""


def _rebuild_tensor(storage: Any, storage_offset: int, size: Any, *args: Any) -> _Shape:
    return _Shape(int(n) for n in size)


def _rebuild_parameter(data: Any, *args: Any) -> Any:
    return data


class _Storage:
    """Stands in for a storage type and a storage: nothing of its data is read."""


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _ShapeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[module, name]
        if module in ("torch", "torch.storage") and name.endswith("Storage"):
            return _Storage
        raise pickle.UnpicklingError(f"{module}.{name} is not read for a shape")

    def persistent_load(self, pid: Any) -> _Storage:
        return _Storage()


def _torch_zip_shape(head: bytes) -> tuple[int, ...] | None:
    signature, _, flags, method, _, _, _, _, _, name_length, extra_length = _LOCAL_HEADER.unpack_from(head)
    name = head[_LOCAL_HEADER.size : _LOCAL_HEADER.size + name_length]
    if signature != b"PK\x03\x04" or method != 0 or flags & 1 or not name.endswith(b"data.pkl"):
        return None  # not torch.save's zip (legacy format, compressed, encrypted)
    start = _LOCAL_HEADER.size + name_length + extra_length
    value = _ShapeUnpickler(io.BytesIO(head[start:])).load()  # the pickle ends itself (STOP); EOFError if cut short
    return tuple(value) if isinstance(value, _Shape) else None
