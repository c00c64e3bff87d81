"""Adjudication over gRPC on real servers with real ORL faces: Enroll with hold opens cases;
adjudicators (and admins) list, read and decide them, nobody else; partition scopes hold;
two adjudicators deciding one case at once get one decision; a server SIGKILLed between a
decision and its reply has applied it whole or not at all; the CLI drives the same."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import grpc
import pytest

from tambua.v1 import tambua_pb2 as pb
from tambua.v1 import tambua_pb2_grpc as pb_grpc
from tests.tambua.test_security import _config, create, keys
from tests.tambua.test_server import REPO, Server, _reason, face, has_subject


def _md(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


@pytest.fixture(scope="module")
def site(tmp_path_factory, orl, models):
    """A TLS server with keys per role; P1..P6 enrolled in the default partition."""
    from tambua.devpki import DevCA

    tmp = tmp_path_factory.mktemp("cases")
    ca = DevCA(tmp / "pki")
    data = tmp / "data"
    registrar = create(data, "tablet 1", ["registrar"])
    s = Server(data, _config(tmp, ca, api_keys=True))
    s.start()
    channel = s.connect(ca.ca_pem)
    stub = pb_grpc.MatcherStub(channel)
    for person in range(1, 7):
        r = stub.Enroll(pb.EnrollRequest(subject_id=f"P{person}", samples=[face(orl, person, 1)]),
                        metadata=_md(registrar["api_key"]), timeout=60)
        assert r.outcome == pb.EnrollResponse.ENROLLED
    yield s, stub, registrar
    channel.close()
    s.stop()


def _hold(stub, key: str, subject_id: str, sample: pb.Sample, partition: str = "") -> pb.EnrollResponse:
    return stub.Enroll(pb.EnrollRequest(subject_id=subject_id, samples=[sample], hold=True, partition=partition),
                       metadata=_md(key), timeout=60)


def test_an_adjudicator_decides_held_duplicates_and_the_store_and_audit_show_it(site, orl):
    server, stub, registrar = site
    adjudicator = create(server.data_dir, "supervisor amina", ["adjudicator"])
    auditor = _md(create(server.data_dir, "inspector", ["auditor"])["api_key"])
    head = stub.ReadAudit(pb.ReadAuditRequest(limit=1), metadata=auditor, timeout=30).head_seq
    same = _hold(stub, registrar["api_key"], "NEW-2", face(orl, 2, 5))
    other = _hold(stub, registrar["api_key"], "NEW-3", face(orl, 3, 5))
    assert same.outcome == other.outcome == pb.EnrollResponse.DUPLICATE and same.case_id and other.case_id
    assert same.candidates[0].subject_id == "P2" and not has_subject_with(stub, registrar, "NEW-2")

    for denied in (registrar["api_key"], create(server.data_dir, "gate 4", ["verifier"])["api_key"]):
        with pytest.raises(grpc.RpcError) as e:
            stub.ListCases(pb.ListCasesRequest(), metadata=_md(denied), timeout=30)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED

    md = _md(adjudicator["api_key"])
    listed = stub.ListCases(pb.ListCasesRequest(), metadata=md, timeout=30)
    mine = [c for c in listed.cases if c.case_id in (same.case_id, other.case_id)]
    assert [c.subject_id for c in mine] == ["NEW-2", "NEW-3"]  # oldest first
    assert listed.open_by_source["enrol"] >= 2 and not any(c.templates for c in listed.cases)
    case = stub.GetCase(pb.GetCaseRequest(case_id=same.case_id), metadata=md, timeout=30)
    assert case.state == pb.CASE_OPEN and case.principal_name == "tablet 1" and case.kind == "DUPLICATE"
    best = case.candidates[0]
    assert best.subject_id == "P2" and best.fpir <= 0.01 and best.samples[0].modality == pb.FACE
    assert [t.modality for t in case.templates] == [pb.FACE]  # the held capture, for review

    with pytest.raises(grpc.RpcError) as e:  # a decision needs a reason
        stub.DecideCase(pb.DecideCaseRequest(case_id=same.case_id, verdict=pb.SAME_PERSON, subject_id="P2"),
                        metadata=md, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and _reason(e.value) == "REASON_REQUIRED"
    decided = stub.DecideCase(pb.DecideCaseRequest(case_id=same.case_id, verdict=pb.SAME_PERSON, subject_id="P2",
                                                   reason="same person, second visit"), metadata=md, timeout=60)
    assert decided.state == pb.CASE_DECIDED and decided.decision.subject_id == "P2" and decided.decision.attached
    different = stub.DecideCase(pb.DecideCaseRequest(case_id=other.case_id, verdict=pb.DIFFERENT_PEOPLE,
                                                     reason="twins: different birth records"),
                                metadata=md, timeout=60)
    assert different.decision.subject_id == "NEW-3"

    reg = _md(registrar["api_key"])
    p2 = stub.GetSubject(pb.SubjectRequest(subject_id="P2"), metadata=reg, timeout=30)
    assert p2.encounters == 1 and not has_subject_with(stub, registrar, "NEW-2")
    new3 = stub.GetSubject(pb.SubjectRequest(subject_id="NEW-3"), metadata=reg, timeout=30)
    assert list(new3.linked_subject_ids) == ["P3"] and new3.encounters == 0
    assert stub.Identify(pb.IdentifyRequest(samples=[face(orl, 3, 5)]), metadata=reg,
                         timeout=60).candidates[0].subject_id == "NEW-3"

    entries = stub.ReadAudit(pb.ReadAuditRequest(after_seq=head), metadata=auditor, timeout=30).entries
    decisions = [(e.principal_name, e.outcome, set(e.subject_ids)) for e in entries if e.rpc == "DecideCase"]
    # The held id NEW-2 was never enrolled: the log keeps its pseudonym, which a question
    # naming it resolves.
    held = {i for i in decisions[1][2] if i.startswith("s:")}
    assert decisions == [("supervisor amina", "INVALID_ARGUMENT", {"P2"}),
                         ("supervisor amina", "OK", {"P2", *held}),
                         ("supervisor amina", "OK", {"P3", "NEW-3"})] and len(held) == 1
    about = stub.ReadAudit(pb.ReadAuditRequest(after_seq=head, subject_id="NEW-2"), metadata=auditor, timeout=30)
    assert [e.rpc for e in about.entries] == ["Enroll", "GetSubject", "ListCases", "GetCase", "DecideCase",
                                              "GetSubject"]
    verify = subprocess.run([sys.executable, "-m", "tambua.cli", "audit", "verify", "--data-dir", str(server.data_dir),
                             "--kek-file", str(server.data_dir.parent / "kek"), "--json"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and json.loads(verify.stdout)["ok"]


def has_subject_with(stub, principal: dict, subject_id: str) -> bool:
    try:
        stub.GetSubject(pb.SubjectRequest(subject_id=subject_id), metadata=_md(principal["api_key"]), timeout=30)
        return True
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND
        return False


def test_a_case_is_not_visible_outside_the_key_s_partitions(site, orl):
    server, stub, _ = site
    a = create(server.data_dir, "registrar A", ["registrar"], ["opA"])["api_key"]
    judge_a = _md(create(server.data_dir, "judge A", ["adjudicator"], ["opA"])["api_key"])
    judge_b = _md(create(server.data_dir, "judge B", ["adjudicator"], ["opB"])["api_key"])
    assert stub.Enroll(pb.EnrollRequest(subject_id="A-1", partition="opA", samples=[face(orl, 9, 1)]),
                       metadata=_md(a), timeout=60).outcome == pb.EnrollResponse.ENROLLED
    case_id = _hold(stub, a, "A-2", face(orl, 9, 4), partition="opA").case_id
    assert [c.case_id for c in stub.ListCases(pb.ListCasesRequest(partition="opA"), metadata=judge_a,
                                              timeout=30).cases] == [case_id]
    with pytest.raises(grpc.RpcError) as e:
        stub.ListCases(pb.ListCasesRequest(partition="opA"), metadata=judge_b, timeout=30)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert not stub.ListCases(pb.ListCasesRequest(partition="opB"), metadata=judge_b, timeout=30).cases
    for request in (pb.GetCaseRequest(case_id=case_id, partition="opB"),
                    pb.DecideCaseRequest(case_id=case_id, partition="opB", verdict=pb.RECAPTURE, reason="x")):
        with pytest.raises(grpc.RpcError) as e:
            getattr(stub, type(request).__name__.removesuffix("Request"))(request, metadata=judge_b, timeout=30)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND and "opA" not in e.value.details()


def test_two_adjudicators_deciding_one_case_at_once_get_one_decision(site, orl):
    server, stub, registrar = site
    case_id = _hold(stub, registrar["api_key"], "NEW-4", face(orl, 4, 6)).case_id
    judges = [_md(create(server.data_dir, f"judge {i}", ["adjudicator"])["api_key"]) for i in range(2)]
    barrier, outcomes = threading.Barrier(2), []

    def decide(md, verdict) -> None:
        barrier.wait()
        try:
            r = stub.DecideCase(pb.DecideCaseRequest(case_id=case_id, verdict=verdict, subject_id="P4",
                                                     reason="looked at both"), metadata=md, timeout=60)
            outcomes.append(("OK", r.decision.principal_name))
        except grpc.RpcError as e:
            outcomes.append((e.code().name, _reason(e), e.details()))

    threads = [threading.Thread(target=decide, args=(judges[0], pb.SAME_PERSON)),
               threading.Thread(target=decide, args=(judges[1], pb.DIFFERENT_PEOPLE))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [o for o in outcomes if o[0] == "OK"]
    refused = [o for o in outcomes if o[0] != "OK"]
    assert len(ok) == 1 and len(refused) == 1
    assert refused[0][:2] == ("FAILED_PRECONDITION", "CASE_DECIDED") and ok[0][1] in refused[0][2]
    enrolled = has_subject_with(stub, registrar, "NEW-4")
    assert enrolled == (ok[0][1] == "judge 1")  # DIFFERENT_PEOPLE enrols, SAME_PERSON attaches


def test_a_decision_killed_before_its_reply_is_applied_whole_or_not_at_all(tmp_path, orl, models):
    server = Server(tmp_path / "data")
    server.start()
    try:
        assert server.stub.Enroll(pb.EnrollRequest(subject_id="P1", samples=[face(orl, 1, 1)]),
                                  timeout=60).outcome == pb.EnrollResponse.ENROLLED
        seen = set()
        for i, delay in enumerate((0.0, 0.003, 0.02, 0.2)):
            case_id = server.stub.Enroll(pb.EnrollRequest(subject_id=f"N{i}", samples=[face(orl, 1, 2 + i)],
                                                          hold=True), timeout=60).case_id
            assert case_id
            call = server.stub.DecideCase.future(pb.DecideCaseRequest(
                case_id=case_id, verdict=pb.DIFFERENT_PEOPLE, reason="checked"), timeout=60)
            time.sleep(delay)
            server.kill()
            server.start()
            case = server.stub.GetCase(pb.GetCaseRequest(case_id=case_id), timeout=30)
            enrolled = has_subject(server.stub, f"N{i}")
            assert enrolled == (case.state == pb.CASE_DECIDED), (delay, case.state)
            seen.add(enrolled)
            if not enrolled:  # not applied at all: it can be decided now, once
                server.stub.DecideCase(pb.DecideCaseRequest(case_id=case_id, verdict=pb.DIFFERENT_PEOPLE,
                                                            reason="checked"), timeout=60)
                assert has_subject(server.stub, f"N{i}")
            del call
        # The held capture is gone with each decision: a fifth photo is a duplicate of enrolled ones.
        r = server.stub.Enroll(pb.EnrollRequest(subject_id="N9", samples=[face(orl, 1, 9)], hold=True), timeout=60)
        assert r.outcome == pb.EnrollResponse.DUPLICATE and r.candidates
    finally:
        server.stop()


def test_the_cli_holds_lists_shows_and_decides(plain_server, orl):
    address = plain_server.address
    image = lambda person, shot: str(orl / f"s{person}" / f"{shot}.pgm")  # noqa: E731

    def cli(*args: str) -> dict:
        r = subprocess.run([sys.executable, "-m", "tambua.cli", *args, "--address", address, "--json"],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    assert cli("enroll", "--subject", "C1", "--face", image(12, 1))["outcome"] == "ENROLLED"
    held = cli("enroll", "--subject", "C2", "--face", image(12, 2), "--hold")
    assert held["outcome"] == "DUPLICATE" and held["case_id"]
    listed = cli("cases", "list")
    assert [c["case_id"] for c in listed["cases"]] == [held["case_id"]] and listed["open_by_source"] == {"enrol": 1}
    shown = cli("cases", "show", held["case_id"])
    assert shown["candidates"][0]["subject_id"] == "C1" and shown["templates"][0]["modality"] == "face"
    assert "data" not in json.dumps(shown["templates"])  # what the templates are, never their bytes
    human = subprocess.run([sys.executable, "-m", "tambua.cli", "cases", "show", held["case_id"], "--address",
                            address], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert human.returncode == 0 and f"{held['case_id']}  open" in human.stdout and "  C1: score" in human.stdout
    decided = cli("cases", "decide", held["case_id"], "--same", "C1", "--reason", "same person")
    assert decided["state"] == "decided" and decided["decision"]["subject_id"] == "C1"
    r = subprocess.run([sys.executable, "-m", "tambua.cli", "cases", "decide", held["case_id"], "--recapture",
                        "--reason", "again", "--address", address], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and "FAILED_PRECONDITION (CASE_DECIDED)" in r.stderr and "decided by" in r.stderr
    assert cli("cases", "list", "--state", "any")["cases"][0]["state"] == "decided"


_ = keys  # the key helper the fixtures above build on
