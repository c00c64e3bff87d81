"""The store's side of site sync: a gap-free change log written with each change, that
keeps no id of an erased subject once no peer needs it; old stores migrated; peer changes
applied once, in order, with their cursor."""

from __future__ import annotations

import json
import sqlite3

import pytest

from matcher.errors import AlreadyExists, NotFound
from matcher.types import Subject
from store.sqlite import SubjectStore
from tests.matcher.test_store import MODEL, _subject


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
    # B's enrolment is emptied (the number stays for sync); with no peer to tell, its
    # deletion keeps no id either.
    assert [(c.seq, c.kind, c.subject_id) for c in store.changes_since(0)] == [
        (1, "enrol", "A"), (2, "erased", ""), (3, "enrol", "C"), (4, "delete", "")]
    assert [c.seq for c in store.changes_since(2)] == [3, 4] and store.last_seq() == 4


def test_a_deletion_keeps_its_sealed_id_until_every_peer_has_it(store):
    store.add_many([_subject("A"), _subject("B", seed=1)])
    store.note_peer("country", acked_seq=2)  # the country server has both enrolments
    store.note_peer("field-2", acked_seq=1)
    store.delete("default", "B")
    assert [(c.kind, c.subject_id) for c in store.changes_since(0)] == [("enrol", "A"), ("erased", ""),
                                                                          ("delete", "B")]
    store.note_peer("country", acked_seq=3)
    assert store.changes_since(2)[0].subject_id == "B"  # field-2 has not had it yet
    store.note_peer("field-2", acked_seq=3)
    assert store.changes_since(2)[0].subject_id == ""


def _v5_store(path, subjects, kek=None, deleted=()):
    """A store as version 5 wrote it (ids in clear), holding ``subjects`` and the changes
    of ``deleted`` subjects enrolled and deleted again."""
    from store import sealing
    from store.schema import SCHEMA_V5 as _SCHEMA_V5
    from store.sqlite import _context

    dek = sealing.new_key()
    meta = {"schema_version": "5", "encryption": "none"}
    if kek is not None:
        meta.update(encryption="aes-256-gcm", kek_id=sealing.key_id(kek), wrapped_dek=sealing.wrap(dek, kek).hex())
    seal = sealing.AesGcmSealer(dek).seal if kek is not None else (lambda data, context: data)
    with sqlite3.connect(path) as db:
        db.executescript(_SCHEMA_V5)
        db.executemany("INSERT INTO meta VALUES (?, ?)", list(meta.items()))
        for s in subjects:
            db.execute("INSERT INTO subjects VALUES (?, ?, ?, ?)", (s.partition, s.subject_id, s.created_ns,
                                                                    json.dumps(list(s.linked))))
            for t in s.templates:
                db.execute("INSERT INTO templates VALUES (?, ?, ?, ?, ?, ?, NULL)", (
                    s.partition, s.subject_id, t.modality, t.position, t.template.model_id,
                    seal(t.template.to_bytes(), _context(s.partition, s.subject_id, t.modality, t.position,
                                                         t.template.model_id))))
            db.execute("INSERT INTO changes (kind, partition, subject_id, unix_ms) VALUES ('enrol', ?, ?, 0)",
                       (s.partition, s.subject_id))
        for sid in deleted:
            for kind in ("enrol", "delete"):
                db.execute("INSERT INTO changes (kind, partition, subject_id, unix_ms) VALUES (?, 'default', ?, 0)",
                           (kind, sid))
        db.execute("INSERT INTO flags VALUES ('default', ?, 'CROSS_SITE_DUPLICATE', 'field-1', ?, 0)",
                   (subjects[-1].subject_id, json.dumps([subjects[0].subject_id])))
    db.close()


def test_a_version_1_store_gets_its_subjects_as_changes(tmp_path):
    path = tmp_path / "old.sqlite"
    _v5_store(path, [_subject("X", seed=1), _subject("Y", seed=2)])
    with sqlite3.connect(path) as db:  # what version 1 looked like: no change log
        db.execute("DROP TABLE changes")
        db.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    db.close()
    s = SubjectStore(path)
    assert [(c.seq, c.subject_id) for c in s.changes_since(0)] == [(1, "X"), (2, "Y")]
    s.close()


def test_a_version_3_store_learns_peers_audit_heads(tmp_path):
    path = tmp_path / "v3.sqlite"
    _v5_store(path, [_subject("X", seed=1)])
    with sqlite3.connect(path) as db:  # what version 3 looked like: no audit heads of peers
        db.execute("INSERT INTO peers (site, acked_seq) VALUES ('field-1', 4)")
        db.execute("ALTER TABLE peers DROP COLUMN audit_seq")
        db.execute("ALTER TABLE peers DROP COLUMN audit_hash")
        db.execute("UPDATE meta SET value='3' WHERE key='schema_version'")
    db.close()
    s = SubjectStore(path)
    assert s.peer("field-1").acked_seq == 4 and s.peer("field-1").audit_seq is None
    s.note_audit_head("field-1", 12, "ab" * 32)
    s.note_audit_head("field-1", 9, "cd" * 32)  # an older bundle imported again: the head stays
    assert (s.peer("field-1").audit_seq, s.peer("field-1").audit_hash) == (12, "ab" * 32)
    s.close()


