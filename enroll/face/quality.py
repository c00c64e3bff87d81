"""Face quality gates. Each gate has a threshold in :class:`FaceQualityConfig` and a reason code.

Thresholds were set on the LFW dev folds so that the gates reject clearly bad
captures and almost no usable faces (see ``models/cards/face.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from enroll.face.detect import Detection
from matcher.errors import QualityError


@dataclass(frozen=True)
class FaceQualityConfig:
    """Thresholds of the face quality gates.

    Attributes:
        min_face_px: smallest accepted face box width, in pixels of the original image.
        ambiguous_ratio: a second face whose box width is at least this fraction of the
            largest one makes the capture ambiguous (whose face is it?).
        min_detection_score: O-Net face probability below which the face is rejected.
        min_sharpness: variance of the Laplacian of the grey face chip centre.
        dark_mean / bright_mean: mean grey level of the face centre outside which the
            exposure is rejected.
        max_yaw: |yaw proxy| above which the pose is too strong; the proxy is the
            nose tip's horizontal offset from the eye midpoint divided by half the eye
            distance (0 frontal, 1 nose under an eye).
        blank_std: an image whose grey standard deviation is below this is blank.
    """

    min_face_px: int = 24
    ambiguous_ratio: float = 0.8
    min_detection_score: float = 0.85
    min_sharpness: float = 6.0
    dark_mean: float = 12.0
    bright_mean: float = 225.0
    max_yaw: float = 1.2
    blank_std: float = 4.0

    def __post_init__(self) -> None:
        if not (0 < self.ambiguous_ratio <= 1 and 0 <= self.min_detection_score < 1):
            raise ValueError("ambiguous_ratio must be in (0, 1] and min_detection_score in [0, 1)")
        if not 0 <= self.dark_mean < self.bright_mean <= 255:
            raise ValueError("need 0 <= dark_mean < bright_mean <= 255")


@dataclass(frozen=True)
class FaceQuality:
    """Measured quality of one face; ``score`` is 0..100 (higher is better)."""

    detection_score: float
    face_px: float
    sharpness: float
    brightness: float
    yaw: float
    score: int


def check_image(grey: np.ndarray, cfg: FaceQualityConfig) -> None:
    """Whole-image gates run before detection: black, blank. Judged on the image's most
    lit and most textured tile of a 4x4 grid, not on the whole: a small photo on a large
    plain scan (an ID card, a form) is neither black nor blank."""
    h, w = grey.shape
    tiles = [grey[i * h // 4:(i + 1) * h // 4, j * w // 4:(j + 1) * w // 4] for i in range(4) for j in range(4)]
    tiles = [t for t in tiles if t.size] or [grey]
    mean = max(float(t.mean()) for t in tiles)
    std = max(float(t.std()) for t in tiles)
    if mean < cfg.dark_mean and std < 2 * cfg.blank_std:
        raise QualityError(f"image is black (mean grey {mean:.0f} at its brightest)", "TOO_DARK")
    if std < cfg.blank_std:
        raise QualityError("image is blank (no contrast)", "BLANK_IMAGE")


def select_face(dets: list[Detection], image_size: tuple[int, int], cfg: FaceQualityConfig) -> Detection:
    """Pick the face to enrol, or reject the capture as having none or several.

    The subject is the largest face. Faces nearly as large (``ambiguous_ratio``) compete
    with it; among competitors the one whose box holds the image centre wins, since
    the operator centres the subject. Otherwise nobody can tell whose enrolment it is.

    Args:
        dets: detections, largest first.
        image_size: (width, height) of the detection image.
    """
    if not dets:
        raise QualityError("no face found in the image", "NO_FACE")
    rivals = [d for d in dets if d.width >= cfg.ambiguous_ratio * dets[0].width]
    if len(rivals) == 1:
        return rivals[0]
    cx, cy = image_size[0] / 2.0, image_size[1] / 2.0
    central = [d for d in rivals if d.box[0] <= cx <= d.box[2] and d.box[1] <= cy <= d.box[3]]
    if len(central) == 1:
        return central[0]
    raise QualityError(f"{len(rivals)} faces of similar size; capture one person", "MULTIPLE_FACES")


def yaw_proxy(points: np.ndarray) -> float:
    """Nose offset from the eye midpoint in half eye distances (MTCNN points)."""
    eye_l, eye_r, nose = points[0], points[1], points[2]
    half = max(float(np.linalg.norm(eye_r - eye_l)) / 2.0, 1e-6)
    axis = (eye_r - eye_l) / (2 * half)
    return float(np.dot(nose - (eye_l + eye_r) / 2.0, axis)) / half


def assess(det: Detection, scale: float, chip: np.ndarray, cfg: FaceQualityConfig) -> FaceQuality:
    """Run the per-face gates.

    Args:
        det: the selected detection (detection-image coordinates).
        scale: original-image pixels per detection-image pixel.
        chip: the aligned 150x150 RGB chip.

    Raises:
        QualityError: ``LOW_CONFIDENCE``, ``FACE_TOO_SMALL``, ``STRONG_POSE``,
            ``TOO_DARK``, ``TOO_BRIGHT`` or ``TOO_BLURRED``.
    """
    face_px = det.width * scale
    if det.score < cfg.min_detection_score:
        raise QualityError(f"face detection confidence {det.score:.2f} is too low", "LOW_CONFIDENCE")
    if face_px < cfg.min_face_px:
        raise QualityError(f"face is {face_px:.0f} px wide, at least {cfg.min_face_px} needed", "FACE_TOO_SMALL")
    yaw = yaw_proxy(det.points)
    if abs(yaw) > cfg.max_yaw:
        raise QualityError("face is turned too far from the camera", "STRONG_POSE")
    centre = cv2.cvtColor(chip, cv2.COLOR_RGB2GRAY)[40:130, 35:115]
    brightness = float(centre.mean())
    if brightness < cfg.dark_mean:
        raise QualityError(f"face is too dark (mean grey {brightness:.0f})", "TOO_DARK")
    if brightness > cfg.bright_mean:
        raise QualityError(f"face is over-exposed (mean grey {brightness:.0f})", "TOO_BRIGHT")
    sharpness = float(cv2.Laplacian(centre, cv2.CV_64F).var())
    if sharpness < cfg.min_sharpness:
        raise QualityError("face is too blurred", "TOO_BLURRED")
    # A simple, documented score: each factor is 1 at a good capture, falling towards its gate.
    factors = (
        det.score,
        min(1.0, face_px / (3 * cfg.min_face_px)),
        min(1.0, sharpness / (4 * cfg.min_sharpness)),
        1.0 - 0.5 * abs(yaw) / cfg.max_yaw,
    )
    return FaceQuality(det.score, face_px, sharpness, brightness, yaw, int(round(100 * float(np.prod(factors)))))
