"""Sync bundle size and speed: ``python -m bench.sync --subjects 1000 10000 --json OUT``.

A field store with N synthetic face subjects (drawn like ``bench.search``'s) exports one
bundle per 5,000 changes to a country site whose gallery already holds N other subjects;
the country imports them through the engine, deduplicating each enrolment. Reported:
bytes per subject on the wire, export and import rates, and a second import of the same
bundles (idempotent: nothing applied).
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.search import STATS_DIR, draw
from bench.sizes import sizes_cli
from matcher.engine import Engine
from matcher.types import StoredTemplate, Subject
from store.sqlite import SubjectStore
from matcher.face.template import EmbeddingTemplate

MODEL = "face/dlib-resnet-v1"


def _subjects(prefix: str, n: int, seed: int) -> list[Subject]:
    xb = draw(STATS_DIR / "face.stats.npz", n, seed=seed)
    return [Subject(f"{prefix}{i}", "default", (StoredTemplate("face", 0, EmbeddingTemplate(MODEL, xb[i], 80)),))
            for i in range(n)]


def run(n: int, workdir: Path) -> dict:
    from enroll.face.pipeline import FACE_MODEL_ID
    from store.sealing import new_key
    import sync

    workdir.mkdir(parents=True)
    field_keys = sync.SiteKeys.create(workdir / "field", "field-1")
    country_keys = sync.SiteKeys.create(workdir / "country", "country")
    sync.Peers(workdir / "field").add(country_keys.identity())
    sync.Peers(workdir / "country").add(field_keys.identity())
    field = SubjectStore(workdir / "field" / "subjects.sqlite", new_key())
    country = SubjectStore(workdir / "country" / "subjects.sqlite", new_key())
    subjects = _subjects("F", n, seed=5)
    for start in range(0, n, 10_000):
        field.add_many(subjects[start:start + 10_000])
    country.add_many(_subjects("C", n, seed=6))
    engine = Engine(country, {"face": FACE_MODEL_ID})

    t0 = time.perf_counter()
    bundles = []
    after = 0
    while True:
        b = sync.export_bundle(field, field_keys, sync.Peers(workdir / "field"), "country", from_seq=after + 1)
        if not b.count:
            break
        bundles.append(b.data)
        after = b.last_seq
    export_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    applied = sum(sync.import_bundle(engine, country_keys, sync.Peers(workdir / "country"), d).applied
                  for d in bundles)
    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = sum(sync.import_bundle(engine, country_keys, sync.Peers(workdir / "country"), d).applied
                for d in bundles)
    reimport_s = time.perf_counter() - t0
    size = sum(len(d) for d in bundles)
    field.close()
    country.close()
    return {
        "subjects": n, "receiving_gallery": n, "bundles": len(bundles), "bundle_bytes": size,
        "bytes_per_subject": size / n, "export_s": export_s, "export_subjects_per_s": n / export_s,
        "import_s": import_s, "import_subjects_per_s": n / import_s, "applied": applied,
        "reimport_s": reimport_s, "reimport_applied": again,
    }


def main(argv: list[str] | None = None) -> int:
    return sizes_cli(__doc__, "subjects", [1000, 10_000], run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
