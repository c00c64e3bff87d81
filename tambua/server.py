"""The gRPC server: servicer (proto <-> engine), errors, request ids, metrics, health, reflection.

``create_server(config, engine)`` returns the server and the ports it bound (tests bind port 0).
"""

from __future__ import annotations

import faulthandler
import functools
import json
import logging
import os
import queue
import shutil
import signal
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from enroll.finger import networks
from enroll.finger.networks import NETWORKS
from enroll.image import image_info
from matcher.cases import Actor, Case, CaseState, Decision, SampleImage, Verdict
from matcher.engine import MODALITIES, Engine
from matcher.finger.iso19794 import export_record
from matcher import memory
from matcher.errors import FailedPrecondition, ImageDecodeError, InvalidInput, ModelMismatch, NotFound, QualityError
from matcher.repository import Flag, Refusal
from matcher.types import Capture, normalise_id
import sync
from tambua import doctor, quality
from tambua.audit import KEY_NAME as AUDIT_KEY, AuditLog
from tambua.auth import ALL_PARTITIONS, AccessStore, AuthInterceptor, current, note_touched, partition_of
from tambua.config import Config, duration_s
from tambua.context import RequestIdFilter
from tambua.doctor import SiteWatch
from tambua.extraction import Extraction, Extractor, SampleInput
from tambua.interceptors import CallMetrics, RequestIds
from sync.site import SiteKeys
from tambua.status import abort, code_of
from tambua.v1 import tambua_pb2 as pb
from tambua.v1 import tambua_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

# Each registered modality's proto enum value is its name in upper case.
_MODALITY = {pb.Modality.Value(name.upper()): name for name in MODALITIES}
_MODALITY_PB = {v: k for k, v in _MODALITY.items()}
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Matcher"].full_name


