"""Biometric accuracy metrics over genuine and impostor score sets (higher score = more alike).

Definitions follow ISO/IEC 19795-1 and the FVC reports: FMR(t) is the fraction of
impostor scores >= t, FNMR(t) the fraction of genuine scores < t. A failure to
enrol is scored as -inf (a non-match), so it counts against FNMR and never as a match.
"""

from __future__ import annotations

import numpy as np


def _sorted(a: np.ndarray) -> np.ndarray:
    return np.sort(np.asarray(a, np.float64))


def fmr_fnmr(genuine: np.ndarray, impostor: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FMR and FNMR at every distinct threshold (the scores themselves plus +inf)."""
    g, i = _sorted(genuine), _sorted(impostor)
    t = np.unique(np.concatenate([g, i, [np.inf]]))
    t = t[np.isfinite(t) | (t == np.inf)]
    fmr = 1.0 - np.searchsorted(i, t, side="left") / max(len(i), 1)
    fnmr = np.searchsorted(g, t, side="left") / max(len(g), 1)
    return t, fmr, fnmr


def eer(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """Equal error rate: where FMR and FNMR cross (mean of the two at the crossing)."""
    _, fmr, fnmr = fmr_fnmr(genuine, impostor)
    k = int(np.argmin(np.abs(fmr - fnmr)))
    return float((fmr[k] + fnmr[k]) / 2)


def fnmr_at_fmr(genuine: np.ndarray, impostor: np.ndarray, target: float) -> tuple[float, float]:
    """Lowest FNMR with FMR <= target; returns (fnmr, threshold)."""
    t, fmr, fnmr = fmr_fnmr(genuine, impostor)
    ok = fmr <= target
    k = int(np.argmax(ok))  # first (lowest) threshold meeting the target: lowest FNMR
    return float(fnmr[k]), float(t[k])


def zero_fmr(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """FNMR at the lowest threshold with no false match."""
    return fnmr_at_fmr(genuine, impostor, 0.0)[0]


def best_accuracy_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """Threshold maximising verification accuracy on (scores, same) (score >= t -> same)."""
    order = np.argsort(scores)
    s, y = scores[order], same[order].astype(np.int64)
    # predicting "same" for indices >= k: correct = (#diff below k) + (#same at or above k)
    diff_below = np.concatenate([[0], np.cumsum(1 - y)])
    same_above = np.concatenate([np.cumsum(y[::-1])[::-1], [0]])
    k = int(np.argmax(diff_below + same_above))
    if k == 0:
        return float(s[0]) - 1e-9 if np.isfinite(s[0]) else -1e300
    if k == len(s):
        return float(s[-1]) + 1e-9
    lo, hi = s[k - 1], s[k]
    return float((lo + hi) / 2) if np.isfinite(lo) else float(hi)


def kfold_accuracy(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> tuple[float, float]:
    """LFW protocol: per fold, the threshold chosen on the other folds; mean and std of accuracy."""
    accs = []
    for f in np.unique(folds):
        train, test = folds != f, folds == f
        t = best_accuracy_threshold(scores[train], same[train])
        accs.append(float(np.mean((scores[test] >= t) == same[test])))
    return float(np.mean(accs)), float(np.std(accs))
