"""The iris encoder's filter bank: two complex Gabor filters along the angle axis of the
64 x 512 rubber-sheet strip, wavelengths 16 and 32 px (of 512 around the eye), Gaussian
envelopes sigma 6 x 3 and 10 x 5 px (angle x radius); their real and imaginary parts are
four channels. The angle axis wraps, the radius axis is edge-padded; the code grid is
6 radii (rows 4, 12, ..., 44: the inner three quarters of the iris, where eyelids reach
least) x 128 angles: 4 x 6 x 128 = 3072 bits. Parameters chosen on CASIA-IrisV1 and MMU1
(see ``models/cards/iris.md``).

The runtime reads the grid from here; ``models/iris_gabor.py`` (build time) writes the
same bank as one ONNX ``Conv``, and :func:`encode_numpy` is the reference both are
checked against.
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
