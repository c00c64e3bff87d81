"""Fingerprint minutiae templates: the typed, versioned output of finger extraction.

Stored as minutiae (what ISO/IEC 19794-2 carries too); the cylinders MCC compares are
derived from them deterministically (:mod:`matcher.finger.mcc`) and cached by galleries.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar

import numpy as np

from matcher.finger import mcc
from matcher.errors import ModelMismatch, TemplateFormatError
from matcher.codec import check_model_and_quality, pack_header, unpack_header

_FIELDS = struct.Struct("<BHHHH")  # quality, width, height, dpi, minutiae count
MAX_MINUTIAE = 255


@dataclass(frozen=True)
class MinutiaeTemplate:
    """Minutiae of one finger impression.

    Attributes:
        model_id: e.g. ``"finger/leader-mcc-v1"``.
        minutiae: (N, 5) float32 rows: x, y (pixels at 500 dpi, y down), angle (radians,
            counter-clockwise from +x as seen on the image, in [-pi, pi)), type (1 ridge
            ending, 0 bifurcation), quality (0..1).
        width / height: the image size the coordinates refer to (500 dpi).
        quality: 0..100 sample quality score.
        components: named quality measures taken at extraction (e.g. ISO/IEC 29794-6 for
            irises); not part of the template bytes, so empty once parsed back.
    """

    MAGIC: ClassVar[bytes] = b"TMBM"

    model_id: str
    minutiae: np.ndarray = field(repr=False)
    width: int
    height: int
    quality: int = 0
    components: tuple[tuple[str, float], ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        m = np.asarray(self.minutiae)
        if m.ndim != 2 or m.shape[1] != 5 or m.dtype != np.float32 or len(m) > MAX_MINUTIAE:
            raise TemplateFormatError("minutiae must be an (N<=255, 5) float32 array", "TEMPLATE_INVALID")
        if not np.all(np.isfinite(m)):
            raise TemplateFormatError("minutiae have non-finite values", "TEMPLATE_INVALID")
        if not (0 < self.width <= 65535 and 0 < self.height <= 65535):
            raise TemplateFormatError("template image size is out of range", "TEMPLATE_INVALID")
        if len(m) and (m[:, 0].min() < 0 or m[:, 1].min() < 0 or m[:, 0].max() >= self.width
                       or m[:, 1].max() >= self.height or np.abs(m[:, 2]).max() > np.pi + 1e-4):
            raise TemplateFormatError("a minutia lies outside the image or has a bad angle", "TEMPLATE_INVALID")
        check_model_and_quality(self.model_id, ("finger",), self.quality)
        m.setflags(write=False)

    @property
    def modality(self) -> str:
        return "finger"

    # Derived once per template object: a probe's cylinders serve its search and every
    # shortlisted subject's comparison, and its index codes every finger position searched.
    @cached_property
    def cylinders(self) -> mcc.Cylinders:
        return mcc.encode(self.minutiae)

    @cached_property
    def index_codes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return mcc.index_codes(mcc.index_subset(self.minutiae))

    def derived_bytes(self) -> bytes:
        """Cylinders and index codes, for the store to keep beside the minutiae."""
        return mcc.pack_features(self.cylinders, *self.index_codes)

    def load_derived(self, data: bytes) -> bool:
        """Take cylinders and index codes persisted by :meth:`derived_bytes` instead of
        computing them. Returns False (nothing taken) when they were made by other MCC
        parameters or are malformed."""
        features = mcc.unpack_features(data)
        if features is None:
            return False
        # cached_property stores in the instance dict: filling it is what computing would do.
        self.__dict__["cylinders"] = features[0]
        self.__dict__["index_codes"] = (features[1], features[2], features[3])
        return True

    def require_model(self, model_id: str) -> None:
        """Raise :class:`ModelMismatch` unless this template was made by ``model_id``."""
        if self.model_id != model_id:
            raise ModelMismatch(f"template made by {self.model_id}, expected {model_id}")

    def to_bytes(self) -> bytes:
        head = pack_header(self.MAGIC, self.model_id, _FIELDS, self.quality, self.width, self.height, 500,
                           len(self.minutiae))
        return head + self.minutiae.astype("<f4").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> "MinutiaeTemplate":
        """Parse and validate serialised template bytes.

        Raises:
            TemplateFormatError: corrupt bytes or an unknown format version.
        """
        model_id, (quality, width, height, _dpi, count), body = unpack_header(data, cls.MAGIC, _FIELDS)
        if len(body) != 20 * count:
            raise TemplateFormatError(f"template body has {len(body)} bytes, expected {20 * count}")
        rows = np.frombuffer(body, "<f4").astype(np.float32).reshape(count, 5)
        return cls(model_id, rows, width, height, quality)
