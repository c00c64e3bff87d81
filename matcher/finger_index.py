"""Fast 1:N shortlist of enrolled fingers: MCC index codes in a FAISS binary index.

Minutiae are not vectors, but each minutia's neighbourhood is: its 312-bit index code
(:func:`matcher.mcc.index_codes`, padded to 512 bits). One FAISS binary index per
partition and finger position holds every enrolled minutia's code, with side arrays of
the owning finger and the minutia's direction. A probe finger's codes each fetch their
nearest neighbours by Hamming distance h; a neighbour votes ``(1 - h/312)^30`` for its
finger when the two directions differ by at most pi/4; a finger's score is the sum over
probe minutiae of the best vote it got from each. The top of that list is re-ranked by
full MCC (:class:`matcher.modalities.MinutiaeMatcher`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import faiss
import numpy as np

from matcher import mcc
from matcher.minutiae import MinutiaeTemplate

VOTE_POWER = 30
MAX_TURN = np.pi / 4


@dataclass
class _Shelf:
    """One (partition, position): the codes of its fingers."""

    index: faiss.IndexBinaryIDMap2 = field(
        default_factory=lambda: faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(mcc.INDEX_BYTES * 8)))
    owner: dict[int, str] = field(default_factory=dict)  # code id -> subject id
    angle: dict[int, float] = field(default_factory=dict)
    ids_of: dict[str, np.ndarray] = field(default_factory=dict)  # subject id -> code ids


class FingerIndex:
    """Shortlists enrolled fingers for a probe finger. Thread-safe.

    Args:
        neighbours: nearest codes fetched per probe minutia.
    """

    def __init__(self, neighbours: int = 256) -> None:
        self.neighbours = neighbours
        self._shelves: dict[tuple[str, int], _Shelf] = {}
        self._next_id = 0
        self._lock = threading.Lock()

    def add(self, partition: str, subject_id: str, position: int, template: MinutiaeTemplate) -> None:
        codes, theta = template.index_codes
        with self._lock:
            shelf = self._shelves.setdefault((partition, position), _Shelf())
            ids = np.arange(self._next_id, self._next_id + len(codes), dtype=np.int64)
            self._next_id += len(codes)
            if len(codes):
                shelf.index.add_with_ids(codes, ids)
            for i, a in zip(ids.tolist(), theta.tolist()):
                shelf.owner[i] = subject_id
                shelf.angle[i] = a
            shelf.ids_of[subject_id] = ids

    def remove(self, partition: str, subject_id: str) -> None:
        with self._lock:
            for (part, _pos), shelf in self._shelves.items():
                if part != partition or subject_id not in shelf.ids_of:
                    continue
                ids = shelf.ids_of.pop(subject_id)
                if len(ids):
                    shelf.index.remove_ids(ids)
                for i in ids.tolist():
                    shelf.owner.pop(i, None)
                    shelf.angle.pop(i, None)

    def fingers(self, partition: str, position: int) -> int:
        shelf = self._shelves.get((partition, position))
        return len(shelf.ids_of) if shelf else 0

    def shortlist(self, partition: str, position: int, template: MinutiaeTemplate, n: int,
                  within: frozenset[str] | None = None) -> list[str]:
        """The ``n`` subjects whose finger at ``position`` collects the most votes."""
        shelf = self._shelves.get((partition, position))
        codes, theta = template.index_codes
        if shelf is None or len(codes) == 0:
            return []
        with self._lock:
            k = min(self.neighbours, shelf.index.ntotal)
            if k == 0:
                return []
            faiss.omp_set_num_threads(1)
            dist, ids = shelf.index.search(codes, k)
            owners = [[shelf.owner.get(int(i)) for i in row] for row in ids]
            angles = np.array([[shelf.angle.get(int(i), np.nan) for i in row] for row in ids])
        votes = (1.0 - dist / mcc.INDEX_BITS).clip(0.0) ** VOTE_POWER
        turn = np.abs((angles - theta[:, None] + np.pi) % (2 * np.pi) - np.pi)
        votes[~(turn <= MAX_TURN)] = 0.0
        totals: dict[str, float] = {}
        for row_owners, row_votes in zip(owners, votes):
            best: dict[str, float] = {}
            for owner, v in zip(row_owners, row_votes.tolist()):
                if owner is not None and v > best.get(owner, 0.0) and (within is None or owner in within):
                    best[owner] = v
            for owner, v in best.items():
                totals[owner] = totals.get(owner, 0.0) + v
        return sorted(totals, key=totals.__getitem__, reverse=True)[:n]
