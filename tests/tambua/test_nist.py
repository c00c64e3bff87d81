"""Subjects leaving and entering Tambua as ANSI/NIST-ITL 1-2011 transactions and ISO/IEC
19794 records, between real servers, with real ORL faces, FVC fingers (one as WSQ) and
CASIA irises: a subject exported by one server and imported by another holds the same
templates; a transaction written by the library itself (Type-4 raw, Type-14 WSQ, Type-10,
Type-17, Type-9 minutiae without an image) is imported; a second run imports nothing new;
corrupt transactions are reported with their reasons and stored nowhere; the ISO records
read back (finger views equal the server's, the face record's photo verifies as the
subject)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import nistitl
import numpy as np
import pytest
from PIL import Image

from matcher.finger.iso19794 import import_record
from tambua import ansi_nist
from tambua.iso19794 import read_face_record, read_iris_record
from tambua.v1 import tambua_pb2 as pb
from tests.tambua.test_server import REPO, Server, has_subject


def _cli(*args: str) -> tuple[int, dict, str]:
    r = subprocess.run([sys.executable, "-m", "tambua.cli", *args, "--json"], cwd=REPO, capture_output=True,
                       text=True, timeout=600)
    return r.returncode, json.loads(r.stdout) if r.stdout.strip() else {}, r.stderr


def _wsq(path: Path) -> bytes:
    import wsq  # noqa: F401 - registers the codec with Pillow

    buf = io.BytesIO()
    Image.open(path).convert("L").save(buf, "WSQ")
    return buf.getvalue()


def _templates(stub, subject_id: str) -> dict[tuple[int, int], bytes]:
    s = stub.GetSubject(pb.SubjectRequest(subject_id=subject_id), timeout=30)
    return {(t.modality, t.position): t.data for t in s.templates}


@pytest.fixture(scope="module")
def servers(tmp_path_factory, orl, fingerprints, irises, models):
    tmp = tmp_path_factory.mktemp("nist")
    source, target = Server(tmp / "source", args=("--keep-images", "all")), Server(tmp / "target")
    source.start()
    target.start()
    fvc = fingerprints / "fvc2000_db1_b"
    r = source.stub.Enroll(pb.EnrollRequest(subject_id="K-1", samples=[
        pb.Sample(modality=pb.FACE, image=(orl / "s5" / "1.pgm").read_bytes()),
        pb.Sample(modality=pb.FINGER, position=2, image=(fvc / "103" / "103_1.tif").read_bytes()),
        pb.Sample(modality=pb.FINGER, position=7, image=_wsq(fvc / "104" / "104_1.tif")),
        pb.Sample(modality=pb.IRIS, position=1, image=sorted((irises / "casia_v1" / "010").iterdir())[0].read_bytes()),
    ]), timeout=120)
    assert r.outcome == pb.EnrollResponse.ENROLLED
    yield source, target, tmp
    source.stop()
    target.stop()


def test_a_subject_exported_by_one_server_is_the_same_subject_on_another(servers):
    source, target, tmp = servers
    out = tmp / "out"
    out.mkdir()
    rc, exported, err = _cli("export", "--address", source.address, "--subject", "K-1", "--nist",
                             str(out / "K-1.an2"), "--iso", str(tmp / "iso"))
    assert rc == 0, err
    assert (exported["templates"], exported["images"]) == (4, 4)
    tx = ansi_nist.parse((out / "K-1.an2").read_bytes())
    assert tx.subject_id == "K-1" and not tx.skipped
    assert {(i.modality, i.position, i.kind) for i in tx.items} == {
        ("face", 0, "image"), ("finger", 2, "image"), ("finger", 7, "image"), ("iris", 1, "image"),
        ("face", 0, "template"), ("finger", 2, "template"), ("finger", 7, "template"), ("iris", 1, "template"),
        ("finger", 2, "minutiae"), ("finger", 7, "minutiae")}
    rc, first, err = _cli("import", "--address", target.address, "--nist", str(out), "--report",
                          str(tmp / "report.csv"))
    assert rc == 0, err
    assert (first["records"], first["enrolled"], first["failed"]) == (1, 1, 0)
    # Images travel as they were (WSQ, JPEG) or losslessly (PGM, TIFF -> PNG): the target
    # extracts the very templates the source holds.
    assert _templates(target.stub, "K-1") == _templates(source.stub, "K-1")
    rc, again, err = _cli("import", "--address", target.address, "--nist", str(out))
    assert rc == 0 and (again["enrolled"], again["already"]) == (0, 1), err


def test_iso_records_read_back(servers):
    source, _, tmp = servers
    held = source.stub.GetSubject(pb.SubjectRequest(subject_id="K-1"), timeout=30)
    fingers = {t.position: t.iso19794_2 for t in held.templates if t.modality == pb.FINGER}
    iso = tmp / "iso"
    assert sorted(p.name for p in iso.iterdir()) == ["K-1-face.fac", "K-1-fingers.fmr", "K-1-iris-right.iir"]
    model = next(t.model_id for t in held.templates if t.modality == pb.FINGER)
    views = dict(import_record((iso / "K-1-fingers.fmr").read_bytes(), model))
    assert set(views) == set(fingers) == {2, 7}
    for position, template in views.items():
        ((_, alone),) = import_record(fingers[position], model)
        assert np.array_equal(template.minutiae, alone.minutiae)
    ((jpeg, width, height),) = read_face_record((iso / "K-1-face.fac").read_bytes())
    assert (width, height) == (92, 112) and Image.open(io.BytesIO(jpeg)).format == "JPEG"
    v = source.stub.Verify(pb.VerifyRequest(subject_id="K-1", samples=[pb.Sample(modality=pb.FACE, image=jpeg)]),
                           timeout=60)
    assert v.match
    ((eye, png),) = read_iris_record((iso / "K-1-iris-right.iir").read_bytes())
    exported = source.stub.ExportSubject(pb.SubjectRequest(subject_id="K-1"), timeout=30)
    kept = Image.open(io.BytesIO(next(i.data for i in exported.images if i.modality == pb.IRIS)))
    assert eye == 1 and np.array_equal(np.asarray(Image.open(io.BytesIO(png))), np.asarray(kept.convert("L")))
    v = source.stub.Verify(pb.VerifyRequest(subject_id="K-1", samples=[pb.Sample(modality=pb.IRIS, position=1,
                                                                                image=png)]), timeout=60)
    assert v.match


def _library_transaction(orl: Path, fingerprints: Path, irises: Path, subject_id: str, minutiae: list) -> bytes:
    """A transaction written with nistitl alone (not our writer), as another system would."""
    fvc = fingerprints / "fvc2000_db2_b"
    msg = nistitl.Message()
    msg.TOT = "CAR"
    msg[0].DAT = "20261207"
    msg[0].ORI = "PARTNER"
    msg[0].TCN = "P-0001"
    r2 = nistitl.AsciiRecord(2)
    r2.IDC = 0
    r2 += nistitl.Field(2, 15, subject_id)
    msg += r2
    raw = Image.open(fvc / "105" / "105_1.tif").convert("L")
    r4 = nistitl.BinaryRecord(4)
    r4.IDC = 1
    r4.pack("!B6sBHHB", 1, bytes([1, 255, 255, 255, 255, 255]), 0, raw.width, raw.height, 0, raw.tobytes())
    msg += r4
    r14 = nistitl.AsciiRecord(14)
    r14.IDC = 2
    for tag, value in ((3, "0"), (4, "PARTNER"), (5, "20261207"), (6, "256"), (7, "364"), (8, "1"), (9, "500"),
                       (10, "500"), (11, "WSQ20"), (12, "8"), (13, "2")):
        r14 += nistitl.Field(14, tag, value)
    r14 += nistitl.BinaryField(14, 999, _wsq(fvc / "106" / "106_1.tif"))
    msg += r14
    face = io.BytesIO()
    Image.open(orl / "s6" / "1.pgm").convert("RGB").save(face, "JPEG", quality=92)
    r10 = nistitl.AsciiRecord(10)
    r10.IDC = 3
    for tag, value in ((3, "FACE"), (4, "PARTNER"), (5, "20261207"), (6, "92"), (7, "112"), (8, "0"), (9, "1"),
                       (10, "1"), (11, "JPEGB"), (12, "RGB")):
        r10 += nistitl.Field(10, tag, value)
    r10 += nistitl.BinaryField(10, 999, face.getvalue())
    msg += r10
    eye = io.BytesIO()
    Image.open(sorted((irises / "casia_v1" / "011").iterdir())[0]).convert("L").save(eye, "PNG")
    r17 = nistitl.AsciiRecord(17)
    r17.IDC = 4
    for tag, value in ((3, "2"), (4, "PARTNER"), (5, "20261207"), (6, "320"), (7, "280"), (8, "0"), (9, "1"),
                       (10, "1"), (11, "PNG"), (12, "8")):
        r17 += nistitl.Field(17, tag, value)
    r17 += nistitl.BinaryField(17, 999, eye.getvalue())
    msg += r17
    r9 = nistitl.AsciiRecord(9)  # finger 3: minutiae only (INCITS 378 block), no image
    r9.IDC = 5
    for tag, value in ((3, "0"), (4, "U"), (128, "300"), (129, "300"), (130, "1"), (131, "500"), (132, "500"),
                       (134, "3"), (136, str(len(minutiae)))):
        r9 += nistitl.Field(9, tag, value)
    r9 += nistitl.Field(9, 137, [[str(i + 1), *map(str, m)] for i, m in enumerate(minutiae)])
    msg += r9
    return msg.NIST


def test_a_transaction_written_by_the_library_imports(servers, orl, fingerprints, irises):
    source, target, tmp = servers
    # Finger 3's minutiae as another AFIS would send them: taken from a template of ours.
    held = source.stub.GetSubject(pb.SubjectRequest(subject_id="K-1"), timeout=30)
    iso = next(t.iso19794_2 for t in held.templates if t.modality == pb.FINGER and t.position == 2)
    count = iso[27]
    minutiae = []
    for i in range(count):
        at = 28 + 6 * i
        xt, y, angle, q = int.from_bytes(iso[at:at + 2], "big"), int.from_bytes(iso[at + 2:at + 4], "big"), \
            iso[at + 4], iso[at + 5]
        minutiae.append((xt & 0x3FFF, y & 0x3FFF, round(angle * 360 / 256 / 2) % 180, xt >> 14, q))
    folder = tmp / "partner"
    folder.mkdir()
    (folder / "P-1.an2").write_bytes(_library_transaction(orl, fingerprints, irises, "P-1", minutiae))
    rc, out, err = _cli("import", "--address", target.address, "--nist", str(folder), "--dedup", "skip")
    assert rc == 0, err
    assert (out["enrolled"], out["failed"]) == (1, 0)
    s = target.stub.GetSubject(pb.SubjectRequest(subject_id="P-1"), timeout=30)
    assert sorted((t.modality, t.position) for t in s.templates) == [
        (pb.FACE, 0), (pb.FINGER, 1), (pb.FINGER, 2), (pb.FINGER, 3), (pb.IRIS, 2)]


def test_corrupt_transactions_are_reported_and_stored_nowhere(servers, orl, fingerprints):
    source, target, tmp = servers
    good = (tmp / "out" / "K-1.an2").read_bytes()
    folder = tmp / "corrupt"
    folder.mkdir()
    (folder / "cut.an2").write_bytes(good[: len(good) // 2])
    (folder / "garbage.an2").write_bytes(b"1.001:12\x1dnot a transaction")
    fvc = fingerprints / "fvc2000_db1_b" / "107" / "107_1.tif"
    no_id = ansi_nist.build("X", [], [("finger", 2, fvc.read_bytes())]).replace(b"2.015:X", b"2.016:X")
    (folder / "no-id.an2").write_bytes(no_id)
    bad_wsq = ansi_nist.build("C-2", [], [("finger", 2, _wsq(fvc))])
    at = bad_wsq.index(b"\xff\xa0")
    (folder / "bad-wsq.an2").write_bytes(bad_wsq[:at + 40] + bytes(200) + bad_wsq[at + 240:])
    # A fingerprint sent as the face: the server refuses it for what it is.
    wrong = ansi_nist.build("C-3", [], [("face", 0, fvc.read_bytes())])
    (folder / "wrong-modality.an2").write_bytes(wrong)
    rc, out, err = _cli("import", "--address", target.address, "--nist", str(folder), "--report",
                        str(tmp / "corrupt.json"))
    assert rc == 1, err
    report = {Path(r["path"]).name: r for r in json.loads((tmp / "corrupt.json").read_text())}
    reasons = {name: r["reason"] for name, r in report.items()}
    assert reasons["cut.an2"] == "NIST_MALFORMED" and reasons["garbage.an2"] == "NIST_MALFORMED"
    assert reasons["no-id.an2"] == "SUBJECT_FIELD_MISSING"
    assert reasons["bad-wsq.an2"] in ("IMAGE_UNDECODABLE", "IMAGE_TRUNCATED")
    assert reasons["wrong-modality.an2"] == "NO_FACE"
    assert out["failed"] == 5 and out["enrolled"] == 0
    for subject_id in ("C-2", "C-3", "X"):
        assert not has_subject(target.stub, subject_id)
