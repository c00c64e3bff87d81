import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra.numpy import arrays

from matcher.errors import ModelMismatch, TemplateFormatError
from matcher.face.template import EmbeddingTemplate

finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@given(arrays(np.float32, st.integers(1, 512), elements=finite), st.integers(0, 100))
def test_round_trip(vec, quality):
    t = EmbeddingTemplate("face/dlib-resnet-v1", vec, quality)
    back = EmbeddingTemplate.from_bytes(t.to_bytes())
    assert back.model_id == t.model_id and back.quality == quality
    np.testing.assert_array_equal(back.vector, vec)


@pytest.mark.parametrize(
    "mutate, reason",
    [
        pytest.param(lambda b: b[:5], "TEMPLATE_CORRUPT", id="short"),
        pytest.param(lambda b: b"XXXX" + b[4:], "TEMPLATE_CORRUPT", id="magic"),
        pytest.param(lambda b: b[:4] + b"\x09\x00" + b[6:], "TEMPLATE_VERSION", id="version"),
        pytest.param(lambda b: b[:-4], "TEMPLATE_CORRUPT", id="body-length"),
        pytest.param(lambda b: b[:-4] + np.float32(np.nan).tobytes(), "TEMPLATE_INVALID", id="nan"),
    ],
)
def test_corrupt_bytes_are_rejected(mutate, reason):
    good = EmbeddingTemplate("face/dlib-resnet-v1", np.ones(128, np.float32)).to_bytes()
    with pytest.raises(TemplateFormatError) as e:
        EmbeddingTemplate.from_bytes(mutate(good))
    assert e.value.reason == reason


def test_model_mismatch():
    t = EmbeddingTemplate("face/dlib-resnet-v1", np.ones(4, np.float32))
    t.require_model("face/dlib-resnet-v1")
    with pytest.raises(ModelMismatch):
        t.require_model("face/other-v2")
