"""Metrics on an injected registry, from a real in-process server."""

import grpc
import pytest
from prometheus_client import CollectorRegistry

from matcher.engine import Engine
from matcher.store import SubjectStore
from tambua.config import Config
from tambua.server import create_server
from tambua.v1 import tambua_pb2 as pb
from tambua.v1 import tambua_pb2_grpc as pb_grpc


def test_rpc_stage_rejection_and_gallery_metrics(tmp_path, face_extractor, orl):
    store = SubjectStore(tmp_path / "m.sqlite")
    registry = CollectorRegistry()
    server, port, _ = create_server(Config(port=0, metrics_port=-1, insecure=True, data_dir=tmp_path),
                                     Engine(store, {"face": face_extractor}), registry)
    server.start()
    try:
        stub = pb_grpc.MatcherStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        sample = pb.Sample(modality=pb.FACE, image=(orl / "s1" / "1.pgm").read_bytes())
        stub.Enroll(pb.EnrollRequest(subject_id="A", samples=[sample]))
        with pytest.raises(grpc.RpcError):
            stub.Enroll(pb.EnrollRequest(subject_id="B", samples=[pb.Sample(modality=pb.FACE, image=b"junk")]))
        get = registry.get_sample_value
        assert get("tambua_rpc_total", {"method": "Enroll", "code": "OK"}) == 1
        assert get("tambua_rpc_total", {"method": "Enroll", "code": "INVALID_ARGUMENT"}) == 1
        assert get("tambua_quality_rejections_total", {"reason": "IMAGE_UNDECODABLE"}) == 1
        assert get("tambua_stage_seconds_count", {"stage": "extract", "modality": "face"}) == 1
        assert get("tambua_stage_seconds_count", {"stage": "search", "modality": "face"}) == 1
        assert get("tambua_gallery_templates", {"modality": "face"}) == 1
    finally:
        server.stop(0)
        store.close()
