"""Per-subject fusion of false-match rates (truncated product method) and the calibration floor."""

from __future__ import annotations

import numpy as np
import pytest

from matcher.calibration import Calibration
from matcher.fusion import evidence, fuse


def test_one_rate_is_unchanged_and_bulk_rates_add_nothing():
    assert fuse([3e-6]) == pytest.approx(3e-6)
    # Nothing below the 1e-3 truncation: the best rate, corrected for three looks (Sidak).
    assert fuse([0.02, 0.5, 0.9]) == pytest.approx(1 - 0.98**3)
    assert fuse([]) == 1.0
    assert evidence(1.0) == 0.0 and evidence(1e-3) == pytest.approx(3.0)


def test_impostor_rates_stay_calibrated_after_fusion():
    rng = np.random.default_rng(0)
    fused = np.array([fuse(list(rng.uniform(size=10))) for _ in range(40_000)])
    for level in (1e-3, 3e-3):
        assert (fused <= level).mean() == pytest.approx(level, rel=0.35)


def test_several_moderate_matches_beat_one_and_nulls_dilute_mildly():
    assert fuse([1e-4, 1e-4]) < 1e-4
    one_strong = fuse([1e-6] + [0.5] * 9)
    assert 1e-6 < one_strong < 1e-4  # ten fingers tried: about a tenfold correction


def test_floor_tail_claims_no_rate_below_the_measured_one():
    cal = Calibration("finger/x", np.array([1e-2, 1e-3, 1e-4]), np.array([0.98, 0.9, 0.66]), "t", "floor")
    assert cal.fmr_at_distance(0.1) == pytest.approx(1e-4)
    assert cal.distance_at_fmr(1e-6) == pytest.approx(0.66)
    gaussian = Calibration("finger/x", cal.fmr, cal.distance, "t", "gaussian")
    assert gaussian.fmr_at_distance(0.1) < 1e-8  # what a normal fit to the bulk would promise
