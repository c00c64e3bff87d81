"""What the adjudication pages draw: kept sample images as PNG (original, enhanced), the
overlays the matchers found (MCC's matched minutiae pairs, the iris boundaries and the
normalised strip with its mask), and rates in words a supervisor reads.

Images are decoded and re-encoded as PNG (no bytes from a capture reach the browser as
they came), never logged, never cached (the app sends them with ``no-store``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from enroll.image import decode_image


def png(grey_or_rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", grey_or_rgb if grey_or_rgb.ndim == 2 else grey_or_rgb[:, :, ::-1])
    if not ok:
        raise ValueError("could not encode a PNG")
    return buf.tobytes()


def sample_png(data: bytes, view: str = "original", size: tuple[int, int] | None = None) -> bytes:
    """A kept image as PNG: ``original``, or ``enhanced`` (contrast-limited adaptive
    histogram equalisation: ridges and iris texture stand out). ``size`` (width, height):
    resized to the frame its template's coordinates refer to (a finger scanned at another
    resolution was rescaled to 500 dpi before extraction)."""
    rgb = decode_image(data).rgb
    if size is not None and (rgb.shape[1], rgb.shape[0]) != size:
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    if view == "enhanced":
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        return png(cv2.createCLAHE(clipLimit=3.0, tileGridSize=(8, 8)).apply(grey))
    return png(rgb)


def strip_png(strip: np.ndarray, mask: np.ndarray) -> bytes:
    """A normalised iris strip, tinted red where it is masked (not iris: lids, lashes,
    reflections), scaled up 2x for the eye."""
    rgb = np.repeat(strip[:, :, None], 3, axis=2).astype(np.float32)
    rgb[~mask] = 0.5 * rgb[~mask] + 0.5 * np.array([255, 40, 40], np.float32)
    rgb = cv2.resize(rgb.astype(np.uint8), (strip.shape[1] * 2, strip.shape[0] * 2), interpolation=cv2.INTER_NEAREST)
    return png(rgb)


def code_png(code: np.ndarray, mask: np.ndarray) -> bytes:
    """An iris code (no image kept): each channel's bits as black and white rows, masked
    bits grey, stacked; scaled up 2x."""
    rows = []
    for c, m in zip(code, mask):
        grey = np.where(m, np.where(c, 255, 0), 128).astype(np.uint8)
        rows.append(grey)
        rows.append(np.full((2, grey.shape[1]), 200, np.uint8))
    grid = np.concatenate(rows[:-1])
    return png(cv2.resize(grid, (grid.shape[1] * 2, grid.shape[0] * 2), interpolation=cv2.INTER_NEAREST))


@dataclass(frozen=True)
class Mark:
    """A minutia to draw: image pixels (y down), direction in radians (counter-clockwise
    as seen), and the matched pair it belongs to (0: none)."""

    x: float
    y: float
    angle: float
    pair: int = 0

    def tip(self, length: float = 12.0) -> tuple[float, float]:
        return self.x + length * math.cos(self.angle), self.y - length * math.sin(self.angle)


def minutiae_marks(probe: np.ndarray, hit: np.ndarray, pairs: list[tuple[int, int, float]]
                   ) -> tuple[list[Mark], list[Mark]]:
    """Marks for both sides; the pairs MCC matched carry the same number on each side."""
    pa = {i: k + 1 for k, (i, _, _) in enumerate(pairs)}
    pb = {j: k + 1 for k, (_, j, _) in enumerate(pairs)}
    return ([Mark(float(m[0]), float(m[1]), float(m[2]), pa.get(i, 0)) for i, m in enumerate(probe)],
            [Mark(float(m[0]), float(m[1]), float(m[2]), pb.get(j, 0)) for j, m in enumerate(hit)])


def one_in(rate: float) -> str:
    """``1 in 10 million`` for 1e-7: the odds a person reads.

    >>> one_in(1e-7), one_in(0.004), one_in(3e-13), one_in(0.6), one_in(1e-12), one_in(1e-21)
    ('1 in 10 million', '1 in 250', '1 in 3.3 trillion', '1 in 2', '1 in 1 trillion', 'less than 1 in 1,000 trillion')
    """
    if rate <= 1e-15:  # past what calibration on real impostors can say
        return "less than 1 in 1,000 trillion"
    n = float(f"{1.0 / rate:.3g}")
    for size, word in ((1e12, "trillion"), (1e9, "billion"), (1e6, "million"), (1e3, "thousand")):
        if n >= size:
            v = n / size
            return f"1 in {v:.0f} {word}" if v >= 10 or v == round(v) else f"1 in {v:.1f} {word}"
    return f"1 in {max(1, round(n)):,}"


def coincidence(fpir: float) -> str:
    """What a candidate's FPIR means, in words."""
    if fpir >= 0.5:
        return "a coincidence is likely: as alike as a stranger often is"
    return f"{one_in(fpir)} chance that someone else in this gallery would look this alike"
