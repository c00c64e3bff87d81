"""Read a PyTorch state dict saved in the legacy (pre-1.6, non-zip) format, without torch.

Layout written by ``torch.save(..., _use_new_zipfile_serialization=False)``: five
pickles in a row (magic number, protocol version, system info, the object, the
list of storage keys), then for each storage key an int64 element count followed
by the raw little-endian elements. Tensors inside the object pickle are
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` calls
whose storage is a persistent id ``('storage', StorageType, key, location, numel)``.

The unpickler below resolves only those few names and refuses every other
global, so a hostile file cannot run code.
"""

from __future__ import annotations

import collections
import io
import pickle
from dataclasses import dataclass

import numpy as np

_MAGIC = 0x1950A86A20F9469CFC6C
_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "LongStorage": np.int64}


@dataclass(frozen=True)
class _StorageType:
    name: str


@dataclass(frozen=True)
class _TensorRef:
    key: str
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, offset, size, stride, *_):
    return _TensorRef(storage, offset, tuple(size), tuple(stride))


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, storages: dict[str, str]):
        super().__init__(f)
        self._storages = storages

    def find_class(self, module: str, name: str):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in _DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, _numel = pid[:5]
        if kind != "storage":
            raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
        self._storages[key] = storage_type.name
        return key


def load_state_dict(data: bytes) -> dict[str, np.ndarray]:
    """Return the state dict's tensors as numpy arrays, keyed by parameter name."""
    f = io.BytesIO(data)
    if pickle.load(f) != _MAGIC:  # noqa: S301 - plain ints only
        raise ValueError("not a legacy torch file")
    pickle.load(f)  # protocol version
    pickle.load(f)  # sys info (a dict of plain values)
    storage_types: dict[str, str] = {}
    obj = _Unpickler(f, storage_types).load()
    keys = pickle.load(f)  # noqa: S301 - a list of str
    storages: dict[str, np.ndarray] = {}
    for key in keys:
        dtype = np.dtype(_DTYPES[storage_types[key]]).newbyteorder("<")
        count = int(np.frombuffer(f.read(8), "<i8")[0])
        storages[key] = np.frombuffer(f.read(count * dtype.itemsize), dtype).astype(dtype.newbyteorder("="))
    out = {}
    for name, ref in obj.items():
        flat = storages[ref.key]
        itemsize = flat.itemsize
        out[name] = np.lib.stride_tricks.as_strided(
            flat[ref.offset :], shape=ref.size, strides=[s * itemsize for s in ref.stride]
        ).copy()
    return out
