"""`tambua import` against real servers with real images of ../shared/data: the counts
match the manifest, a second run enrols nothing new, a run killed halfway and run again
leaves the store a clean run leaves, and corrupt records are reported with their reasons
and stored nowhere."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tambua.v1 import tambua_pb2 as pb
from tests.tambua.test_server import REPO, Server, has_subject


def write_manifest(folder: Path, rows: list[dict]) -> Path:
    """A CSV manifest in ``folder`` (a test helper: real images linked in, never copied)."""
    f = folder / "manifest.csv"
    with open(f, "w", newline="") as out:
        w = csv.DictWriter(out, ["subject_id", "partition", "modality", "position", "path", "camp"])
        w.writeheader()
        w.writerows(rows)
    return f


def link(folder: Path, src: Path, name: str) -> str:
    (folder / name).symlink_to(src)
    return name


def people(folder: Path, orl: Path, fingerprints: Path, irises: Path, n_full: int, n_faces: int) -> list[dict]:
    """``n_full`` subjects with a face, a finger and a left iris, then ``n_faces`` with a face only."""
    rows = []
    for i in range(1, n_full + n_faces + 1):
        sid = f"L-{i:03d}"
        rows.append({"subject_id": sid, "modality": "face", "camp": "kakuma",
                     "path": link(folder, orl / f"s{i}" / "1.pgm", f"{sid}-face.pgm")})
        if i <= n_full:
            finger = fingerprints / "fvc2000_db1_b" / str(100 + i) / f"{100 + i}_1.tif"
            eye = sorted((irises / "casia_v1" / f"{i:03d}").iterdir())[0]
            rows.append({"subject_id": sid, "modality": "finger", "position": "2", "camp": "kakuma",
                         "path": link(folder, finger, f"{sid}-f2.tif")})
            rows.append({"subject_id": sid, "modality": "iris", "position": "left", "camp": "kakuma",
                         "path": link(folder, eye, f"{sid}-l.bmp")})
    return rows


def run_import(address: str, manifest: Path, *extra: str) -> tuple[int, dict]:
    r = subprocess.run([sys.executable, "-m", "tambua.cli", "import", "--address", address, "--manifest",
                        str(manifest), "--json", *extra], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode in (0, 1), r.stderr
    return r.returncode, json.loads(r.stdout)


def stored(stub, ids) -> dict[str, list[tuple[int, int, str]]]:
    """What the server holds for each id: its templates (modality, position, model)."""
    out = {}
    for sid in ids:
        if has_subject(stub, sid):
            s = stub.GetSubject(pb.SubjectRequest(subject_id=sid), timeout=30)
            out[sid] = sorted((t.modality, t.position, t.model_id) for t in s.templates)
    return out


def test_import_counts_reports_and_never_enrols_twice(tmp_path, orl, fingerprints, irises, models):
    folder = tmp_path / "legacy"
    folder.mkdir()
    rows = people(folder, orl, fingerprints, irises, 4, 6)
    good = sorted({r["subject_id"] for r in rows})
    # Corrupt records: each is refused with its reason and stored nowhere.
    (folder / "cut.pgm").write_bytes((orl / "s20" / "1.pgm").read_bytes()[:300])  # a truncated image
    rows += [
        {"subject_id": "X-CUT", "modality": "face", "path": "cut.pgm"},
        {"subject_id": "X-PALM", "modality": "palm", "path": link(folder, orl / "s21" / "1.pgm", "palm.pgm")},
        {"subject_id": "X-POS", "modality": "finger", "position": "11",
         "path": link(folder, fingerprints / "fvc2000_db1_b" / "110" / "110_1.tif", "pos.tif")},
        {"subject_id": "X-GONE", "modality": "face", "path": "no-such-photo.jpg"},
        {"subject_id": "X-NOFACE", "modality": "face",
         "path": link(folder, fingerprints / "fvc2000_db1_b" / "109" / "109_1.tif", "noface.tif")},
        # A good face with a bad line: the subject fails whole, nothing half-written.
        {"subject_id": "X-HALF", "modality": "face", "path": link(folder, orl / "s22" / "1.pgm", "half.pgm")},
        {"subject_id": "X-HALF", "modality": "iris", "position": "middle", "path": "half.pgm"},
    ]
    manifest = write_manifest(folder, rows)
    server = Server(tmp_path / "data")
    server.start()
    try:
        rc, first = run_import(server.address, manifest, "--report", str(tmp_path / "report.csv"))
        assert rc == 1  # some records failed: the report says which
        assert (first["records"], first["enrolled"], first["failed"]) == (len(good) + 6, len(good), 6)
        assert first["samples"] == len(rows)
        reasons = first["failure_reasons"]
        assert {"UNKNOWN_MODALITY", "BAD_POSITION", "FILE_MISSING"} <= set(reasons)
        assert reasons["BAD_POSITION"] == 2  # X-POS, and X-HALF's iris
        report = list(csv.DictReader(open(tmp_path / "report.csv")))
        assert len(report) == len(rows) and {r["meta_camp"] for r in report if r["outcome"] == "enrolled"} == \
            {"kakuma"}
        why = {r["subject_id"]: r["reason"] for r in report if r["outcome"] == "failed"}
        assert why["X-NOFACE"] == "NO_FACE" and why["X-CUT"] and why["X-HALF"] == "BAD_POSITION"
        held = stored(server.stub, good + [r["subject_id"] for r in rows if r["subject_id"].startswith("X-")])
        assert sorted(held) == good
        assert [(m, p) for m, p, _ in held["L-001"]] == [(pb.FACE, 0), (pb.FINGER, 2), (pb.IRIS, 2)]
        assert server.stub.Stats(pb.StatsRequest(), timeout=30).subjects == len(good)

        # Again: nothing new (skipped by the state file), the same failures reported.
        _, second = run_import(server.address, manifest)
        assert (second["enrolled"], second["already"], second["failed"]) == (0, len(good), 6)
        # Without the state file (lost with the laptop that ran the import): the server
        # recognises every record by its import key and stores nothing.
        (folder / "manifest.csv.import-state").unlink()
        _, third = run_import(server.address, manifest)
        assert (third["enrolled"], third["already"]) == (0, len(good))
        assert server.stub.Stats(pb.StatsRequest(), timeout=30).subjects == len(good)
    finally:
        server.stop()


def test_an_import_killed_halfway_and_run_again_leaves_what_a_clean_run_leaves(tmp_path, orl, fingerprints,
                                                                                irises, models):
    folder = tmp_path / "legacy"
    folder.mkdir()
    rows = people(folder, orl, fingerprints, irises, 6, 14)
    ids = sorted({r["subject_id"] for r in rows})
    manifest = write_manifest(folder, rows)
    killed, clean = Server(tmp_path / "killed"), Server(tmp_path / "clean")
    killed.start()
    clean.start()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "tambua.cli", "import", "--address", killed.address,
                                 "--manifest", str(manifest), "--jobs", "1", "--dedup", "refuse"], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        state = folder / "manifest.csv.import-state"
        deadline = time.monotonic() + 300
        while not (state.exists() and len(state.read_text().splitlines()) >= 5):
            assert proc.poll() is None and time.monotonic() < deadline, "the import ended before it was killed"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        halfway = killed.stub.Stats(pb.StatsRequest(), timeout=30).subjects
        assert 5 <= halfway < len(ids)
        _, resumed = run_import(killed.address, manifest, "--dedup", "refuse")
        assert resumed["enrolled"] + resumed["already"] == len(ids) and resumed["failed"] == 0
        # The record in flight at the kill may have been stored after the count above: the
        # server recognised it (replayed), it was not enrolled twice.
        assert len(ids) - halfway - 1 <= resumed["enrolled"] <= len(ids) - halfway
        _, once = run_import(clean.address, manifest, "--dedup", "refuse", "--state", str(tmp_path / "clean.state"))
        assert once["enrolled"] == len(ids)
        assert stored(killed.stub, ids) == stored(clean.stub, ids)
    finally:
        killed.stop()
        clean.stop()


def test_loading_without_deduplication_is_an_admins_call():
    from matcher.errors import PermissionDenied
    from tambua.auth import ALL_PARTITIONS, Principal, authorize

    registrar = Principal("k", "tablet", "", frozenset({"registrar"}), frozenset({ALL_PARTITIONS}))
    with pytest.raises(PermissionDenied, match="admin"):
        authorize(registrar, "Enroll", pb.EnrollRequest(subject_id="A", skip_dedup=True))
    authorize(registrar, "Enroll", pb.EnrollRequest(subject_id="A"))


def test_load_first_then_audit_finds_the_people_enrolled_twice(tmp_path, orl, models):
    """A legacy list where three people appear twice under different ids, loaded without
    deduplication, then audited: three clusters; as cases, on the adjudication queue."""
    folder = tmp_path / "legacy"
    folder.mkdir()
    rows = [{"subject_id": f"L-{p:03d}", "modality": "face", "path": link(folder, orl / f"s{p}" / "1.pgm", f"{p}.pgm")}
            for p in range(1, 9)]
    rows += [{"subject_id": f"R-{p:03d}", "modality": "face", "path": link(folder, orl / f"s{p}" / "2.pgm",
                                                                            f"r{p}.pgm")} for p in (2, 5, 7)]
    manifest = write_manifest(folder, rows)
    server = Server(tmp_path / "data")
    server.start()
    try:
        _, loaded = run_import(server.address, manifest, "--dedup", "skip")
        assert loaded["enrolled"] == 11
        r = subprocess.run([sys.executable, "-m", "tambua.cli", "audit-duplicates", "--address", server.address,
                            "--json", "--cases", "--csv", str(tmp_path / "audit.csv"), "--html",
                            str(tmp_path / "audit.html")], cwd=REPO, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["subjects"] == 11
        assert sorted(c["subject_ids"] for c in out["clusters"]) == [["L-002", "R-002"], ["L-005", "R-005"],
                                                                     ["L-007", "R-007"]]
        assert all(c["pairs"][0]["fpir"] <= 0.01 for c in out["clusters"]) and len(out["case_ids"]) == 3
        pairs = list(csv.DictReader(open(tmp_path / "audit.csv")))
        assert sorted((p["subject_a"], p["subject_b"]) for p in pairs) == [("L-002", "R-002"), ("L-005", "R-005"),
                                                                           ("L-007", "R-007")]
        page = (tmp_path / "audit.html").read_text()
        assert "<b>3</b> clusters" in page and "L-005, R-005" in page
        queue = server.stub.ListCases(pb.ListCasesRequest(source="audit"), timeout=30).cases
        assert sorted(c.subject_id for c in queue) == ["R-002", "R-005", "R-007"]
        assert {c.kind for c in queue} == {"AUDIT_CLUSTER"}
    finally:
        server.stop()


def _load_embeddings(stub, n: int, twins: int) -> list[tuple[str, str]]:
    """``n`` subjects of random face embeddings (template samples: no extraction), the last
    ``twins`` a slightly disturbed copy of an earlier one (the duplicates to find)."""
    import numpy as np

    from matcher.face.template import EmbeddingTemplate

    rng = np.random.default_rng(26)
    vectors = rng.normal(size=(n, 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    pairs = []
    for i in range(n - twins, n):
        j = (i - (n - twins)) * 7  # an earlier subject
        vectors[i] = vectors[j] + rng.normal(scale=0.01, size=128).astype(np.float32)
        pairs.append((f"E-{j:05d}", f"E-{i:05d}"))
    for i, v in enumerate(vectors):
        template = EmbeddingTemplate("face/dlib-resnet-v1", v, 80).to_bytes()
        stub.Enroll(pb.EnrollRequest(subject_id=f"E-{i:05d}", skip_dedup=True,
                                     samples=[pb.Sample(modality=pb.FACE, template=template)]), timeout=30)
    return pairs


def _clusters(result) -> list[list[str]]:
    return sorted(sorted(c.subject_ids) for c in result.clusters)


def test_an_audit_cut_short_goes_on_from_its_checkpoint(tmp_path, models):
    """An audit whose client goes away stops and keeps its checkpoint; one whose server is
    killed (SIGKILL) keeps it too; each next run goes on from there, and finds what an
    audit run in one go finds."""
    server = Server(tmp_path / "data")
    server.start()
    try:
        planted = _load_embeddings(server.stub, 1500, 6)
        request = pb.AuditDuplicatesRequest(block=5)
        stream = server.stub.RunAudit(request, timeout=600)
        first = [next(stream) for _ in range(4)]  # where it starts, then three blocks
        assert (first[0].searched, first[0].subjects) == (0, 1500) and first[-1].searched == 15
        stream.cancel()  # the client goes away
        time.sleep(1)
        stream = server.stub.RunAudit(request, timeout=600)
        start = next(stream)
        assert 15 <= start.searched < 1500  # it went on from the checkpoint
        for _ in range(3):
            next(stream)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=30)
        server.start()
        messages = list(server.stub.RunAudit(request, timeout=600))
        assert messages[0].searched > start.searched
        resumed = messages[-1].result
        assert resumed.resumed == messages[0].searched and resumed.subjects == 1500
        whole = server.stub.AuditDuplicates(pb.AuditDuplicatesRequest(restart=True), timeout=600)
        assert whole.resumed == 0
        assert _clusters(resumed) == _clusters(whole) == sorted(sorted(p) for p in planted)
    finally:
        server.stop()
