"""Decisions travel with site sync, on real ORL faces: sites built in-process (a store, an
engine, site keys) exchange signed, encrypted bundles as the servers do. A decision made at
one site closes the other sites' cases on the same pair and is applied there the same way;
two sites that decide one pair differently each get a conflict case and neither overwrites
the other; a person's resolution settles both, undoing a merge when it says "different"."""

from __future__ import annotations

import pytest

from matcher.cases import Actor, CaseSource, CaseState, Verdict
from matcher.engine import Engine
from matcher.errors import NotFound
from matcher.repository import Applied
from matcher.types import StoredTemplate
from store.sqlite import SubjectStore
from sync.bundles import export_bundle, import_ack, import_bundle
from sync.site import Peers, SiteKeys
from tests.matcher.test_cases import FACE, _face

AMINA, JOSEPH = Actor("key-1", "amina"), Actor("key-2", "joseph")


class Site:
    def __init__(self, root, name: str, models: dict[str, str] | None = None) -> None:
        self.name, d = name, root / name
        self.store = SubjectStore(d / "db.sqlite")
        self.engine = Engine(self.store, models or {"face": FACE})
        self.keys, self.peers = SiteKeys.create(d, name), Peers(d)

    def sync_to(self, other: "Site"):
        """One bundle from here to ``other``, applied there, its acknowledgement back here."""
        bundle = export_bundle(self.store, self.keys, self.peers, other.name)
        report = import_bundle(other.engine, other.keys, other.peers, bundle.data)
        import_ack(self.store, self.keys, self.peers, report.ack)
        return report

    def cases(self, state=None) -> dict[str, object]:
        return {c.case_id: c for c in self.store.cases(state=state)[0]}

    def open_case(self):
        (case,) = self.store.cases()[0]
        return case

    def has(self, subject_id: str) -> bool:
        try:
            self.store.get("default", subject_id)
            return True
        except NotFound:
            return False

    def top(self, orl, person: int, shot: int) -> str:
        return self.engine.identify("default", _face(orl, person, shot))[0].subject_id


@pytest.fixture
def sites(tmp_path, models):
    field, country = Site(tmp_path, "field-1"), Site(tmp_path, "country")
    field.peers.add(country.keys.identity())
    country.peers.add(field.keys.identity())
    yield field, country
    field.store.close()
    country.store.close()


def _one_person_at_both(field: Site, country: Site, orl) -> None:
    """Person 1 enrolled first at the country (A-1), then at the field (F-1); both sync, and
    each site flags the other's enrolment: one open case about the pair at each."""
    assert country.engine.enroll("A-1", "default", _face(orl, 1, 1)).outcome == "ENROLLED"
    assert field.engine.enroll("F-1", "default", _face(orl, 1, 2)).outcome == "ENROLLED"
    for person in (2, 3):  # others, so that the galleries are not one person
        assert country.engine.enroll(f"A-{person}", "default", _face(orl, person, 1)).outcome == "ENROLLED"
    assert [f.kind for f in country.sync_to(field).flagged] == ["CROSS_SITE_DUPLICATE"]
    assert [f.kind for f in field.sync_to(country).flagged] == ["CROSS_SITE_DUPLICATE"]
    assert (field.open_case().subject_id, country.open_case().subject_id) == ("A-1", "F-1")


