"""Subject ids have one spelling: Unicode NFC, no spaces at either end, nothing that does
not print; checked before any extraction, for every RPC that takes one (real server)."""

from __future__ import annotations

import unicodedata

import grpc
import pytest

from tambua.v1 import tambua_pb2 as pb
from tests.tambua.test_server import _reason, face

NFC = unicodedata.normalize("NFC", "JOSÉ-1")
NFD = unicodedata.normalize("NFD", "JOSÉ-1")



def _refused(call) -> tuple[grpc.StatusCode, str, str]:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code(), _reason(e.value), e.value.details()


def test_nfc_and_nfd_spellings_are_one_subject(plain_server, orl):
    assert NFC != NFD
    stub = plain_server.stub
    assert stub.Enroll(pb.EnrollRequest(subject_id=NFD, samples=[face(orl, 1, 1)])).outcome == pb.EnrollResponse.ENROLLED
    code, _, _ = _refused(lambda: stub.Enroll(pb.EnrollRequest(subject_id=NFC, samples=[face(orl, 2, 1)])))
    assert code is grpc.StatusCode.ALREADY_EXISTS
    assert stub.GetSubject(pb.SubjectRequest(subject_id=NFC)).subject_id == NFC  # stored as NFC
    assert stub.Verify(pb.VerifyRequest(subject_id=NFD, samples=[face(orl, 1, 2)])).match
    found = stub.Identify(pb.IdentifyRequest(samples=[face(orl, 1, 3)], within_subject_ids=[NFD])).candidates
    assert [c.subject_id for c in found] == [NFC]
    stub.DeleteSubject(pb.SubjectRequest(subject_id=NFD))
    code, _, _ = _refused(lambda: stub.GetSubject(pb.SubjectRequest(subject_id=NFC)))
    assert code is grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("bad,says", [
    pytest.param(" A-001 ", "spaces", id="spaces"),
    pytest.param("A-001\n", "spaces", id="newline"),
    pytest.param("A\x00001", "printable", id="control"),
    pytest.param("", "empty", id="empty"),
])
def test_an_id_that_is_no_id_is_refused_before_extraction(plain_server, orl, bad, says):
    stub = plain_server.stub
    for call in (lambda: stub.Enroll(pb.EnrollRequest(subject_id=bad, samples=[face(orl, 3, 1)])),
                 lambda: stub.Verify(pb.VerifyRequest(subject_id=bad, samples=[face(orl, 3, 1)])),
                 lambda: stub.GetSubject(pb.SubjectRequest(subject_id=bad))):
        code, _, details = _refused(call)
        assert code is grpc.StatusCode.INVALID_ARGUMENT and says in details, details
