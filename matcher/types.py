"""The engine's data: a subject, its stored templates, and the one spelling of an id."""

from __future__ import annotations

import time
import unicodedata
from dataclasses import dataclass, field

from matcher.errors import InvalidInput
from matcher.templates import Template

MAX_ID_LEN = 128


@dataclass(frozen=True)
class StoredTemplate:
    """One template of a subject. ``position``: 0 face; 1-10 fingers (ISO/IEC 19794-4); 1/2 iris right/left."""

    modality: str
    position: int
    template: Template

    def __post_init__(self) -> None:
        if self.modality != self.template.modality:
            raise InvalidInput(f"{self.modality} sample carries a {self.template.modality} template")
        if not 0 <= self.position <= 10:
            raise InvalidInput(f"position {self.position} is out of range")


@dataclass(frozen=True)
class Capture:
    """How an enrolment's samples were captured: what the data-quality report counts.
    Nothing biometric: who captured them, where, and each image's size.

    Attributes:
        operator: the principal that enrolled (its name; "" unknown, e.g. from a peer).
        site: the site where it was enrolled ("" this one).
        sizes: ``(modality, position, width, height, dpi)`` of each sample sent as an
            image (0 where unknown; a sample sent as a template has none).
    """

    operator: str = ""
    site: str = ""
    sizes: tuple[tuple[str, int, int, int, int], ...] = ()


@dataclass(frozen=True)
class Subject:
    """An enrolled subject.

    Attributes:
        subject_id: the caller's opaque id.
        partition: gallery partition (one deployment may serve several operations).
        templates: the stored templates.
        linked: subject ids this enrolment was adjudicated against ("enrol anyway").
        created_ns: enrolment time, Unix nanoseconds.
        capture: how it was captured (kept beside it for the data-quality report).
    """

    subject_id: str
    partition: str
    templates: tuple[StoredTemplate, ...]
    linked: tuple[str, ...] = ()
    created_ns: int = field(default_factory=time.time_ns)
    capture: Capture | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Frozen, but its ids are normalised once here, so every path in (RPC, sync, restore) agrees.
        object.__setattr__(self, "subject_id", normalise_id(self.subject_id))
        object.__setattr__(self, "partition", normalise_id(self.partition, "partition"))
        if not self.templates:
            raise InvalidInput("a subject needs at least one template")
        keys = [(t.modality, t.position) for t in self.templates]
        if len(set(keys)) != len(keys):
            raise InvalidInput("two samples for the same modality and position")


def normalise_id(value: str, name: str = "subject id") -> str:
    """The one spelling of a subject id or partition: Unicode NFC (``JOSÉ-1`` typed with a
    combining accent is the same subject as with a precomposed one).

    Raises:
        InvalidInput: empty, longer than ``MAX_ID_LEN``, spaces at its start or end, or
            characters that do not print (controls, line breaks).

    >>> normalise_id("JOSE\u0301-1") == normalise_id("JOS\u00c9-1") == "JOS\u00c9-1"
    True
    """
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be text")
    v = unicodedata.normalize("NFC", value)
    if not v:
        raise InvalidInput(f"{name} is empty")
    if v != v.strip():
        raise InvalidInput(f"{name} {v!r} has spaces at its start or end")
    if len(v) > MAX_ID_LEN or not v.isprintable():
        raise InvalidInput(f"{name} must be printable text of at most {MAX_ID_LEN} characters")
    return v
