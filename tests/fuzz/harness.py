"""Fuzz targets: every parser that hostile bytes reach, with seeds and the one contract.

The contract: a target either returns, or raises a :class:`matcher.errors.TambuaError`
that the service maps to a status other than INTERNAL (INVALID_ARGUMENT for bad bytes).
Anything else (an IndexError, a numpy error, a hang, a crash) is a finding.

Used by ``test_fuzz.py`` (Hypothesis, a bounded run in CI) and by ``run.py`` (atheris,
coverage-guided, the long run).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
from PIL import Image

from enroll.image import decode_image
from matcher.errors import TambuaError
from matcher.iris.template import IrisTemplate
from matcher.finger.iso19794 import export_record, import_record
from matcher.finger.template import MinutiaeTemplate
from matcher.face.template import EmbeddingTemplate
from matcher.templates import parse_template
from tambua.status import code_of

FINGER_MODEL = "finger/leader-mcc-v1"


def _images() -> list[bytes]:
    rng = np.random.default_rng(7)
    grey = (np.add.outer(np.arange(40), np.arange(48)) * 3 % 256).astype(np.uint8)
    grey = np.clip(grey + rng.integers(0, 20, grey.shape), 0, 255).astype(np.uint8)
    out = []
    for fmt, mode in [("PNG", "L"), ("JPEG", "RGB"), ("TIFF", "L"), ("BMP", "RGB"), ("PPM", "L"), ("WSQ", "L")]:
        buf = io.BytesIO()
        im = Image.fromarray(grey).convert(mode)
        im.save(buf, format=fmt)
        out.append(buf.getvalue())
    return out


def _templates() -> list[bytes]:
    rng = np.random.default_rng(11)
    minutiae = np.column_stack([rng.uniform(10, 200, 12), rng.uniform(10, 200, 12), rng.uniform(-math.pi, math.pi, 12),
                                rng.integers(0, 2, 12), rng.uniform(0, 1, 12)]).astype(np.float32)
    bits = rng.integers(0, 2, (4, 6, 128)).astype(bool)
    return [
        EmbeddingTemplate("face/dlib-resnet-v1", rng.normal(size=128).astype(np.float32), 80).to_bytes(),
        MinutiaeTemplate(FINGER_MODEL, minutiae, 256, 256, 70).to_bytes(),
        IrisTemplate("iris/gabor-v2", bits, np.ones_like(bits), 60).to_bytes(),
    ]


def _iso_records() -> list[bytes]:
    return [export_record([(2, parse_template(_templates()[1]))]),
            export_record([(1, parse_template(_templates()[1])), (7, parse_template(_templates()[1]))])]


def _transactions() -> list[bytes]:
    """Small ANSI/NIST-ITL transactions as our export writes them: images (PNG, WSQ), a
    finger's minutiae (Type-9) and our templates (Type-99)."""
    from tambua import ansi_nist

    images, templates = _images(), _templates()
    iso = export_record([(2, parse_template(templates[1]))])
    return [ansi_nist.build("S-1", [("finger", 2, templates[1], iso), ("face", 0, templates[0], b"")],
                            [("finger", 2, images[5]), ("face", 0, images[0])]),
            ansi_nist.build("S-2", [("iris", 1, templates[2], b"")], [("iris", 1, images[0])])]


def _parse_transaction(data: bytes):
    """A transaction parses, or is refused with a reason (the importer reports it): both keep the contract."""
    from tambua import ansi_nist

    try:
        return ansi_nist.parse(data)
    except ansi_nist.NistError as e:
        assert e.reason and e.message
        return None


TARGETS: dict[str, tuple[Callable[[bytes], object], Callable[[], list[bytes]]]] = {
    "ansi_nist": (_parse_transaction, _transactions),
    "image": (decode_image, _images),
    "template": (parse_template, _templates),
    "iso19794": (lambda data: import_record(data, FINGER_MODEL), _iso_records),
}


def check(target: str, data: bytes) -> None:
    """Run one input through a target; raise AssertionError on a contract breach."""
    fn, _ = TARGETS[target]
    try:
        fn(data)
    except TambuaError as e:
        assert code_of(e).name != "INTERNAL", f"{target}: {type(e).__name__} maps to INTERNAL"
    except Exception as e:  # noqa: BLE001 - any other exception is the finding
        raise AssertionError(f"{target}: {type(e).__name__}: {e}") from e
