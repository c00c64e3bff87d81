"""The subject store: round trips, ids, deletes, concurrency, and nothing acknowledged lost on SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from matcher.errors import AlreadyExists, InvalidInput, NotFound
from matcher.types import StoredTemplate, Subject
from store.sealing import new_key
from store.sqlite import SubjectStore
from matcher.face.template import EmbeddingTemplate

MODEL = "face/dlib-resnet-v1"
REPO = Path(__file__).resolve().parents[2]


def _subject(sid: str, partition: str = "default", seed: int = 0) -> Subject:
    vec = np.random.default_rng(seed).normal(size=128).astype(np.float32)
    return Subject(sid, partition, (StoredTemplate("face", 0, EmbeddingTemplate(MODEL, vec, 80)),))


def ref(store: SubjectStore, subject_id: str) -> bytes:
    """The key a subject's rows carry in the file (its pseudonym without the ``s:``)."""
    return bytes.fromhex(store.pseudonym(subject_id).removeprefix("s:"))


@pytest.fixture
def store(tmp_path):
    s = SubjectStore(tmp_path / "db" / "tambua.sqlite")
    yield s
    s.close()


def test_round_trip_and_reopen(tmp_path):
    path = tmp_path / "s.sqlite"
    s = SubjectStore(path)
    subj = _subject("A-1", seed=3)
    s.add(subj)
    s.close()
    s = SubjectStore(path)
    got = s.get("default", "A-1")
    assert got.subject_id == "A-1" and got.created_ns == subj.created_ns
    np.testing.assert_array_equal(got.templates[0].template.vector, subj.templates[0].template.vector)
    assert [t[1] for t in s.templates(MODEL)] == ["A-1"]
    assert list(s.templates("face/other")) == []
    s.close()


def test_pseudonyms_travel_and_name_subjects_as_the_store_does(store, tmp_path):
    """A cluster front-end takes the namer once (pickled over Ray) and names audited ids
    itself: the same pseudonyms the store resolves, NFC-normalised; another store's differ."""
    import pickle

    store.add(_subject("Zoë-1"))
    names = pickle.loads(pickle.dumps(store.pseudonyms()))
    decomposed = "Zoe\u0308-1"  # the same id in NFD
    assert names("Zoë-1") == names(decomposed) == store.pseudonym("Zoë-1")
    assert store.resolve([names("Zoë-1")]) == {names("Zoë-1"): "Zoë-1"}
    assert "Zoë" not in repr(store.pseudonyms()) and str(store.pseudonyms().key) not in repr(store.pseudonyms())
    keyed = [SubjectStore(tmp_path / f"keyed{i}.sqlite", kek=new_key()) for i in range(2)]
    assert len({s.pseudonyms()("Zoë-1") for s in keyed} | {names("Zoë-1")}) == 3  # each data key names apart
    for s in keyed:
        s.close()


def test_ids_are_per_partition(store):
    store.add(_subject("A-1", "camp-1"))
    store.add(_subject("A-1", "camp-2"))
    with pytest.raises(AlreadyExists):
        store.add(_subject("A-1", "camp-1"))
    assert store.count() == 2 and store.count("camp-1") == 1
    assert store.count_by_partition() == {"camp-1": 1, "camp-2": 1}


def test_failed_add_writes_nothing(store):
    store.add(_subject("A-1"))
    with pytest.raises(AlreadyExists):
        store.add(_subject("A-1", seed=9))
    assert store.count() == 1
    np.testing.assert_array_equal(
        store.get("default", "A-1").templates[0].template.vector, _subject("A-1").templates[0].template.vector
    )


def test_delete(store):
    store.add(_subject("A-1"))
    store.delete("default", "A-1")
    with pytest.raises(NotFound):
        store.get("default", "A-1")
    with pytest.raises(NotFound):
        store.delete("default", "A-1")
    assert list(store.templates(MODEL)) == []


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: _subject(""), id="empty-id"),
        pytest.param(lambda: _subject("x" * 200), id="long-id"),
        pytest.param(lambda: _subject("bad\nid"), id="control-char"),
        pytest.param(lambda: Subject("A", "default", ()), id="no-templates"),
    ],
)
def test_invalid_subjects(make):
    with pytest.raises(InvalidInput):
        make()


def test_parallel_adds_lose_nothing(store):
    def worker(k: int) -> None:
        for i in range(25):
            store.add(_subject(f"T{k}-{i}", seed=k * 100 + i))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.count() == 200


def test_acknowledged_writes_survive_sigkill(tmp_path):
    path = tmp_path / "kill.sqlite"
    writer = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from tests.matcher.test_store import _subject
        from store.sqlite import SubjectStore
        s = SubjectStore({str(path)!r})
        i = 0
        while True:
            s.add(_subject(f"K-{{i}}", seed=i))
            print(i, flush=True)  # the acknowledgement
            i += 1
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    acked = []
    for line in proc.stdout:
        acked.append(int(line))
        if len(acked) == 40:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=30)
    s = SubjectStore(path)
    for i in acked:
        s.get("default", f"K-{i}")
    assert s.count() >= len(acked)
    s.close()


def test_add_many_is_all_or_nothing(store):
    store.add(_subject("B-2"))
    with pytest.raises(AlreadyExists):
        store.add_many([_subject("B-1"), _subject("B-2"), _subject("B-3")])
    assert store.count() == 1
    store.add_many([_subject(f"C-{i}", seed=i) for i in range(100)])
    assert store.count() == 101


def test_the_sqlite_store_is_what_the_rest_of_tambua_expects_of_a_store(store):
    """The interfaces of matcher/repository.py, which a store per shard would implement too."""
    from matcher.repository import AuditCheckpoints, Cases, ChangeLog, Repository, SecretKeeper, Subjects

    for interface in (Subjects, ChangeLog, Cases, AuditCheckpoints, SecretKeeper):
        assert isinstance(store, interface), interface.__name__
    assert issubclass(Repository, Subjects) and issubclass(Repository, ChangeLog)


def test_template_pages_give_every_template_once_and_decode_only_the_kept(store):
    store.add_many([_subject(f"S{i}", "p" if i % 2 else "q", seed=i) for i in range(23)])
    store.delete("q", "S4")  # a gap in storage order
    everything = sorted((p, s) for p, s, _, _ in store.templates(MODEL))
    seen, after, pages = [], 0, 0
    while True:
        rows, after = store.template_page(MODEL, after, limit=5)
        seen += [(p, s) for p, s, _, _ in rows]
        pages += 1
        if not after:
            break
    assert sorted(seen) == everything and len(everything) == 22 and pages == 5
    kept, after = [], 0
    while True:
        rows, after = store.template_page(MODEL, after, limit=7, keep=lambda p, s: p == "p")
        kept += rows
        if not after:
            break
    assert sorted((p, s) for p, s, _, _ in kept) == [(p, s) for p, s in everything if p == "p"]
    assert all(np.array_equal(t.vector, _subject(s, p, seed=int(s[1:])).templates[0].template.vector)
               for p, s, _, t in kept)
