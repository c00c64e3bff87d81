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


def _tight(path, fraction: float = 0.6) -> bytes:
    """An ORL portrait cropped so that the face fills the frame (as old ID photos are)."""
    img = Image.open(path)
    w, h = img.size
    cw, ch = int(w * fraction), int(h * fraction)
    x0, y0 = (w - cw) // 2, int((h - ch) * 0.55)
    out = io.BytesIO()
    img.crop((x0, y0, x0 + cw, y0 + ch)).save(out, format="PNG")
    return out.getvalue()


def test_a_tight_crop_enrols_and_matches_its_person(face_extractor, orl):
    """Without a margin the detector finds no face in most of these (86% on ORL); the
    padded retry enrols them, and they match the same person's full portrait."""
    from enroll.face.pipeline import FaceConfig, FaceExtractor
    from matcher.errors import QualityError

    no_margin = FaceExtractor(config=FaceConfig(pad_retry=0))
    people = range(1, 11)
    tight = {p: _tight(orl / f"s{p}" / "2.pgm") for p in people}
    refused = 0
    for p in people:
        try:
            no_margin.extract(tight[p])
        except QualityError as e:
            refused += e.reason == "NO_FACE"
    assert refused >= 5
    enrolled = {}
    for p in people:
        try:
            enrolled[p] = face_extractor.extract(tight[p])
        except QualityError:
            pass
    assert len(enrolled) >= 8
    full = {p: face_extractor.extract((orl / f"s{p}" / "1.pgm").read_bytes()) for p in enrolled}
    mated = [_dist(enrolled[p], full[p]) for p in enrolled]
    non_mated = [_dist(enrolled[p], full[q]) for p in enrolled for q in enrolled if q != p]
    assert np.mean(np.array(mated) < DLIB_THRESHOLD) >= 0.85
    assert np.mean(np.array(non_mated) >= DLIB_THRESHOLD) >= 0.95


def test_no_face_says_the_margin_was_tried(face_extractor, fingerprints):
    from matcher.errors import QualityError

    with pytest.raises(QualityError, match="nor with a margin") as e:
        face_extractor.extract((fingerprints / "fvc2000_db1_b" / "101" / "101_1.tif").read_bytes())
    assert e.value.reason == "NO_FACE"


def test_a_small_photo_on_a_large_scan_enrols(face_extractor, orl):
    """An ORL portrait pasted small onto a plain 2400x1800 scan (a passport photo on a
    form or ID card: the face about 3% of the scan's shorter side): the first search skips
    faces that small and the plain scan is mostly blank; the finer search finds the face,
    and it matches the portrait enrolled as it is."""
    people = range(1, 11)
    scanned, direct = {}, {}
    for p in people:
        photo = Image.open(orl / f"s{p}" / "1.pgm").convert("RGB").resize((138, 168))
        scan = Image.new("RGB", (2400, 1800), (214, 208, 196))
        scan.paste(photo, (1700, 500))
        buf = io.BytesIO()
        scan.save(buf, "JPEG", quality=90)
        scanned[p] = face_extractor.extract(buf.getvalue())
        direct[p] = face_extractor.extract((orl / f"s{p}" / "1.pgm").read_bytes())
    assert all(_dist(scanned[p], direct[p]) < DLIB_THRESHOLD for p in people)
    assert all(_dist(scanned[p], direct[q]) >= DLIB_THRESHOLD for p in people for q in people if q != p)


def test_a_plain_scan_is_still_blank(face_extractor):
    from matcher.errors import QualityError

    buf = io.BytesIO()
    Image.new("RGB", (2400, 1800), (214, 208, 196)).save(buf, "PNG")
    with pytest.raises(QualityError) as e:
        face_extractor.extract(buf.getvalue())
    assert e.value.reason == "BLANK_IMAGE"
