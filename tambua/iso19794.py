"""ISO/IEC 19794 records of an exported subject: finger minutiae (part 2, 2005: one record
holding every finger view, ``matcher/finger/iso19794.py``), the face image (part 5, 2005:
a Face Image Record holding the kept photo as JPEG) and the iris images (part 6, 2005). No gRPC: ``tambua export`` and
the tests use it.

Part 5 layout (big-endian): the record header (``FAC\\0``, version ``010\\0``, record
length (4), number of facial images (2)); per image the facial information block (block
length (4), feature points (2), gender, eye colour, hair colour (1 each), feature mask (3),
expression (2), pose angles yaw/pitch/roll (3), their uncertainty (3): all written
"unspecified"), then the image information (face image type (1; 1 full frontal), image
data type (1; 0 JPEG), width and height (2 + 2), colour space (1; 1 RGB 24-bit, 3 grey
8-bit), source type (1; 2 digital still), device type (2), quality (2; 0 unspecified)),
then the image.

Part 6 layout (2005, big-endian; as NIST's public-domain BIOMDI library reads it): the
45-byte record header (``IIR\0``, version ``010\0``, record length (4), capture device id
(2), number of eyes (1), header length (2; 45), image property bits (2), iris diameter
(2), image format (2; 0x0002 grey raw), width and height (2 + 2), intensity depth (1; 8
bits), image transformation (1), device unique id (16)); per eye a subtype header (eye:
1 right, 2 left (1); number of images (2)); per image its header (number (2), quality (1;
255 not available), rotation angle and its uncertainty (2 + 2; 0xFFFF undefined), image
length (4)) and the pixels. One record per eye, since the header holds one image size;
raw grey pixels, so an exported iris is the very image enrolled (no lossy re-encoding).
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
_IRIS_HEADER = struct.Struct(">4s4sIHBHHHHHHBB16s")
_IRIS_EYE = struct.Struct(">BH")
_IRIS_IMAGE = struct.Struct(">HBHHI")
_MONO_RAW = 0x0002


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


def iris_record(eye: int, image: bytes) -> bytes:
    """An ISO/IEC 19794-6:2005 iris image record of one eye (1 right, 2 left), raw grey pixels."""
    im = Image.open(io.BytesIO(image)).convert("L")
    pixels = im.tobytes()
    body = _IRIS_EYE.pack(eye, 1) + _IRIS_IMAGE.pack(1, 255, 0xFFFF, 0xFFFF, len(pixels)) + pixels
    length = _IRIS_HEADER.size + len(body)
    return _IRIS_HEADER.pack(b"IIR\x00", b"010\x00", length, 0, 1, _IRIS_HEADER.size, 0, 0, _MONO_RAW, im.width,
                             im.height, 8, 0, b"0" * 16) + body


def read_iris_record(data: bytes) -> list[tuple[int, bytes]]:
    """The eyes of an iris image record (grey raw images): (eye, PNG bytes) each.

    Raises:
        ValueError: not such a record, an image format other than grey raw, or cut short.
    """
    if len(data) < _IRIS_HEADER.size:
        raise ValueError("shorter than an iris record header")
    magic, _, length, _, eyes, header, _, _, fmt, width, height, depth, _, _ = _IRIS_HEADER.unpack_from(data)
    if magic != b"IIR\x00" or length != len(data) or header != _IRIS_HEADER.size:
        raise ValueError("not an ISO/IEC 19794-6:2005 iris image record, or its length is wrong")
    if fmt != _MONO_RAW or depth != 8:
        raise ValueError(f"image format {fmt:#06x} at {depth} bits: only 8-bit grey raw is read")
    out, at = [], header
    for _ in range(eyes):
        eye, images = _IRIS_EYE.unpack_from(data, at)
        at += _IRIS_EYE.size
        for _ in range(images):
            *_, size = _IRIS_IMAGE.unpack_from(data, at)
            at += _IRIS_IMAGE.size
            if size != width * height or at + size > len(data):
                raise ValueError("an iris image's length is not its size, or runs past the record")
            buf = io.BytesIO()
            Image.frombytes("L", (width, height), data[at:at + size]).save(buf, "PNG")
            out.append((eye, buf.getvalue()))
            at += size
    return out


def records(templates: list[tuple[str, int, bytes, bytes]], images: list[tuple[str, int, bytes]]) -> dict[str, bytes]:
    """The records for an export, by file-name suffix: ``-fingers.fmr`` (every finger view),
    ``-face.fac`` and ``-iris-right.iir`` / ``-iris-left.iir`` (when the images were kept)."""
    out = {}
    views = [(position, parse_template(data)) for modality, position, data, _ in templates if modality == "finger"]
    if views:
        out["-fingers.fmr"] = export_record(sorted(views, key=lambda v: v[0]))
    faces = [data for modality, _, data in images if modality == "face"]
    if faces:
        out["-face.fac"] = face_record(faces[0])
    for _, position, data in sorted(i for i in images if i[0] == "iris"):
        out[f"-iris-{'right' if position == 1 else 'left'}.iir"] = iris_record(position, data)
    return out
