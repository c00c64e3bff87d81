import numpy as np
import pytest

from models.dlib_format import DlibFormatError, DlibReader


@pytest.mark.parametrize(
    "raw, value",
    [
        pytest.param(b"\x00", 0, id="zero"),
        pytest.param(b"\x01\x02", 2, id="one-byte"),
        pytest.param(b"\x02\x2c\x01", 300, id="two-bytes-little-endian"),
        pytest.param(b"\x81\x1c", -28, id="negative"),
    ],
)
def test_int(raw, value):
    assert DlibReader(raw).int() == value


def test_float_is_mantissa_and_exponent():
    # dlib writes 0.04f as mantissa 0xa3d70a, exponent -28 (seen in the face model's loss layer)
    assert DlibReader(b"\x03\x0a\xd7\xa3\x81\x1c").float() == pytest.approx(0.04, rel=1e-6)


def test_string_bool_and_tensor():
    tensor = b"\x01\x02" + b"\x01\x01" + b"\x01\x02" + b"\x01\x01" + b"\x01\x01" + np.array([1.5, -2], "<f4").tobytes()
    r = DlibReader(b"\x01\x05relu_" + b"1" + tensor)
    assert r.string() == "relu_"
    assert r.bool() is True
    np.testing.assert_array_equal(r.tensor(), np.array([1.5, -2], np.float32).reshape(1, 2, 1, 1))
    assert r.at_end()


@pytest.mark.parametrize(
    "raw",
    [pytest.param(b"\x31", id="ascii-is-not-an-int"), pytest.param(b"\x02\x01", id="truncated")],
)
def test_bad_bytes_raise(raw):
    with pytest.raises(DlibFormatError):
        DlibReader(raw).int()
