"""The compiled MCC comparison (numba): local similarities, one-to-one pair selection and
LSS-R consolidation in one pass, the same arithmetic as the numpy reference in
:mod:`matcher.finger.mcc` (a test holds them equal on real templates).

Kept apart from :mod:`matcher.finger.mcc` so that numba's on-disk cache works (module-level
functions) and so that the reference stays readable beside it.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from matcher._popcount import popcount as _popcount


@numba.njit(cache=True, nogil=True, inline="always")
def _wrap(a):
    # Into [-pi, pi) like the reference's float modulo, by branches: every argument here
    # is a sum of a few angles, within a couple of turns, and a modulo costs more.
    two_pi = 2.0 * math.pi
    while a >= math.pi:
        a -= two_pi
    while a < -math.pi:
        a += two_pi
    return a


@numba.njit(cache=True, nogil=True, inline="always")
def _z(v, mu, tau):
    e = -tau * (v - mu)
    e = min(60.0, max(-60.0, e))
    return 1.0 / (1.0 + math.exp(e))


@numba.njit(cache=True, nogil=True)
def local_similarities(axy, ath, abits, avalid, bxy, bth, bbits, bvalid, min_cells, delta_theta, out):
    """Cylinder similarities (len(a), len(b)) into ``out``; see ``mcc.local_similarities``."""
    na_, nb_ = ath.shape[0], bth.shape[0]
    words = abits.shape[1]
    for i in range(na_):
        for j in range(nb_):
            if abs(_wrap(ath[i] - bth[j])) > delta_theta:
                out[i, j] = 0.0
                continue
            n_both = 0
            ca = 0
            cb = 0
            d = 0
            for w in range(words):
                both = avalid[i, w] & bvalid[j, w]
                x = abits[i, w] & both
                y = bbits[j, w] & both
                n_both += _popcount(both)
                ca += _popcount(x)
                cb += _popcount(y)
                d += _popcount(x ^ y)
            if n_both < min_cells:
                out[i, j] = 0.0
                continue
            denom = math.sqrt(ca) + math.sqrt(cb)
            out[i, j] = 1.0 - math.sqrt(d) / denom if denom > 0.0 else 0.0


@numba.njit(cache=True, nogil=True)
def similarity(axy, ath, abits, avalid, bxy, bth, bbits, bvalid, min_cells, delta_theta,
               n_p, n_rel, w_r, mu_rho, tau_rho):
    """LSS-R global similarity of two templates; see ``mcc.similarity``."""
    na_, nb_ = ath.shape[0], bth.shape[0]
    if na_ == 0 or nb_ == 0:
        return 0.0
    gamma = np.empty((na_, nb_))
    local_similarities(axy, ath, abits, avalid, bxy, bth, bbits, bvalid, min_cells, delta_theta, gamma)
    # One-to-one greedy selection, best local similarity first (stable: ties by flat
    # index). Only positive entries are sorted (angle-gated pairs are zero, about half);
    # the zeros, if ever reached, follow in flat order as a stable sort would give them.
    n = min(na_, nb_)
    flat = gamma.ravel()
    positive = np.flatnonzero(flat > 0.0)
    order = np.concatenate((positive[np.argsort(-flat[positive], kind="mergesort")],
                            np.flatnonzero(flat <= 0.0)))
    used_a = np.zeros(na_, np.bool_)
    used_b = np.zeros(nb_, np.bool_)
    ra = np.empty(n, np.int64)
    rb = np.empty(n, np.int64)
    n_r = 0
    for f in order:
        i, j = f // nb_, f % nb_
        if used_a[i] or used_b[j]:
            continue
        used_a[i] = True
        used_b[j] = True
        ra[n_r], rb[n_r] = i, j
        n_r += 1
        if n_r == n:
            break
    n_p = min(n_p, na_ * nb_)
    lam0 = np.empty(n_r)
    for k in range(n_r):
        lam0[k] = gamma[ra[k], rb[k]]
    if n_r < 2:
        return lam0[0] if n_r == 1 else 0.0
    # Relaxation: pairs are re-weighted by how well their geometry agrees with the others.
    # d1 and d2 are symmetric in the two pairs and the direction from one minutia to the
    # other turns by pi the other way round, so each unordered couple is measured once.
    rho = np.zeros((n_r, n_r))
    for k in range(n_r):
        pax, pay, ta = axy[ra[k], 0], axy[ra[k], 1], ath[ra[k]]
        pbx, pby, tb = bxy[rb[k], 0], bxy[rb[k], 1], bth[rb[k]]
        for m in range(k + 1, n_r):
            qax, qay, ua = axy[ra[m], 0], axy[ra[m], 1], ath[ra[m]]
            qbx, qby, ub = bxy[rb[m], 0], bxy[rb[m], 1], bth[rb[m]]
            d1 = abs(math.hypot(pax - qax, pay - qay) - math.hypot(pbx - qbx, pby - qby))
            z12 = _z(d1, mu_rho[0], tau_rho[0])
            if z12 < 1e-300:  # geometry far off: both directions are zero
                continue
            z12 *= _z(abs(_wrap(_wrap(ta - ua) - _wrap(tb - ub))), mu_rho[1], tau_rho[1])
            phi_a = math.atan2(qay - pay, qax - pax)
            phi_b = math.atan2(qby - pby, qbx - pbx)
            d3_km = abs(_wrap(_wrap(ta - phi_a) - _wrap(tb - phi_b)))
            d3_mk = abs(_wrap(_wrap(ua - phi_a - math.pi) - _wrap(ub - phi_b - math.pi)))
            rho[k, m] = z12 * _z(d3_km, mu_rho[2], tau_rho[2])
            rho[m, k] = z12 * _z(d3_mk, mu_rho[2], tau_rho[2])
    lam = lam0.copy()
    nxt = np.empty(n_r)
    for _ in range(n_rel):
        for k in range(n_r):
            s = 0.0
            for m in range(n_r):
                s += rho[k, m] * lam[m]
            nxt[k] = w_r * lam[k] + (1.0 - w_r) * s / (n_r - 1)
        lam, nxt = nxt, lam
    efficiency = np.zeros(n_r)
    for k in range(n_r):
        if lam0[k] > 0.0:
            efficiency[k] = lam[k] / lam0[k]
    best = np.argsort(-efficiency, kind="mergesort")[:n_p]
    total = 0.0
    for k in best:
        total += lam[k]
    return total / len(best)
