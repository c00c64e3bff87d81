"""Image bytes -> iris code template: decode, segment, quality gates, rubber sheet,
occlusion mask, ONNX Gabor encoder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from enroll.face.detect import DetectorParams, FaceDetector
from enroll.image import decode_image
from enroll.iris.quality import darkest_pupil, measure
from enroll.iris.segment import IrisBoundaries, occlusion_mask, rubber_sheet, segment, with_band
from enroll.onnx_model import OnnxModel
from matcher.errors import QualityError
from matcher.iris import IrisTemplate
from models import iris_gabor as gabor
from models.paths import model_dir as default_model_dir

IRIS_MODEL_ID = "iris/gabor-v1"
_FACE_CHECK_SIDE = 160  # px: the face-photo check runs on a copy this small
_FACE_SCORE = 0.9  # O-Net probability; every LFW photo scored above, no eye image above 0.7
ENCODER_FILE = "iris_encode_gabor_v1.onnx"
# A probe is also coded with its iris band 10% narrower and wider: the limbus is the least
# sure boundary and the iris stretches unevenly as the pupil dilates. Compared at all three,
# best kept: CASIA-IrisV1 EER 0.44% -> 0.35% (FNMR at FMR 1e-3 0.79% -> 0.53%), MMU1 no worse
# (see the model card).
RADIAL_SCALES = (0.92, 1.08)


@dataclass(frozen=True)
class IrisQualityConfig:
    """Quality gate thresholds (set on CASIA-IrisV1 and MMU1, see ``models/cards/iris.md``).

    Attributes:
        min_ratio / max_ratio: pupil radius over iris radius; outside, the pupil or the
            limbus was missed (or the pupil is drug-dilated).
        min_contrast: grey-level step across the limbus; below, no iris edge was found.
        min_usable: share of code bits that see iris (eyelids, lashes and reflections
            take the rest).
        min_sharpness: mean absolute Laplacian of the iris over its mean grey level.
        max_sharpness: above it the texture is finer than any iris (a fingerprint).
        min_pupil_gap: grey levels between the pupil and the iris ring around it.
        max_pupil_std: spread of the pupil's grey levels (its brightest tenth, the
            reflections, left out); a pupil is a flat dark disc, hair or a nostril is not.

    The last three refuse non-eye images that still hold a dark round blob: on 100
    samples each, no ORL face or fingerprint passes, 12% of LFW face photos did (they
    have eyes, at too low a resolution) before the face-photo check refused them all.
    """

    min_ratio: float = 0.2
    max_ratio: float = 0.7
    min_contrast: float = 4.0
    min_usable: float = 0.35
    min_sharpness: float = 0.05  # the sample sets: 0.12 and up
    max_sharpness: float = 1.0  # the sample sets: up to 0.64; fingerprints 0.4-3
    min_pupil_gap: float = 30.0  # the sample sets: 44 and up
    max_pupil_std: float = 12.0  # the sample sets: up to 7


def sharpness(grey: np.ndarray, b: IrisBoundaries) -> float:
    """Focus: mean |Laplacian| inside the iris ring, relative to its mean grey."""
    lap = np.abs(cv2.Laplacian(grey.astype(np.float32), cv2.CV_32F, ksize=3))
    yy, xx = np.mgrid[: grey.shape[0], : grey.shape[1]]
    d = np.hypot(xx - b.pupil.x, yy - b.pupil.y)
    ring = (d > b.pupil.r + 3) & (d < b.pupil.r + 0.6 * (b.iris.r - b.pupil.r))
    if not ring.any():
        return 0.0
    return float(lap[ring].mean() / max(grey[ring].mean(), 1.0))


def pupil_contrast(grey: np.ndarray, b: IrisBoundaries) -> tuple[float, float]:
    """(iris ring mean minus pupil mean, pupil std), the pupil's brightest tenth left out."""
    yy, xx = np.mgrid[: grey.shape[0], : grey.shape[1]]
    d = np.hypot(xx - b.pupil.x, yy - b.pupil.y)
    pupil = darkest_pupil(grey[d < 0.8 * b.pupil.r])
    ring = grey[(d > 1.2 * b.pupil.r) & (d < b.pupil.r + 0.8 * (b.iris.r - b.pupil.r))]
    if not len(ring):
        return 0.0, float("inf")
    return float(ring.mean() - pupil.mean()), float(pupil.std())


def quality_score(b: IrisBoundaries, usable: float, sharp: float) -> int:
    """0..100: usable iris, focus and limbus contrast; each 1 at a typical good image."""
    u = np.clip((usable - 0.35) / 0.45, 0.0, 1.0)
    s = np.clip(sharp / 0.06, 0.0, 1.0) ** 0.5
    c = np.clip(b.limbus_contrast / 20.0, 0.0, 1.0) ** 0.5
    return int(round(100 * u * s * c))


