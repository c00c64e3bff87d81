"""Image bytes -> iris code template: decode, segment, quality gates, rubber sheet,
occlusion mask, ONNX Gabor encoder."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from enroll.face.detect import DetectorParams, FaceDetector
from enroll.image import decode_image
from enroll.iris.quality import darkest_pupil, measure
from enroll.iris.segment import (ROUND_BLOB, IrisBoundaries, occlusion_mask, outside_image, remove_reflections,
                                 rubber_sheet, segment, sheet_coords, with_band)
from enroll.onnx_model import OnnxModel
from matcher.errors import QualityError
from matcher.iris.template import IrisTemplate
from enroll.iris import gabor
from enroll.model_files import model_dir as default_model_dir

IRIS_MODEL_ID = "iris/gabor-v2"
_FACE_CHECK_SIDE = 160  # px: the face-photo check runs on a copy this small
_FACE_SCORE = 0.9  # O-Net probability; every LFW photo scored above, no eye image above 0.7
ENCODER_FILE = "iris_encode_gabor_v1.onnx"
WORK_SIDE = 280  # px: the short side images larger than this are segmented and coded at
# A probe is also coded with its iris band 10% narrower and wider: the limbus is the least
# sure boundary and the iris stretches unevenly as the pupil dilates. Compared at all three,
# best kept: CASIA-IrisV1 EER 0.44% -> 0.35% (FNMR at FMR 1e-3 0.79% -> 0.53%), MMU1 no worse
# (see the model card).
RADIAL_SCALES = (0.92, 1.08)


@dataclass(frozen=True)
class IrisReview:
    """Segmentation's findings in one eye image (:meth:`IrisExtractor.review`).

    Attributes:
        pupil / iris: (x, y, r) of the pupil and limbus circles in the captured image's pixels.
        strip: the normalised iris (rubber sheet), rows x cols grey levels, pupil side first.
        mask: True where the iris was seen, strip pixel by strip pixel (the code's bits
            are compared where their filter's support is mostly seen).
    """

    pupil: tuple[float, float, float]
    iris: tuple[float, float, float]
    strip: np.ndarray
    mask: np.ndarray


@dataclass(frozen=True)
class IrisQualityConfig:
    """Quality gate thresholds (set on CASIA-IrisV1 and MMU1, see ``models/cards/iris.md``).

    Attributes:
        min_iris_radius: limbus radius in pixels; a smaller iris has too few pixels for
            the code's 128 angles (and dark gaps among eyelashes make such small "eyes").
        max_out_of_frame: share of the iris ring (pupil to limbus) outside the image;
            the code would be mostly mask, and a dark eye corner at the image's edge
            makes such "eyes" in a closed-eye picture.
        min_ratio / max_ratio: pupil radius over iris radius; outside, the pupil or the
            limbus was missed (or the pupil is drug-dilated).
        min_contrast: grey-level step across the limbus; below, no iris edge was found.
        min_usable: share of code bits that see iris (eyelids, lashes and reflections
            take the rest).
        min_sharpness: mean absolute Laplacian of the iris over its mean grey level.
        max_dark_share: share of the iris ring beside the pupil (left and right, where
            lids reach least) as dark as the pupil; an iris is brighter than its pupil
            everywhere, the ridges of a fingerprint around a dark blob are not.
        min_pupil_gap: grey levels between the pupil and the iris ring around it.
        min_pupil_cnr: the pupil's contrast to noise: its gap to the iris over the
            spread of its own grey levels (plus one). Rose's criterion: below 5 an edge
            is not reliably seen. A pupil is a flat dark disc; hair, a nostril, a dark
            gap among lashes or a closed lid is not.

    The last three refuse non-eye images that still hold a dark round blob: on 100
    samples each, no ORL face or fingerprint passes, 12% of LFW face photos did (they
    have eyes, at too low a resolution) before the face-photo check refused them all.
    """

    min_iris_radius: float = 35.0  # the sample sets: 47 and up (ISO/IEC 19794-6 calls < 50 marginal)
    max_out_of_frame: float = 0.25  # the sample sets: up to 0.19 (IITD, framed close)
    min_ratio: float = 0.2
    max_ratio: float = 0.7
    min_contrast: float = 4.0
    min_usable: float = 0.35
    min_sharpness: float = 0.05  # the sample sets: 0.12 and up
    max_dark_share: float = 0.3  # the sample sets: up to 0.24; fingerprints 0.34 and up
    min_pupil_gap: float = 15.0  # the sample sets: 42 and up; darker exposures 23 (contrast to noise decides)
    min_pupil_cnr: float = 5.0  # the sample sets: 5.5 and up (MMU1; CASIA 54, IITD 7.4)


def _around_pupil(grey: np.ndarray, b: IrisBoundaries) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The square of the image within the limbus radius of the pupil's centre (every
    measure below lies inside it), with each pixel's offsets and distance from that
    centre: (window, dx, dy, distance)."""
    h, w = grey.shape
    reach = b.iris.r + 2
    x0, x1 = max(0, int(b.pupil.x - reach)), min(w, int(b.pupil.x + reach) + 1)
    y0, y1 = max(0, int(b.pupil.y - reach)), min(h, int(b.pupil.y + reach) + 1)
    dy, dx = np.mgrid[y0:y1, x0:x1]
    dx, dy = dx - b.pupil.x, dy - b.pupil.y
    return grey[y0:y1, x0:x1], dx, dy, np.hypot(dx, dy)


def sharpness(grey: np.ndarray, b: IrisBoundaries) -> float:
    """Focus: mean |Laplacian| inside the iris ring, relative to its mean grey."""
    win, _, _, d = _around_pupil(grey, b)
    lap = np.abs(cv2.Laplacian(win.astype(np.float32), cv2.CV_32F, ksize=3))
    ring = (d > b.pupil.r + 3) & (d < b.pupil.r + 0.6 * (b.iris.r - b.pupil.r))
    if not ring.any():
        return 0.0
    return float(lap[ring].mean() / max(win[ring].mean(), 1.0))


def out_of_frame(shape: tuple[int, int], b: IrisBoundaries) -> float:
    """Share of the iris ring between pupil and limbus (64 angles x 8 radii, as the
    rubber sheet samples it) that falls outside an image of this shape."""
    return float(outside_image(shape, *sheet_coords(b, 8, 64)).mean())


def pupil_contrast(grey: np.ndarray, b: IrisBoundaries) -> tuple[float, float, float]:
    """(iris ring mean minus pupil mean, pupil std, dark share), the pupil's brightest
    tenth left out. The dark share is the part of the ring beside the pupil (left and
    right sectors) darker than a third of the way from the pupil's median to the ring's."""
    win, _, dy, d = _around_pupil(grey, b)
    pupil = darkest_pupil(win[d < 0.8 * b.pupil.r])
    inner = (d > 1.2 * b.pupil.r) & (d < b.pupil.r + 0.8 * (b.iris.r - b.pupil.r))
    ring = win[inner]
    side = win[inner & (np.abs(dy) < 0.5 * d)].astype(np.float64)
    if not len(ring) or not len(side) or not len(pupil):
        return 0.0, float("inf"), 1.0
    level = np.median(pupil) + (np.median(side) - np.median(pupil)) / 3
    return float(ring.mean() - pupil.mean()), float(pupil.std()), float(np.mean(side < level))


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

    def refusal(self, grey: np.ndarray, b: IrisBoundaries | None, scale: float = 1.0) -> QualityError | None:
        """Why this segmentation of an eye image is unusable, or None when it passes.
        ``scale``: the working image's size over the captured one's (sizes are judged
        in captured pixels)."""
        q = self.quality
        if b is None:
            # An oblique gaze lands here too: the pupil finder takes only round blobs.
            return QualityError("no pupil found: is the eye open, looking at the camera, in near infrared?",
                                "IRIS_NOT_FOUND")
        # Is it an eye at all (a pupil inside an iris)? Only then do its size and shape say
        # what to fix in the capture.
        if b.limbus_contrast < q.min_contrast:
            return QualityError("no iris boundary found around the pupil", "IRIS_NOT_FOUND")
        gap, spread, dark = pupil_contrast(grey, b)
        if gap < q.min_pupil_gap or gap < q.min_pupil_cnr * (spread + 1) or dark > q.max_dark_share:
            return QualityError("no eye found: nothing like a pupil inside an iris", "IRIS_NOT_FOUND")
        framing = self._framing(grey.shape, b, scale)
        if framing is not None and b.pupil_roundness < ROUND_BLOB:
            # Only a pupil seen whole says an eye is there, badly framed; a dark blob
            # joined with lashes that fails here is most often a closed eye's lash line.
            return QualityError("no open eye found: is the eye open, and in the middle of the picture?",
                                "IRIS_NOT_FOUND")
        if framing is not None:
            return framing
        sharp = sharpness(grey, b)
        if sharp < q.min_sharpness:
            return QualityError(f"the iris is out of focus (sharpness {sharp:.3f})", "BLURRED")
        return None

    def _framing(self, shape: tuple[int, int], b: IrisBoundaries, scale: float) -> QualityError | None:
        """What is wrong with how an eye was framed (its size, place, pupil size), if anything."""
        q = self.quality
        if b.iris.r / scale < q.min_iris_radius:
            return QualityError(f"the iris is {2 * b.iris.r / scale:.0f} pixels across, too small to code: "
                                f"bring the camera closer", "IRIS_TOO_SMALL")
        cut = out_of_frame(shape, b)
        if cut > q.max_out_of_frame:
            return QualityError(f"{cut:.0%} of the iris lies outside the picture: centre the eye in the frame",
                                "IRIS_OUT_OF_FRAME")
        ratio = b.pupil.r / b.iris.r
        if not q.min_ratio <= ratio <= q.max_ratio:
            return QualityError(f"pupil/iris radius ratio {ratio:.2f} is outside {q.min_ratio}..{q.max_ratio}",
                                "PUPIL_IRIS_RATIO")
        return None

    def _segmented(self, data: bytes) -> tuple[np.ndarray, float, np.ndarray, IrisBoundaries]:
        """Decode, scale, remove reflections and segment, refusing as :meth:`extract`
        does: (the working grey image, its scale, the reflections, the boundaries)."""
        image = decode_image(data)
        self.refuse_face_photo(image.rgb)
        grey = cv2.cvtColor(image.rgb, cv2.COLOR_RGB2GRAY)
        # Larger captures are worked on at WORK_SIDE on their short side: an iris there is
        # still ~100 px in radius, finer than the code's filters read (16-32 of 512
        # angles), and every step costs by the pixel (a 640 x 480 eye took 100 ms).
        scale = min(1.0, WORK_SIDE / min(grey.shape))
        if scale < 1.0:
            grey = cv2.resize(grey, (round(grey.shape[1] * scale), round(grey.shape[0] * scale)),
                              interpolation=cv2.INTER_AREA)
        grey, glints = remove_reflections(grey)
        verdicts: dict[IrisBoundaries, QualityError | None] = {}

        def accept(found: IrisBoundaries) -> bool:
            verdicts[found] = self.refusal(grey, found, scale)
            return verdicts[found] is None

        b = segment(grey, accept)
        refused = verdicts[b] if b in verdicts else self.refusal(grey, b, scale)
        if refused is not None:
            raise refused
        return grey, scale, glints, b

    def review(self, data: bytes) -> "IrisReview":
        """What segmentation finds in an eye image, for a person to check: the same steps
        as :meth:`extract` (so the same boundaries), without coding.

        Raises:
            as :meth:`extract`.
        """
        grey, scale, glints, b = self._segmented(data)
        strip, outside = rubber_sheet(grey, b, gabor.ROWS, gabor.COLS, glints)
        occluded = occlusion_mask(strip, outside)
        circle = lambda c: (c.x / scale, c.y / scale, c.r / scale)  # noqa: E731 - in captured pixels
        return IrisReview(circle(b.pupil), circle(b.iris), np.clip(strip, 0, 255).astype(np.uint8), ~occluded)

    def extract(self, data: bytes) -> IrisTemplate:
        """Extract one iris image.

        Raises:
            ImageDecodeError: the bytes are not a supported image.
            QualityError: ``FACE_PHOTO``, ``IRIS_NOT_FOUND``, ``PUPIL_IRIS_RATIO``,
                ``BLURRED`` or ``TOO_OCCLUDED``.
        """
        grey, scale, glints, b = self._segmented(data)
        sharp = sharpness(grey, b)
        bands = (b, *(with_band(b, s) for s in RADIAL_SCALES))
        # Inpainted reflections show no iris: masked as the image's edge is.
        sheets = [rubber_sheet(grey, band, gabor.ROWS, gabor.COLS, glints) for band in bands]
        occluded = [occlusion_mask(strip, outside) for strip, outside in sheets]
        valid = [code_mask(o) for o in occluded]
        usable = float(valid[0].mean())
        if usable < self.quality.min_usable:
            raise QualityError(f"only {usable:.0%} of the iris is visible; open the eye wider", "TOO_OCCLUDED")
        codes = self.encoder.run(np.stack([strip for strip, _ in sheets])[:, None])["code"] > 0.5
        pairs = [(bits, np.broadcast_to(v, bits.shape).copy()) for bits, v in zip(codes, valid)]
        iso = measure(grey, b, sheets[0][0], occluded[0], sharp)
        iso = dataclasses.replace(iso, iris_radius=iso.iris_radius / scale)  # in captured pixels
        return IrisTemplate(IRIS_MODEL_ID, *pairs[0], quality_score(b, usable, sharp),
                            components=tuple(iso.as_dict().items()), alternates=tuple(pairs[1:]))
