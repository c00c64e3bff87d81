"""The store's side of site sync: a gap-free change log written with each change, a v1
store migrated, and peer changes applied once, in order, with their cursor."""

from __future__ import annotations

import sqlite3

import pytest

from matcher.errors import AlreadyExists, NotFound
from matcher.store import SubjectStore
from tests.matcher.test_store import _subject


@pytest.fixture
def store(tmp_path):
    s = SubjectStore(tmp_path / "s.sqlite")
    yield s
    s.close()


def test_every_enrolment_and_deletion_is_a_numbered_change(store):
    store.add(_subject("A"))
    store.add_many([_subject("B", seed=1), _subject("C", seed=2)])
    with pytest.raises(AlreadyExists):
        store.add(_subject("A"))  # refused: no change recorded
    store.delete("default", "B")
    with pytest.raises(NotFound):
        store.delete("default", "B")
    assert [(c.seq, c.kind, c.subject_id) for c in store.changes_since(0)] == [
        (1, "enrol", "A"), (2, "enrol", "B"), (3, "enrol", "C"), (4, "delete", "B")]
    assert [c.seq for c in store.changes_since(2)] == [3, 4] and store.last_seq() == 4


def test_a_version_1_store_gets_its_subjects_as_changes(tmp_path):
    path = tmp_path / "old.sqlite"
    s = SubjectStore(path)
    s.add_many([_subject("X", seed=1), _subject("Y", seed=2)])
    s.close()
    with sqlite3.connect(path) as db:  # what version 1 looked like: no change log
        db.execute("DROP TABLE changes")
        db.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    s = SubjectStore(path)
    assert [(c.seq, c.subject_id) for c in s.changes_since(0)] == [(1, "X"), (2, "Y")]
    s.close()


def test_a_version_3_store_learns_peers_audit_heads(tmp_path):
    path = tmp_path / "v3.sqlite"
    s = SubjectStore(path)
    s.note_peer("field-1", acked_seq=4)
    s.close()
    with sqlite3.connect(path) as db:  # what version 3 looked like: no audit heads of peers
        db.execute("ALTER TABLE peers DROP COLUMN audit_seq")
        db.execute("ALTER TABLE peers DROP COLUMN audit_hash")
        db.execute("UPDATE meta SET value='3' WHERE key='schema_version'")
    s = SubjectStore(path)
    assert s.peer("field-1").acked_seq == 4 and s.peer("field-1").audit_seq is None
    s.note_audit_head("field-1", 12, "ab" * 32)
    s.note_audit_head("field-1", 9, "cd" * 32)  # an older bundle imported again: the head stays
    assert (s.peer("field-1").audit_seq, s.peer("field-1").audit_hash) == (12, "ab" * 32)
    s.close()


def test_a_version_4_store_relays_from_then_on(tmp_path):
    path = tmp_path / "v4.sqlite"
    s = SubjectStore(path)
    s.add(_subject("X", seed=1))
    s.close()
    with sqlite3.connect(path) as db:  # what version 4 looked like: only this site's changes
        for column in ("via", "origin", "origin_seq"):
            db.execute(f"ALTER TABLE changes DROP COLUMN {column}")
        db.execute("UPDATE meta SET value='4' WHERE key='schema_version'")
    s = SubjectStore(path)
    assert s.apply_remote("field-1", 1, "enrol", _subject("F1", seed=2)) == "applied"
    assert [(c.subject_id, c.via, c.origin) for c in s.changes_since(0)] == [("X", "", ""), ("F1", "field-1", "field-1")]
    s.close()


def test_peer_changes_apply_once_in_order(store):
    assert store.apply_remote("field-1", 2, "enrol", _subject("F2", seed=2)) == "gap"
    assert store.peer("field-1").gaps == 1 and store.count() == 0
    assert store.apply_remote("field-1", 1, "enrol", _subject("F1", seed=1)) == "applied"
    assert store.apply_remote("field-1", 1, "enrol", _subject("F1", seed=1)) == "already"
    assert store.apply_remote("field-1", 2, "enrol", _subject("F2", seed=2),
                              flag=("CROSS_SITE_DUPLICATE", ["L7"])) == "applied"
    assert store.apply_remote("field-1", 3, "delete", partition="default", subject_id="F1") == "applied"
    assert store.apply_remote("field-1", 4, "delete", partition="default", subject_id="nobody") == "absent"
    store.add(_subject("L9", seed=9))
    assert store.apply_remote("field-1", 5, "enrol", _subject("L9", seed=3)) == "conflict"
    assert store.peer("field-1").applied_seq == 5
    assert {s for _, s, _, _ in store.templates("face/dlib-resnet-v1")} == {"F2", "L9"}
    assert [(f["subject_id"], f["kind"], f["candidates"]) for f in store.flags()] == [
        ("F2", "CROSS_SITE_DUPLICATE", ["L7"]), ("L9", "ID_CONFLICT", ["L9"])]
    # applied imports join this site's log to be relayed, with where they came from
    assert [(c.subject_id, c.kind, c.via, c.origin, c.origin_seq) for c in store.changes_since(0)] == [
        ("F1", "enrol", "field-1", "field-1", 1), ("F2", "enrol", "field-1", "field-1", 2),
        ("F1", "delete", "field-1", "field-1", 3), ("L9", "enrol", "", "", 0)]


def test_a_relayed_enrolment_arriving_again_by_another_path_is_known_not_a_conflict(store):
    assert store.apply_remote("country", 1, "enrol", _subject("R1", seed=1), origin="field-2",
                              origin_seq=1) == "applied"
    assert store.apply_remote("field-2", 1, "enrol", _subject("R1", seed=1)) == "known"
    assert store.apply_remote("field-3", 1, "enrol", _subject("R1", seed=5)) == "conflict"  # another R1
    assert store.apply_remote("country", 2, "skip") == "skipped"
    assert store.peer("country").applied_seq == 2 and store.peer("field-2").applied_seq == 1
    assert [(f["subject_id"], f["site"]) for f in store.flags()] == [("R1", "field-3")]
    assert [(c.subject_id, c.via, c.origin, c.origin_seq) for c in store.changes_since(0)] == [
        ("R1", "country", "field-2", 1)]
