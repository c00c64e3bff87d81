"""ISO/IEC 19794 records of an exported subject: finger minutiae (part 2, 2005: one record
holding every finger view, ``matcher/finger/iso19794.py``) and the face image (part 5,
2005: a Face Image Record holding the kept photo as JPEG). No gRPC: ``tambua export`` and
the tests use it.

Part 5 layout (big-endian): the record header (``FAC\\0``, version ``010\\0``, record
length (4), number of facial images (2)); per image the facial information block (block
length (4), feature points (2), gender, eye colour, hair colour (1 each), feature mask (3),
expression (2), pose angles yaw/pitch/roll (3), their uncertainty (3): all written
"unspecified"), then the image information (face image type (1; 1 full frontal), image
data type (1; 0 JPEG), width and height (2 + 2), colour space (1; 1 RGB 24-bit, 3 grey
8-bit), source type (1; 2 digital still), device type (2), quality (2; 0 unspecified)),
then the image. Iris image records (part 6) are not written yet.
"""

from __future__ import annotations

import io
import struct

from PIL import Image

from matcher.finger.iso19794 import export_record
from matcher.templates import parse_template

_FACE_HEADER = struct.Struct(">4s4sIH")
_FACE_INFO = struct.Struct(">IHBBB3sH3s3s")
_IMAGE_INFO = struct.Struct(">BBHHBBHH")
_GREY, _RGB = 3, 1


def face_record(image: bytes) -> bytes:
    """An ISO/IEC 19794-5:2005 Face Image Record of one photo (re-encoded as JPEG unless it is one)."""
    im = Image.open(io.BytesIO(image))
    grey = im.mode in ("1", "L", "LA", "I", "I;16", "F")
    if image[:2] != b"\xff\xd8":
        buf = io.BytesIO()
        im.convert("L" if grey else "RGB").save(buf, "JPEG", quality=95)
        image = buf.getvalue()
    info = _FACE_INFO.pack(_FACE_INFO.size + _IMAGE_INFO.size + len(image), 0, 0, 0, 0, b"\0\0\0", 0, b"\0\0\0",
                           b"\0\0\0")
    body = info + _IMAGE_INFO.pack(1, 0, im.width, im.height, _GREY if grey else _RGB, 2, 0, 0) + image
    return _FACE_HEADER.pack(b"FAC\x00", b"010\x00", _FACE_HEADER.size + len(body), 1) + body


def read_face_record(data: bytes) -> list[tuple[bytes, int, int]]:
    """The photos of a Face Image Record: (JPEG bytes, width, height) each.

    Raises:
        ValueError: not such a record, or cut short.
    """
    if len(data) < _FACE_HEADER.size:
        raise ValueError("shorter than a face record header")
    magic, version, length, count = _FACE_HEADER.unpack_from(data)
    if magic != b"FAC\x00" or length != len(data):
        raise ValueError("not an ISO/IEC 19794-5 face image record, or its length is wrong")
    out, at = [], _FACE_HEADER.size
    for _ in range(count):
        if at + _FACE_INFO.size + _IMAGE_INFO.size > len(data):
            raise ValueError("a facial record is cut short")
        block, points, *_ = _FACE_INFO.unpack_from(data, at)
        image_at = at + _FACE_INFO.size + 8 * points
        _, kind, width, height, *_ = _IMAGE_INFO.unpack_from(data, image_at)
        start, end = image_at + _IMAGE_INFO.size, at + block
        if end > len(data) or start > end:
            raise ValueError("a facial record's length runs past the record")
        out.append((data[start:end], width, height))
        at = end
    return out


def records(templates: list[tuple[str, int, bytes, bytes]], images: list[tuple[str, int, bytes]]) -> dict[str, bytes]:
    """The records for an export, by file-name suffix: ``-fingers.fmr`` (every finger view),
    ``-face.fac`` (when the photo was kept)."""
    out = {}
    views = [(position, parse_template(data)) for modality, position, data, _ in templates if modality == "finger"]
    if views:
        out["-fingers.fmr"] = export_record(sorted(views, key=lambda v: v[0]))
    faces = [data for modality, _, data in images if modality == "face"]
    if faces:
        out["-face.fac"] = face_record(faces[0])
    return out
