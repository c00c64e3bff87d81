"""Accuracy of a modality on a labelled image set, by the standard protocols.

Usage::

    python -m bench.accuracy --modality {face,fingerprint,fingerprint-lite,fingerprint-nbis,iris} --root DIR [DIR ...] \\
        --layout {folders,lfw-pairs} [--protocol {all,fvc}] --json OUT [--plot PNG]

Several roots: each set is measured alone (under ``sets`` in the JSON) and the top-level
keys are measured on all their pairs pooled (pairs stay within a set), with
``threshold_spread``: each set's threshold at each target FMR beside the pooled one.

Layouts:
    folders    every subfolder of DIR is one identity; genuine pairs are all pairs
               within an identity, impostor pairs all pairs across identities.
    lfw-pairs  DIR holds ``pairs.txt`` (first line ``FOLDS N``, then per fold N matched
               and N mismatched lines) and ``lfw/NAME/NAME_NNNN.jpg``; accuracy is the
               LFW protocol (threshold chosen on the other folds, mean over folds).

Protocols (folders layout):
    all        genuine = every pair within an identity, impostor = every pair across.
    fvc        the FVC 2000-2004 protocol (default for fingerprints): genuine = every
               pair of impressions of a finger, impostor = the first impression of each
               finger against the first of every other; the same measures over all
               cross-finger pairs go under ``all_impostors``.

Output keys (stable; every modality reports them): ``eer``, ``fnmr_at_fmr`` (map
over 1e-2/1e-3/1e-4 where the impostor count allows), ``accuracy`` (lfw-pairs),
``tar_at_far_1e-3``, ``failure_to_enrol``, ``genuine_pairs``, ``impostor_pairs``,
``rank1`` (gallery = first sorted sample of each identity, probes = the rest),
``extract_ms_median``, ``quality_components`` (p5/median/p95 of each measure the
extractor reports, e.g. the ISO/IEC 29794-6 iris components). A failure to enrol scores as a non-match.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from bench import metrics

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".pgm", ".ppm"}
FMR_TARGETS = (1e-2, 1e-3, 1e-4)


@dataclass(frozen=True)
class Modality:
    """How the tool extracts and compares one modality.

    Attributes:
        name: CLI name.
        make_extractor: () -> object with ``extract(bytes)`` returning a template.
        prepare: list of templates (None for a failure to enrol) -> comparable features.
        score: (features, pairs (n, 2) indices into them) -> (n,) similarity, higher =
            more alike; only called on pairs whose both sides enrolled.
        score_meaning: human description written into the JSON.
        to_distance: score -> the model's calibration distance (lower = more alike).
        default_protocol: ``all`` or ``fvc`` for the folders layout.
        shortlist_ranks: optional (templates, gallery indices, probe indices) -> rank of
            each probe's mate in the modality's 1:N shortlist (-1 when not shortlisted).
        tail_model: how the calibration extrapolates below its smallest measured rate
            (see :class:`matcher.calibration.Calibration`), and the smallest rate it claims.
    """

    name: str
    make_extractor: Callable[[], object]
    prepare: Callable[[list], object]
    score: Callable[[object, np.ndarray], np.ndarray]
    score_meaning: str
    to_distance: Callable[[np.ndarray], np.ndarray]
    default_protocol: str = "all"
    shortlist_ranks: Callable[[list, list[int], list[int], list[str]], np.ndarray] | None = None
    tail_model: str = "gaussian"
    tail_floor: float = 0.0


def _face_extractor():
    from enroll.face.pipeline import FaceExtractor

    return FaceExtractor()


def _stack_vectors(templates: list) -> np.ndarray:
    dim = next((t.vector.size for t in templates if t is not None), 1)
    out = np.full((len(templates), dim), np.nan, np.float32)
    for i, t in enumerate(templates):
        if t is not None:
            out[i] = t.vector
    return out


def _finger_extractor(network: str = "leader"):
    from enroll.finger.pipeline import FingerExtractor

    return FingerExtractor(network=network)


def _cylinders(templates: list) -> list:
    return [None if t is None else t.cylinders for t in templates]


def _finger_shortlist_ranks(templates: list, gallery: list[int], probes: list[int], ids: list[str]) -> np.ndarray:
    from matcher.finger.index import FingerIndex

    index = FingerIndex()
    for g in gallery:
        index.add("bench", str(g), 1, templates[g])
    owner = {ids[g]: str(g) for g in gallery}
    ranks = []
    for p in probes:
        found = index.shortlist("bench", 1, templates[p], len(gallery)) if templates[p] is not None else []
        mate = owner.get(ids[p])
        ranks.append(found.index(mate) if mate in found else -1)
    return np.array(ranks)


def _mcc_scores(cyl: list, pairs: np.ndarray) -> np.ndarray:
    from matcher.finger import mcc

    return np.array([mcc.similarity(cyl[a], cyl[b]) for a, b in pairs], np.float64)


def _finger_modality(name: str, network: str, minutiae: str) -> Modality:
    """A fingerprint modality: one minutiae network, MCC comparison, the FVC protocol."""
    return Modality(name, lambda: _finger_extractor(network), _cylinders, _mcc_scores,
                    f"MCC (bit-based, LSS-R) similarity of {minutiae}, 0..1", lambda s: 1.0 - s,
                    default_protocol="fvc", shortlist_ranks=_finger_shortlist_ranks, tail_model="floor")


def _nbis_extractor():
    from bench.nbis import NbisExtractor

    return NbisExtractor()


def _bozorth3(templates: list, pairs: np.ndarray) -> np.ndarray:
    from bench.nbis import bozorth3_scores

    return bozorth3_scores(templates, pairs)


def _iris_extractor():
    from enroll.iris.pipeline import IrisExtractor

    return IrisExtractor()


def _iris_scores(templates: list, pairs: np.ndarray) -> np.ndarray:
    """Negative normalised Hamming distance, one kernel call per left-hand template."""
    from matcher.iris.template import distances

    out = np.empty(len(pairs))
    for a in np.unique(pairs[:, 0]):
        sel = np.flatnonzero(pairs[:, 0] == a)
        right = [templates[b].packed for b in pairs[sel, 1]]
        out[sel] = -distances(templates[a], np.stack([c for c, _ in right]), np.stack([m for _, m in right]))
    return out


MODALITIES = {
    "face": Modality(
        "face",
        _face_extractor,
        _stack_vectors,
        lambda v, pairs: -np.linalg.norm(v[pairs[:, 0]] - v[pairs[:, 1]], axis=1),
        "negative Euclidean distance of dlib ResNet embeddings (dlib's same-person threshold: -0.6)",
        lambda s: -s,
    ),
    "fingerprint": _finger_modality("fingerprint", "leader", "LEADER minutiae"),
    # The student distilled from LEADER (models/finger_student.py): same matcher, faster network.
    "fingerprint-lite": _finger_modality("fingerprint-lite", "lite", "minutiae from the distilled lite network"),
    "iris": Modality(
        "iris",
        _iris_extractor,
        lambda templates: templates,
        _iris_scores,
        "negative normalised fractional Hamming distance of Gabor iris codes, best of 17 rotations "
        "(Daugman HDnorm; impostors near -0.5)",
        lambda s: -s,
        tail_floor=1e-12,
    ),
    # The NIST baseline, measured beside ours on the same pairs (bench/nbis.py; extra "nbis").
    "fingerprint-nbis": Modality(
        "fingerprint-nbis",
        _nbis_extractor,
        lambda templates: templates,
        _bozorth3,
        "NIST Bozorth3 score of NBIS mindtct minutiae (NIST's suggested match threshold: 40)",
        lambda s: -s,
        default_protocol="fvc",
    ),
}


@dataclass(frozen=True)
class PairSet:
    """Images, identities and the comparison pairs of one evaluation."""

    images: list[Path]
    identity: list[str]
    genuine: np.ndarray  # (G, 2) image indices
    impostor: np.ndarray  # (I, 2)
    folds: np.ndarray | None = None  # per pair in [genuine; impostor] order (lfw-pairs)
    all_impostors: np.ndarray | None = None  # fvc protocol: every cross-identity pair


def load_exclusions(path: Path | None) -> set[str]:
    """Image paths (``set/folder/file``, relative to the data root) to leave out: known label
    noise, one per line, ``#`` comments. Results name the file; both runs are reported."""
    if path is None:
        return set()
    return {line.split("#")[0].split()[0] for line in path.read_text().splitlines() if line.split("#")[0].strip()}


