"""Measure a model's score-to-error-rate table on a real labelled set.

Usage::

    python -m bench.calibrate --modality {face,fingerprint} --root DIR [DIR ...] \\
        --layout {folders,lfw-pairs} --out FILE.json

Every image of the set is extracted; every cross-identity pair of enrolled images is
an impostor comparison and every same-identity pair a genuine one (far more pairs
than a verification protocol uses, so the table reaches lower false-match rates).
Several roots pool their images (identities are per root, so every pair across two
sets is an impostor pair). The output holds the impostor distance distribution's lower tail (distance at each
FMR from 1e-1 down to what the pair count supports) and the FNMR there; the
service turns configured FMR/FPIR targets into thresholds with it
(:mod:`matcher.calibration`).
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import numpy as np

from bench.accuracy import (MODALITIES, Modality, extract_all, load_exclusions, load_folders, load_lfw_pairs,
                            pair_scores)


def distance_tables(modality: Modality, features, ids: list[str], ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Calibration distances of every pair of enrolled images, split into (genuine, impostor), sorted."""
    labels = np.array(ids)
    good = np.nonzero(ok)[0]
    gen, imp = [], []
    for start in range(0, len(good), 256):
        rows = good[start : start + 256]
        a, b = np.meshgrid(rows, good, indexing="ij")
        upper = b > a
        pairs = np.stack([a[upper], b[upper]], 1)
        d = modality.to_distance(pair_scores(modality, features, ok, pairs))
        same = labels[pairs[:, 0]] == labels[pairs[:, 1]]
        gen.append(d[same])
        imp.append(d[~same])
    return np.sort(np.concatenate(gen)), np.sort(np.concatenate(imp))


# A rate estimated from fewer false matches than this is too uncertain to configure by
# (10 events: the 95% interval spans about 0.5x to 1.8x the estimate).
MIN_IMPOSTORS_BELOW = 10


def table(genuine: np.ndarray, impostor: np.ndarray) -> list[dict]:
    """Distance thresholds at decade and half-decade FMRs the impostor count supports."""
    rows = []
    for exp10 in np.arange(-1.0, -12.0, -0.5):
        fmr = float(10**exp10)
        k = int(np.floor(fmr * len(impostor)))  # impostors allowed strictly below the threshold
        if k < MIN_IMPOSTORS_BELOW:
            break
        threshold = float(impostor[k - 1] + impostor[k]) / 2 if k < len(impostor) else float(impostor[-1])
        rows.append({
            "fmr": fmr,
            "distance": threshold,
            # a comparison matches when its distance is below the threshold
            "fnmr": float(1 - np.searchsorted(genuine, threshold, side="left") / len(genuine)),
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Measure a score-to-FMR table on a labelled image set.")
    p.add_argument("--modality", required=True, choices=sorted(MODALITIES))
    p.add_argument("--root", required=True, type=Path, nargs="+")
    p.add_argument("--layout", required=True, choices=["folders", "lfw-pairs"])
    p.add_argument("--exclude", type=Path, help="file of known mislabelled images to leave out")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    images, ids = [], []
    exclude = load_exclusions(args.exclude)
    for root in args.root:
        pairs = load_lfw_pairs(root) if args.layout == "lfw-pairs" else load_folders(root, exclude=exclude)
        images += pairs.images
        ids += [f"{root.name}/{i}" for i in pairs.identity]
    modality = MODALITIES[args.modality]
    templates, ok, _, reasons = extract_all(modality, images, not args.no_progress)
    genuine, impostor = distance_tables(modality, modality.prepare(templates), ids, ok)
    extractor_model = next(t.model_id for t in templates if t is not None)
    roots = " ".join(str(r) for r in args.root)
    result = {
        "model_id": extractor_model,
        "measured_on": f"{', '.join(r.name for r in args.root)} ({args.layout}), "
                       f"{int(ok.sum())} images enrolled of {len(ok)}",
        "measured_at": datetime.date.today().isoformat(),
        "command": f"python -m bench.calibrate --modality {args.modality} --root {roots} --layout {args.layout}"
                   + (f" --exclude {args.exclude}" if args.exclude else ""),
        "excluded": sorted(exclude),
        "genuine_pairs": int(len(genuine)),
        "impostor_pairs": int(len(impostor)),
        "failure_reasons": reasons,
        "table": table(genuine, impostor),
        "tail_model": modality.tail_model,
        **({"tail_floor": modality.tail_floor} if modality.tail_floor else {}),
        # the impostor distribution's lower tail, for interpolating FMR at any distance
        "impostor_quantiles": {
            f"{q:g}": float(np.quantile(impostor, q)) for q in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.5)
            if q * len(impostor) >= 1
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({r["fmr"]: round(r["distance"], 4) for r in result["table"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
