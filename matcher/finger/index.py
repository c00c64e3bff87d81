"""Fast 1:N shortlist of enrolled fingers: MCC index codes in a FAISS binary index.

Minutiae are not vectors, but each minutia's neighbourhood is: its 312-bit index code
(:func:`matcher.finger.mcc.index_codes`, padded to 512 bits). One FAISS binary index per
partition and finger position holds every enrolled minutia's code, with side arrays of
the owning finger and the minutia's direction and position. A probe finger's codes each
fetch their nearest neighbours by Hamming distance h; a neighbour votes ``(1 - h/312)^10``
for its finger when the two directions differ by at most pi/4. Each vote also implies
how the probe lies on the enrolled finger (the turn between the two directions, and the
shift that then brings the probe minutia onto the enrolled one): votes are pooled per
finger in cells of that pose (pi/4 of turn, 60 px of shift, each cell grid also offset by
half a cell, the best kept), taking the best vote of each probe minutia in a cell, and a
finger scores its best cell. Chance neighbours scatter over poses, a mate's pile up in
one (a geometric Hough vote). The top of that list is re-ranked by full MCC
(:class:`matcher.finger.matcher.MinutiaeMatcher`).

Index kinds (measured by ``python -m bench.search --modality finger``): a flat index is
exact and needs no training; above ``ivf_min_codes`` codes a shelf is rebuilt as an
inverted file (k-means lists over the codes, ``nprobe`` lists visited per probe code),
which is many times faster at a measured cost in shortlist recall. Removed fingers leave
tombstones (their codes stop voting at once); a shelf is compacted when a third of it is
dead, and an inverted file is retrained when it has doubled since its training.
"""

from __future__ import annotations

import math
import os
import threading

import faiss
import numpy as np

from matcher.finger import mcc
from matcher.finger.template import MinutiaeTemplate

VOTE_POWER = 10
MAX_TURN = np.pi / 4
# Pose cells of the Hough vote: turn and shift. Chosen on FCJ (hit rate at 5% penetration
# 97.0% -> 98.2%, at 1% 94.9% -> 96.7%); 40-80 px and pi/8-pi/4 all gave 97.6-98.2%.
POSE_TURN = np.pi / 4
POSE_SHIFT = 60.0
_BITS = mcc.INDEX_BYTES * 8


class _Shelf:
    """One (partition, position): the codes of its fingers, row = code id."""

    def __init__(self) -> None:
        self.index: faiss.IndexBinary = faiss.IndexBinaryFlat(_BITS)
        self.trained_at = 0  # codes when the inverted file was trained; 0 for a flat index
        self.owner = np.zeros(0, np.int32)  # code row -> finger slot, -1 once removed
        self.angle = np.zeros(0, np.float32)
        self.xy = np.zeros((0, 2), np.float32)
        self.rows = 0
        self.dead = 0
        self.slot_of: dict[str, int] = {}  # subject id -> finger slot
        self.subject: list[str | None] = []  # finger slot -> subject id
        self.rows_of: dict[str, np.ndarray] = {}

    def append(self, subject_id: str, codes: np.ndarray, theta: np.ndarray, xy: np.ndarray) -> None:
        slot = len(self.subject)
        self.subject.append(subject_id)
        self.slot_of[subject_id] = slot
        n = len(codes)
        if self.rows + n > len(self.owner):
            grow = max(self.rows + n, 2 * len(self.owner), 1024)
            self.owner = np.resize(self.owner, grow)
            self.angle = np.resize(self.angle, grow)
            self.xy = np.resize(self.xy, (grow, 2))
        self.owner[self.rows:self.rows + n] = slot
        self.angle[self.rows:self.rows + n] = theta
        self.xy[self.rows:self.rows + n] = xy
        self.rows_of[subject_id] = np.arange(self.rows, self.rows + n)
        self.rows += n
        if n:
            self.index.add(np.ascontiguousarray(codes, np.uint8))

    def drop(self, subject_id: str) -> None:
        slot = self.slot_of.pop(subject_id)
        self.subject[slot] = None
        rows = self.rows_of.pop(subject_id)
        self.owner[rows] = -1
        self.dead += len(rows)

    def codes(self) -> np.ndarray:
        """Every stored code, dead ones included: (rows, 64) uint8."""
        if isinstance(self.index, faiss.IndexBinaryFlat):
            return faiss.vector_to_array(self.index.xb).reshape(-1, mcc.INDEX_BYTES)
        self.index.make_direct_map()
        return self.index.reconstruct_n(0, self.rows)


