"""The engine on templates of real ORL faces: dedup catches a second photo, verify decides
at the FMR, concurrent enrolments of one person store one subject, a restart rebuilds the
gallery; and the service's extraction step in front of it (tambua/extraction.py): what it
refuses before extracting, and which sample an error names."""

from __future__ import annotations

import functools
import threading

import pytest

from matcher.engine import Engine
from matcher.fusion import FUSION_TAU, fuse
from matcher.errors import AlreadyExists, InvalidInput, ModelMismatch, NotFound, Unimplemented
from matcher.types import StoredTemplate
from store.sqlite import SubjectStore
from matcher.face.template import EmbeddingTemplate
from tambua.extraction import Extraction, SampleInput

FACE = "face/dlib-resnet-v1"


@functools.cache
def _extractor():
    from enroll.face.pipeline import FaceExtractor

    return FaceExtractor()


@functools.cache
def _face(orl, person: int, shot: int) -> StoredTemplate:
    """The face template of an ORL photo (the engine never sees images)."""
    return StoredTemplate("face", 0, _extractor().extract((orl / f"s{person}" / f"{shot}.pgm").read_bytes()))


@pytest.fixture
def engine(tmp_path, models, orl):
    store = SubjectStore(tmp_path / "db.sqlite")
    e = Engine(store, {"face": FACE})
    for person in range(1, 11):
        assert e.enroll(f"P{person}", "default", [_face(orl, person, 1)]).outcome == "ENROLLED"
    yield e
    store.close()


def test_second_photo_is_a_duplicate_ranked_first(engine, orl):
    for person in (2, 5, 9):
        r = engine.enroll(f"new-{person}", "default", [_face(orl, person, 4)])
        assert r.outcome == "DUPLICATE"
        assert r.candidates[0].subject_id == f"P{person}"
    assert engine.store.count() == 10
    forced = engine.enroll("new-2", "default", [_face(orl, 2, 4)], force=True, adjudicated=("P2",))
    assert forced.outcome == "ENROLLED"
    assert engine.store.get("default", "new-2").linked == ("P2",)
    # Enrolled anyway without naming the candidates: the ones found are the links.
    assert engine.enroll("new-5", "default", [_face(orl, 5, 4)], force=True).outcome == "ENROLLED"
    assert engine.store.get("default", "new-5").linked == ("P5",)


def test_new_person_is_enrolled(engine, orl):
    r = engine.enroll("P20", "default", [_face(orl, 20, 1)])
    assert r.outcome == "ENROLLED"
    with pytest.raises(AlreadyExists):
        engine.enroll("P20", "default", [_face(orl, 21, 1)], force=True)


def test_verify_mated_and_non_mated(engine, orl):
    assert engine.verify("P3", "default", [_face(orl, 3, 6)]).match
    r = engine.verify("P3", "default", [_face(orl, 4, 6)])
    assert not r.match and r.fmr > engine.thresholds.verify_fmr


def test_identify_and_within(engine, orl):
    (hit,) = engine.identify("default", [_face(orl, 7, 8)])  # one mate; nobody else near the FPIR
    assert hit.subject_id == "P7" and hit.fpir <= engine.thresholds.identify_fpir
    within = engine.identify("default", [_face(orl, 7, 8)], within=frozenset({"P1", "P2"}), max_fpir=1)
    assert {c.subject_id for c in within} == {"P1", "P2"}
    assert engine.identify("default", [_face(orl, 7, 8)], within=frozenset({"P1", "P2"})) == []


def test_identify_trims_to_the_requested_fpir_and_count(engine, orl):
    stranger = [_face(orl, 25, 1)]  # never enrolled
    assert engine.identify("default", stranger) == []
    ranked = engine.identify("default", stranger, max_fpir=1)
    assert len(ranked) == engine.thresholds.max_candidates == 10
    assert [c.fpir for c in ranked] == sorted(c.fpir for c in ranked)
    assert all(c.fpir > engine.thresholds.identify_fpir for c in ranked)
    limit = ranked[4].fpir
    assert engine.identify("default", stranger, max_fpir=limit) == [c for c in ranked if c.fpir <= limit]
    assert engine.identify("default", stranger, max_fpir=1, max_candidates=3) == ranked[:3]
    with pytest.raises(InvalidInput):
        engine.identify("default", stranger, max_fpir=2)


