"""Fingerprints through a real `tambua serve`: ten-finger subjects built from FCJ2020 fingers
(positions 1-10 = ten different real fingers), deduplication, 1:1 by one finger, quality
errors, ISO/IEC 19794-2 records, and a subject found by either face or fingers."""

from __future__ import annotations

import io
import subprocess
import sys

import grpc
import numpy as np
import pytest
from PIL import Image

from tambua.v1 import tambua_pb2 as pb

from tests.tambua.test_server import REPO, Server, _reason, face


@pytest.fixture(scope="module")
def fcj(fingerprints):
    """FCJ finger folders, less those holding an impression of another finger (known label noise)."""
    noise = (REPO / "bench/data/fingerprint_label_noise.txt").read_text()
    return [p for p in sorted((fingerprints / "fcj2020_dev").iterdir()) if p.is_dir() and f"/{p.name}/" not in noise]


def _finger(path, position: int) -> pb.Sample:
    return pb.Sample(modality=pb.FINGER, position=position, image=path.read_bytes())


def ten(fcj, subject: int, impression: int) -> list[pb.Sample]:
    """Subject n's ten fingers: FCJ fingers 10n .. 10n+9 at positions 1-10."""
    return [_finger(fcj[10 * subject + i] / f"{fcj[10 * subject + i].name}_{impression}.png", i + 1)
            for i in range(10)]


@pytest.fixture(scope="module")
def server(tmp_path_factory, models, fingerprints, orl):
    s = Server(tmp_path_factory.mktemp("finger") / "data")
    s.start()
    yield s
    s.stop()


def test_ten_finger_enrolment_dedup_verify_and_errors(server, fcj, orl):
    stub = server.stub
    for n in range(3):
        r = stub.Enroll(pb.EnrollRequest(subject_id=f"F{n}", samples=ten(fcj, n, 1)), timeout=120)
        assert r.outcome == pb.EnrollResponse.ENROLLED, n
        assert "finger/leader-mcc-v1" in r.model_ids
    again = stub.Enroll(pb.EnrollRequest(subject_id="F1-again", samples=ten(fcj, 1, 2)), timeout=120)
    assert again.outcome == pb.EnrollResponse.DUPLICATE
    assert again.candidates[0].subject_id == "F1" and again.candidates[0].fpir < 1e-6
    assert all(c.subject_id == "F1" for c in again.candidates[:1])
    # 1:1 by one finger: the right index (position 2) of F0, a third impression.
    index = fcj[1] / f"{fcj[1].name}_3.png"
    ok = stub.Verify(pb.VerifyRequest(subject_id="F0", samples=[_finger(index, 2)]))
    assert ok.match and ok.fmr < 1e-3 and ok.score > 3
    wrong = stub.Verify(pb.VerifyRequest(subject_id="F2", samples=[_finger(index, 2)]))
    assert not wrong.match
    # Bad captures: INVALID_ARGUMENT with the quality reason, nothing stored.
    blank = io.BytesIO()
    Image.fromarray(np.full((360, 280), 235, np.uint8)).save(blank, format="PNG")
    cases = {"BLANK_IMAGE": blank.getvalue(), "LOW_RIDGE_CLARITY": (orl / "s1" / "1.pgm").read_bytes()}
    for reason, image in cases.items():
        with pytest.raises(grpc.RpcError) as e:
            stub.Enroll(pb.EnrollRequest(subject_id="bad", samples=[pb.Sample(modality=pb.FINGER, position=3,
                                                                              image=image)]))
        assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT and _reason(e.value) == reason
    with pytest.raises(grpc.RpcError) as e:
        stub.Enroll(pb.EnrollRequest(subject_id="nopos", samples=[_finger(index, 0)]))
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert stub.Stats(pb.StatsRequest()).subjects == 3


def test_iso_record_round_trip_and_search(server, fcj):
    stub = server.stub
    probe = fcj[3] / f"{fcj[3].name}_4.png"  # F0's position 4, another impression
    (tpl,) = stub.Extract(pb.ExtractRequest(samples=[_finger(probe, 4)])).templates
    assert tpl.model_id == "finger/leader-mcc-v1" and tpl.iso19794_2[:4] == b"FMR\x00"
    iso = pb.Sample(modality=pb.FINGER, position=4, template=tpl.iso19794_2)
    ours = pb.Sample(modality=pb.FINGER, position=4, template=tpl.data)
    same = stub.Compare(pb.CompareRequest(a=iso, b=ours))
    # The ISO round trip keeps the minutiae (within its quantisation): as strong a match as
    # the finger calibration can state (it claims no rate below what it measured, ~3e-5).
    assert same.fmr < 1e-4
    hits = stub.Identify(pb.IdentifyRequest(samples=[iso])).candidates
    assert hits[0].subject_id == "F0"
    (back,) = stub.Extract(pb.ExtractRequest(samples=[iso])).templates
    assert back.iso19794_2 == tpl.iso19794_2


