"""Classical iris segmentation that needs no model download: pupil, limbus, occlusions.

Pupil: of the round dark blobs (holes from specular reflections filled) found over a
ladder of dark thresholds, the one with the sharpest dark-to-bright outline (or a
concentric one inside it: a dark iris is a round blob too), refined by Daugman's
integro-differential operator on the full circle to a quarter pixel. Limbus: the same operator on the left and right arcs only (eyelids
cover the top and bottom), centred near the pupil. Occlusions (eyelids, eyelashes,
reflections) are masked in the normalised strip, where they are easier to see:
:func:`occlusion_mask`.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Circle:
    """A circle in image pixels (x right, y down)."""

    x: float
    y: float
    r: float


@dataclass(frozen=True)
class IrisBoundaries:
    """Pupil and limbus circles, with how sure each boundary is.

    Attributes:
        pupil: the pupil circle.
        iris: the limbus circle.
        pupil_roundness: filled blob area over its enclosing circle's (1 = a disc).
        limbus_contrast: grey-level step across the limbus (sclera minus iris).
    """

    pupil: Circle
    iris: Circle
    pupil_roundness: float
    limbus_contrast: float


def _arc_means(img: np.ndarray, cx: np.ndarray, cy: np.ndarray, radii: np.ndarray,
               angles: np.ndarray) -> np.ndarray:
    """Mean grey level on arcs: (centres, radii) for the given angles (bilinear)."""
    cos, sin = np.cos(angles), np.sin(angles)
    x = cx[:, None, None] + radii[None, :, None] * cos[None, None, :]
    y = cy[:, None, None] + radii[None, :, None] * sin[None, None, :]
    h, w = img.shape
    inside = (x >= 0) & (x <= w - 1.001) & (y >= 0) & (y <= h - 1.001)
    x, y = np.clip(x, 0, w - 1.001), np.clip(y, 0, h - 1.001)
    x0, y0 = x.astype(np.int32), y.astype(np.int32)
    fx, fy = x - x0, y - y0
    v = (img[y0, x0] * (1 - fx) * (1 - fy) + img[y0, x0 + 1] * fx * (1 - fy)
         + img[y0 + 1, x0] * (1 - fx) * fy + img[y0 + 1, x0 + 1] * fx * fy)
    count = inside.sum(-1)
    # An arc leaving the image is no arc: a mean over fewer angles steps by itself.
    return np.where(count == len(angles), v.mean(-1), np.nan)


def _integro_differential(img: np.ndarray, cx: np.ndarray, cy: np.ndarray, radii: np.ndarray,
                          angles: np.ndarray, width: int = 2) -> tuple[int, int, float]:
    """Daugman's operator: the centre and radius where the arc mean steps up most.

    The step at radius r is the mean of the ``width`` arcs just outside r minus the
    ``width`` just inside (radii one pixel apart): a wide window prefers the limbus, a
    broad step between iris and sclera, over sharp texture such as the collarette.

    Returns (centre index, radius index, step in grey levels).
    """
    means = np.nan_to_num(_arc_means(img, cx, cy, radii, angles), nan=-1e4)
    c = np.concatenate([np.zeros((len(means), 1)), np.cumsum(means, axis=1)], axis=1)
    r = np.arange(width, means.shape[1] - width)
    step = ((c[:, r + width] - c[:, r]) - (c[:, r] - c[:, r - width])) / width
    step[step > 1e3] = -1e4  # windows that reach outside the image
    ci, ri = np.unravel_index(int(np.argmax(step)), step.shape)
    return int(ci), int(r[ri]), float(step[ci, ri])


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed holes of a binary uint8 mask (reflections inside the pupil)."""
    h, w = mask.shape
    flood = mask.copy()
    ff = np.zeros((h + 2, w + 2), np.uint8)
    cv2.floodFill(flood, ff, (0, 0), 255)  # the corner is background after padding
    return mask | cv2.bitwise_not(flood)


def _edge_strength(img: np.ndarray, cands: np.ndarray, offsets=(1.0, 2.0, 3.0), n_angles: int = 64) -> np.ndarray:
    """How sharply each candidate circle (rows x, y, r) steps from dark inside to bright
    outside: the median over angles of (mean just outside - mean just inside).

    The median, not the mean, so that a reflection or an eyelid on part of the edge
    does not decide.
    """
    th = np.linspace(0, 2 * np.pi, n_angles, endpoint=False)
    d = np.asarray(offsets)
    h, w = img.shape

    def ring(sign: float) -> np.ndarray:
        r = cands[:, 2, None, None] + sign * d[None, :, None]
        x = np.rint(cands[:, 0, None, None] + r * np.cos(th)).astype(np.int64)
        y = np.rint(cands[:, 1, None, None] + r * np.sin(th)).astype(np.int64)
        inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
        v = img[np.clip(y, 0, h - 1), np.clip(x, 0, w - 1)].astype(np.float32)
        return np.where(inside, v, np.nan).mean(axis=1)  # (candidates, angles)

    step = ring(1.0) - ring(-1.0)
    return np.nan_to_num(np.nanmedian(step, axis=1), nan=-1e4)


