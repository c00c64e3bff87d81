"""Adjudication cases in the engine and the store, on templates of real ORL faces: a held
duplicate opens a case that later enrolments find but Identify and Verify do not; each
decision applies whole (an encounter, an enrolment with links, a withdrawal); one of two
concurrent decisions wins; held captures survive a restart; erasure reaches cases; case
records are sealed at rest."""

from __future__ import annotations

import functools
import sqlite3
import threading

import pytest

from matcher.cases import Actor, CaseState, Verdict
from matcher.engine import Engine
from matcher.errors import AlreadyExists, FailedPrecondition, InvalidInput, NotFound
from matcher.types import StoredTemplate
from store.sqlite import SubjectStore

FACE = "face/dlib-resnet-v1"
AMINA = Actor("key-1", "amina")
JOSEPH = Actor("key-2", "joseph")


@functools.cache
def _extractor():
    from enroll.face.pipeline import FaceExtractor

    return FaceExtractor()


@functools.cache
def _face(orl, person: int, shot: int) -> tuple[StoredTemplate, ...]:
    return (StoredTemplate("face", 0, _extractor().extract((orl / f"s{person}" / f"{shot}.pgm").read_bytes())),)


@pytest.fixture
def engine(tmp_path, models, orl):
    from store.sealing import new_key

    store = SubjectStore(tmp_path / "db.sqlite", kek=new_key())
    e = Engine(store, {"face": FACE})
    for person in range(1, 9):
        assert e.enroll(f"P{person}", "default", _face(orl, person, 1)).outcome == "ENROLLED"
    yield e
    store.close()


def test_a_held_duplicate_is_a_case_that_enrolments_find_and_searches_do_not(engine, orl):
    r = engine.enroll("NEW-1", "default", _face(orl, 3, 4), hold=True, by=AMINA)
    assert r.outcome == "DUPLICATE" and r.case_id and r.candidates[0].subject_id == "P3"
    case = engine.store.case("default", r.case_id)
    assert (case.state, case.subject_id, case.principal_name, case.source) == ("open", "NEW-1", "amina", "enrol")
    best = case.candidates[0]
    assert best.subject_id == "P3" and best.fpir <= 0.01
    assert [(s.modality, s.position) for s in best.samples] == [("face", 0)]
    assert best.samples[0].score == pytest.approx(best.score)  # one sample: its score is the fused one
    assert engine.store.count() == 8  # nothing enrolled
    assert all(c.subject_id != "NEW-1" for c in engine.identify("default", _face(orl, 3, 5), max_fpir=1.0))
    with pytest.raises(NotFound):
        engine.verify("NEW-1", "default", _face(orl, 3, 5))

    # The same person again (another photo, another id): the same case, an attempt recorded.
    again = engine.enroll("NEW-1b", "default", _face(orl, 3, 6), hold=True, by=JOSEPH)
    assert again.outcome == "DUPLICATE" and again.case_id == r.case_id
    attempts = engine.store.case("default", r.case_id).attempts
    assert [(a.principal_name, a.subject_id) for a in attempts] == [("joseph", "NEW-1b")]
    # Without hold the app still learns which case holds this person; nothing is recorded.
    plain = engine.enroll("NEW-1c", "default", _face(orl, 3, 7))
    assert plain.outcome == "DUPLICATE" and plain.case_id == r.case_id
    assert len(engine.store.case("default", r.case_id).attempts) == 1
    # A stranger is not caught by the held capture.
    assert engine.enroll("NEW-9", "default", _face(orl, 20, 1), hold=True).outcome == "ENROLLED"
    # The held id is taken while the case is open.
    with pytest.raises(AlreadyExists):
        engine.enroll("NEW-1", "default", _face(orl, 5, 4), hold=True)


