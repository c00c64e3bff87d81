"""Authentication and roles over a real TLS `tambua serve`: every role against every RPC,
revocation, partition scopes, mutual TLS, and refusal without credentials."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from tambua.auth import ROLES, RULES
from tambua.v1 import tambua_pb2 as pb
from tambua.v1 import tambua_pb2_grpc as pb_grpc
from tambua.devpki import DevCA
from tests.tambua.test_server import REPO, Server, _reason, face


def keys(data_dir: Path, *args: str) -> dict:
    """``tambua keys`` on ``data_dir``, with the KEK the server beside it gets (``_config``)."""
    kek = data_dir.parent / "kek"
    if not kek.exists():
        kek.write_text(os.urandom(32).hex())
    r = subprocess.run([sys.executable, "-m", "tambua.cli", "keys", "--data-dir", str(data_dir), "--kek-file",
                        str(kek), "--json", *args], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def create(data_dir: Path, name: str, roles: list[str], partitions: list[str] = (), cert: Path | None = None) -> dict:
    args = ["create", "--name", name]
    for role in roles:
        args += ["--role", role]
    for p in partitions:
        args += ["--partition", p]
    if cert:
        args += ["--cert", str(cert)]
    return keys(data_dir, *args)


def _config(tmp: Path, ca: DevCA, api_keys: bool) -> Path:
    cert, key = ca.issue("server", server=True)
    kek = tmp / "kek"
    if not kek.exists():
        kek.write_text(os.urandom(32).hex())
    f = tmp / f"tambua-{api_keys}.toml"
    f.write_text(f'tls_cert = "{cert}"\ntls_key = "{key}"\nclient_ca = "{ca.ca_pem}"\n'
                 f'api_keys = {str(api_keys).lower()}\nkek_file = "{kek}"\nmtls_port = 0\n')
    return f


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return DevCA(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, pki, orl, models):
    tmp = tmp_path_factory.mktemp("tls")
    data = tmp / "data"
    root = create(data, "root", list(ROLES))["api_key"]
    s = Server(data, _config(tmp, pki, api_keys=True))
    s.start()
    channel = s.connect(pki.ca_pem)
    stub = pb_grpc.MatcherStub(channel)
    md = [("authorization", f"Bearer {root}")]
    for person in (1, 2):
        stub.Enroll(pb.EnrollRequest(subject_id=f"S{person}", samples=[face(orl, person, 1)]), metadata=md, timeout=60)
    yield s, stub
    channel.close()
    s.stop()


def _requests(orl, role: str) -> dict[str, tuple[str, object]]:
    """One request per RPC (and enrol-anyway), touching subjects of this role only."""
    return {
        "Enroll": ("Enroll", pb.EnrollRequest(subject_id=f"new-{role}", samples=[face(orl, 10, 1)])),
        "Enroll force": ("Enroll", pb.EnrollRequest(subject_id=f"forced-{role}", samples=[face(orl, 1, 2)],
                                                    force=True, adjudicated_candidates=["S1"])),
        "Identify": ("Identify", pb.IdentifyRequest(samples=[face(orl, 2, 3)])),
        "Extract": ("Extract", pb.ExtractRequest(samples=[face(orl, 3, 1)])),
        "GetSubject": ("GetSubject", pb.SubjectRequest(subject_id="S1")),
        "Verify": ("Verify", pb.VerifyRequest(subject_id="S2", samples=[face(orl, 2, 5)])),
        "Compare": ("Compare", pb.CompareRequest(a=face(orl, 4, 1), b=face(orl, 4, 2))),
        "DeleteSubject": ("DeleteSubject", pb.SubjectRequest(subject_id=f"forced-{role}")),
        "Stats": ("Stats", pb.StatsRequest()),
        "ReadAudit": ("ReadAudit", pb.ReadAuditRequest(limit=5)),
        "SyncStatus": ("SyncStatus", pb.SyncStatusRequest()),
        "ListCases": ("ListCases", pb.ListCasesRequest()),
        "AuditDuplicates": ("AuditDuplicates", pb.AuditDuplicatesRequest()),
        "QualityReport": ("QualityReport", pb.QualityReportRequest()),
        "RunAudit": ("RunAudit", pb.AuditDuplicatesRequest()),
        "ExportSubject": ("ExportSubject", pb.SubjectRequest(subject_id="S1")),
        "Doctor": ("Doctor", pb.DoctorRequest()),
        "Enroll skip_dedup": ("Enroll", pb.EnrollRequest(subject_id=f"loaded-{role}", samples=[face(orl, 11, 1)],
                                                         skip_dedup=True)),
    }


# The issue's table, written out here rather than read from tambua.auth.RULES, so that a
# wrong rule fails this test instead of redefining it.
ALLOWED = {
    "registrar": {"Enroll", "Identify", "Extract", "GetSubject"},
    "verifier": {"Verify", "Compare"},
    "adjudicator": {"Enroll force", "DeleteSubject", "GetSubject", "ListCases", "GetCase", "DecideCase"},
    "auditor": {"ReadAudit"},
    "admin": {"Stats", "SyncStatus", "SyncExport", "SyncImport", "SyncPush", "ListCases", "GetCase", "DecideCase",
              "AuditDuplicates", "RunAudit", "QualityReport", "ExportSubject", "Doctor", "Enroll skip_dedup"},
}


def test_the_rule_table_is_the_documented_one():
    assert set(ALLOWED) == set(ROLES)
    for method, roles in RULES.items():
        assert roles == {r for r, calls in ALLOWED.items() if method in calls}, method


def _allowed(role: str, call: str) -> bool:
    return call in ALLOWED[role]


@pytest.mark.parametrize("role", ROLES)
def test_each_role_gets_exactly_its_rpcs(tls_server, orl, role):
    server, stub = tls_server
    key = create(server.data_dir, f"{role}-device", [role])["api_key"]
    md = [("authorization", f"Bearer {key}")]
    outcome = {}
    for call, (method, request) in _requests(orl, role).items():
        try:
            answer = getattr(stub, method)(request, metadata=md, timeout=60)
            if method == "RunAudit":  # a stream: its status comes as it is read
                list(answer)
            outcome[call] = "OK"
        except grpc.RpcError as e:
            outcome[call] = e.code().name
            if e.code() == grpc.StatusCode.PERMISSION_DENIED:
                assert _reason(e) == "PERMISSION_DENIED" and role in e.details()
    expected = {call: "OK" if _allowed(role, call) else "PERMISSION_DENIED" for call in outcome}
    if role == "adjudicator":  # deletes the subject it enrolled anyway, in the same order as above
        assert outcome["DeleteSubject"] == "OK"
    assert outcome == expected


def test_what_a_verifier_learns_is_about_the_claimed_subject_only(tls_server, orl):
    server, stub = tls_server
    md = [("authorization", f"Bearer {create(server.data_dir, 'distribution point 7', ['verifier'])['api_key']}")]
    r = stub.Verify(pb.VerifyRequest(subject_id="S1", samples=[face(orl, 2, 4)]), metadata=md, timeout=60)
    assert not r.match and "S2" not in str(r)  # someone else's face: no hint of who it is


def test_a_revoked_key_stops_at_once_and_unknown_credentials_are_refused(tls_server, orl):
    server, stub = tls_server
    created = create(server.data_dir, "tablet 3", ["registrar"])
    md = [("authorization", f"Bearer {created['api_key']}")]
    stub.Extract(pb.ExtractRequest(samples=[face(orl, 5, 1)]), metadata=md, timeout=60)
    listed = keys(server.data_dir, "list")["principals"]
    assert [p for p in listed if p["id"] == created["id"]][0]["revoked_unix_ms"] is None
    assert "api_key" not in json.dumps(listed) and created["api_key"] not in json.dumps(listed)
    keys(server.data_dir, "revoke", created["id"])
    for metadata, reason in [(md, "revoked"), (None, "no credentials"),
                             ([("authorization", "Bearer " + created["api_key"][:-2] + "xx")], "unknown"),
                             ([("authorization", "Bearer tmb_nothing")], "unknown")]:
        with pytest.raises(grpc.RpcError) as e:
            stub.Extract(pb.ExtractRequest(samples=[face(orl, 5, 1)]), metadata=metadata, timeout=60)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED and reason in e.value.details()


def test_a_partition_scoped_key_cannot_see_or_write_another_partition(tls_server, orl):
    server, stub = tls_server
    a = [("authorization", f"Bearer {create(server.data_dir, 'operation A', ['registrar'], ['opA'])['api_key']}")]
    b = [("authorization", f"Bearer {create(server.data_dir, 'operation B', ['registrar'], ['opB'])['api_key']}")]
    r = stub.Enroll(pb.EnrollRequest(subject_id="A-1", partition="opA", samples=[face(orl, 6, 1)]),
                    metadata=a, timeout=60)
    assert r.outcome == pb.EnrollResponse.ENROLLED
    assert stub.Identify(pb.IdentifyRequest(partition="opA", samples=[face(orl, 6, 2)]), metadata=a,
                         timeout=60).candidates[0].subject_id == "A-1"
    for request, method in [(pb.IdentifyRequest(partition="opA", samples=[face(orl, 6, 2)]), "Identify"),
                            (pb.SubjectRequest(subject_id="A-1", partition="opA"), "GetSubject"),
                            (pb.EnrollRequest(subject_id="B-9", partition="opA", samples=[face(orl, 7, 1)]), "Enroll"),
                            (pb.IdentifyRequest(samples=[face(orl, 6, 2)]), "Identify")]:  # the default partition
        with pytest.raises(grpc.RpcError) as e:
            getattr(stub, method)(request, metadata=b, timeout=60)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and "partition" in e.value.details()
    assert not stub.Identify(pb.IdentifyRequest(partition="opB", samples=[face(orl, 6, 2)]), metadata=b,
                             timeout=60).candidates


def test_mutual_tls_only_server_refuses_callers_without_a_registered_certificate(tmp_path, pki, orl, models):
    data = tmp_path / "data"
    verifier_cert, verifier_key = pki.issue("verifier-device")
    stranger_cert, stranger_key = pki.issue("stranger")  # issued by the CA, never registered
    rogue = DevCA(tmp_path / "rogue", "Rogue CA")
    rogue_cert, rogue_key = rogue.issue("rogue-device")
    registered = create(data, "distribution point 1", ["verifier"], cert=verifier_cert)
    assert registered["id"].startswith("sha256:") and "api_key" not in registered
    s = Server(data, _config(tmp_path, pki, api_keys=False))
    s.start()
    try:
        request = pb.CompareRequest(a=face(orl, 4, 1), b=face(orl, 4, 2))
        with s.connect(pki.ca_pem, verifier_cert, verifier_key) as ch:
            stub = pb_grpc.MatcherStub(ch)
            assert stub.Compare(request, timeout=60).score > 0
            with pytest.raises(grpc.RpcError) as e:
                stub.Identify(pb.IdentifyRequest(samples=[face(orl, 4, 1)]), timeout=60)
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        for cert, key in [(None, None), (rogue_cert, rogue_key)]:  # no certificate / another CA's: no handshake
            with s.connect(pki.ca_pem, cert, key) as ch, pytest.raises(grpc.RpcError) as e:
                pb_grpc.MatcherStub(ch).Compare(request, timeout=20)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        with s.connect(pki.ca_pem, stranger_cert, stranger_key) as ch, pytest.raises(grpc.RpcError) as e:
            pb_grpc.MatcherStub(ch).Compare(request, timeout=20)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED and "not registered" in e.value.details()
        keys(data, "revoke", registered["id"])
        with s.connect(pki.ca_pem, verifier_cert, verifier_key) as ch, pytest.raises(grpc.RpcError) as e:
            pb_grpc.MatcherStub(ch).Compare(request, timeout=20)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        s.stop()


def test_mixed_mode_takes_api_keys_on_one_port_and_client_certificates_on_the_other(tls_server, pki, orl):
    server, _ = tls_server
    cert, key = pki.issue("distribution point 7")
    registered = create(server.data_dir, "distribution point 7", ["verifier"], cert=cert)
    request = pb.CompareRequest(a=face(orl, 4, 1), b=face(orl, 4, 2))
    assert server.mtls_address, "a mixed-mode server names its client-certificate port"
    with server.connect(pki.ca_pem, cert, key, address=server.mtls_address) as ch:
        assert pb_grpc.MatcherStub(ch).Compare(request, timeout=60).score > 0
    # The API-key port cannot ask for a certificate (grpcio requests one only by requiring
    # it): a certificate holder there is told where to go.
    with server.connect(pki.ca_pem, cert, key) as ch, pytest.raises(grpc.RpcError) as e:
        pb_grpc.MatcherStub(ch).Compare(request, timeout=20)
    port = server.mtls_address.rsplit(":", 1)[1]
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED and f"port {port}" in e.value.details()
    with server.connect(pki.ca_pem, address=server.mtls_address) as ch, pytest.raises(grpc.RpcError) as e:
        pb_grpc.MatcherStub(ch).Compare(request, timeout=20)  # no certificate: no handshake there
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    keys(server.data_dir, "revoke", registered["id"])
    with server.connect(pki.ca_pem, cert, key, address=server.mtls_address) as ch, \
            pytest.raises(grpc.RpcError) as e:
        pb_grpc.MatcherStub(ch).Compare(request, timeout=20)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_plain_text_clients_cannot_talk_to_a_tls_server(tls_server, orl):
    server, _ = tls_server
    with grpc.insecure_channel(f"localhost:{server.address.rsplit(':', 1)[1]}") as ch, pytest.raises(grpc.RpcError) as e:
        pb_grpc.MatcherStub(ch).Stats(pb.StatsRequest(), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_server_without_tls_settings_refuses_to_start(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tambua.cli", "serve", "--port", "0", "--metrics-port", "-1",
                        "--data-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 2 and "tls_cert" in r.stderr and "insecure" in r.stderr


def test_every_call_is_audited_with_who_what_and_which_subjects(tls_server, orl):
    server, stub = tls_server
    registrar = create(server.data_dir, "tablet 9", ["registrar"])
    auditor = [("authorization", f"Bearer {create(server.data_dir, 'inspector', ['auditor'])['api_key']}")]
    md = [("authorization", f"Bearer {registrar['api_key']}")]
    head = stub.ReadAudit(pb.ReadAuditRequest(limit=1), metadata=auditor, timeout=30).head_seq
    found = stub.Identify(pb.IdentifyRequest(samples=[face(orl, 1, 4)]), metadata=md, timeout=60).candidates
    with pytest.raises(grpc.RpcError):
        stub.DeleteSubject(pb.SubjectRequest(subject_id="S1"), metadata=md, timeout=30)
    with pytest.raises(grpc.RpcError):
        stub.ReadAudit(pb.ReadAuditRequest(), metadata=md, timeout=30)  # registrars do not read the log
    with pytest.raises(grpc.RpcError):
        stub.GetSubject(pb.SubjectRequest(subject_id="nobody"), metadata=md, timeout=30)
    r = stub.ReadAudit(pb.ReadAuditRequest(after_seq=head), metadata=auditor, timeout=30)
    mine = [(e.rpc, e.outcome, list(e.subject_ids), e.partition) for e in r.entries if e.principal_id == registrar["id"]]
    assert mine == [("Identify", "OK", [c.subject_id for c in found], "default"),
                    ("DeleteSubject", "PERMISSION_DENIED", ["S1"], "default"),
                    ("ReadAudit", "PERMISSION_DENIED", [], ""),
                    ("GetSubject", "NOT_FOUND", [mine[3][2][0]], "default")]
    # Someone never enrolled is kept as a pseudonym, which only a question naming them resolves.
    assert mine[3][2][0].startswith("s:") and "nobody" not in (server.data_dir / "audit.jsonl").read_text()
    about = stub.ReadAudit(pb.ReadAuditRequest(after_seq=head, subject_id="nobody"), metadata=auditor, timeout=30)
    assert [(e.rpc, list(e.subject_ids)) for e in about.entries] == [("GetSubject", ["nobody"])]
    assert found and found[0].subject_id == "S1"
    assert all(e.principal_name for e in r.entries) and r.head_seq >= r.entries[-1].seq
    text = (server.data_dir / "audit.jsonl").read_text()
    assert "score" not in text and "template" not in text  # who, what, which: no biometric content
    keys_cli = subprocess.run([sys.executable, "-m", "tambua.cli", "audit", "verify", "--data-dir",
                               str(server.data_dir), "--kek-file", str(server.data_dir.parent / "kek"), "--json"],
                              cwd=REPO, capture_output=True, text=True, timeout=60)
    assert keys_cli.returncode == 0 and json.loads(keys_cli.stdout)["ok"]


def test_a_sync_stream_is_refused_to_other_roles_and_audited_with_its_outcome(tls_server):
    server, stub = tls_server
    outcomes = []
    for name, role in (("tablet 9", "registrar"), ("sync robot", "admin")):
        md = [("authorization", f"Bearer {create(server.data_dir, name, [role])['api_key']}")]
        with pytest.raises(grpc.RpcError) as e:  # not a bundle: the admin gets past the door, not further
            list(stub.SyncPush(iter([pb.SyncImportRequest(data=b"not a bundle")]), metadata=md, timeout=60))
        outcomes.append(e.value.code().name)
    assert outcomes[0] == "PERMISSION_DENIED" and outcomes[1] not in ("PERMISSION_DENIED", "OK", "INTERNAL")
    audit = [json.loads(line) for line in (server.data_dir / "audit.jsonl").read_text().splitlines()]
    assert [e["outcome"] for e in audit if e["rpc"] == "SyncPush"] == outcomes  # one entry a stream, as it ended


def test_the_database_files_hold_no_template_in_clear(tls_server, orl):
    server, stub = tls_server
    md = [("authorization", f"Bearer {create(server.data_dir, 'records officer', ['registrar'])['api_key']}")]
    stored = stub.GetSubject(pb.SubjectRequest(subject_id="S2"), metadata=md, timeout=30).templates[0].data
    raw = b"".join(p.read_bytes() for p in server.data_dir.glob("subjects.sqlite*"))
    assert len(stored) > 100 and stored[-64:] not in raw and stored[:64] not in raw


def test_dev_certs_writes_a_ca_that_verifies_its_certificates(tmp_path):
    from cryptography import x509

    r = subprocess.run([sys.executable, "-m", "tambua.cli", "dev-certs", "--out", str(tmp_path), "--client", "tablet"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    for name in ("server", "tablet"):
        cert = x509.load_pem_x509_certificate((tmp_path / f"{name}.pem").read_bytes())
        cert.verify_directly_issued_by(ca)  # raises if the CA did not sign it
        assert (tmp_path / f"{name}.key").stat().st_size > 0


def test_a_role_granted_by_editing_access_sqlite_is_refused(tls_server):
    server, stub = tls_server
    created = create(server.data_dir, "distribution point 9", ["verifier"])
    md = [("authorization", f"Bearer {created['api_key']}")]
    with pytest.raises(grpc.RpcError) as e:
        stub.Stats(pb.StatsRequest(), metadata=md, timeout=60)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    db = sqlite3.connect(server.data_dir / "access.sqlite")  # write access to the file, no KEK
    db.execute("UPDATE principals SET roles = 'admin,verifier' WHERE id = ?", (created["id"],))
    db.commit()
    db.close()
    with pytest.raises(grpc.RpcError) as e:
        stub.Stats(pb.StatsRequest(), metadata=md, timeout=60)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    listed = {p["id"]: p for p in keys(server.data_dir, "list")["principals"]}
    assert listed[created["id"]]["authentic"] is False
    env = {k: v for k, v in os.environ.items() if k != "TAMBUA_KEK"}
    r = subprocess.run([sys.executable, "-m", "tambua.cli", "keys", "--data-dir", str(server.data_dir), "list"],
                       cwd=REPO, capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 1 and "key-encryption key" in r.stderr


def test_grants_and_revocations_on_the_host_are_in_the_server_s_audit_chain(tls_server, orl):
    server, stub = tls_server
    created = create(server.data_dir, "tablet 7", ["registrar"])
    md = [("authorization", f"Bearer {created['api_key']}")]
    stub.Extract(pb.ExtractRequest(samples=[face(orl, 6, 1)]), metadata=md, timeout=60)
    keys(server.data_dir, "revoke", created["id"])
    with pytest.raises(grpc.RpcError):
        stub.Extract(pb.ExtractRequest(samples=[face(orl, 6, 1)]), metadata=md, timeout=60)
    lines = [json.loads(x) for x in (server.data_dir / "audit.jsonl").read_text().splitlines()]
    mine = [e for e in lines if created["id"] in e["rpc"] or e["principal_id"] == created["id"]]
    assert [(e["rpc"].split(" (")[0], e["outcome"]) for e in mine] == [
        (f"keys create {created['id']}", "OK"), ("Extract", "OK"), (f"keys revoke {created['id']}", "OK")]
    assert mine[0]["principal_id"].startswith("host:") and "roles registrar; partitions *" in mine[0]["rpc"]
    r = subprocess.run([sys.executable, "-m", "tambua.cli", "audit", "verify", "--data-dir", str(server.data_dir),
                        "--kek-file", str(server.data_dir.parent / "kek"), "--json"], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout)["ok"]
