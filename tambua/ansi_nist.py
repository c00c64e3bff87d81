"""ANSI/NIST-ITL 1-2011 transactions in and out (traditional encoding), on IDEMIA's
``nistitl`` parser and writer (PyPI, pure Python, CeCILL-C): one transaction is one
subject. It parses and writes the records' fields and separators; what the records mean
for Tambua is here.

Read: Type-4 (legacy binary fingerprint image: 500 ppi, WSQ or raw), Type-14 (fingerprint
image), Type-10 (face image), Type-17 (iris image), Type-9 (minutiae in the INCITS 378
block, fields 9.126-9.137, turned into an ISO/IEC 19794-2 record the server takes as a
finger template) and Type-99 (CBEFF data: Tambua's own templates, as our export writes
them). The subject's id comes from a Type-2 field, 2.015 (EBTS' State Identification
Number, where a registration system keeps its person id) unless told otherwise. Each
sample is taken from the best record for its modality and position: an image first (the
server extracts), then our template, then Type-9 minutiae.

Write: Type-1, a Type-2 with the id, then per sample its image record (Type-10, -14 or
-17) when the subject's images were kept, our template in a Type-99, and for fingers the
minutiae as Type-9. Raw (``NONE``) images are read as 8-bit grey (or 24-bit RGB for a
face in an RGB colour space) and handed on as PNG; images the standard has no
compression code for (PGM, TIFF, BMP) are written as PNG, WSQ and JPEG as they are.

Every failure is a :class:`NistError` with a reason: ``NIST_MALFORMED`` (the bytes do not
parse), ``SUBJECT_FIELD_MISSING``, ``NIST_NO_SAMPLES``, ``NIST_BAD_RECORD`` (a record
whose fields make no sample). No gRPC here: the importer and the CLI use it.
"""

from __future__ import annotations

import io
import struct
import time
from dataclasses import dataclass

import nistitl
from PIL import Image

SUBJECT_FIELD = "2.015"
FINGER_POSITIONS = range(1, 11)  # ANSI/NIST FGP 1 right thumb ... 10 left little, as ISO/IEC 19794-4
EYES = {1: 1, 2: 2}  # 17.003 ELR: 1 right, 2 left (0 undefined): our iris positions
_WSQ_SOI = b"\xff\xa0"
_PNG, _JPEG = b"\x89PNG", b"\xff\xd8"
# CBEFF biometric types (99.101) and our templates' magic.
_BTY = {"face": "00000002", "finger": "00000008", "iris": "00000010"}
_MAGIC = {b"TMBT": "face", b"TMBM": "finger", b"TMBI": "iris"}
_TAMBUA_FORMAT = "FFFF"  # 99.103/99.104: not an IBIA-registered owner; a reader knows our templates by magic
_SAMPLE_FIELD = 200  # 99.200 (user-defined): "modality:position" of a Type-99 template
_ORDER = {"image": 0, "template": 1, "minutiae": 2}
_ISO_HEADER = struct.Struct(">4s4sIHHHHHBB")