class FingerIndex:
    """Shortlists enrolled fingers for a probe finger. Thread-safe.

    Args:
        neighbours: nearest codes fetched per probe minutia.
        ivf_min_codes: a shelf with more codes than this becomes an inverted file. 1M
            codes is about 30,000 fingers, where a flat scan takes ~130 ms a probe
            finger and the inverted file ~15 ms for 1 point less recall (measured at
            10k and 100k fingers, see models/cards/finger.md).
        nprobe: inverted lists visited per probe code.
        share: the part of each partition this index holds (a cluster shard's; 1 on one
            server). The parameters above are for a whole partition; a shard scales them so
            that the shards together do one index's work: a share of the codes before it
            turns inverted and of the neighbours fetched (a code's rank among a share of
            the codes is about that share of its rank among all), and ``nprobe`` by the
            square root of the share (lists number the square root of the codes, so a shard
            then visits the same fraction of its lists as one index of all the codes would).
    """

    def __init__(self, neighbours: int = 256, ivf_min_codes: int = 1_000_000, nprobe: int = 16,
                 share: float = 1.0) -> None:
        self.neighbours, self.ivf_min_codes = math.ceil(neighbours * share), round(ivf_min_codes * share)
        self.nprobe = max(1, round(nprobe * math.sqrt(share)))
        self._shelves: dict[tuple[str, int], _Shelf] = {}
        self._lock = threading.Lock()

    def add(self, partition: str, subject_id: str, position: int, template: MinutiaeTemplate) -> None:
        codes, theta, xy = template.index_codes
        with self._lock:
            shelf = self._shelves.setdefault((partition, position), _Shelf())
            if subject_id in shelf.slot_of:
                shelf.drop(subject_id)
            shelf.append(subject_id, codes, theta, xy)
            self._maintain(shelf)

    def add_many(self, partition: str, position: int, subject_ids: list[str], codes: np.ndarray,
                 theta: np.ndarray, xy: np.ndarray, counts: np.ndarray) -> None:
        """Bulk load (start-up, benchmarks): ``counts[i]`` consecutive rows of ``codes``,
        ``theta`` and ``xy`` belong to ``subject_ids[i]``."""
        ends = np.cumsum(counts)
        with self._lock:
            shelf = self._shelves.setdefault((partition, position), _Shelf())
            for sid, start, end in zip(subject_ids, ends - counts, ends):
                if sid in shelf.slot_of:
                    shelf.drop(sid)
                shelf.append(sid, codes[start:end], theta[start:end], xy[start:end])
            self._maintain(shelf)

    def remove(self, partition: str, subject_id: str) -> None:
        with self._lock:
            for (part, _pos), shelf in self._shelves.items():
                if part == partition and subject_id in shelf.slot_of:
                    shelf.drop(subject_id)
                    self._maintain(shelf)

    def fingers(self, partition: str, position: int) -> int:
        shelf = self._shelves.get((partition, position))
        return len(shelf.slot_of) if shelf else 0

    def kind(self, partition: str, position: int) -> str:
        shelf = self._shelves.get((partition, position))
        return "ivf" if shelf is not None and shelf.trained_at else "flat"

    def _maintain(self, shelf: _Shelf) -> None:
        """Compact a third-dead shelf; switch to (or retrain) an inverted file by size."""
        alive = shelf.rows - shelf.dead
        want_ivf = alive > self.ivf_min_codes
        stale_ivf = shelf.trained_at and alive > 2 * shelf.trained_at
        if shelf.dead * 3 > shelf.rows or want_ivf != bool(shelf.trained_at) or stale_ivf:
            self._rebuild(shelf, want_ivf)

    def _rebuild(self, shelf: _Shelf, ivf: bool) -> None:
        keep = np.flatnonzero(shelf.owner[:shelf.rows] >= 0)
        codes = np.ascontiguousarray(shelf.codes()[keep])
        owners, angles, places = shelf.owner[keep], shelf.angle[keep], shelf.xy[keep]
        faiss.omp_set_num_threads(os.cpu_count() or 1)  # maintenance: every core
        if ivf:
            # sqrt(n) lists trained on 32 codes a list for 10 rounds: binary k-means runs
            # in 512-D floats, and 35M codes (1M fingers) must train in minutes.
            nlist = max(1, int(np.sqrt(len(codes))))
            index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(_BITS), _BITS, nlist)
            index.cp.niter = 10
            rng = np.random.default_rng(0)
            index.train(codes[rng.choice(len(codes), min(len(codes), 32 * nlist), replace=False)])
            index.nprobe = self.nprobe
            shelf.trained_at = len(codes)
        else:
            index = faiss.IndexBinaryFlat(_BITS)
            shelf.trained_at = 0
        if len(codes):
            index.add(codes)
        # Renumber the living fingers 0..k-1; rows stay in order, so each finger's rows
        # stay consecutive.
        names = [sid for sid in shelf.subject if sid is not None]
        renumber = np.full(len(shelf.subject), -1, np.int32)
        renumber[[shelf.slot_of[sid] for sid in names]] = np.arange(len(names), dtype=np.int32)
        owners = renumber[owners]
        bounds = np.searchsorted(owners, np.arange(len(names) + 1))
        shelf.index, shelf.owner, shelf.angle, shelf.xy = index, owners, angles.copy(), places.copy()
        shelf.rows, shelf.dead = len(codes), 0
        shelf.subject = list(names)
        shelf.slot_of = {sid: i for i, sid in enumerate(names)}
        shelf.rows_of = {sid: np.arange(bounds[i], bounds[i + 1]) for i, sid in enumerate(names)}

    def shortlist(self, partition: str, position: int, template: MinutiaeTemplate, n: int,
                  within: frozenset[str] | None = None) -> list[str]:
        """The ``n`` subjects whose finger at ``position`` collects the most votes."""
        codes, theta, xy = template.index_codes
        with self._lock:
            shelf = self._shelves.get((partition, position))
            if shelf is None or len(codes) == 0 or shelf.rows == 0:
                return []
            faiss.omp_set_num_threads(1)  # one probe: threads cost more than they give
            dist, ids = shelf.index.search(np.ascontiguousarray(codes), min(self.neighbours, shelf.rows))
            ok = ids >= 0
            safe = np.where(ok, ids, 0)
            owner = np.where(ok, shelf.owner[safe], -1)
            angle, place = shelf.angle[safe], shelf.xy[safe]
            slots = len(shelf.subject)
            allowed = None
            if within is not None:
                allowed = np.zeros(slots, bool)
                allowed[[shelf.slot_of[s] for s in within if s in shelf.slot_of]] = True
            subject = shelf.subject
        votes = (1.0 - dist / mcc.INDEX_BITS).clip(0.0) ** VOTE_POWER
        turn = (angle - theta[:, None] + np.pi) % (2 * np.pi) - np.pi
        live = (owner >= 0) & (np.abs(turn) <= MAX_TURN)
        if allowed is not None:
            live &= allowed[np.maximum(owner, 0)]
        q = np.broadcast_to(np.arange(len(codes))[:, None], owner.shape)[live]
        totals = pose_votes(q, owner[live], votes[live], turn[live], xy[q], place[live], slots)
        top = np.argsort(-totals, kind="stable")[:n]
        return [subject[s] for s in top if totals[s] > 0]


