"""Gallery load time of fingers at server start: ``python -m bench.finger_startup --fingers 2000 20000 --json OUT``.

An encrypted store of N synthetic fingers (35 random minutiae each) is opened by an
engine twice: first as a store written before features were persisted (every finger's
MCC cylinders and index codes computed, then kept), then again (features decrypted and
loaded). Both in one run; the ratio is what persisting buys a restart.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from bench.sizes import sizes_cli  # noqa: E402

MODEL = "finger/leader-mcc-v1"


def _fingers(n: int, seed: int = 3) -> list:
    from matcher.finger.template import MinutiaeTemplate
    from matcher.types import StoredTemplate, Subject

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        m = np.column_stack([rng.uniform(40, 360, (35, 2)), rng.uniform(-np.pi, np.pi, 35), rng.integers(0, 2, 35),
                             rng.uniform(0.5, 1, 35)]).astype(np.float32)
        out.append(Subject(f"S{i}", "default", (StoredTemplate("finger", 1 + i % 10, MinutiaeTemplate(MODEL, m, 400, 400, 60)),)))
    return out


def run(n: int, workdir: Path) -> dict:
    from matcher.calibration import Calibration
    from matcher.engine import Engine
    from matcher.finger.matcher import MinutiaeMatcher
    from store.sealing import new_key
    from store.sqlite import SubjectStore

    kek = new_key()
    workdir.mkdir(parents=True)
    path = workdir / "subjects.sqlite"
    store = SubjectStore(path, kek)
    subjects = _fingers(n)
    t0 = time.perf_counter()
    for start in range(0, n, 5000):
        store.add_many(subjects[start:start + 5000])
    write_s = time.perf_counter() - t0
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE templates SET derived = NULL")  # as written before features were kept
    db.close()
    times = []
    for _ in range(2):
        store = SubjectStore(path, kek)
        t0 = time.perf_counter()
        engine = Engine(store, {}, matchers={"finger": MinutiaeMatcher(MODEL, Calibration.load(MODEL))})
        times.append(time.perf_counter() - t0)
        assert engine.matchers["finger"].size() == n
        store.close()
    return {"fingers": n, "enrol_write_s": write_s, "load_computing_s": times[0], "load_persisted_s": times[1],
            "load_computing_ms_per_finger": times[0] / n * 1e3, "load_persisted_ms_per_finger": times[1] / n * 1e3,
            "speedup": times[0] / times[1], "db_bytes_per_finger": path.stat().st_size / n}


def main(argv: list[str] | None = None) -> int:
    return sizes_cli(__doc__, "fingers", [2000, 20000], run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
