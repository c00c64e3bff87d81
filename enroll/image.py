"""Image bytes -> RGB pixels, for every modality.

Pillow decodes (PNG, JPEG, TIFF, BMP, PGM/PPM, WSQ through the wsq plugin, ...), honours the EXIF orientation
tag and reports truncated files instead of padding them with grey as decoders
often do silently. Every failure is an :class:`ImageDecodeError` with its own reason.
"""

from __future__ import annotations

import io
import multiprocessing
import threading
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np
import wsq  # noqa: F401 - registers NIST's WSQ fingerprint codec with Pillow
from PIL import Image, ImageOps, UnidentifiedImageError

from matcher.errors import ImageDecodeError

MAX_PIXELS = 50_000_000  # a 50 MP photo; anything larger is refused before decoding
MIN_SIDE = 16

Image.MAX_IMAGE_PIXELS = None  # we check the size ourselves with a clear reason


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image.

    Attributes:
        rgb: (H, W, 3) uint8 RGB, orientation applied.
        format: the container format Pillow detected, e.g. ``"JPEG"``.
        was_grey: the source had a single channel.
    """

    rgb: np.ndarray
    format: str
    was_grey: bool

    def __post_init__(self) -> None:
        if self.rgb.dtype != np.uint8 or self.rgb.ndim != 3 or self.rgb.shape[2] != 3:
            raise ValueError("rgb must be (H, W, 3) uint8")


def _to_8bit(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        hi = a.max() or 1.0
        return Image.fromarray((a * (255.0 / hi)).round().astype(np.uint8))
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = (a - a.min()) / ((a.max() - a.min()) or 1.0) * 255.0
        return Image.fromarray(a.round().astype(np.uint8))
    return im


_WSQ_SOI = b"\xff\xa0"  # WSQ's start-of-image marker: what makes Pillow pick the WSQ plugin
_isolation = threading.Lock()
_wsq_pool: ProcessPoolExecutor | None = None


def decode_image(data: bytes) -> DecodedImage:
    """Decode image bytes.

    WSQ is decoded in a separate worker process: the WSQ plugin wraps NIST's C decoder,
    and fuzzing (tests/fuzz) brought the fuzzing process down with a fatal signal after a
    run of corrupt WSQ files. A decoder that dies there costs that request an
    IMAGE_UNDECODABLE, not the server. The other formats go to Pillow's decoders in
    process (libjpeg, libpng and libtiff are fuzzed upstream continuously).

    Raises:
        ImageDecodeError: ``IMAGE_EMPTY``, ``IMAGE_UNDECODABLE``, ``IMAGE_TRUNCATED``,
            ``IMAGE_TOO_LARGE`` or ``IMAGE_TOO_SMALL``.
    """
    if not data:
        raise ImageDecodeError("no image bytes were sent", "IMAGE_EMPTY")
    if data[:2] == _WSQ_SOI:
        return _decode_isolated(data)
    return _decode(data)


def _decode_isolated(data: bytes) -> DecodedImage:
    global _wsq_pool
    with _isolation:
        if _wsq_pool is None:
            _wsq_pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        pool = _wsq_pool
    try:
        outcome = pool.submit(_decode_for_parent, data).result(timeout=60)
    except (BrokenProcessPool, TimeoutError) as e:
        with _isolation:
            if _wsq_pool is pool:
                _wsq_pool = None
        pool.shutdown(wait=False, cancel_futures=True)
        raise ImageDecodeError("the WSQ decoder failed on these bytes", "IMAGE_UNDECODABLE") from e
    if isinstance(outcome, tuple):
        raise ImageDecodeError(*outcome)
    return outcome


def _decode_for_parent(data: bytes) -> DecodedImage | tuple[str, str]:
    """In the worker: the decoded image, or (message, reason) of the error (the error
    class itself does not survive pickling with its reason)."""
    try:
        return _decode(data)
    except ImageDecodeError as e:
        return e.message, e.reason


def _decode(data: bytes) -> DecodedImage:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data))
            fmt = im.format or "unknown"
            if im.width * im.height > MAX_PIXELS:
                raise ImageDecodeError(
                    f"image is {im.width}x{im.height}, over the {MAX_PIXELS} pixel limit", "IMAGE_TOO_LARGE"
                )
            im.load()
    except UnidentifiedImageError as e:
        raise ImageDecodeError("bytes are not an image in a supported format", "IMAGE_UNDECODABLE") from e
    except OSError as e:
        if "truncated" in str(e).lower():
            raise ImageDecodeError("image file is truncated", "IMAGE_TRUNCATED") from e
        raise ImageDecodeError(f"image could not be decoded ({type(e).__name__})", "IMAGE_UNDECODABLE") from e
    except ImageDecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - decoder plugins raise what they like on hostile bytes
        # Found by fuzzing (tests/fuzz): the WSQ plugin raises a bare Exception("WSQ Error: -39")
        # and Pillow plugins have raised UnboundLocalError on mutated files. Bytes a decoder
        # cannot make sense of are undecodable, whatever it raises.
        raise ImageDecodeError(f"image could not be decoded ({type(e).__name__})", "IMAGE_UNDECODABLE") from e
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not reject a good image
        pass
    was_grey = im.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
    try:
        rgb = np.asarray(_to_8bit(im).convert("RGB"))
    except Exception as e:  # noqa: BLE001 - an exotic mode or a lazily failing plugin
        raise ImageDecodeError(f"image could not be converted ({type(e).__name__})", "IMAGE_UNDECODABLE") from e
    if min(rgb.shape[:2]) < MIN_SIDE:
        raise ImageDecodeError(f"image is {rgb.shape[1]}x{rgb.shape[0]}, too small", "IMAGE_TOO_SMALL")
    return DecodedImage(np.ascontiguousarray(rgb), fmt, was_grey)


_WSQ_SOF = b"\xff\xa2"  # WSQ's start-of-frame marker: length, black, white, lines (height), columns (width)


def image_info(data: bytes) -> tuple[int, int, int]:
    """(width, height, dpi) from an image's header, without decoding its pixels; 0 where
    the header does not say or cannot be read (the data-quality report counts it unknown).

    WSQ's header is read here, not by its plugin (which decodes in the isolated worker,
    see :func:`decode_image`): its frame header gives the size, a NISTCOM comment the
    resolution (``PPI``).
    """
    if data[:2] == _WSQ_SOI:
        at = data.find(_WSQ_SOF, 2)
        if at < 0 or len(data) < at + 10:
            return 0, 0, 0
        height, width = int.from_bytes(data[at + 6:at + 8], "big"), int.from_bytes(data[at + 8:at + 10], "big")
        ppi = data.find(b"PPI ", 2, at)
        digits = data[ppi + 4:ppi + 9].split(b"\n")[0].strip() if ppi >= 0 else b""
        return width, height, int(digits) if digits.isdigit() else 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data))  # reads the header only
            dpi = im.info.get("dpi") or (0, 0)
            return im.width, im.height, int(round(float(dpi[0]))) if dpi and float(dpi[0]) > 1 else 0
    except Exception:  # noqa: BLE001 - bytes decode_image refuses with its own reason
        return 0, 0, 0