_SHIFT_CELLS = 1024  # shift cells per axis in a pose key (+-30,000 px at 60 px a cell)


def pose_votes(q: np.ndarray, owner: np.ndarray, votes: np.ndarray, turn: np.ndarray, probe_xy: np.ndarray,
               enrolled_xy: np.ndarray, fingers: int) -> np.ndarray:
    """Each finger's score: its best pose cell's sum of votes, one (the best) per probe minutia.

    Args:
        q: (V,) probe minutia of each vote; owner: (V,) finger voted for; votes: (V,) weights.
        turn: (V,) enrolled direction minus probe direction (radians, wrapped).
        probe_xy / enrolled_xy: (V, 2) the two minutiae's positions (y up).
        fingers: number of finger slots.

    Returns:
        (fingers,) float64 scores.
    """
    c, s = np.cos(turn), np.sin(turn)
    shift_x = enrolled_xy[:, 0] - (c * probe_xy[:, 0] - s * probe_xy[:, 1])
    shift_y = enrolled_xy[:, 1] - (s * probe_xy[:, 0] + c * probe_xy[:, 1])
    best = np.zeros(fingers)
    half = _SHIFT_CELLS // 2
    owner = owner.astype(np.int64)
    probes = int(q.max()) + 1 if len(q) else 1
    # A pose near a cell edge splits its votes: the grids offset by half a cell on each
    # axis (8 of them) give every pose one cell it sits well inside.
    for da in (0.0, 0.5):
        ka = np.floor(turn / POSE_TURN + da).astype(np.int64) + 4  # |turn| <= pi/4: 3..5
        for dx in (0.0, 0.5):
            kx = np.clip(np.floor(shift_x / POSE_SHIFT + dx).astype(np.int64) + half, 0, _SHIFT_CELLS - 1)
            for dy in (0.0, 0.5):
                ky = np.clip(np.floor(shift_y / POSE_SHIFT + dy).astype(np.int64) + half, 0, _SHIFT_CELLS - 1)
                cell = ((owner * 8 + ka) * _SHIFT_CELLS + kx) * _SHIFT_CELLS + ky
                # Best vote per (cell, probe minutia), then summed per cell.
                order = np.lexsort((-votes, cell * probes + q))
                keyed = (cell * probes + q)[order]
                first = np.ones(len(keyed), bool)
                first[1:] = keyed[1:] != keyed[:-1]
                cells, at = np.unique(cell[order][first], return_inverse=True)
                sums = np.bincount(at, weights=votes[order][first])
                np.maximum.at(best, cells // (8 * _SHIFT_CELLS * _SHIFT_CELLS), sums)
    return best