def test_a_version_4_store_relays_from_then_on(tmp_path):
    path = tmp_path / "v4.sqlite"
    _v5_store(path, [_subject("X", seed=1)])
    with sqlite3.connect(path) as db:  # what version 4 looked like: only this site's changes
        for column in ("via", "origin", "origin_seq"):
            db.execute(f"ALTER TABLE changes DROP COLUMN {column}")
        db.execute("UPDATE meta SET value='4' WHERE key='schema_version'")
    db.close()
    s = SubjectStore(path)
    assert s.apply_remote("field-1", 1, "enrol", _subject("F1", seed=2)) == "applied"
    assert [(c.subject_id, c.via, c.origin) for c in s.changes_since(0)] == [("X", "", ""), ("F1", "field-1", "field-1")]
    s.close()


def test_a_version_5_store_is_rekeyed_and_keeps_no_id_in_clear(tmp_path):
    from store import sealing

    path, kek = tmp_path / "v5.sqlite", sealing.new_key()
    kept = _subject("MIGRATE-ALPHA-0001", seed=1)
    linked = Subject("MIGRATE-CHARLIE-0003", "default", _subject("x", seed=3).templates, ("MIGRATE-ALPHA-0001",))
    _v5_store(path, [kept, linked], kek, deleted=["MIGRATE-BRAVO-0002"])
    assert b"MIGRATE-BRAVO-0002" in path.read_bytes()  # version 5 kept ids in clear
    s = SubjectStore(path, kek)
    assert s.get("default", "MIGRATE-CHARLIE-0003").linked == ("MIGRATE-ALPHA-0001",)
    assert sorted(sid for _, sid, _, _ in s.templates(MODEL)) == ["MIGRATE-ALPHA-0001", "MIGRATE-CHARLIE-0003"]
    assert [(c.kind, c.subject_id) for c in s.changes_since(0)] == [
        ("enrol", "MIGRATE-ALPHA-0001"), ("enrol", "MIGRATE-CHARLIE-0003"), ("erased", ""), ("delete", "")]
    assert [(f.subject_id, f.candidates) for f in s.flags()] == [("MIGRATE-CHARLIE-0003", ("MIGRATE-ALPHA-0001",))]
    s.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert not any(f"MIGRATE-{n}".encode() in raw for n in ("ALPHA", "BRAVO", "CHARLIE"))


def test_peer_changes_apply_once_in_order(store):
    assert store.apply_remote("field-1", 2, "enrol", _subject("F2", seed=2)) == "gap"
    assert store.peer("field-1").gaps == 1 and store.count() == 0
    store.add(_subject("L7", seed=7))
    assert store.apply_remote("field-1", 1, "enrol", _subject("F1", seed=1)) == "applied"
    assert store.apply_remote("field-1", 1, "enrol", _subject("F1", seed=1)) == "already"
    assert store.apply_remote("field-1", 2, "enrol", _subject("F2", seed=2),
                              flag=("CROSS_SITE_DUPLICATE", ["L7"])) == "applied"
    assert store.apply_remote("field-1", 3, "delete", partition="default", subject_id="F1") == "applied"
    assert store.apply_remote("field-1", 4, "delete", partition="default", subject_id="nobody") == "absent"
    store.add(_subject("L9", seed=9))
    assert store.apply_remote("field-1", 5, "enrol", _subject("L9", seed=3)) == "conflict"
    assert store.peer("field-1").applied_seq == 5
    assert {s for _, s, _, _ in store.templates("face/dlib-resnet-v1")} == {"F2", "L7", "L9"}
    assert sorted((f.subject_id, f.kind, f.candidates) for f in store.flags()) == [
        ("F2", "CROSS_SITE_DUPLICATE", ("L7",)), ("L9", "ID_CONFLICT", ("L9",))]
    # applied imports join this site's log to be relayed, with where they came from
    # (F1, deleted by the site that made it, leaves no id: no other peer needs one)
    assert [(c.subject_id, c.kind, c.via, c.origin, c.origin_seq) for c in store.changes_since(0)] == [
        ("L7", "enrol", "", "", 0), ("", "erased", "field-1", "field-1", 1), ("F2", "enrol", "field-1", "field-1", 2),
        ("", "delete", "field-1", "field-1", 3), ("L9", "enrol", "", "", 0)]


def test_a_relayed_enrolment_arriving_again_by_another_path_is_known_not_a_conflict(store):
    assert store.apply_remote("country", 1, "enrol", _subject("R1", seed=1), origin="field-2",
                              origin_seq=1) == "applied"
    assert store.apply_remote("field-2", 1, "enrol", _subject("R1", seed=1)) == "known"
    assert store.apply_remote("field-3", 1, "enrol", _subject("R1", seed=5)) == "conflict"  # another R1
    assert store.apply_remote("country", 2, "skip") == "skipped"
    assert store.peer("country").applied_seq == 2 and store.peer("field-2").applied_seq == 1
    assert [(f.subject_id, f.site) for f in store.flags()] == [("R1", "field-3")]
    assert [(c.subject_id, c.via, c.origin, c.origin_seq) for c in store.changes_since(0)] == [
        ("R1", "country", "field-2", 1)]
