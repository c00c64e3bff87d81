"""Metrics on an injected registry, from a real in-process server."""

import grpc
import pytest
from prometheus_client import CollectorRegistry

from matcher.engine import Engine
from store.sqlite import SubjectStore
from tambua.config import Config
from tambua.server import create_server
from tambua.v1 import tambua_pb2 as pb
from tambua.v1 import tambua_pb2_grpc as pb_grpc


def test_rpc_stage_rejection_and_gallery_metrics(tmp_path, face_extractor, orl):
    store = SubjectStore(tmp_path / "m.sqlite")
    registry = CollectorRegistry()
    bound = create_server(Config(port=0, metrics_port=-1, insecure=True, data_dir=tmp_path),
                          Engine(store, {"face": face_extractor.model_id}), {"face": face_extractor}, registry)
    server, port = bound.server, bound.port
    server.start()
    try:
        stub = pb_grpc.MatcherStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        sample = pb.Sample(modality=pb.FACE, image=(orl / "s1" / "1.pgm").read_bytes())
        stub.Enroll(pb.EnrollRequest(subject_id="A", samples=[sample]))
        with pytest.raises(grpc.RpcError):
            stub.Enroll(pb.EnrollRequest(subject_id="B", samples=[pb.Sample(modality=pb.FACE, image=b"junk")]))
        get = registry.get_sample_value
        assert get("tambua_rpc_total", {"method": "Enroll", "modality": "face", "code": "OK"}) == 1
        assert get("tambua_rpc_total", {"method": "Enroll", "modality": "face", "code": "INVALID_ARGUMENT"}) == 1
        assert get("tambua_quality_rejections_total", {"reason": "IMAGE_UNDECODABLE"}) == 1
        assert get("tambua_stage_seconds_count", {"stage": "extract", "modality": "face"}) == 1
        assert get("tambua_stage_seconds_count", {"stage": "search", "modality": "face"}) == 1
        assert get("tambua_gallery_templates", {"modality": "face"}) == 1
        assert get("tambua_enrolments_total", {"outcome": "ENROLLED"}) == 1 and get("tambua_subjects") == 1
        assert get("tambua_enrolments_total", {"outcome": "DUPLICATE"}) is None
        stub.Enroll(pb.EnrollRequest(subject_id="C", samples=[sample]))  # A again, under another id
        assert get("tambua_enrolments_total", {"outcome": "DUPLICATE"}) == 1
        assert get("tambua_rpc_seconds_count", {"method": "Enroll", "modality": "face"}) == 3
        assert get("tambua_site_info", {"site": "standalone"}) == 1
    finally:
        server.stop(0)
        store.close()


def test_sync_metrics_show_which_peer_falls_behind(tmp_path, face_extractor):
    from sync.site import Peers, SiteKeys
    from tests.matcher.test_store import _subject

    store = SubjectStore(tmp_path / "m.sqlite")
    peers = Peers(tmp_path)
    for site in ("country", "field-2"):
        peers.add(SiteKeys.create(tmp_path / site, site).identity())
    store.add_many([_subject(f"S{i}", seed=i) for i in range(4)])
    store.note_peer("country", acked_seq=3, last_ack_ms=1_700_000_000_000)
    store.note_peer("field-2", refused=2, gaps=1)
    registry = CollectorRegistry()
    bound = create_server(Config(port=0, metrics_port=-1, insecure=True, data_dir=tmp_path),
                          Engine(store, {"face": face_extractor.model_id}), {"face": face_extractor}, registry)
    server = bound.server
    try:
        get = registry.get_sample_value
        assert get("tambua_sync_pending_changes", {"peer": "country"}) == 1
        assert get("tambua_sync_pending_changes", {"peer": "field-2"}) == 4
        assert get("tambua_sync_last_success_timestamp_seconds", {"peer": "country"}) == 1_700_000_000
        assert get("tambua_sync_refused_bundles", {"peer": "field-2"}) == 2
        assert get("tambua_sync_sequence_gaps", {"peer": "field-2"}) == 1
    finally:
        server.stop(0)
        store.close()
