"""Image bytes -> fingerprint minutiae template: decode, rescale to 500 dpi, segment,
quality gates, LEADER minutiae.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from enroll.finger.minutiae import LeaderMinutiae
from enroll.finger.networks import LEADER, NETWORKS
from enroll.finger.segment import Foreground, segment
from enroll.image import decode_image
from matcher.errors import InvalidInput, QualityError
from matcher.finger.template import MAX_MINUTIAE, MinutiaeTemplate
from enroll.model_files import model_dir as default_model_dir

FINGER_MODEL_ID, LEADER_FILE = LEADER.model_id, LEADER.graph
NATIVE_DPI = 500


@dataclass(frozen=True)
class FingerQualityConfig:
    """Quality gate thresholds (measured on the FVC 2000/2002 and FCJ sets, see the card).

    Attributes:
        min_area: px of foreground at 500 dpi (0.08 square inch); the smallest finger in
            the sample sets covers about 45,000.
        min_ridge_ratio: share of local variance in the ridge band; every real finger in
            the sample sets has >= 0.22, faces and irises <= 0.17.
        min_clarity: ridge-orientation coherence; 1st percentile of the sets is 0.27.
        min_minutiae: fewer than this cannot be matched reliably.
    """

    min_area: int = 20_000
    min_ridge_ratio: float = 0.20
    min_clarity: float = 0.22
    min_minutiae: int = 8


def quality_score(fg: Foreground, n_minutiae: int) -> int:
    """0..100 in the spirit of NFIQ 2 (not NFIQ 2): ridge clarity, area and minutiae count.

    Each factor is 1 at a typical good impression (clarity 0.7, 60,000 px, 30 minutiae).
    """
    clarity = np.clip((fg.clarity - 0.2) / 0.5, 0.0, 1.0)
    area = np.clip(fg.area / 60_000, 0.0, 1.0) ** 0.5
    count = np.clip(n_minutiae / 30, 0.0, 1.0) ** 0.5
    return int(round(100 * clarity * area * count))


def grey_500dpi(data: bytes, dpi: int = 0) -> np.ndarray:
    """Decode a finger image to 8-bit grey at 500 dpi (``dpi`` 0 means it already is).

    Raises:
        ImageDecodeError: the bytes are not a supported image.
        InvalidInput: ``DPI_OUT_OF_RANGE``.
    """
    if dpi and not 250 <= dpi <= 2000:
        raise InvalidInput(f"dpi {dpi} is out of the supported 250..2000 range", "DPI_OUT_OF_RANGE")
    image = decode_image(data)
    grey = cv2.cvtColor(image.rgb, cv2.COLOR_RGB2GRAY)
    if dpi and dpi != NATIVE_DPI:
        scale = NATIVE_DPI / dpi
        size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    return grey


def check_foreground(fg: Foreground, q: FingerQualityConfig = FingerQualityConfig()) -> None:
    """Raise :class:`QualityError` when the foreground cannot give a usable template."""
    if fg.area == 0:
        raise QualityError("no ridges anywhere in the image", "BLANK_IMAGE")
    if fg.ridge_ratio < q.min_ridge_ratio:
        raise QualityError(f"no ridge pattern (ridge ratio {fg.ridge_ratio:.2f}); is this a fingerprint?",
                           "LOW_RIDGE_CLARITY")
    if fg.area < q.min_area:
        raise QualityError(f"finger area {fg.area} px is below {q.min_area} px at 500 dpi; press the whole "
                           "fingertip on the scanner", "FOREGROUND_TOO_SMALL")
    if fg.clarity < q.min_clarity:
        raise QualityError(f"ridges are unclear (coherence {fg.clarity:.2f}); clean the finger and scanner",
                           "LOW_RIDGE_CLARITY")


class FingerExtractor:
    """Fingerprint image -> :class:`MinutiaeTemplate`. Thread-safe; one per process.

    Args:
        model_dir: folder of built models (default ``models/build`` or ``$TAMBUA_MODEL_DIR``).
        quality: gate thresholds.
    """

    def __init__(self, model_dir: Path | None = None, quality: FingerQualityConfig = FingerQualityConfig(),
                 network: str = "leader") -> None:
        d = Path(model_dir) if model_dir else default_model_dir()
        if network not in NETWORKS:
            raise ValueError(f"unknown minutiae network {network!r}; choose one of {sorted(NETWORKS)}")
        net = NETWORKS[network]
        self.model_id = net.model_id
        self.minutiae = LeaderMinutiae(d / net.graph, detect=net.detect)
        self.quality = quality

    def grey(self, data: bytes, dpi: int = 0) -> np.ndarray:
        """Decode to 8-bit grey at 500 dpi (``dpi`` 0 means the image already is)."""
        return grey_500dpi(data, dpi)

    def check(self, fg: Foreground) -> None:
        """Raise :class:`QualityError` when the foreground cannot give a usable template."""
        check_foreground(fg, self.quality)

    def extract(self, data: bytes, dpi: int = 0) -> MinutiaeTemplate:
        """Extract one finger impression.

        Raises:
            ImageDecodeError: the bytes are not a supported image.
            QualityError: ``BLANK_IMAGE``, ``LOW_RIDGE_CLARITY``, ``FOREGROUND_TOO_SMALL``
                or ``TOO_FEW_MINUTIAE``.
        """
        grey = self.grey(data, dpi)
        fg = segment(grey)
        self.check(fg)
        rows = self.minutiae(grey, fg, max_minutiae=MAX_MINUTIAE)
        if len(rows) < self.quality.min_minutiae:
            raise QualityError(f"only {len(rows)} minutiae found, {self.quality.min_minutiae} needed",
                               "TOO_FEW_MINUTIAE")
        components = (("foreground_area", float(fg.area)), ("ridge_ratio", round(fg.ridge_ratio, 4)),
                      ("clarity", round(fg.clarity, 4)), ("minutiae", float(len(rows))))
        return MinutiaeTemplate(self.model_id, rows, grey.shape[1], grey.shape[0], quality_score(fg, len(rows)),
                                components=components)
