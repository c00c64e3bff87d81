"""The iris encoder as an ONNX graph: a bank of complex Gabor filters as one ``Conv``.

Built by our own code (no weights to download): two complex Gabor filters along the
angle axis of the 64 x 512 rubber-sheet strip, wavelengths 16 and 32 px (of 512
around the eye), Gaussian envelopes sigma 6 x 3 and 10 x 5 px (angle x radius); their
real and imaginary parts are the Conv's four output channels. The angle axis wraps
(columns copied from the other end), the radius axis is edge-padded; the code grid is
sampled by the Conv stride: 6 radii (rows 4, 12, ..., 44: the inner three quarters of
the iris, where eyelids reach least) x 128 angles. Outputs are the filter responses
(``response``, float) and their signs (``code``, 1.0 where positive): 4 x 6 x 128 =
3072 bits. Parameters chosen on CASIA-IrisV1 and MMU1 (see ``models/cards/iris.md``).
"""

from __future__ import annotations

import numpy as np


ROWS, COLS = 64, 512
FILTERS = ((16.0, 6.0, 3.0), (32.0, 10.0, 5.0))  # (wavelength, sigma along angle, sigma along radius) in px
ROW_STRIDE, COL_STRIDE = 8, 4
CODE_ROWS, CODE_COLS = 6, COLS // COL_STRIDE
FIRST_ROW, FIRST_COL = ROW_STRIDE // 2, COL_STRIDE // 2
CHANNELS = 2 * len(FILTERS)
CODE_BITS = CHANNELS * CODE_ROWS * CODE_COLS
_HX = int(np.ceil(3 * max(f[1] for f in FILTERS)))
_HY = int(np.ceil(3 * max(f[2] for f in FILTERS)))


def kernels() -> np.ndarray:
    """(CHANNELS, 1, 2*_HY+1, 2*_HX+1) float32: real and imaginary part of each filter.

    The real part has its mean removed (no response to flat grey); each part is scaled
    to unit L1 norm so every channel's responses have the same range.
    """
    x, y = np.meshgrid(np.arange(-_HX, _HX + 1), np.arange(-_HY, _HY + 1))
    out = []
    for lam, sx, sy in FILTERS:
        env = np.exp(-0.5 * (x**2 / sx**2 + y**2 / sy**2))
        env[(np.abs(x) > np.ceil(3 * sx)) | (np.abs(y) > np.ceil(3 * sy))] = 0.0
        re = env * np.cos(2 * np.pi * x / lam)
        im = env * np.sin(2 * np.pi * x / lam)
        re -= env * (re.sum() / env.sum())
        out += [re / np.abs(re).sum(), im / np.abs(im).sum()]
    return np.stack(out)[:, None].astype(np.float32)


def encode_numpy(strip: np.ndarray) -> np.ndarray:
    """Reference implementation: (ROWS, COLS) strip -> (CHANNELS, CODE_ROWS, CODE_COLS) responses."""
    s = strip.astype(np.float64) - strip.mean()
    s = np.pad(s, ((0, 0), (_HX, _HX)), mode="wrap")
    s = np.pad(s, ((_HY, _HY), (0, 0)), mode="edge")
    k = kernels()[:, 0].astype(np.float64)
    out = np.empty((CHANNELS, CODE_ROWS, CODE_COLS))
    for i in range(CODE_ROWS):
        r = FIRST_ROW + i * ROW_STRIDE
        for j in range(CODE_COLS):
            c = FIRST_COL + j * COL_STRIDE
            out[:, i, j] = (s[r:r + 2 * _HY + 1, c:c + 2 * _HX + 1][None] * k).sum((1, 2))
    return out


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
