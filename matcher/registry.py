"""The modalities this matcher knows, one entry each: the positions a sample may take, what
a person calls a sample, its template kind, the matcher a model's templates get, and what
to compile before serving. A new modality is one folder beside ``matcher/face/`` (its
template kind and matcher), one entry here and in :data:`matcher.templates.KINDS`, its
extractor in ``enroll/``, its proto enum value and its calibration; the engine, the
service's sample checks and its proto mapping read this table instead of naming modalities.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from matcher.base import ModalityMatcher
from matcher.face.matcher import EmbeddingMatcher
from matcher.face.template import EmbeddingTemplate
from matcher.finger import matcher as finger
from matcher.finger.template import MinutiaeTemplate
from matcher.iris import matcher as iris
from matcher.iris.template import IrisTemplate

_FINGERS = ("thumb", "index", "middle", "ring", "little")
FACE_DIM = 128  # the face embedding's length (dlib ResNet)


@dataclass(frozen=True)
class Modality:
    """One modality.

    Attributes:
        name: as in the API (``face``; the proto enum value is its upper case).
        positions: valid sample positions (0 where unknown or not applicable).
        sample_name: what a person calls the sample at a position (``left iris``).
        template: the template kind its extractors make and its matcher takes.
        matcher: the matcher for a model's templates, given the model id, its calibration
            and, by keyword, ``share``: the part of each partition its gallery holds (1 on
            one server; a shard's in a cluster: matchers that shortlist scale their budgets).
        warm_up: compiles what the matcher compiles on first use (numba kernels), so that a
            server does it before it listens and the first request does not wait.
    """

    name: str
    positions: range
    sample_name: Callable[[int], str]
    template: type
    matcher: Callable[..., ModalityMatcher]
    warm_up: Callable[[], None] = lambda: None


def _finger_name(position: int) -> str:
    """ISO/IEC 19794-4: 1 right thumb ... 5 right little, 6 left thumb ... 10 left little."""
    if 1 <= position <= 10:
        return f"{'right' if position <= 5 else 'left'} {_FINGERS[(position - 1) % 5]} finger"
    return "finger of unknown position"


def _iris_name(position: int) -> str:
    """ISO/IEC 19794-6: 1 right, 2 left."""
    return {1: "right iris", 2: "left iris"}.get(position, "iris of unknown eye")


REGISTRY: dict[str, Modality] = {m.name: m for m in (
    Modality("face", range(0, 1), lambda _position: "face", EmbeddingTemplate,
             lambda model_id, cal, share=1.0: EmbeddingMatcher("face", model_id, FACE_DIM, cal)),  # exact: no budget
    Modality("finger", range(0, 11), _finger_name, MinutiaeTemplate, finger.MinutiaeMatcher, finger.warm_up),
    Modality("iris", range(0, 3), _iris_name, IrisTemplate, iris.IrisMatcher, iris.warm_up),
)}


def warm_up() -> None:
    """Compile every modality's kernels (or load them from numba's cache)."""
    for modality in REGISTRY.values():
        modality.warm_up()