def test_same_person_attaches_an_encounter_and_frees_the_held_capture(engine, orl):
    case_id = engine.enroll("NEW-2", "default", _face(orl, 4, 4), hold=True, by=AMINA).case_id
    with pytest.raises(InvalidInput, match="reason"):
        engine.decide("default", case_id, "same", "", JOSEPH, subject_id="P4")
    with pytest.raises(InvalidInput, match="not a candidate"):
        engine.decide("default", case_id, "same", "photo matches", JOSEPH, subject_id="P5")
    decided = engine.decide("default", case_id, "same", "same scar, same family card", JOSEPH, subject_id="P4")
    assert decided.state is CaseState.DECIDED
    d = decided.decision
    assert (d.verdict, d.subject_id, d.attached, d.principal_name) == (Verdict.SAME, "P4", True, "joseph")
    assert d.reason == "same scar, same family card" and "P4" in d.candidates
    encounters = engine.store.encounters("default", "P4")
    assert [(n, c) for n, c, _, _ in encounters] == [(1, case_id)]
    assert encounters[0][3][0].template.to_bytes() == _face(orl, 4, 4)[0].template.to_bytes()
    assert engine.store.count() == 8 and engine.store.case_templates("default", case_id) == ()
    # The next capture of that person is a duplicate of P4 again, not of the closed case.
    r = engine.enroll("NEW-2b", "default", _face(orl, 4, 5), hold=True)
    assert r.outcome == "DUPLICATE" and r.case_id != case_id and r.candidates[0].subject_id == "P4"
    # Discarding instead keeps no encounter.
    engine.decide("default", r.case_id, "same", "same person", AMINA, subject_id="P4", attach=False)
    assert len(engine.store.encounters("default", "P4")) == 1


def test_different_people_enrols_with_links_and_recapture_withdraws(engine, orl):
    a = engine.enroll("TWIN-A", "default", _face(orl, 6, 4), hold=True).case_id
    b = engine.enroll("TWIN-B", "default", _face(orl, 7, 4), hold=True).case_id
    decided = engine.decide("default", a, "different", "different birth dates, checked documents", AMINA)
    assert decided.decision.subject_id == "TWIN-A" and decided.state is CaseState.DECIDED
    subject = engine.store.get("default", "TWIN-A")
    assert "P6" in subject.linked and subject.templates[0].template.to_bytes() == _face(orl, 6, 4)[0].template.to_bytes()
    assert engine.identify("default", _face(orl, 6, 4), max_fpir=1.0)[0].subject_id in ("TWIN-A", "P6")
    assert engine.verify("TWIN-A", "default", _face(orl, 6, 4)).match
    withdrawn = engine.decide("default", b, "recapture", "blurred photo", AMINA)
    assert withdrawn.state is CaseState.WITHDRAWN and withdrawn.decision.subject_id == ""
    with pytest.raises(NotFound):
        engine.store.get("default", "TWIN-B")
    open_, _ = engine.store.cases(state=CaseState.OPEN)
    assert open_ == []
    everything, _ = engine.store.cases(state=None)
    assert [c.case_id for c in everything] == [a, b]


