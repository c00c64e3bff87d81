"""The iris encoder as an ONNX graph: :mod:`enroll.iris.gabor`'s filter bank as one ``Conv``.

Built by our own code (no weights to download). Outputs are the filter responses
(``response``, float) and their signs (``code``, 1.0 where positive), [N, 4, 6, 128].
Build time only: the runtime imports :mod:`enroll.iris.gabor`, never this module.
"""

from __future__ import annotations

import numpy as np

from enroll.iris.gabor import (_HX, _HY, CHANNELS, CODE_COLS, CODE_ROWS, COL_STRIDE, COLS, FIRST_COL, FIRST_ROW,
                               ROW_STRIDE, ROWS, kernels)


def to_onnx() -> "onnx.ModelProto":  # noqa: F821 - onnx is a build dependency, imported here only
    """Input ``strip`` [N, 1, 64, 512] float32 (grey levels); outputs ``response`` and
    ``code`` [N, 4, 6, 128]."""
    # The runtime imports this module for its constants; onnx is for `make models` only.
    import onnx

    from models.onnx_graph import GraphBuilder

    g = GraphBuilder()
    mean = g.op("ReduceMean", ["strip"], axes=[2, 3], keepdims=1)  # opset 17: axes is an attribute
    x = g.op("Sub", ["strip", mean])
    left = g.op("Slice", [x, g.const(np.array([COLS - _HX], np.int64)), g.const(np.array([COLS], np.int64)),
                          g.const(np.array([3], np.int64))])
    right = g.op("Slice", [x, g.const(np.array([0], np.int64)), g.const(np.array([_HX], np.int64)),
                           g.const(np.array([3], np.int64))])
    x = g.op("Concat", [left, x, right], axis=3)
    x = g.op("Pad", [x, g.const(np.array([0, 0, _HY, 0, 0, 0, _HY, 0], np.int64))], mode="edge")
    # Start at the first sampled row and column; the stride then lands on the grid.
    x = g.op("Slice", [x, g.const(np.array([FIRST_ROW, FIRST_COL], np.int64)),
                       g.const(np.array([FIRST_ROW + (CODE_ROWS - 1) * ROW_STRIDE + 2 * _HY + 1,
                                         FIRST_COL + (CODE_COLS - 1) * COL_STRIDE + 2 * _HX + 1], np.int64)),
                       g.const(np.array([2, 3], np.int64))])
    response = g.op("Conv", [x, g.const(kernels())], strides=[ROW_STRIDE, COL_STRIDE])
    g.output(response, "response")
    positive = g.op("Greater", [response, g.const(np.zeros(1, np.float32))])
    g.output(g.op("Cast", [positive], to=onnx.TensorProto.FLOAT), "code")
    shape = ["N", CHANNELS, CODE_ROWS, CODE_COLS]
    return g.model("iris_gabor_v1", {"strip": ["N", 1, ROWS, COLS]}, {"response": shape, "code": shape})
