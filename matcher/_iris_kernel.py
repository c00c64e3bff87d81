"""The compiled iris comparison kernel (numba), kept apart so that importing templates
does not import numba, and at module level so that numba's on-disk cache works."""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic


@intrinsic
def _popcount(typingctx, x):
    """LLVM ``ctpop``: one instruction where the CPU has one, a bit-twiddling sequence where not."""
    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])
    return types.uint64(types.uint64), codegen


@numba.njit(cache=True, nogil=True)
def best_distances(pc, pm, gc, gm, n0, min_bits, out):
    """For each gallery row i: min over probe rotations s of Daugman's normalised HD.

    Args:
        pc, pm: (rotations, words) uint64 probe code and mask at each rotation.
        gc, gm: (N, words) uint64 gallery codes and masks.
        n0: the normalisation's typical bit count; min_bits: fewer common bits -> 0.5.
        out: (N,) float64 written in place.
    """
    shifts, words = pc.shape
    for i in range(gc.shape[0]):
        best = 0.5
        for s in range(shifts):
            n = 0
            x = 0
            for w in range(words):
                m = pm[s, w] & gm[i, w]
                n += _popcount(m)
                x += _popcount((pc[s, w] ^ gc[i, w]) & m)
            if n >= min_bits:
                d = 0.5 - (0.5 - x / n) * np.sqrt(n / n0)
                if d < best:
                    best = d
        out[i] = best


@numba.njit(cache=True, nogil=True)
def sketch_distances(probe, gallery, rows, out):
    """For each of the first ``rows`` gallery sketches: the fewest differing bits to the
    probe's sketch at any rotation (unmasked Hamming, the first pass of 1:N).

    Args:
        probe: (rotations, words) uint64 probe sketches.
        gallery: (N, words) uint64 enrolled sketches.
        out: (N,) int32 written in place for the first ``rows``.
    """
    shifts, words = probe.shape
    for i in range(rows):
        best = 1 << 30
        for s in range(shifts):
            d = 0
            for w in range(words):
                d += _popcount(probe[s, w] ^ gallery[i, w])
            if d < best:
                best = d
        out[i] = best
