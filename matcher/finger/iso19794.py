"""ISO/IEC 19794-2:2005 finger minutiae records, so templates travel to and from other AFIS.

Layout (all integers big-endian):

* record header, 24 bytes: ``FMR\\0``, version ``" 20\\0"``, total record length (4),
  capture equipment certification (4 bits) and device type (12 bits), image width and
  height in pixels (2 + 2), horizontal and vertical resolution in pixels per centimetre
  (2 + 2), number of finger views (1), reserved (1);
* per view, 4 bytes: finger position (1; 0 unknown, 1 right thumb ... 10 left little),
  view number (4 bits) and impression type (4 bits), finger quality 0-100 (1), number
  of minutiae (1); then 6 bytes per minutia: type (2 bits: 01 ridge ending, 10
  bifurcation, 00 other) and x (14 bits), 2 reserved bits and y (14 bits), angle in
  units of 360/256 degrees counter-clockwise from the horizontal to the right (1),
  quality 0-100 with 0 meaning not reported (1); then the extended data length (2),
  whose blocks we skip on import and never write.

Coordinates are pixels of the 500 dpi image, origin top left, y down; angles are our
templates' (LEADER's direction), quantised to 1.40625 degrees on export.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from matcher.errors import TemplateFormatError
from matcher.finger.template import MAX_MINUTIAE, MinutiaeTemplate

_RECORD = struct.Struct(">4s4sIHHHHHBB")
_VIEW = struct.Struct(">BBBB")
_MINUTIA = struct.Struct(">HHBB")
_MAGIC, _VERSION = b"FMR\x00", b" 20\x00"
_PX_PER_CM_500DPI = 197  # 500 dpi = 196.85 px/cm
_ANGLE_UNIT = 2 * math.pi / 256
_TYPE_ENDING, _TYPE_BIFURCATION = 1, 2


def _bad(message: str) -> TemplateFormatError:
    return TemplateFormatError(f"ISO/IEC 19794-2 record: {message}", "ISO_RECORD_INVALID")


def export_record(views: list[tuple[int, MinutiaeTemplate]]) -> bytes:
    """One record holding a view per (finger position 0-10, template); all from one image size."""
    if not views or len(views) > 255:
        raise _bad("a record holds 1 to 255 finger views")
    width, height = views[0][1].width, views[0][1].height
    body = bytearray()
    for view_number, (position, tpl) in enumerate(views):
        if not 0 <= position <= 10:
            raise _bad(f"finger position {position} is not 0-10")
        m = tpl.minutiae
        body += _VIEW.pack(position, (view_number & 0x0F) << 4, tpl.quality, len(m))
        for x, y, angle, kind, quality in m:
            kind_bits = _TYPE_ENDING if kind >= 0.5 else _TYPE_BIFURCATION
            a = int(round((angle % (2 * math.pi)) / _ANGLE_UNIT)) % 256
            q = max(1, min(100, int(round(quality * 100))))
            body += _MINUTIA.pack((kind_bits << 14) | int(round(x)), int(round(y)), a, q)
        body += b"\x00\x00"  # no extended data
    total = _RECORD.size + len(body)
    head = _RECORD.pack(_MAGIC, _VERSION, total, 0, width, height, _PX_PER_CM_500DPI, _PX_PER_CM_500DPI,
                        len(views), 0)
    return head + bytes(body)


def import_record(data: bytes, model_id: str) -> list[tuple[int, MinutiaeTemplate]]:
    """Parse a record into (finger position, template) per view.

    Raises:
        TemplateFormatError: reason ``ISO_RECORD_INVALID`` for anything malformed.
    """
    if len(data) < _RECORD.size:
        raise _bad("shorter than its 24-byte header")
    magic, version, total, _device, width, height, xres, yres, n_views, _ = _RECORD.unpack_from(data)
    if magic != _MAGIC or version != _VERSION:
        raise _bad(f"not an ISO/IEC 19794-2:2005 minutiae record (identifier {magic!r}, version {version!r})")
    if total != len(data):
        raise _bad(f"header says {total} bytes, the record has {len(data)}")
    if width == 0 or height == 0 or not (150 <= xres <= 400 and 150 <= yres <= 400):
        raise _bad("image size is zero or resolution is outside 150-400 px/cm")
    scale = (_PX_PER_CM_500DPI / xres, _PX_PER_CM_500DPI / yres)
    off, views = _RECORD.size, []
    for _ in range(n_views):
        if off + _VIEW.size > len(data):
            raise _bad("truncated finger view header")
        position, _view, quality, count = _VIEW.unpack_from(data, off)
        off += _VIEW.size
        if position > 10 or quality > 100:
            raise _bad(f"finger position {position} or quality {quality} out of range")
        if off + count * _MINUTIA.size + 2 > len(data):
            raise _bad("truncated minutiae")
        rows = []
        for i in range(count):
            tx, ry, a, q = _MINUTIA.unpack_from(data, off + i * _MINUTIA.size)
            kind = tx >> 14
            rows.append((
                (tx & 0x3FFF) * scale[0], (ry & 0x3FFF) * scale[1],
                (a * _ANGLE_UNIT + math.pi) % (2 * math.pi) - math.pi,
                1.0 if kind == _TYPE_ENDING else 0.0,
                q / 100.0,
            ))
        off += count * _MINUTIA.size
        (extended,) = struct.unpack_from(">H", data, off)
        off += 2 + extended
        if off > len(data):
            raise _bad("extended data runs past the end")
        if count > MAX_MINUTIAE:
            raise _bad(f"{count} minutiae, at most {MAX_MINUTIAE} supported")
        w, h = max(1, round(width * scale[0])), max(1, round(height * scale[1]))
        minutiae = np.array(rows, np.float32).reshape(-1, 5)
        if len(minutiae) and (minutiae[:, 0].max() >= w or minutiae[:, 1].max() >= h):
            raise _bad("a minutia lies outside the image")
        views.append((position, MinutiaeTemplate(model_id, minutiae, w, h, quality)))
    if off != len(data):
        raise _bad(f"{len(data) - off} bytes after the last view")
    return views
