"""Minutiae by LEADER (ONNX) on the segmented foreground of a 500 dpi image."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from enroll.finger.segment import Foreground
from enroll.onnx_model import OnnxModel

_MULTIPLE = 32  # the network downsamples five times
_MARGIN = 16  # px kept around the foreground: the network sees the finger's edge as it was trained
_DETECT = 0.55  # a minutia is an NMS peak of the quality channel at or above this
# A sparse impression (dry, noisy: LEADER is unsure of most of it) is topped up to
# _FILL_TO minutiae with the best weaker peaks down to _FILL_FLOOR. Measured on every
# FVC set and FCJ: never worse, and FVC2000 DB4's noisiest finger enrols (card).
_FILL_TO = 20
_FILL_FLOOR = 0.3
_ENDING = 0.5  # type channel: >= 0.5 ridge ending, else bifurcation
_BORDER = 8  # px: minutiae this close to the foreground edge are the edge, not the finger


class LeaderMinutiae:
    """Finds minutiae: (N, 5) float32 rows of x, y, angle (rad, counter-clockwise from +x,
    y down), type (1 ending, 0 bifurcation), quality (0..1, on LEADER's scale), best first.

    Args:
        path: the optimised LEADER graph built by ``models.build``, or a student with
            LEADER's output contract.
        expected_sha256: the manifest's hash of it.
        detect: the network's own detection threshold. Qualities are mapped piecewise
            linearly so that it lands on LEADER's 0.55 (and the top-up floor stays
            0.3): every later use of quality (the index's sure minutiae, ISO records)
            then reads one scale whichever network made the template.
    """

    def __init__(self, path: Path, expected_sha256: str | None = None, detect: float = _DETECT) -> None:
        if not _FILL_FLOOR < detect < 1.0:
            raise ValueError(f"detection threshold {detect} must lie in ({_FILL_FLOOR}, 1)")
        self.model = OnnxModel(path, threads=1, expected_sha256=expected_sha256)
        self.detect = detect

    def __call__(self, grey: np.ndarray, fg: Foreground, max_minutiae: int = 150) -> np.ndarray:
        rows = self.peaks(grey, fg)
        strong = int(np.count_nonzero(rows[:, 4] >= self.detect))
        rows = rows[:min(max(strong, _FILL_TO), max_minutiae)]
        rows[:, 4] = on_leader_scale(rows[:, 4], self.detect)
        return rows

    def peaks(self, grey: np.ndarray, fg: Foreground) -> np.ndarray:
        """Every peak down to the top-up floor, well inside the foreground, best first,
        with the network's own quality (rows as :meth:`__call__`'s)."""
        canvas, (x0, y0, top, left, ch, cw) = network_input(grey, fg)
        out = next(iter(self.model.run(canvas[None, :, :, None]).values()))[0]
        out = out[top:top + ch, left:left + cw]
        ys, xs = np.nonzero(out[..., 3] >= _FILL_FLOOR)
        keep = _inside(fg.mask, xs + x0, ys + y0)
        ys, xs = ys[keep], xs[keep]
        rows = np.stack([
            xs + x0, ys + y0, out[ys, xs, 1], (out[ys, xs, 2] >= _ENDING).astype(np.float32), out[ys, xs, 3],
        ], axis=1).astype(np.float32)
        return rows[np.argsort(-rows[:, 4], kind="stable")]


def on_leader_scale(q: np.ndarray, detect: float) -> np.ndarray:
    """Map qualities from a network detecting at ``detect`` onto LEADER's scale: piecewise
    linear through (floor, floor), (detect, 0.55) and (1, 1); the identity for LEADER."""
    return np.interp(q, [_FILL_FLOOR, detect, 1.0], [_FILL_FLOOR, _DETECT, 1.0]).astype(np.float32)


def network_input(grey: np.ndarray, fg: Foreground) -> tuple[np.ndarray, tuple[int, int, int, int, int, int]]:
    """The finger's bounding box plus a margin, centred on a canvas of multiples of 32
    filled with the background grey: (canvas float32, (x0, y0, top, left, h, w)) where
    the crop's (0, 0) is image pixel (x0, y0) and canvas pixel (left, top)."""
    h, w = grey.shape
    x0, y0, x1, y1 = fg.bbox
    x0, y0 = max(0, x0 - _MARGIN), max(0, y0 - _MARGIN)
    x1, y1 = min(w, x1 + _MARGIN), min(h, y1 + _MARGIN)
    crop = grey[y0:y1, x0:x1].astype(np.float32)
    background = float(np.median(grey[~fg.mask])) if (~fg.mask).any() else float(crop[0, 0])
    ch, cw = crop.shape
    ph, pw = -(-ch // _MULTIPLE) * _MULTIPLE, -(-cw // _MULTIPLE) * _MULTIPLE
    top, left = (ph - ch) // 2, (pw - cw) // 2
    canvas = np.full((ph, pw), background, np.float32)
    canvas[top:top + ch, left:left + cw] = crop
    return canvas, (x0, y0, top, left, ch, cw)


def _inside(mask: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """True where a point lies at least ``_BORDER`` px inside the foreground."""
    import cv2

    inner = cv2.erode(mask.astype(np.uint8), np.ones((2 * _BORDER + 1, 2 * _BORDER + 1), np.uint8))
    return inner[ys, xs].astype(bool)
