"""The matching engine: enrol with deduplication, identify, verify, compare, delete.

Pure domain logic (no grpc): the service layer translates requests into these calls.
The store is the system of record; galleries are rebuilt from it at start.

Deduplication and insertion of one partition run under that partition's lock, so two
concurrent enrolments of the same new person cannot both pass the duplicate check:
the second one searches a gallery that already holds the first.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from matcher.calibration import Calibration, score_of_distance
from matcher.errors import DeadlineExceeded, InvalidInput, ModelMismatch, NotFound, Unimplemented
from matcher.gallery import FlatGallery, Gallery
from matcher.store import StoredTemplate, Subject, SubjectStore
from matcher.templates import EmbeddingTemplate

log = logging.getLogger(__name__)

SUPPORTED = ("face",)
MODALITIES = ("face", "finger", "iris")


class Observer(Protocol):
    """Receives stage timings (the service layer turns them into metrics)."""

    def timing(self, stage: str, modality: str, seconds: float) -> None: ...


class _NoObserver:
    def timing(self, stage: str, modality: str, seconds: float) -> None:
        pass


class Extractor(Protocol):
    model_id: str

    def extract(self, data: bytes) -> EmbeddingTemplate: ...


@dataclass(frozen=True)
class SampleInput:
    """One sample of a request: image bytes or template bytes for a modality and position."""

    modality: str
    position: int = 0
    image: bytes | None = None
    template: bytes | None = None

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise InvalidInput("sample modality is missing or unknown")
        if (self.image is None) == (self.template is None):
            raise InvalidInput("a sample carries either image bytes or a template")


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds as rates (turned into distances with each model's calibration)."""

    verify_fmr: float = 1e-3
    dedup_fpir: float = 1e-2
    max_candidates: int = 10

    def __post_init__(self) -> None:
        if not (0 < self.verify_fmr < 1 and 0 < self.dedup_fpir < 1 and self.max_candidates >= 1):
            raise ValueError("rates must be in (0, 1) and max_candidates >= 1")


@dataclass(frozen=True)
class ScoredCandidate:
    subject_id: str
    score: float
    fpir: float


@dataclass(frozen=True)
class EnrollResult:
    outcome: str  # "ENROLLED" or "DUPLICATE"
    subject_id: str
    candidates: tuple[ScoredCandidate, ...]
    templates: tuple[StoredTemplate, ...]


@dataclass(frozen=True)
class VerifyResult:
    match: bool
    score: float
    fmr: float
    model_id: str


