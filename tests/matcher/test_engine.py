"""The engine on real ORL faces: dedup catches a second photo, verify decides at the FMR,
concurrent enrolments of one person store one subject, a restart rebuilds the gallery."""

from __future__ import annotations

import threading

import pytest

from matcher.engine import Engine, SampleInput
from matcher.errors import AlreadyExists, InvalidInput, ModelMismatch, NotFound, Unimplemented
from matcher.store import SubjectStore
from matcher.templates import EmbeddingTemplate


def _face(orl, person: int, shot: int) -> SampleInput:
    return SampleInput("face", 0, image=(orl / f"s{person}" / f"{shot}.pgm").read_bytes())


@pytest.fixture
def engine(tmp_path, face_extractor, orl):
    store = SubjectStore(tmp_path / "db.sqlite")
    e = Engine(store, {"face": face_extractor})
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
    assert engine.identify("default", [_face(orl, 7, 8)])[0].subject_id == "P7"
    within = engine.identify("default", [_face(orl, 7, 8)], within=frozenset({"P1", "P2"}))
    assert {c.subject_id for c in within} <= {"P1", "P2"}


def test_bad_requests_store_nothing(engine, orl, face_extractor):
    with pytest.raises(InvalidInput):
        engine.enroll("X", "default", [SampleInput("face", 0, image=b"\x00" * 100)])
    with pytest.raises(Unimplemented):
        engine.enroll("X", "default", [SampleInput("finger", 1, image=b"png")])
    other = face_extractor.extract((orl / "s1" / "2.pgm").read_bytes())
    alien = EmbeddingTemplate("face/other-v9", other.vector).to_bytes()
    with pytest.raises(ModelMismatch):
        engine.enroll("X", "default", [SampleInput("face", 0, template=alien)])
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


def test_delete_and_restart_rebuilds(engine, orl, tmp_path, face_extractor):
    engine.delete("default", "P4")
    with pytest.raises(NotFound):
        engine.delete("default", "P4")
    assert engine.enroll("P4-again", "default", [_face(orl, 4, 3)]).outcome == "ENROLLED"
    again = Engine(engine.store, {"face": face_extractor})
    assert again.matchers["face"].size("default") == 10
    assert again.identify("default", [_face(orl, 6, 9)])[0].subject_id == "P6"
