"""Iris image quality components in the manner of ISO/IEC 29794-6:2015 (clause 6.2).

The standard names the components every iris quality assessment should report, each on a
0-100 scale (grey-scale utilisation in bits, the iris radius in pixels). We compute them
from our own segmentation, as we read their public definitions; they have not been checked
against the standard's text or a conformance test set, so treat them as operator feedback
with standard names, not as certified values. Two components differ on purpose, and say
so: pupil boundary circularity and sharpness (see :class:`IsoIrisQuality`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from enroll.iris.segment import IrisBoundaries

# Margins the standard's cropped image (ISO/IEC 19794-6:2011 K3) keeps around the iris,
# as multiples of the iris radius: wider left and right than above and below.
_MARGIN_SIDE = 0.6
_MARGIN_TOP_BOTTOM = 0.2
_SHARPNESS_HALF = 0.06  # our focus measure at a typical well-focused CASIA image (see pipeline.quality_score)


@dataclass(frozen=True)
class IsoIrisQuality:
    """Quality components of one eye image, named after ISO/IEC 29794-6:2015.

    Attributes:
        usable_iris_area: % of the iris ring not covered by eyelids, lashes or reflections.
        iris_sclera_contrast: 100 * (S - I) / (S + I - 2P) with S, I, P the median grey
            of the sclera beside the limbus, the visible iris and the pupil (0 if S <= I).
        iris_pupil_contrast: 100 * W / (0.75 + W), Weber ratio W = (I - P) / (P + 20).
        pupil_boundary_circularity: 100 x the pupil blob's area over that of its
            enclosing circle (the standard fits a Fourier series to the boundary instead).
        grey_scale_utilisation: entropy in bits of the visible iris's grey levels.
        iris_radius: limbus radius in pixels.
        pupil_iris_ratio: 100 x pupil radius / iris radius.
        iris_pupil_concentricity: 100 x (1 - centre distance / iris radius).
        margin_adequacy: 100 x the smallest of the four image margins around the iris
            relative to what a cropped record keeps (0.6 radius left and right, 0.2 above
            and below), capped at 100.
        sharpness: our focus measure (mean |Laplacian| over mean grey in the iris ring,
            F) as 100 F / (F + 0.06), not the standard's filter.
    """

    usable_iris_area: float
    iris_sclera_contrast: float
    iris_pupil_contrast: float
    pupil_boundary_circularity: float
    grey_scale_utilisation: float
    iris_radius: float
    pupil_iris_ratio: float
    iris_pupil_concentricity: float
    margin_adequacy: float
    sharpness: float

    def as_dict(self) -> dict[str, float]:
        """Component name -> value, rounded to 0.01."""
        return {k: round(float(v), 2) for k, v in self.__dict__.items()}


def darkest_pupil(values: np.ndarray) -> np.ndarray:
    """Grey levels of the pupil, sorted, less their brightest tenth (the illuminator's reflection)."""
    v = np.sort(values.astype(np.float64))
    return v[: int(0.9 * len(v)) + 1]


def _entropy_bits(values: np.ndarray) -> float:
    hist = np.bincount(np.clip(values, 0, 255).astype(np.int64), minlength=256).astype(np.float64)
    p = hist[hist > 0] / hist.sum()
    return float(-(p * np.log2(p)).sum())


def measure(grey: np.ndarray, b: IrisBoundaries, strip: np.ndarray, occluded: np.ndarray,
            sharpness: float) -> IsoIrisQuality:
    """The quality components of an eye image already segmented and unwrapped.

    Args:
        grey: the eye image, 8-bit grey.
        b: its pupil and limbus circles.
        strip: the rubber-sheet strip (rows from pupil to limbus).
        occluded: the strip's occlusion mask (True where no iris is seen).
        sharpness: the pipeline's focus measure of the iris ring.
    """
    h, w = grey.shape
    # Everything measured lies within 1.25 iris radii of the iris centre: work in that window.
    reach = 1.25 * b.iris.r
    x0, x1 = max(0, int(b.iris.x - reach)), min(w, int(b.iris.x + reach) + 1)
    y0, y1 = max(0, int(b.iris.y - reach)), min(h, int(b.iris.y + reach) + 1)
    win = grey[y0:y1, x0:x1]
    yy, xx = np.ogrid[y0:y1, x0:x1]
    dp = np.hypot(xx - b.pupil.x, yy - b.pupil.y)
    di = np.hypot(xx - b.iris.x, yy - b.iris.y)
    iris_px = strip[~occluded]
    iris = float(np.median(iris_px)) if iris_px.size else 0.0
    pupil_px = win[dp < 0.8 * b.pupil.r]
    pupil = float(np.median(darkest_pupil(pupil_px))) if pupil_px.size else 0.0
    # Sclera beside the limbus, left and right only: eyelids cover it above and below.
    lateral = np.abs(yy - b.iris.y) < 0.5 * di
    sclera_px = win[(di > 1.05 * b.iris.r) & (di < 1.25 * b.iris.r) & lateral]
    sclera = float(np.median(sclera_px)) if sclera_px.size else iris
    denom = sclera + iris - 2 * pupil
    isc = 100 * (sclera - iris) / denom if sclera > iris and denom > 0 else 0.0
    weber = max(iris - pupil, 0.0) / (pupil + 20)
    margins = (
        (b.iris.x - b.iris.r) / (_MARGIN_SIDE * b.iris.r),
        (w - 1 - b.iris.x - b.iris.r) / (_MARGIN_SIDE * b.iris.r),
        (b.iris.y - b.iris.r) / (_MARGIN_TOP_BOTTOM * b.iris.r),
        (h - 1 - b.iris.y - b.iris.r) / (_MARGIN_TOP_BOTTOM * b.iris.r),
    )
    offset = float(np.hypot(b.pupil.x - b.iris.x, b.pupil.y - b.iris.y))
    return IsoIrisQuality(
        usable_iris_area=100 * float(1 - occluded.mean()),
        iris_sclera_contrast=float(np.clip(isc, 0, 100)),
        iris_pupil_contrast=100 * weber / (0.75 + weber),
        pupil_boundary_circularity=100 * float(np.clip(b.pupil_roundness, 0, 1)),
        grey_scale_utilisation=_entropy_bits(iris_px) if iris_px.size else 0.0,
        iris_radius=float(b.iris.r),
        pupil_iris_ratio=100 * b.pupil.r / b.iris.r,
        iris_pupil_concentricity=100 * max(0.0, 1 - offset / b.iris.r),
        margin_adequacy=100 * float(np.clip(min(margins), 0, 1)),
        sharpness=100 * sharpness / (sharpness + _SHARPNESS_HALF),
    )
