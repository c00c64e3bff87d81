"""A request's samples -> templates: images through the ``enroll/`` extractors, template
bytes parsed by the engine's matchers. The one place where images meet the matching side:
the engine (``matcher/engine.py``) takes templates only.

May import ``matcher/`` (types, errors, the engine) and is handed the extractors; it
imports no gRPC (the servicer turns messages into :class:`SampleInput` first).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from matcher.engine import MODALITIES, POSITIONS, Engine, check_enrolment, check_samples, sample_name
from matcher.errors import InvalidInput, TambuaError, Unimplemented
from matcher.types import StoredTemplate
from matcher.templates import Template


class Extractor(Protocol):
    """What ``enroll/`` provides per modality (the finger extractor also takes ``dpi``)."""

    model_id: str

    def extract(self, data: bytes) -> Template: ...


@dataclass(frozen=True)
class SampleInput:
    """One sample of a request: image bytes or template bytes for a modality and position."""

    modality: str
    position: int = 0
    image: bytes | None = None
    template: bytes | None = None
    dpi: int = 0

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise InvalidInput("sample modality is missing or unknown")
        if (self.image is None) == (self.template is None):
            raise InvalidInput("a sample carries either image bytes or a template")
        if self.position not in POSITIONS[self.modality]:
            raise InvalidInput(f"position {self.position} is not valid for {self.modality} "
                               "(face 0; finger 1-10 as in ISO/IEC 19794-4, 0 unknown; iris 1 right, 2 left)")


class Extraction:
    """Turns samples into templates for ``engine`` (thread-safe: the extractors are).

    Args:
        extractors: one per modality this server extracts (``{"face": FaceExtractor()}``).
        engine: whose matchers parse template bytes and whose observer gets ``extract`` timings.
    """

    def __init__(self, extractors: dict[str, Extractor], engine: Engine) -> None:
        self.extractors, self.engine = extractors, engine

    def templates(self, samples: list[SampleInput], deadline: float | None = None, one_per_position: bool = True,
                  enrolment: bool = False) -> tuple[StoredTemplate, ...]:
        """Extract (or parse and check) every sample's template.

        Args:
            one_per_position: a subject's samples (enrol, identify, verify) hold at most one
                per modality and position; Compare's two samples may be of the same finger.
            enrolment: check what an enrolment needs (finger positions) before extracting.
        """
        check_samples(samples, one_per_position)
        if enrolment:
            check_enrolment(samples)
        out = []
        for s in samples:
            self.engine.check_deadline(deadline)
            try:
                out.append(StoredTemplate(s.modality, s.position, self._template(s)))
            except TambuaError as e:
                e.sample = s  # what the data-quality report counts a refused capture against
                if len(samples) == 1:
                    raise
                # Which of the request's samples failed, so the operator re-captures that one.
                named = type(e)(f"{sample_name(s.modality, s.position)}: {e.message}", e.reason)
                named.sample = s
                raise named from e
        return tuple(out)

    def _template(self, s: SampleInput) -> Template:
        if s.template is not None:
            return self.engine.parse(s.modality, s.template)
        extractor = self.extractors.get(s.modality)
        if extractor is None or s.modality not in self.engine.matchers:
            raise Unimplemented(f"{s.modality} matching is not available yet")
        t0 = time.perf_counter()
        template = extractor.extract(s.image, dpi=s.dpi) if s.modality == "finger" else extractor.extract(s.image)
        self.engine.observer.timing("extract", s.modality, time.perf_counter() - t0)
        return template
