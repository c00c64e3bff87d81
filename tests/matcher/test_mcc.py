"""MCC on synthetic minutiae (invariances) and the minutiae template format."""

from __future__ import annotations

import numpy as np
import pytest

from matcher.finger import mcc
from matcher.errors import TemplateFormatError
from matcher.finger.template import MinutiaeTemplate


def _finger(seed: int, n: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(60, 300, (n, 2))
    return np.column_stack([xy, rng.uniform(-np.pi, np.pi, n)])


def _move(m: np.ndarray, angle: float, shift: tuple[float, float], jitter: float, seed: int) -> np.ndarray:
    """Rotate about (180, 180) as seen on the image (y down), shift, and jitter."""
    rng = np.random.default_rng(seed)
    c, s = np.cos(angle), np.sin(angle)
    x, y = m[:, 0] - 180, -(m[:, 1] - 180)  # to y-up
    xr, yr = c * x - s * y, s * x + c * y
    out = np.column_stack([xr + 180 + shift[0], -yr + 180 + shift[1], (m[:, 2] + angle + np.pi) % (2 * np.pi) - np.pi])
    out[:, :2] += rng.normal(0, jitter, (len(m), 2))
    out[:, 2] += rng.normal(0, jitter / 30, len(m))
    return out


def test_identical_templates_score_one_and_strangers_low():
    a = mcc.encode(_finger(1))
    assert mcc.similarity(a, a) > 0.99  # relaxation weights stay just below 1 for perfect geometry
    assert mcc.similarity(a, mcc.encode(_finger(2))) < 0.05


def test_rotation_and_translation_invariance():
    m = _finger(3)
    a = mcc.encode(m)
    exact = mcc.encode(_move(m, np.pi / 5, (25, -15), jitter=0.0, seed=4))
    moved = mcc.encode(_move(m, np.pi / 5, (25, -15), jitter=1.0, seed=4))
    other = mcc.encode(_finger(5))
    assert mcc.similarity(a, exact) > 0.99
    assert mcc.similarity(a, moved) > 0.6 > 0.05 > mcc.similarity(a, other)


def test_partial_overlap_still_matches():
    m = _finger(6, 60)
    part = m[m[:, 0] < 220]  # half of the finger missing
    assert mcc.similarity(mcc.encode(m), mcc.encode(part)) > 0.5


def test_empty_and_tiny_templates_score_zero():
    empty = mcc.encode(np.zeros((0, 3)))
    two = mcc.encode(_finger(7, 2))
    assert len(empty) == 0 and len(two) == 0  # two minutiae cannot make a valid cylinder
    assert mcc.similarity(empty, mcc.encode(_finger(8))) == 0.0


def test_template_round_trip_and_validation():
    rows = np.column_stack([_finger(9, 30), np.ones(30), np.full(30, 0.8)]).astype(np.float32)
    rows[:, 2] = (rows[:, 2] + np.pi) % (2 * np.pi) - np.pi
    t = MinutiaeTemplate("finger/leader-mcc-v1", rows, 400, 400, 77)
    back = MinutiaeTemplate.from_bytes(t.to_bytes())
    assert np.array_equal(back.minutiae, rows) and (back.width, back.height, back.quality) == (400, 400, 77)
    data = t.to_bytes()
    for bad in (data[:-3], b"TMBT" + data[4:], data[:4] + b"\x09\x00" + data[6:]):
        with pytest.raises(TemplateFormatError):
            MinutiaeTemplate.from_bytes(bad)
    with pytest.raises(TemplateFormatError):
        MinutiaeTemplate("finger/leader-mcc-v1", rows, 100, 100)  # minutiae outside the image


def test_index_votes_with_sure_minutiae_unless_too_few():
    rng = np.random.default_rng(5)
    rows = np.column_stack([rng.uniform(50, 250, (30, 2)), rng.uniform(-3, 3, 30), np.ones(30),
                            np.r_[np.full(12, 0.9), np.full(18, 0.4)]]).astype(np.float32)
    assert len(mcc.index_subset(rows)) == 12 and (mcc.index_subset(rows)[:, 4] >= mcc.INDEX_MIN_QUALITY).all()
    few_sure = rows[6:]  # 6 sure, 18 weak: every minutia votes
    assert len(mcc.index_subset(few_sure)) == 24
    assert np.array_equal(mcc.index_codes(mcc.index_subset(rows))[0], mcc.index_codes(rows[:12])[0])


def test_matched_pairs_are_the_ones_the_score_is_made_of():
    """A moved copy: each drawn pair joins a minutia to its own moved self, and the mean of
    the pairs' relaxed similarities is the score; strangers give weak pairs."""
    m = _finger(5)
    moved = _move(m, np.pi / 7, (20, 10), jitter=1.0, seed=6)
    pairs = mcc.matched_pairs(m, moved)
    assert len(pairs) == mcc.n_pairs(len(mcc.encode(m)), len(mcc.encode(moved)))
    assert sum(i == j for i, j, _ in pairs) >= 0.9 * len(pairs)
    assert np.mean([w for _, _, w in pairs]) == pytest.approx(
        mcc.similarity_reference(mcc.encode(m), mcc.encode(moved)), abs=1e-12)
    assert [w for _, _, w in pairs] == sorted((w for _, _, w in pairs), reverse=True)
    stranger = mcc.matched_pairs(m, _finger(7))
    assert np.mean([w for _, _, w in stranger]) < 0.2 < np.mean([w for _, _, w in pairs])
    assert mcc.matched_pairs(m, np.zeros((0, 3))) == []
