"""Finger features (MCC cylinders and index codes) persisted beside the minutiae: loaded
at the next gallery load instead of computed, refreshed when absent or stale."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from store import sealing
from matcher.finger import mcc
from matcher.errors import RecordTampered
from matcher.finger.template import MinutiaeTemplate
from matcher.types import StoredTemplate, Subject
from store.sqlite import SubjectStore
from tests.matcher.test_mcc import _finger
from tests.matcher.test_store import ref

MODEL = "finger/leader-mcc-v1"


def _subject(sid: str, seed: int) -> Subject:
    m = _finger(seed)
    rows = np.column_stack([m, np.ones(len(m)), np.full(len(m), 0.9)]).astype(np.float32)
    return Subject(sid, "default", (StoredTemplate("finger", 2, MinutiaeTemplate(MODEL, rows, 400, 400, 60)),))


def _same(a: mcc.Cylinders, b: mcc.Cylinders) -> bool:
    return all(np.array_equal(x, y) for x, y in zip((a.xy, a.theta, a.bits, a.valid), (b.xy, b.theta, b.bits, b.valid)))


@pytest.mark.parametrize("kek", [None, sealing.new_key()], ids=["plain", "encrypted"])
def test_features_are_stored_with_the_enrolment_and_loaded_not_computed(tmp_path, kek):
    s = SubjectStore(tmp_path / "s.sqlite", kek)
    s.add_many([_subject("A", 1), _subject("B", 2)])
    s.close()
    s = SubjectStore(tmp_path / "s.sqlite", kek)
    loaded = {sid: t for _, sid, _, t in s.templates(MODEL)}
    for sid, seed in (("A", 1), ("B", 2)):
        t = loaded[sid]
        assert "cylinders" in t.__dict__ and "index_codes" in t.__dict__  # filled from the store
        fresh = mcc.encode(t.minutiae)
        assert _same(t.cylinders, fresh)
        assert np.array_equal(t.index_codes[0], mcc.index_codes(mcc.index_subset(t.minutiae))[0])
    assert "cylinders" in s.get("default", "A").templates[0].template.__dict__
    s.close()


def test_rows_without_or_with_stale_features_are_refreshed_by_one_load(tmp_path):
    s = SubjectStore(tmp_path / "s.sqlite")
    s.add_many([_subject("A", 1), _subject("B", 2)])
    a, b = ref(s, "A"), ref(s, "B")
    s.close()
    with sqlite3.connect(tmp_path / "s.sqlite") as db:  # as a version-2 store, and as older MCC parameters
        db.execute("UPDATE templates SET derived = NULL WHERE ref = ?", (a,))
        db.execute("UPDATE templates SET derived = CAST('mcc-000000000000' AS BLOB) WHERE ref = ?", (b,))
    s = SubjectStore(tmp_path / "s.sqlite")
    # as yielded: nothing usable stored, so computed on demand ...
    assert sorted((sid, "cylinders" in t.__dict__) for _, sid, _, t in s.templates(MODEL)) == [("A", False),
                                                                                              ("B", False)]
    again = {sid: t for _, sid, _, t in s.templates(MODEL)}
    assert all("cylinders" in t.__dict__ for t in again.values())  # ... and kept by the first load
    assert _same(again["A"].cylinders, mcc.encode(again["A"].minutiae))
    s.close()


def test_features_of_another_row_never_pass_for_this_one(tmp_path):
    kek = sealing.new_key()
    s = SubjectStore(tmp_path / "s.sqlite", kek)
    s.add_many([_subject("A", 1), _subject("B", 2)])
    a, b = ref(s, "A"), ref(s, "B")
    s.close()
    with sqlite3.connect(tmp_path / "s.sqlite") as db:
        db.execute("UPDATE templates SET derived = (SELECT derived FROM templates WHERE ref=?) WHERE ref=?", (b, a))
    s = SubjectStore(tmp_path / "s.sqlite", kek)
    with pytest.raises(RecordTampered):
        s.get("default", "A")
    s.close()
