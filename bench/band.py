"""The doubtful band of deduplication, measured on every development set of each modality.

Usage::

    python -m bench.band --face DIR [DIR ...] --iris DIR [DIR ...] --finger DIR [DIR ...] \\
        [--iris-exclude FILE] [--finger-exclude FILE] --json OUT [--plot PNG] [--draws N]

A duplicate is decided by the thresholds at both ends and by a person in between
(:class:`matcher.engine.Thresholds`): above ``dedup_fpir`` the enrolment goes ahead (a
clear non-match); at or below ``clear_match_fpir``, counting every sample's false-match
rate no lower than the smallest rate its model's calibration measured ("vouched"), it is
a duplicate without a case (a clear match); between them it goes to a person. This tool
measures what that band does, with the service's own calibrations and fusion:

1. per modality, on every development set pooled (pairs stay within a set): every mated
   and non-mated comparison's claimed rate; ``honesty``: at claimed rates of 1e-2 down to
   the calibration's floor, the share of non-mated comparisons at or below the claim (it
   should not exceed it; ``upper95`` is the binomial 95% bound, 3/n with none seen);
2. chimeric people (each sample an independent draw, as in multimodal evaluations built
   from unimodal sets): ``draws`` mated and non-mated comparisons per combination of
   samples (a face; a face and two irises; two fingers; ten fingers; all of them), fused
   with the service's truncated product, at gallery sizes 10^3..10^6: the share of mated
   comparisons decided as clear matches, sent to a person, or missed (above
   ``dedup_fpir``), and how many non-mated ones reached the clear-match edge (none may).

Output keys (stable): ``policy`` (the two edges), ``modalities`` (per modality: ``sets``,
``genuine_pairs``, ``impostor_pairs``, ``floor_fmr``, ``honesty``), ``combinations`` (per
combination and gallery size: ``mated`` {``clear``, ``band``, ``missed``} shares and
``nonmated`` {``clear``, ``band``} counts of ``draws``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from bench.accuracy import MODALITIES, evaluate, load_exclusions, load_folders, load_lfw_pairs
from matcher.calibration import Calibration, at_least_one
from matcher.engine import Thresholds
from matcher.fusion import fuse

MODEL = {"face": "face/dlib-resnet-v1", "iris": "iris/gabor-v2", "fingerprint": "finger/leader-mcc-v1"}
COMBINATIONS = {
    "face": ["face"],
    "face + 2 irises": ["face", "iris", "iris"],
    "2 fingers": ["fingerprint"] * 2,
    "10 fingers": ["fingerprint"] * 10,
    "face + 2 irises + 10 fingers": ["face", "iris", "iris"] + ["fingerprint"] * 10,
}
GALLERIES = (1_000, 10_000, 100_000, 1_000_000)


def claimed_rates(modality: str, scores: np.ndarray) -> np.ndarray:
    """Each comparison's false-match rate as the service states it (its model's calibration)."""
    cal = Calibration.load(MODEL[modality])
    distances = MODALITIES[modality].to_distance(scores)
    return np.array([1.0 if not np.isfinite(d) else cal.fmr_at_distance(float(d)) for d in distances])


def honesty(imp_rates: np.ndarray, floor: float) -> list[dict]:
    """Claimed against observed: the share of non-mated comparisons claimed at or below x."""
    out, n = [], len(imp_rates)
    x = 1e-2
    while x >= floor * 0.999:
        k = int(np.count_nonzero(imp_rates <= x))
        out.append({"claimed_fmr": x, "observed_fmr": k / n if n else None, "impostors_at_or_below": k,
                    "upper95": _upper95(k, n)})
        x /= 10
    return out


def _upper95(k: int, n: int) -> float | None:
    """One-sided 95% upper bound of a small rate seen k times in n (Poisson: 3/n when never
    seen), found by bisection: the rate at which seeing k or fewer has a 5% chance."""
    if n == 0:
        return None

    def at_most_k(lam: float) -> float:
        term = total = math.exp(-lam)
        for i in range(1, k + 1):
            term *= lam / i
            total += term
        return total

    lo, hi = float(k), float(k) + 10.0 * math.sqrt(k + 1) + 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if at_most_k(mid) > 0.05 else (lo, mid)
    return hi / n


def chimeric(pools: dict[str, tuple[np.ndarray, np.ndarray]], floors: dict[str, float], samples: list[str],
             draws: int, policy: Thresholds, rng: np.random.Generator) -> dict:
    """Mated and non-mated chimeric comparisons of one combination of samples."""
    out: dict = {}
    fused = {}
    for side, idx in (("mated", 0), ("nonmated", 1)):
        picks = [rng.choice(pools[m][idx], draws) for m in samples]
        claimed = np.array([fuse(list(r)) for r in zip(*picks)])
        vouched = np.array([fuse([max(f, floors[m]) for m, f in zip(samples, r)]) for r in zip(*picks)])
        fused[side] = claimed, vouched
    for n in GALLERIES:
        row = {}
        for side, (claimed, vouched) in fused.items():
            fpir = np.array([at_least_one(f, n) for f in claimed])
            sure = np.array([at_least_one(f, n) for f in vouched])
            clear = (fpir <= policy.clear_match_fpir) & (sure <= policy.clear_match_fpir)
            band = (fpir <= policy.dedup_fpir) & ~clear
            if side == "mated":
                row[side] = {"clear": float(clear.mean()), "band": float(band.mean()),
                             "missed": float((fpir > policy.dedup_fpir).mean())}
            else:
                row[side] = {"clear": int(clear.sum()), "band": int(band.sum())}
        out[str(n)] = row
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    combos = list(result["combinations"])
    fig, axes = plt.subplots(1, len(GALLERIES), figsize=(4 * len(GALLERIES), 4), sharey=True)
    for ax, n in zip(axes, GALLERIES):
        shares = [result["combinations"][c][str(n)]["mated"] for c in combos]
        bottom = np.zeros(len(combos))
        for key, colour in (("clear", "#2a7"), ("band", "#eb3"), ("missed", "#c33")):
            values = np.array([s[key] for s in shares])
            ax.barh(combos, values, left=bottom, color=colour, label=key)
            bottom += values
        ax.set_title(f"gallery {n:,}")
        ax.set_xlim(0, 1)
    axes[0].legend(loc="lower left")
    fig.suptitle("mated duplicates: decided clear / sent to a person / missed")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The doubtful band of deduplication, on the development sets.")
    parser.add_argument("--face", type=Path, nargs="+", required=True,
                        help="face sets (folders layout, or LFW's pairs.txt layout)")
    parser.add_argument("--iris", type=Path, nargs="+", required=True)
    parser.add_argument("--finger", type=Path, nargs="+", required=True)
    parser.add_argument("--iris-exclude", type=Path)
    parser.add_argument("--finger-exclude", type=Path)
    parser.add_argument("--draws", type=int, default=20_000, help="chimeric comparisons per side and combination")
    parser.add_argument("--json", required=True, type=Path)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    policy = Thresholds()
    roots = {"face": (args.face, None), "iris": (args.iris, args.iris_exclude),
             "fingerprint": (args.finger, args.finger_exclude)}
    result: dict = {"policy": {"clear_match_fpir": policy.clear_match_fpir, "dedup_fpir": policy.dedup_fpir},
                    "command": "python -m bench.band " + " ".join(sys.argv[1:] if argv is None else argv),
                    "modalities": {}, "combinations": {}}
    pools, floors = {}, {}
    for modality, (dirs, exclude_file) in roots.items():
        exclude = load_exclusions(exclude_file)
        gens, imps, sets = [], [], []
        for root in dirs:
            # Every pair of every set (the impostor tail is what is under test); LFW by its pairs.
            pairs = load_lfw_pairs(root) if (root / "pairs.txt").exists() else load_folders(root, "all", exclude)
            _, gen, imp = evaluate(MODALITIES[modality], pairs, progress=not args.no_progress)
            gens.append(claimed_rates(modality, gen))
            imps.append(claimed_rates(modality, imp))
            sets.append(root.name)
        gen, imp = np.concatenate(gens), np.concatenate(imps)
        floors[modality] = Calibration.load(MODEL[modality]).min_fmr
        pools[modality] = gen, imp
        result["modalities"][modality] = {"sets": sets, "genuine_pairs": int(len(gen)),
                                          "impostor_pairs": int(len(imp)), "floor_fmr": floors[modality],
                                          "honesty": honesty(imp, floors[modality])}
    rng = np.random.default_rng(20261206)
    for name, samples in COMBINATIONS.items():
        result["combinations"][name] = chimeric(pools, floors, samples, args.draws, policy, rng)
    result["draws"] = args.draws
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        plot(result, args.plot)
    print(json.dumps({c: v["10000"]["mated"] for c, v in result["combinations"].items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