def load_folders(root: Path, protocol: str = "all", exclude: set[str] = frozenset()) -> PairSet:
    images, ids = [], []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(p for p in sub.rglob("*") if p.suffix.lower() in IMAGE_EXTS):
            if f"{root.name}/{f.relative_to(root).as_posix()}" in exclude:
                continue
            images.append(f)
            ids.append(sub.name)
    if not images:
        raise SystemExit(f"no images under {root}")
    idx = np.arange(len(images))
    a, b = np.triu_indices(len(images), k=1)
    same = np.array(ids)[a] == np.array(ids)[b]
    impostor = np.stack([a[~same], b[~same]], 1)
    if protocol == "fvc":
        first = {ids.index(name) for name in set(ids)}  # images are sorted within each identity
        is_first = np.array([i in first for i in range(len(images))])
        return PairSet(images, ids, np.stack([idx[a[same]], idx[b[same]]], 1),
                       impostor[is_first[impostor[:, 0]] & is_first[impostor[:, 1]]], all_impostors=impostor)
    return PairSet(images, ids, np.stack([idx[a[same]], idx[b[same]]], 1), impostor)


def load_lfw_pairs(root: Path) -> PairSet:
    lines = (root / "pairs.txt").read_text().split("\n")
    n_folds, per = (int(x) for x in lines[0].split())
    index: dict[Path, int] = {}
    images, ids = [], []

    def img(name: str, num: str) -> int:
        p = root / "lfw" / name / f"{name}_{int(num):04d}.jpg"
        if p not in index:
            index[p] = len(images)
            images.append(p)
            ids.append(name)
        return index[p]

    gen, imp, gen_fold, imp_fold = [], [], [], []
    rows = [ln.split() for ln in lines[1:] if ln.strip()]
    if len(rows) != n_folds * 2 * per:
        raise SystemExit(f"pairs.txt: expected {n_folds * 2 * per} pairs, found {len(rows)}")
    for k, r in enumerate(rows):
        fold = k // (2 * per)
        if len(r) == 3:
            gen.append((img(r[0], r[1]), img(r[0], r[2])))
            gen_fold.append(fold)
        else:
            imp.append((img(r[0], r[1]), img(r[2], r[3])))
            imp_fold.append(fold)
    return PairSet(images, ids, np.array(gen), np.array(imp), np.array(gen_fold + imp_fold))


