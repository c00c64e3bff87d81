"""FlatGallery against a brute-force numpy oracle, on seeded synthetic embeddings."""

import numpy as np
import pytest

from matcher.errors import InvalidInput, ModelMismatch
from matcher.face.gallery import FlatGallery
from matcher.face.template import EmbeddingTemplate

MODEL = "face/dlib-resnet-v1"


def _t(v) -> EmbeddingTemplate:
    return EmbeddingTemplate(MODEL, np.asarray(v, np.float32))


@pytest.fixture
def data():
    rng = np.random.default_rng(42)
    return rng.normal(size=(500, 128)).astype(np.float32) * 0.1


@pytest.fixture
def gallery(data):
    g = FlatGallery(MODEL, 128)
    for i, v in enumerate(data):
        g.add("p", f"S{i}", _t(v))
    return g


@pytest.mark.parametrize("batch", [1, 7])
def test_matches_brute_force(gallery, data, batch):
    rng = np.random.default_rng(1)
    probes = data[rng.choice(len(data), batch)] + rng.normal(size=(batch, 128)).astype(np.float32) * 0.01
    got = gallery.search("p", [_t(p) for p in probes], k=10)
    for p, cands in zip(probes, got):
        d = np.linalg.norm(data - p, axis=1)
        expected = np.argsort(d)[:10]
        assert [c.subject_id for c in cands] == [f"S{i}" for i in expected]
        np.testing.assert_allclose([c.distance for c in cands], d[expected], rtol=1e-4, atol=1e-5)


def test_remove_partition_and_within(gallery, data):
    probe = _t(data[3])
    assert gallery.search("p", [probe], 1)[0][0].subject_id == "S3"
    assert gallery.remove("p", "S3") == 1
    assert gallery.remove("p", "S3") == 0
    assert gallery.search("p", [probe], 1)[0][0].subject_id != "S3"
    assert gallery.search("other", [probe], 5) == [[]]
    within = gallery.search("p", [probe], 5, within=frozenset({"S10", "S11", "nobody"}))[0]
    assert {c.subject_id for c in within} == {"S10", "S11"}
    assert gallery.size("p") == 499 and gallery.size() == 499


def test_subject_with_several_templates_is_listed_once(data):
    g = FlatGallery(MODEL, 128)
    g.add("p", "A", _t(data[0]))
    g.add("p", "A", _t(data[0] + 0.001))
    g.add("p", "B", _t(data[1]))
    cands = g.search("p", [_t(data[0])], 2)[0]
    assert [c.subject_id for c in cands] == ["A", "B"]


def test_rejects_other_models_and_bad_k(gallery):
    with pytest.raises(ModelMismatch):
        gallery.add("p", "X", EmbeddingTemplate("face/other-v2", np.zeros(128, np.float32)))
    with pytest.raises(ModelMismatch):
        gallery.search("p", [_t(np.zeros(64))], 1)
    with pytest.raises(InvalidInput):
        gallery.search("p", [_t(np.zeros(128))], 0)
