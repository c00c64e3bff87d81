"""The N:N duplicate audit's speed and what it finds: ``python -m bench.audit``.

Usage::

    python -m bench.audit --sizes 10000 100000 --json bench/results/audit_face.json
    python -m bench.audit --modality iris --sizes 10000 100000 --json bench/results/audit_iris.json
    python -m bench.audit --modality finger --sizes 10000 --json bench/results/audit_finger.json
    python -m bench.audit --modality fused --sizes 10000 --json bench/results/audit_fused.json
    python -m bench.audit --modality finger --sizes 100000 --workdir .bench-cache/audit --block 5000 \
        --json bench/results/audit_finger_100k.json   # hours: killed and run again, it goes on

``--workdir`` keeps the gallery and the audit's checkpoints (every ``--block`` subjects): a run
cut short goes on from its last checkpoint, and ``audit_s`` is the sum of the runs' times
(``runs``: each from its start to its last checkpoint, the work after that redone next time).

Iris: every real eye (CASIA-IrisV1, MMU1, IITD; label noise left out) with two usable
images enrolled twice (first and last image), among synthetic irises (``bench/iris_search``'s
synthesiser). Finger: people with two mated FCJ fingers (first and second impression of
each) among subjects of two fingers spliced from the others (``bench/finger_search``). Two,
because one finger cannot tie a pair in a gallery of thousands: LEADER's calibration
claims no rate below the smallest it measured (3.2e-5, ``tail_model: floor``), so one
finger's FPIR at 10,000 subjects is at least 0.27 (measured: a one-finger audit of 10,000
ties no planted pair at FPIR 0.01, in 396 s). Fused: chimeric people, each an ORL
face, a real eye and a mated finger, enrolled twice, among subjects of three synthetic
samples. The audit is the service's (:meth:`matcher.engine.Engine.audit`), on every core.

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
import shutil
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
    return {"audit_s": round(audit_s, 2), "faiss_s": round(faiss_s, 2), "ratio": round(audit_s / faiss_s, 2),
            **_found(report, planted_pairs)}


def _found(report, planted_pairs: set[tuple[str, str]]) -> dict:
    """Recall of the planted pairs and the clusters that hold none of them."""
    edges = {tuple(sorted(p.subject_ids)) for c in report.clusters for p in c.pairs}
    false = [c for c in report.clusters if not any(tuple(sorted(p.subject_ids)) in planted_pairs for p in c.pairs)]
    real = {s for pair in planted_pairs for s in pair}
    # A real person tied to anyone but their own other enrolment: what a false cluster
    # costs in the field. Clusters of synthetic fillers only are counted apart: fingers
    # spliced from the same real finger are near-duplicates by construction.
    wrong = [c for c in report.clusters if any(tuple(sorted(p.subject_ids)) not in planted_pairs
                                               and set(p.subject_ids) & real for p in c.pairs)]
    return {"subjects": report.subjects, "planted_pairs": len(planted_pairs),
            "recall": round(len(planted_pairs & edges) / max(len(planted_pairs), 1), 4),
            "false_clusters": len(false), "clusters": len(report.clusters), "max_fpir": report.max_fpir,
            "false_ties_of_real_people": len(wrong),
            "clusters_of_fillers_only": sum(1 for c in false if not set(c.subject_ids) & real)}


def _iris_people(cache: Path):
    """Every real eye with two usable images (label noise left out): (eye, first, last) as enrolled templates."""
    from bench.accuracy import load_exclusions
    from bench.iris_search import _template, real_responses

    real = real_responses(cache)
    noise = {str(p) for p in load_exclusions(Path(__file__).parent / "data" / "iris_label_noise.txt")}
    keep = np.array([not any(n.endswith(f"{e}/{name}") for n in noise) for e, name in zip(real["eye"], real["name"])])
    out = []
    for eye in sorted(set(real["eye"][keep])):
        idx = np.flatnonzero((real["eye"] == eye) & keep)
        if len(idx) >= 2:
            out.append((eye, _template(real["response"][idx[0]], real["mask"][idx[0]]),
                        _template(real["response"][idx[-1]], real["mask"][idx[-1]])))
    return out, real


def _iris_fillers(real: dict, n: int, rng: np.random.Generator):
    from bench.iris_search import MODEL as IRIS, Synthesiser
    from matcher.iris.template import IrisTemplate

    syn, masks = Synthesiser(real["response"]), real["mask"]
    for start in range(0, n, 10_000):
        bits = syn.draw(min(10_000, n - start), rng)
        pick, turn = rng.integers(len(masks), size=len(bits)), rng.integers(0, bits.shape[-1], size=len(bits))
        for j in range(len(bits)):
            mask = np.broadcast_to(np.roll(masks[pick[j]], turn[j], axis=-1), bits[j].shape).copy()
            yield IrisTemplate(IRIS, bits[j], mask)


def _finger_people(cache: Path):
    """The mated FCJ fingers (none of them in the fillers' pool): (finger, first, second
    impression), and the pool the fillers are spliced from."""
    from bench.cluster import _finger_rows
    from bench.finger_search import real_fingers

    fcj, mated, pool, owners = real_fingers(cache)
    return [(f, *_templates(_finger_rows((0, "", fcj[f][:2]))[2])) for f in mated], pool, owners


def _two_finger_people(found) -> list[tuple[str, list, list]]:
    """People with two mated fingers (an FCJ person's fingers 4 and 5, or 6 and 7: right
    index and middle, left index and middle here), each enrolled twice."""
    by_person: dict[str, dict[int, tuple]] = {}
    for f, a, b in found:
        person, finger = f.split("/")[1].split("_")
        by_person.setdefault(person, {})[int(finger)] = (a, b)
    people = []
    for person, fingers in sorted(by_person.items()):
        for pair, positions in (((4, 5), (2, 3)), ((6, 7), (7, 8))):
            if all(k in fingers for k in pair):
                people.append((f"{person}-{pair[0]}{pair[1]}",
                               [("finger", pos, fingers[k][0]) for k, pos in zip(pair, positions)],
                               [("finger", pos, fingers[k][1]) for k, pos in zip(pair, positions)]))
    return people


def _templates(rows):
    from matcher.finger.template import MinutiaeTemplate

    out = []
    for data, derived in rows:
        t = MinutiaeTemplate.from_bytes(data)
        t.load_derived(derived)
        out.append(t)
    return out


def _finger_fillers(pool, owners, n: int, rng: np.random.Generator):
    """Spliced fingers, their cylinders made on every core (as the service stores them)."""
    import multiprocessing

    from bench.cluster import _finger_rows
    from bench.finger_search import fillers

    def chunks():
        for start in range(0, n, 5000):
            yield start, "F", fillers(pool, owners, min(5000, n - start), rng, frame=(500, 500))

    with multiprocessing.Pool() as workers:
        for _, _, rows in workers.imap(_finger_rows, chunks()):
            yield from _templates(rows)


def run_modality(modality: str, size: int, workdir: Path, cache: Path, orl: Path, planted_faces,
                 block: int = 0) -> dict:
    """The audit of ``size`` subjects of one modality (``fused``: face, right iris and right
    index each), the planted pairs real people enrolled twice, the rest synthetic."""
    from bench.search import STATS_DIR, draw
    from matcher.engine import Engine
    from matcher.face.template import EmbeddingTemplate
    from matcher.types import StoredTemplate, Subject
    from store.sqlite import SubjectStore

    rng = np.random.default_rng(size)
    t0 = time.perf_counter()
    if modality == "iris":
        people, real = _iris_people(cache)
        people = [(e, [("iris", 1, a)], [("iris", 1, b)]) for e, a, b in people]
        fill = ([("iris", 1, t)] for t in _iris_fillers(real, size - 2 * len(people), rng))
    elif modality == "finger":  # two fingers a subject: one alone cannot tie a pair (see the module docstring)
        found, pool, owners = _finger_people(cache)
        people = _two_finger_people(found)
        fingers = _finger_fillers(pool, owners, 2 * (size - 2 * len(people)), rng)
        fill = ([("finger", 2, a), ("finger", 3, b)] for a, b in zip(fingers, fingers))
    else:  # fused: chimeric people, an ORL face, a real eye and a real finger each
        eyes, real = _iris_people(cache)
        fingers, pool, owners = _finger_people(cache)
        faces = {sid: t for sid, t in planted_faces}
        n = min(len(faces) // 2, len(eyes), len(fingers))
        people = [(f"person{i}", [("face", 0, faces[f"P-s{i + 1}"]), ("iris", 1, eyes[i][1]), ("finger", 2, fingers[i][1])],
                   [("face", 0, faces[f"D-s{i + 1}"]), ("iris", 1, eyes[i][2]), ("finger", 2, fingers[i][2])])
                  for i in range(n)]
        rest = size - 2 * n
        fill = ([("face", 0, EmbeddingTemplate(FACE, v)), ("iris", 1, i), ("finger", 2, f)] for v, i, f in zip(
            draw(STATS_DIR / "face.stats.npz", rest, seed=size), _iris_fillers(real, rest, rng),
            _finger_fillers(pool, owners, rest, rng)))

    def subjects():
        for name, first, second in people:
            for prefix, samples in (("P", first), ("D", second)):
                yield Subject(f"{prefix}-{name}", "default", tuple(StoredTemplate(*s) for s in samples))
        for i, samples in enumerate(fill):
            yield Subject(f"F-{i:07d}", "default", tuple(StoredTemplate(*s) for s in samples))

    from bench.cluster import _store

    folder = workdir / f"audit-{modality}-{size}"
    built = folder / "built.json"
    if built.exists():  # a kept --workdir: the same gallery, built by an earlier run
        build_s = json.loads(built.read_text())["build_s"]
    else:
        shutil.rmtree(folder, ignore_errors=True)  # a build cut short is built again
        folder.mkdir(parents=True)
        _store(folder, subjects())
        build_s = time.perf_counter() - t0
        built.write_text(json.dumps({"build_s": build_s}))
    store = SubjectStore(folder / "subjects.sqlite")
    models = {"face": FACE, "iris": "iris/gabor-v2", "finger": "finger/leader-mcc-v1"}
    engine = Engine(store, {m: models[m] for m in (("face", "iris", "finger") if modality == "fused" else (modality,))})
    runs = Runs(folder / "runs.json")
    report = engine.audit("default", progress=runs.progress, block=block)
    runs.progress(report.subjects, report.subjects)
    store.close()
    planted = {tuple(sorted((f"P-{name}", f"D-{name}"))) for name, _, _ in people}
    return {"audit_s": round(runs.total_s(), 2), "build_s": round(build_s, 1), "runs": runs.runs,
            **_found(report, planted)}


class Runs:
    """The audit's time over the runs that made it (``--workdir``: a run cut short goes on
    from its last checkpoint next time). Each run counts from its start to its last block
    kept (what it did after that is done again, and counted again, by the next run)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.runs = json.loads(path.read_text()) if path.exists() else []
        self.started = time.perf_counter()
        self.runs.append({"searched_before": None, "searched": None, "seconds": 0.0})

    def progress(self, searched: int, subjects: int) -> None:
        run = self.runs[-1]
        if run["searched_before"] is None:
            run["searched_before"] = searched
        run.update(searched=searched, subjects=subjects, seconds=round(time.perf_counter() - self.started, 2))
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.runs))
        tmp.replace(self.path)

    def total_s(self) -> float:
        return sum(run["seconds"] for run in self.runs)


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


