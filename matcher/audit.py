"""Duplicate audit of a gallery against itself (N:N): clusters of suspected duplicates.

Every enrolled subject is searched against its partition with the service's own matchers
and fusion, so an audit finds what deduplication at enrolment would have found: in one
batch search per modality where the galleries are in this process (faces: FAISS on every
core), else subject by subject through :meth:`matcher.engine.Engine.identify`. Each pair
at or below the FPIR limit is an edge, and the connected groups are the clusters, strongest first. Pairs a person has
already decided are different people (a subject's ``linked``) are left out. Clusters can
become adjudication cases (source ``audit``, kind ``AUDIT_CLUSTER``: "same" merges the
later enrolment into the earlier one, "different" links them), one per cluster, unless
one is open for its subject already.

Owns the typed results; imports the engine's public calls and :mod:`matcher.cases` only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from matcher.calibration import at_least_one
from matcher.cases import Case, CaseCandidate, CaseSource, new_case_id
from matcher.errors import NotFound
from matcher.fusion import evidence
from matcher.types import StoredTemplate


@dataclass(frozen=True)
class AuditPair:
    """Two subjects that search each other out: fused score (-log10 FMR) and FPIR."""

    subject_ids: tuple[str, str]
    score: float
    fpir: float


@dataclass(frozen=True)
class AuditCluster:
    partition: str
    subject_ids: tuple[str, ...]
    pairs: tuple[AuditPair, ...]

    @property
    def best_fpir(self) -> float:
        return min(p.fpir for p in self.pairs)


@dataclass(frozen=True)
class AuditReport:
    subjects: int
    max_fpir: float
    clusters: tuple[AuditCluster, ...]
    seconds: float
    cases: tuple[str, ...] = ()


def _gallery(engine, partition: str | None) -> dict[tuple[str, str], list[StoredTemplate]]:
    """Every enrolled subject's templates, read once per model from the store."""
    subjects: dict[tuple[str, str], list[StoredTemplate]] = {}
    for modality, matcher in engine.matchers.items():
        for p, sid, position, template in engine.store.templates(matcher.model_id):
            if partition is None or p == partition:
                subjects.setdefault((p, sid), []).append(StoredTemplate(modality, position, template))
    return subjects


def audit(engine, partition: str | None = None, max_fpir: float = 0.0,
          progress: Callable[[int, int], None] | None = None) -> AuditReport:
    """Search every subject of ``partition`` (None: every partition) against its partition.

    Args:
        max_fpir: the edge threshold (0: the engine's ``dedup_fpir``, as at enrolment).
        progress: called with (subjects searched, subjects) as the audit goes.
    """
    started = time.perf_counter()
    limit = max_fpir or engine.thresholds.dedup_fpir
    subjects = _gallery(engine, partition)
    k = engine.thresholds.max_candidates + 1  # the subject finds itself first
    if hasattr(engine.galleries, "search_many"):
        edges = _batched(engine, subjects, k, limit, progress)
    else:  # galleries elsewhere (cluster mode): each subject through identify
        edges = {}
        for n, ((p, sid), templates) in enumerate(subjects.items(), 1):
            for c in engine.identify(p, tuple(templates), max_candidates=k, max_fpir=limit):
                if c.subject_id != sid:
                    _keep(edges, p, sid, c.subject_id, c.score, c.fpir)
            if progress is not None:
                progress(n, len(subjects))
    edges = {key: e for key, e in edges.items() if not _decided(engine, key)}
    return AuditReport(len(subjects), limit, _clusters(edges), time.perf_counter() - started)


def _keep(edges: dict, p: str, x: str, y: str, score: float, fpir: float) -> None:
    a, b = sorted((x, y))
    old = edges.get((p, a, b))
    if old is None or fpir < old.fpir:
        edges[(p, a, b)] = AuditPair((a, b), score, fpir)


