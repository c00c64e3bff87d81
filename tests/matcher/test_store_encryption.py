"""Encryption at rest and erasure: the raw database files hold no template in clear, a
record moved onto another subject fails to open, keys are checked at start, rotation
re-wraps online, and a deleted subject's template is gone from the files."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from store import sealing
from matcher.errors import KeyMismatch, RecordTampered
from matcher.types import StoredTemplate, Subject
from store.sqlite import SubjectStore
from matcher.face.template import EmbeddingTemplate
from tests.matcher.test_store import MODEL, REPO, ref


def _subject(sid: str, seed: int) -> Subject:
    vec = np.random.default_rng(seed).normal(size=128).astype(np.float32)
    return Subject(sid, "default", (StoredTemplate("face", 0, EmbeddingTemplate(MODEL, vec, 80)),))


def _raw(folder) -> bytes:
    """Every byte of the database's files as they lie on disk (main file, WAL, shared memory)."""
    return b"".join(p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file())


@pytest.fixture
def kek():
    return sealing.new_key()


def test_templates_on_disk_are_ciphertext_and_open_with_the_key(tmp_path, kek):
    s = SubjectStore(tmp_path / "s.sqlite", kek)
    subjects = [_subject(f"S{i}", i) for i in range(5)]
    s.add_many(subjects)
    assert s.encrypted
    for subj in subjects:
        clear = subj.templates[0].template.to_bytes()
        assert clear not in _raw(tmp_path) and clear[-64:] not in _raw(tmp_path)
        assert s.get("default", subj.subject_id).templates[0].template.to_bytes() == clear
    s.close()
    again = SubjectStore(tmp_path / "s.sqlite", kek)
    assert sorted(sid for _, sid, _, _ in again.templates(MODEL)) == [f"S{i}" for i in range(5)]
    again.close()


def test_a_record_copied_onto_another_subject_fails_to_decrypt(tmp_path, kek):
    s = SubjectStore(tmp_path / "s.sqlite", kek)
    s.add_many([_subject("victim", 1), _subject("attacker", 2)])
    victim, attacker = ref(s, "victim"), ref(s, "attacker")
    s.close()
    with sqlite3.connect(tmp_path / "s.sqlite") as db:  # someone with the file but not the key
        db.execute("UPDATE templates SET data = (SELECT data FROM templates WHERE ref=?) WHERE ref=?",
                   (attacker, victim))
    s = SubjectStore(tmp_path / "s.sqlite", kek)
    with pytest.raises(RecordTampered):
        s.get("default", "victim")
    assert s.get("default", "attacker").subject_id == "attacker"
    with pytest.raises(RecordTampered):
        list(s.templates(MODEL))  # the index rebuild at start refuses too: nothing silently wrong
    s.close()


@pytest.mark.parametrize("opened_with", ["wrong", "none"])
def test_an_encrypted_store_refuses_a_wrong_or_missing_key_at_open(tmp_path, kek, opened_with):
    SubjectStore(tmp_path / "s.sqlite", kek).close()
    with pytest.raises(KeyMismatch, match="wrong key-encryption key" if opened_with == "wrong" else "is encrypted"):
        SubjectStore(tmp_path / "s.sqlite", sealing.new_key() if opened_with == "wrong" else None)


def test_a_plain_store_is_not_silently_half_encrypted(tmp_path, kek):
    SubjectStore(tmp_path / "s.sqlite").close()
    with pytest.raises(KeyMismatch, match="without encryption"):
        SubjectStore(tmp_path / "s.sqlite", kek)


def test_rotation_rewraps_while_a_server_keeps_the_store_open(tmp_path, kek):
    def rotate(data_dir):
        return subprocess.run([sys.executable, "-m", "tambua.cli", "keys", "--data-dir", str(data_dir), "--json",
                               "rotate", "--old-kek-file", str(old_file), "--new-kek-file", str(new_file)],
                              cwd=REPO, capture_output=True, text=True, timeout=60)

    old_file, new_file = tmp_path / "old.kek", tmp_path / "new.kek"
    old_file.write_text(kek.hex())
    new_hex = subprocess.run([sys.executable, "-m", "tambua.cli", "keys", "new-kek"], cwd=REPO, capture_output=True,
                             text=True, timeout=60).stdout.strip()
    new_file.write_text(new_hex)
    r = rotate(tmp_path / "nothing-here")
    assert r.returncode == 1 and "no store" in r.stderr  # never creates one to rotate
    running = SubjectStore(tmp_path / "srv" / "subjects.sqlite", kek)
    running.add(_subject("S1", 1))
    r = rotate(tmp_path / "srv")
    assert r.returncode == 0, r.stderr
    running.add(_subject("S2", 2))  # the running store keeps its data key: no downtime
    running.close()
    reopened = SubjectStore(tmp_path / "srv" / "subjects.sqlite", sealing.parse_key(new_hex))
    assert {sid for _, sid, _, _ in reopened.templates(MODEL)} == {"S1", "S2"}
    reopened.close()
    with pytest.raises(KeyMismatch):
        SubjectStore(tmp_path / "srv" / "subjects.sqlite", kek)  # the old key no longer opens it


def test_a_deleted_subject_leaves_no_template_bytes_in_the_files(tmp_path):
    s = SubjectStore(tmp_path / "s.sqlite")  # no encryption: the clear bytes are what to look for
    keep, gone = _subject("keep", 1), _subject("gone", 2)
    s.add_many([keep, gone])
    gone_bytes = gone.templates[0].template.to_bytes()
    assert gone_bytes in _raw(tmp_path)
    s.delete("default", "gone")
    raw = _raw(tmp_path)  # while the store is open, as a server holds it: main file, WAL and all
    assert gone_bytes[-200:] not in raw and keep.templates[0].template.to_bytes() in raw
    assert s.get("default", "keep").subject_id == "keep"
    s.close()
