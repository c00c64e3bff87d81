"""dlib's 5-point face landmark predictor (ensemble of regression trees), in numpy.

A port of ``dlib::shape_predictor::operator()`` evaluated on arrays built by
:mod:`models.shape_predictor`. Details that keep it identical to dlib:

* pixel features are integer grey ``(r + g + b) // 3`` read at the nearest pixel
  (``floor(x + 0.5)``), 0 outside the image;
* the reference-to-current similarity transform is Umeyama's least squares,
  computed in float64 and applied in float32, as dlib does;
* tree outputs are added to the shape sequentially in float32 (``cumsum`` keeps
  dlib's summation order; a pairwise sum would round differently).

Output points (dlib order): 0/1 outer/inner corner of the eye on the image's
right, 2/3 outer/inner corner of the eye on the image's left, 4 base of the nose.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from matcher.errors import ModelMissing


@dataclass(frozen=True)
class Rect:
    """dlib's integer rectangle with inclusive right/bottom edges."""

    left: int
    top: int
    right: int
    bottom: int


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares similarity (scale, rotation, shift) mapping src points onto dst.

    Umeyama's solution (1991, eqs. 34-43), which dlib computes with an SVD, has this
    closed form in 2-D when no reflection is involved, as is the case for face shapes;
    it is 20x faster than the SVD and runs 30 times per face.

    Returns:
        (M, t) with dst ~= src @ M.T + t, M a 2x2 scaled rotation.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    ss = float((sc**2).sum())
    if ss == 0.0:
        return np.eye(2), mu_d - mu_s
    a = float((sc * dc).sum()) / ss
    b = float((sc[:, 0] * dc[:, 1] - sc[:, 1] * dc[:, 0]).sum()) / ss
    m = np.array([[a, -b], [b, a]])
    return m, mu_d - m @ mu_s


class LandmarkPredictor:
    """Five-point landmarks inside a face rectangle. Thread-safe (read-only arrays)."""

    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise ModelMissing(f"landmark model {path.name} not found; run `make setup`")
        with np.load(path) as z:
            self._initial = z["initial_shape"].reshape(-1, 2)
            split_idx = z["split_idx"]  # (C, T, S, 2)
            thresh = z["split_thresh"]  # (C, T, S)
            leaves = z["leaf_values"]  # (C, T, L, P*2)
            self._anchor = z["anchor_idx"]
            self._deltas = z["deltas"]
        c, t, s, _ = split_idx.shape
        # Flattened per cascade so each tree level is three 1-D takes (numpy call overhead,
        # not arithmetic, dominates here).
        self._idx1 = np.ascontiguousarray(split_idx[..., 0].reshape(c, t * s))
        self._idx2 = np.ascontiguousarray(split_idx[..., 1].reshape(c, t * s))
        self._thresh = np.ascontiguousarray(thresh.reshape(c, t * s))
        self._leaves = np.ascontiguousarray(leaves.reshape(c, t * leaves.shape[2], -1))
        self._n_splits, self._n_leaves = s, leaves.shape[2]
        self._depth = int(np.log2(self._n_leaves))
        self._split_base = np.arange(t) * s
        self._leaf_base = np.arange(t) * self._n_leaves - s

    def box_for(self, points: np.ndarray) -> Rect:
        """The box in which this predictor's mean shape best fits ``points`` (scale + shift)."""
        return box_from_mean_shape(self._initial, points)

    def predict(self, grey: np.ndarray, rect: Rect) -> np.ndarray:
        """Predict landmarks.

        Args:
            grey: (H, W) integer-valued grey image, ``(r+g+b)//3`` of the RGB image.
            rect: the face rectangle (dlib detector convention).

        Returns:
            (5, 2) float64 landmark coordinates, rounded to whole pixels like dlib's.
        """
        h, w = grey.shape
        sx, sy = float(rect.right - rect.left), float(rect.bottom - rect.top)
        shape = self._initial.astype(np.float32).copy()
        for c in range(len(self._idx1)):
            m, _ = similarity_transform(self._initial, shape)
            m32 = m.astype(np.float32)
            pts = self._deltas[c] @ m32.T + shape[self._anchor[c]]  # float32, normalised coords
            px = np.floor(pts[:, 0].astype(np.float64) * sx + rect.left + 0.5).astype(np.int64)
            py = np.floor(pts[:, 1].astype(np.float64) * sy + rect.top + 0.5).astype(np.int64)
            inside = (px >= 0) & (px < w) & (py >= 0) & (py < h)
            feats = np.zeros(len(px), np.float32)
            feats[inside] = grey[py[inside], px[inside]]
            node = np.zeros(len(self._split_base), np.int64)
            idx1, idx2, thr = self._idx1[c], self._idx2[c], self._thresh[c]
            for _ in range(self._depth):
                lin = self._split_base + node
                go_left = (feats[idx1[lin]] - feats[idx2[lin]]) > thr[lin]
                node = 2 * node + 2 - go_left
            leaves = self._leaves[c][self._leaf_base + node]  # (T, P*2)
            stacked = np.concatenate([shape.reshape(1, -1), leaves], axis=0)
            shape = np.cumsum(stacked, axis=0, dtype=np.float32)[-1].reshape(-1, 2)
        out = np.empty(shape.shape, np.float64)
        out[:, 0] = np.floor(shape[:, 0].astype(np.float64) * sx + rect.left + 0.5)
        out[:, 1] = np.floor(shape[:, 1].astype(np.float64) * sy + rect.top + 0.5)
        return out


def box_from_mean_shape(mean: np.ndarray, points: np.ndarray) -> Rect:
    """Least-squares box (x0, y0, side) such that ``points ~= (x0, y0) + side * mean``.

    Args:
        mean: (P, 2) point positions in unit-box coordinates.
        points: (P, 2) observed image points.
    """
    n = len(mean)
    a = np.zeros((2 * n, 3))
    a[0::2, 0] = 1
    a[1::2, 1] = 1
    a[0::2, 2] = mean[:, 0]
    a[1::2, 2] = mean[:, 1]
    x0, y0, side = np.linalg.lstsq(a, np.asarray(points, np.float64).reshape(-1), rcond=None)[0]
    return Rect(int(round(x0)), int(round(y0)), int(round(x0 + side)), int(round(y0 + side)))


def grey_for_landmarks(rgb: np.ndarray) -> np.ndarray:
    """dlib's ``get_pixel_intensity`` of an RGB pixel: integer mean of the channels."""
    total = rgb[..., 0].astype(np.uint16)
    total += rgb[..., 1]
    total += rgb[..., 2]
    return (total // 3).astype(np.uint8)  # channel adds: sum(axis=2) is 5x slower