class NistError(ValueError):
    """A transaction Tambua cannot take, with a stable reason (the import report's)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


@dataclass(frozen=True)
class Item:
    """One sample of a transaction.

    Attributes:
        kind: ``image`` (encoded image bytes), ``template`` (a Tambua template) or
            ``minutiae`` (an ISO/IEC 19794-2 record made from a Type-9).
        position: face 0; finger 1-10; iris 1 right, 2 left.
        record: where it came from, ``TYPE.IDC`` (the report's locator).
    """

    modality: str
    position: int
    kind: str
    data: bytes
    dpi: int = 0
    record: str = ""


@dataclass(frozen=True)
class Transaction:
    subject_id: str
    items: tuple[Item, ...]
    skipped: tuple[str, ...] = ()  # records read but not used, and why ("14.3: FGP 13 is not one finger")

    def samples(self) -> list[Item]:
        """One item per modality and position, the best kind first (image, template, minutiae)."""
        best: dict[tuple[str, int], Item] = {}
        for item in self.items:
            key = (item.modality, item.position)
            if key not in best or _ORDER[item.kind] < _ORDER[best[key].kind]:
                best[key] = item
        return [best[k] for k in sorted(best)]


# What reading a hostile record's fields may raise (a field with subfields where a value
# belongs, a binary record cut short, pixels that do not fill their size, ...).
_FIELD_ERRORS = (nistitl.NistException, ValueError, TypeError, IndexError, KeyError, AttributeError, struct.error,
                 OSError)


def _idc(record) -> str:
    if isinstance(record, nistitl.BinaryRecord):
        return str(record.IDC)
    return _value(record, 2) or "?"


def _value(record, tag: int) -> str:
    f = record[tag]
    return "" if f is None else str(f.value or "").strip()


def _int(record, tag: int, default: int = 0) -> int:
    text = _value(record, tag)
    return int(text) if text.isdigit() else default


def _dpi(record) -> int:
    """Resolution from SLC/THPS: 1 pixels per inch, 2 per centimetre (0: none given)."""
    slc, thps = _int(record, 8), _int(record, 9)
    return thps if slc == 1 else round(thps * 2.54) if slc == 2 else 0


def _encoded(data: bytes, cga: str, width: int, height: int, rgb: bool = False) -> bytes:
    """Image bytes the server decodes: raw pixels become PNG; compressed ones pass as they are."""
    if cga not in ("", "NONE", "0"):
        return data
    mode, depth = ("RGB", 3) if rgb else ("L", 1)
    if width <= 0 or height <= 0 or len(data) != width * height * depth:
        raise NistError("NIST_BAD_RECORD", f"raw image of {len(data)} bytes is not {width}x{height} {mode}")
    buf = io.BytesIO()
    Image.frombytes(mode, (width, height), data).save(buf, "PNG")
    return buf.getvalue()


def _image_item(record, modality: str, position: int, locator: str) -> Item:
    data = record[999].value if record[999] is not None else b""
    if not data:
        raise NistError("NIST_BAD_RECORD", f"{locator}: no image data")
    rgb = modality == "face" and _value(record, 12).upper() in ("RGB", "SRGB", "YCC")
    image = _encoded(bytes(data), _value(record, 11).upper(), _int(record, 6), _int(record, 7), rgb)
    return Item(modality, position, "image", image, _dpi(record), locator)


def _type4(record, locator: str) -> Item:
    try:
        _imp, fgp, _isr, width, height, gca, data = record.unpack("!B6sBHHB")
    except struct.error as e:
        raise NistError("NIST_BAD_RECORD", f"{locator}: a Type-4 record shorter than its header") from e
    position = fgp[0]
    if position not in FINGER_POSITIONS:
        raise NistError("NIST_BAD_RECORD", f"{locator}: FGP {position} is not one finger (1-10)")
    image = data if gca != 0 else _encoded(data, "NONE", width, height)
    return Item("finger", position, "image", image, 500, locator)  # Type-4 is 500 ppi (ISR 0: nominal)


def _minutiae(record, locator: str) -> Item:
    """Type-9 INCITS 378 block (9.126-9.137) -> an ISO/IEC 19794-2:2005 record, one view."""
    rows = record[137]
    if rows is None:
        raise NistError("NIST_BAD_RECORD", f"{locator}: no minutiae in 9.137 (only the INCITS 378 block is read)")
    position = _int(record, 134)
    if position not in FINGER_POSITIONS:
        raise NistError("NIST_BAD_RECORD", f"{locator}: FGP {position} is not one finger (1-10)")
    width, height = _int(record, 128), _int(record, 129)
    slc, hps = _int(record, 130), _int(record, 131)
    ppcm = round(hps / 2.54) if slc == 1 else hps if slc == 2 else 197
    fqd = record[135]  # finger quality: (value, vendor, algorithm)
    quality = int(fqd[0][0]) if fqd is not None and len(fqd) and len(fqd[0]) and str(fqd[0][0]).isdigit() else 0
    body = b""
    count = 0
    for sub in rows:
        values = list(sub.values) if len(sub) else [str(sub.value)]
        if len(values) < 5 or not all(v.strip().isdigit() for v in values[:5]):
            raise NistError("NIST_BAD_RECORD", f"{locator}: a 9.137 minutia is not index, x, y, angle, type")
        _, x, y, angle2, kind = (int(v) for v in values[:5])
        q = int(values[5]) if len(values) > 5 and values[5].strip().isdigit() else 0
        # 9.137 angles are in 2-degree units; ISO/IEC 19794-2's in 360/256-degree units.
        iso_angle = round(angle2 * 2 * 256 / 360) % 256
        body += struct.pack(">HHBB", ((kind & 3) << 14) | (x & 0x3FFF), y & 0x3FFF, iso_angle, min(q, 100))
        count += 1
    if not count or count > 255:
        raise NistError("NIST_BAD_RECORD", f"{locator}: {count} minutiae")
    view = struct.pack(">BBBB", position, 0, min(quality, 100), count) + body + b"\x00\x00"
    length = _ISO_HEADER.size + len(view)
    head = _ISO_HEADER.pack(b"FMR\x00", b" 20\x00", length, 0, width, height, ppcm, ppcm, 1, 0)
    return Item("finger", position, "minutiae", head + view, 0, locator)


def _template(record, locator: str) -> Item:
    data = bytes(record[999].value) if record[999] is not None else b""
    modality = _MAGIC.get(data[:4])
    where = _value(record, _SAMPLE_FIELD).split(":")
    if modality is None or len(where) != 2 or where[0] != modality or not where[1].isdigit():
        raise NistError("NIST_BAD_RECORD", f"{locator}: CBEFF data that is not a Tambua template")
    return Item(modality, int(where[1]), "template", data, 0, locator)


def parse(data: bytes, subject_field: str = SUBJECT_FIELD) -> Transaction:
    """A transaction's subject id and samples.

    Raises:
        NistError: see the module docstring.
    """
    message = nistitl.Message()
    try:
        message.parse(bytes(data))
    except Exception as e:  # noqa: BLE001 - the parser raises NistException, and IndexError/ValueError on garbage
        raise NistError("NIST_MALFORMED", f"not an ANSI/NIST-ITL transaction ({str(e)[:120]})") from e
    record_type, _, tag = subject_field.partition(".")
    subject_id = ""
    items, skipped = [], []
    for record in message:
        if record.type == 1:
            continue
        try:
            locator = f"{record.type}.{_idc(record)}"
            if str(record.type) == record_type and tag.isdigit() and not subject_id:
                subject_id = _value(record, int(tag))
        except _FIELD_ERRORS:
            skipped.append(f"a Type-{record.type} record whose fields do not parse")
            continue
        try:
            if record.type == 4:
                items.append(_type4(record, locator))
            elif record.type == 14:
                position = _int(record, 13)
                if position not in FINGER_POSITIONS:
                    raise NistError("NIST_BAD_RECORD", f"{locator}: FGP {position} is not one finger (1-10)")
                items.append(_image_item(record, "finger", position, locator))
            elif record.type == 10:
                if _value(record, 3).upper() not in ("FACE", ""):
                    raise NistError("NIST_BAD_RECORD", f"{locator}: IMT {_value(record, 3)!r} is not a face")
                items.append(_image_item(record, "face", 0, locator))
            elif record.type == 17:
                eye = EYES.get(_int(record, 3))
                if eye is None:
                    raise NistError("NIST_BAD_RECORD", f"{locator}: ELR {_value(record, 3)!r} names no eye")
                items.append(_image_item(record, "iris", eye, locator))
            elif record.type == 9:
                items.append(_minutiae(record, locator))
            elif record.type == 99:
                items.append(_template(record, locator))
        except NistError as e:
            skipped.append(e.message)
        except _FIELD_ERRORS as e:  # a field of the wrong shape: the record is unusable, the rest may serve
            skipped.append(f"{locator}: a field does not parse ({type(e).__name__})")
    if not subject_id:
        raise NistError("SUBJECT_FIELD_MISSING", f"no subject id in field {subject_field}")
    if not items:
        raise NistError("NIST_NO_SAMPLES", "no face, finger or iris sample Tambua can use"
                        + (f" ({'; '.join(skipped)})" if skipped else ""))
    return Transaction(subject_id, tuple(items), tuple(skipped))


# --- writing ---------------------------------------------------------------------------


def _image_for(record_type: int, data: bytes) -> tuple[bytes, str, int, int, int]:
    """(bytes, CGA, width, height, dpi) to write: WSQ and JPEG as they are, others as PNG."""
    from enroll.image import image_info

    width, height, dpi = image_info(data)
    if data[:2] == _WSQ_SOI:
        return data, "WSQ20", width, height, dpi or 500
    if data[:2] == _JPEG and record_type != 14:
        return data, "JPEGB", width, height, dpi
    if data[:4] == _PNG:
        return data, "PNG", width, height, dpi
    im = Image.open(io.BytesIO(data))
    buf = io.BytesIO()
    im.convert("RGB" if im.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr") else "L").save(buf, "PNG")
    return buf.getvalue(), "PNG", im.width, im.height, dpi


def _incits_378(record, iso: bytes) -> None:
    """Fill a Type-9's INCITS 378 block from an ISO/IEC 19794-2 record of one view."""
    _, _, _, _, width, height, ppcm, _, views, _ = _ISO_HEADER.unpack_from(iso)
    position, _, quality, count = struct.unpack_from(">BBBB", iso, _ISO_HEADER.size)
    record += nistitl.Field(9, 4, "U")  # FMT: not the legacy standard fields (9.005-9.012)
    record += nistitl.Field(9, 126, [["27", "514", "0"]])  # CBEFF owner INCITS TC M1, format type 514 (INCITS 378)
    for tag, value in ((128, width), (129, height), (130, 2), (131, ppcm), (132, ppcm), (133, 0), (134, position),
                       (136, count)):
        record += nistitl.Field(9, tag, str(value))
    record += nistitl.Field(9, 135, [[str(quality), "0", "0"]])
    mdr = nistitl.Field(9, 137)
    at = _ISO_HEADER.size + 4
    for i in range(count):
        xt, y, angle, q = struct.unpack_from(">HHBB", iso, at + 6 * i)
        sub = nistitl.SubField()
        # ISO angle units (360/256 degrees) -> 9.137's 2-degree units.
        sub.add_values(str(i + 1), str(xt & 0x3FFF), str(y & 0x3FFF), str(round(angle * 360 / 256 / 2) % 180),
                       str(xt >> 14), str(q))
        mdr.add_subfields(sub)
    record += mdr


def build(subject_id: str, templates: list[tuple[str, int, bytes, bytes]], images: list[tuple[str, int, bytes]],
          agency: str = "TAMBUA", tcn: str = "") -> bytes:
    """A transaction for one subject.

    Args:
        templates: ``(modality, position, Tambua template bytes, ISO/IEC 19794-2 record
            or b"")`` per sample.
        images: ``(modality, position, image bytes)`` kept with the subject.
        agency: the originating agency (1.008 ORI, the records' SRC).
    """
    day = time.strftime("%Y%m%d", time.gmtime())
    message = nistitl.Message()
    message.TOT = "TAMBUA-EXPORT"
    message[0].DAT = day
    message[0].ORI = agency
    message[0].DAI = agency
    message[0].TCN = tcn or f"{agency}-{time.time_ns()}"
    r2 = nistitl.AsciiRecord(2)
    r2.IDC = 0
    r2 += nistitl.Field(2, int(SUBJECT_FIELD.split(".")[1]), subject_id)
    message += r2
    idc = 1
    for modality, position, data in sorted(images):
        record_type = {"face": 10, "finger": 14, "iris": 17}[modality]
        payload, cga, width, height, dpi = _image_for(record_type, data)
        r = nistitl.AsciiRecord(record_type)
        r.IDC = idc
        fields = {10: [(3, "FACE"), (4, agency), (5, day)], 14: [(3, 0), (4, agency), (5, day)],
                  17: [(3, position), (4, agency), (5, day)]}[record_type]
        # A finger scan of no stated resolution was extracted as 500 ppi (the server's default):
        # say so; a face or iris without one gets SLC 0 (pixel aspect ratio only).
        dpi = dpi or (500 if modality == "finger" else 0)
        fields += [(6, width), (7, height), (8, 1 if dpi else 0), (9, dpi or 1), (10, dpi or 1), (11, cga)]
        if record_type == 14:
            fields += [(12, 8), (13, position)]
        for tag, value in fields:
            r += nistitl.Field(record_type, tag, str(value))
        r += nistitl.BinaryField(record_type, 999, payload)
        message += r
        idc += 1
    for modality, position, template, iso in sorted(templates):
        if iso:
            r9 = nistitl.AsciiRecord(9)
            r9.IDC = idc
            r9 += nistitl.Field(9, 3, "0")
            _incits_378(r9, iso)
            message += r9
        r99 = nistitl.AsciiRecord(99)
        r99.IDC = idc
        for tag, value in ((4, agency), (5, day), (100, "0101"), (101, _BTY[modality]), (103, _TAMBUA_FORMAT),
                           (104, _TAMBUA_FORMAT), (_SAMPLE_FIELD, f"{modality}:{position}")):
            r99 += nistitl.Field(99, tag, value)
        r99 += nistitl.BinaryField(99, 999, template)
        message += r99
        idc += 1
    return message.NIST