def code_mask(occluded: np.ndarray) -> np.ndarray:
    """Valid code bits: less than 30% of a filter's central support occluded. (rows, cols) -> grid."""
    frac = cv2.blur(occluded.astype(np.float32), (2 * gabor.COL_STRIDE + 1, gabor.ROW_STRIDE + 1),
                    borderType=cv2.BORDER_REFLECT)
    rows = gabor.FIRST_ROW + gabor.ROW_STRIDE * np.arange(gabor.CODE_ROWS)
    cols = gabor.FIRST_COL + gabor.COL_STRIDE * np.arange(gabor.CODE_COLS)
    return frac[np.ix_(rows, cols)] < 0.3


class IrisExtractor:
    """Near-infrared eye image -> :class:`IrisTemplate`. Thread-safe; one per process."""

    model_id = IRIS_MODEL_ID

    def __init__(self, model_dir: Path | None = None, quality: IrisQualityConfig = IrisQualityConfig()) -> None:
        d = Path(model_dir) if model_dir else default_model_dir()
        self.encoder = OnnxModel(d / ENCODER_FILE)
        self.quality = quality
        # A whole face filling the frame means a photo, not an eye close-up. MTCNN, looking
        # only for faces of at least 30% of the image side on a 160 px copy (2-3 ms), found
        # one in 318 of 318 LFW photos and in none of the 1,206 CASIA-IrisV1 and MMU1 images.
        self.faces = FaceDetector(d, DetectorParams(min_face=20, min_face_fraction=0.3))

    def refuse_face_photo(self, rgb: np.ndarray) -> None:
        """Raise ``FACE_PHOTO`` when the image is a picture of a face rather than of one eye."""
        h, w = rgb.shape[:2]
        scale = _FACE_CHECK_SIDE / min(h, w)
        small = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))),
                           interpolation=cv2.INTER_AREA) if scale < 1 else rgb
        if any(d.score >= _FACE_SCORE for d in self.faces.detect(small)):
            raise QualityError("this is a photo of a face: send a near-infrared close-up of one eye", "FACE_PHOTO")

    def check(self, grey: np.ndarray, b: IrisBoundaries | None) -> float:
        """Raise :class:`QualityError` for an unusable eye image; returns the sharpness."""
        q = self.quality
        if b is None:
            # An oblique gaze lands here too: the pupil finder takes only round blobs.
            raise QualityError("no pupil found: is the eye open, looking at the camera, in near infrared?",
                               "IRIS_NOT_FOUND")
        ratio = b.pupil.r / b.iris.r
        if not q.min_ratio <= ratio <= q.max_ratio:
            raise QualityError(f"pupil/iris radius ratio {ratio:.2f} is outside {q.min_ratio}..{q.max_ratio}",
                               "PUPIL_IRIS_RATIO")
        if b.limbus_contrast < q.min_contrast:
            raise QualityError("no iris boundary found around the pupil", "IRIS_NOT_FOUND")
        gap, spread = pupil_contrast(grey, b)
        sharp = sharpness(grey, b)
        if gap < q.min_pupil_gap or spread > q.max_pupil_std or sharp > q.max_sharpness:
            raise QualityError("no eye found: nothing like a pupil inside an iris", "IRIS_NOT_FOUND")
        if sharp < q.min_sharpness:
            raise QualityError(f"the iris is out of focus (sharpness {sharp:.3f})", "BLURRED")
        return sharp

    def extract(self, data: bytes) -> IrisTemplate:
        """Extract one iris image.

        Raises:
            ImageDecodeError: the bytes are not a supported image.
            QualityError: ``FACE_PHOTO``, ``IRIS_NOT_FOUND``, ``PUPIL_IRIS_RATIO``,
                ``BLURRED`` or ``TOO_OCCLUDED``.
        """
        image = decode_image(data)
        self.refuse_face_photo(image.rgb)
        grey = cv2.cvtColor(image.rgb, cv2.COLOR_RGB2GRAY)
        b = segment(grey)
        sharp = self.check(grey, b)
        sheets = [rubber_sheet(grey, band, gabor.ROWS, gabor.COLS)
                  for band in (b, *(with_band(b, s) for s in RADIAL_SCALES))]
        occluded = [occlusion_mask(strip, outside) for strip, outside in sheets]
        valid = [code_mask(o) for o in occluded]
        usable = float(valid[0].mean())
        if usable < self.quality.min_usable:
            raise QualityError(f"only {usable:.0%} of the iris is visible; open the eye wider", "TOO_OCCLUDED")
        codes = self.encoder.run(np.stack([strip for strip, _ in sheets])[:, None])["code"] > 0.5
        pairs = [(bits, np.broadcast_to(v, bits.shape).copy()) for bits, v in zip(codes, valid)]
        iso = measure(grey, b, sheets[0][0], occluded[0], sharp)
        return IrisTemplate(IRIS_MODEL_ID, *pairs[0], quality_score(b, usable, sharp),
                            components=tuple(iso.as_dict().items()), alternates=tuple(pairs[1:]))
