"""Fusing evidence: several per-sample false-match rates of one subject into one (the
truncated product method, Zaykin et al., 2002), and the API score of a rate.

Only rates at or below ``FUSION_TAU`` count, so the bulk of impostor comparisons, where a
calibrated rate is least reliable, adds no evidence, while two or three fingers that each
match moderately add up.
"""

from __future__ import annotations

import math

from matcher.calibration import at_least_one

_MIN_FMR = 1e-300
FUSION_TAU = 1e-3


def fuse(fmrs: list[float], tau: float = FUSION_TAU) -> float:
    """Truncated product method: P(product of the rates <= tau is this small | impostor).

    One rate at or below ``tau`` is returned unchanged; rates above it add nothing. When
    none is at or below ``tau`` the product method has no evidence to weigh, and the best
    rate is taken, corrected for having looked at ``L`` of them (Sidak: ``1 - (1 - min)^L``):
    still a valid rate, equal to the one rate of a single comparison (so Verify and
    Identify of one sample say what Compare says), and about ``L * tau`` on both sides of
    ``tau``.

    >>> round(fuse([1e-4]), 12)  # one rate is that rate
    0.0001
    >>> fuse([1e-4, 1e-4]) < 1e-4  # two fingers that match moderately add up
    True
    >>> round(fuse([0.02, 0.5]), 4)  # nothing below tau: the best, for two looks
    0.0396
    """
    if not fmrs:
        return 1.0
    kept = [max(f, _MIN_FMR) for f in fmrs if f <= tau]
    if not kept:
        return at_least_one(min(min(fmrs), 1.0), len(fmrs))
    big_l = len(fmrs)
    log_w, log_tau = sum(math.log(f) for f in kept), math.log(tau)
    total = 0.0
    for k in range(1, big_l + 1):
        weight = math.comb(big_l, k) * (1.0 - tau) ** (big_l - k)
        if log_w <= k * log_tau:
            x = k * log_tau - log_w  # >= 0
            term, series = 1.0, 1.0
            for s in range(1, k):
                term *= x / s
                series += term
            total += weight * math.exp(log_w) * series
        else:
            total += weight * tau**k
    return min(1.0, total)


def evidence(fmr: float) -> float:
    """The API score of a false-match rate: -log10(FMR), higher = more alike.

    >>> evidence(1e-3), evidence(1.0)
    (3.0, 0.0)
    """
    return max(0.0, -math.log10(max(fmr, _MIN_FMR)))
