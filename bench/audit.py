"""The N:N duplicate audit's speed and what it finds, on faces: ``python -m bench.audit``.

Usage::

    python -m bench.audit --sizes 10000 100000 --json bench/results/audit_face.json

The gallery: every ORL person enrolled twice under different ids (first and second
photo: the planted duplicate pairs), then synthetic faces drawn from the Gaussian fitted to
real LFW embeddings (``bench/data/face.stats.npz``, as :mod:`bench.search`) up to the size,
loaded without deduplication (as ``tambua import --dedup skip`` would) into a real store and
engine. Then, in the same run: the audit (:meth:`matcher.engine.Engine.audit`, the batch
path) and the raw FAISS batch search of the same vectors against themselves (flat L2,
``k`` as the audit's shortlist, every core), and their ratio (goal: within 1.5x).

Output per size: ``audit_s``, ``faiss_s``, ``ratio``, ``planted_pairs``, ``recall`` (planted
pairs tied by an edge), ``false_clusters`` (clusters holding no planted pair), ``clusters``.
``--import-rate face finger iris``: per modality, ``subjects_per_s`` that ``tambua import``
enrols through a real server here (``import`` in the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FACE = "face/dlib-resnet-v1"


def _planted(orl: Path):
    """(subject id, template) of every ORL person twice: P-i (photo 1) and D-i (photo 2)."""
    from enroll.face.pipeline import FaceExtractor

    ex = FaceExtractor()
    out = []
    for person in sorted(orl.iterdir()):
        for shot, prefix in ((1, "P"), (2, "D")):
            out.append((f"{prefix}-{person.name}", ex.extract((person / f"{shot}.pgm").read_bytes())))
    return out


def run_size(size: int, planted, workdir: Path) -> dict:
    import faiss

    from bench.search import STATS_DIR, draw
    from matcher.engine import Engine
    from matcher.face.template import EmbeddingTemplate
    from matcher.types import StoredTemplate, Subject
    from store.sqlite import SubjectStore

    store = SubjectStore(workdir / f"audit-{size}.sqlite")
    subjects = [Subject(sid, "default", (StoredTemplate("face", 0, t),)) for sid, t in planted]
    fillers = draw(STATS_DIR / "face.stats.npz", size - len(subjects), seed=size)
    subjects += [Subject(f"F-{i:07d}", "default", (StoredTemplate("face", 0, EmbeddingTemplate(FACE, v)),))
                 for i, v in enumerate(fillers)]
    for start in range(0, len(subjects), 5000):
        store.add_many(subjects[start : start + 5000])
    engine = Engine(store, {"face": FACE})
    t0 = time.perf_counter()
    report = engine.audit("default")
    audit_s = time.perf_counter() - t0
    vectors = np.stack([s.templates[0].template.vector for s in subjects]).astype(np.float32)
    index = faiss.IndexFlatL2(vectors.shape[1])
    index.add(vectors)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    index.search(vectors, engine.thresholds.max_candidates + 1)
    faiss_s = time.perf_counter() - t0
    store.close()
    planted_pairs = {tuple(sorted((f"P-{sid[2:]}", f"D-{sid[2:]}"))) for sid, _ in planted if sid.startswith("P-")}
    edges = {p.subject_ids for c in report.clusters for p in c.pairs}
    false = [c for c in report.clusters
             if not any(tuple(sorted(p.subject_ids)) in planted_pairs for p in c.pairs)]
    return {"subjects": report.subjects, "audit_s": round(audit_s, 2), "faiss_s": round(faiss_s, 2),
            "ratio": round(audit_s / faiss_s, 2), "planted_pairs": len(planted_pairs),
            "recall": len(planted_pairs & edges) / len(planted_pairs), "false_clusters": len(false),
            "clusters": len(report.clusters), "max_fpir": report.max_fpir}


def import_rate(modality: str, limit: int, workdir: Path, jobs: int) -> dict:
    """Subjects per second that ``tambua import`` enrols through a real server on this
    machine (one sample a subject, real images of every development set of the modality,
    deduplicated as they go: ``--dedup refuse``)."""
    import grpc

    from bench.servers import serve
    from tambua import importer
    from tambua.v1 import tambua_pb2_grpc

    roots = {"face": [DATA / "face" / "att_orl"],
             "finger": sorted((DATA / "fingerprint").iterdir()),
             "iris": [DATA / "iris" / n for n in ("casia_v1", "mmu1", "iitd_v1")]}[modality]
    images = [f for root in roots for f in sorted(root.rglob("*")) if f.is_file()
              and f.suffix.lower() in (".pgm", ".png", ".jpg", ".bmp", ".tif", ".tiff")][:limit]
    folder = workdir / f"import-{modality}"
    folder.mkdir()
    position = {"face": "", "finger": "1", "iris": "left"}[modality]
    lines = ["subject_id,partition,modality,position,path"]
    for i, f in enumerate(images):
        (folder / f"{i}{f.suffix}").symlink_to(f)
        lines.append(f"I-{i:06d},,{modality},{position},{i}{f.suffix}")
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    proc, address = serve(workdir / f"server-{modality}")
    try:
        with grpc.insecure_channel(address) as channel, open(os.devnull, "w") as quiet:
            _, summary = importer.run(tambua_pb2_grpc.MatcherStub(channel), [], manifest, "refuse", jobs,
                                      progress_stream=quiet)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return {"subjects": summary["records"], "enrolled": summary["enrolled"], "duplicates": summary["duplicates"],
            "failed": summary["failed"], "seconds": summary["seconds"],
            "subjects_per_s": round(summary["records"] / summary["seconds"], 2), "jobs": jobs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The N:N duplicate audit on faces: speed and recall.")
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000])
    parser.add_argument("--orl", type=Path, default=DATA / "face" / "att_orl")
    parser.add_argument("--import-rate", nargs="*", choices=["face", "finger", "iris"], default=[],
                        help="also time tambua import of real images of these modalities")
    parser.add_argument("--import-limit", type=int, default=300, help="images per modality for --import-rate")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="records in flight (--import-rate)")
    parser.add_argument("--json", required=True, type=Path)
    args = parser.parse_args(argv)
    planted = _planted(args.orl)
    out = {"modality": "face", "command": "python -m bench.audit " + " ".join(sys.argv[1:] if argv is None else argv),
           "cores": os.cpu_count(), "sizes": {}, "import": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            out["sizes"][str(size)] = run_size(size, planted, Path(tmp))
            print(json.dumps({size: out["sizes"][str(size)]}), flush=True)
        for modality in args.import_rate:
            out["import"][modality] = import_rate(modality, args.import_limit, Path(tmp), args.jobs)
            print(json.dumps({modality: out["import"][modality]}), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
