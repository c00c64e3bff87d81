"""Every bad capture gets its own typed reason, never a crash."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from matcher.errors import ImageDecodeError, QualityError, TambuaError

FACE_IMAGE = "Abel_Pacheco/Abel_Pacheco_0001.jpg"


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


@pytest.fixture(scope="module")
def face_rgb(lfw) -> np.ndarray:
    """A real LFW face (250x250), cropped around the face."""
    return np.asarray(Image.open(lfw / "lfw" / FACE_IMAGE).convert("RGB"))[40:210, 50:200]


def _canvas(value: int = 200) -> np.ndarray:
    return np.full((480, 640, 3), value, np.uint8)


def test_blank_image(face_extractor):
    with pytest.raises(QualityError) as e:
        face_extractor.extract(_png(_canvas(235)))
    assert e.value.reason == "BLANK_IMAGE"


def test_black_image(face_extractor):
    with pytest.raises(QualityError) as e:
        face_extractor.extract(_png(_canvas(0)))
    assert e.value.reason == "TOO_DARK"


def test_non_face_texture(face_extractor):
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    texture = cv2.resize(noise, (640, 480), interpolation=cv2.INTER_CUBIC)
    with pytest.raises(QualityError) as e:
        face_extractor.extract(_png(texture))
    assert e.value.reason == "NO_FACE"


def test_two_faces_side_by_side(face_extractor, face_rgb):
    h, w = face_rgb.shape[:2]
    img = _canvas(128)
    img[100 : 100 + h, 60 : 60 + w] = face_rgb
    img[100 : 100 + h, 400 : 400 + w] = face_rgb[:, ::-1]
    with pytest.raises(QualityError) as e:
        face_extractor.extract(_png(img))
    assert e.value.reason == "MULTIPLE_FACES"


def test_tiny_face(face_extractor, face_rgb):
    """Found, but under 24 px wide: too few pixels to match (a 26 px face enrols; the card
    has how small faces still match)."""
    img = np.full((120, 160, 3), 128, np.uint8)
    small = cv2.resize(face_rgb, (20, 23), interpolation=cv2.INTER_AREA)
    img[48:71, 70:90] = small
    with pytest.raises(QualityError) as e:
        face_extractor.extract(_png(img))
    assert e.value.reason == "FACE_TOO_SMALL"


def test_blurred_face(face_extractor, face_rgb):
    img = _canvas(128)
    big = cv2.resize(face_rgb, (300, 340))
    img[70:410, 170:470] = cv2.GaussianBlur(big, (0, 0), 9)
    with pytest.raises(QualityError) as e:
        face_extractor.extract(_png(img))
    assert e.value.reason in ("TOO_BLURRED", "NO_FACE")


def test_truncated_jpeg(face_extractor, face_rgb):
    data = _jpeg(face_rgb)
    with pytest.raises(ImageDecodeError) as e:
        face_extractor.extract(data[: len(data) // 2])
    assert e.value.reason == "IMAGE_TRUNCATED"


def test_random_bytes(face_extractor):
    with pytest.raises(ImageDecodeError) as e:
        face_extractor.extract(np.random.default_rng(1).bytes(5000))
    assert e.value.reason == "IMAGE_UNDECODABLE"


def test_empty_bytes(face_extractor):
    with pytest.raises(ImageDecodeError) as e:
        face_extractor.extract(b"")
    assert e.value.reason == "IMAGE_EMPTY"


def test_good_face_passes_with_quality_score(face_extractor, face_rgb):
    img = _canvas(128)
    big = cv2.resize(face_rgb, (225, 255))
    img[110:365, 200:425] = big
    tpl = face_extractor.extract(_jpeg(img))
    assert tpl.model_id == "face/dlib-resnet-v1"
    assert tpl.vector.shape == (128,)
    assert 30 <= tpl.quality <= 100


def test_batch_reports_each_item(face_extractor, face_rgb):
    good = _jpeg(cv2.resize(face_rgb, (225, 255)))
    results = face_extractor.extract_batch([good, b"junk", _png(_canvas(0)), good])
    assert not isinstance(results[0], TambuaError)
    assert results[1].reason == "IMAGE_UNDECODABLE"
    assert results[2].reason == "TOO_DARK"
    np.testing.assert_allclose(results[0].vector, results[3].vector, atol=1e-6)
    np.testing.assert_allclose(results[0].vector, face_extractor.extract(good).vector, atol=1e-5)
