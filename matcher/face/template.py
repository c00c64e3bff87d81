"""The face template: a fixed-length float32 embedding (any modality compared by distance
could use it), with its self-describing bytes (magic ``TMBT``)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from matcher.codec import check_model_and_quality, pack_header, unpack_header
from matcher.errors import ModelMismatch, TemplateFormatError

_FIELDS = struct.Struct("<BH")  # quality, dimension
_MODALITIES = ("face", "finger", "iris")


@dataclass(frozen=True)
class EmbeddingTemplate:
    """A fixed-length float32 embedding (face now; any modality compared by distance).

    Attributes:
        model_id: e.g. ``"face/dlib-resnet-v1"``; the part before ``/`` is the modality.
        vector: (D,) float32, finite.
        quality: 0..100 sample quality score of the source image.
        components: named quality measures taken at extraction (e.g. ISO/IEC 29794-6 for
            irises); not part of the template bytes, so empty once parsed back.
    """

    MAGIC: ClassVar[bytes] = b"TMBT"

    model_id: str
    vector: np.ndarray = field(repr=False)
    quality: int = 0
    components: tuple[tuple[str, float], ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        v = np.asarray(self.vector)
        if v.ndim != 1 or v.size == 0 or v.dtype != np.float32:
            raise TemplateFormatError("template vector must be a non-empty 1-D float32 array", "TEMPLATE_INVALID")
        if not np.all(np.isfinite(v)):
            raise TemplateFormatError("template vector has non-finite values", "TEMPLATE_INVALID")
        check_model_and_quality(self.model_id, _MODALITIES, self.quality)
        v.setflags(write=False)

    @property
    def modality(self) -> str:
        return self.model_id.split("/", 1)[0]

    def require_model(self, model_id: str) -> None:
        """Raise :class:`ModelMismatch` unless this template was made by ``model_id``."""
        if self.model_id != model_id:
            raise ModelMismatch(f"template made by {self.model_id}, expected {model_id}")

    def to_bytes(self) -> bytes:
        return pack_header(self.MAGIC, self.model_id, _FIELDS, self.quality, self.vector.size) + self.vector.astype(
            "<f4"
        ).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> "EmbeddingTemplate":
        """Parse and validate serialised template bytes.

        Raises:
            TemplateFormatError: corrupt bytes or an unknown format version.
        """
        model_id, (quality, dim), body = unpack_header(data, cls.MAGIC, _FIELDS)
        if len(body) != 4 * dim:
            raise TemplateFormatError(f"template body has {len(body)} bytes, expected {4 * dim}")
        return cls(model_id, np.frombuffer(body, "<f4").astype(np.float32), quality)
