"""The distilled lite minutiae network against LEADER, on impressions it never saw in training."""

from __future__ import annotations

import numpy as np
import pytest

from matcher.finger import mcc
from models import build, finger_student


@pytest.fixture(scope="module")
def extractors(models):
    from enroll.finger.pipeline import FingerExtractor

    return FingerExtractor(models, network="leader"), FingerExtractor(models, network="lite")


def _held_out(fingerprints):
    """FCJ fingers at odd positions of the sorted folder list and FVC2002 DB1: not in training."""
    fcj = sorted(p for p in (fingerprints / "fcj2020_dev").iterdir() if p.is_dir())[1::2]
    return [sorted(fcj[i].iterdir())[0] for i in (0, 7, 21)] + [
        fingerprints / "fvc2002_db1_b" / "105" / "105_2.tif"]


def test_lite_finds_leaders_minutiae(extractors, fingerprints):
    leader, lite = extractors
    for path in _held_out(fingerprints):
        a = leader.extract(path.read_bytes())
        b = lite.extract(path.read_bytes())
        assert a.model_id == "finger/leader-mcc-v1" and b.model_id == "finger/lite-mcc-v2-counted"
        d = np.hypot(a.minutiae[:, None, 0] - b.minutiae[None, :, 0], a.minutiae[:, None, 1] - b.minutiae[None, :, 1])
        nearest = d.argmin(1)
        turn = np.abs(np.angle(np.exp(1j * (a.minutiae[:, 2] - b.minutiae[nearest, 2]))))
        agree = (d.min(1) <= 8) & (turn < 0.35)
        assert agree.mean() >= 0.85, (path.name, agree.mean())  # measured 93-98%
        assert 0.7 <= len(b.minutiae) / len(a.minutiae) <= 1.4, path.name


def test_lite_templates_match_mates_not_others(extractors, fingerprints):
    _, lite = extractors
    fvc = fingerprints / "fvc2002_db1_b"
    cyl = {(f, i): mcc.encode(lite.extract((fvc / f"{f}" / f"{f}_{i}.tif").read_bytes()).minutiae)
           for f in (106, 107, 108) for i in (1, 2)}
    mated = [mcc.similarity(cyl[(f, 1)], cyl[(f, 2)]) for f in (106, 107, 108)]
    others = [mcc.similarity(cyl[(a, 1)], cyl[(b, 2)]) for a in (106, 107, 108) for b in (106, 107, 108) if a != b]
    assert min(mated) > max(others)


@pytest.mark.parametrize("graph", sorted(build.FINGER_LITE))
def test_build_refuses_tampered_weights(tmp_path, graph):
    weights, sha256 = build.FINGER_LITE[graph]
    data = bytearray(weights.read_bytes())
    data[-100] ^= 1
    bad = tmp_path / weights.name
    bad.write_bytes(bytes(data))
    with pytest.raises(build.BuildError, match="sha256"):
        build.finger_lite_graph(bad, sha256)
    assert build.finger_lite_graph(weights, sha256)  # the pinned file builds


def test_graph_refuses_weights_of_another_shape():
    weights = {f"{n}.{k}": np.zeros(s, np.float32)
               for n, (ws, bs) in finger_student.weight_shapes().items() for k, s in (("weight", ws), ("bias", bs))}
    finger_student.to_onnx(weights)  # the right shapes build
    weights["e1a.weight"] = np.zeros((8, 4, 3, 3), np.float32)
    with pytest.raises(ValueError, match="e1a"):
        finger_student.to_onnx(weights)


def test_widening_keeps_the_network_s_answer():
    """Training a wider student starts from the narrower one's function, not from noise."""
    import onnxruntime as ort

    with np.load(build.FINGER_LITE["finger_minutiae_lite_v1.onnx"][0]) as z:
        v1 = {k: z[k] for k in z.files}
    wide = finger_student.widen(v1, (36, 72, 144, 192))
    assert finger_student.widths_of(wide) == (36, 72, 144, 192)
    assert any(np.abs(wide[f"{n}.weight"]).sum() > np.abs(v1[f"{n}.weight"]).sum() for n in ("e1b", "d1"))
    x = np.random.default_rng(0).uniform(0, 255, (1, 96, 128, 1)).astype(np.float32)
    out = [ort.InferenceSession(finger_student.to_onnx(w).SerializeToString()).run(None, {"input": x})[0]
           for w in (v1, wide)]
    np.testing.assert_allclose(out[1], out[0], atol=1e-5)
    with pytest.raises(ValueError, match="narrow"):
        finger_student.widen(wide, finger_student.V1_WIDTHS)


