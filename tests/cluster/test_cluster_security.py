"""Security works unchanged in cluster mode: a front-end over TLS with API keys and roles,
templates and subject ids encrypted at rest in the coordinator's store (the KEK stays a
file on the head node), every call in the keyed audit chain, which verifies."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest

from tests.tambua.test_security import _config, create
from tests.tambua.test_server import REPO, Server, face
from tambua.auth import ROLES
from tambua.devpki import DevCA
from tambua.v1 import tambua_pb2 as pb
from tambua.v1 import tambua_pb2_grpc as pb_grpc


def test_tls_roles_encryption_and_audit_through_a_cluster_front_end(ray_cluster, tmp_path, orl, models):
    data = tmp_path / "data"
    root = create(data, "root", list(ROLES))["api_key"]
    registrar = create(data, "tablet", ["registrar"])["api_key"]
    config = _config(tmp_path, DevCA(tmp_path / "pki"), api_keys=True)
    config.write_text(config.read_text() + f'cluster = "{ray_cluster.address}"\nshards = 2\n')
    front = Server(data, config)
    front.start()
    try:
        channel = front.connect(tmp_path / "pki" / "ca.pem")
        stub = pb_grpc.MatcherStub(channel)
        as_root, as_registrar = ([("authorization", f"Bearer {k}")] for k in (root, registrar))
        stub.Enroll(pb.EnrollRequest(subject_id="CASE-7781", samples=[face(orl, 5, 1)]), metadata=as_root, timeout=60)
        stub.Enroll(pb.EnrollRequest(subject_id="CASE-7782", samples=[face(orl, 6, 1)]), metadata=as_registrar,
                    timeout=60)
        found = stub.Identify(pb.IdentifyRequest(samples=[face(orl, 5, 2)]), metadata=as_registrar, timeout=60)
        assert found.candidates[0].subject_id == "CASE-7781"
        with pytest.raises(grpc.RpcError) as e:
            stub.DeleteSubject(pb.SubjectRequest(subject_id="CASE-7781"), metadata=as_registrar, timeout=30)
        assert e.value.code() is grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as e:
            stub.Stats(pb.StatsRequest(), timeout=30)
        assert e.value.code() is grpc.StatusCode.UNAUTHENTICATED
        entries = stub.ReadAudit(pb.ReadAuditRequest(subject_id="CASE-7781"), metadata=as_root, timeout=30).entries
        assert [x.rpc for x in entries] == ["Enroll", "Identify", "DeleteSubject"]
        assert entries[-1].outcome == "PERMISSION_DENIED"
        channel.close()
    finally:
        front.stop()
    raw = b"".join(p.read_bytes() for p in data.glob("subjects.sqlite*"))
    assert b"CASE-7781" not in raw and b"CASE-7782" not in raw  # ids sealed in the coordinator's store
    r = subprocess.run([sys.executable, "-m", "tambua.cli", "audit", "verify", "--data-dir", str(data), "--kek-file",
                        str(tmp_path / "kek")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
