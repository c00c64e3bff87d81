"""Score meaning and thresholds: distances <-> false-match rates measured on real data.

Each model has a calibration file (``matcher/calibration/<model id with / as ->.json``),
written by ``python -m bench.calibrate`` from every impostor pair of a labelled set.
Thresholds are configured as rates and turned into distances here, never hard-coded.

Scores: at the API a higher score means more alike; for embedding models the score is
``1 / (1 + distance)`` (1 for identical templates), a monotone map of the distance.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np

from matcher.errors import InvalidInput, ModelMissing

CALIBRATION_DIR = Path(__file__).resolve().parent / "calibration"


def score_of_distance(distance: float) -> float:
    """The API score of an embedding distance (higher = more alike, in (0, 1])."""
    return 1.0 / (1.0 + max(float(distance), 0.0))


def distance_of_score(score: float) -> float:
    return 1.0 / score - 1.0



def at_least_one(fmr: float, comparisons: int) -> float:
    """The rate at which at least one of ``comparisons`` independent impostor comparisons
    reaches a score of false-match rate ``fmr`` (Sidak): 1 - (1 - FMR)^N. The one formula
    behind FPIR (N = gallery size), several tries of one sample, and fusion's fallback.

    >>> round(at_least_one(1e-6, 100_000), 4)  # a 1e-6 score searched against 100,000 people
    0.0952
    """
    if comparisons <= 1:
        return fmr
    return float(-math.expm1(comparisons * math.log1p(-min(fmr, 1.0 - 1e-16))))

@dataclass(frozen=True)
class Calibration:
    """Measured FMR-versus-distance table of one model (FMR decreasing with distance).

    Attributes:
        model_id: the model measured.
        fmr: (n,) false-match rates, decreasing.
        distance: (n,) distance thresholds giving those rates, decreasing.
        source: where and how it was measured.
        tail_model: below the smallest measured rate, ``gaussian`` extrapolates with
            :attr:`tail` (embeddings, whose impostor distances are near-normal); ``floor``
            claims no rate below the smallest measured one (heavy-tailed scores such as
            MCC's, where a normal fit to the bulk would promise rates the data never showed).
        tail_floor: the smallest rate the gaussian tail claims (0: none). Iris codes are
            binomial-like, so their tail extrapolates far (Daugman checked his to ~1e-11
            over 200 billion comparisons), but not to 1e-300: a perfect iris match is
            stated as this rate, which keeps fused scores finite and comparable.
    """

    model_id: str
    fmr: np.ndarray
    distance: np.ndarray
    source: str
    tail_model: str = "gaussian"
    tail_floor: float = 0.0

    def __post_init__(self) -> None:
        if len(self.fmr) < 2 or len(self.fmr) != len(self.distance):
            raise ValueError("a calibration needs at least two rows")
        if self.tail_model not in ("gaussian", "floor"):
            raise ValueError(f"unknown tail model {self.tail_model!r}")
        if np.any(np.diff(self.fmr) >= 0) or np.any(np.diff(self.distance) > 0):
            raise ValueError("calibration rows must have decreasing FMR and distance")

    @property
    def tail(self) -> NormalDist:
        """Gaussian fitted to the measured impostor tail: z = (distance - mu) / sigma.

        Below the smallest measured rate (a few per million impostor pairs) rates are
        extrapolated with it. On the face model it predicts the 1e-6 quantile from the
        other rows within 0.002 of the measured distance.
        """
        z = np.array([NormalDist().inv_cdf(f) for f in self.fmr])
        slope, intercept = np.polyfit(z, self.distance, 1)  # distance = mu + sigma * z
        return NormalDist(float(intercept), float(slope))

    @classmethod
    def load(cls, model_id: str, folder: Path = CALIBRATION_DIR) -> "Calibration":
        path = folder / (model_id.replace("/", "-") + ".json")
        if not path.exists():
            raise ModelMissing(f"no calibration for {model_id}: run python -m bench.calibrate")
        data = json.loads(path.read_text())
        rows = data["table"]
        return cls(
            data["model_id"],
            np.array([r["fmr"] for r in rows]),
            np.array([r["distance"] for r in rows]),
            data.get("measured_on", ""),
            data.get("tail_model", "gaussian"),
            data.get("tail_floor", 0.0),
        )

    @property
    def min_fmr(self) -> float:
        return float(self.fmr[-1])

    def distance_at_fmr(self, fmr: float) -> float:
        """Distance threshold (match when below) for a target FMR.

        Log-linear between measured rows; below the smallest measured rate, from the
        fitted Gaussian tail (:attr:`tail`).

        Raises:
            InvalidInput: the target is not in (0, largest measured FMR].
        """
        if not 0 < fmr <= self.fmr[0]:
            raise InvalidInput(f"FMR {fmr:g} is outside (0, {self.fmr[0]:g}]")
        if fmr < self.min_fmr:
            if self.tail_model == "floor":
                return float(self.distance[-1])  # the strictest threshold the data supports
            return min(float(self.tail.inv_cdf(max(fmr, self.tail_floor))), float(self.distance[-1]))
        # np.interp needs increasing x: use -log10(fmr)
        return float(np.interp(-math.log10(fmr), -np.log10(self.fmr), self.distance))

    def fmr_at_distance(self, distance: float) -> float:
        """FMR of a comparison at this distance.

        Capped at the largest measured rate above the table; extrapolated with the fitted
        Gaussian tail below it (so near-identical templates get vanishing rates, which
        1:N deduplication over large galleries relies on).
        """
        if distance < self.distance[-1]:
            if self.tail_model == "floor":
                return self.min_fmr
            return min(max(float(self.tail.cdf(distance)), self.tail_floor), self.min_fmr)
        x = -np.log10(self.fmr)
        # distance decreases along the table: interpolate on reversed arrays
        lg = float(np.interp(distance, self.distance[::-1], x[::-1]))
        return float(10 ** (-lg))

    def fpir_at_distance(self, distance: float, gallery_size: int) -> float:
        """False-positive identification rate of a 1:N search against ``gallery_size`` non-mates.

        With independent comparisons, FPIR = 1 - (1 - FMR)^N.
        """
        return at_least_one(self.fmr_at_distance(distance), gallery_size)

    def distance_at_fpir(self, fpir: float, gallery_size: int) -> float:
        """Threshold keeping a 1:N search's FPIR at ``fpir`` for the given gallery size.

        Per-comparison rates below the measured range come from the fitted tail.
        """
        fmr = -math.expm1(math.log1p(-fpir) / max(gallery_size, 1))
        return self.distance_at_fmr(fmr)
