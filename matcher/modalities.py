"""One matcher per modality and model: what the engine searches and compares through.

A matcher owns the in-memory gallery of its model's templates (rebuilt from the store
at start), parses its template bytes, and turns comparisons into false-match rates
with its model's calibration, so the engine can fuse evidence across modalities and
fingers without knowing how each one scores.
"""

from __future__ import annotations

import math
import threading
from typing import Protocol

import numpy as np

from matcher import mcc
from matcher.calibration import Calibration
from matcher.errors import InvalidInput
from matcher.finger_index import FingerIndex
from matcher.gallery import FlatGallery
from matcher.iso19794 import import_record
from matcher.minutiae import MinutiaeTemplate
from matcher.templates import EmbeddingTemplate, Template, parse_template


def at_least_one(fmr: float, comparisons: int) -> float:
    """FMR of the best of ``comparisons`` independent impostor comparisons (Sidak)."""
    if comparisons <= 1:
        return fmr
    return float(-math.expm1(comparisons * math.log1p(-min(fmr, 1.0 - 1e-16))))


class ModalityMatcher(Protocol):
    """What the engine needs from one modality's model."""

    modality: str
    model_id: str

    def parse(self, data: bytes) -> Template: ...

    def add(self, partition: str, subject_id: str, position: int, template: Template) -> None: ...

    def remove(self, partition: str, subject_id: str) -> None: ...

    def size(self, partition: str | None = None) -> int: ...

    def search(self, partition: str, position: int, template: Template, k: int,
               within: frozenset[str] | None = None) -> list[tuple[str, float]]: ...

    def fmr_against(self, partition: str, subject_id: str, position: int, template: Template) -> float | None: ...

    def fmr(self, a: Template, b: Template) -> float: ...


class _Held:
    """Templates per partition and subject, for exact comparison against one subject."""

    def __init__(self) -> None:
        self.by_partition: dict[str, dict[str, dict[int, object]]] = {}
        self.lock = threading.Lock()

    def put(self, partition: str, subject_id: str, position: int, value: object) -> None:
        with self.lock:
            self.by_partition.setdefault(partition, {}).setdefault(subject_id, {})[position] = value

    def drop(self, partition: str, subject_id: str) -> None:
        with self.lock:
            self.by_partition.get(partition, {}).pop(subject_id, None)

    def of(self, partition: str, subject_id: str) -> dict[int, object]:
        return self.by_partition.get(partition, {}).get(subject_id, {})

    def count(self, partition: str | None) -> int:
        parts = self.by_partition.values() if partition is None else [self.by_partition.get(partition, {})]
        return sum(len(p) for sub in parts for p in sub.values())


class EmbeddingMatcher:
    """Face (any fixed-length embedding): exact FAISS L2 search, distance calibration.

    Args:
        model_id: the only model whose templates it accepts.
        dim: embedding dimension.
        calibration: distance <-> FMR table of the model.
    """

    def __init__(self, modality: str, model_id: str, dim: int, calibration: Calibration) -> None:
        self.modality, self.model_id, self.calibration = modality, model_id, calibration
        self.gallery = FlatGallery(model_id, dim)
        self._held = _Held()

    def parse(self, data: bytes) -> EmbeddingTemplate:
        t = parse_template(data)
        if not isinstance(t, EmbeddingTemplate):
            raise InvalidInput(f"a {self.modality} sample carries a {t.modality} template")
        t.require_model(self.model_id)
        return t

    def add(self, partition: str, subject_id: str, position: int, template: EmbeddingTemplate) -> None:
        self.gallery.add(partition, subject_id, template)
        self._held.put(partition, subject_id, position, template.vector)

    def remove(self, partition: str, subject_id: str) -> None:
        self.gallery.remove(partition, subject_id)
        self._held.drop(partition, subject_id)

    def size(self, partition: str | None = None) -> int:
        return self.gallery.size(partition)

    def search(self, partition: str, position: int, template: EmbeddingTemplate, k: int,
               within: frozenset[str] | None = None) -> list[tuple[str, float]]:
        hits = self.gallery.search(partition, [template], k, within)[0]
        return [(h.subject_id, self.calibration.fmr_at_distance(h.distance)) for h in hits]

    def fmr_against(self, partition: str, subject_id: str, position: int,
                    template: EmbeddingTemplate) -> float | None:
        vectors = list(self._held.of(partition, subject_id).values())
        if not vectors:
            return None
        d = min(float(np.linalg.norm(template.vector - v)) for v in vectors)
        return at_least_one(self.calibration.fmr_at_distance(d), len(vectors))

    def fmr(self, a: EmbeddingTemplate, b: EmbeddingTemplate) -> float:
        return self.calibration.fmr_at_distance(float(np.linalg.norm(a.vector - b.vector)))


