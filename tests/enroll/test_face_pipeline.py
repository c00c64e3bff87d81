"""Real faces through the whole pipeline: mated pairs match, non-mated do not; formats and EXIF."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

DLIB_THRESHOLD = 0.6  # dlib's same-person Euclidean distance


def _dist(a, b) -> float:
    return float(np.linalg.norm(a.vector - b.vector))


def _pairs(lfw, matched: bool, n: int):
    lines = (lfw / "pairs.txt").read_text().split("\n")[1:]
    rows = [r.split() for r in lines if len(r.split()) == (3 if matched else 4)]
    for r in rows[:: max(1, len(rows) // n)][:n]:
        if matched:
            yield (r[0], r[1]), (r[0], r[2])
        else:
            yield (r[0], r[1]), (r[2], r[3])


def _bytes(lfw, name_num) -> bytes:
    name, num = name_num
    return (lfw / "lfw" / name / f"{name}_{int(num):04d}.jpg").read_bytes()


def test_mated_pairs_below_threshold_non_mated_above(face_extractor, lfw):
    mated = [_dist(face_extractor.extract(_bytes(lfw, a)), face_extractor.extract(_bytes(lfw, b)))
             for a, b in _pairs(lfw, True, 20)]
    non_mated = [_dist(face_extractor.extract(_bytes(lfw, a)), face_extractor.extract(_bytes(lfw, b)))
                 for a, b in _pairs(lfw, False, 20)]
    assert np.mean(np.array(mated) < DLIB_THRESHOLD) >= 0.9
    assert np.mean(np.array(non_mated) >= DLIB_THRESHOLD) >= 0.95
    assert np.median(mated) < 0.45 < np.median(non_mated)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "BMP", "PPM", "JPEG"])
def test_formats_give_the_same_face(face_extractor, lfw, fmt):
    src = _bytes(lfw, ("Abel_Pacheco", 1))
    im = Image.open(io.BytesIO(src))
    buf = io.BytesIO()
    (im.convert("L") if fmt == "PPM" else im).save(buf, format=fmt)
    ref = face_extractor.extract(src)
    assert _dist(face_extractor.extract(buf.getvalue()), ref) < 0.1


def test_exif_orientation_is_honoured(face_extractor, lfw):
    src = _bytes(lfw, ("Abel_Pacheco", 1))
    im = Image.open(io.BytesIO(src)).convert("RGB")
    rotated = im.transpose(Image.Transpose.ROTATE_90)  # stored turned 90 degrees anticlockwise ...
    exif = Image.Exif()
    exif[0x0112] = 6  # ... with the tag saying "rotate 90 clockwise to display"
    buf = io.BytesIO()
    rotated.save(buf, format="JPEG", quality=95, exif=exif)
    assert _dist(face_extractor.extract(buf.getvalue()), face_extractor.extract(src)) < 0.15


def test_large_photo_is_downscaled_for_detection(face_extractor, lfw):
    src = _bytes(lfw, ("Abel_Pacheco", 1))
    im = Image.open(io.BytesIO(src)).convert("RGB").resize((2000, 2000), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=95)
    assert _dist(face_extractor.extract(buf.getvalue()), face_extractor.extract(src)) < 0.3