class Engine:
    """Enrolment, search and verification over one store. Thread-safe.

    Args:
        store: the durable subject store.
        extractors: one extractor per supported modality.
        thresholds: decision rates.
        calibrations: per model id; loaded from ``matcher/calibration`` when absent.
        observer: receives ``extract`` and ``search`` timings per modality.
    """

    def __init__(
        self,
        store: SubjectStore,
        extractors: dict[str, Extractor],
        thresholds: Thresholds = Thresholds(),
        calibrations: dict[str, Calibration] | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.observer = observer or _NoObserver()
        self.store = store
        self.extractors = extractors
        self.thresholds = thresholds
        self.calibrations = calibrations or {e.model_id: Calibration.load(e.model_id) for e in extractors.values()}
        self.galleries: dict[str, Gallery] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        for modality, ex in extractors.items():
            gallery = FlatGallery(ex.model_id, 128)
            for partition, subject_id, _pos, tpl in store.templates(ex.model_id):
                gallery.add(partition, subject_id, tpl)
            self.galleries[modality] = gallery
            log.info("gallery %s loaded: %d templates", ex.model_id, gallery.size())

    def _lock(self, partition: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(partition, threading.Lock())

    @staticmethod
    def check_deadline(deadline: float | None) -> None:
        """Abandon the request when its deadline (``time.monotonic()`` seconds) has passed."""
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded("the request's deadline passed before it completed")

    def templates_of(self, samples: list[SampleInput], deadline: float | None = None) -> tuple[StoredTemplate, ...]:
        """Extract (or parse and check) every sample's template."""
        if not samples:
            raise InvalidInput("the request has no samples")
        out = []
        for s in samples:
            self.check_deadline(deadline)
            if s.modality not in SUPPORTED:
                raise Unimplemented(f"{s.modality} matching is not available yet")
            ex = self.extractors[s.modality]
            if s.image is not None:
                t0 = time.perf_counter()
                tpl = ex.extract(s.image)
                self.observer.timing("extract", s.modality, time.perf_counter() - t0)
            else:
                tpl = EmbeddingTemplate.from_bytes(s.template)  # type: ignore[arg-type]
                tpl.require_model(ex.model_id)
            out.append(StoredTemplate(s.modality, s.position, tpl))
        return tuple(out)

    def _face(self, templates: tuple[StoredTemplate, ...]) -> StoredTemplate:
        faces = [t for t in templates if t.modality == "face"]
        if len(faces) != 1:
            raise InvalidInput("exactly one face sample is needed")
        return faces[0]

    def _candidates(self, partition: str, face: StoredTemplate, k: int, within=None) -> list[ScoredCandidate]:
        gallery = self.galleries["face"]
        cal = self.calibrations[face.template.model_id]
        n = max(gallery.size(partition), 1)
        t0 = time.perf_counter()
        hits = gallery.search(partition, [face.template], k, within)[0]
        self.observer.timing("search", "face", time.perf_counter() - t0)
        return [ScoredCandidate(h.subject_id, score_of_distance(h.distance), cal.fpir_at_distance(h.distance, n))
                for h in hits]

    def enroll(self, subject_id: str, partition: str, samples: list[SampleInput], force: bool = False,
               adjudicated: tuple[str, ...] = (), deadline: float | None = None) -> EnrollResult:
        """Deduplicate, then store. A duplicate stores nothing unless ``force``.

        A request whose deadline passes before the write stores nothing: its caller has
        stopped waiting and would never learn of the enrolment.
        """
        templates = self.templates_of(samples, deadline)
        face = self._face(templates)
        subject = Subject(subject_id, partition, templates, tuple(adjudicated))
        with self._lock(partition):
            candidates = [c for c in self._candidates(partition, face, self.thresholds.max_candidates)
                          if c.fpir <= self.thresholds.dedup_fpir]
            if candidates and not force:
                return EnrollResult("DUPLICATE", subject_id, tuple(candidates), templates)
            self.check_deadline(deadline)
            self.store.add(subject)  # synced to disk before we answer
            for t in templates:
                self.galleries[t.modality].add(partition, subject_id, t.template)
        return EnrollResult("ENROLLED", subject_id, tuple(candidates), templates)

    def identify(self, partition: str, samples: list[SampleInput], max_candidates: int = 0,
                 within: frozenset[str] | None = None, deadline: float | None = None) -> list[ScoredCandidate]:
        face = self._face(self.templates_of(samples, deadline))
        self.check_deadline(deadline)
        return self._candidates(partition, face, max_candidates or self.thresholds.max_candidates, within)

    def verify(self, subject_id: str, partition: str, samples: list[SampleInput],
               deadline: float | None = None) -> VerifyResult:
        probe = self._face(self.templates_of(samples, deadline))
        subject = self.store.get(partition, subject_id)
        enrolled = [t for t in subject.templates if t.modality == "face"]
        if not enrolled:
            raise NotFound(f"subject {subject_id!r} has no face template")
        return self.compare(probe.template, enrolled[0].template)

    def compare(self, a: EmbeddingTemplate, b: EmbeddingTemplate) -> VerifyResult:
        """1:1 decision at the configured FMR. ``fmr`` is clamped to the calibrated range."""
        if a.model_id != b.model_id:
            raise ModelMismatch(f"cannot compare {a.model_id} with {b.model_id}")
        cal = self.calibrations[a.model_id]
        d = float(np.linalg.norm(a.vector - b.vector))
        threshold = cal.distance_at_fmr(self.thresholds.verify_fmr)
        return VerifyResult(d < threshold, score_of_distance(d), cal.fmr_at_distance(d), a.model_id)

    def delete(self, partition: str, subject_id: str) -> None:
        with self._lock(partition):
            self.store.delete(partition, subject_id)
            for g in self.galleries.values():
                g.remove(partition, subject_id)