def find_pupil(img: np.ndarray, min_r: float = 8.0, max_r: float = 90.0) -> tuple[Circle, float] | None:
    """The darkest round blob with the sharpest edge: (circle, roundness) or None when
    there is none."""
    smooth = cv2.medianBlur(img, 5)
    # Blobs are looked for on a copy about 120 px on its short side (pupils of r >= 8 px
    # keep r >= 4 there); edges are then measured and refined at full resolution.
    scale = max(1, min(img.shape) // 120)
    small = (cv2.resize(img, (img.shape[1] // scale, img.shape[0] // scale), interpolation=cv2.INTER_AREA)
             if scale > 1 else img)
    small = cv2.medianBlur(small, 5 if scale == 1 else 3)
    padded = cv2.copyMakeBorder(small, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=255)
    lo = int(np.percentile(small, 0.5))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5) if scale == 1 else (3, 3))
    # Every round dark blob over a ladder of thresholds is a candidate; the pupil is the
    # one whose outline is the sharpest dark-to-bright edge. Following one blob up the
    # ladder until it jumps in size stopped too early where a reflection splits the
    # pupil and too late where a dark iris grows out of it slowly (MMU1).
    cands: dict[tuple[int, int, int], tuple[float, float, float, float]] = {}
    for t in range(lo + 4, min(lo + 100, 220), 3):
        dark = ((padded <= t) * 255).astype(np.uint8)
        dark = cv2.morphologyEx(dark, cv2.MORPH_OPEN, kernel)  # eyelashes are thin
        filled = _fill_holes(dark)
        n, _, stats, cent = cv2.connectedComponentsWithStats(filled, connectivity=8)
        for i in range(1, n):
            _, _, w, h, area = stats[i]
            if not min_r <= 0.25 * scale * (w + h) <= max_r or max(w, h) > 1.35 * min(w, h):
                continue
            roundness = area / (np.pi * (max(w, h) / 2) ** 2)
            if roundness < 0.78:
                continue
            cx, cy, r = float(cent[i][0] - 1), float(cent[i][1] - 1), float(np.sqrt(area / np.pi))
            key = (round(cx), round(cy), round(r))
            if key not in cands or roundness > cands[key][3]:
                cands[key] = (scale * cx + (scale - 1) / 2, scale * cy + (scale - 1) / 2, scale * r, float(roundness))
    if not cands:
        return None
    arr = np.array(list(cands.values()))
    edge = _edge_strength(smooth, arr)
    best = int(np.argmax(edge))
    while True:
        # A dark iris is a round blob too, its edge on the sclera often the sharpest:
        # a good edge well inside the winner, concentric with it, is its pupil.
        x, y, r = arr[best, :3]
        inner = ((np.hypot(arr[:, 0] - x, arr[:, 1] - y) < 0.5 * r) & (arr[:, 2] <= 0.75 * r)
                 & (edge >= 0.5 * edge[best]))
        if not inner.any():
            break
        best = int(np.flatnonzero(inner)[np.argmax(edge[inner])])
    best = arr[best]
    c, roundness = Circle(*map(float, best[:3])), float(best[3])
    # Refine on the full circle: the blob's edge depends on the threshold. A pixel grid
    # first, then a quarter-pixel one: the code moves with the pupil's boundary, and
    # sub-pixel noise in it cost CASIA-IrisV1 EER (0.49% -> 0.70% for ~0.5 px).
    f = cv2.GaussianBlur(img, (0, 0), 1.0).astype(np.float32)
    angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    for step, reach, (r_lo, r_hi) in ((1.0, 2.0, (max(min_r - 2, c.r * 0.8), c.r * 1.25 + 2)),
                                      (0.25, 0.75, (c.r - 3.5, c.r + 3.5))):
        d = np.arange(-reach, reach + 1e-6, step)
        gx, gy = np.meshgrid(c.x + d, c.y + d)
        radii = np.arange(r_lo, r_hi + 1e-6, step)
        ci, ri, _ = _integro_differential(f, gx.ravel(), gy.ravel(), radii, angles, width=round(2 / step))
        c = Circle(float(gx.ravel()[ci]), float(gy.ravel()[ci]), float(radii[ri]))
    return c, roundness


def find_limbus(img: np.ndarray, pupil: Circle) -> tuple[Circle, float] | None:
    """The limbus: Daugman's operator on the left and right arcs around the pupil, or
    None when the image leaves no room for one."""
    f = cv2.GaussianBlur(img, (0, 0), 2.0).astype(np.float32)
    # Left and right arcs pin the centre's x and the radius but not its y: the y of the
    # pupil's centre is used (a free y shifted whole eyes by 13 px and broke their
    # codes; CASIA EER 3.8% -> 1.1%).
    reach = max(3.0, 0.25 * pupil.r)
    gx, gy = pupil.x + np.linspace(-reach, reach, 9), np.full(9, pupil.y)
    r_min = max(pupil.r * 1.35, pupil.r + 10)
    r_max = min(pupil.r * 5.0, 0.55 * max(img.shape))
    radii = np.arange(r_min, r_max, 1.0)
    if len(radii) < 16:
        return None
    side = np.deg2rad(np.linspace(-20, 25, 20))  # y down; wider arcs meet the eyelids
    angles = np.concatenate([side, np.pi - side])
    ci, ri, step = _integro_differential(f, gx, gy, radii, angles, width=6)
    return Circle(float(gx[ci]), float(gy[ci]), float(radii[ri])), step


def segment(img: np.ndarray) -> IrisBoundaries | None:
    """Pupil and limbus of a near-infrared eye image, or None when no pupil (or no room
    for an iris around it) is found."""
    found = find_pupil(img)
    if found is None:
        return None
    pupil, roundness = found
    limbus = find_limbus(img, pupil)
    if limbus is None:
        return None
    return IrisBoundaries(pupil, limbus[0], roundness, limbus[1])


def with_band(b: IrisBoundaries, scale: float) -> IrisBoundaries:
    """The same eye with the limbus moved so that the iris band (limbus radius minus
    pupil radius) is ``scale`` times as wide: an alternate normalisation."""
    iris = Circle(b.iris.x, b.iris.y, b.pupil.r + (b.iris.r - b.pupil.r) * scale)
    return IrisBoundaries(b.pupil, iris, b.pupil_roundness, b.limbus_contrast)


def rubber_sheet(img: np.ndarray, b: IrisBoundaries, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Daugman's rubber sheet: (rows x cols float32 strip, rows x cols bool 'outside image').

    Row 0 is the pupil boundary, the last row the limbus; column j is the angle
    2*pi*j/cols counter-clockwise from the right as seen on the image.
    """
    theta = 2 * np.pi * np.arange(cols) / cols
    rho = (np.arange(rows) + 0.5) / rows
    px = b.pupil.x + b.pupil.r * np.cos(theta)
    py = b.pupil.y - b.pupil.r * np.sin(theta)
    ix = b.iris.x + b.iris.r * np.cos(theta)
    iy = b.iris.y - b.iris.r * np.sin(theta)
    mx = ((1 - rho)[:, None] * px[None] + rho[:, None] * ix[None]).astype(np.float32)
    my = ((1 - rho)[:, None] * py[None] + rho[:, None] * iy[None]).astype(np.float32)
    strip = cv2.remap(img.astype(np.float32), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    h, w = img.shape
    outside = (mx < 0) | (my < 0) | (mx > w - 1) | (my > h - 1)
    return strip, outside


def occlusion_mask(strip: np.ndarray, outside: np.ndarray, bright: float = 230.0, k: float = 3.5,
                   lids: bool = True) -> np.ndarray:
    """True where the strip does not show iris: reflections, eyelids, eyelashes.

    The iris's own grey level is estimated where it is almost never occluded (the inner
    half of the left and right sectors); pixels far from it are occlusions. In the top
    and bottom sectors an eyelid covers the iris from the limbus inwards, so everything
    outside the first occluded run of a column is masked too.
    """
    rows, cols = strip.shape
    smooth = cv2.blur(strip, (5, 3), borderType=cv2.BORDER_REFLECT)
    ang = 2 * np.pi * np.arange(cols) / cols
    side = (np.abs(np.sin(ang)) < 0.5)
    ref = strip[: rows // 2][:, side]
    med = float(np.median(ref))
    mad = float(np.median(np.abs(ref - med))) * 1.4826 + 2.0
    mask = outside | (strip >= bright) | (smooth > med + k * mad) | (smooth < med - k * mad)
    mask = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    lid = ~side
    run = mask & np.roll(mask, -1, axis=0) & np.roll(mask, -2, axis=0)
    run[-2:] = mask[-2:]
    first = np.where(run.any(0), run.argmax(0), rows)
    below = np.arange(rows)[:, None] >= first[None, :]
    return mask | (below & lid[None, :]) if lids else mask
