"""Template kinds: every modality's template type, and parsing any of them by its magic.

A template records the model that made it; a gallery or comparator accepts only
templates of its own model. Each kind's binary form is self-describing and validated on
load (magic, format version, model id, its fixed fields, finite values); the kinds live
with their modality (``matcher/face/template.py``, ``matcher/finger/template.py``,
``matcher/iris/template.py``) and each names its magic (``MAGIC``).
"""

from __future__ import annotations

from typing import Union

from matcher.errors import TemplateFormatError
from matcher.face.template import EmbeddingTemplate
from matcher.finger.template import MinutiaeTemplate
from matcher.iris.template import IrisTemplate

Template = Union[EmbeddingTemplate, MinutiaeTemplate, IrisTemplate]
KINDS: dict[bytes, type] = {kind.MAGIC: kind for kind in (EmbeddingTemplate, MinutiaeTemplate, IrisTemplate)}


def parse_template(data: bytes) -> Template:
    """Parse any Tambua template by its magic (embedding ``TMBT``, minutiae ``TMBM``, iris ``TMBI``).

    Raises:
        TemplateFormatError: not a Tambua template, or corrupt.
    """
    kind = KINDS.get(bytes(data[:4]))
    if kind is None:
        raise TemplateFormatError("not a Tambua template")
    return kind.from_bytes(data)
