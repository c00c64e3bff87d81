"""Legacy portraits: failure to enrol and accuracy on tightly cropped faces, with and
without the face pipeline's padded retry (``FaceConfig.pad_retry``).

Usage::

    python -m bench.face_crops --root ../shared/data/face/att_orl --fractions 0.8 0.7 0.6 \\
        --json bench/results/face_tight_crops.json

Old records hold portraits cropped so that the face fills the frame. Each image of the
set (folders layout) is cropped to the central ``fraction`` of its width and height
(a little below the centre, where a portrait's face sits), written to a temporary folder
(never kept) and measured by :func:`bench.accuracy.evaluate`, once as the service extracts
(margin added when no face is found) and once without the retry. Output, per fraction
and per setting: ``failure_to_enrol``, ``failure_reasons``, ``eer``, ``rank1``,
``fnmr_at_fmr`` (a failure to enrol counts as a non-match). ``degraded``: the set halved in
size (``small``) and darkened (``dark``), with the quality gates as set now and as they
were (faces under 40 px and face centres darker than grey 35 refused); and (``scan``)
each portrait small on a large plain scan::

    python -m bench.face_crops --root ../shared/data/face/att_orl --fractions --degraded scan \
        --json bench/results/face_scans.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from PIL import Image

from bench.accuracy import IMAGE_EXTS, MODALITIES, evaluate, load_folders


def crop_set(root: Path, out: Path, fraction: float) -> None:
    """Every image of ``root`` cropped to its central ``fraction``, as PNG under ``out``."""
    for f in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS):
        img = Image.open(f)
        w, h = img.size
        cw, ch = int(w * fraction), int(h * fraction)
        x0, y0 = (w - cw) // 2, int((h - ch) * 0.55)
        dst = out / f.parent.name / f"{f.stem}.png"
        dst.parent.mkdir(parents=True, exist_ok=True)
        img.crop((x0, y0, x0 + cw, y0 + ch)).save(dst)


def degrade_set(root: Path, out: Path, kind: str) -> None:
    """Every image of ``root`` as an old record might hold it: ``small`` (half the width and
    height), ``dark`` (gamma 2.2, then 60% of the light) or ``scan`` (the portrait as it is
    on a plain 2400x1800 scan, as a photo on a form or ID card: the face about 4% of the
    scan's shorter side, somewhere on its right half)."""
    import numpy as np

    rng = np.random.default_rng(19)
    for f in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS):
        img = Image.open(f)
        if kind == "small":
            img = img.resize((img.width // 2, img.height // 2), Image.LANCZOS)
        elif kind == "scan":
            photo = img.convert("RGB")
            img = Image.new("RGB", (2400, 1800), (214, 208, 196))
            img.paste(photo, (int(rng.integers(1200, 2400 - photo.width)), int(rng.integers(0, 1800 - photo.height))))
        else:
            a = np.asarray(img.convert("L"), np.float32) / 255
            img = Image.fromarray((255 * a**2.2 * 0.6).astype(np.uint8))
        dst = out / f.parent.name / f"{f.stem}.png"
        dst.parent.mkdir(parents=True, exist_ok=True)
        img.save(dst)


# The capture-time gates before legacy photos were measured (faces under 40 px, a face
# centre darker than grey 35 refused): what the small and dark sets are compared against.
OLD_GATES = {"min_face_px": 40, "dark_mean": 35.0}


def measure(root: Path, pad: float, progress: bool, gates: dict | None = None) -> dict:
    from dataclasses import replace

    from enroll.face.pipeline import FaceConfig, FaceExtractor
    from enroll.face.quality import FaceQualityConfig

    face = MODALITIES["face"]
    config = FaceConfig(pad_retry=pad, quality=FaceQualityConfig(**(gates or {})))
    modality = replace(face, make_extractor=lambda: FaceExtractor(config=config))
    result, _, _ = evaluate(modality, load_folders(root), progress=progress)
    return {k: result[k] for k in ("images", "failure_to_enrol", "failure_reasons", "eer", "rank1", "fnmr_at_fmr")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Tightly cropped portraits, with and without the padded retry.")
    parser.add_argument("--root", required=True, type=Path, help="a face set, folders layout")
    parser.add_argument("--fractions", type=float, nargs="*", default=[0.8, 0.7, 0.6])
    parser.add_argument("--degraded", nargs="*", choices=["small", "dark", "scan"], default=["small", "dark"],
                        help="also measure the set halved in size / darkened, with the gates as set and as before")
    parser.add_argument("--json", required=True, type=Path)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from enroll.face.pipeline import FaceConfig

    out: dict = {"set": args.root.name, "pad_retry": FaceConfig().pad_retry,
                 "command": "python -m bench.face_crops " + " ".join(sys.argv[1:] if argv is None else argv),
                 "full": {"with_retry": measure(args.root, FaceConfig().pad_retry, not args.no_progress)},
                 "crops": {}}
    for fraction in args.fractions:
        with tempfile.TemporaryDirectory() as tmp:
            crop_set(args.root, Path(tmp), fraction)
            out["crops"][f"{fraction:g}"] = {
                "with_retry": measure(Path(tmp), FaceConfig().pad_retry, not args.no_progress),
                "without_retry": measure(Path(tmp), 0.0, not args.no_progress)}
    out["degraded"] = {}
    for kind in args.degraded:
        with tempfile.TemporaryDirectory() as tmp:
            degrade_set(args.root, Path(tmp), kind)
            now = measure(Path(tmp), FaceConfig().pad_retry, not args.no_progress)
            # A scan's "before" is the code before the finer search (its gates are today's).
            out["degraded"][kind] = {"gates_now": now} if kind == "scan" else {
                "gates_now": now, "gates_before": measure(Path(tmp), FaceConfig().pad_retry, not args.no_progress,
                                                          OLD_GATES)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({f: {k: v["failure_to_enrol"] for k, v in r.items()} for f, r in out["crops"].items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
