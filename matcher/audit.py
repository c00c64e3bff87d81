"""Duplicate audit of a gallery against itself (N:N): clusters of suspected duplicates.

Every enrolled subject is searched against its partition with the service's own matchers
and fusion, so an audit finds what deduplication at enrolment would have found: a block of
subjects at a time with a checkpoint in the store after each (an audit cut short goes on
from there), in one batch search per modality and block where the galleries are in this
process (faces: FAISS on every core), else subject by subject through
:meth:`matcher.engine.Engine.identify`. Each pair
at or below the FPIR limit is an edge, and the connected groups are the clusters, strongest first. Pairs a person has
already decided are different people (a subject's ``linked``) are left out. Clusters can
become adjudication cases (source ``audit``, kind ``AUDIT_CLUSTER``: "same" merges the
later enrolment into the earlier one, "different" links them), one per cluster, unless
one is open for its subject already.

Owns the typed results; imports the engine's public calls and :mod:`matcher.cases` only.
"""

from __future__ import annotations

import time
from collections import Counter
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
    """An audit's result. ``resumed``: subjects an earlier, interrupted run had searched
    (its checkpoint), not searched again."""

    subjects: int
    max_fpir: float
    clusters: tuple[AuditCluster, ...]
    seconds: float
    cases: tuple[str, ...] = ()
    resumed: int = 0


BLOCK = 10_000  # subjects searched between checkpoints: one batch search per modality each


def _gallery(engine, partition: str | None) -> dict[tuple[str, str], list[StoredTemplate]]:
    """Every enrolled subject's templates, read once per model from the store."""
    subjects: dict[tuple[str, str], list[StoredTemplate]] = {}
    for modality, matcher in engine.matchers.items():
        for p, sid, position, template in engine.store.templates(matcher.model_id):
            if partition is None or p == partition:
                subjects.setdefault((p, sid), []).append(StoredTemplate(modality, position, template))
    return subjects


def checkpoint_key(partition: str | None, limit: float) -> str:
    """What an audit's checkpoint is kept under: its partition (or all) and its threshold."""
    return f"{partition or '*'}|{limit!r}"


def audit(engine, partition: str | None = None, max_fpir: float = 0.0,
          progress: Callable[[int, int], None] | None = None, restart: bool = False,
          block: int = BLOCK) -> AuditReport:
    """Search every subject of ``partition`` (None: every partition) against its partition,
    ``block`` subjects at a time; after each block what was searched and found is kept in
    the store, so that an audit cut short goes on from there next time (``restart``: drop
    that and start over). Subjects enrolled since the checkpoint are searched when their
    turn comes; pairs with a subject erased since are dropped.

    Args:
        max_fpir: the edge threshold (0: the engine's ``dedup_fpir``, as at enrolment).
        progress: called with (subjects searched, subjects) at the start (searched: by an
            earlier run) and after each block; whatever it raises stops the audit, its
            checkpoint kept (a caller that went away).
    """
    started = time.perf_counter()
    limit = max_fpir or engine.thresholds.dedup_fpir
    key = checkpoint_key(partition, limit)
    saved = None if restart else engine.store.audit_checkpoint(key)
    subjects = _gallery(engine, partition)
    done = {(p, sid) for p, sid in saved["done"]} & subjects.keys() if saved else set()
    edges = {(p, a, b): AuditPair((a, b), score, fpir) for p, a, b, score, fpir in saved["edges"]} if saved else {}
    resumed = len(done)
    todo = sorted(subjects.keys() - done)
    k = engine.thresholds.max_candidates + 1  # the subject finds itself first
    sizes = Counter(p for p, _ in subjects)
    if progress is not None:  # where it starts: what an earlier run searched already
        progress(len(done), len(subjects))
    step = max(1, block)
    for at in range(0, len(todo), step):
        chunk = todo[at:at + step]
        if hasattr(engine.galleries, "search_many"):
            _batched(engine, subjects, chunk, sizes, k, limit, edges)
        else:  # galleries elsewhere (cluster mode): each subject through identify
            for p, sid in chunk:
                for c in engine.identify(p, tuple(subjects[(p, sid)]), max_candidates=k, max_fpir=limit):
                    if c.subject_id != sid:
                        _keep(edges, p, sid, c.subject_id, c.score, c.fpir)
        done.update(chunk)
        if at + len(chunk) < len(todo):
            engine.store.save_audit_checkpoint(key, {
                "done": sorted(done), "edges": [[*e, pair.score, pair.fpir] for e, pair in sorted(edges.items())]})
        if progress is not None:
            progress(len(done), len(subjects))
    engine.store.drop_audit_checkpoint(key)
    edges = {e: pair for e, pair in edges.items() if not _decided(engine, e)}
    report = AuditReport(len(subjects), limit, _clusters(edges), time.perf_counter() - started, resumed=resumed)
    engine.store.note_audit_result(partition or "*", {
        "unix_ms": int(time.time() * 1000), "subjects": report.subjects, "max_fpir": limit,
        "clusters": len(report.clusters), "subjects_in_clusters": sum(len(c.subject_ids) for c in report.clusters),
        "pairs": len(edges)})
    return report


def _keep(edges: dict, p: str, x: str, y: str, score: float, fpir: float) -> None:
    a, b = sorted((x, y))
    old = edges.get((p, a, b))
    if old is None or fpir < old.fpir:
        edges[(p, a, b)] = AuditPair((a, b), score, fpir)


def _batched(engine, subjects: dict[tuple[str, str], list[StoredTemplate]], chunk: list[tuple[str, str]],
             sizes: Counter, k: int, limit: float, edges: dict) -> None:
    """The batch path for a block of subjects: every sample's shortlist in one search per
    modality and partition (faces: one FAISS batch on every core), then each shortlisted
    pair scored on all its samples both ways with the service's fusion, as identify would
    (with several samples a subject, a pair identify would rank past ``k`` after fusion is
    kept too). FPIRs count each partition's whole size."""
    partitions: dict[str, list[str]] = {}
    for p, sid in chunk:
        partitions.setdefault(p, []).append(sid)
    for p, members in partitions.items():
        probes = [(sid, t) for sid in members for t in subjects[(p, sid)]]
        hits = engine.galleries.search_many(p, [t for _, t in probes], k)
        n = sizes[p]
        pairs, scored = set(), {}
        for (sid, _), row in zip(probes, hits):
            for other, fmr in row:
                if other == sid or (p, other) not in subjects:
                    continue
                if len(subjects[(p, sid)]) == 1 and len(subjects[(p, other)]) == 1:
                    scored[(sid, other)] = fmr  # one sample each: the search's rate is the fused one
                else:
                    pairs.add(tuple(sorted((sid, other))))
        # Each subject against every subject it was paired with, in one call (in cluster mode
        # one round to the shards holding them).
        against: dict[str, list[str]] = {}
        for a, b in sorted(pairs):
            against.setdefault(a, []).append(b)
            against.setdefault(b, []).append(a)
        for probe, others in against.items():
            for other, fmr in engine.galleries.score(p, others, tuple(subjects[(p, probe)])).items():
                scored[(probe, other)] = fmr
        for (probe, other), fmr in scored.items():
            if at_least_one(fmr, n) <= limit:
                _keep(edges, p, probe, other, evidence(fmr), at_least_one(fmr, n))


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
