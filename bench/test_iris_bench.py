"""pytest-benchmark of iris extraction, one comparison and 1:N: ``make bench``.

The 1:N case searches 100,000 irises (real CASIA-IrisV1 mates plus synthetic fillers drawn
as in ``bench.iris_search``) through the sketch pass, the windowed exact pass and the
refine; ``python -m bench.search --modality iris`` measures the same at 1M with the
exhaustive answer beside it.
"""

from pathlib import Path

import numpy as np
import pytest

from bench.iris_search import DATA, MODEL, Synthesiser, real_responses

CASIA = DATA / "casia_v1"
pytestmark = pytest.mark.skipif(not CASIA.exists(), reason="needs ../shared/data (CASIA-IrisV1) for real eyes")
GALLERY = 100_000


@pytest.fixture(scope="module")
def extractor():
    from enroll.iris.pipeline import IrisExtractor

    return IrisExtractor()


@pytest.fixture(scope="module")
def eyes():
    first = sorted(p for p in CASIA.iterdir() if p.is_dir())[0]
    images = sorted(first.iterdir())
    return images[0].read_bytes(), images[-1].read_bytes()


def test_extract_one_core(benchmark, extractor, eyes):
    tpl = benchmark(extractor.extract, eyes[0])
    assert tpl.usable > 0.3


def test_compare_one_pair(benchmark, extractor, eyes):
    from matcher.iris import template as iris

    a, b = (extractor.extract(e) for e in eyes)
    assert benchmark(iris.distance, b, a) < 0.35  # the same eye: far below impostors (~0.45)


def test_identify_100k_one_core(benchmark, extractor, eyes):
    from matcher.iris import template as iris
    from matcher.calibration import Calibration
    from matcher.iris.matcher import IrisMatcher

    enrolled, probe = (extractor.extract(e) for e in eyes)
    real = real_responses(Path(__file__).resolve().parents[1] / ".bench-cache")
    bits = Synthesiser(real["response"]).draw(GALLERY - 1, np.random.default_rng(3))
    masks = real["mask"][np.random.default_rng(4).integers(len(real["mask"]), size=GALLERY - 1)]
    full = np.broadcast_to(masks[:, None], bits.shape)
    m = IrisMatcher(MODEL, Calibration.load(MODEL), exhaustive_limit=0)
    m.add_many("p", ["mate"] + [f"F{i}" for i in range(GALLERY - 1)], np.ones(GALLERY, np.int8),
               np.concatenate([enrolled.packed[0][None], np.packbits(bits.reshape(len(bits), -1), axis=1).view(np.uint64)]),
               np.concatenate([enrolled.packed[1][None], np.packbits(full.reshape(len(bits), -1), axis=1).view(np.uint64)]),
               np.concatenate([enrolled.sketch[None], np.stack([iris.sketch_of(b) for b in bits])]))
    hits = benchmark(m.search, "p", 1, probe, 1)
    assert hits[0][0] == "mate"
