"""ISO/IEC 19794-2:2005 export/import: a round trip and a record built by hand from the layout."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matcher.errors import TemplateFormatError
from matcher.finger.iso19794 import export_record, import_record
from matcher.finger.template import MinutiaeTemplate

MODEL = "finger/leader-mcc-v1"


def _template(n: int = 25, seed: int = 0) -> MinutiaeTemplate:
    rng = np.random.default_rng(seed)
    rows = np.column_stack([rng.uniform(0, 387, n), rng.uniform(0, 373, n), rng.uniform(-np.pi, np.pi, n),
                            rng.integers(0, 2, n), rng.uniform(0.55, 1.0, n)]).astype(np.float32)
    return MinutiaeTemplate(MODEL, rows, 388, 374, 71)


def test_round_trip_keeps_minutiae_within_quantisation():
    a, b = _template(seed=1), _template(30, seed=2)
    views = import_record(export_record([(2, a), (7, b)]), MODEL)
    assert [p for p, _ in views] == [2, 7]
    for (_, back), orig in zip(views, (a, b)):
        assert (back.width, back.height, back.quality) == (orig.width, orig.height, orig.quality)
        assert np.abs(back.minutiae[:, :2] - orig.minutiae[:, :2]).max() <= 0.5
        turn = np.abs((back.minutiae[:, 2] - orig.minutiae[:, 2] + np.pi) % (2 * np.pi) - np.pi)
        assert turn.max() <= math.pi / 256 + 1e-6  # half of one 1.40625 degree unit
        assert np.array_equal(back.minutiae[:, 3], orig.minutiae[:, 3])


def test_record_built_by_hand_from_the_standard_layout():
    minutiae = [
        # type 01 ridge ending at (100, 200), angle 64 units = 90 degrees, quality 80
        (0b01 << 14 | 100, 200, 64, 80),
        # type 10 bifurcation at (250, 50), angle 128 units = 180 degrees, quality 60
        (0b10 << 14 | 250, 50, 128, 60),
    ]
    view = struct.pack(">BBBB", 3, 0x00, 90, len(minutiae)) + b"".join(struct.pack(">HHBB", *m) for m in minutiae)
    view += struct.pack(">H", 4) + b"\xAB\xCD\x00\x00"  # an extended data block we must skip
    header_len = 24
    total = header_len + len(view)
    header = b"FMR\x00" + b" 20\x00" + struct.pack(">IHHHHHBB", total, 0, 400, 500, 197, 197, 1, 0)
    ((position, t),) = import_record(header + view, MODEL)
    assert position == 3 and (t.width, t.height, t.quality) == (400, 500, 90)
    np.testing.assert_allclose(t.minutiae[0], [100, 200, math.pi / 2, 1.0, 0.8], atol=1e-6)
    np.testing.assert_allclose(t.minutiae[1], [250, 50, -math.pi, 0.0, 0.6], atol=1e-6)


@pytest.mark.parametrize("mutate", [
    lambda d: d[:-1],  # truncated
    lambda d: b"FIR\x00" + d[4:],  # another record type
    lambda d: d[:8] + struct.pack(">I", len(d) + 5) + d[12:],  # wrong length field
    lambda d: d + b"\x00",  # trailing bytes
    lambda d: d[:24] + b"\x0b" + d[25:],  # finger position 11
])
def test_malformed_records_are_refused(mutate):
    with pytest.raises(TemplateFormatError) as e:
        import_record(mutate(export_record([(1, _template())])), MODEL)
    assert e.value.reason == "ISO_RECORD_INVALID"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash(data):
    try:
        import_record(b"FMR\x00 20\x00" + data, MODEL)
    except TemplateFormatError:
        pass
