"""The face matcher: exact FAISS L2 search over a partition's embeddings, distance calibration."""

from __future__ import annotations

import numpy as np

from matcher.base import Held, Ranked, parse_own
from matcher.calibration import Calibration, at_least_one
from matcher.face.gallery import FlatGallery
from matcher.face.template import EmbeddingTemplate


class EmbeddingMatcher(Ranked):
    """Face (any fixed-length embedding): exact FAISS L2 search, distance calibration.

    Args:
        model_id: the only model whose templates it accepts.
        dim: embedding dimension.
        calibration: distance <-> FMR table of the model.
    """

    def __init__(self, modality: str, model_id: str, dim: int, calibration: Calibration) -> None:
        self.modality, self.model_id, self.calibration = modality, model_id, calibration
        self.gallery = FlatGallery(model_id, dim)
        self._held = Held()

    def parse(self, data: bytes) -> EmbeddingTemplate:
        return parse_own(data, EmbeddingTemplate, self.modality, self.model_id)

    def add(self, partition: str, subject_id: str, position: int, template: EmbeddingTemplate) -> None:
        self.gallery.add(partition, subject_id, template)
        self._held.put(partition, subject_id, position, template.vector)

    def remove(self, partition: str, subject_id: str) -> None:
        self.gallery.remove(partition, subject_id)
        self._held.drop(partition, subject_id)

    def size(self, partition: str | None = None) -> int:
        return self.gallery.size(partition)

    def ranked(self, partition: str, position: int, template: EmbeddingTemplate, k: int,
               within: frozenset[str] | None = None) -> list[tuple[str, float, float]]:
        """The ``k`` nearest subjects: (id, FMR, distance), nearest first."""
        hits = self.gallery.search(partition, [template], k, within)[0]
        return [(h.subject_id, self.calibration.fmr_at_distance(h.distance), float(h.distance)) for h in hits]

    def ranked_many(self, partition: str, templates: list[EmbeddingTemplate], k: int
                    ) -> list[list[tuple[str, float]]]:
        """The ``k`` nearest subjects of many probes in one batch search on every core (a
        gallery audited against itself): (id, FMR), nearest first."""
        fmr = self.calibration.fmr_at_distance
        return [[(h.subject_id, fmr(h.distance)) for h in hits] for hits in self.gallery.search(partition, templates, k)]

    def fmr_against(self, partition: str, subject_id: str, position: int,
                    template: EmbeddingTemplate) -> float | None:
        vectors = list(self._held.of(partition, subject_id).values())
        if not vectors:
            return None
        d = min(float(np.linalg.norm(template.vector - v)) for v in vectors)
        return at_least_one(self.calibration.fmr_at_distance(d), len(vectors))

    def fmr(self, a: EmbeddingTemplate, b: EmbeddingTemplate) -> float:
        return self.calibration.fmr_at_distance(float(np.linalg.norm(a.vector - b.vector)))