class MinutiaeMatcher:
    """Fingerprints: MCC over the cylinders of each enrolled finger.

    Fingers are compared with the same finger position only; a probe at position 0
    (unknown) is compared with every enrolled finger and its rate corrected for the
    number of fingers tried. Calibration: distance = 1 - MCC similarity.

    Search: up to ``exhaustive_limit`` fingers at the probe's position every one is
    compared by MCC (about 1 ms each on one core; exact). Above it, the FAISS binary
    index of MCC index codes (:class:`matcher.finger_index.FingerIndex`) shortlists
    ``shortlist`` fingers (at least 1% of them) and only those are compared by MCC.
    """

    def __init__(self, model_id: str, calibration: Calibration, exhaustive_limit: int = 500,
                 shortlist: int = 100) -> None:
        self.modality, self.model_id, self.calibration = "finger", model_id, calibration
        self.exhaustive_limit, self.shortlist = exhaustive_limit, shortlist
        self._held = _Held()
        self.index = FingerIndex()

    def parse(self, data: bytes) -> MinutiaeTemplate:
        """Our template bytes, or an ISO/IEC 19794-2:2005 record holding one finger view."""
        if bytes(data[:4]) == b"FMR\x00":
            views = import_record(data, self.model_id)
            if len(views) != 1:
                raise InvalidInput(f"an ISO/IEC 19794-2 record for one sample must hold one view, not {len(views)}")
            return views[0][1]
        t = parse_template(data)
        if not isinstance(t, MinutiaeTemplate):
            raise InvalidInput(f"a finger sample carries a {t.modality} template")
        t.require_model(self.model_id)
        return t

    def add(self, partition: str, subject_id: str, position: int, template: MinutiaeTemplate) -> None:
        self._held.put(partition, subject_id, position, template.cylinders)
        self.index.add(partition, subject_id, position, template)

    def remove(self, partition: str, subject_id: str) -> None:
        self._held.drop(partition, subject_id)
        self.index.remove(partition, subject_id)

    def size(self, partition: str | None = None) -> int:
        return self._held.count(partition)

    def _fmr(self, similarity: float) -> float:
        return self.calibration.fmr_at_distance(1.0 - similarity)

    def _best(self, fingers: dict[int, object], position: int, probe: mcc.Cylinders) -> tuple[float, int]:
        tried = [c for p, c in fingers.items() if position == 0 or p == position]
        if not tried:
            return -1.0, 0
        return max(mcc.similarity(probe, c) for c in tried), len(tried)

    def search(self, partition: str, position: int, template: MinutiaeTemplate, k: int,
               within: frozenset[str] | None = None) -> list[tuple[str, float]]:
        probe = template.cylinders
        positions = range(1, 11) if position == 0 else [position]
        fingers_there = sum(self.index.fingers(partition, p) for p in positions)
        with self._held.lock:
            held = self._held.by_partition.get(partition, {})
            if fingers_there <= self.exhaustive_limit:
                subjects = list(held.items())
            else:
                n = max(self.shortlist, fingers_there // 1000)
                names = {s for p in positions for s in self.index.shortlist(partition, p, template, n, within)}
                subjects = [(s, held[s]) for s in names if s in held]
        scored = []
        for subject_id, fingers in subjects:
            if within is not None and subject_id not in within:
                continue
            best, tried = self._best(fingers, position, probe)
            if tried:
                scored.append((at_least_one(self._fmr(best), tried), subject_id))
        scored.sort()
        return [(s, f) for f, s in scored[:k]]

    def fmr_against(self, partition: str, subject_id: str, position: int,
                    template: MinutiaeTemplate) -> float | None:
        best, tried = self._best(self._held.of(partition, subject_id), position, template.cylinders)
        return at_least_one(self._fmr(best), tried) if tried else None

    def fmr(self, a: MinutiaeTemplate, b: MinutiaeTemplate) -> float:
        return self._fmr(mcc.similarity(a.cylinders, b.cylinders))
