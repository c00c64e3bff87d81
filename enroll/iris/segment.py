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

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np


ROUND_BLOB = 0.78  # blob area over its enclosing circle's at and above which a pupil is seen whole


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
    """Mean grey level on arcs: (centres, radii) for the given angles (bilinear, float32
    image); NaN for an arc that leaves the image."""
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    x = (cx[:, None, None] + radii[None, :, None] * cos[None, None, :]).astype(np.float32)
    y = (cy[:, None, None] + radii[None, :, None] * sin[None, None, :]).astype(np.float32)
    h, w = img.shape
    inside = ((x >= 0) & (x <= w - 1.001) & (y >= 0) & (y <= h - 1.001)).all(-1)
    # OpenCV's remap samples bilinearly (to 1/32 px) several times faster than numpy
    # gathers; rows of one arc's angles keep it within remap's map size.
    v = cv2.remap(img, x.reshape(-1, len(angles)), y.reshape(-1, len(angles)), cv2.INTER_LINEAR,
                  borderMode=cv2.BORDER_REPLICATE).reshape(x.shape)
    # An arc leaving the image is no arc: a mean over fewer angles steps by itself.
    return np.where(inside, v.mean(-1), np.nan)


def _steps(means: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Daugman's radial step of arc means (centres x radii, NaN where an arc left the
    image): the mean of the ``width`` arcs just outside each radius minus the ``width``
    just inside. Returns (radius indices, steps: centres x those radii, NaN where a
    window holds an arc that left the image)."""
    c = np.concatenate([np.zeros((len(means), 1)), np.cumsum(means, axis=1)], axis=1)
    r = np.arange(width, means.shape[1] - width)
    return r, ((c[:, r + width] - c[:, r]) - (c[:, r] - c[:, r - width])) / width


def _integro_differential(img: np.ndarray, cx: np.ndarray, cy: np.ndarray, radii: np.ndarray,
                          angles: np.ndarray, width: int = 2) -> tuple[int, int, float]:
    """Daugman's operator: the centre and radius where the arc mean steps up most.

    The step at radius r is the mean of the ``width`` arcs just outside r minus the
    ``width`` just inside (radii one pixel apart): a wide window prefers the limbus, a
    broad step between iris and sclera, over sharp texture such as the collarette.

    Returns (centre index, radius index, step in grey levels).
    """
    r, step = _steps(_arc_means(img, cx, cy, radii, angles), width)
    step = np.nan_to_num(step, nan=-np.inf)
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


def remove_reflections(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The image with its specular reflections painted over, and where they were.

    A reflection is a small bright spot on something dark: a white top-hat (the image
    less its opening by a disc wider than any illuminator spot) of at least 60 grey
    levels, at least 180 bright, in a blob no larger than that disc whose surroundings
    (a 3-pixel ring) are at most half as bright as it. Every real NIR camera leaves
    one or a ring of them in the pupil; they split it, notch its edge and pull an arc
    mean, so boundaries are looked for only after they are inpainted from their
    surroundings. Skin seen between eyelashes passes the top-hat too, but its
    surroundings are bright skin: inpainting it would paint the lashes across it.

    Returns:
        (cleaned uint8 image, bool mask of the reflections, grown by two pixels).
    """
    side = max(15, (min(img.shape) // 12) | 1)
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))
    spots = ((cv2.subtract(img, cv2.morphologyEx(img, cv2.MORPH_OPEN, disc)) > 60) & (img >= 180)).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(spots, connectivity=8)
    if n == 1:
        return img, np.zeros(img.shape, bool)
    # Each spot's ring (the pixels within 3 of it, other spots' included) is found for
    # all spots at once: a pixel near spots A < B has A as the smallest label around it
    # and B as the largest, and belongs to both rings (one near three spots or more
    # joins two of them). The ring's median is at most half the spot's mean grey when
    # a strict majority of the ring is at most that dark.
    box = np.ones((7, 7), np.uint8)
    near_hi = cv2.dilate(labels.astype(np.float32), box).astype(np.int64)
    near_lo = (-cv2.dilate(-np.where(labels > 0, labels, n).astype(np.float32), box)).astype(np.int64)
    own_mean = np.bincount(labels.ravel(), img.ravel().astype(np.float64), n) / np.maximum(stats[:, 4], 1)
    limit = 0.5 * own_mean
    ring_size = np.zeros(n, np.int64)
    ring_dark = np.zeros(n, np.int64)
    for near, also in ((near_hi, None), (near_lo, near_hi)):
        member = (near > 0) & (near < n) & (near != labels)
        if also is not None:
            member &= near != also  # already counted through the largest label
        ids = near[member]
        ring_size += np.bincount(ids, None, n)
        ring_dark += np.bincount(ids, (img[member] <= limit[ids]).astype(np.float64), n).astype(np.int64)
    keep = (stats[:, 4] <= side * side) & (2 * ring_dark >= ring_size)
    keep[0] = False
    if not keep.any():
        return img, np.zeros(img.shape, bool)
    # Grown by two pixels: a spot's blurred rim is brighter than what it covers.
    mask = cv2.dilate(keep[labels].astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    return cv2.inpaint(img, mask, 3, cv2.INPAINT_TELEA), mask.astype(bool)


def _inscribed(dist: np.ndarray, labels: np.ndarray, i: int, box: np.ndarray) -> tuple[float, float, float]:
    """Centre and radius of the largest disc inside component ``i``: the peak of the
    distance transform ``dist`` of the whole mask within it."""
    x, y, w, h = (int(v) for v in box[:4])
    sub = np.where(labels[y:y + h, x:x + w] == i, dist[y:y + h, x:x + w], 0.0)
    yy, xx = np.unravel_index(int(np.argmax(sub)), sub.shape)
    return float(x + xx), float(y + yy), float(sub[yy, xx])


def _interior_spread(img: np.ndarray, cands: np.ndarray, n_angles: int = 32) -> np.ndarray:
    """Spread (standard deviation) of the grey levels inside each candidate circle (rows
    x, y, r), sampled on rings at 0.15-0.8 of its radius, the brightest tenth left out.
    A pupil is a flat dark disc; a dark gap between eyelashes is not."""
    th = np.linspace(0, 2 * np.pi, n_angles, endpoint=False)
    f = np.array([0.15, 0.3, 0.45, 0.6, 0.8])
    h, w = img.shape
    r = cands[:, 2, None, None] * f[None, :, None]
    x = np.clip(np.rint(cands[:, 0, None, None] + r * np.cos(th)), 0, w - 1).astype(np.int64)
    y = np.clip(np.rint(cands[:, 1, None, None] + r * np.sin(th)), 0, h - 1).astype(np.int64)
    v = np.sort(img[y, x].reshape(len(cands), -1).astype(np.float32), axis=1)
    return v[:, : int(0.9 * v.shape[1])].std(axis=1)


def pupil_candidates(img: np.ndarray, min_r: float = 8.0, max_r: float | None = None,
                     max_spread: float = 12.0) -> Iterator[tuple[Circle, float]]:
    """Pupils, best first: the dark round blobs with the sharpest edges, as (circle,
    roundness), each refined to a quarter pixel; the next lies outside the last.
    ``max_r`` defaults to 3/8 of the image's short side (90 px at 240)."""
    max_r = 0.375 * min(img.shape) if max_r is None else max_r
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
        n, labels, stats, cent = cv2.connectedComponentsWithStats(filled, connectivity=8)
        dist = None
        for i in range(1, n):
            _, _, w, h, area = stats[i]
            if min(w, h) * scale < 2 * min_r:
                continue
            roundness = area / (np.pi * (max(w, h) / 2) ** 2)
            if max(w, h) <= 1.35 * min(w, h) and roundness >= ROUND_BLOB:
                cx, cy, r = float(cent[i][0] - 1), float(cent[i][1] - 1), float(np.sqrt(area / np.pi))
            else:
                # Eyelashes touching the pupil, or a lid across it, join it into one blob
                # that is not round; the largest disc inside that blob is still the pupil.
                if dist is None:
                    dist = cv2.distanceTransform(filled, cv2.DIST_L2, 5)
                cx, cy, r = _inscribed(dist, labels, i, stats[i])
                cx, cy = cx - 1, cy - 1
                roundness = np.pi * r * r / area
                if roundness < 0.3:  # a disc lost in a large dark region: not a pupil
                    continue
            if not min_r <= scale * r <= max_r:
                continue
            key = (round(cx), round(cy), round(r))
            if key not in cands or roundness > cands[key][3]:
                cands[key] = (scale * cx + (scale - 1) / 2, scale * cy + (scale - 1) / 2, scale * r, float(roundness))
    if not cands:
        return
    arr = np.array(list(cands.values()))
    # A pupil cut by the image border leaves no whole iris to code; dark corners and the
    # gaps between lashes along the border are the usual such blobs.
    h, w = img.shape
    whole = ((arr[:, 0] >= arr[:, 2]) & (arr[:, 0] <= w - 1 - arr[:, 2])
             & (arr[:, 1] >= arr[:, 2]) & (arr[:, 1] <= h - 1 - arr[:, 2]))
    arr = arr[whole]
    if not len(arr):
        return
    edge = _edge_strength(smooth, arr)
    # A candidate whose inside is not flat (the pupil quality gate's own limit) is a gap
    # among eyelashes or lid skin, however sharp its outline.
    flat = _interior_spread(smooth, arr) <= max_spread
    if flat.any():
        arr, edge = arr[flat], edge[flat]
    # A blob that is round only inside (the largest disc in a blob joined with lashes)
    # is less sure than a round one: its edge counts in proportion.
    edge = edge * np.minimum(1.0, arr[:, 3] / ROUND_BLOB)
    f = cv2.GaussianBlur(img, (0, 0), 1.0).astype(np.float32)
    while len(arr):
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
        yield _refine_pupil(f, Circle(*map(float, arr[best, :3])), min_r), float(arr[best, 3])
        # The next guess lies elsewhere: drop every candidate centred inside this one.
        x, y, r = arr[best, :3]
        away = np.hypot(arr[:, 0] - x, arr[:, 1] - y) > r
        arr, edge = arr[away], edge[away]


def _refine_pupil(f: np.ndarray, c: Circle, min_r: float) -> Circle:
    """Daugman's operator on the full circle around a blob's circle (its edge depends on
    the threshold it was found at). A pixel grid first, then a quarter-pixel one: the
    code moves with the pupil's boundary, and sub-pixel noise in it cost CASIA-IrisV1
    EER (0.49% -> 0.70% for ~0.5 px)."""
    angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    for step, reach, (r_lo, r_hi) in ((1.0, 2.0, (max(min_r - 2, c.r * 0.8), c.r * 1.25 + 2)),
                                      (0.25, 0.75, (c.r - 3.5, c.r + 3.5))):
        d = np.arange(-reach, reach + 1e-6, step)
        gx, gy = np.meshgrid(c.x + d, c.y + d)
        radii = np.arange(r_lo, r_hi + 1e-6, step)
        ci, ri, _ = _integro_differential(f, gx.ravel(), gy.ravel(), radii, angles, width=round(2 / step))
        c = Circle(float(gx.ravel()[ci]), float(gy.ravel()[ci]), float(radii[ri]))
    return c


def find_limbus(img: np.ndarray, pupil: Circle) -> tuple[Circle, float] | None:
    """The limbus: Daugman's operator on the left and right arcs around the pupil, or
    None when the image leaves no room for one.

    Each side steps on its own and the two steps are averaged; where one side's arc
    has left the image (close framing, an eye off centre) the other side's step counts
    alone, with the centre's x held at the pupil's (one arc cannot tell a shifted
    centre from a larger radius).
    """
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
    # The step's window grows with the eye in the image (a fifth of the pupil radius,
    # 5-12 px): the limbus is a soft edge whose width scales with the iris, the
    # collarette inside it a sharp one; 6 px fixed lost large irises to the collarette.
    width = int(np.clip(round(0.2 * pupil.r), 5, 12))
    r, right = _steps(_arc_means(f, gx, gy, radii, side), width)
    _, left = _steps(_arc_means(f, gx, gy, radii, np.pi - side), width)
    both = (right + left) / 2
    # The missing side counts as no step: one side alone must step twice as high as
    # both sides do on average (an eye corner or a skin fold on one side is no limbus).
    one = np.where(np.isnan(right), left, right) / 2
    one[np.arange(len(gx)) != len(gx) // 2] = np.nan
    step = np.nan_to_num(np.where(np.isnan(both), one, both), nan=-np.inf)
    ci, ri = np.unravel_index(int(np.argmax(step)), step.shape)
    if not np.isfinite(step[ci, ri]):
        return None
    return Circle(float(gx[ci]), float(gy[ci]), float(radii[r[ri]])), float(step[ci, ri])


def segment(img: np.ndarray, accept: Callable[[IrisBoundaries], bool] | None = None,
            tries: int = 3) -> IrisBoundaries | None:
    """Pupil and limbus of a near-infrared eye image, or None when no pupil (or no room
    for an iris around it) is found.

    The pupil candidates are tried best first, up to ``tries``: the first whose
    boundaries ``accept`` takes (by default, any with a limbus) wins. A dark gap among
    eyelashes or at the eye's corner can have a sharper outline than a pupil crossed by
    lashes, but no iris around it. Failing all, the first found is returned, for the
    quality gates to refuse with their reason.
    """
    first = None
    for pupil, roundness in itertools.islice(pupil_candidates(img), tries):
        limbus = find_limbus(img, pupil)
        if limbus is None:
            continue
        found = IrisBoundaries(pupil, limbus[0], roundness, limbus[1])
        if accept is None or accept(found):
            return found
        first = first or found
    return first


def with_band(b: IrisBoundaries, scale: float) -> IrisBoundaries:
    """The same eye with the limbus moved so that the iris band (limbus radius minus
    pupil radius) is ``scale`` times as wide: an alternate normalisation."""
    iris = Circle(b.iris.x, b.iris.y, b.pupil.r + (b.iris.r - b.pupil.r) * scale)
    return IrisBoundaries(b.pupil, iris, b.pupil_roundness, b.limbus_contrast)


def sheet_coords(b: IrisBoundaries, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Image x and y (rows x cols float32) of Daugman's rubber sheet: row i at (i + 0.5) /
    rows of the way from the pupil boundary to the limbus, column j at the angle
    2*pi*j/cols counter-clockwise from the right as seen on the image."""
    theta = 2 * np.pi * np.arange(cols) / cols
    rho = ((np.arange(rows) + 0.5) / rows)[:, None]
    mx = (1 - rho) * (b.pupil.x + b.pupil.r * np.cos(theta)) + rho * (b.iris.x + b.iris.r * np.cos(theta))
    my = (1 - rho) * (b.pupil.y - b.pupil.r * np.sin(theta)) + rho * (b.iris.y - b.iris.r * np.sin(theta))
    return mx.astype(np.float32), my.astype(np.float32)


def outside_image(shape: tuple[int, int], mx: np.ndarray, my: np.ndarray) -> np.ndarray:
    """Where sampling points fall outside an image of this shape."""
    h, w = shape
    return (mx < 0) | (my < 0) | (mx > w - 1) | (my > h - 1)


def rubber_sheet(img: np.ndarray, b: IrisBoundaries, rows: int, cols: int,
                 hidden: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Daugman's rubber sheet: (rows x cols float32 strip, rows x cols bool 'not seen':
    outside the image, or where the bool image ``hidden`` is set, e.g. inpainted
    reflections). Row 0 is the pupil boundary, the last row the limbus (see
    :func:`sheet_coords`)."""
    mx, my = sheet_coords(b, rows, cols)
    strip = cv2.remap(img.astype(np.float32), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    outside = outside_image(img.shape, mx, my)
    if hidden is not None:
        outside |= cv2.remap(hidden.astype(np.float32), mx, my, cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REPLICATE) > 0.25
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
