"""The fingerprint matcher: MCC over the cylinders of each enrolled finger, searched
through the finger index, same finger position only."""

from __future__ import annotations

import numpy as np

from matcher.base import Held, Ranked, parse_own, scaled
from matcher.calibration import Calibration, at_least_one
from matcher.errors import InvalidInput
from matcher.finger import mcc
from matcher.finger.index import FingerIndex
from matcher.finger.iso19794 import import_record
from matcher.finger.template import MinutiaeTemplate


class MinutiaeMatcher(Ranked):
    """Fingerprints: MCC over the cylinders of each enrolled finger.

    Fingers are compared with the same finger position only; a probe at position 0
    (unknown) is compared with every enrolled finger and its rate corrected for the
    number of fingers tried. Calibration: distance = 1 - MCC similarity.

    Search: up to ``exhaustive_limit`` fingers at the probe's position every one is
    compared by MCC (about 1 ms each on one core; exact). Above it, the FAISS binary
    index of MCC index codes (:class:`matcher.finger.index.FingerIndex`) shortlists
    ``shortlist`` fingers (or one in a thousand, if more) and only those are compared by MCC.

    ``share``: the part of each partition this matcher holds (a cluster shard's, 1 on one
    server). The limits and budgets above are the whole partition's, so a shard takes its
    share of them: it then decides as one server would over the whole gallery (exhaustive,
    flat or inverted index) and the shards together compare as many fingers by MCC as one
    server, where each taking the whole budget would multiply that work by the shards.
    """

    def __init__(self, model_id: str, calibration: Calibration, exhaustive_limit: int = 500,
                 shortlist: int = 100, share: float = 1.0) -> None:
        self.modality, self.model_id, self.calibration = "finger", model_id, calibration
        self.exhaustive_limit, self.shortlist = scaled(exhaustive_limit, share), scaled(shortlist, share)
        self._held = Held()
        self.index = FingerIndex(share=share)

    def parse(self, data: bytes) -> MinutiaeTemplate:
        """Our template bytes, or an ISO/IEC 19794-2:2005 record holding one finger view."""
        if bytes(data[:4]) == b"FMR\x00":
            views = import_record(data, self.model_id)
            if len(views) != 1:
                raise InvalidInput(f"an ISO/IEC 19794-2 record for one sample must hold one view, not {len(views)}")
            return views[0][1]
        return parse_own(data, MinutiaeTemplate, self.modality, self.model_id)

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

    def ranked(self, partition: str, position: int, template: MinutiaeTemplate, k: int,
               within: frozenset[str] | None = None) -> list[tuple[str, float, float]]:
        """The ``k`` best subjects by (FMR, id): (id, FMR, FMR)."""
        probe = template.cylinders
        positions = range(1, 11) if position == 0 else [position]
        fingers_there = sum(self.index.fingers(partition, p) for p in positions)
        names = None
        if fingers_there > self.exhaustive_limit:  # the index locks itself: searches run at once
            n = max(self.shortlist, k, fingers_there // 1000)
            names = {s for p in positions for s in self.index.shortlist(partition, p, template, n, within)}
        with self._held.lock:
            held = self._held.by_partition.get(partition, {})
            subjects = list(held.items()) if names is None else [(s, held[s]) for s in names if s in held]
        scored = []
        for subject_id, fingers in subjects:
            if within is not None and subject_id not in within:
                continue
            best, tried = self._best(fingers, position, probe)
            if tried:
                scored.append((at_least_one(self._fmr(best), tried), subject_id))
        scored.sort()
        return [(s, f, f) for f, s in scored[:k]]

    def fmr_against(self, partition: str, subject_id: str, position: int,
                    template: MinutiaeTemplate) -> float | None:
        best, tried = self._best(self._held.of(partition, subject_id), position, template.cylinders)
        return at_least_one(self._fmr(best), tried) if tried else None

    def fmr(self, a: MinutiaeTemplate, b: MinutiaeTemplate) -> float:
        return self._fmr(mcc.similarity(a.cylinders, b.cylinders))



def warm_up() -> None:
    """Compile (or load from numba's cache) the MCC kernel now, so that the first request
    does not wait seconds for it."""
    probe = mcc.encode(np.array([[100, 100, 0.3], [140, 120, 1.2], [120, 160, 2.0]], np.float64))
    mcc.similarity(probe, probe)
