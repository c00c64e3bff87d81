"""The matching engine: enrol with deduplication, identify, verify, compare, delete.

Pure domain logic on templates (no images, no grpc): the service layer extracts templates
from a request's images (``tambua/extraction.py``) and hands them here.
The store is the system of record; the galleries (:mod:`matcher.galleries`: each
modality's matcher in this process, or shards over a cluster) are rebuilt from it at start.

Evidence from several samples (a face, up to ten fingers, two irises) is fused per subject:
each comparison gives a false-match rate from its model's calibration, and the rates
of one subject are combined by the truncated product method (:mod:`matcher.fusion`).
The result is one subject-level FMR. The score reported is ``-log10`` of that FMR (higher = more alike,
comparable across modalities); 1:N rates are ``FPIR = 1 - (1 - FMR)^N`` over the N
subjects of the partition.

Deduplication and insertion of one partition run under that partition's lock, so two
concurrent enrolments of the same new person cannot both pass the duplicate check:
the second one searches a gallery that already holds the first.

A duplicate can be *held* for adjudication (:mod:`matcher.cases`): the capture is kept
as an open case's pending capture, which later enrolments are deduplicated against too
(the same person trying again joins the case) but Identify and Verify never see; a
person's decision then enrols it, attaches it to a candidate, or withdraws it, in one
store transaction.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from matcher.calibration import Calibration, at_least_one
from matcher.cases import (PAIRWISE, Actor, Attempt, Case, CaseCandidate, CaseSource, CaseState, Decision,
                           KeepImages, SampleImage, SampleScore, Settled, Verdict, check_reason, new_case_id)
from matcher.errors import (AlreadyExists, DeadlineExceeded, FailedPrecondition, InvalidInput, ModelMismatch,
                            NotFound, SequenceGap, TambuaError, Unimplemented)
from matcher.base import ModalityMatcher
from matcher.fusion import evidence, fuse
from matcher.galleries import Galleries, LocalGalleries
from matcher.registry import REGISTRY
from matcher.repository import Repository
from matcher.repository import Applied
from matcher.types import Capture, StoredTemplate, Subject, normalise_id
from matcher.templates import Template

log = logging.getLogger(__name__)

MODALITIES = tuple(REGISTRY)
POSITIONS = {name: m.positions for name, m in REGISTRY.items()}


def sample_name(modality: str, position: int) -> str:
    """What a person calls a sample.

    >>> sample_name("finger", 2), sample_name("iris", 2), sample_name("face", 0)
    ('right index finger', 'left iris', 'face')
    """
    return REGISTRY[modality].sample_name(position) if modality in REGISTRY else modality


def check_samples(samples, one_per_position: bool = True) -> None:
    """A request's samples or a subject's templates (enrol, identify, verify): at least one,
    and one per modality and position (Compare's two may be of the same finger)."""
    if not samples:
        raise InvalidInput("the request has no samples")
    keys = [(s.modality, s.position) for s in samples]
    if one_per_position and len(set(keys)) != len(keys):
        raise InvalidInput("two samples for the same modality and position")


def check_enrolment(samples) -> None:
    """What an enrolment needs of its samples (templates, or the requests' samples before
    anything is extracted, so that a bad one is refused before seconds of work)."""
    if any(s.position == 0 and s.modality == "finger" for s in samples):
        raise InvalidInput("an enrolled finger needs its position (1 right thumb ... 10 left little)")


class Observer(Protocol):
    """Receives stage timings (the service layer turns them into metrics)."""

    def timing(self, stage: str, modality: str, seconds: float) -> None: ...


class _NoObserver:
    def timing(self, stage: str, modality: str, seconds: float) -> None:
        pass


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds as rates (turned into distances with each model's calibration).

    Deduplication has a doubtful band: a candidate above ``dedup_fpir`` is a clear
    non-match (the person is enrolled); one whose *vouched* FPIR is at or below
    ``clear_match_fpir`` is a clear match (a held enrolment answers DUPLICATE without a
    case; an imported one is merged); between the two a person decides. Vouched: each
    sample's rate counted no lower than the smallest rate its model's calibration measured
    (:meth:`Engine.vouched_fpir`), so no automatic decision rests on an extrapolated tail;
    one sample alone never reaches the default (see the model cards for the measured band).
    """

    verify_fmr: float = 1e-3
    dedup_fpir: float = 1e-2
    max_candidates: int = 10
    identify_fpir: float = 1e-2
    clear_match_fpir: float = 1e-6

    def __post_init__(self) -> None:
        if not (0 < self.verify_fmr < 1 and 0 < self.dedup_fpir < 1 and 0 < self.identify_fpir <= 1
                and self.max_candidates >= 1):
            raise ValueError("rates must be in (0, 1) (identify_fpir up to 1) and max_candidates >= 1")
        if not 0 <= self.clear_match_fpir < self.dedup_fpir:
            raise ValueError("clear_match_fpir must be within [0, dedup_fpir) (0: every duplicate to a person)")


CLEAR_MATCH = Actor("", "tambua (clear match)")  # who decides a duplicate beyond doubt


@dataclass(frozen=True)
class ScoredCandidate:
    """A ranked candidate: fused score (-log10 FMR) and FPIR over the ``searched`` subjects."""

    subject_id: str
    score: float
    fpir: float
    searched: int = 1


class EnrollOutcome(StrEnum):
    ENROLLED = "ENROLLED"
    DUPLICATE = "DUPLICATE"  # nothing stored: see the candidates


@dataclass(frozen=True)
class EnrollResult:
    """What an enrolment did. ``case_id``: a DUPLICATE held for adjudication (or that
    matched a capture held already) is in this case; "" otherwise."""

    outcome: EnrollOutcome
    subject_id: str
    candidates: tuple[ScoredCandidate, ...]
    templates: tuple[StoredTemplate, ...]
    case_id: str = ""
    clear_match: bool = False  # DUPLICATE beyond doubt (Thresholds.clear_match_fpir): no case held
    replayed: bool = False  # ENROLLED earlier from the same import record: nothing stored now


@dataclass(frozen=True)
class VerifyResult:
    match: bool
    score: float
    fmr: float
    model_id: str


def default_matcher(modality: str, model_id: str, share: float = 1.0) -> ModalityMatcher:
    """The matcher the registry gives a model's templates, with the model's calibration file;
    ``share``: the part of each partition its gallery will hold (a cluster shard's).

    Raises:
        Unimplemented: a modality the registry does not know.
    """
    if modality not in REGISTRY:
        raise Unimplemented(f"{modality} matching is not available")
    return REGISTRY[modality].matcher(model_id, Calibration.load(model_id), share=share)


class Engine:
    """Enrolment, search and verification over one store. Thread-safe.

    Args:
        store: the durable subject store.
        models: the model id of each supported modality (``{"face": "face/dlib-resnet-v1"}``).
        thresholds: decision rates.
        matchers: per modality; built for each model (:func:`default_matcher`) when absent.
        observer: receives ``search`` timings per modality (the service adds ``extract``).
        galleries: where the searchable templates live (default: ``matchers`` in this
            process, loaded from the store now); a cluster passes its shards, which load
            themselves.
        keep_images: which enrolments' images the store keeps for adjudication (the
            images are passed with each enrolment; the engine never decodes them).
    """

    def __init__(
        self,
        store: Repository,
        models: dict[str, str],
        thresholds: Thresholds = Thresholds(),
        matchers: dict[str, ModalityMatcher] | None = None,
        observer: Observer | None = None,
        galleries: Galleries | None = None,
        keep_images: KeepImages = KeepImages.CASES,
    ) -> None:
        self.observer = observer or _NoObserver()
        self.keep_images = KeepImages(keep_images)
        self.store = store
        self.thresholds = thresholds
        self.models = dict(models)
        # Compare and parse need no gallery: a matcher per model here, whatever holds the galleries.
        self.matchers = matchers or {m: default_matcher(m, model_id) for m, model_id in models.items()}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._subjects = store.count_by_partition()
        self._held_galleries: LocalGalleries | None = None  # open cases' captures: see _held()
        self._held_cases: dict[str, set[str]] = {}
        self._held_guard = threading.Lock()
        if galleries is None:
            local = LocalGalleries(self.matchers)
            for modality, matcher in self.matchers.items():
                local.load((modality, *row) for row in store.templates(matcher.model_id))
                log.info("gallery %s loaded: %d templates", matcher.model_id, matcher.size())
            galleries = local
        self.galleries = galleries

    @property
    def model_ids(self) -> list[str]:
        return [m.model_id for m in self.matchers.values()]

    def _lock(self, partition: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(partition, threading.Lock())

    @staticmethod
    def check_deadline(deadline: float | None) -> None:
        """Abandon the request when its deadline (``time.monotonic()`` seconds) has passed."""
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded("the request's deadline passed before it completed")

    def _matcher(self, modality: str) -> ModalityMatcher:
        if modality not in self.matchers:
            raise Unimplemented(f"{modality} matching is not available yet")
        return self.matchers[modality]

    def parse(self, modality: str, data: bytes) -> Template:
        """Template bytes sent instead of an image, checked against this server's model.

        Raises:
            Unimplemented: no matcher for ``modality``.
            TemplateFormatError / ModelMismatch: bytes that are no template of the model.
        """
        return self._matcher(modality).parse(data)

    @staticmethod
    def _check(templates: tuple[StoredTemplate, ...]) -> tuple[StoredTemplate, ...]:
        check_samples(templates)
        return tuple(templates)

    def _subject_fmr(self, partition: str, subject_id: str, templates: tuple[StoredTemplate, ...]) -> float | None:
        return self.galleries.score(partition, [subject_id], templates).get(subject_id)

    def _candidates(self, partition: str, templates: tuple[StoredTemplate, ...], k: int,
                    within: frozenset[str] | None = None, galleries: Galleries | None = None,
                    count: int | None = None) -> list[ScoredCandidate]:
        """Shortlist per sample, then every shortlisted subject scored on all samples; the
        ``k`` best, with FPIR over the subjects searched (the partition, or ``within``).
        ``galleries`` / ``count``: search those instead (the held captures) of that many."""
        for t in templates:
            self._matcher(t.modality)
        found = (galleries or self.galleries).candidates(partition, templates, k, within, self.observer)
        fused = found.fused
        shortlist = dict.fromkeys(s for hits in found.hits for s, *_ in hits)
        if found.subjects is not None:
            n = found.subjects
        else:
            n = self._subjects.get(partition, 0) if count is None else count
        n = max(n, 1)
        if within is not None:
            n = max(min(n, len(within)), 1)
        scored = sorted((fused[sid], sid) for sid in shortlist if sid in fused)
        return [ScoredCandidate(sid, evidence(fmr), at_least_one(fmr, n), n)
                for fmr, sid in scored[:k]]

    def vouched_fpir(self, partition: str, templates: tuple[StoredTemplate, ...], candidate: ScoredCandidate
                     ) -> float:
        """The candidate's FPIR with each sample's FMR counted no lower than the smallest
        rate its model's calibration measured: what the development data can vouch for,
        without the extrapolated tail (a face's Gaussian tail claims rates far below any
        impostor pair ever compared). Only fused evidence of several samples gets far below."""
        return self._vouched(self.sample_scores(partition, candidate.subject_id, templates), candidate.searched)

    def _vouched(self, samples: tuple[SampleScore, ...], searched: int) -> float:
        rates = []
        for s in samples:
            calibration = getattr(self._matcher(s.modality), "calibration", None)
            rates.append(max(s.fmr, calibration.min_fmr) if calibration is not None else 1.0)
        return at_least_one(fuse(rates), searched) if rates else 1.0

    def _case_candidate(self, partition: str, templates: tuple[StoredTemplate, ...], c: ScoredCandidate
                        ) -> CaseCandidate:
        """A candidate as a case keeps it: its scores per sample and its vouched FPIR."""
        samples = self.sample_scores(partition, c.subject_id, templates)
        return CaseCandidate(c.subject_id, c.score, c.fpir, samples, self._vouched(samples, c.searched))

    def _clear(self, candidate: CaseCandidate) -> bool:
        """Whether a duplicate is beyond doubt (the band's lower edge; 0 turns it off)."""
        limit = self.thresholds.clear_match_fpir
        return limit > 0 and candidate.fpir <= limit and candidate.vouched_fpir <= limit

    def _held(self) -> LocalGalleries:
        """The captures held by open cases, searched by enrolments only: loaded from the
        store at first use (a front-end in cluster mode forwards enrolments and never
        loads them), in this process (there are few)."""
        with self._held_guard:
            if self._held_galleries is None:
                held = LocalGalleries({m: default_matcher(m, x.model_id) for m, x in self.matchers.items()})
                for modality, matcher in held.matchers.items():
                    for partition, case_id, position, template in self.store.held_templates(matcher.model_id):
                        matcher.add(partition, case_id, position, template)
                        self._held_cases.setdefault(partition, set()).add(case_id)
                self._held_galleries = held
            return self._held_galleries

    def _held_matches(self, partition: str, templates: tuple[StoredTemplate, ...]) -> list[ScoredCandidate]:
        """Open cases whose held capture this one duplicates (case ids as subject ids)."""
        held = self._held()
        if not self._held_cases.get(partition):
            return []
        found = [c for c in self._candidates(partition, templates, 1, galleries=held,
                                             count=len(self._held_cases[partition]))
                 if c.fpir <= self.thresholds.dedup_fpir]
        for c in found:
            try:
                if self.store.case(partition, c.subject_id).state is CaseState.OPEN:
                    return [c]
            except NotFound:  # erased with a subject it named since
                pass
            held.remove(partition, c.subject_id)  # closed elsewhere: no longer held
            self._held_cases[partition].discard(c.subject_id)
            return self._held_matches(partition, templates)
        return []

    def sample_scores(self, partition: str, subject_id: str,
                       templates: tuple[StoredTemplate, ...]) -> tuple[SampleScore, ...]:
        """Each sample against the subject's template of its modality and position (what
        the adjudicator sees beside the fused score)."""
        out = []
        for t in templates:
            fmr = self.galleries.score(partition, [subject_id], (t,)).get(subject_id)
            if fmr is not None:
                out.append(SampleScore(t.modality, t.position, evidence(fmr), fmr))
        return tuple(out)

    def _open_case(self, subject_id: str, partition: str, templates: tuple[StoredTemplate, ...],
                   candidates: tuple[CaseCandidate, ...], by: Actor, deadline: float | None,
                   images: tuple[SampleImage, ...]) -> str:
        """Hold a duplicate for adjudication (caller holds the partition's lock)."""
        taken = self.store.held_case(partition, subject_id)
        if taken:
            raise AlreadyExists(f"subject id {subject_id!r} is held by open case {taken} (another capture)")
        try:
            self.store.get(partition, subject_id)
            raise AlreadyExists(f"subject {subject_id!r} is already enrolled")
        except NotFound:
            pass
        now = int(time.time() * 1000)
        case = Case(new_case_id(), partition, subject_id, CaseSource.ENROL, "DUPLICATE", now, by.principal_id,
                    by.principal_name, by.site, candidates=candidates, updated_ms=now)
        self.check_deadline(deadline)
        self.store.open_case(case, templates, images if self.keep_images is not KeepImages.NONE else ())
        self._held().add(partition, case.case_id, templates)
        self._held_cases.setdefault(partition, set()).add(case.case_id)
        return case.case_id

    def enroll(self, subject_id: str, partition: str, templates: tuple[StoredTemplate, ...], force: bool = False,
               adjudicated: tuple[str, ...] = (), deadline: float | None = None, hold: bool = False,
               by: Actor = Actor(), images: tuple[SampleImage, ...] = (), import_key: str = "",
               dedup: bool = True, capture: Capture | None = None) -> EnrollResult:
        """Deduplicate (against the enrolled and the captures held by open cases), then
        store. A duplicate stores nothing unless ``force``; with ``hold`` it opens a case
        (or, matching a held capture, joins that case) for a person to decide.

        A request whose deadline passes before the write stores nothing: its caller has
        stopped waiting and would never learn of the enrolment.

        Args:
            by: who asks (recorded in a case it opens or joins).
            images: the samples' images, kept with a case it opens (or with the subject
                when ``keep_images`` is ``all``).
            import_key: the bulk-import record this enrolment comes from: sent again once
                enrolled (a lost reply, an import killed and run again), it answers ENROLLED
                with ``replayed`` instead of ALREADY_EXISTS, and stores nothing.
            dedup: False stores without searching (an import loaded first and audited
                after; no candidates, no links).
            capture: how the samples were captured, kept with the subject for the
                data-quality report.

        Raises:
            AlreadyExists: the id is enrolled, or (``hold``) held by another open case.
        """
        subject_id, partition = normalise_id(subject_id), normalise_id(partition, "partition")
        check_enrolment(templates)
        adjudicated = tuple(normalise_id(a) for a in adjudicated)
        templates = self._check(templates)
        with self._lock(partition):
            if import_key and self.store.imported(partition, subject_id, import_key):
                return EnrollResult(EnrollOutcome.ENROLLED, subject_id, (), templates, replayed=True)
            candidates = [c for c in self._candidates(partition, templates, self.thresholds.max_candidates)
                          if c.fpir <= self.thresholds.dedup_fpir] if dedup else []
            held = [] if force or not dedup else self._held_matches(partition, templates)
            if held:  # the same person is waiting for a decision already
                if hold:
                    self.store.join_case(partition, held[0].subject_id, Attempt(
                        int(time.time() * 1000), by.principal_id, by.principal_name, subject_id, held[0].score))
                return EnrollResult(EnrollOutcome.DUPLICATE, subject_id, tuple(candidates), templates,
                                    held[0].subject_id)
            if candidates and not force:
                # Only a doubtful duplicate goes to a person: one beyond doubt is answered
                # as one (the registration app uses the candidate's id).
                first = self._case_candidate(partition, templates, candidates[0])
                clear = self._clear(first)
                case_id = (self._open_case(subject_id, partition, templates, (first, *(
                    self._case_candidate(partition, templates, c) for c in candidates[1:])), by, deadline, images)
                           if hold and not clear else "")
                return EnrollResult(EnrollOutcome.DUPLICATE, subject_id, tuple(candidates), templates, case_id,
                                    clear)
            # Enrolled anyway: the links are the candidates named by the adjudicator and the
            # ones this search found (what the enrolment was decided against).
            links = tuple(dict.fromkeys((*adjudicated, *(c.subject_id for c in candidates))))
            subject = Subject(subject_id, partition, templates, links, capture=capture)
            self.check_deadline(deadline)
            self.store.add(subject, images if self.keep_images is KeepImages.ALL else (),  # synced before we answer
                           import_key)
            self.galleries.add(partition, subject_id, templates)
            self._subjects[partition] = self._subjects.get(partition, 0) + 1
        return EnrollResult(EnrollOutcome.ENROLLED, subject_id, tuple(candidates), templates)

    def decide(self, partition: str, case_id: str, verdict: str, reason: str, by: Actor = Actor(),
               subject_id: str = "", attach: bool = True) -> Case:
        """Apply a person's decision on an open case, in one store transaction.

        Args:
            verdict: ``same`` (``subject_id``: the candidate it is; ``attach``: keep the
                capture as that subject's new encounter, else discard it), ``different``
                (enrol the held subject, linked to the candidates) or ``recapture``
                (withdraw it).
            reason: why (required; kept in the case).

        Returns:
            The decided case: ``decision.subject_id`` is the id the registration app uses.

        Raises:
            NotFound: no such case in ``partition``.
            FailedPrecondition: decided already (two adjudicators at once: one wins).
            InvalidInput: no reason, an unknown verdict, or ``same`` without a candidate of
                the case.
            AlreadyExists: ``different``, and the held id was enrolled meanwhile.
        """
        partition = normalise_id(partition, "partition")
        reason = check_reason(reason)
        try:
            verdict = Verdict(verdict)
        except ValueError:
            raise InvalidInput(f"unknown verdict {verdict!r}: same, different or recapture", "VERDICT_UNKNOWN") from None
        with self._lock(partition):
            case = self.store.case(partition, case_id)
            if case.state is not CaseState.OPEN:
                raise FailedPrecondition(f"case {case_id} is {case.closed()}", "CASE_DECIDED")
            # A case about two enrolled subjects (an imported enrolment that matched here, or
            # two sites' decisions on one) has no held capture: "same" merges them, the later
            # enrolment into the earlier one, as every site decides it; "different" links them.
            pairwise = case.kind in PAIRWISE
            templates = () if pairwise else self.store.case_templates(partition, case_id)
            named = tuple(c.subject_id for c in case.candidates)
            one_id = named == (case.subject_id,)  # one id two sites gave two people
            enrol, attach_to, removed = None, None, ""
            if verdict is Verdict.SAME:
                subject_id = normalise_id(subject_id) if subject_id else ""
                if subject_id not in named:
                    raise InvalidInput(f"{subject_id!r} is not a candidate of case {case_id}: name the candidate "
                                       "that is the same person", "NOT_A_CANDIDATE")
                if pairwise and not one_id:
                    subject_id, removed = self._first_enrolled(partition, case.subject_id, subject_id)
                elif not pairwise:
                    attach_to = (subject_id, templates) if attach else None
            elif verdict is Verdict.DIFFERENT:
                subject_id = case.subject_id
                if one_id or case.kind == "ID_CONFLICT":
                    raise InvalidInput(f"id {subject_id!r} is enrolled here by another person: two people cannot "
                                       "share an id; withdraw this case (re-capture) and have the site enrol the "
                                       "person under a new id", "ID_TAKEN")
                if not pairwise:
                    enrol = Subject(subject_id, partition, templates, named,
                                    capture=Capture(case.principal_name, by.site))
            else:
                subject_id = ""
            decision = Decision(verdict, by.principal_id, by.principal_name, int(time.time() * 1000), reason,
                                subject_id, attach_to is not None or bool(removed), named, removed)
            decided, settled = self.store.decide_case(partition, case_id, decision, enrol, attach_to,
                                                      keep_images=self.keep_images is KeepImages.ALL)
            self._held().remove(partition, case_id)
            self._held_cases.get(partition, set()).discard(case_id)
            if enrol is not None:
                self.galleries.add(partition, subject_id, templates)
                self._subjects[partition] = self._subjects.get(partition, 0) + 1
            self._mirror(partition, settled)
        return decided

    def _first_enrolled(self, partition: str, a: str, b: str) -> tuple[str, str]:
        """(the one enrolled first, the other): a merge keeps the earlier enrolment, so that
        two sites merging one pair independently keep the same subject.

        Raises:
            NotFound: either is no longer enrolled.
        """
        first = min((self.store.get(partition, a), self.store.get(partition, b)),
                    key=lambda s: (s.created_ns, s.subject_id))
        return first.subject_id, b if first.subject_id == a else a

    def _mirror(self, partition: str, settled: Settled) -> None:
        """Bring the galleries in line with what a decision changed in the store."""
        for subject_id in settled.removed:
            self.galleries.remove(partition, subject_id)
        for subject_id in settled.restored:
            self.galleries.add(partition, subject_id, self.store.get(partition, subject_id).templates)
        self._subjects[partition] = max(0, self._subjects.get(partition, 0) + len(settled.restored)
                                        - len(settled.removed))

    def audit(self, partition: str | None = None, max_fpir: float = 0.0, cases: bool = False,
              progress=None, restart: bool = False, block: int = 0):
        """The gallery searched against itself for suspected duplicates (:mod:`matcher.audit`:
        ``block`` subjects between checkpoints, 0 its default; ``restart`` drops a checkpoint
        instead of going on from it); ``cases``: each cluster becomes an adjudication case."""
        from dataclasses import replace

        from matcher import audit

        report = audit.audit(self, normalise_id(partition, "partition") if partition else None, max_fpir, progress,
                             restart, block or audit.BLOCK)
        return replace(report, cases=audit.open_cases(self, report)) if cases else report

    def identify(self, partition: str, templates: tuple[StoredTemplate, ...], max_candidates: int = 0,
                 within: frozenset[str] | None = None, deadline: float | None = None,
                 max_fpir: float = 0.0) -> list[ScoredCandidate]:
        """1:N search.

        Args:
            max_candidates: at most this many, best first (0: the configured default).
            max_fpir: only candidates at or below this FPIR (0: the configured
                ``identify_fpir``; 1: every ranked candidate, a list for investigation).
        """
        self.check_deadline(deadline)
        templates = self._check(templates)
        if not 0 <= max_fpir <= 1:
            raise InvalidInput(f"max_fpir must be within 0..1, not {max_fpir}")
        if within is not None:
            within = frozenset(normalise_id(i) for i in within)
        limit = max_fpir or self.thresholds.identify_fpir
        found = self._candidates(partition, templates, max_candidates or self.thresholds.max_candidates, within)
        return [c for c in found if c.fpir <= limit]

    def verify(self, subject_id: str, partition: str, templates: tuple[StoredTemplate, ...],
               deadline: float | None = None) -> VerifyResult:
        """1:1 against an enrolled subject: every sample against the subject's template of the
        same modality and position, fused, decided at the configured FMR."""
        subject_id, partition = normalise_id(subject_id), normalise_id(partition, "partition")
        self.check_deadline(deadline)
        templates = self._check(templates)
        self.store.get(partition, subject_id)  # NotFound for an unknown subject
        fmr = self._subject_fmr(partition, subject_id, templates)
        if fmr is None:
            wanted = ", ".join(sample_name(t.modality, t.position) for t in templates)
            raise NotFound(f"subject {subject_id!r} has no enrolled template for {wanted}")
        return VerifyResult(fmr <= self.thresholds.verify_fmr, evidence(fmr), fmr, templates[0].template.model_id)

    def compare(self, a: StoredTemplate, b: StoredTemplate) -> VerifyResult:
        """1:1 decision on two samples of one modality at the configured FMR."""
        if a.modality != b.modality:
            raise InvalidInput(f"cannot compare a {a.modality} sample with a {b.modality} sample")
        matcher = self._matcher(a.modality)
        if a.template.model_id != b.template.model_id:
            raise ModelMismatch(f"cannot compare {a.template.model_id} with {b.template.model_id}")
        fmr = matcher.fmr(a.template, b.template)
        return VerifyResult(fmr <= self.thresholds.verify_fmr, evidence(fmr), fmr, a.template.model_id)

    def import_change(self, site: str, seq: int, kind: str, subject: Subject | None = None, partition: str = "",
                      subject_id: str = "", origin: str = "", origin_seq: int = 0, case: Case | None = None,
                      ) -> tuple[Applied, tuple[ScoredCandidate, ...]]:
        """Apply change ``seq`` of peer ``site`` (see :meth:`SubjectStore.apply_remote`).

        An imported enrolment is deduplicated against this gallery like a local one, but
        is never refused: a match is stored with the enrolment as a cross-site duplicate
        flag for adjudication (never dropped, never merged); candidates a person already
        decided it against (its ``linked``, from an enrol-anyway or a ``different``
        decision at its site) are not raised again. A ``decision`` brings the case here
        (:meth:`store.cases.CaseBook._adopt`), and the galleries follow what it changed.

        Returns:
            (the store's outcome, the duplicate candidates found for an enrolment).
        """
        if seq <= self.store.peer(site).applied_seq:
            return Applied.ALREADY, ()
        candidates: tuple[ScoredCandidate, ...] = ()
        clear: list[Case] = []
        part = subject.partition if subject is not None else partition
        with self._lock(part):
            if kind == "enrol":
                candidates = tuple(c for c in self._candidates(part, subject.templates, self.thresholds.max_candidates)
                                   if c.fpir <= self.thresholds.dedup_fpir and c.subject_id not in subject.linked)
                flag = ("CROSS_SITE_DUPLICATE", [c.subject_id for c in candidates]) if candidates else None
                opened: list[Case] = []

                def case_for(flag_kind: str, named: list[str]) -> tuple[Case, tuple[StoredTemplate, ...]]:
                    opened.append(self._sync_case(part, subject, flag_kind, candidates, origin or site))
                    return opened[-1], subject.templates if flag_kind == "ID_CONFLICT" else ()

                outcome = self.store.apply_remote(site, seq, kind, subject, flag=flag, origin=origin,
                                                  origin_seq=origin_seq, case_for=case_for)
                if outcome is Applied.APPLIED:
                    self.galleries.add(part, subject.subject_id, subject.templates)
                    self._subjects[part] = self._subjects.get(part, 0) + 1
                for case in opened:
                    if case.kind == "ID_CONFLICT":  # held: a later enrolment of this person joins it
                        self._held().add(part, case.case_id, subject.templates)
                        self._held_cases.setdefault(part, set()).add(case.case_id)
                clear = [c for c in opened if c.kind == "CROSS_SITE_DUPLICATE" and self._clear(c.candidates[0])]
            elif kind == "decision":
                effects: list[Settled] = []
                outcome = self.store.apply_remote(site, seq, kind, partition=part, origin=origin,
                                                  origin_seq=origin_seq, case=case,
                                                  settled=lambda changed, conflict: effects.append(changed))
                for changed in effects:
                    self._mirror(part, changed)
            else:
                outcome = self.store.apply_remote(site, seq, kind, partition=partition, subject_id=subject_id,
                                                  origin=origin, origin_seq=origin_seq)
                if kind == "delete" and outcome is Applied.APPLIED:
                    self.galleries.remove(partition, subject_id)
                    self._subjects[partition] = max(0, self._subjects.get(partition, 1) - 1)
        if outcome is Applied.GAP:
            raise SequenceGap(f"change {seq} of site {site!r} arrived before the ones preceding it")
        if kind == "enrol" and outcome is Applied.APPLIED:
            for case in clear:  # beyond doubt: merged now, as a person would (the decision travels)
                vouched = case.candidates[0].vouched_fpir
                try:
                    self.decide(part, case.case_id, "same", f"clear match: vouched FPIR {vouched:.1e} at or below "
                                f"{self.thresholds.clear_match_fpir:g}", CLEAR_MATCH,
                                subject_id=candidates[0].subject_id)
                except TambuaError as e:  # changed meanwhile (decided, erased): the case stays for a person
                    log.warning("case %s left for a person: %s", case.case_id, e.reason)
        return outcome, candidates

    def capture(self, partition: str, case: Case) -> tuple[tuple[StoredTemplate, ...], tuple[SampleImage, ...]]:
        """What a case is about, for a person to look at: its held capture, or (a case about
        enrolled subjects: an imported enrolment that matched here, an audit's cluster) that
        subject's templates and images; empty once decided or erased."""
        if case.kind in PAIRWISE:
            if case.state is not CaseState.OPEN:
                return (), ()
            try:
                return (self.store.get(partition, case.subject_id).templates,
                        self.store.subject_images(partition, case.subject_id))
            except NotFound:
                return (), ()
        return self.store.case_templates(partition, case.case_id), self.store.case_images(partition, case.case_id)

    def _sync_case(self, partition: str, subject: Subject, kind: str, candidates: tuple[ScoredCandidate, ...],
                   site: str) -> Case:
        """The case an imported enrolment's flag opens: ``CROSS_SITE_DUPLICATE`` (it was
        enrolled here and matched ``candidates``) or ``ID_CONFLICT`` (its id is taken here
        by another enrolment, its only candidate; its capture is held, not enrolled)."""
        if kind == "ID_CONFLICT":
            fmr = self._subject_fmr(partition, subject.subject_id, subject.templates)
            candidates = () if fmr is None else (
                ScoredCandidate(subject.subject_id, evidence(fmr), at_least_one(fmr, 1)),)
        now = int(time.time() * 1000)
        return Case(new_case_id(), partition, subject.subject_id, CaseSource.SYNC, kind, now, "", f"site {site}", site,
                    candidates=tuple(self._case_candidate(partition, subject.templates, c) for c in candidates),
                    updated_ms=now)

    def delete(self, partition: str, subject_id: str) -> None:
        subject_id, partition = normalise_id(subject_id), normalise_id(partition, "partition")
        with self._lock(partition):
            self.store.delete(partition, subject_id)
            self.galleries.remove(partition, subject_id)
            self._subjects[partition] = max(0, self._subjects.get(partition, 1) - 1)
