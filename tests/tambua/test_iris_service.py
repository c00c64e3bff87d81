"""Irises through a real `tambua serve`: two-iris subjects from MMU1 (45 people, both
eyes), deduplication, 1:1 by one eye, refused captures, and a subject enrolled with a
face, fingers and irises found by any of them (a chimeric subject: the sets hold no
person with all three)."""

from __future__ import annotations

import subprocess
import sys

import cv2
import grpc
import numpy as np
import pytest

from tambua.v1 import tambua_pb2 as pb

from tests.tambua.test_finger_service import fcj, ten  # noqa: F401 - fixture reused
from tests.tambua.test_server import REPO, Server, _reason, face

RIGHT, LEFT = 1, 2


def _eye(irises, person: int, side: str, shot: int) -> pb.Sample:
    folder = irises / "mmu1" / f"{person}_{side}"
    path = sorted(folder.iterdir())[shot]
    return pb.Sample(modality=pb.IRIS, position=LEFT if side == "left" else RIGHT, image=path.read_bytes())


def both(irises, person: int, shot: int) -> list[pb.Sample]:
    return [_eye(irises, person, "right", shot), _eye(irises, person, "left", shot)]


@pytest.fixture(scope="module")
def server(tmp_path_factory, models, irises, orl):
    s = Server(tmp_path_factory.mktemp("iris") / "data")
    s.start()
    yield s
    s.stop()


def test_two_iris_enrolment_dedup_verify_and_refusals(server, irises, orl):
    stub = server.stub
    people = [20, 21, 22]
    for p in people:
        r = stub.Enroll(pb.EnrollRequest(subject_id=f"I{p}", samples=both(irises, p, 0)), timeout=60)
        assert r.outcome == pb.EnrollResponse.ENROLLED, p
        assert "iris/gabor-v2" in r.model_ids
    again = stub.Enroll(pb.EnrollRequest(subject_id="I21-again", samples=both(irises, 21, 1)), timeout=60)
    assert again.outcome == pb.EnrollResponse.DUPLICATE
    assert again.candidates[0].subject_id == "I21" and again.candidates[0].fpir < 1e-4
    one_eye = _eye(irises, 20, "left", 2)
    ok = stub.Verify(pb.VerifyRequest(subject_id="I20", samples=[one_eye]))
    assert ok.match and ok.fmr < 1e-3
    assert not stub.Verify(pb.VerifyRequest(subject_id="I22", samples=[one_eye])).match
    # A closed eye (the eye opening painted over with the lid skin around it) and a face.
    eye = cv2.imread(str(sorted((irises / "mmu1" / "23_left").iterdir())[0]), 0)
    closed = eye.copy()
    top, bottom = 70, 170
    w = np.linspace(0.0, 1.0, bottom - top)[:, None]
    closed[top:bottom] = ((1 - w) * eye[top - 1] + w * eye[bottom]).astype(np.uint8)
    for image, reason in ((cv2.imencode(".png", closed)[1].tobytes(), "IRIS_NOT_FOUND"),
                          ((orl / "s1" / "1.pgm").read_bytes(), "FACE_PHOTO")):
        with pytest.raises(grpc.RpcError) as e:
            stub.Enroll(pb.EnrollRequest(subject_id="bad", samples=[pb.Sample(modality=pb.IRIS, position=LEFT,
                                                                              image=image)]))
        assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT and _reason(e.value) == reason
    assert stub.Stats(pb.StatsRequest()).subjects == 3


def test_subject_with_face_fingers_and_irises_is_found_by_any(server, irises, orl, fcj):  # noqa: F811
    stub = server.stub
    samples = [face(orl, 31, 1)] + ten(fcj, 6, 1)[:2] + both(irises, 24, 0)
    r = stub.Enroll(pb.EnrollRequest(subject_id="ALL", samples=samples), timeout=120)
    assert r.outcome == pb.EnrollResponse.ENROLLED
    assert {"face/dlib-resnet-v1", "finger/leader-mcc-v1", "iris/gabor-v2"} <= set(r.model_ids)
    stub.Enroll(pb.EnrollRequest(subject_id="OTHER", samples=[face(orl, 32, 1)] + ten(fcj, 7, 1)[:2]
                                 + both(irises, 25, 0)), timeout=120)
    probes = {"face": [face(orl, 31, 2)], "finger": ten(fcj, 6, 3)[1:2], "iris": [_eye(irises, 24, "right", 3)]}
    scores = {}
    for name, probe in probes.items():
        hits = stub.Identify(pb.IdentifyRequest(samples=probe)).candidates
        assert hits[0].subject_id == "ALL", name
        scores[name] = hits[0].score
    fused = stub.Identify(pb.IdentifyRequest(samples=[s for p in probes.values() for s in p])).candidates
    assert fused[0].subject_id == "ALL" and fused[0].score > max(scores.values())


def test_cli_extract_reports_quality_components_and_stores_nothing(server, irises, fcj, capsys):  # noqa: F811
    import json

    from tambua.cli import main

    eye = sorted((irises / "mmu1" / "30_left").iterdir())[0]
    finger = fcj[0] / f"{fcj[0].name}_1.png"
    before = server.stub.Stats(pb.StatsRequest()).subjects
    assert main(["extract", "--address", server.address, "--iris", f"left={eye}", "--finger", f"3={finger}",
                 "--json"]) == 0
    out = {t["modality"]: t for t in json.loads(capsys.readouterr().out)["templates"]}
    iris, fing = out["iris"], out["finger"]
    assert iris["position"] == LEFT and iris["model_id"] == "iris/gabor-v2" and 0 < iris["quality"] <= 100
    q = iris["quality_components"]
    assert {"usable_iris_area", "iris_radius", "pupil_iris_ratio", "margin_adequacy", "sharpness"} <= set(q)
    assert 40 < q["iris_radius"] < 80 and 20 <= q["pupil_iris_ratio"] <= 70  # MMU1: ~58 px irises
    assert fing["position"] == 3 and fing["quality_components"]["minutiae"] >= 8
    assert server.stub.Stats(pb.StatsRequest()).subjects == before


def test_a_store_of_old_iris_codes_is_refused(tmp_path, irises, iris_extractor):
    """Irises enrolled by iris/gabor-v1 (the segmentation before real-scanner images)
    code the same eye a little differently: a server refuses to start on such a store
    rather than search them with codes of another make."""
    from matcher.iris.template import IrisTemplate
    from matcher.types import StoredTemplate, Subject
    from store.sqlite import SubjectStore

    new = iris_extractor.extract(sorted((irises / "casia_v1" / "001").iterdir())[0].read_bytes())
    old = IrisTemplate("iris/gabor-v1", new.code, new.mask, new.quality)
    store = SubjectStore(tmp_path / "data" / "subjects.sqlite")
    store.add(Subject("OLD1", "default", (StoredTemplate("iris", LEFT, old),)))
    store.close()
    run = subprocess.run([sys.executable, "-m", "tambua.cli", "serve", "--port", "0", "--metrics-port", "-1",
                          "--data-dir", str(tmp_path / "data"), "--insecure"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert "MODEL_MISMATCH" in run.stderr and "1 iris templates of iris/gabor-v1" in run.stderr
