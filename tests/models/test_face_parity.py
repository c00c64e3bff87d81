"""Our converted face models against dlib itself (dlib-bin, a test-only dependency), on real LFW faces."""

from __future__ import annotations

import numpy as np
import pytest

from enroll.face.align import extract_chip
from enroll.face.landmarks import LandmarkPredictor, Rect, grey_for_landmarks
from enroll.image import decode_image
from enroll.onnx_model import OnnxModel
from models.build import FACE_RECOGNITION_MODELS, source_file

dlib = pytest.importorskip("dlib", reason="dlib-bin is the reference for parity tests")


@pytest.fixture(scope="module")
def reference():
    sp = dlib.shape_predictor(str(source_file(FACE_RECOGNITION_MODELS, "shape_predictor_5_face_landmarks.dat")))
    rec = dlib.face_recognition_model_v1(
        str(source_file(FACE_RECOGNITION_MODELS, "dlib_face_recognition_resnet_model_v1.dat"))
    )
    return dlib.get_frontal_face_detector(), sp, rec


@pytest.fixture(scope="module")
def faces(lfw, reference):
    """(rgb, dlib rect) for 12 LFW images of different people where dlib finds a face."""
    detector = reference[0]
    out = []
    for folder in sorted((lfw / "lfw").iterdir())[::97]:
        rgb = decode_image(sorted(folder.glob("*.jpg"))[0].read_bytes()).rgb
        dets = detector(rgb, 1)
        if dets:
            out.append((rgb, dets[0]))
        if len(out) == 12:
            break
    assert len(out) >= 8
    return out


def test_onnx_embedding_matches_dlib(models, faces, reference):
    _, sp, rec = reference
    net = OnnxModel(models / "face_embed_dlib_resnet_v1.onnx")
    for rgb, rect in faces:
        chip = dlib.get_face_chip(rgb, sp(rgb, rect), 150, 0.25)
        expected = np.array(rec.compute_face_descriptor(chip), np.float32)
        got = net.run(chip.transpose(2, 0, 1)[None].astype(np.float32))["embedding"][0]
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_landmarks_and_chip_match_dlib(models, faces, reference):
    _, sp, _ = reference
    ours = LandmarkPredictor(models / "face_landmarks_dlib_5.npz")
    for rgb, r in faces:
        shape = sp(rgb, r)
        expected = np.array([(p.x, p.y) for p in shape.parts()], np.float64)
        got = ours.predict(grey_for_landmarks(rgb), Rect(r.left(), r.top(), r.right(), r.bottom()))
        np.testing.assert_array_equal(got, expected)
        chip = extract_chip(rgb, got)
        diff = np.abs(chip.astype(int) - dlib.get_face_chip(rgb, shape, 150, 0.25).astype(int))
        assert diff.max() <= 1