def extract_all(modality: Modality, images: list[Path], progress: bool):
    """Extract every image; returns (templates with None for failures, ok mask, ms list, reasons)."""
    from tqdm import tqdm

    extractor = modality.make_extractor()
    templates, ms = [], []
    reasons: collections.Counter[str] = collections.Counter()
    for p in tqdm(images, desc=f"extract {modality.name}", unit="img", disable=not progress, file=sys.stderr):
        data = p.read_bytes()
        t0 = time.perf_counter()
        try:
            templates.append(extractor.extract(data))
            ms.append((time.perf_counter() - t0) * 1000)
        except Exception as e:  # noqa: BLE001 - every failure is a failure to enrol, tallied by reason
            reasons[getattr(e, "reason", type(e).__name__)] += 1
            templates.append(None)
    return templates, np.array([t is not None for t in templates]), ms, dict(reasons)


def pair_scores(modality: Modality, features, ok: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Scores of ``pairs``; a pair with a failure to enrol scores -inf (a non-match)."""
    if len(pairs) == 0:
        return np.empty(0)
    s = np.full(len(pairs), -np.inf)
    good = np.nonzero(ok[pairs[:, 0]] & ok[pairs[:, 1]])[0]
    for start in range(0, len(good), 1_000_000):
        sel = good[start : start + 1_000_000]
        s[sel] = modality.score(features, pairs[sel])
    return s


def closed_set(ok: np.ndarray, images: list[Path], ids: list[str]) -> tuple[list[int], list[int]]:
    """Gallery = first sorted sample of each identity that enrolled, probes = the others."""
    by_id: dict[str, list[int]] = collections.defaultdict(list)
    for i, name in enumerate(ids):
        by_id[name].append(i)
    gallery = [sorted(v, key=lambda i: images[i].name)[0] for v in by_id.values()]
    gallery = [g for g in gallery if ok[g]]
    probes = [i for v in by_id.values() if len(v) > 1 for i in sorted(v, key=lambda i: images[i].name)[1:]]
    gset = set(gallery)
    return gallery, [p for p in probes if p not in gset]


def rank1_of(modality: Modality, features, ok: np.ndarray, images: list[Path], ids: list[str]) -> tuple[float, int]:
    """Closed-set rank-1 (failed probes count as misses)."""
    gallery, probes = closed_set(ok, images, ids)
    if not gallery or not probes:
        return float("nan"), 0
    pairs = np.array([(p, g) for p in probes for g in gallery])
    scores = pair_scores(modality, features, ok, pairs).reshape(len(probes), len(gallery))
    best = np.array(gallery)[np.argmax(scores, axis=1)]
    hit = np.array([ok[p] and ids[b] == ids[p] for p, b in zip(probes, best)])
    return float(hit.mean()), len(probes)


def _error_rates(gen: np.ndarray, imp: np.ndarray) -> dict:
    out: dict = {"eer": metrics.eer(gen, imp), "fnmr_at_fmr": {}, "thresholds_at_fmr": {},
                 "zero_fmr": metrics.zero_fmr(gen, imp), "impostor_pairs": int(len(imp))}
    for target in FMR_TARGETS:
        if len(imp) * target >= 1:  # at least one impostor may match at that rate
            fnmr, thr = metrics.fnmr_at_fmr(gen, imp, target)
            out["fnmr_at_fmr"][f"{target:g}"] = fnmr
            out["thresholds_at_fmr"][f"{target:g}"] = thr
    return out


def _component_spread(templates: list) -> dict:
    """5th percentile, median and 95th percentile of each quality component over the enrolled samples."""
    values: dict[str, list[float]] = collections.defaultdict(list)
    for t in templates:
        for name, v in getattr(t, "components", ()):  # NBIS templates carry none
            values[name].append(v)
    return {name: dict(zip(("p5", "median", "p95"), np.percentile(v, [5, 50, 95]).round(2).tolist()))
            for name, v in values.items()}


def evaluate(modality: Modality, pairs: PairSet, progress: bool = True) -> tuple[dict, np.ndarray, np.ndarray]:
    templates, ok, ms, reasons = extract_all(modality, pairs.images, progress)
    features = modality.prepare(templates)
    gen = pair_scores(modality, features, ok, pairs.genuine)
    imp = pair_scores(modality, features, ok, pairs.impostor)
    rates = _error_rates(gen, imp)
    result: dict = {
        "modality": modality.name,
        "score": modality.score_meaning,
        "images": len(pairs.images),
        "genuine_pairs": int(len(gen)),
        "impostor_pairs": int(len(imp)),
        "failure_to_enrol": float(1.0 - ok.mean()),
        "failure_reasons": reasons,
        "eer": rates["eer"],
        "fnmr_at_fmr": rates["fnmr_at_fmr"],
        "thresholds_at_fmr": rates["thresholds_at_fmr"],
        "zero_fmr": rates["zero_fmr"],
        "extract_ms_median": float(np.median(ms)) if ms else None,
        "quality_components": _component_spread(templates),
    }
    result["tar_at_far_1e-3"] = (
        1.0 - result["fnmr_at_fmr"]["0.001"] if "0.001" in result["fnmr_at_fmr"] else None
    )
    if pairs.all_impostors is not None:
        result["all_impostors"] = _error_rates(gen, pair_scores(modality, features, ok, pairs.all_impostors))
    if pairs.folds is not None:
        scores = np.concatenate([gen, imp])
        same = np.concatenate([np.ones(len(gen), bool), np.zeros(len(imp), bool)])
        acc, acc_std = metrics.kfold_accuracy(scores, same, pairs.folds)
        result["accuracy"], result["accuracy_std"] = acc, acc_std
        result["folds"] = int(len(np.unique(pairs.folds)))
    else:
        result["accuracy"] = None
    result["rank1"], result["rank1_probes"] = rank1_of(modality, features, ok, pairs.images, pairs.identity)
    if modality.shortlist_ranks is not None:
        gallery, probes = closed_set(ok, pairs.images, pairs.identity)
        ranks = modality.shortlist_ranks(templates, gallery, probes, pairs.identity)
        result["shortlist_hit_rate_at_penetration"] = {
            f"{pen:g}": float(np.mean((ranks >= 0) & (ranks < max(1, round(pen * len(gallery))))))
            for pen in (0.01, 0.05)
        }
    return result, gen, imp


def plot_det(gen: np.ndarray, imp: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, fmr, fnmr = metrics.fmr_fnmr(gen, imp)
    floor = 0.5 / max(len(imp), 1)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.loglog(np.maximum(fmr, floor), np.maximum(fnmr, 0.5 / max(len(gen), 1)), lw=1.5)
    ax.set_xlabel("FMR (false match rate)")
    ax.set_ylabel("FNMR (false non-match rate)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Biometric accuracy by the standard protocols.")
    parser.add_argument("--modality", required=True, choices=sorted(MODALITIES))
    parser.add_argument("--root", required=True, type=Path, nargs="+",
                        help="one labelled set, or several: each is measured alone and all are pooled")
    parser.add_argument("--layout", required=True, choices=["folders", "lfw-pairs"])
    parser.add_argument("--protocol", choices=["all", "fvc"], help="folders layout (default: the modality's)")
    parser.add_argument("--exclude", type=Path, help="file of known mislabelled images to leave out")
    parser.add_argument("--json", required=True, type=Path, help="where to write the results")
    parser.add_argument("--plot", type=Path, help="DET curve PNG")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    for root in args.root:
        if not root.is_dir():
            parser.error(f"--root {root} is not a folder")
    # One request at a time on one core is the deployment we measure; keep BLAS/OMP quiet.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    modality = MODALITIES[args.modality]
    protocol = args.protocol or modality.default_protocol
    exclude = load_exclusions(args.exclude)
    results, gens, imps = {}, [], []
    for root in args.root:
        pairs = load_lfw_pairs(root) if args.layout == "lfw-pairs" else load_folders(root, protocol, exclude)
        result, gen, imp = evaluate(modality, pairs, progress=not args.no_progress)
        result["root"] = str(root)
        result["layout"] = args.layout
        result["protocol"] = protocol if args.layout == "folders" else "lfw"
        result["excluded"] = sorted(e for e in exclude if e.startswith(root.name + "/"))
        results[root.name] = result
        gens.append(gen)
        imps.append(imp)
    if len(args.root) == 1:
        out = results[args.root[0].name]
    else:
        out = pooled(results, np.concatenate(gens), np.concatenate(imps))
    gen, imp = np.concatenate(gens), np.concatenate(imps)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    if args.plot:
        plot_det(gen, imp, args.plot, f"{modality.name}: {' + '.join(r.name for r in args.root)}")
    summary = {k: out[k] for k in ("eer", "accuracy", "tar_at_far_1e-3", "rank1", "failure_to_enrol")}
    print(json.dumps(summary))
    return 0


def pooled(results: dict[str, dict], gen: np.ndarray, imp: np.ndarray) -> dict:
    """Several sets in one report: each set's result under ``sets``, and at the top the
    same keys measured on every set's genuine and impostor pairs pooled (pairs stay
    within a set), with how far each set's threshold for a target FMR lies from the
    pooled one (``threshold_spread``): a threshold fitted to one set is only as good as
    that spread is small."""
    images = sum(r["images"] for r in results.values())
    rates = _error_rates(gen, imp)
    weight = {name: r["images"] / images for name, r in results.items()}
    probes = sum(r["rank1_probes"] for r in results.values())
    out = {
        "modality": next(iter(results.values()))["modality"],
        "score": next(iter(results.values()))["score"],
        "sets": results,
        "images": images,
        "genuine_pairs": int(len(gen)),
        "impostor_pairs": int(len(imp)),
        "failure_to_enrol": float(sum(weight[n] * r["failure_to_enrol"] for n, r in results.items())),
        "eer": rates["eer"],
        "fnmr_at_fmr": rates["fnmr_at_fmr"],
        "thresholds_at_fmr": rates["thresholds_at_fmr"],
        "zero_fmr": rates["zero_fmr"],
        "tar_at_far_1e-3": 1.0 - rates["fnmr_at_fmr"]["0.001"] if "0.001" in rates["fnmr_at_fmr"] else None,
        "accuracy": None,
        "extract_ms_median": float(np.median([r["extract_ms_median"] for r in results.values()
                                              if r["extract_ms_median"] is not None] or [np.nan])),
        "rank1": float(sum(r["rank1"] * r["rank1_probes"] for r in results.values()) / max(probes, 1)),
        "rank1_probes": probes,
        "threshold_spread": {
            target: {name: r["thresholds_at_fmr"].get(target) for name, r in results.items()} | {"pooled": thr}
            for target, thr in rates["thresholds_at_fmr"].items()
        },
    }
    return out


if __name__ == "__main__":
    raise SystemExit(main())