def test_subject_with_face_and_fingers_is_found_by_either(server, fcj, orl):
    stub = server.stub
    samples = [face(orl, 30, 1)] + ten(fcj, 5, 1)[:4]
    assert stub.Enroll(pb.EnrollRequest(subject_id="FF", samples=samples), timeout=120).outcome == \
        pb.EnrollResponse.ENROLLED
    by_face = stub.Identify(pb.IdentifyRequest(samples=[face(orl, 30, 2)])).candidates
    assert by_face[0].subject_id == "FF"
    by_finger = stub.Identify(pb.IdentifyRequest(samples=ten(fcj, 5, 3)[2:3])).candidates
    assert by_finger[0].subject_id == "FF"
    both = stub.Identify(pb.IdentifyRequest(samples=[face(orl, 30, 2)] + ten(fcj, 5, 3)[2:3])).candidates
    assert both[0].subject_id == "FF" and both[0].score > max(by_face[0].score, by_finger[0].score)


def test_lite_network_serves_and_a_store_keeps_its_network(tmp_path, fcj, models):
    """``finger_network = lite``: the same deduplication with the fast network; a server
    started on that store with the other network refuses to start, rather than leave
    the enrolled fingers out of every search."""
    data = tmp_path / "data"
    s = Server(data, env={"TAMBUA_FINGER_NETWORK": "lite"})
    s.start()
    try:
        for n in range(2):
            r = s.stub.Enroll(pb.EnrollRequest(subject_id=f"L{n}", samples=ten(fcj, n, 1)), timeout=120)
            assert r.outcome == pb.EnrollResponse.ENROLLED and "finger/lite-mcc-v2-counted" in r.model_ids
        again = s.stub.Enroll(pb.EnrollRequest(subject_id="L1-again", samples=ten(fcj, 1, 2)), timeout=120)
        assert again.outcome == pb.EnrollResponse.DUPLICATE and again.candidates[0].subject_id == "L1"
        probe = fcj[1] / f"{fcj[1].name}_3.png"
        assert s.stub.Verify(pb.VerifyRequest(subject_id="L0", samples=[_finger(probe, 2)])).match
        assert not s.stub.Verify(pb.VerifyRequest(subject_id="L1", samples=[_finger(probe, 2)])).match
    finally:
        s.stop()
    leader = subprocess.run([sys.executable, "-m", "tambua.cli", "serve", "--port", "0", "--metrics-port", "-1",
                             "--data-dir", str(data), "--insecure", "--finger-network", "leader"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert leader.returncode == 2
    assert "MODEL_MISMATCH" in leader.stderr and "20 finger templates of finger/lite-mcc-v2-counted" in leader.stderr
    assert "lite = finger/lite-mcc-v2-counted" in leader.stderr and "lite-v2 = finger/lite-mcc-v2," in leader.stderr
    assert "lite-v1 = finger/lite-mcc-v1" in leader.stderr
    auto = Server(data)  # no setting: auto follows the store's templates
    auto.start()
    try:
        assert auto.stub.Verify(pb.VerifyRequest(subject_id="L0", samples=[_finger(probe, 2)])).match
        r = auto.stub.Enroll(pb.EnrollRequest(subject_id="L2", samples=ten(fcj, 2, 1)[:2]), timeout=120)
        assert "finger/lite-mcc-v2-counted" in r.model_ids
    finally:
        auto.stop()


def test_auto_network_follows_the_store():
    from enroll.finger import networks

    lite_id = networks.NETWORKS["lite"][0]
    assert networks.choose("auto", {}) == ("leader", "no finger templates stored yet")
    assert networks.choose("auto", {("face", "face/x"): 3})[0] == networks.DEFAULT
    assert networks.choose("auto", {("finger", lite_id): 5})[0] == "lite"
    assert networks.choose("auto", {("finger", networks.LEADER[0]): 5})[0] == "leader"
    assert networks.choose("auto", {("finger", "finger/lite-mcc-v2"): 5})[0] == "lite-v2"  # before counting
    mixed = {("finger", lite_id): 5, ("finger", networks.LEADER[0]): 1}
    assert networks.choose("auto", mixed) == (networks.DEFAULT, f"the store holds finger templates of "
                                              f"{networks.LEADER[0]}, {lite_id}")
    assert networks.choose("lite", {("finger", networks.LEADER[0]): 5}) == ("lite", "configured")
