"""Reader for dlib's binary serialisation format.

dlib writes objects with ``dlib::serialize``; the primitives are:

* integers: one control byte (payload length in the low 4 bits, bit 0x80 set
  when negative) followed by that many little-endian magnitude bytes;
* floats/doubles: an int64 mantissa and an int16 exponent, both as integers;
* bools: the ASCII byte ``'0'`` or ``'1'``;
* strings: a length integer followed by the bytes;
* DNN tensors: ``int version=2``, then n, k, nr, nc, then raw little-endian
  float32 values (``dlib/cuda/tensor.h``);
* matrices: ``-nr``, ``-nc`` (negated to mark the format), then each element.

Only reading is implemented: we convert dlib models, we never write them.
"""

from __future__ import annotations

import math

import numpy as np


class DlibFormatError(ValueError):
    """The byte stream is not the dlib object we expected."""


class DlibReader:
    """Sequential reader over a dlib-serialised byte string."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos >= len(self._data)

    def _take(self, n: int) -> memoryview:
        if self.pos + n > len(self._data):
            raise DlibFormatError(f"unexpected end of data at byte {self.pos}")
        out = self._data[self.pos : self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        control = self._take(1)[0]
        size = control & 0x0F
        if control & 0x70:
            raise DlibFormatError(f"bad integer control byte 0x{control:02x} at byte {self.pos - 1}")
        value = int.from_bytes(self._take(size), "little") if size else 0
        return -value if control & 0x80 else value

    def float(self) -> float:
        mantissa = self.int()
        exponent = self.int()
        return math.ldexp(mantissa, exponent)

    def bool(self) -> bool:
        ch = bytes(self._take(1))
        if ch not in (b"0", b"1"):
            raise DlibFormatError(f"bad bool byte {ch!r} at byte {self.pos - 1}")
        return ch == b"1"

    def string(self) -> str:
        n = self.int()
        return bytes(self._take(n)).decode("ascii")

    def expect_string(self, *allowed: str) -> str:
        value = self.string()
        if value not in allowed:
            raise DlibFormatError(f"expected one of {allowed}, found {value!r} at byte {self.pos}")
        return value

    def expect_int(self, expected: int, what: str) -> None:
        value = self.int()
        if value != expected:
            raise DlibFormatError(f"{what}: expected {expected}, found {value}")

    def tensor(self) -> np.ndarray:
        """A DNN tensor, returned with shape (n, k, nr, nc)."""
        self.expect_int(2, "tensor version")
        shape = tuple(self.int() for _ in range(4))
        count = int(np.prod(shape))
        raw = self._take(4 * count)
        return np.frombuffer(raw, dtype="<f4").reshape(shape).copy()

    def alias_tensor(self) -> tuple[int, int, int, int]:
        """An alias tensor: just a shape into a layer's parameter block."""
        self.expect_int(1, "alias_tensor version")
        return tuple(self.int() for _ in range(4))  # type: ignore[return-value]

    def float_matrix(self) -> np.ndarray:
        """A ``dlib::matrix<float>`` written element by element."""
        nr, nc = self.int(), self.int()
        if nr > 0 or nc > 0:
            raise DlibFormatError("old-style matrix header not supported")
        nr, nc = -nr, -nc
        values = [self.float() for _ in range(nr * nc)]
        return np.asarray(values, dtype=np.float32).reshape(nr, nc)
