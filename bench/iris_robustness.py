"""How the iris extractor holds up when a camera differs from the development sets'.

Usage::

    python -m bench.iris_robustness --root ../shared/data/iris --json OUT [--every 40]

Each sampled eye image (every ``--every``-th image of each set under ``--root``; MMU1's
every ``--every``*5/8-th, it is smaller) is changed as another camera or capture would
change it (exposure, contrast, noise, compression, focus, head tilt, size), extracted again
and compared with the template of the unchanged image. Output per change: how many enrol,
the refusal reasons, the median and largest distance to the original and how many exceed
the calibrated threshold at FMR 1e-4 (a genuine non-match). The development sets are not
held out: this measures sensitivity to capture, not accuracy.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

CHANGES: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "gamma_0.6": lambda g, _: (255 * (g / 255.0) ** 0.6).astype(np.uint8),
    "gamma_1.6": lambda g, _: (255 * (g / 255.0) ** 1.6).astype(np.uint8),
    "brightness_x0.6": lambda g, _: (g * 0.6).astype(np.uint8),
    "contrast_x0.6": lambda g, _: (128 + 0.6 * (g.astype(np.float64) - 128)).astype(np.uint8),
    "noise_sd8": lambda g, rng: np.clip(g + rng.normal(0, 8, g.shape), 0, 255).astype(np.uint8),
    "jpeg_q40": lambda g, _: cv2.imdecode(cv2.imencode(".jpg", g, [cv2.IMWRITE_JPEG_QUALITY, 40])[1], 0),
    "blur_sigma1": lambda g, _: cv2.GaussianBlur(g, (0, 0), 1.0),
    "tilt_12deg": lambda g, _: cv2.warpAffine(
        g, cv2.getRotationMatrix2D((g.shape[1] / 2, g.shape[0] / 2), 12, 1.0), g.shape[::-1],
        borderMode=cv2.BORDER_REFLECT),
    "size_x0.7": lambda g, _: cv2.resize(g, None, fx=0.7, fy=0.7, interpolation=cv2.INTER_AREA),
    "size_x2": lambda g, _: cv2.resize(g, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_CUBIC),
}


def sample(root: Path, every: int) -> list[Path]:
    """Every ``every``-th image of each iris set under ``root`` (sorted, so runs agree)."""
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".bmp", ".tif"})
        step = max(1, every * 5 // 8) if len(images) < 600 else every
        out += images[::step]
    return out


def measure(images: list[Path]) -> dict:
    from enroll.iris.pipeline import IrisExtractor
    from matcher.calibration import Calibration
    from matcher.errors import QualityError
    from matcher.iris.template import distance

    extractor = IrisExtractor()
    threshold = Calibration.load(extractor.model_id).distance_at_fmr(1e-4)
    png = lambda g: cv2.imencode(".png", g)[1].tobytes()  # noqa: E731
    originals = {}
    for p in images:
        try:
            originals[p] = (cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), extractor.extract(p.read_bytes()))
        except QualityError:
            continue
    rng = np.random.default_rng(0)
    result: dict = {"images": len(images), "enrolled_originals": len(originals), "threshold_fmr_1e-4": threshold,
                    "changes": {}}
    for name, change in CHANGES.items():
        reasons: collections.Counter[str] = collections.Counter()
        dist, ms = [], []
        for grey, template in originals.values():
            data = png(change(grey, rng))
            t0 = time.perf_counter()
            try:
                changed = extractor.extract(data)
            except QualityError as e:
                reasons[e.reason] += 1
                continue
            ms.append((time.perf_counter() - t0) * 1000)
            dist.append(distance(changed, template))
        result["changes"][name] = {
            "enrolled": len(dist), "refused": dict(reasons),
            "distance_median": float(np.median(dist)) if dist else None,
            "distance_max": float(np.max(dist)) if dist else None,
            "non_matches": int(sum(d > threshold for d in dist)),
            "extract_ms_median": float(np.median(ms)) if ms else None,
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Iris extraction under changed capture conditions.")
    parser.add_argument("--root", type=Path, default=Path("../shared/data/iris"))
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--every", type=int, default=40, help="take every Nth image of each set")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        parser.error(f"--root {args.root} is not a folder")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result = measure(sample(args.root, args.every))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: (v["enrolled"], v["non_matches"]) for k, v in result["changes"].items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
