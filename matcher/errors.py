"""The one error hierarchy of Tambua.

Every failure the service reports is a :class:`TambuaError` subclass carrying a
stable machine-readable ``reason`` and whether a retry can help. The service
layer maps each class to one gRPC status code in one place; nothing else in the
code base decides status codes.
"""

from __future__ import annotations


class TambuaError(Exception):
    """Base of every error Tambua reports to a caller.

    Attributes:
        reason: stable upper-case identifier, e.g. ``"NO_FACE"``; clients branch on it.
        message: human-readable explanation (never contains biometric data).
        retriable: whether the same request may succeed later.
    """

    retriable = False
    default_reason = "INTERNAL"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class InvalidInput(TambuaError):
    """The request or its payload is malformed (bad bytes, wrong sizes, unknown enum)."""

    default_reason = "INVALID_INPUT"


class ImageDecodeError(InvalidInput):
    """The image bytes cannot be decoded (``IMAGE_UNDECODABLE``, ``IMAGE_TRUNCATED``, ...)."""

    default_reason = "IMAGE_UNDECODABLE"


class QualityError(InvalidInput):
    """The sample decoded but fails a quality gate; ``reason`` says which one."""

    default_reason = "LOW_QUALITY"


class TemplateFormatError(InvalidInput):
    """Serialised template bytes are corrupt or of an unknown format version."""

    default_reason = "TEMPLATE_CORRUPT"


class ModelMismatch(TambuaError):
    """A template was made by another model or template version than the one expected."""

    default_reason = "MODEL_MISMATCH"


class NotFound(TambuaError):
    default_reason = "NOT_FOUND"


class AlreadyExists(TambuaError):
    default_reason = "ALREADY_EXISTS"


class Overloaded(TambuaError):
    retriable = True
    default_reason = "OVERLOADED"


class DeadlineExceeded(TambuaError):
    """The caller's deadline passed; the work was abandoned and nothing was stored."""

    retriable = True
    default_reason = "DEADLINE_EXCEEDED"


class NotReady(TambuaError):
    """A component is still loading (models, gallery)."""

    retriable = True
    default_reason = "NOT_READY"


class ModelMissing(NotReady):
    """A model file is absent: run ``make setup`` (``python -m models.build``)."""

    retriable = False
    default_reason = "MODEL_MISSING"


class KeyMismatch(TambuaError):
    """An encryption key is missing, malformed, or not the one the store was sealed with."""

    default_reason = "KEY_MISMATCH"


class RecordTampered(TambuaError):
    """A stored record fails authentication: altered on disk, or moved from where it was written."""

    default_reason = "RECORD_TAMPERED"


class FailedPrecondition(TambuaError):
    """The server is not set up for this request (e.g. sync without a site identity)."""

    default_reason = "FAILED_PRECONDITION"


class SequenceGap(TambuaError):
    """A peer's change arrived before the ones that precede it: a bundle is missing."""

    default_reason = "SEQUENCE_GAP"


class Unauthenticated(TambuaError):
    """The caller presented no credentials, or unknown or revoked ones."""

    default_reason = "UNAUTHENTICATED"


class PermissionDenied(TambuaError):
    """The caller is known but its roles or partitions do not allow this call."""

    default_reason = "PERMISSION_DENIED"


class Unimplemented(TambuaError):
    """The request is valid but asks for something not built yet (e.g. a modality)."""

    default_reason = "UNIMPLEMENTED"
