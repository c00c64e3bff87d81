"""The generated stubs exist (make setup ran protoc) and the API has the RPCs of issue 4 (and
later issues': sync, adjudication)."""

from tambua.v1 import tambua_pb2, tambua_pb2_grpc


def test_matcher_service_rpcs():
    service = tambua_pb2.DESCRIPTOR.services_by_name["Matcher"]
    assert {m.name for m in service.methods} == {
        "Enroll", "Identify", "Verify", "Compare", "Extract", "GetSubject", "DeleteSubject", "Stats", "ReadAudit",
        "SyncExport", "SyncImport", "SyncStatus", "SyncPush", "ListCases", "GetCase", "DecideCase", "AuditDuplicates",
        "QualityReport", "ExportSubject", "RunAudit", "Doctor",
    }
    assert hasattr(tambua_pb2_grpc, "MatcherServicer")


def test_sample_carries_image_or_template():
    s = tambua_pb2.Sample(modality=tambua_pb2.FACE, image=b"\x89PNG")
    assert s.WhichOneof("data") == "image"
    s.template = b"TMBT"
    assert s.WhichOneof("data") == "template"
    assert tambua_pb2.EnrollResponse.DUPLICATE != tambua_pb2.EnrollResponse.ENROLLED
