"""Calls refused before any servicer runs (no credentials, an unknown key) are counted by
method, code and reason, and their log lines carry the request id (real in-process TLS
server on an injected registry)."""

from __future__ import annotations

import logging
import os

import grpc
import pytest
from prometheus_client import CollectorRegistry

from matcher.engine import Engine
from store.sealing import load_kek
from store.sqlite import SubjectStore
from tambua.config import Config
from tambua.context import RequestIdFilter
from tambua.devpki import DevCA
from tambua.server import create_server
from tambua.v1 import tambua_pb2 as pb
from tambua.v1 import tambua_pb2_grpc as pb_grpc


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.addFilter(RequestIdFilter())
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.request_id, record.getMessage()))


def test_refused_calls_are_counted_and_logged_with_their_request_id(tmp_path, face_extractor):
    ca = DevCA(tmp_path / "pki")
    cert, key = ca.issue("server", server=True)
    kek = tmp_path / "kek"
    kek.write_text(os.urandom(32).hex())
    store = SubjectStore(tmp_path / "data" / "subjects.sqlite", load_kek(kek))
    registry = CollectorRegistry()
    config = Config(port=0, metrics_port=-1, tls_cert=cert, tls_key=key, kek_file=kek, data_dir=tmp_path / "data")
    bound = create_server(config, Engine(store, {"face": face_extractor.model_id}), {"face": face_extractor}, registry)
    server, port = bound.server, bound.port
    lines = _Lines()
    logging.getLogger("tambua").addHandler(lines)
    server.start()
    try:
        channel = grpc.secure_channel(f"localhost:{port}", grpc.ssl_channel_credentials(ca.ca_pem.read_bytes()))
        stub = pb_grpc.MatcherStub(channel)
        for md in ((("x-request-id", "probe-1"),), (("authorization", "Bearer not-a-key"),),
                   (("authorization", "Bearer guess-2"),)):
            with pytest.raises(grpc.RpcError) as e:
                stub.Stats(pb.StatsRequest(), metadata=md)
            assert e.value.code() is grpc.StatusCode.UNAUTHENTICATED
        get = registry.get_sample_value
        assert get("tambua_rpc_total", {"method": "Stats", "modality": "none", "code": "UNAUTHENTICATED"}) == 3
        reasons = {s.labels["reason"]: s.value for m in registry.collect() if m.name == "tambua_refused"
                   for s in m.samples if s.name == "tambua_refused_total"}
        assert sum(reasons.values()) == 3 and all(r.isupper() for r in reasons), reasons
        assert any(rid == "probe-1" and "refused" in msg for rid, msg in lines.lines), lines.lines
        assert all(rid != "-" for rid, msg in lines.lines if "refused" in msg)
    finally:
        logging.getLogger("tambua").removeHandler(lines)
        server.stop(0)
        store.close()


def test_every_call_is_counted_once_and_logs_its_request_id_through_the_chain(tmp_path, face_extractor):
    """The interceptor chain (request id, call metrics, auth) around the servicer: a call the
    servicer refuses logs its caller's request id and counts once; a streaming call
    (SyncPush) is counted with the status it ended with; no id outlives its call."""
    store = SubjectStore(tmp_path / "subjects.sqlite")
    registry = CollectorRegistry()
    bound = create_server(Config(port=0, metrics_port=-1, insecure=True, data_dir=tmp_path),
                          Engine(store, {"face": face_extractor.model_id}), {"face": face_extractor}, registry)
    lines, logger = _Lines(), logging.getLogger("tambua")
    level = logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)  # "rejected" lines are INFO
    bound.server.start()
    try:
        stub = pb_grpc.MatcherStub(grpc.insecure_channel(f"localhost:{bound.port}"))
        sample = pb.Sample(modality=pb.FACE, image=b"not an image")
        with pytest.raises(grpc.RpcError) as e:
            stub.Enroll(pb.EnrollRequest(subject_id="A-1", samples=[sample]), metadata=(("x-request-id", "probe-2"),))
        assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as e:  # this server has no site identity
            list(stub.SyncPush(iter([pb.SyncImportRequest(data=b"x")]), metadata=(("x-request-id", "push-1"),)))
        assert e.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        get = registry.get_sample_value
        assert get("tambua_rpc_total", {"method": "Enroll", "modality": "face", "code": "INVALID_ARGUMENT"}) == 1
        assert get("tambua_rpc_total", {"method": "SyncPush", "modality": "none", "code": "FAILED_PRECONDITION"}) == 1
        assert get("tambua_rpc_seconds_count", {"method": "SyncPush", "modality": "none"}) == 1
        assert ("probe-2", "Enroll rejected: IMAGE_UNDECODABLE") in lines.lines, lines.lines
        assert any(rid == "push-1" and msg.startswith("SyncPush rejected") for rid, msg in lines.lines), lines.lines
        logger.info("between calls")
        assert lines.lines[-1] == ("-", "between calls")
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
        bound.server.stop(0)
        store.close()
