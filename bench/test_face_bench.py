"""pytest-benchmark: ``make bench`` (benchmarks are disabled in the normal test run)."""

import pytest

from bench.face_speed import DEFAULT_FACE, photo_640x480

pytestmark = pytest.mark.skipif(not DEFAULT_FACE.exists(), reason="needs ../shared/data (LFW) for a real face")


@pytest.fixture(scope="module")
def extractor():
    from enroll.face.pipeline import FaceExtractor

    return FaceExtractor(threads=1)


def test_extract_640x480_one_core(benchmark, extractor):
    data = photo_640x480()
    tpl = benchmark(extractor.extract, data)
    assert tpl.vector.shape == (128,)


def test_extract_batch_16(benchmark, extractor):
    data = [photo_640x480()] * 16
    out = benchmark(extractor.extract_batch, data)
    assert len(out) == 16
