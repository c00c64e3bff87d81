"""Capture facts and refused captures in the store, and the report built from them: facts
kept with each enrolment and erased with it, filled from the templates for a store made
before they were kept, refusals counted without naming anyone, peers' lag in the report."""

from __future__ import annotations

import sqlite3

import numpy as np

from matcher.face.template import EmbeddingTemplate
from matcher.repository import PeerState, Refusal
from matcher.types import Capture, StoredTemplate, Subject
from store.sqlite import SubjectStore
from tambua import quality

MODEL = "face/dlib-resnet-v1"


def _subject(sid: str, quality_score: int, capture: Capture | None = None, partition: str = "default") -> Subject:
    vec = np.random.default_rng(quality_score).normal(size=128).astype(np.float32)
    template = EmbeddingTemplate(MODEL, vec, quality_score, (("sharpness", 0.5),))
    return Subject(sid, partition, (StoredTemplate("face", 0, template),), capture=capture)


def test_facts_are_kept_with_the_enrolment_and_erased_with_it(tmp_path):
    store = SubjectStore(tmp_path / "s.sqlite", kek=bytes(range(32)))
    store.add(_subject("A", 71, Capture("tablet 1", "", (("face", 0, 92, 112, 0),))))
    store.add(_subject("B", 40), ())
    facts = {f.quality: f for f in store.sample_facts(["default"])}
    assert set(facts) == {71, 40}
    a = facts[71]
    assert (a.modality, a.position, a.width, a.height, a.operator, a.components) == \
        ("face", 0, 92, 112, "tablet 1", {"sharpness": 0.5})
    assert a.subject != facts[40].subject and "A" not in a.subject  # an opaque key, not the id
    store.delete("default", "A")
    assert [f.quality for f in store.sample_facts(["default"])] == [40]
    store.close()


def test_a_store_from_before_facts_gets_them_from_its_templates(tmp_path):
    path = tmp_path / "s.sqlite"
    store = SubjectStore(path, kek=bytes(range(32)))
    store.add(_subject("A", 63))
    store.close()
    db = sqlite3.connect(path)  # as schema 8 left it: no facts
    db.execute("DELETE FROM sample_facts")
    db.execute("UPDATE meta SET value='8' WHERE key='schema_version'")
    db.commit()
    db.close()
    store = SubjectStore(path, kek=bytes(range(32)))
    [fact] = store.sample_facts(["default"])
    assert (fact.quality, fact.modality, fact.width, fact.operator) == (63, "face", 0, "")
    store.close()


def test_refusals_name_nobody_and_are_counted_per_operator(tmp_path):
    store = SubjectStore(tmp_path / "s.sqlite")
    store.add(_subject("A", 80, Capture("tablet 1")))
    store.note_refusal(Refusal(0, "default", "face", 0, "NO_FACE", "tablet 1", "", 640, 480))
    store.note_refusal(Refusal(0, "opB", "face", 0, "TOO_DARK", "tablet 2"))
    assert store.partitions() == ["default", "opB"]
    [r] = store.refusals(["default"])
    assert (r.reason, r.operator, r.width) == ("NO_FACE", "tablet 1", 640) and r.unix_ms > 0
    report = quality.build(store.sample_facts(["default"]), store.refusals(["default"]), ["default"])
    ops = {g["key"]: g for g in report["groups"]["operator"]}
    assert ops["tablet 1"]["refusal_rate"]["face"] == 0.5 and report["modalities"]["face"]["refused"] == 1
    store.close()


def test_the_report_says_how_late_each_peer_is():
    now = 1_000_000_000
    peers = {"camp-a": quality.Peer(PeerState("camp-a", last_import_ms=now - 90_000, refused=2), pending=5, max_lag_s=60),
             "camp-b": quality.Peer(PeerState("camp-b"), pending=0)}
    report = quality.build([], [], ["default"], peers=peers, now_ms=now)
    a, b = report["sync"]
    assert (a["site"], a["lag_s"], a["pending"], a["refused_bundles"], a["late"]) == ("camp-a", 90.0, 5, 2, True)
    assert (b["lag_s"], b["late"]) == (None, False)  # never synced, no limit set
    assert report["totals"]["subjects"] == 0 and report["modalities"]["iris"]["quality"] == {"n": 0, "histogram": [0] * 10}


def test_erasing_a_subject_drops_unfinished_audit_checkpoints(tmp_path):
    """A checkpoint names the subjects an audit has paired: an erasure takes it away (the
    next audit starts over); the completed audits' counts, which name nobody, stay."""
    store = SubjectStore(tmp_path / "s.sqlite", kek=bytes(range(32)))
    store.add(_subject("A", 60))
    store.save_audit_checkpoint("default|0.01", {"done": [["default", "A"]], "edges": []})
    store.note_audit_result("default", {"subjects": 1, "clusters": 0})
    assert store.audit_checkpoint("default|0.01")["done"] == [["default", "A"]]
    store.delete("default", "A")
    assert store.audit_checkpoint("default|0.01") is None
    assert store.audit_results() == {"default": {"subjects": 1, "clusters": 0}}
    store.close()


def test_what_the_site_checks_read_last_enrolment_oldest_pending_and_last_refusal(tmp_path):
    store = SubjectStore(tmp_path / "s.sqlite")
    assert store.last_enrolled_ms() is None and store.oldest_pending_ms("camp-b") is None
    store.add(_subject("A", 50))
    store.add(_subject("B", 60))
    changes = store.changes_since(0)
    assert store.last_enrolled_ms() == store.get("default", "B").created_ns // 1_000_000
    assert store.oldest_pending_ms("camp-b") == changes[0].unix_ms
    store.note_peer("camp-b", acked_seq=changes[0].seq)
    assert store.oldest_pending_ms("camp-b") == changes[1].unix_ms
    store.note_peer("camp-b", acked_seq=changes[1].seq)
    assert store.oldest_pending_ms("camp-b") is None
    store.note_peer("camp-b", refused=1, last_refused_ms=123)
    assert (store.peer("camp-b").refused, store.peer("camp-b").last_refused_ms) == (1, 123)
    store.close()


def test_a_store_from_schema_9_gains_the_refusal_time(tmp_path):
    path = tmp_path / "s.sqlite"
    store = SubjectStore(path)
    store.note_peer("camp-b", refused=2)
    store.close()
    db = sqlite3.connect(path)  # as schema 9 left it: no last_refused_ms
    db.execute("ALTER TABLE peers DROP COLUMN last_refused_ms")
    db.execute("UPDATE meta SET value='9' WHERE key='schema_version'")
    db.commit()
    db.close()
    store = SubjectStore(path)
    assert (store.peer("camp-b").refused, store.peer("camp-b").last_refused_ms) == (2, None)
    store.note_peer("camp-b", refused=1, last_refused_ms=5)
    assert store.peer("camp-b").last_refused_ms == 5
    store.close()
    assert sqlite3.connect(path).execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "10"