def plot(results: list[Path], png: Path) -> None:
    """Audit time against gallery size, one line per modality, recall and false clusters
    written at each point: ``python -m bench.audit --plot PNG --from bench/results/audit_*.json``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, path in enumerate(results):
        r = json.loads(path.read_text())
        sizes = sorted(r["sizes"], key=int)
        x, y = [int(n) for n in sizes], [r["sizes"][n]["audit_s"] for n in sizes]
        ax.plot(x, y, marker="o", label=r["modality"])
        for n, xi, yi in zip(sizes, x, y):
            m = r["sizes"][n]
            ax.annotate(f"recall {100 * m['recall']:.0f}%, {m['false_clusters']} false", (xi, yi), fontsize=7,
                        textcoords="offset points", xytext=(4, 4 if i % 2 == 0 else -11))  # neighbours apart
    ax.set_xscale("log")
    ax.margins(x=0.25)
    ax.set_yscale("log")
    ax.set_xlabel("subjects audited (N:N)")
    ax.set_ylabel("seconds, this 2-core VM")
    ax.set_title("Duplicate audit: time, and recall of the planted pairs at FPIR 0.01")
    ax.legend()
    fig.savefig(png, dpi=100, bbox_inches="tight")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The N:N duplicate audit: speed and recall.")
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000])
    parser.add_argument("--orl", type=Path, default=DATA / "face" / "att_orl")
    parser.add_argument("--import-rate", nargs="*", choices=["face", "finger", "iris"], default=[],
                        help="also time tambua import of real images of these modalities")
    parser.add_argument("--import-limit", type=int, default=300, help="images per modality for --import-rate")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="records in flight (--import-rate)")
    parser.add_argument("--modality", choices=["face", "iris", "finger", "fused"], default="face",
                        help="face: also the raw FAISS ratio; iris, finger: real eyes / FCJ fingers enrolled twice "
                             "among synthetic ones; fused: chimeric people with a face, an iris and a finger")
    parser.add_argument("--cache", type=Path, default=Path(".bench-cache"), help="real iris codes and minutiae")
    parser.add_argument("--json", type=Path, help="where to write the results (required unless --plot)")
    parser.add_argument("--plot", type=Path, help="draw this PNG from the result files --from names, and stop")
    parser.add_argument("--from", dest="sources", type=Path, nargs="*", default=[])
    parser.add_argument("--workdir", type=Path,
                        help="keep the galleries and the audits' checkpoints here (iris, finger, fused): a run cut "
                             "short goes on from its last checkpoint when run again; default: a temporary folder")
    parser.add_argument("--block", type=int, default=0, help="subjects between checkpoints (0: the service's)")
    args = parser.parse_args(argv)
    if args.plot:
        plot(args.sources, args.plot)
        return 0
    if args.json is None:
        parser.error("--json is required")
    planted = _planted(args.orl) if args.modality in ("face", "fused") else []
    out = {"modality": args.modality,
           "command": "python -m bench.audit " + " ".join(sys.argv[1:] if argv is None else argv),
           "cores": os.cpu_count(), "sizes": {}, "import": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            out["sizes"][str(size)] = (run_size(size, planted, Path(tmp)) if args.modality == "face" else
                                       run_modality(args.modality, size, args.workdir or Path(tmp), args.cache,
                                                    args.orl, planted, args.block))
            print(json.dumps({size: out["sizes"][str(size)]}), flush=True)
        for modality in args.import_rate:
            out["import"][modality] = import_rate(modality, args.import_limit, Path(tmp), args.jobs)
            print(json.dumps({modality: out["import"][modality]}), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