def _batched(engine, subjects: dict[tuple[str, str], list[StoredTemplate]], k: int, limit: float,
             progress: Callable[[int, int], None] | None) -> dict:
    """The batch path: every sample's shortlist in one search per modality and partition
    (faces: one FAISS batch on every core), then each shortlisted pair scored on all its
    samples both ways with the service's fusion, as identify would (with several samples
    a subject, a pair identify would rank past ``k`` after fusion is kept too)."""
    edges: dict = {}
    partitions: dict[str, list[tuple[str, list[StoredTemplate]]]] = {}
    for (p, sid), templates in subjects.items():
        partitions.setdefault(p, []).append((sid, templates))
    done = 0
    for p, members in partitions.items():
        probes = [(sid, t) for sid, templates in members for t in templates]
        hits = engine.galleries.search_many(p, [t for _, t in probes], k)
        templates_of = dict(members)
        n = len(members)
        pairs, scored = set(), {}
        for (sid, _), row in zip(probes, hits):
            for other, fmr in row:
                if other == sid:
                    continue
                if len(templates_of[sid]) == 1 and len(templates_of[other]) == 1:
                    scored[(sid, other)] = fmr  # one sample each: the search's rate is the fused one
                else:
                    pairs.add(tuple(sorted((sid, other))))
        for a, b in pairs:
            for probe, other in ((a, b), (b, a)):
                fmr = engine.galleries.score(p, [other], tuple(templates_of[probe])).get(other)
                if fmr is not None:
                    scored[(probe, other)] = fmr
        for (probe, other), fmr in scored.items():
            if at_least_one(fmr, n) <= limit:
                _keep(edges, p, probe, other, evidence(fmr), at_least_one(fmr, n))
        done += n
        if progress is not None:
            progress(done, len(subjects))
    return edges


def _decided(engine, key: tuple[str, str, str]) -> bool:
    """Whether a person already decided the pair are different people (a link either way)."""
    p, a, b = key
    try:
        return b in engine.store.get(p, a).linked or a in engine.store.get(p, b).linked
    except NotFound:  # erased during the audit
        return True


def _clusters(edges: dict[tuple[str, str, str], AuditPair]) -> tuple[AuditCluster, ...]:
    """Connected groups of the edges (union-find), strongest first, then largest."""
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def root(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for p, a, b in edges:
        parent[root((p, a))] = root((p, b))
    groups: dict[tuple[str, str], list] = {}
    for (p, a, b), pair in edges.items():
        groups.setdefault(root((p, a)), []).append(pair)
    clusters = [AuditCluster(top[0], tuple(sorted({s for pair in pairs for s in pair.subject_ids})),
                             tuple(sorted(pairs, key=lambda e: e.fpir)))
                for top, pairs in groups.items()]
    return tuple(sorted(clusters, key=lambda c: (c.best_fpir, -len(c.subject_ids), c.subject_ids)))


def open_cases(engine, report: AuditReport, by_name: str = "audit") -> tuple[str, ...]:
    """A case per cluster (its most recent enrolment against the others), unless that
    subject has an open case already; returns the case ids opened."""
    opened = []
    now = int(time.time() * 1000)
    for cluster in report.clusters:
        members = sorted((engine.store.get(cluster.partition, s) for s in cluster.subject_ids),
                         key=lambda s: (s.created_ns, s.subject_id))
        newest = members[-1]
        if engine.store.held_case(cluster.partition, newest.subject_id):
            continue
        edge = {s: min((e for e in cluster.pairs if s in e.subject_ids and newest.subject_id in e.subject_ids),
                       key=lambda e: e.fpir, default=None) for s in cluster.subject_ids if s != newest.subject_id}
        candidates = tuple(CaseCandidate(s, e.score if e else 0.0, e.fpir if e else 1.0,
                                         engine.sample_scores(cluster.partition, s, newest.templates))
                           for s, e in sorted(edge.items(), key=lambda kv: kv[1].fpir if kv[1] else 1.0))
        case = Case(new_case_id(), cluster.partition, newest.subject_id, CaseSource.AUDIT, "AUDIT_CLUSTER", now,
                    "", by_name, candidates=candidates, updated_ms=now)
        engine.store.open_case(case, ())
        opened.append(case.case_id)
    return tuple(opened)
