"""Online backup under concurrent enrolment, restored into a fresh server: every enrolment
acknowledged before the backup began is there, answers are the same, the backup is as
encrypted as the store, and a changed backup or a wrong key is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

from tambua.v1 import tambua_pb2 as pb
from tests.tambua.test_server import REPO, Server, face, has_subject


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tambua.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=env)


def test_backup_under_enrolment_restores_every_acknowledged_subject(tmp_path, orl, models):
    kek = {"TAMBUA_KEK": os.urandom(32).hex()}
    a = Server(tmp_path / "a", env=kek)
    a.start()
    try:
        for person in range(1, 9):
            a.stub.Enroll(pb.EnrollRequest(subject_id=f"P{person}", samples=[face(orl, person, 1)]), timeout=60)
        acknowledged: list[str] = []
        lock = threading.Lock()

        def enrol_more():
            for person in range(9, 31):
                r = a.stub.Enroll(pb.EnrollRequest(subject_id=f"P{person}", samples=[face(orl, person, 1)],
                                                   force=True), timeout=60)
                with lock:
                    acknowledged.append(r.subject_id)

        worker = threading.Thread(target=enrol_more)
        worker.start()
        while True:
            with lock:
                if len(acknowledged) >= 4:
                    before = {f"P{p}" for p in range(1, 9)} | set(acknowledged)
                    break
            time.sleep(0.01)
        made = cli("backup", "--data-dir", str(a.data_dir), "--out", str(tmp_path / "bk"), "--json")
        worker.join()
        assert made.returncode == 0, made.stderr
        manifest = json.loads(made.stdout)
        assert manifest["encryption"] == "aes-256-gcm" and len(before) <= manifest["subjects"] <= 30
        stored = a.stub.GetSubject(pb.SubjectRequest(subject_id="P1"), timeout=30).templates[0].data
        raw = b"".join(p.read_bytes() for p in (tmp_path / "bk").iterdir())
        assert stored[-64:] not in raw  # the backup is ciphertext like the store

        restored = cli("restore", "--from", str(tmp_path / "bk"), "--data-dir", str(tmp_path / "b"), "--json")
        assert restored.returncode == 0, restored.stderr
        b = Server(tmp_path / "b", env=kek)
        b.start()
        try:
            subjects = b.stub.Stats(pb.StatsRequest(), timeout=30).subjects
            assert subjects == manifest["subjects"]
            present = {f"P{p}" for p in range(1, 31)
                       if has_subject(b.stub, f"P{p}")}
            assert before <= present and len(present) == subjects
            for person, shot in [(2, 5), (12, 3), (7, 9), (33, 1)]:
                probe = pb.IdentifyRequest(samples=[face(orl, person, shot)])
                got = b.stub.Identify(probe, timeout=60).candidates
                probe.within_subject_ids.extend(sorted(present))
                want = a.stub.Identify(probe, timeout=60).candidates
                assert [(c.subject_id, round(c.score, 6)) for c in got] == \
                       [(c.subject_id, round(c.score, 6)) for c in want]
        finally:
            b.stop()
    finally:
        a.stop()
    audit = cli("audit", "verify", "--data-dir", str(tmp_path / "b"), "--json", env={**os.environ, **kek})
    assert audit.returncode == 0 and json.loads(audit.stdout)["ok"]
    for env, says in [({"TAMBUA_KEK": os.urandom(32).hex()}, "wrong key-encryption key"), ({}, "is encrypted")]:
        refused = cli("serve", "--insecure", "--port", "0", "--metrics-port", "-1", "--data-dir", str(tmp_path / "b"),
                      env={"PATH": os.environ["PATH"], **env})
        assert refused.returncode == 2 and "KEY_MISMATCH" in refused.stderr and says in refused.stderr


def test_the_site_identity_travels_with_the_backup(tmp_path):
    from store.sealing import new_key
    from store.sqlite import SubjectStore
    from sync.site import SiteKeys

    store = SubjectStore(tmp_path / "a" / "subjects.sqlite", kek := new_key())
    keys = SiteKeys.create(tmp_path / "a", "camp-9", store)
    store.close()
    assert cli("backup", "--data-dir", str(tmp_path / "a"), "--out", str(tmp_path / "bk")).returncode == 0
    assert cli("restore", "--from", str(tmp_path / "bk"), "--data-dir", str(tmp_path / "b")).returncode == 0
    assert (tmp_path / "b" / "site.key").stat().st_mode & 0o777 == 0o600
    restored = SubjectStore(tmp_path / "b" / "subjects.sqlite", kek)
    assert SiteKeys.load(tmp_path / "b", restored).identity() == keys.identity()  # syncs as itself again
    restored.close()



def test_principals_travel_with_the_backup_and_stay_authentic(tmp_path):
    from store.sealing import new_key
    from store.sqlite import SubjectStore
    from tambua.auth import AccessStore

    store = SubjectStore(tmp_path / "a" / "subjects.sqlite", kek := new_key())
    access = AccessStore(tmp_path / "a" / "access.sqlite", store)
    principal, key = access.create_key("tablet K-12", {"registrar"}, {"kakuma"})
    access.close()
    store.close()
    assert cli("backup", "--data-dir", str(tmp_path / "a"), "--out", str(tmp_path / "bk")).returncode == 0
    assert cli("restore", "--from", str(tmp_path / "bk"), "--data-dir", str(tmp_path / "b")).returncode == 0
    restored = SubjectStore(tmp_path / "b" / "subjects.sqlite", kek)
    access = AccessStore(tmp_path / "b" / "access.sqlite", restored)  # the row key opens with the restored data key
    assert access.by_key(key) == principal and all(r.authentic for r in access.list())
    access.close()
    restored.close()

def test_a_changed_backup_is_refused_and_nothing_written(tmp_path):
    from store.sqlite import SubjectStore
    from tests.matcher.test_store import _subject

    store = SubjectStore(tmp_path / "a" / "subjects.sqlite")
    store.add(_subject("A-1"))
    store.close()
    assert cli("backup", "--data-dir", str(tmp_path / "a"), "--out", str(tmp_path / "bk")).returncode == 0
    again = cli("backup", "--data-dir", str(tmp_path / "a"), "--out", str(tmp_path / "bk"))
    assert again.returncode == 1 and "not empty" in again.stderr
    db = tmp_path / "bk" / "subjects.sqlite"
    data = bytearray(db.read_bytes())
    data[-100] ^= 0xFF
    db.write_bytes(bytes(data))
    r = cli("restore", "--from", str(tmp_path / "bk"), "--data-dir", str(tmp_path / "b"))
    assert r.returncode == 1 and "changed since the backup" in r.stderr
    assert not (tmp_path / "b" / "subjects.sqlite").exists()
    r = cli("restore", "--from", str(tmp_path / "nothing"), "--data-dir", str(tmp_path / "b"))
    assert r.returncode == 1 and "not a Tambua backup" in r.stderr
