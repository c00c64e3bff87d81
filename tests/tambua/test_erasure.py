"""Erasure: after DeleteSubject no file of the data directory holds the subject's id in
clear (the store keys rows by keyed hashes and seals ids; the change log keeps only a
number; the audit log names subjects by pseudonyms), read as raw bytes while the server
runs and after it stops; yet the audit entries about the erased subject stay findable by
whoever knows the id."""

from __future__ import annotations

import os

from tambua.v1 import tambua_pb2 as pb
from tests.tambua.test_server import Server, face

GONE, KEPT = "ERASE-ME-0042-KAKUMA", "KEEP-0043-KAKUMA"


def _files_hold(data_dir, text: str) -> list[str]:
    """The files under ``data_dir`` whose bytes contain ``text`` (UTF-8 or UTF-16)."""
    needles = [text.encode(), text.encode("utf-16-le"), text.encode("utf-16-be")]
    return [str(p.relative_to(data_dir)) for p in sorted(data_dir.rglob("*"))
            if p.is_file() and any(n in p.read_bytes() for n in needles)]


def test_a_deleted_subject_leaves_no_id_in_any_file(tmp_path, orl, models):
    server = Server(tmp_path / "data", env={"TAMBUA_KEK": os.urandom(32).hex()})
    server.start()
    try:
        stub = server.stub
        stub.Enroll(pb.EnrollRequest(subject_id=GONE, samples=[face(orl, 35, 1)]), timeout=60)
        # The same person again, enrolled anyway by an adjudicator: linked to GONE.
        forced = stub.Enroll(pb.EnrollRequest(subject_id=KEPT, samples=[face(orl, 35, 2)], force=True,
                                              adjudicated_candidates=[GONE]), timeout=60)
        assert forced.outcome == pb.EnrollResponse.ENROLLED
        assert list(stub.GetSubject(pb.SubjectRequest(subject_id=KEPT), timeout=30).linked_subject_ids) == [GONE]
        found = stub.Identify(pb.IdentifyRequest(samples=[face(orl, 35, 3)]), timeout=60).candidates
        assert GONE in [c.subject_id for c in found]
        assert stub.Verify(pb.VerifyRequest(subject_id=GONE, samples=[face(orl, 35, 4)]), timeout=60).match
        assert _files_hold(server.data_dir, GONE) == [] and _files_hold(server.data_dir, KEPT) == []  # sealed at rest
        stub.DeleteSubject(pb.SubjectRequest(subject_id=GONE), timeout=30)

        assert _files_hold(server.data_dir, GONE) == []  # while the server runs: what a copied disk shows
        assert list(stub.GetSubject(pb.SubjectRequest(subject_id=KEPT), timeout=30).linked_subject_ids) == []
        # Accountability survives erasure: whoever knows the id finds what was done with it.
        about = stub.ReadAudit(pb.ReadAuditRequest(subject_id=GONE), timeout=30).entries
        assert [e.rpc for e in about] == ["Enroll", "Enroll", "Identify", "Verify", "DeleteSubject"]
        assert all(GONE in e.subject_ids for e in about)
        unnamed = stub.ReadAudit(pb.ReadAuditRequest(), timeout=30).entries  # others see a pseudonym only
        assert not any(GONE in e.subject_ids for e in unnamed)
        assert any(KEPT in e.subject_ids for e in unnamed)  # an enrolled subject is shown by its id
    finally:
        server.stop()
    assert _files_hold(server.data_dir, GONE) == []