def test_a_merge_decided_at_the_field_closes_the_country_case_and_merges_the_same_way(sites, orl):
    field, country = sites
    _one_person_at_both(field, country, orl)
    case = field.open_case()
    # The adjudicator names the field's own enrolment; the earlier one (the country's) is kept.
    decided = field.engine.decide("default", case.case_id, "same", "same face, same family", AMINA,
                                  subject_id="F-1")
    assert (decided.decision.subject_id, decided.decision.removed) == ("A-1", "F-1")
    assert field.has("A-1") and not field.has("F-1") and field.top(orl, 1, 2) == "A-1"

    report = field.sync_to(country)
    assert report.flagged == ()
    mine = country.cases(CaseState.DECIDED)
    assert set(mine) == {case.case_id, next(c for c in mine if c != case.case_id)}
    own = next(c for c in mine.values() if c.case_id != case.case_id)
    # The country's own case closed with the field's decision, said to be the field's.
    assert (own.decision.verdict, own.decision.site, own.decision.case_id, own.decision.principal_name) == \
        (Verdict.SAME, "field-1", case.case_id, "amina")
    assert mine[case.case_id].source is CaseSource.SYNC and mine[case.case_id].decision.reason == \
        "same face, same family"
    assert country.has("A-1") and not country.has("F-1") and country.top(orl, 1, 2) == "A-1"
    assert [n for n, *_ in country.store.encounters("default", "A-1")] == [1]
    assert country.store.cases()[0] == []  # nothing left to decide at either site
    assert field.store.cases()[0] == []
    # Back to the field: nothing new (it made the decision).
    assert country.sync_to(field).flagged == ()
    assert field.has("A-1") and not field.has("F-1")


def test_two_sites_deciding_one_pair_differently_get_a_conflict_case_and_a_resolution_settles_both(sites, orl):
    field, country = sites
    _one_person_at_both(field, country, orl)
    f_case, c_case = field.open_case(), country.open_case()
    field.engine.decide("default", f_case.case_id, "same", "same person", AMINA, subject_id="F-1")
    country.engine.decide("default", c_case.case_id, "different", "twins, different irises", JOSEPH)
    assert not field.has("F-1") and country.has("F-1")

    # Each site hears the other's decision: a conflict, a new case, and nothing overwritten.
    at_country = field.sync_to(country)
    assert [f.kind for f in at_country.flagged] == ["DECISION_CONFLICT"]
    at_field = country.sync_to(field)
    assert [f.kind for f in at_field.flagged] == ["DECISION_CONFLICT"]
    assert country.has("F-1") and not field.has("F-1")
    for site, mine, theirs in ((country, c_case, f_case), (field, f_case, c_case)):
        conflict = site.open_case()
        assert conflict.kind == "DECISION_CONFLICT" and set(conflict.supersedes) == {mine.case_id, theirs.case_id}
        assert sorted(d.verdict for d in conflict.conflicting) == [Verdict.DIFFERENT, Verdict.SAME]

    # The country's supervisor resolves it: different people. The field undoes its merge.
    resolved = country.engine.decide("default", country.open_case().case_id, "different",
                                     "checked the family card: two brothers", AMINA)
    assert resolved.state is CaseState.DECIDED
    assert country.sync_to(field).flagged == ()
    assert field.has("F-1") and field.store.encounters("default", "A-1") == []
    assert field.top(orl, 1, 2) in ("A-1", "F-1") and {c.subject_id for c in field.engine.identify(
        "default", _face(orl, 1, 2))} >= {"A-1", "F-1"}
    assert "A-1" in field.store.get("default", "F-1").linked
    assert field.store.cases()[0] == [] and country.store.cases()[0] == []
    # The field's copy of the resolution goes nowhere new: the country made it.
    assert field.sync_to(country).flagged == ()
    assert country.has("F-1") and country.has("A-1")


def test_a_held_enrolment_decided_at_the_field_arrives_decided_with_its_links(sites, orl):
    field, country = sites
    assert field.engine.enroll("F-5", "default", _face(orl, 5, 1)).outcome == "ENROLLED"
    field.sync_to(country)
    held = field.engine.enroll("H-5", "default", _face(orl, 5, 2), hold=True, by=JOSEPH)
    assert held.outcome == "DUPLICATE" and held.case_id
    field.engine.decide("default", held.case_id, "different", "another person, same household", AMINA)
    report = field.sync_to(country)
    # Enrolled with its link: the country raises no case for a pair a person decided.
    assert report.flagged == () and country.has("H-5") and country.store.cases()[0] == []
    (arrived,) = country.cases(CaseState.DECIDED).values()
    assert (arrived.case_id, arrived.source, arrived.site, arrived.decision.verdict, arrived.decision.site) == \
        (held.case_id, CaseSource.ENROL, "field-1", Verdict.DIFFERENT, "field-1")
    # Erasing the person at the field erases the case where it travelled.
    field.engine.delete("default", "H-5")
    field.sync_to(country)
    assert not country.has("H-5") and country.cases(None) == {}