def test_one_sample_scores_the_same_in_compare_verify_and_identify(engine, orl):
    """The fused rate of one comparison is that comparison's rate, matched or not."""
    for person in (3, 8):  # a weak non-mate of P4 and its mate
        probe = _face(orl, person, 6)
        (enrolled,) = engine.store.get("default", "P4").templates
        compared = engine.compare(probe, enrolled)
        verified = engine.verify("P4", "default", [_face(orl, person, 6)])
        (identified,) = engine.identify("default", [_face(orl, person, 6)], within=frozenset({"P4"}), max_fpir=1)
        assert compared.fmr == pytest.approx(verified.fmr) == pytest.approx(identified.fpir)
        assert compared.score == pytest.approx(verified.score) == pytest.approx(identified.score)


def test_fusion_of_one_rate_is_that_rate_and_rates_above_tau_still_count():
    for p in (1e-9, 1e-4, FUSION_TAU, 2e-3, 0.3, 1.0):
        assert fuse([p]) == pytest.approx(p)
    # Two weak rates: the best, corrected for two looks (not "no evidence").
    assert fuse([0.02, 0.5]) == pytest.approx(1 - 0.98**2)
    # Continuous enough across tau: just below and just above differ by little.
    below, above = fuse([FUSION_TAU * 0.999, 0.5]), fuse([FUSION_TAU * 1.001, 0.5])
    assert 0.5 < below / above < 2


def test_bad_requests_store_nothing(engine, orl, face_extractor):
    extraction = Extraction({"face": face_extractor}, engine)
    with pytest.raises(InvalidInput):
        extraction.templates([SampleInput("face", 0, image=b"\x00" * 100)], enrolment=True)
    with pytest.raises(Unimplemented):
        extraction.templates([SampleInput("finger", 1, image=b"png")], enrolment=True)
    other = face_extractor.extract((orl / "s1" / "2.pgm").read_bytes())
    alien = EmbeddingTemplate("face/other-v9", other.vector).to_bytes()
    with pytest.raises(ModelMismatch):
        extraction.templates([SampleInput("face", 0, template=alien)], enrolment=True)
    with pytest.raises(ModelMismatch):
        engine.enroll("X", "default", [StoredTemplate("face", 0, EmbeddingTemplate("face/other-v9", other.vector))])
    with pytest.raises(NotFound):
        engine.verify("nobody", "default", [_face(orl, 1, 2)])
    assert engine.store.count() == 10


def test_parallel_enrolments_of_one_person_store_one(engine, orl):
    outcomes = []

    def go(i: int) -> None:
        outcomes.append(engine.enroll(f"same-{i}", "default", [_face(orl, 30, 1 + i % 3)]).outcome)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ENROLLED") == 1 and outcomes.count("DUPLICATE") == 7
    assert engine.store.count() == 11


def test_delete_and_restart_rebuilds(engine, orl, tmp_path):
    engine.delete("default", "P4")
    with pytest.raises(NotFound):
        engine.delete("default", "P4")
    assert engine.enroll("P4-again", "default", [_face(orl, 4, 3)]).outcome == "ENROLLED"
    again = Engine(engine.store, {"face": FACE})
    assert again.matchers["face"].size("default") == 10
    assert again.identify("default", [_face(orl, 6, 9)])[0].subject_id == "P6"


def test_a_finger_without_position_is_refused_before_any_extraction(engine):
    # This engine has no finger matcher: had extraction been tried, the answer would be UNIMPLEMENTED.
    with pytest.raises(InvalidInput, match="needs its position"):
        Extraction({}, engine).templates([SampleInput("finger", 0, image=b"not read")], enrolment=True)


def test_an_error_names_the_sample_that_failed(tmp_path, face_extractor, iris_extractor, orl, irises):
    e = Engine(SubjectStore(tmp_path / "s.sqlite"), {"face": FACE, "iris": iris_extractor.model_id})
    extraction = Extraction({"face": face_extractor, "iris": iris_extractor}, e)
    a_face = (orl / "s1" / "1.pgm").read_bytes()  # a face where the left eye's image should be
    face = SampleInput("face", 0, image=a_face)
    with pytest.raises(InvalidInput, match=r"^[A-Z_]+: left iris: "):  # str(): REASON: message
        extraction.templates([face, SampleInput("iris", 2, image=a_face)], enrolment=True)
    e.enroll("F", "default", extraction.templates([face]))
    eye = sorted((irises / "mmu1" / "30_left").iterdir())[0].read_bytes()
    with pytest.raises(NotFound, match="no enrolled template for right iris"):
        e.verify("F", "default", extraction.templates([SampleInput("iris", 1, image=eye)]))
