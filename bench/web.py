"""Speed of the adjudication pages: ``python -m bench.web --cases 10000 --json OUT --plot PNG``.

A store holds ``--cases`` open cases (each a held synthetic face capture with three
candidates among twice as many enrolled synthetic faces: what the queue lists) and one
real case whose capture and candidate carry a face, a finger and an iris with their
images (ORL, FVC2000 DB1_B, CASIA-IrisV1; ``keep_images = "all"``), made through the
engine. The app (``tambua.web``) is served by uvicorn in this process on loopback in
insecure mode (no log-in; the access check a key adds is one SQLite row) and asked over
HTTP one request at a time: the queue's first page, a page deep in it, the case view, and
the case view with every image it shows (what a supervisor waits for). Goals (issue 25):
the queue under 300 ms and a case view under 500 ms on this machine.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from bench.search import STATS_DIR, draw

FACE = "face/dlib-resnet-v1"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _get(url: str) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as r:
        body = r.read()
    return (time.perf_counter() - t0) * 1000, body


def _times(url: str, repeat: int) -> list[float]:
    _get(url)  # warm: templates compiled, pages of the store in cache
    return [_get(url)[0] for _ in range(repeat)]


def _summary(ms: list[float]) -> dict:
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(max(ms)), "n": len(ms)}


def build(folder: Path, cases: int):
    """The store and engine: synthetic cases, then the one real case. Returns (engine, real case id)."""
    from enroll.face.pipeline import FaceExtractor
    from enroll.finger.pipeline import FingerExtractor
    from enroll.iris.pipeline import IrisExtractor
    from matcher.cases import Case, CaseCandidate, CaseSource, SampleImage, SampleScore, new_case_id
    from matcher.engine import Engine, Thresholds
    from matcher.face.template import EmbeddingTemplate
    from matcher.types import StoredTemplate, Subject
    from store.sqlite import SubjectStore

    store = SubjectStore(folder / "subjects.sqlite")
    xb = draw(STATS_DIR / "face.stats.npz", 3 * cases, seed=5)
    for start in range(0, 2 * cases, 10_000):
        store.add_many([Subject(f"S{i}", "default", (StoredTemplate("face", 0, EmbeddingTemplate(FACE, xb[i])),))
                        for i in range(start, min(start + 10_000, 2 * cases))])
    rng = np.random.default_rng(6)
    now = int(time.time() * 1000) - cases * 1000
    for i in range(cases):
        named = rng.choice(2 * cases, 3, replace=False)
        fpir = np.sort(10.0 ** -rng.uniform(2, 9, 3))
        case = Case(new_case_id(), "default", f"H{i}", CaseSource.ENROL, "DUPLICATE", now + i * 1000, "bench",
                    "tablet", candidates=tuple(CaseCandidate(f"S{j}", float(-np.log10(f)), float(f),
                                                             (SampleScore("face", 0, float(-np.log10(f)), float(f)),))
                                               for j, f in zip(named, fpir)), updated_ms=now + i * 1000)
        store.open_case(case, (StoredTemplate("face", 0, EmbeddingTemplate(FACE, xb[2 * cases + i])),))

    # Every duplicate to a person (clear_match_fpir 0): the case of one person's three
    # modalities is otherwise beyond doubt, decided without a page.
    engine = Engine(store, {"face": FACE, "finger": "finger/leader-mcc-v1", "iris": "iris/gabor-v2"},
                    Thresholds(clear_match_fpir=0), keep_images="all")
    extract = {"face": FaceExtractor(), "finger": FingerExtractor(), "iris": IrisExtractor()}
    fingers = sorted((DATA / "fingerprint" / "fvc2000_db1_b" / "101").iterdir())
    eyes = sorted((DATA / "iris" / "casia_v1" / "005").iterdir())
    sides = []
    for shot in (0, 1):
        files = {("face", 0): DATA / "face" / "att_orl" / "s1" / f"{shot + 1}.pgm", ("finger", 2): fingers[shot],
                 ("iris", 1): eyes[shot]}
        images = tuple(SampleImage(m, p, f.read_bytes()) for (m, p), f in files.items())
        templates = tuple(StoredTemplate(m, p, extract[m].extract(f.read_bytes())) for (m, p), f in files.items())
        sides.append((templates, images))
    assert engine.enroll("REAL-1", "default", sides[0][0], images=sides[0][1]).outcome == "ENROLLED"
    held = engine.enroll("REAL-2", "default", sides[1][0], hold=True, images=sides[1][1])
    assert held.case_id, "the second capture of REAL-1 was not held as a duplicate"
    return engine, held.case_id, extract["iris"]


def run(cases: int, repeat: int) -> dict:
    from tambua.web import WebServer, create_app

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        engine, real, iris = build(Path(tmp), cases)
        build_s = time.perf_counter() - t0
        web = WebServer(create_app(engine, None, None, iris.review, secure=False), "127.0.0.1", 0)
        web.start()
        base = f"http://127.0.0.1:{web.port}"
        try:
            queue = _times(f"{base}/", repeat)
            _, page = _get(f"{base}/")
            listed = len(re.findall(r'data-case="', page.decode()))
            deep_cursor, deep_page = "", 1
            for _ in range(min(20, cases // 50)):  # up to 20 pages in (1,000 cases)
                _, body = _get(f"{base}/" + (f"?after={deep_cursor}" if deep_cursor else ""))
                m = re.search(r'href="/\?after=([^"]+)"', body.decode())
                if not m:
                    break
                deep_cursor, deep_page = m.group(1), deep_page + 1
            deep = _times(f"{base}/?after={deep_cursor}", repeat) if deep_cursor else []
            case_url = f"{base}/cases/{real}?partition=default"
            view = _times(case_url, repeat)
            _, html = _get(case_url)
            images = [base + src.replace("&amp;", "&") for src in re.findall(r'src="(/cases/[^"]+)"', html.decode())]
            _get(case_url)
            with_images = []
            for _ in range(max(3, repeat // 4)):
                t0 = time.perf_counter()
                _get(case_url)
                for url in images:
                    _get(url)
                with_images.append((time.perf_counter() - t0) * 1000)
            synthetic = _times(f"{base}/cases/{engine.store.cases(limit=1)[0][0].case_id}?partition=default", repeat)
        finally:
            web.stop()
            engine.store.close()
    return {"cases": cases, "build_s": build_s, "queue_rows_per_page": listed,
            "queue_first_page": _summary(queue),
            **({"queue_deep_page": {**_summary(deep), "page": deep_page}} if deep else {}),
            "case_view_real": _summary(view), "case_view_synthetic": _summary(synthetic),
            "case_view_real_with_images": {**_summary(with_images), "images": len(images)},
            "goals_ms": {"queue": 300, "case_view": 500}}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k in ("queue_first_page", "queue_deep_page", "case_view_synthetic", "case_view_real",
                         "case_view_real_with_images") if k in result]
    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(names))
    ax.bar(x - 0.2, [result[n]["p50_ms"] for n in names], 0.4, label="p50")
    ax.bar(x + 0.2, [result[n]["p99_ms"] for n in names], 0.4, label="p99")
    ax.axhline(result["goals_ms"]["queue"], color="grey", ls="--", label="queue goal")
    ax.axhline(result["goals_ms"]["case_view"], color="grey", ls=":", label="case view goal")
    ax.set_xticks(x, [n.replace("_", "\n") for n in names], fontsize=8)
    ax.set(ylabel="ms over HTTP (loopback)", title=f"Adjudication pages, {result['cases']:,} open cases")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=40)
    p.add_argument("--json", required=True, type=Path)
    p.add_argument("--plot", type=Path)
    args = p.parse_args(argv)
    result = run(args.cases, args.repeat)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        plot(result, args.plot)
    print(json.dumps({k: v for k, v in result.items() if isinstance(v, dict)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
