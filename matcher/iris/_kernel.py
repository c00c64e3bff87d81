"""The compiled iris comparison kernel (numba), kept apart so that importing templates
does not import numba, and at module level so that numba's on-disk cache works."""

from __future__ import annotations

import numba
import numpy as np

from matcher._popcount import popcount as _popcount


@numba.njit(cache=True, nogil=True, inline="always")
def _normalised_hd(pc, pm, s, gc, gm, i, n0, min_bits):
    """Daugman's normalised HD of probe rotation ``s`` and gallery row ``i`` (0.5 where
    fewer than ``min_bits`` bits are valid in both)."""
    n = 0
    x = 0
    for w in range(pc.shape[1]):
        m = pm[s, w] & gm[i, w]
        n += _popcount(m)
        x += _popcount((pc[s, w] ^ gc[i, w]) & m)
    if n < min_bits:
        return 0.5
    return 0.5 - (0.5 - x / n) * np.sqrt(n / n0)


@numba.njit(cache=True, nogil=True)
def best_distances(pc, pm, gc, gm, n0, min_bits, out):
    """For each gallery row i: min over probe rotations s of Daugman's normalised HD.

    Args:
        pc, pm: (rotations, words) uint64 probe code and mask at each rotation.
        gc, gm: (N, words) uint64 gallery codes and masks.
        n0: the normalisation's typical bit count; min_bits: fewer common bits -> 0.5.
        out: (N,) float64 written in place.
    """
    for i in range(gc.shape[0]):
        best = 0.5
        for s in range(pc.shape[0]):
            best = min(best, _normalised_hd(pc, pm, s, gc, gm, i, n0, min_bits))
        out[i] = best


@numba.njit(cache=True, nogil=True)
def window_distances(pc, pm, gc, gm, index, centre, reach, n0, min_bits, out):
    """:func:`best_distances` over chosen rows and, for each, the probe rotations within
    ``reach`` of its own centre: out[j] = min over |s - centre[j]| <= reach of the HD
    of rotation s and row index[j] (the gallery is read in place, not gathered).

    Args:
        index: (M,) int64 gallery rows; centre: (M,) integer rotation per row.
        reach: rotations each way (at least the rotation count: every rotation).
    """
    last = pc.shape[0] - 1
    for j in range(index.shape[0]):
        i = index[j]
        best = 0.5
        for s in range(max(0, centre[j] - reach), min(last, centre[j] + reach) + 1):
            best = min(best, _normalised_hd(pc, pm, s, gc, gm, i, n0, min_bits))
        out[j] = best


@numba.njit(cache=True, nogil=True)
def sketch_distances(probe, gallery, rows, out, turn):
    """For each of the first ``rows`` gallery sketches: the fewest differing bits to the
    probe's sketch at any rotation (unmasked Hamming, the first pass of 1:N), and which
    rotation that was.

    Args:
        probe: (rotations, 8) uint64 probe sketches (512 bits).
        gallery: (N, 8) uint64 enrolled sketches.
        out: (N,) int32 written in place for the first ``rows``.
        turn: (N,) int8, the rotation index of each ``out``, written likewise.
    """
    for i in range(rows):
        # The row's eight words held in locals across the rotations: 25-40% faster here
        # than a loop over words, which reloads them for every rotation.
        g0, g1, g2, g3 = gallery[i, 0], gallery[i, 1], gallery[i, 2], gallery[i, 3]
        g4, g5, g6, g7 = gallery[i, 4], gallery[i, 5], gallery[i, 6], gallery[i, 7]
        best = 1 << 30
        at = 0
        for s in range(probe.shape[0]):
            d = (_popcount(probe[s, 0] ^ g0) + _popcount(probe[s, 1] ^ g1)
                 + _popcount(probe[s, 2] ^ g2) + _popcount(probe[s, 3] ^ g3)
                 + _popcount(probe[s, 4] ^ g4) + _popcount(probe[s, 5] ^ g5)
                 + _popcount(probe[s, 6] ^ g6) + _popcount(probe[s, 7] ^ g7))
            if d < best:
                best = d
                at = s
        out[i] = best
        turn[i] = at
