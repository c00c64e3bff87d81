"""1:N search over embedding templates with FAISS.

:class:`Gallery` is the interface the service searches through; :class:`FlatGallery`
is the in-process exact implementation (one ``IndexFlatL2`` per partition). A sharded
or remote engine implements the same interface to hold galleries past one machine.

Threads: faiss answers one query 4-5x slower with 2 OpenMP threads than with 1 on
this class of machine, so a single query runs on one thread and batches on all cores.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Protocol

import faiss
import numpy as np

from matcher.errors import InvalidInput, ModelMismatch
from matcher.face.template import EmbeddingTemplate


@dataclass(frozen=True)
class Candidate:
    """A search hit: the subject and the smallest distance of its templates to the probe."""

    subject_id: str
    distance: float


class Gallery(Protocol):
    """What the service needs from a 1:N gallery of one model."""

    model_id: str

    def add(self, partition: str, subject_id: str, template: EmbeddingTemplate) -> None: ...

    def remove(self, partition: str, subject_id: str) -> int: ...

    def search(
        self, partition: str, probes: list[EmbeddingTemplate], k: int, within: frozenset[str] | None = None
    ) -> list[list[Candidate]]: ...

    def size(self, partition: str | None = None) -> int: ...


class FlatGallery:
    """Exact L2 search, one FAISS flat index per partition. Thread-safe (one lock per gallery).

    Args:
        model_id: the only model whose templates this gallery accepts.
        dim: embedding dimension.
    """

    def __init__(self, model_id: str, dim: int) -> None:
        self.model_id = model_id
        self.dim = dim
        self._lock = threading.Lock()
        self._indexes: dict[str, faiss.IndexIDMap2] = {}
        self._next_id = 0
        self._subject_of: dict[int, tuple[str, str]] = {}
        self._ids_of: dict[tuple[str, str], list[int]] = {}
        # Most templates any subject of a partition has had (an upper bound after removals):
        # how many rows to fetch so that k distinct subjects come back.
        self._per_subject: dict[str, int] = {}

    def _vector(self, t: EmbeddingTemplate) -> np.ndarray:
        t.require_model(self.model_id)
        if t.vector.size != self.dim:
            raise ModelMismatch(f"template has {t.vector.size} dimensions, gallery {self.dim}")
        return t.vector.reshape(1, -1)

    def add(self, partition: str, subject_id: str, template: EmbeddingTemplate) -> None:
        """Index one template of a subject (a subject may have several)."""
        vec = self._vector(template)
        with self._lock:
            index = self._indexes.get(partition)
            if index is None:
                index = self._indexes[partition] = faiss.IndexIDMap2(faiss.IndexFlatL2(self.dim))
            key = self._next_id
            self._next_id += 1
            index.add_with_ids(vec, np.array([key], np.int64))
            self._subject_of[key] = (partition, subject_id)
            keys = self._ids_of.setdefault((partition, subject_id), [])
            keys.append(key)
            self._per_subject[partition] = max(self._per_subject.get(partition, 1), len(keys))

    def remove(self, partition: str, subject_id: str) -> int:
        """Remove every template of a subject; returns how many were removed."""
        with self._lock:
            keys = self._ids_of.pop((partition, subject_id), [])
            if keys:
                self._indexes[partition].remove_ids(faiss.IDSelectorBatch(np.array(keys, np.int64)))
                for key in keys:
                    del self._subject_of[key]
            return len(keys)

    def search(
        self, partition: str, probes: list[EmbeddingTemplate], k: int, within: frozenset[str] | None = None
    ) -> list[list[Candidate]]:
        """The k nearest subjects for each probe, nearest first.

        Args:
            partition: which partition to search.
            probes: probe templates of this gallery's model.
            k: candidates per probe (fewer when the gallery is smaller).
            within: restrict the search to these subject ids.
        """
        if k < 1:
            raise InvalidInput("k must be at least 1")
        if not probes:
            return []
        x = np.concatenate([self._vector(p) for p in probes])
        with self._lock:
            index = self._indexes.get(partition)
            if index is None or index.ntotal == 0:
                return [[] for _ in probes]
            params = None
            if within is not None:
                keys = [key for sid in within for key in self._ids_of.get((partition, sid), [])]
                if not keys:
                    return [[] for _ in probes]
                params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(np.array(keys, np.int64)))
            kk = min(index.ntotal, k * self._per_subject[partition])
            faiss.omp_set_num_threads(1 if len(probes) == 1 else (os.cpu_count() or 1))
            dist, ids = index.search(x, kk, params=params)
            subject_of = self._subject_of
        out = []
        for drow, irow in zip(dist, ids):
            seen: dict[str, float] = {}
            for d, key in zip(drow, irow):
                if key < 0:
                    continue
                sid = subject_of[int(key)][1]
                if sid not in seen:  # rows are sorted, so the first hit is the subject's best
                    seen[sid] = float(np.sqrt(max(d, 0.0)))
            out.append([Candidate(s, d) for s, d in list(seen.items())[:k]])
        return out

    def size(self, partition: str | None = None) -> int:
        """Number of indexed templates."""
        with self._lock:
            if partition is not None:
                index = self._indexes.get(partition)
                return 0 if index is None else index.ntotal
            return sum(i.ntotal for i in self._indexes.values())
