"""The iris matcher: masked fractional Hamming distance over rotations, exact, over a
partition's packed codes (a sketch shortlist first past a size, then the exact pass)."""

from __future__ import annotations

import threading

import numpy as np

from matcher.base import Held, Ranked, parse_own, scaled
from matcher.calibration import Calibration, at_least_one
from matcher.iris import template as iris
from matcher.iris.template import IrisTemplate


class _Codes:
    """One partition's enrolled iris codes as packed rows, read in one pass by the kernel.

    Removed rows are tombstoned (mask zeroed: they compare as "no bits", distance 0.5)
    and the arrays are compacted when a third of them are dead.
    """

    def __init__(self, words: int) -> None:
        self.sketches = np.zeros((0, iris.SKETCH_BITS // 64), np.uint64)
        self.codes = np.zeros((0, words), np.uint64)
        self.masks = np.zeros((0, words), np.uint64)
        self.owner: list[str | None] = []
        self.rows_of: dict[str, list[int]] = {}
        self.position = np.zeros(0, np.int8)
        self.rows = 0
        self.dead = 0

    def append(self, subject_id: str, position: int, template: IrisTemplate) -> None:
        code, mask = template.packed
        self.extend([subject_id], np.array([position]), code[None], mask[None], template.sketch[None])

    def extend(self, owners: list[str], positions: np.ndarray, codes: np.ndarray, masks: np.ndarray,
               sketches: np.ndarray) -> None:
        need = self.rows + len(codes)
        if need > len(self.codes):
            grow = max(1024, 2 * len(self.codes), need)
            self.codes = np.resize(self.codes, (grow, self.codes.shape[1]))
            self.masks = np.resize(self.masks, (grow, self.masks.shape[1]))
            self.sketches = np.resize(self.sketches, (grow, self.sketches.shape[1]))
            self.position = np.resize(self.position, grow)
        self.codes[self.rows:need], self.masks[self.rows:need] = codes, masks
        self.sketches[self.rows:need] = np.ascontiguousarray(sketches, np.uint8).view(np.uint64)
        self.position[self.rows:need] = positions
        for row, owner in enumerate(owners, start=self.rows):
            self.rows_of.setdefault(owner, []).append(row)
        self.owner += list(owners)
        self.rows = need

    def drop(self, subject_id: str) -> None:
        for i in self.rows_of.pop(subject_id, []):
            self.owner[i] = None
            self.masks[i] = 0
            self.dead += 1
        if self.dead * 3 > self.rows:
            keep = [i for i, o in enumerate(self.owner) if o is not None]
            self.codes, self.masks, self.sketches = self.codes[keep], self.masks[keep], self.sketches[keep]
            self.position = self.position[keep]
            self.owner = [self.owner[i] for i in keep]
            self.rows_of = {}
            for row, owner in enumerate(self.owner):
                self.rows_of.setdefault(owner, []).append(row)
            self.rows, self.dead = len(keep), 0


TIE_ROOM = 1.0  # the sketch shortlist may grow by this share to keep rows tied at its edge
# Code columns each way around a row's best sketch rotation that the exact pass tries:
# at 1M, +-1 and +-2 kept every exhaustive first candidate; +-2 for margin.
WINDOW = 2


def _nearest_with_ties(dist: np.ndarray, keep: int, room: float) -> np.ndarray | None:
    """Sorted indices of the ``keep`` smallest integer distances, and of every row tied
    with the last of them while that adds at most ``room * keep`` rows (a cut through a
    run of equal sketch distances picks arbitrarily; past the room, by storage order);
    None to keep them all."""
    if keep >= len(dist):
        return None
    edge = np.partition(dist, keep - 1)[keep - 1]
    within = np.flatnonzero(dist <= edge)
    if len(within) <= keep * (1 + room):
        return within
    below = np.flatnonzero(dist < edge)
    return np.sort(np.concatenate([below, np.flatnonzero(dist == edge)[:max(0, int(keep * (1 + room)) - len(below))]]))


class IrisMatcher(Ranked):
    """Irises: masked fractional Hamming distance over rotations, exact.

    Search compares the probe with every enrolled iris of the partition at the same eye
    (both eyes for position 0, unknown) in one pass of the compiled kernel
    (:func:`matcher.iris.template.distances`: about 1.3 million irises a second on one core for
    a probe with one code, 0.45 million for a probe from an image, which brings two
    radial alternates) up to ``exhaustive_limit`` irises. Above, a first pass over
    512-bit sketches (:func:`matcher.iris.template.sketch_of`, best of 17 rotations, unmasked,
    another compiled kernel) keeps the ``shortlist`` nearest rows; those get the exact
    distance of the probe's own code near the rotation their sketch chose, and the
    ``refine`` nearest of them the exact distance at every rotation of the code and of
    its alternates (``python -m bench.search --modality iris`` measures how often that
    keeps the exhaustive answer). A subject's distance is its best eye's, and its rate is
    corrected for the number of eyes tried. Calibration: distance = Daugman's normalised HD.

    ``share``: the part of each partition this matcher holds (a cluster shard's, 1 on one
    server); it takes that share of the limit and budgets, which are the whole partition's
    (see :class:`matcher.finger.matcher.MinutiaeMatcher`).
    """

    def __init__(self, model_id: str, calibration: Calibration, exhaustive_limit: int = 20_000,
                 shortlist: int = 50_000, refine: int = 1_000, share: float = 1.0) -> None:
        # A probe from an image brings two radial alternates: 3x the exact work per row
        # (exhaustive: ~45 ms at 20,000 rows, 206 ms at 100k). Above ``exhaustive_limit``
        # the sketch pass picks each row's rotation and the shortlist; the rows get the
        # probe's own code in a window around that rotation, the nearest ``refine`` of them
        # every rotation of all three codes. At 1M a 20,000-row shortlist lost a mate the
        # alternates found (sketch rank 47,097), hence 50,000.
        self.modality, self.model_id, self.calibration = "iris", model_id, calibration
        self.exhaustive_limit = scaled(exhaustive_limit, share)
        self.shortlist, self.refine = scaled(shortlist, share), scaled(refine, share)
        self._held = Held()
        self._codes: dict[str, _Codes] = {}
        self._lock = threading.Lock()

    def parse(self, data: bytes) -> IrisTemplate:
        return parse_own(data, IrisTemplate, self.modality, self.model_id)

    def add(self, partition: str, subject_id: str, position: int, template: IrisTemplate) -> None:
        with self._lock:
            shelf = self._codes.setdefault(partition, _Codes(len(template.packed[0])))
            enrolled = self._held.of(partition, subject_id)
            if position in enrolled:  # the same eye again replaces it
                shelf.drop(subject_id)
                for p, t in enrolled.items():
                    if p != position:
                        shelf.append(subject_id, p, t)
            shelf.append(subject_id, position, template)
        self._held.put(partition, subject_id, position, template)

    def add_many(self, partition: str, subject_ids: list[str], positions: np.ndarray, codes: np.ndarray,
                 masks: np.ndarray, sketches: np.ndarray) -> None:
        """Bulk load of packed codes, masks and sketches (benchmarks). Such subjects can be
        searched but not verified: no per-subject copy is kept."""
        with self._lock:
            shelf = self._codes.setdefault(partition, _Codes(codes.shape[1]))
            shelf.extend(subject_ids, positions, codes, masks, sketches)

    def remove(self, partition: str, subject_id: str) -> None:
        with self._lock:
            if partition in self._codes:
                self._codes[partition].drop(subject_id)
        self._held.drop(partition, subject_id)

    def size(self, partition: str | None = None) -> int:
        return self._held.count(partition)

    def ranked(self, partition: str, position: int, template: IrisTemplate, k: int,
               within: frozenset[str] | None = None) -> list[tuple[str, float, float]]:
        """The ``k`` best subjects by (FMR, id): (id, FMR, FMR)."""
        with self._lock:
            shelf = self._codes.get(partition)
            if shelf is None or shelf.rows == 0:
                return []
            # No copies (a copy of a 1M-row owner list costs milliseconds): appends only
            # write rows past this snapshot and compaction builds new arrays and lists, so
            # these stay valid after the lock; a concurrent removal shows as owner None.
            n = shelf.rows
            codes, masks, sketches = shelf.codes[:n], shelf.masks[:n], shelf.sketches
            owner, positions = shelf.owner, shelf.position[:n]
        rows = turn = None
        if n > self.exhaustive_limit:
            # First pass (outside the lock, so that searches run at once on every core):
            # unmasked Hamming of 512-bit sketches, best of 17 rotations (compiled kernel);
            # the ``shortlist`` nearest rows go on to the exact pass.
            from matcher.iris._kernel import sketch_distances

            near = np.empty(n, np.int32)
            turn = np.empty(n, np.int8)
            sketch_distances(template.sketch_rotations.view(np.uint64), sketches, n, near, turn)
            rows = _nearest_with_ties(near, self.shortlist, TIE_ROOM)
            if rows is None:  # the shortlist holds them all: each still gets its window
                rows = np.arange(n)
        if rows is None:
            rows, d = np.arange(len(codes)), iris.distances(template, codes, masks)
        else:
            d = self._shortlist_distances(template, codes, masks, rows, turn[rows])
        if position:
            keep = positions[rows] == position
            rows, d = rows[keep], d[keep]
        # A subject's best eye comes first in distance order; the 4k+8 nearest rows hold
        # the k best subjects even after the correction for two eyes tried.
        m = min(len(d), 4 * k + 8)
        near = np.argpartition(d, m - 1)[:m] if m < len(d) else np.arange(len(d))
        best: dict[str, float] = {}
        for j in near[np.argsort(d[near], kind="stable")]:
            s = owner[rows[j]]
            if s is not None and (within is None or s in within) and s not in best:
                best[s] = float(d[j])
        scored = []
        for s, dist in best.items():
            tried = 1 if position else len(self._held.of(partition, s))
            scored.append((at_least_one(self.calibration.fmr_at_distance(dist), tried), s))
        scored.sort()
        return [(s, f, f) for f, s in scored[:k]]

    def _shortlist_distances(self, template: IrisTemplate, codes: np.ndarray, masks: np.ndarray,
                             rows: np.ndarray, turn: np.ndarray) -> np.ndarray:
        """Exact distances over the sketch pass's ``rows``: the probe's own code at the
        rotations within ``WINDOW`` columns of each row's best sketch rotation ``turn``,
        then every rotation of the code and of its radial alternates over the ``refine``
        nearest (the gallery is read in place: gathering 50,000 rows cost 20 ms at 1M)."""
        from matcher.iris._kernel import window_distances

        pc, pm = template.rotations
        own = len(iris.SKETCH_SHIFTS)  # the code's own rotations come first, then each alternate's
        d = np.empty(len(rows))
        window_distances(pc[:own], pm[:own], codes, masks, rows, turn, WINDOW, float(iris.N0),
                         int(iris.MIN_BITS), d)
        top = np.argpartition(d, self.refine - 1)[:self.refine] if len(d) > self.refine else np.arange(len(d))
        exact = np.empty(len(top))
        window_distances(pc, pm, codes, masks, rows[top], np.zeros(len(top), np.int8), len(pc),
                         float(iris.N0), int(iris.MIN_BITS), exact)
        d[top] = exact
        return d

    def fmr_against(self, partition: str, subject_id: str, position: int,
                    template: IrisTemplate) -> float | None:
        eyes = [t for p, t in self._held.of(partition, subject_id).items() if position in (0, p)]
        if not eyes:
            return None
        d = min(iris.distance(template, t) for t in eyes)
        return at_least_one(self.calibration.fmr_at_distance(d), len(eyes))

    def fmr(self, a: IrisTemplate, b: IrisTemplate) -> float:
        return self.calibration.fmr_at_distance(iris.distance(a, b))


def warm_up() -> None:
    """Compile (or load from numba's cache) the iris kernels now, so that the first request
    does not wait seconds for them."""
    from matcher.iris._kernel import best_distances, sketch_distances, window_distances

    code = np.zeros((2 * iris.MAX_SHIFT + 1, iris.SKETCH_BITS // 64), np.uint64)  # numba types by dtype and rank only
    best_distances(code, code, code[:1], code[:1], float(iris.N0), int(iris.MIN_BITS), np.empty(1))
    window_distances(code, code, code, code, np.zeros(1, np.int64), np.zeros(1, np.int8), 2, float(iris.N0),
                     int(iris.MIN_BITS), np.empty(1))
    sketch_distances(code, code, 1, np.empty(len(code), np.int32), np.empty(len(code), np.int8))