def test_deepening_keeps_the_network_s_answer():
    """A fifth, coarser level starts out adding nothing: the network answers as before."""
    import onnxruntime as ort

    with np.load(build.FINGER_LITE["finger_minutiae_lite_v2.onnx"][0]) as z:
        v2 = {k: z[k] for k in z.files}
    deep = finger_student.deepen(v2, 256)
    assert finger_student.widths_of(deep) == (36, 72, 144, 192, 256)
    assert {"e5a.weight", "e5b.weight", "l4.weight", "d4.weight"} <= set(deep)
    x = np.random.default_rng(1).uniform(0, 255, (1, 128, 96, 1)).astype(np.float32)
    out = [ort.InferenceSession(finger_student.to_onnx(w).SerializeToString()).run(None, {"input": x})[0]
           for w in (v2, deep)]
    np.testing.assert_allclose(out[1], out[0], atol=1e-5)
    with pytest.raises(ValueError, match="deepen"):
        finger_student.widen(deep, (36, 72, 144, 192))


def test_the_first_student_still_serves_stores_filled_with_it(models, fingerprints):
    from enroll.finger.pipeline import FingerExtractor

    old = FingerExtractor(models, network="lite-v1")
    image = (fingerprints / "fvc2002_db1_b" / "105" / "105_2.tif").read_bytes()
    t = old.extract(image)
    assert t.model_id == "finger/lite-mcc-v1" and len(t.minutiae) >= 20
    assert finger_student.widths_of(dict(np.load(build.FINGER_LITE["finger_minutiae_lite_v1.onnx"][0]))) == (
        finger_student.V1_WIDTHS)


def test_a_student_s_qualities_land_on_leader_s_scale():
    """A network detecting at its own threshold reports LEADER-scale qualities: its
    threshold becomes 0.55, so the index's sure minutiae and ISO records read one scale."""
    from enroll.finger.minutiae import on_leader_scale

    q = np.array([0.3, 0.5, 0.55, 0.8, 1.0], np.float32)
    np.testing.assert_allclose(on_leader_scale(q, 0.55), q, atol=1e-7)  # LEADER: unchanged
    mapped = on_leader_scale(np.array([0.3, 0.49, 0.68, 0.84, 1.0], np.float32), 0.68)
    np.testing.assert_allclose(mapped, [0.3, 0.425, 0.55, 0.775, 1.0], atol=1e-6)
    assert np.all(np.diff(on_leader_scale(np.linspace(0.3, 1, 50), 0.68)) > 0)  # order kept


def test_detection_threshold_matches_leader_s_count(models, fingerprints):
    """The student's threshold is set by counting, not by accuracy: where it finds as many
    minutiae as LEADER does at 0.55 on the same impressions."""
    from enroll.finger.networks import NETWORKS
    from models import detection_threshold as dt

    images = [fingerprints / "fvc2000_db1_b" / "101" / f"101_{i}.tif" for i in (1, 2)]
    teacher, student = dt.peak_counts(models / NETWORKS["lite"].graph, images)
    assert teacher.shape == (2,) and student.shape == (2, len(dt.GRID)) and teacher.min() >= 15
    assert np.all(np.diff(student, axis=1) <= 0)  # a higher threshold never finds more
    t = dt.matching_threshold(teacher, student)
    k = int(np.flatnonzero(dt.GRID == t)[0])
    assert abs(student[:, k].mean() - teacher.mean()) <= np.abs(student.mean(0) - teacher.mean()).min() + 1e-9
    assert dt.matching_threshold(np.array([30]), np.array([dt.GRID * -100 + 100])) == 0.7  # 100 - 100 t = 30


def test_a_moved_training_input_keeps_the_whole_finger():
    from models.train_finger_student import _moved

    canvas = np.full((320, 288), 200, np.float32)
    canvas[24:296, 24:264] = 60  # a "finger" reaching close to the canvas edge
    area = np.count_nonzero(canvas < 130)
    for turn, scale in [(35, 1.0), (-35, 1.07), (20, 0.93), (0, 1.07)]:
        moved = _moved(canvas, turn, scale)
        assert moved.shape[0] % 32 == 0 and moved.shape[1] % 32 == 0
        assert moved[0, 0] == 200 and moved[-1, -1] == 200  # corners filled with the background
        # nothing of the finger is cut off: its area changes by the scale squared only
        assert np.count_nonzero(moved < 130) / area == pytest.approx(scale ** 2, rel=0.02)
