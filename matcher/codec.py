"""The binary header every template kind starts with (magic, format version, model id,
then the kind's fixed fields) and the checks of model id and quality they share. It
depends on nothing but the error types, so the template kinds and
:mod:`matcher.templates` (which parses any of them) import it without importing each other."""

from __future__ import annotations

import struct

from matcher.errors import TemplateFormatError

_FORMAT_VERSION = 1
_HEADER = struct.Struct("<4sHB")  # magic, format version, model id length


def pack_header(magic: bytes, model_id: str, fields: struct.Struct, *values) -> bytes:
    """Magic, format version, model id, then the caller's fixed fields."""
    mid = model_id.encode("ascii")
    return _HEADER.pack(magic, _FORMAT_VERSION, len(mid)) + mid + fields.pack(*values)


def unpack_header(data: bytes, magic: bytes, fields: struct.Struct) -> tuple[str, tuple, bytes]:
    """Validate magic and version; return (model id, the fixed fields, the body after them).

    Raises:
        TemplateFormatError: too short, another kind of template, an unknown format
            version (``TEMPLATE_VERSION``) or a corrupt header.
    """
    if len(data) < _HEADER.size:
        raise TemplateFormatError("template bytes too short")
    found, version, n = _HEADER.unpack_from(data)
    if found != magic:
        raise TemplateFormatError(f"not a Tambua template of this kind (magic {found!r}, expected {magic!r})")
    if version != _FORMAT_VERSION:
        raise TemplateFormatError(f"template format version {version} is not supported", "TEMPLATE_VERSION")
    off = _HEADER.size
    try:
        model_id = bytes(data[off : off + n]).decode("ascii")
        values = fields.unpack_from(data, off + n)
    except (UnicodeDecodeError, struct.error) as e:
        raise TemplateFormatError("template header is corrupt") from e
    return model_id, values, bytes(data[off + n + fields.size :])


def check_model_and_quality(model_id: str, modalities: tuple[str, ...], quality: int) -> None:
    """What every template kind checks of its model id (``<modality>/<name>``, ASCII, at
    most 64 characters, one of ``modalities``) and its quality score (0..100).

    Raises:
        TemplateFormatError: ``TEMPLATE_INVALID``.
    """
    modality, slash, _ = model_id.partition("/")
    if not slash or modality not in modalities or not model_id.isascii() or len(model_id) > 64:
        raise TemplateFormatError(f"unknown model id {model_id!r}", "TEMPLATE_INVALID")
    if not 0 <= quality <= 100:
        raise TemplateFormatError("quality must be within 0..100", "TEMPLATE_INVALID")
