import numpy as np
import pytest

from bench import metrics


def test_separable_scores_have_zero_error():
    g, i = np.array([5.0, 6, 7]), np.array([1.0, 2, 3])
    assert metrics.eer(g, i) == 0
    assert metrics.fnmr_at_fmr(g, i, 0.0)[0] == 0
    acc, _ = metrics.kfold_accuracy(np.concatenate([g, i]), np.array([1, 1, 1, 0, 0, 0], bool), np.array([0, 1, 2] * 2))
    assert acc == 1.0


def test_gaussian_eer_matches_theory():
    # two unit Gaussians 2 sigma apart: EER = Phi(-1) = 0.1587
    rng = np.random.default_rng(0)
    g, i = rng.normal(2, 1, 200_000), rng.normal(0, 1, 200_000)
    assert metrics.eer(g, i) == pytest.approx(0.1587, abs=0.003)
    fnmr, thr = metrics.fnmr_at_fmr(g, i, 0.01)
    assert thr == pytest.approx(2.326, abs=0.02)  # impostor 99th percentile
    assert fnmr == pytest.approx(0.6293, abs=0.01)  # Phi(0.326)


def test_failure_to_enrol_counts_as_non_match():
    g = np.array([5.0, -np.inf])
    i = np.array([1.0, 2.0])
    assert metrics.fnmr_at_fmr(g, i, 0.0)[0] == 0.5
