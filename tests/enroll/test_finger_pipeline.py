"""Fingerprint extraction on real FVC/FCJ impressions, its quality gates, and MCC on them."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from matcher.finger import mcc
from matcher.errors import ImageDecodeError, QualityError
from matcher.finger.template import MinutiaeTemplate


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def fvc(fingerprints):
    return fingerprints / "fvc2002_db1_b"


def test_real_impressions_give_templates_and_mated_pairs_outscore_non_mated(finger_extractor, fvc):
    t = {(f, i): finger_extractor.extract((fvc / f"{f}" / f"{f}_{i}.tif").read_bytes())
         for f in (101, 102, 103) for i in (1, 2, 3)}
    for tpl in t.values():
        assert isinstance(tpl, MinutiaeTemplate) and tpl.model_id == "finger/leader-mcc-v1"
        assert 15 <= len(tpl.minutiae) <= 90 and 30 <= tpl.quality <= 100
    cyl = {k: mcc.encode(v.minutiae) for k, v in t.items()}
    mated = [mcc.similarity(cyl[(f, 1)], cyl[(f, i)]) for f in (101, 102, 103) for i in (2, 3)]
    non_mated = [mcc.similarity(cyl[(a, 1)], cyl[(b, i)]) for a in (101, 102, 103) for b in (101, 102, 103)
                 if a != b for i in (1, 2)]
    assert min(mated) > max(non_mated)


def test_compiled_mcc_equals_the_numpy_reference_on_real_templates(finger_extractor, fvc):
    cyl = [mcc.encode(finger_extractor.extract((fvc / f"{f}" / f"{f}_{i}.tif").read_bytes()).minutiae)
           for f in (105, 106) for i in (1, 2, 3)]
    cyl.append(mcc.Cylinders(cyl[0].xy[:1], cyl[0].theta[:1], cyl[0].bits[:1], cyl[0].valid[:1]))  # one minutia
    cyl.append(mcc.Cylinders(cyl[0].xy[:0], cyl[0].theta[:0], cyl[0].bits[:0], cyl[0].valid[:0]))  # none
    for a in cyl:
        for b in cyl:
            assert mcc.similarity(a, b) == pytest.approx(mcc.similarity_reference(a, b), abs=1e-12)


def test_same_image_in_other_formats_gives_the_same_minutiae(finger_extractor, fvc):
    data = (fvc / "104" / "104_1.tif").read_bytes()
    grey = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
    a = finger_extractor.extract(data)
    for fmt in ("PNG", "BMP"):
        buf = io.BytesIO()
        Image.fromarray(grey).save(buf, format=fmt)
        assert np.array_equal(finger_extractor.extract(buf.getvalue()).minutiae, a.minutiae)


def test_wsq_images_are_decoded(finger_extractor, fvc):
    """WSQ (lossy, ~17:1 here) decodes through the wsq plugin and still matches its source."""
    grey = Image.open(fvc / "104" / "104_1.tif").convert("L")
    buf = io.BytesIO()
    grey.save(buf, format="WSQ")
    assert buf.getvalue()[:2] == b"\xff\xa0"  # WSQ start-of-image marker
    from_wsq = finger_extractor.extract(buf.getvalue())
    original = finger_extractor.extract((fvc / "104" / "104_1.tif").read_bytes())
    assert mcc.similarity(mcc.encode(from_wsq.minutiae), mcc.encode(original.minutiae)) > 0.3


def test_dpi_is_rescaled_to_500(finger_extractor, fvc):
    grey = np.asarray(Image.open(fvc / "105" / "105_1.tif").convert("L"))
    big = np.asarray(Image.fromarray(grey).resize((grey.shape[1] * 2, grey.shape[0] * 2), Image.BICUBIC))
    native = finger_extractor.extract(_png(grey))
    scaled = finger_extractor.extract(_png(big), dpi=1000)
    assert (scaled.width, scaled.height) == (native.width, native.height)
    assert mcc.similarity(mcc.encode(native.minutiae), mcc.encode(scaled.minutiae)) > 0.4


@pytest.mark.parametrize("reason, image", [
    ("BLANK_IMAGE", np.full((300, 300), 230, np.uint8)),
    ("FOREGROUND_TOO_SMALL", None),  # built from a real finger below
    ("LOW_RIDGE_CLARITY", "face"),
])
def test_quality_gates(finger_extractor, fvc, fingerprints, reason, image):
    if image is None:
        grey = np.asarray(Image.open(fvc / "106" / "106_1.tif").convert("L"))
        image = np.full((300, 300), 230, np.uint8)
        image[120:220, 120:220] = grey[150:250, 150:250]  # a 100 x 100 px patch of finger
    elif isinstance(image, str):
        face = fingerprints.parent / "face" / "lfw_dev" / "lfw"
        if not face.exists():
            pytest.skip("face sample set absent")
        image = np.asarray(Image.open(sorted(face.glob("*/*_0001.jpg"))[0]).convert("L"))
    with pytest.raises(QualityError) as e:
        finger_extractor.extract(_png(image))
    assert e.value.reason == reason


def test_bad_bytes_and_dpi(finger_extractor, fvc):
    with pytest.raises(ImageDecodeError):
        finger_extractor.extract(b"not an image")
    with pytest.raises(Exception) as e:
        finger_extractor.extract((fvc / "101" / "101_1.tif").read_bytes(), dpi=50)
    assert getattr(e.value, "reason", "") == "DPI_OUT_OF_RANGE"


def test_sparse_impressions_are_topped_up_and_rich_ones_untouched(finger_extractor, fvc, fingerprints):
    """LEADER finds 5 sure minutiae (>= 0.55) on FVC2000 DB4's noisiest impression (101_3):
    the best weaker peaks (>= 0.3) top it up so it enrols and still matches its finger;
    an ordinary impression keeps exactly its sure minutiae."""
    from enroll.finger import minutiae as m

    db4 = fingerprints / "fvc2000_db4_b" / "101"
    sparse = finger_extractor.extract((db4 / "101_3.tif").read_bytes())
    q = sparse.minutiae[:, 4]
    assert 8 <= len(q) <= m._FILL_TO and (q < m._DETECT).any() and q.min() >= m._FILL_FLOOR
    assert dict(sparse.components)["minutiae"] == len(q)
    rich = finger_extractor.extract((fvc / "101" / "101_1.tif").read_bytes())
    assert len(rich.minutiae) > m._FILL_TO and rich.minutiae[:, 4].min() >= m._DETECT
    mates = [mcc.similarity(mcc.encode(sparse.minutiae), mcc.encode(finger_extractor.extract(
        (db4 / f"101_{i}.tif").read_bytes()).minutiae)) for i in (1, 2, 4, 5, 6, 7, 8)]
    others = [mcc.similarity(mcc.encode(sparse.minutiae), mcc.encode(finger_extractor.extract(
        (db4.parent / f"{f}" / f"{f}_1.tif").read_bytes()).minutiae)) for f in range(102, 111)]
    assert max(mates) > max(others)