def test_two_adjudicators_at_once_exactly_one_decision_applies(engine, orl):
    case_id = engine.enroll("NEW-3", "default", _face(orl, 8, 4), hold=True).case_id
    results, barrier = [], threading.Barrier(2)

    def decide(who: Actor, verdict: str) -> None:
        barrier.wait()
        try:
            results.append(engine.decide("default", case_id, verdict, f"{who.principal_name} looked", who,
                                         subject_id="P8").decision.principal_name)
        except FailedPrecondition as e:
            results.append(e)

    threads = [threading.Thread(target=decide, args=(AMINA, "different")),
               threading.Thread(target=decide, args=(JOSEPH, "same"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [r for r in results if isinstance(r, FailedPrecondition)]
    winners = [r for r in results if isinstance(r, str)]
    assert len(errors) == 1 and len(winners) == 1
    assert errors[0].reason == "CASE_DECIDED" and f"by {winners[0]}" in errors[0].message
    enrolled = engine.store.count() == 9
    assert enrolled == (winners[0] == "amina")  # "different" enrols; "same" attaches
    assert (len(engine.store.encounters("default", "P8")) == 1) == (winners[0] == "joseph")


def test_held_captures_survive_a_restart(engine, orl):
    case_id = engine.enroll("NEW-4", "default", _face(orl, 2, 4), hold=True).case_id
    again = Engine(engine.store, {"face": FACE})
    r = again.enroll("NEW-4b", "default", _face(orl, 2, 5), hold=True)
    assert r.case_id == case_id
    again.decide("default", case_id, "different", "checked", AMINA)
    assert again.store.get("default", "NEW-4").linked[0] == "P2"


def test_cases_are_scoped_paged_and_counted(engine, orl):
    ids = [engine.enroll(f"Q{i}", "default", _face(orl, 1 + i, 4 + i % 2), hold=True).case_id for i in range(5)]
    assert engine.enroll("O1", "other", _face(orl, 1, 1)).outcome == "ENROLLED"
    other = engine.enroll("O2", "other", _face(orl, 1, 2), hold=True).case_id
    with pytest.raises(NotFound):
        engine.store.case("default", other)  # not said to exist outside its partition
    with pytest.raises(NotFound):
        engine.decide("default", other, "recapture", "wrong partition", AMINA)
    seen, cursor = [], ""
    while True:
        page, cursor = engine.store.cases(["default"], limit=2, after=cursor)
        seen += [c.case_id for c in page]
        if not cursor:
            break
    assert seen == ids
    assert engine.store.case_counts() == {("default", "enrol"): 5, ("other", "enrol"): 1}
    assert engine.store.case_counts(["other"]) == {("other", "enrol"): 1}


def test_erasing_a_subject_reaches_its_cases(engine, orl):
    first = engine.enroll("NEW-5", "default", _face(orl, 5, 4), hold=True).case_id
    engine.decide("default", first, "different", "checked", AMINA)
    named = engine.enroll("NEW-6", "default", _face(orl, 5, 5), hold=True).case_id
    case = engine.store.case("default", named)
    assert {c.subject_id for c in case.candidates} >= {"P5", "NEW-5"}
    engine.delete("default", "NEW-5")  # the case about its capture goes; its candidacy elsewhere too
    with pytest.raises(NotFound):
        engine.store.case("default", first)
    assert "NEW-5" not in {c.subject_id for c in engine.store.case("default", named).candidates}
    engine.decide("default", named, "same", "same person", AMINA, subject_id="P5")
    engine.delete("default", "P5")  # decided onto P5: gone with it, and its encounter
    with pytest.raises(NotFound):
        engine.store.case("default", named)


def test_case_records_and_held_captures_are_sealed_at_rest(engine, orl, tmp_path):
    case_id = engine.enroll("SECRET-ID-77", "default", _face(orl, 3, 4), hold=True, by=AMINA).case_id
    engine.store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("db.sqlite*"))
    assert b"SECRET-ID-77" not in raw and b"amina" not in raw and b"subject_id" not in raw
    db = sqlite3.connect(tmp_path / "db.sqlite")
    assert db.execute("SELECT state FROM cases WHERE case_id=?", (case_id,)).fetchone() == ("open",)
    db.close()


def test_a_version_6_store_gains_the_case_tables(tmp_path, models):
    store = SubjectStore(tmp_path / "old.sqlite")
    store.close()
    db = sqlite3.connect(tmp_path / "old.sqlite")
    for table in ("case_templates", "case_subjects", "encounters", "cases"):
        db.execute(f"DROP TABLE {table}")
    db.execute("UPDATE meta SET value='6' WHERE key='schema_version'")
    db.commit()
    db.close()
    store = SubjectStore(tmp_path / "old.sqlite")
    assert store.cases(state=None) == ([], "")
    store.close()


def test_images_are_kept_where_configured_sealed_and_expire_after_the_decision(tmp_path, orl, models):
    from matcher.cases import SampleImage
    from store.sealing import new_key

    photo = lambda person, shot: (SampleImage("face", 0, (orl / f"s{person}" / f"{shot}.pgm").read_bytes()),)  # noqa: E731
    store = SubjectStore(tmp_path / "img.sqlite", kek=new_key())
    cases_only = Engine(store, {"face": FACE})  # the default: held captures' images only
    assert cases_only.enroll("A", "default", _face(orl, 1, 1), images=photo(1, 1)).outcome == "ENROLLED"
    assert store.subject_images("default", "A") == ()
    held = cases_only.enroll("A2", "default", _face(orl, 1, 2), hold=True, images=photo(1, 2)).case_id
    assert store.case_images("default", held) == photo(1, 2)

    everything = Engine(store, {"face": FACE}, keep_images="all")
    assert everything.enroll("B", "default", _face(orl, 2, 1), images=photo(2, 1)).outcome == "ENROLLED"
    assert store.subject_images("default", "B") == photo(2, 1)
    other = everything.enroll("B2", "default", _face(orl, 2, 2), hold=True, images=photo(2, 2)).case_id
    everything.decide("default", other, "different", "checked", AMINA)
    assert store.subject_images("default", "B2") == photo(2, 2)  # the new subject's images
    assert store.case_images("default", other) == photo(2, 2)  # the case keeps its own until expiry
    assert store.expire_case_images(closed_before_ms=1) == 0  # decided after that moment: kept
    assert store.expire_case_images(closed_before_ms=2**62) == 1  # only decided cases' images go
    assert store.case_images("default", other) == () and store.case_images("default", held) == photo(1, 2)
    everything.delete("default", "B2")
    assert store.subject_images("default", "B2") == ()
    nothing = Engine(store, {"face": FACE}, keep_images="none")
    third = nothing.enroll("B3", "default", _face(orl, 2, 3), hold=True, images=photo(2, 3)).case_id
    assert store.case_images("default", third) == ()
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("img.sqlite*"))
    assert photo(2, 1)[0].data[200:264] not in raw  # sealed at rest


def test_a_held_capture_whose_case_was_erased_no_longer_catches_enrolments(engine, orl):
    """An id-conflict case goes with the subject whose id it names; its held capture must not
    keep answering DUPLICATE with a case that no longer exists."""
    case_id = engine.enroll("NEW-7", "default", _face(orl, 7, 4), hold=True).case_id
    with engine.store._transaction():  # as an erasure does: the case goes, the process keeps running
        engine.store._db.execute("DELETE FROM cases WHERE case_id=?", (case_id,))
    r = engine.enroll("NEW-7b", "default", _face(orl, 7, 5), hold=True)
    assert r.outcome == "DUPLICATE" and r.case_id not in ("", case_id) and r.candidates[0].subject_id == "P7"


@pytest.fixture
def two_modal(tmp_path, models, orl, irises, iris_extractor):
    """An engine of faces and irises with persons 1 and 2 (face and left eye, first shot)."""
    def capture(person: int, shot: int, iris: bool = True) -> tuple[StoredTemplate, ...]:
        eye = sorted((irises / "casia_v1" / f"{person:03d}").iterdir())[shot - 1]
        return _face(orl, person, shot) + ((StoredTemplate("iris", 1, iris_extractor.extract(eye.read_bytes())),)
                                           if iris else ())

    def make(**thresholds) -> Engine:
        from matcher.engine import Thresholds

        store = SubjectStore(tmp_path / f"db{len(thresholds)}.sqlite")
        e = Engine(store, {"face": FACE, "iris": iris_extractor.model_id}, Thresholds(**thresholds))
        for person in (1, 2):
            assert e.enroll(f"P{person}", "default", capture(person, 1)).outcome == "ENROLLED"
        return e

    return make, capture


def test_only_doubtful_duplicates_go_to_a_person(two_modal):
    make, capture = two_modal
    engine = make()
    # Face and iris of one person: beyond doubt even counting each sample no lower than its
    # model's measured floor; answered as a duplicate, no case held.
    both = engine.enroll("N1", "default", capture(1, 2), hold=True)
    assert (both.outcome, both.case_id, both.clear_match) == ("DUPLICATE", "", True)
    assert both.candidates[0].subject_id == "P1"
    assert engine.vouched_fpir("default", capture(1, 2), both.candidates[0]) <= 1e-6
    # One face alone never is (its extrapolated tail may claim less; the data vouches for
    # no rate below the face calibration's smallest): a person decides.
    face = engine.enroll("N2", "default", capture(1, 2, iris=False), hold=True)
    assert face.outcome == "DUPLICATE" and face.case_id and not face.clear_match
    vouched = engine.vouched_fpir("default", capture(1, 2, iris=False), face.candidates[0])
    assert vouched >= face.candidates[0].fpir and vouched > 1e-6
    # The case keeps it, for the page to say why a person sees this duplicate.
    assert engine.store.case("default", face.case_id).candidates[0].vouched_fpir == pytest.approx(vouched)
    # With the band's lower edge at 0, every duplicate goes to a person.
    everyone = make(clear_match_fpir=0).enroll("N1", "default", capture(1, 2), hold=True)
    assert everyone.case_id and not everyone.clear_match


def test_an_audit_finds_planted_duplicates_and_its_cases_settle_them(engine, orl):
    """P1..P8 are enrolled (fixture); D1..D4 are the same people again under other ids,
    loaded without deduplication (a legacy import). The audit clusters each pair; as cases,
    "same" merges one pair and "different" links another, and neither comes back."""
    for person in range(1, 5):
        assert engine.enroll(f"D{person}", "default", _face(orl, person, 2), dedup=False).outcome == "ENROLLED"
    report = engine.audit("default")
    assert report.subjects == 12
    assert sorted(c.subject_ids for c in report.clusters) == [(f"D{p}", f"P{p}") for p in range(1, 5)]
    assert all(c.best_fpir <= 1e-2 for c in report.clusters)
    opened = engine.audit("default", cases=True).cases
    assert len(opened) == 4 and engine.audit("default", cases=True).cases == ()  # one case per cluster
    cases = {engine.store.case("default", c).subject_id: engine.store.case("default", c) for c in opened}
    assert set(cases) == {"D1", "D2", "D3", "D4"} and cases["D1"].kind == "AUDIT_CLUSTER"
    merged = engine.decide("default", cases["D1"].case_id, "same", "same person twice", AMINA, subject_id="P1")
    assert (merged.decision.subject_id, merged.decision.removed) == ("P1", "D1")
    engine.decide("default", cases["D2"].case_id, "different", "twins", AMINA)
    assert sorted(c.subject_ids for c in engine.audit("default").clusters) == [("D3", "P3"), ("D4", "P4")]


def test_the_audit_s_batch_path_finds_what_identify_finds(engine, orl):
    """One FAISS batch for every face, or each subject through identify: the same clusters,
    pairs and rates."""
    from matcher import audit

    for person in range(1, 7):
        engine.enroll(f"D{person}", "default", _face(orl, person, 3), dedup=False)
    real = engine.galleries

    class OneByOne:  # the galleries without their batch search
        def __getattr__(self, name):
            if name == "search_many":
                raise AttributeError(name)
            return getattr(real, name)

    batch = audit.audit(engine, "default")
    engine.galleries = OneByOne()
    try:
        single = audit.audit(engine, "default")
    finally:
        engine.galleries = real

    def shape(r):
        return [(c.subject_ids, [(p.subject_ids, round(p.fpir, 9)) for p in c.pairs]) for c in r.clusters]

    assert shape(batch) == shape(single) and len(batch.clusters) >= 5
