import math

import numpy as np
import pytest

from matcher.calibration import Calibration, distance_of_score, score_of_distance
from matcher.errors import InvalidInput

MODEL = "face/dlib-resnet-v1"


@pytest.fixture(scope="module")
def cal():
    return Calibration.load(MODEL)


def test_committed_table_is_sane(cal):
    assert cal.model_id == MODEL
    assert cal.fmr[0] == pytest.approx(0.1) and cal.min_fmr <= 1e-5
    # dlib's customary 0.6 sits between FMR 1e-2 and 3e-2 on LFW
    assert 0.01 < cal.fmr_at_distance(0.6) < 0.032


@pytest.mark.parametrize("fmr", [0.05, 1e-2, 3e-3, 1e-3, 2e-5])
def test_round_trip(cal, fmr):
    assert cal.fmr_at_distance(cal.distance_at_fmr(fmr)) == pytest.approx(fmr, rel=1e-6)


def test_lower_rate_needs_smaller_distance(cal):
    assert cal.distance_at_fmr(1e-4) < cal.distance_at_fmr(1e-3) < cal.distance_at_fmr(1e-2)


def test_fpir_grows_with_gallery(cal):
    d = cal.distance_at_fmr(1e-4)
    assert cal.fpir_at_distance(d, 1) == pytest.approx(1e-4, rel=1e-6)
    assert cal.fpir_at_distance(d, 1000) == pytest.approx(1 - (1 - 1e-4) ** 1000, rel=1e-6)
    assert cal.distance_at_fpir(0.01, 100) == pytest.approx(cal.distance_at_fmr(-math.expm1(math.log1p(-0.01) / 100)))


def test_out_of_range_targets_are_refused(cal):
    with pytest.raises(InvalidInput):
        cal.distance_at_fmr(0.5)
    with pytest.raises(InvalidInput):
        cal.distance_at_fmr(0.0)


def test_gaussian_tail_predicts_the_measured_tail(cal):
    # fit without the last two rows, predict them
    short = Calibration(cal.model_id, cal.fmr[:-2], cal.distance[:-2], "")
    for f, d in zip(cal.fmr[-2:], cal.distance[-2:]):
        assert short.distance_at_fmr(f) == pytest.approx(d, abs=0.01)


def test_extrapolation_lets_large_galleries_deduplicate(cal):
    assert cal.fmr_at_distance(0.2) < 1e-10
    assert cal.fpir_at_distance(0.2, 1_000_000) < 1e-3
    assert cal.distance_at_fpir(0.01, 1_000_000) < cal.distance[-1]
    # monotone across the table edge
    edge = cal.distance[-1]
    assert cal.fmr_at_distance(edge - 0.01) <= cal.fmr_at_distance(edge) <= cal.fmr_at_distance(edge + 0.01)


def test_scores(cal):
    assert score_of_distance(0) == 1.0
    assert score_of_distance(0.3) > score_of_distance(0.6)
    assert distance_of_score(score_of_distance(0.42)) == pytest.approx(0.42)


def test_rows_must_be_monotone():
    with pytest.raises(ValueError):
        Calibration("m/x", np.array([0.1, 0.2]), np.array([0.5, 0.4]), "")


def test_tail_floor_bounds_the_claimed_rate():
    import numpy as np

    from matcher.calibration import Calibration

    cal = Calibration("iris/x", np.array([1e-2, 1e-3, 1e-4]), np.array([0.41, 0.40, 0.38]), "t", "gaussian", 1e-12)
    assert cal.fmr_at_distance(0.0) == 1e-12
    assert cal.fmr_at_distance(0.37) > 1e-12  # just past the table the fitted tail still speaks
    assert cal.distance_at_fmr(1e-20) == cal.distance_at_fmr(1e-12) < 0.38