def test_a_decision_arriving_again_changes_nothing(sites, orl):
    field, country = sites
    _one_person_at_both(field, country, orl)
    case = field.open_case()
    field.engine.decide("default", case.case_id, "recapture", "blurred photo", AMINA)
    field.sync_to(country)
    # The same record again, as a relay through another site would bring it.
    (record,) = [c for c in country.cases(CaseState.WITHDRAWN).values() if c.case_id == case.case_id]
    before = country.store.last_seq()
    assert country.store.apply_remote("field-2", 1, "decision", partition="default", case=record) is Applied.KNOWN
    assert country.store.last_seq() == before
    assert country.has("A-1") and country.has("F-1")


def test_the_country_relays_a_field_decision_to_another_field_which_merges_the_same_way(tmp_path, models, orl):
    field, country, other = Site(tmp_path, "field-1"), Site(tmp_path, "country"), Site(tmp_path, "field-2")
    for a, b in ((field, country), (other, country)):
        a.peers.add(b.keys.identity())
        b.peers.add(a.keys.identity())
    try:
        _one_person_at_both(field, country, orl)
        assert [f.kind for f in country.sync_to(other).flagged] == ["CROSS_SITE_DUPLICATE"]  # A-1, then F-1
        waiting = other.open_case()
        case = field.open_case()
        field.engine.decide("default", case.case_id, "same", "same person", AMINA, subject_id="F-1")
        field.sync_to(country)
        assert country.sync_to(other).flagged == ()
        closed = other.store.case("default", waiting.case_id)
        assert (closed.state, closed.decision.site, closed.decision.case_id) == (CaseState.DECIDED, "field-1",
                                                                                 case.case_id)
        assert other.has("A-1") and not other.has("F-1") and other.top(orl, 1, 2) == "A-1"
        assert len(other.store.encounters("default", "A-1")) == 1
    finally:
        for site in (field, country, other):
            site.store.close()


def test_a_cross_site_duplicate_beyond_doubt_is_merged_without_a_person(tmp_path, models, orl, irises,
                                                                        iris_extractor):
    def capture(shot: int):
        eye = sorted((irises / "casia_v1" / "001").iterdir())[shot - 1]
        return _face(orl, 1, shot) + (StoredTemplate("iris", 1, iris_extractor.extract(eye.read_bytes())),)

    kinds = {"face": FACE, "iris": iris_extractor.model_id}
    field, country = Site(tmp_path, "field-1", kinds), Site(tmp_path, "country", kinds)
    field.peers.add(country.keys.identity())
    country.peers.add(field.keys.identity())
    try:
        assert country.engine.enroll("A-1", "default", capture(1)).outcome == "ENROLLED"
        assert field.engine.enroll("F-1", "default", capture(2)).outcome == "ENROLLED"
        assert [f.kind for f in country.sync_to(field).flagged] == ["CROSS_SITE_DUPLICATE"]
        # Face and iris agree beyond doubt: merged into the earlier enrolment at once.
        assert field.store.cases()[0] == [] and not field.has("F-1") and field.has("A-1")
        (case,) = field.cases(CaseState.DECIDED).values()
        assert (case.decision.principal_name, case.decision.subject_id, case.decision.removed) == \
            ("tambua (clear match)", "A-1", "F-1") and case.decision.reason.startswith("clear match")
        # The country never saw F-1 (merged before it was sent); it keeps the decided case.
        assert field.sync_to(country).flagged == ()
        assert not country.has("F-1") and set(country.cases(CaseState.DECIDED)) == {case.case_id}
    finally:
        field.store.close()
        country.store.close()
