"""pytest-benchmark of fingerprint extraction and MCC: ``make bench``."""

import pytest

from bench.finger_speed import IMAGES

pytestmark = pytest.mark.skipif(not all(p.exists() for p in IMAGES.values()),
                                reason="needs ../shared/data (fingerprints) for real impressions")


@pytest.fixture(scope="module")
def extractor():
    from enroll.finger.pipeline import FingerExtractor

    return FingerExtractor()


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_extract_one_core(benchmark, extractor, name):
    tpl = benchmark(extractor.extract, IMAGES[name].read_bytes())
    assert len(tpl.minutiae) >= 8


def test_mcc_compare(benchmark, extractor):
    from matcher.finger import mcc

    a = mcc.encode(extractor.extract(IMAGES["fcj2020 280x360"].read_bytes()).minutiae)
    b = mcc.encode(extractor.extract(IMAGES["fvc2002 388x374"].read_bytes()).minutiae)
    assert benchmark(mcc.similarity, a, b) < 0.2