class Metrics:
    """Prometheus metrics on an injected registry (a fresh one per test)."""

    def __init__(self, registry: CollectorRegistry, engine: Engine) -> None:
        self.registry = registry
        self.rpcs = Counter("tambua_rpc_total", "RPCs by method, the modalities of their samples and status",
                            ["method", "modality", "code"], registry=registry)
        self.latency = Histogram(
            "tambua_rpc_seconds", "RPC latency", ["method", "modality"], registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.stages = Histogram(
            "tambua_stage_seconds", "Extraction and search time", ["stage", "modality"], registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
        )
        self.rejections = Counter("tambua_quality_rejections_total", "Samples rejected by reason", ["reason"],
                                  registry=registry)
        self.enrolments = Counter("tambua_enrolments_total", "Enrol calls by outcome (ENROLLED, DUPLICATE, "
                                  "HELD, ...)", ["outcome"], registry=registry)
        self.decisions = Counter("tambua_case_decisions_total", "Adjudication decisions by verdict", ["verdict"],
                                 registry=registry)
        self.refusals = Counter("tambua_refused_total", "Calls refused before any servicer ran (no or bad "
                                "credentials, a role or partition not granted, a malformed message)",
                                ["method", "code", "reason"], registry=registry)

        class _Gallery:
            def collect(self_inner):
                g = GaugeMetricFamily("tambua_gallery_templates", "Indexed templates", labels=["modality"])
                sizes = engine.galleries.sizes()
                for modality, matcher in engine.matchers.items():
                    g.add_metric([modality], sizes.get(matcher.model_id, 0))
                yield g
                yield GaugeMetricFamily("tambua_subjects", "Enrolled subjects", value=engine.store.count())
                cases = GaugeMetricFamily("tambua_cases", "Adjudication cases by state and source (enrol, sync, "
                                          "audit)", labels=["state", "source"])
                for state in CaseState:
                    by_source: dict[str, int] = {}
                    for (_, source), n in engine.store.case_counts(None, state).items():
                        by_source[source] = by_source.get(source, 0) + n
                    for source, n in sorted(by_source.items()):
                        cases.add_metric([state.value, source], n)
                yield cases

        registry.register(_Gallery())

    def note_refused(self, method: str | None, error: Exception) -> None:
        """A call the authentication interceptor refused, by its reason (a brute force shows
        here); :class:`tambua.interceptors.CallMetrics` counts it with every other call."""
        code = code_of(error).name
        self.refusals.labels(method or "other", code, getattr(error, "reason", code)).inc()

    def watch_cluster(self, engine) -> None:
        """Cluster mode: per shard copy, read at scrape time from the coordinator (bounded
        labels: shards x copies)."""

        class _Shards:
            def collect(self_inner):
                labels = ["shard", "copy", "node"]
                subjects = GaugeMetricFamily("tambua_shard_subjects", "Subjects a shard copy holds", labels=labels)
                resident = GaugeMetricFamily("tambua_shard_resident_bytes", "Resident memory of a shard copy's process",
                                             labels=labels)
                searches = CounterMetricFamily("tambua_shard_searches", "Searches a shard copy answered", labels=labels)
                seconds = CounterMetricFamily("tambua_shard_search_seconds", "Time a shard copy spent searching",
                                              labels=labels)
                unserved = GaugeMetricFamily("tambua_cluster_unserved_shards", "Shards with no copy answering")
                state = engine.cluster_status()
                for c in state["shards"]:
                    key = [str(c["shard"]), str(c["copy"]), c["node"][:12]]
                    subjects.add_metric(key, c["subjects"])
                    resident.add_metric(key, c["resident_bytes"])
                    searches.add_metric(key, c["searches"])
                    seconds.add_metric(key, c["search_seconds"])
                unserved.add_metric([], len(state["unserved_shards"]))
                yield from (subjects, resident, searches, seconds, unserved)

        self.registry.register(_Shards())

    def watch_sync(self, watch: SiteWatch) -> None:
        """Per-peer sync gauges and the site's health (what docker/alerts.yml watches), read at
        scrape time from the store (bounded labels: configured peers)."""

        class _Sync:
            def collect(self_inner):
                def family(name, help_):
                    return GaugeMetricFamily(name, help_, labels=["peer"])

                pending = family("tambua_sync_pending_changes", "Changes a peer has not acknowledged (made or relayed here)")
                seen = family("tambua_sync_last_success_timestamp_seconds", "Last import from or acknowledgement by the peer")
                refused = family("tambua_sync_refused_bundles", "Bundles from the peer refused")
                gaps = family("tambua_sync_sequence_gaps", "Bundles from the peer that skipped changes")
                lag = family("tambua_sync_lag_seconds", "Since the last successful sync with the peer (or since it "
                             "was added, if it never synced)")
                limit = family("tambua_sync_max_lag_seconds", "The peer's sync limit (sync_max_lag)")
                waited = family("tambua_sync_oldest_pending_age_seconds", "How long the oldest change the peer has "
                                "not acknowledged has waited (0: none)")
                last_refused = family("tambua_sync_last_refused_timestamp_seconds", "When a bundle from the peer was "
                                      "last refused (0: never)")
                now = int(time.time() * 1000)
                for site, f in watch.peer_facts().items():
                    p = f.state
                    pending.add_metric([site], f.pending)
                    seen.add_metric([site], (f.last_success_ms() or 0) / 1000.0)
                    refused.add_metric([site], p.refused)
                    gaps.add_metric([site], p.gaps)
                    lag.add_metric([site], f.lag_s(now) or 0.0)
                    limit.add_metric([site], f.max_lag_s)
                    waited.add_metric([site], max(0, now - f.oldest_pending_ms) / 1000 if f.oldest_pending_ms else 0.0)
                    last_refused.add_metric([site], (p.last_refused_ms or 0) / 1000.0)
                yield from (pending, seen, refused, gaps, lag, limit, waited, last_refused)

                usage = shutil.disk_usage(watch.data_dir)
                yield GaugeMetricFamily("tambua_data_disk_free_bytes", "Free bytes under the data directory",
                                        value=usage.free)
                yield GaugeMetricFamily("tambua_data_disk_size_bytes", "Size of the data directory's file system",
                                        value=usage.total)
                yield GaugeMetricFamily("tambua_data_disk_min_free_ratio", "The share of the disk to keep free "
                                        "(disk_min_free)", value=watch.disk_min_free)
                if watch.audit_state is not None:
                    ok, checked = watch.audit_state
                    yield GaugeMetricFamily("tambua_audit_chain_ok", "1 when the audit chain held at its last "
                                            "check (hourly), 0 when it did not", value=int(ok))
                    yield GaugeMetricFamily("tambua_audit_checked_timestamp_seconds", "When the audit chain was "
                                            "last checked", value=checked / 1000.0)
                if watch.enrolment_stall_s is not None:
                    yield GaugeMetricFamily("tambua_enrolment_stall_seconds", "Enrolling nobody this long is "
                                            "reported (enrolment_stall)", value=watch.enrolment_stall_s)
                last = watch.store.last_enrolled_ms()
                yield GaugeMetricFamily("tambua_last_enrolment_timestamp_seconds", "When the newest subject was "
                                        "enrolled (0: none yet)", value=(last or 0) / 1000.0)

        self.registry.register(_Sync())

    def timing(self, stage: str, modality: str, seconds: float) -> None:
        self.stages.labels(stage, modality).observe(seconds)


def _samples(msgs) -> list[SampleInput]:
    out = []
    for s in msgs:
        if s.modality not in _MODALITY:
            raise InvalidInput("sample modality is missing or unknown")
        kind = s.WhichOneof("data")
        out.append(SampleInput(_MODALITY[s.modality], s.position,
                               image=s.image if kind == "image" else None,
                               template=s.template if kind == "template" else None, dpi=s.dpi))
    return out


def _image_size(s: SampleInput) -> tuple[int, int, int]:
    """(width, height, dpi) of a sample's image from its header; the dpi the request gives wins."""
    width, height, dpi = image_info(s.image)
    return width, height, s.dpi or dpi


def _deadline(context) -> float | None:
    """The call's deadline on ``time.monotonic()``'s clock, or None without one."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _template_pb(t) -> pb.Template:
    iso = export_record([(t.position, t.template)]) if t.modality == "finger" else b""
    return pb.Template(modality=_MODALITY_PB[t.modality], position=t.position, model_id=t.template.model_id,
                       data=t.template.to_bytes(), quality=t.template.quality, iso19794_2=iso,
                       quality_components=dict(t.template.components))


def _rpc(method):
    """Wraps a servicer method in the one error-to-status mapping (the interceptors around
    it give the call its request id, count and time it, and authenticate it)."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except Exception as e:  # noqa: BLE001 - every error leaves through the one mapping
            self._reject(method.__name__, e, context)

    return wrapper


def _flag_pb(f: Flag) -> pb.FlaggedEnrolment:
    return pb.FlaggedEnrolment(subject_id=f.subject_id, partition=f.partition, kind=f.kind,
                               candidates=list(f.candidates), site=f.site)


_CASE_STATE_PB = {CaseState.OPEN: pb.CASE_OPEN, CaseState.DECIDED: pb.CASE_DECIDED,
                  CaseState.WITHDRAWN: pb.CASE_WITHDRAWN}
_CASE_STATE = {v: k for k, v in _CASE_STATE_PB.items()}
_VERDICT_PB = {Verdict.SAME: pb.SAME_PERSON, Verdict.DIFFERENT: pb.DIFFERENT_PEOPLE, Verdict.RECAPTURE: pb.RECAPTURE}
_VERDICT = {v: k for k, v in _VERDICT_PB.items()}


def _decision_pb(d: Decision) -> pb.CaseDecision:
    return pb.CaseDecision(verdict=_VERDICT_PB[d.verdict], principal_id=d.principal_id,
                           principal_name=d.principal_name, unix_ms=d.unix_ms, reason=d.reason,
                           subject_id=d.subject_id, attached=d.attached, candidates=list(d.candidates),
                           removed=d.removed, site=d.site, decided_in=d.case_id)


def _case_pb(case: Case, templates=()) -> pb.Case:
    decision = None if case.decision is None else _decision_pb(case.decision)
    return pb.Case(
        case_id=case.case_id, partition=case.partition, subject_id=case.subject_id,
        state=_CASE_STATE_PB[case.state], source=case.source.value, kind=case.kind, site=case.site,
        principal_name=case.principal_name, created_unix_ms=case.created_ms,
        candidates=[pb.CaseCandidate(subject_id=c.subject_id, score=c.score, fpir=c.fpir, vouched_fpir=c.vouched_fpir,
                                     samples=[pb.SampleScore(modality=_MODALITY_PB[x.modality], position=x.position,
                                                             score=x.score, fmr=x.fmr) for x in c.samples])
                    for c in case.candidates],
        attempts=[pb.CaseAttempt(unix_ms=a.unix_ms, principal_name=a.principal_name, subject_id=a.subject_id,
                                 score=a.score) for a in case.attempts],
        decision=decision, templates=[_template_pb(t) for t in templates],
        conflicting=[_decision_pb(d) for d in case.conflicting], supersedes=list(case.supersedes))


def _peer_status(store, site: str) -> pb.PeerStatus:
    p = store.peer(site)
    return pb.PeerStatus(site=site, pending=store.pending(site), acked_seq=p.acked_seq,
                         applied_seq=p.applied_seq, last_import_unix_ms=p.last_import_ms or 0,
                         last_export_unix_ms=p.last_export_ms or 0, last_ack_unix_ms=p.last_ack_ms or 0,
                         refused=p.refused, gaps=p.gaps,
                         audit_head=f"{p.audit_seq}:{p.audit_hash}" if p.audit_seq is not None else "")


class MatcherServicer(pb_grpc.MatcherServicer):
    def __init__(self, engine: Engine, extraction: Extraction, metrics: Metrics, audit: AuditLog | None = None,
                 site: SiteKeys | None = None, peers: sync.Peers | None = None, watch: SiteWatch | None = None) -> None:
        self.engine = engine
        self.extraction = extraction
        self.metrics = metrics
        self.audit = audit
        self.site = site
        self.peers = peers
        self.watch = watch

    def _reject(self, name: str, e: Exception, context) -> None:
        """Log, count and end the call with ``e``'s status (raises)."""
        code = code_of(e)
        if code is grpc.StatusCode.INTERNAL:
            log.exception("%s failed", name)
        else:
            log.info("%s rejected: %s", name, getattr(e, "reason", code.name))
            if isinstance(e, QualityError) or getattr(e, "reason", "").startswith("IMAGE_"):
                self.metrics.rejections.labels(e.reason).inc()
        abort(context, e)

    @staticmethod
    def _model_ids(templates) -> list[str]:
        """The models that made this request's templates, in sample order."""
        return list(dict.fromkeys(t.template.model_id for t in templates))

    @_rpc
    def Enroll(self, request, context):
        # Ids and positions first: a bad one is refused before seconds of extraction.
        subject_id, partition = normalise_id(request.subject_id), normalise_id(partition_of(request), "partition")
        if len(request.import_key) > 200:
            raise InvalidInput("import_key has at most 200 characters")
        deadline = _deadline(context)
        samples = _samples(request.samples)
        by = self._actor()
        try:
            templates = self.extraction.templates(samples, deadline, enrolment=True)
        except (QualityError, ImageDecodeError) as e:
            self._note_refusal(partition, by, e)
            raise
        # Kept (sealed) only where a case holds them or keep_images says so; never logged.
        images = tuple(SampleImage(s.modality, s.position, s.image) for s in samples if s.image)
        capture = Capture(by.principal_name, by.site, tuple(
            (s.modality, s.position, *_image_size(s)) for s in samples if s.image))
        r = self.engine.enroll(subject_id, partition, templates, force=request.force,
                               adjudicated=tuple(request.adjudicated_candidates), deadline=deadline,
                               hold=request.hold, by=by, images=images, import_key=request.import_key,
                               dedup=not request.skip_dedup, capture=capture)
        self.metrics.enrolments.labels(r.outcome).inc()
        return pb.EnrollResponse(
            outcome=pb.EnrollResponse.Outcome.Value(r.outcome),
            subject_id=r.subject_id,
            candidates=[pb.Candidate(subject_id=c.subject_id, score=c.score, fpir=c.fpir) for c in r.candidates],
            templates=[_template_pb(t) for t in r.templates],
            model_ids=self._model_ids(r.templates),
            case_id=r.case_id,
            clear_match=r.clear_match,
            replayed=r.replayed,
        )

    def _note_refusal(self, partition: str, by: Actor, e: Exception) -> None:
        """Keep a capture the enrolment refused, for the data-quality report (failure to enrol)."""
        sample = getattr(e, "sample", None)
        if sample is None:
            return
        width, height, _ = _image_size(sample) if sample.image else (0, 0, 0)
        try:
            self.engine.store.note_refusal(Refusal(int(time.time() * 1000), partition, sample.modality, sample.position,
                                                   e.reason, by.principal_name, by.site, width, height))
        except Exception:  # noqa: BLE001 - the caller gets the refusal's reason, not a bookkeeping failure
            log.exception("could not record a refused capture")

    def _actor(self) -> Actor:
        """Who the current call is, as a case records it."""
        principal = current.get()
        return Actor(principal.id, principal.name, self.site.site if self.site else "")

    @_rpc
    def ListCases(self, request, context):
        now_ms = int(time.time() * 1000)
        partition = normalise_id(partition_of(request), "partition")
        state = None if request.state == pb.CASE_ANY else _CASE_STATE.get(request.state, CaseState.OPEN)
        cases, token = self.engine.store.cases(
            [partition], state, request.source,
            created_before_ms=now_ms - request.min_age_s * 1000 if request.min_age_s else 0,
            created_after_ms=now_ms - request.max_age_s * 1000 if request.max_age_s else 0,
            after=request.page_token, limit=min(request.limit or 100, 1000))
        note_touched(c.subject_id for c in cases)
        counts = self.engine.store.case_counts([partition])
        return pb.ListCasesResponse(cases=[_case_pb(c) for c in cases], next_page_token=token,
                                    open_by_source={source: n for (_, source), n in counts.items()})

    @_rpc
    def GetCase(self, request, context):
        partition = partition_of(request)
        case = self.engine.store.case(partition, request.case_id)
        note_touched([case.subject_id])
        return _case_pb(case, self.engine.capture(partition, case)[0])

    @_rpc
    def DecideCase(self, request, context):
        if request.verdict not in _VERDICT:
            raise InvalidInput("verdict is missing: SAME_PERSON, DIFFERENT_PEOPLE or RECAPTURE", "VERDICT_UNKNOWN")
        case = self.engine.decide(partition_of(request), request.case_id, _VERDICT[request.verdict], request.reason,
                                  self._actor(), subject_id=request.subject_id, attach=not request.discard)
        self.metrics.decisions.labels(pb.Verdict.Name(request.verdict)).inc()
        note_touched([case.subject_id])
        return _case_pb(case)

    def _audit(self, request, progress=None) -> pb.AuditDuplicatesResponse:
        if not 0 <= request.max_fpir < 1:
            raise InvalidInput("max_fpir must be within [0, 1)")
        # A callback cannot cross to a cluster's coordinator: there the audit reports at its end.
        r = self.engine.audit(partition_of(request) or "default", request.max_fpir, request.open_cases,
                              progress=progress if isinstance(self.engine, Engine) else None,
                              restart=request.restart, block=request.block)
        note_touched(s for c in r.clusters for s in c.subject_ids)
        return pb.AuditDuplicatesResponse(
            subjects=r.subjects, max_fpir=r.max_fpir, seconds=r.seconds, case_ids=list(r.cases), resumed=r.resumed,
            clusters=[pb.AuditCluster(partition=c.partition, subject_ids=list(c.subject_ids), best_fpir=c.best_fpir,
                                      pairs=[pb.AuditPair(subject_ids=list(p.subject_ids), score=p.score, fpir=p.fpir)
                                             for p in c.pairs]) for c in r.clusters])

    @_rpc
    def AuditDuplicates(self, request, context):
        return self._audit(request)

    def RunAudit(self, request, context):
        """The audit in a worker thread, its progress streamed as it goes; a client that
        leaves stops it at the next block (the checkpoint stays for the next run)."""
        events: queue.Queue = queue.Queue()
        gone = threading.Event()
        started = time.monotonic()

        def progress(searched: int, subjects: int) -> None:
            if gone.is_set() or not context.is_active():
                raise FailedPrecondition("the audit's caller went away; its checkpoint stays", "AUDIT_STOPPED")
            events.put((searched, subjects))

        def work() -> None:
            try:
                events.put(self._audit(request, progress))
            except BaseException as e:  # noqa: BLE001 - handed to the stream, mapped there
                events.put(e)

        try:
            threading.Thread(target=work, name="audit", daemon=True).start()
            while True:
                event = events.get()
                if isinstance(event, BaseException):
                    raise event
                if isinstance(event, pb.AuditDuplicatesResponse):
                    yield pb.AuditProgress(searched=event.subjects, subjects=event.subjects,
                                           seconds=time.monotonic() - started, result=event)
                    return
                yield pb.AuditProgress(searched=event[0], subjects=event[1], seconds=time.monotonic() - started)
        except GeneratorExit:  # the client left: the worker stops at its next block
            gone.set()
            raise
        except Exception as e:  # noqa: BLE001 - the same one mapping as every unary call
            self._reject("RunAudit", e, context)

    @_rpc
    def QualityReport(self, request, context):
        store, principal = self.engine.store, current.get()
        partitions = ([normalise_id(p, "partition") for p in request.partitions]
                      or [p for p in store.partitions() if principal.may_use(p)])
        since = request.since_unix_ms
        peers = {site: quality.Peer(store.peer(site), store.pending(site)) for site in self.peers.all()} \
            if self.peers else {}
        report = quality.build(
            [f for f in store.sample_facts(partitions) if f.unix_ms >= since], store.refusals(partitions, since),
            partitions, {state.value: store.case_counts(partitions, state) for state in CaseState}, peers,
            self.site.site if self.site else "",
            # An audit of every partition is counted for those who may see every partition.
            audits={p: a for p, a in store.audit_results().items() if p != "*" or ALL_PARTITIONS in principal.partitions})
        return pb.QualityReportResponse(report_json=json.dumps(report, sort_keys=True))

    @_rpc
    def Doctor(self, request, context):
        if self.watch is None:
            raise FailedPrecondition("this server was built without its site checks")
        report = doctor.report(self.watch.findings(), self.site.site if self.site else "")
        return pb.DoctorResponse(report_json=json.dumps(report, sort_keys=True), ok=report["ok"])

    @_rpc
    def Identify(self, request, context):
        within = frozenset(request.within_subject_ids) if request.within_subject_ids else None
        deadline = _deadline(context)
        templates = self.extraction.templates(_samples(request.samples), deadline)
        cands = self.engine.identify(partition_of(request), templates, request.max_candidates, within, deadline,
                                     request.max_fpir)
        return pb.IdentifyResponse(
            candidates=[pb.Candidate(subject_id=c.subject_id, score=c.score, fpir=c.fpir) for c in cands],
            model_ids=self._model_ids(templates),
        )

    @_rpc
    def Verify(self, request, context):
        subject_id = normalise_id(request.subject_id)  # before extraction, as for Enroll
        deadline = _deadline(context)
        r = self.engine.verify(subject_id, partition_of(request),
                               self.extraction.templates(_samples(request.samples), deadline), deadline)
        return pb.VerifyResponse(match=r.match, score=r.score, fmr=r.fmr, model_ids=[r.model_id])

    @_rpc
    def Compare(self, request, context):
        a, b = self.extraction.templates(_samples([request.a, request.b]), _deadline(context), one_per_position=False)
        r = self.engine.compare(a, b)
        return pb.CompareResponse(score=r.score, fmr=r.fmr, model_id=r.model_id)

    @_rpc
    def Extract(self, request, context):
        templates = self.extraction.templates(_samples(request.samples), _deadline(context))
        return pb.ExtractResponse(templates=[_template_pb(t) for t in templates])

    def _subject_pb(self, request) -> pb.GetSubjectResponse:
        s = self.engine.store.get(partition_of(request), request.subject_id)
        return pb.GetSubjectResponse(subject_id=s.subject_id, partition=s.partition,
                                     templates=[_template_pb(t) for t in s.templates],
                                     created_unix_ms=s.created_ns // 1_000_000, linked_subject_ids=list(s.linked),
                                     encounters=len(self.engine.store.encounters(s.partition, s.subject_id)))

    @_rpc
    def GetSubject(self, request, context):
        return self._subject_pb(request)

    @_rpc
    def ExportSubject(self, request, context):
        subject = self._subject_pb(request)  # NOT_FOUND before any image is read
        images = self.engine.store.subject_images(subject.partition, subject.subject_id)
        return pb.SubjectExport(subject=subject, images=[
            pb.SampleImage(modality=_MODALITY_PB[i.modality], position=i.position, data=i.data) for i in images])

    @_rpc
    def DeleteSubject(self, request, context):
        self.engine.delete(partition_of(request), request.subject_id)
        return pb.DeleteSubjectResponse()

    @_rpc
    def ReadAudit(self, request, context):
        if self.audit is None:
            raise NotFound("this server keeps no audit log")
        seq, head = self.audit.head
        store = self.engine.store
        about = store.pseudonym(request.subject_id) if request.subject_id else None
        entries = self.audit.read(request.after_seq, min(request.limit or 1000, 10_000), about)
        # The log keeps pseudonyms: shown as ids for subjects still enrolled and for the one
        # asked about; an erased subject stays a pseudonym.
        ids = store.resolve(p for e in entries for p in e.subject_ids)
        if about is not None:
            ids[about] = request.subject_id
        return pb.ReadAuditResponse(
            entries=[pb.AuditEntry(seq=e.seq, unix_ms=e.unix_ms, principal_id=e.principal_id,
                                   principal_name=e.principal_name, rpc=e.rpc, partition=e.partition,
                                   subject_ids=[ids.get(p, p) for p in e.subject_ids], outcome=e.outcome,
                                   prev_hash=e.prev, hash=e.hash) for e in entries],
            head_seq=seq, head_hash=head)

    def _site(self) -> SiteKeys:
        if self.site is None:
            raise FailedPrecondition("this server has no site identity: run `tambua sync identity --site-id ID` "
                                     "on its data directory and restart", "NO_SITE_IDENTITY")
        return self.site

    @_rpc
    def SyncExport(self, request, context):
        b = sync.export_bundle(self.engine.store, self._site(), self.peers, request.to_site,
                               min(request.limit or sync.MAX_CHANGES, sync.MAX_CHANGES), request.from_seq,
                               self.audit.head if self.audit is not None else None)
        note_touched(b.subject_ids)  # biometric data leaving the site: the audit names whose
        return pb.SyncBundle(data=b.data, first_seq=b.first_seq, last_seq=b.last_seq, count=b.count)

    @_rpc
    def SyncImport(self, request, context):
        return self._import(request.data)

    def SyncPush(self, request_iterator, context):
        """Online sync: a peer streams its bundles; each is imported as by SyncImport and
        answered at once with its acknowledgement, so a broken stream resumes from the
        last acknowledged change (tambua.push.push)."""
        try:
            for request in request_iterator:
                yield self._import(request.data)
        except Exception as e:  # noqa: BLE001 - the same one mapping as every unary call
            self._reject("SyncPush", e, context)

    def _import(self, data: bytes) -> pb.SyncImportResponse:
        site = self._site()
        if data[:4] == sync.ACK_MAGIC:
            peer, acked = sync.import_ack(self.engine.store, site, self.peers, data)
            return pb.SyncImportResponse(from_site=peer, was_ack=True, acked_seq=acked)
        r = sync.import_bundle(self.engine, site, self.peers, data)
        note_touched(r.subject_ids)
        return pb.SyncImportResponse(
            from_site=r.from_site, first_seq=r.first_seq, last_seq=r.last_seq, applied=r.applied, already=r.already,
            flagged=[_flag_pb(f) for f in r.flagged],
            ack=r.ack)

    @_rpc
    def SyncStatus(self, request, context):
        store = self.engine.store
        return pb.SyncStatusResponse(
            site=self.site.site if self.site else "", last_seq=store.last_seq(),
            peers=[_peer_status(store, site) for site in sorted(self.peers.all())],
            flagged=[_flag_pb(f) for f in store.flags()])

    @_rpc
    def Stats(self, request, context):
        return pb.StatsResponse(
            subjects=self.engine.store.count(),
            templates_by_model=self.engine.galleries.sizes(),
            subjects_by_partition=self.engine.store.count_by_partition(),
        )


@dataclass(frozen=True)
class Bound:
    """A built server and the ports it bound (config ports may be 0).

    Attributes:
        port: gRPC (API keys in mixed mode).
        metrics_port: Prometheus; -1 when disabled.
        mtls_port: client certificates in mixed mode; -1 otherwise.
    """

    server: grpc.Server
    port: int
    metrics_port: int
    mtls_port: int = -1
    health: health.HealthServicer | None = None
    access: AccessStore | None = None  # the principals (None: insecure mode)
    audit: AuditLog | None = None
    site: str = ""
    watch: SiteWatch | None = None


def create_server(config: Config, engine: Engine, extractors: dict[str, Extractor],
                  registry: CollectorRegistry | None = None) -> Bound:
    """Build (not start) the server: ``extractors`` turn the requests' images into the
    templates ``engine`` matches."""
    registry = registry or CollectorRegistry()
    metrics = Metrics(registry, engine)
    engine.observer = metrics
    limit = config.max_message_mb * 1024 * 1024
    access = None if config.insecure else AccessStore(config.data_dir / "access.sqlite", engine.store)
    refused = [r.principal.id for r in access.list() if not r.authentic and r.revoked_unix_ms is None] if access else []
    if access is not None:
        access.set_policy({"key_lifetime_days": config.key_lifetime_days})
    if refused:
        log.warning("%d principals fail authentication and are refused: %s (rows from before row MACs: "
                    "check them with `tambua keys list`, then `tambua keys seal`)", len(refused), ", ".join(refused))
    audit = AuditLog(config.data_dir / "audit.jsonl", engine.store.derive_key(AUDIT_KEY), engine.store.pseudonyms())
    guard = AuthInterceptor(access, abort, api_keys=config.api_keys, audit=audit, on_refused=metrics.note_refused)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.workers),
        # Outermost first: the request id, then the call metrics (refusals included), then
        # authentication, authorisation and audit; the servicer maps errors to statuses.
        interceptors=[RequestIds(), CallMetrics(metrics.rpcs, metrics.latency), guard],
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
    )
    peers = sync.Peers(config.data_dir)
    watch = SiteWatch(engine.store, peers, audit, config.data_dir, config.max_lag_s,
                      duration_s(config.enrolment_stall) if config.enrolment_stall else None, config.disk_min_free)
    metrics.watch_sync(watch)
    if hasattr(engine, "cluster_status"):
        metrics.watch_cluster(engine)
    site = SiteKeys.load(config.data_dir, engine.store)
    # Which site this server is, for dashboards to name instances by (joined on instance).
    Gauge("tambua_site_info", "This server's site id (sync identity; standalone: none)", ["site"],
          registry=registry).labels(site.site if site else "standalone").set(1)
    pb_grpc.add_MatcherServicer_to_server(
        MatcherServicer(engine, Extraction(extractors, engine), metrics, audit, site, peers, watch), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{config.host}:{config.port}"
    mtls_port = -1
    if config.insecure:
        log.warning("INSECURE MODE: plain-text gRPC and no authentication; for local development only")
        port = server.add_insecure_port(address)
    elif config.mixed_mode:
        port = server.add_secure_port(address, _credentials(config, client_certificates=False))
        mtls_port = server.add_secure_port(f"{config.host}:{config.mtls_port}",
                                           _credentials(config, client_certificates=True))
        guard.cert_port = mtls_port
    else:
        port = server.add_secure_port(address, _credentials(config, client_certificates=config.client_ca is not None))
    metrics_port = -1
    if config.metrics_port >= 0:
        http, _ = start_http_server(config.metrics_port, addr=config.host, registry=registry)
        metrics_port = http.server_port
    return Bound(server, port, metrics_port, mtls_port, health_servicer, access, audit, site.site if site else "", watch)


def _credentials(config: Config, client_certificates: bool) -> grpc.ServerCredentials:
    """TLS; with ``client_certificates`` mutual TLS: a certificate from ``client_ca`` is
    required to connect (grpcio cannot request one without requiring it, hence a port each
    in mixed mode)."""
    chain = [(config.tls_key.read_bytes(), config.tls_cert.read_bytes())]
    if not client_certificates:
        return grpc.ssl_server_credentials(chain)
    return grpc.ssl_server_credentials(chain, root_certificates=config.client_ca.read_bytes(),
                                       require_client_auth=True)


def refuse_foreign_templates(stored: dict[tuple[str, str], int], running: dict[str, str]) -> None:
    """Refuse to serve a store holding templates that no running model can search.

    Such subjects would silently drop out of deduplication (e.g. fingers enrolled with
    ``finger_network = "leader"`` on a server started with ``"lite"``).

    Raises:
        ModelMismatch: naming the stored models and the setting that matches them.
    """
    foreign = {k: n for k, n in stored.items() if running.get(k[0], k[1]) != k[1]}
    if foreign:
        found = ", ".join(f"{n} {modality} templates of {model}" for (modality, model), n in sorted(foreign.items()))
        settings = ", ".join(f"{name} = {net.model_id}" for name, net in NETWORKS.items())
        raise ModelMismatch(f"the store holds {found}, which this server ({', '.join(sorted(running.values()))}) "
                         "cannot search: start it with the models the store was filled with "
                         f"(finger_network: {settings})")


def private_data_dir(data_dir: Path) -> list[tuple[Path, int]]:
    """Make the data directory this user's alone: folders 0700, files 0600 (the stores,
    the audit log, site and row keys hold biometrics of vulnerable people and what
    protects them). Files made from now on follow (umask 077). Returns what was wider,
    with its old mode, for the caller to say so loudly.
    """
    os.umask(0o077)
    data_dir.mkdir(parents=True, exist_ok=True)
    widened = []
    for path in [data_dir, *data_dir.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        want = 0o700 if path.is_dir() else 0o600
        if mode & 0o077:
            path.chmod(want)
            widened.append((path, mode))
    return widened


def _join_cluster(config: Config, finger_network: str):
    """The cluster's engine (cluster mode): the coordinator's, started with this front-end's
    data directory and key file if it is the first."""
    from cluster.client import connect
    from enroll.face.pipeline import FACE_MODEL_ID
    from enroll.iris.pipeline import IRIS_MODEL_ID

    models = {"face": FACE_MODEL_ID, "finger": networks.NETWORKS[finger_network].model_id, "iris": IRIS_MODEL_ID}
    return connect(config.cluster, str(config.data_dir.resolve()),
                   str(config.kek_file.resolve()) if config.kek_file else None, models, config.thresholds,
                   config.shards, config.replicas, config.keep_images)


def _watch_shards(engine, servicer: health.HealthServicer, stop: threading.Event, every_s: float = 0.5) -> None:
    """Cluster mode: NOT_SERVING while a shard has no copy answering (a search could not be
    complete), SERVING again when one does."""
    while not stop.wait(every_s):
        try:
            down = engine.unserved_shards()
        except Exception:  # noqa: BLE001 - the coordinator itself not answering is down too
            down = [-1]
        status = health_pb2.HealthCheckResponse.NOT_SERVING if down else health_pb2.HealthCheckResponse.SERVING
        for name in (SERVICE_NAME, ""):
            servicer.set(name, status)
        if down:
            log.warning("shards without a live copy: %s", down)


def serve(config: Config) -> None:
    """Run until SIGTERM/SIGINT, then stop gracefully (in-flight requests get ``grace_s``)."""
    from enroll.face.pipeline import FaceExtractor
    from enroll.finger.pipeline import FingerExtractor
    from enroll.iris.pipeline import IrisExtractor
    from matcher.registry import warm_up
    from store.sealing import KeyMismatch, load_kek
    from store.sqlite import SubjectStore

    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    started = time.perf_counter()
    warm_up()
    log.info("matching kernels ready in %.1f s", time.perf_counter() - started)
    kek = load_kek(config.kek_file)
    if kek is None and not config.insecure:
        raise KeyMismatch("templates are encrypted at rest: set kek_file or TAMBUA_KEK "
                          "(make one with `tambua keys new-kek`); insecure mode only may run without")
    if kek is None:
        log.warning("INSECURE MODE: templates stored without encryption")
    for path, mode in private_data_dir(config.data_dir):
        log.warning("%s was readable by others (mode %o): now only by this service's user", path, mode)
    out = sys.stdout
    if config.cluster:
        # Ray's driver prints the cluster's error messages on stdout; stdout is this
        # command's one machine-read line ("listening on"), so they go to the log instead.
        sys.stdout = sys.stderr
        engine = _join_cluster(config, networks.choose(config.finger_network, {})[0])
        store = engine.store
    else:
        store = SubjectStore(config.data_dir / "subjects.sqlite", kek)
    stored = store.model_counts()
    finger_network, why = networks.choose(config.finger_network, stored)
    log.info("finger minutiae network %s (%s)", finger_network, why)
    extractors = {"face": FaceExtractor(), "finger": FingerExtractor(network=finger_network),
                  "iris": IrisExtractor()}
    refuse_foreign_templates(stored, {m: ex.model_id for m, ex in extractors.items()})
    if not config.cluster:
        engine = Engine(store, {m: ex.model_id for m, ex in extractors.items()}, config.thresholds,
                        keep_images=config.keep_images)
    memory.freeze_loaded()  # the galleries and models stay for good: no full collection walks them again
    bound = create_server(config, engine, extractors)
    server = bound.server
    server.start()
    web = _start_web(config, engine, bound, extractors)
    log.info("serving on %s:%d (metrics on %d), %d subjects", config.host, bound.port, bound.metrics_port,
             store.count())
    log.info("transparent huge pages: kernel %s, glibc %s, %d MiB on them", memory.system_setting(),
             "asks" if memory.asked() else "does not ask", memory.huge_page_bytes() >> 20)
    certs = f" (client certificates on {config.host}:{bound.mtls_port})" if bound.mtls_port >= 0 else ""
    pages = f" (web on {web.scheme}://{config.host}:{web.port})" if web else ""
    done = threading.Event()
    # Handlers first: whoever reads the line below may send SIGTERM at once.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print(f"tambua listening on {config.host}:{bound.port}{certs}{pages}", file=out, flush=True)
    if config.cluster:
        threading.Thread(target=_watch_shards, args=(engine, bound.health, done), daemon=True).start()
    threading.Thread(target=_expire_images, args=(store, config.image_retention_days, done), daemon=True).start()
    if bound.access is not None:
        threading.Thread(target=_write_uses, args=(bound.access, config.last_use_flush_s, done), daemon=True).start()
    if bound.watch is not None:
        threading.Thread(target=_check_audit, args=(bound.watch, done), daemon=True).start()
    # Waited in short steps: a signal can land on any of the process's threads (gRPC's own,
    # say), and then its handler runs only when this thread next runs Python code; a wait
    # with no timeout would sleep through it (the cause of a stop that once hung in CI).
    while not done.wait(0.5):
        pass
    log.info("stopping: in-flight requests get %g s", config.grace_s)
    # A stop that hangs is a bug to find, and no reason to hold the port: well after the
    # grace period every thread's stack goes to the log and the process exits (code 1).
    faulthandler.dump_traceback_later(config.grace_s + 30, exit=True)
    if web:
        web.stop()
    server.stop(config.grace_s).wait()
    if bound.access is not None:
        bound.access.close()  # the last uses noted
    store.close()
    if config.cluster:
        import ray

        ray.shutdown()
    log.info("stopped")


def _start_web(config: Config, engine, bound: Bound, extractors):
    """The adjudication pages on ``web_port`` (HTTPS with the service's certificate), or None."""
    if config.web_port < 0:
        return None
    from tambua.web import WebServer, create_app

    iris = extractors.get("iris")
    app = create_app(engine, bound.access, bound.audit, iris.review if iris is not None else None, bound.site,
                     secure=not config.insecure)
    web = WebServer(app, config.host, config.web_port, None if config.insecure else config.tls_cert,
                    None if config.insecure else config.tls_key)
    web.start()
    return web


def _check_audit(watch: SiteWatch, stop: threading.Event, every_s: float = 3600.0) -> None:
    """The audit chain checked at start, then hourly: ``tambua_audit_chain_ok`` for the alert."""
    while True:
        try:
            found = watch.check_audit()
            if not found.ok:
                log.error("%s", found.message)
        except Exception:  # noqa: BLE001 - retried at the next
            log.exception("checking the audit chain failed")
        if stop.wait(every_s):
            return


def _write_uses(access: AccessStore, every_s: float, stop: threading.Event) -> None:
    """Each principal's last use, written every ``every_s`` in one transaction (calls only
    note it in memory)."""
    while not stop.wait(every_s):
        try:
            access.flush_use()
        except Exception:  # noqa: BLE001 - a busy or failed write is retried at the next
            log.exception("writing the principals' last use failed")


def _expire_images(store, retention_days: float, stop: threading.Event, every_s: float = 3600.0) -> None:
    """Drop decided cases' images once their retention period has passed: at start, then hourly."""
    while True:
        try:
            n = store.expire_case_images(int((time.time() - retention_days * 86400) * 1000))
            if n:
                log.info("dropped %d images of cases decided more than %g days ago", n, retention_days)
        except Exception:  # noqa: BLE001 - a failed sweep is retried at the next
            log.exception("image retention sweep failed")
        if stop.wait(every_s):
            return
