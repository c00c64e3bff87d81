"""Two real sites, a field server and a country server (separate data directories and
ports), exchanging signed, encrypted bundles through files, as over a USB stick."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from tambua.v1 import tambua_pb2 as pb
from tests.tambua.test_server import REPO, Server, face, has_subject


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tambua.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def audit_of(site) -> list[dict]:
    """A site's audit entries as ReadAudit shows them: the log keeps pseudonyms, ReadAudit
    the ids of subjects still enrolled."""
    return [{"seq": e.seq, "rpc": e.rpc, "outcome": e.outcome, "subject_ids": list(e.subject_ids), "hash": e.hash}
            for e in site.server.stub.ReadAudit(pb.ReadAuditRequest(), timeout=30).entries]


def ok(*args: str) -> dict:
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def identity(data_dir: Path, site: str, tmp: Path, kek_file: Path | None = None) -> Path:
    f = tmp / f"{site}.identity.json"
    sealed = ["--kek-file", str(kek_file)] if kek_file else []
    f.write_text(json.dumps(ok("sync", "identity", "--data-dir", str(data_dir), "--site-id", site, *sealed)))
    return f


class Site:
    """A running server with a site identity, driven through the CLI as an operator would."""

    def __init__(self, server: Server) -> None:
        self.server = server

    @property
    def stub(self):
        return self.server.stub

    def rpc(self, *args: str) -> subprocess.CompletedProcess:
        return cli(*args[:2], "--address", self.server.address, "--json", *args[2:])

    def export(self, to: str, out: Path, *extra: str) -> dict:
        return self.rpc_json("sync", "export", "--to", to, "--out", str(out), *extra)

    def imports(self, bundle: Path, ack: Path | None = None) -> dict:
        return self.rpc_json("sync", "import", str(bundle), *(["--ack-out", str(ack)] if ack else []))

    def rpc_json(self, *args: str) -> dict:
        r = self.rpc(*args)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def status(self) -> dict:
        return self.rpc_json("sync", "status")

    def enrol(self, sid: str, orl: Path, person: int, shot: int) -> None:
        r = self.stub.Enroll(pb.EnrollRequest(subject_id=sid, samples=[face(orl, person, shot)], force=True), timeout=60)
        assert r.outcome == pb.EnrollResponse.ENROLLED

    def subjects(self) -> int:
        return self.stub.Stats(pb.StatsRequest(), timeout=30).subjects

    def has(self, sid: str) -> bool:
        return has_subject(self.stub, sid)


@pytest.fixture
def sites(tmp_path, orl, models):
    from store.sealing import new_key

    field_dir, country_dir, other_dir = tmp_path / "field", tmp_path / "country", tmp_path / "other"
    kek = new_key().hex()  # the field site encrypts at rest (its site keys too), the country server does not
    (tmp_path / "field.kek").write_text(kek)
    ids = {s: identity(d, s, tmp_path, tmp_path / "field.kek" if s == "field-1" else None) for s, d in
           [("field-1", field_dir), ("country", country_dir), ("other", other_dir)]}
    for data_dir, peers in [(field_dir, ["country", "other"]), (country_dir, ["field-1"])]:
        for peer in peers:
            ok("sync", "peer", "add", str(ids[peer]), "--data-dir", str(data_dir))
    field, country = Site(Server(field_dir, env={"TAMBUA_KEK": kek})), Site(Server(country_dir))
    field.server.start()
    country.server.start()
    yield field, country, tmp_path
    field.server.stop()
    country.server.stop()


def test_disconnected_enrolments_arrive_once_however_often_imported(sites, orl):
    field, country, tmp = sites
    for person in range(1, 6):
        field.enrol(f"F{person}", orl, person, 1)
    assert field.status()["peers"][0]["pending"] == 5
    assert "sealed" in (field.server.data_dir / "site.key").read_text()  # its private keys under the KEK
    b1 = field.export("country", tmp / "b1.tmb")
    assert (b1["first_seq"], b1["last_seq"], b1["changes"]) == (1, 5, 5)
    first = country.imports(tmp / "b1.tmb", tmp / "a1.tmb")
    assert (first["applied"], first["already"], first["flagged"]) == (5, 0, [])
    again = country.imports(tmp / "b1.tmb")
    assert (again["applied"], again["already"]) == (0, 5)
    assert country.subjects() == 5 and all(country.has(f"F{p}") for p in range(1, 6))
    found = country.stub.Identify(pb.IdentifyRequest(samples=[face(orl, 3, 4)]), timeout=60).candidates
    assert found[0].subject_id == "F3"
    audit = {"field": audit_of(field), "country": audit_of(country)}
    exported = [e for e in audit["field"] if e["rpc"] == "SyncExport"]
    imported = [e for e in audit["country"] if e["rpc"] == "SyncImport" and e["outcome"] == "OK"]
    assert exported[0]["subject_ids"] == [f"F{p}" for p in range(1, 6)]  # whose biometrics left the site
    assert imported[0]["subject_ids"] == [f"F{p}" for p in range(1, 6)]
    # The bundle carried the field site's audit head, signed: the country server keeps it, so
    # a field log cut after the export no longer verifies against it.
    head = country.status()["peers"][0]["audit_head"]
    before = [e for e in audit["field"] if e["seq"] < exported[0]["seq"]]
    assert head == f"{before[-1]['seq']}:{before[-1]['hash']}"
    kek = ["--kek-file", str(tmp / "field.kek")]
    field_dir = ["--data-dir", str(field.server.data_dir)]
    assert ok("audit", "verify", *field_dir, *kek, "--head", head, "--json")["ok"]
    cut = tmp / "cut.jsonl"
    lines = (field.server.data_dir / "audit.jsonl").read_text().splitlines(keepends=True)
    cut.write_text("".join(lines[:before[-1]["seq"] - 1]))
    assert cli("audit", "verify", *field_dir, *kek, "--log", str(cut), "--head", head, "--json").returncode == 1
    assert cli("audit", "verify", *field_dir, *kek, "--log", str(cut), "--json").returncode == 0  # alone it looks whole
    acked = field.imports(tmp / "a1.tmb")
    assert acked == {"ack_from": "country", "acked_seq": 5}
    status = field.status()
    assert status["site"] == "field-1" and status["peers"][0]["pending"] == 0 and status["peers"][0]["lag_s"] >= 0
    field.enrol("F6", orl, 6, 1)
    assert field.export("country", tmp / "b2.tmb")["first_seq"] == 6  # only what is new since the ack
    assert country.imports(tmp / "b2.tmb")["applied"] == 1 and country.subjects() == 6
    assert country.status()["peers"][0]["applied_seq"] == 6


def test_a_person_enrolled_at_two_sites_is_flagged_and_deletions_propagate(sites, orl):
    field, country, tmp = sites
    country.enrol("C-7", orl, 7, 1)
    field.enrol("F-7", orl, 7, 3)  # the same person, at the field site, which cannot know
    field.enrol("F-8", orl, 8, 1)
    field.export("country", tmp / "b1.tmb")
    r = country.imports(tmp / "b1.tmb")
    assert r["flagged"] == [{"subject_id": "F-7", "partition": "default", "kind": "CROSS_SITE_DUPLICATE",
                             "site": "field-1", "candidates": ["C-7"]}]
    assert country.has("F-7") and country.has("C-7")  # never dropped, never merged
    assert country.status()["flagged"][0]["candidates"] == ["C-7"]
    field.stub.DeleteSubject(pb.SubjectRequest(subject_id="F-8"), timeout=30)
    field.export("country", tmp / "b2.tmb")  # no ack yet: resends 1-2 with the deletion as 3
    r = country.imports(tmp / "b2.tmb")
    assert (r["applied"], r["already"]) == (1, 2)
    assert not country.has("F-8") and country.has("F-7")
    probe = country.stub.Identify(pb.IdentifyRequest(samples=[face(orl, 8, 2)]), timeout=60).candidates
    assert "F-8" not in [c.subject_id for c in probe]


def test_sync_flags_open_cases_decided_here_and_a_merge_travels_back(sites, orl):
    """A cross-site duplicate and an id conflict each open a case (source sync) in the same
    transaction as the import; "same person" merges the imported subject into the local one
    (an encounter here, a deletion that reaches the field site); two people cannot share an
    id, so the conflict can only be withdrawn."""
    field, country, tmp = sites
    country.enrol("C-7", orl, 7, 1)
    country.enrol("DUP-ID", orl, 9, 1)
    field.enrol("F-7", orl, 7, 3)  # the same person as C-7
    field.enrol("DUP-ID", orl, 10, 1)  # another person under an id the country uses
    field.export("country", tmp / "b1.tmb", )
    flagged = country.imports(tmp / "b1.tmb", tmp / "a1.tmb")["flagged"]
    assert {(f["subject_id"], f["kind"]) for f in flagged} == {("F-7", "CROSS_SITE_DUPLICATE"),
                                                                ("DUP-ID", "ID_CONFLICT")}
    cases = {c.kind: c for c in country.stub.ListCases(pb.ListCasesRequest(), timeout=30).cases}
    dup, conflict = cases["CROSS_SITE_DUPLICATE"], cases["ID_CONFLICT"]
    assert (dup.source, dup.site, dup.subject_id, [c.subject_id for c in dup.candidates]) == \
        ("sync", "field-1", "F-7", ["C-7"])
    assert conflict.candidates[0].subject_id == "DUP-ID" and conflict.candidates[0].fpir > 0.01  # not the same face
    shown = country.stub.GetCase(pb.GetCaseRequest(case_id=dup.case_id), timeout=30)
    assert [t.modality for t in shown.templates] == [pb.FACE]  # the imported subject's capture

    with pytest.raises(grpc.RpcError) as e:
        country.stub.DecideCase(pb.DecideCaseRequest(case_id=conflict.case_id, verdict=pb.DIFFERENT_PEOPLE,
                                                     reason="two people"), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "new id" in e.value.details()
    assert country.stub.DecideCase(pb.DecideCaseRequest(case_id=conflict.case_id, verdict=pb.RECAPTURE,
                                                        reason="re-enrol under a new id at field-1"),
                                   timeout=30).state == pb.CASE_WITHDRAWN
    merged = country.stub.DecideCase(pb.DecideCaseRequest(case_id=dup.case_id, verdict=pb.SAME_PERSON,
                                                          subject_id="C-7", reason="same person"), timeout=60)
    assert merged.decision.subject_id == "C-7" and merged.decision.attached
    assert not country.has("F-7") and country.stub.GetSubject(pb.SubjectRequest(subject_id="C-7"),
                                                               timeout=30).encounters == 1
    assert country.status()["flagged"] == []
    assert country.stub.Identify(pb.IdentifyRequest(samples=[face(orl, 7, 3)]),
                                 timeout=60).candidates[0].subject_id == "C-7"
    # The decisions travel: the field's own cases on the same questions (it flags the
    # country's C-7 and DUP-ID as they arrive) close with them, and the merge is made there
    # the same way, with the same encounter.
    field.imports(tmp / "a1.tmb")
    country.export("field-1", tmp / "c1.tmb")
    assert field.has("F-7")
    report = field.imports(tmp / "c1.tmb")
    assert {f["kind"] for f in report["flagged"]} == {"CROSS_SITE_DUPLICATE", "ID_CONFLICT"}
    assert not field.has("F-7") and field.has("DUP-ID") and field.has("C-7")
    assert field.stub.GetSubject(pb.SubjectRequest(subject_id="C-7"), timeout=30).encounters == 1
    assert list(field.stub.ListCases(pb.ListCasesRequest(), timeout=30).cases) == []
    closed = field.stub.ListCases(pb.ListCasesRequest(state=pb.CASE_DECIDED), timeout=30).cases
    at_field = {c.case_id: c for c in closed}
    assert dup.case_id in at_field  # the country's case itself, decided there
    own = [c for c in closed if c.case_id != dup.case_id]
    assert [(c.kind, c.decision.site, c.decision.decided_in, c.decision.subject_id, c.decision.removed)
            for c in own] == [("CROSS_SITE_DUPLICATE", "country", dup.case_id, "C-7", "F-7")]
    withdrawn = field.stub.ListCases(pb.ListCasesRequest(state=pb.CASE_WITHDRAWN), timeout=30).cases
    assert {c.kind for c in withdrawn} == {"ID_CONFLICT"} and {c.decision.site for c in withdrawn} == {"country"}
    assert field.status()["flagged"] == []
    shown = [c for c in field.rpc_json("cases", "list", "--state", "decided")["cases"] if c["case_id"] != dup.case_id]
    assert [(c["decision"]["site"], c["decision"]["decided_in"], c["decision"]["removed"]) for c in shown] == \
        [("country", dup.case_id, "F-7")]


def _tamper(data: bytes) -> bytes:
    b = bytearray(data)
    b[len(b) // 2] ^= 0x01
    return bytes(b)


def _relabel(data: bytes) -> bytes:
    return data.replace(b'"from":"field-1"', b'"from":"field-9"')  # the same bytes, claimed by another site


def test_bad_bundles_are_refused_with_their_reason_and_change_nothing(sites, orl):
    field, country, tmp = sites
    for person in (11, 12):
        field.enrol(f"F{person}", orl, person, 1)
    field.export("country", tmp / "good.tmb")
    good = (tmp / "good.tmb").read_bytes()
    field.enrol("F13", orl, 13, 1)
    field.export("country", tmp / "later.tmb", "--from-seq", "3")  # a peer that never saw 1-2
    field.export("other", tmp / "for-other.tmb")
    stranger = tmp / "stranger"
    identity(stranger, "field-9", tmp)  # a site the country has never been told about
    cases = {
        "tampered": (_tamper(good), "INVALID_ARGUMENT (BAD_SIGNATURE)"),
        "truncated": (good[: len(good) - 100], "INVALID_ARGUMENT (BAD_SIGNATURE)"),
        "cut-header": (good[:20], "INVALID_ARGUMENT (TRUNCATED)"),
        "gap": ((tmp / "later.tmb").read_bytes(), "FAILED_PRECONDITION (SEQUENCE_GAP)"),
        "wrong-recipient": ((tmp / "for-other.tmb").read_bytes(), "INVALID_ARGUMENT (WRONG_RECIPIENT)"),
        "replayed-as-another-site": (_relabel(good), "INVALID_ARGUMENT (UNKNOWN_SITE)"),
        "not-a-bundle": (b"PK\x03\x04" + bytes(200), "INVALID_ARGUMENT (MALFORMED)"),
    }
    for name, (data, expected) in cases.items():
        f = tmp / f"{name}.tmb"
        f.write_bytes(data)
        r = country.rpc("sync", "import", str(f))
        assert r.returncode == 1 and expected in r.stderr, (name, r.stderr)
        assert country.subjects() == 0, name
    peer = country.status()["peers"][0]
    assert peer["applied_seq"] == 0 and peer["refused"] >= 3 and peer["gaps"] == 1
    assert country.imports(tmp / "good.tmb")["applied"] == 2  # the real one still goes in
    assert country.imports(tmp / "later.tmb")["applied"] == 1 and country.subjects() == 3


def test_online_sync_cut_mid_stream_resumes_and_converges(sites, orl):
    from tambua.push import push
    from tambua.v1 import tambua_pb2_grpc as pb_grpc

    field, country, tmp = sites
    for person in range(20, 27):
        field.enrol(f"F{person}", orl, person, 1)
    seen = []

    def cut_the_link(answer):
        seen.append(answer.last_seq)
        if len(seen) == 2:  # two bundles acknowledged: the country server dies, the link with it
            country.server.kill()
            raise ConnectionError("link lost")

    with pytest.raises(ConnectionError):
        push(field.stub, pb_grpc.MatcherStub(grpc.insecure_channel(country.server.address)), "country",
             batch=2, on_ack=cut_the_link)
    assert seen == [2, 4] and field.status()["peers"][0]["pending"] == 3  # acknowledged what the peer applied
    country.server.start()  # same data directory: everything it acknowledged is on disk
    r = ok("sync", "push", "--address", field.server.address, "--to", "country", "--peer", country.server.address,
           "--batch", "2", "--json")
    # 5-7 again: what the country applied before it died but never acknowledged is skipped
    assert r["applied"] + r["already"] == 3 and r["acked_seq"] == 7
    assert country.subjects() == 7 and all(country.has(f"F{p}") for p in range(20, 27))
    assert field.status()["peers"][0]["pending"] == 0
    again = ok("sync", "push", "--address", field.server.address, "--to", "country", "--peer",
               country.server.address, "--json")
    assert (again["bundles"], again["applied"]) == (0, 0) and country.subjects() == 7
    audit = audit_of(country)
    pushes = [e for e in audit if e["rpc"] == "SyncPush"]
    # Audited when each stream ended, naming whose biometrics it carried. The first stream
    # usually dies with the server (no entry), unless the server got through every bundle
    # before the client's callback killed it.
    assert [(e["outcome"], e["subject_ids"]) for e in pushes[-2:]] == [("OK", ["F24", "F25", "F26"]), ("OK", [])]
    assert len(pushes) == 2 or (len(pushes) == 3 and pushes[0]["subject_ids"] == [f"F{p}" for p in range(20, 27)])


def test_site_keys_are_sealed_under_an_encrypted_store(tmp_path):
    from matcher.errors import KeyMismatch, RecordTampered
    from store.sealing import new_key
    from store.sqlite import SubjectStore
    from sync.site import SiteKeys

    store = SubjectStore(tmp_path / "subjects.sqlite", new_key())
    keys = SiteKeys.create(tmp_path, "camp-7", store)
    text = (tmp_path / "site.key").read_text()
    assert "sealed" in text and SiteKeys._seed(keys._sign).hex() not in text and SiteKeys._seed(keys._box).hex() not in text
    with pytest.raises(KeyMismatch, match="key-encryption key"):
        SiteKeys.load(tmp_path)
    assert SiteKeys.load(tmp_path, store).identity() == keys.identity()
    with pytest.raises(RecordTampered):  # another store's data key does not open it
        SiteKeys.load(tmp_path, SubjectStore(tmp_path / "other.sqlite", new_key()))
    old = tmp_path / "old"  # written in clear before the store had a key: sealed at the next load
    plain = SiteKeys.create(old, "camp-8")
    assert SiteKeys._seed(plain._sign).hex() in (old / "site.key").read_text()
    assert SiteKeys.load(old, store).identity() == plain.identity()
    assert "sealed" in (old / "site.key").read_text() and (old / "site.key").stat().st_mode & 0o777 == 0o600
    assert SiteKeys.load(old, store).identity() == plain.identity()



def test_the_country_server_relays_between_field_sites_and_never_back(tmp_path, orl, models):
    """A person registered at camp A is known at camp B once both have synced with the
    country server; nothing comes back to where it was made, and a deletion travels on."""
    names = ("field-1", "field-2", "country")
    dirs = {s: tmp_path / s for s in names}
    ids = {s: identity(dirs[s], s, tmp_path) for s in names}
    for site, peers in (("field-1", ["country"]), ("field-2", ["country"]), ("country", ["field-1", "field-2"])):
        for peer in peers:
            ok("sync", "peer", "add", str(ids[peer]), "--data-dir", str(dirs[site]))
    a, b, country = (Site(Server(dirs[s])) for s in names)
    for s in (a, b, country):
        s.server.start()
    try:
        a.enrol("A1", orl, 1, 1)
        a.enrol("A2", orl, 2, 1)
        b.enrol("B3", orl, 3, 1)
        a.export("country", tmp_path / "a.tmb")
        assert country.imports(tmp_path / "a.tmb")["applied"] == 2
        b.export("country", tmp_path / "b.tmb")
        assert country.imports(tmp_path / "b.tmb")["applied"] == 1
        relay = country.export("field-2", tmp_path / "c2.tmb")
        assert relay["changes"] == 3  # A1, A2 relayed; B3 sent back as a numbered skip
        got = b.imports(tmp_path / "c2.tmb")
        assert (got["applied"], got["already"], got["flagged"]) == (2, 1, [])
        assert b.has("A1") and b.has("A2") and b.subjects() == 3
        assert b.status()["peers"][0]["pending"] == 1  # B3; A1 and A2 came from there
        found = b.stub.Identify(pb.IdentifyRequest(samples=[face(orl, 1, 4)]), timeout=60).candidates
        assert found[0].subject_id == "A1"  # camp B recognises camp A's person, offline
        country.export("field-1", tmp_path / "c1.tmb")
        back = a.imports(tmp_path / "c1.tmb")
        assert (back["applied"], back["flagged"]) == (1, []) and a.has("B3") and a.subjects() == 3
        # camp B's own log now holds A1 and A2 via the country server: never sent back there
        b.stub.DeleteSubject(pb.SubjectRequest(subject_id="A2"), timeout=30)
        b.export("country", tmp_path / "b2.tmb")
        r = country.imports(tmp_path / "b2.tmb")
        assert (r["applied"], r["flagged"]) == (1, []) and not country.has("A2") and country.has("A1")
        country.export("field-1", tmp_path / "c1b.tmb")
        a.imports(tmp_path / "c1b.tmb")
        assert not a.has("A2") and a.has("A1") and a.has("B3")
        assert all(s.status()["flagged"] == [] for s in (a, b, country))
    finally:
        for s in (a, b, country):
            s.server.stop()
