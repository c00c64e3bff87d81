"""Adjudication cases: a suspected duplicate put in front of a person, and what they decided.

A case holds a capture that deduplication matched to enrolled subjects (an Enroll that
asked to ``hold`` it, later an imported enrolment or a gallery audit's cluster): the
probe's samples are kept apart as *pending* (searched by later enrolments, so a second
attempt by the same person joins the case, but never returned by Identify or Verify),
with the ranked candidates and their per-sample evidence. A person then decides:

* ``same`` person: the capture is attached to the candidate as a new encounter, or
  discarded; the registration app uses the candidate's id;
* ``different`` people: the held subject is enrolled, linked to the candidates it was
  decided against (as an enrol-anyway records them);
* ``recapture`` needed: the case is withdrawn with its reason, the capture dropped.

This module owns the typed records only (frozen, JSON for the store, which seals them);
the engine (:mod:`matcher.engine`) opens and decides cases, the store keeps them. It
imports nothing of Tambua but :mod:`matcher.errors`.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum

from matcher.errors import InvalidInput


class CaseState(StrEnum):
    OPEN = "open"
    DECIDED = "decided"
    WITHDRAWN = "withdrawn"


class Verdict(StrEnum):
    SAME = "same"  # the capture is one of the candidates
    DIFFERENT = "different"  # a new person: enrol the held subject
    RECAPTURE = "recapture"  # cannot tell from these samples: withdrawn, capture again


class CaseSource(StrEnum):
    ENROL = "enrol"  # an Enroll with hold
    SYNC = "sync"  # an enrolment imported from a peer site
    AUDIT = "audit"  # a gallery audit's cluster


MAX_REASON = 2000


@dataclass(frozen=True)
class Actor:
    """Who asks: the authenticated principal, and the site where it happened ("" here)."""

    principal_id: str = ""
    principal_name: str = ""
    site: str = ""


@dataclass(frozen=True)
class SampleImage:
    """The image a sample's template was made from, kept for a person to look at (the
    engine never decodes it: it passes it to the store with the capture)."""

    modality: str
    position: int
    data: bytes = field(repr=False)


class KeepImages(StrEnum):
    NONE = "none"  # no image is kept
    CASES = "cases"  # held captures' images only (the default)
    ALL = "all"  # every enrolment's too, so that candidates can be shown beside a probe


@dataclass(frozen=True)
class SampleScore:
    """One sample of the probe against the candidate's template of the same position."""

    modality: str
    position: int
    score: float  # -log10 FMR
    fmr: float


@dataclass(frozen=True)
class CaseCandidate:
    """A candidate of a case. ``vouched_fpir``: its FPIR with each sample's rate counted no
    lower than its calibration's measured floor (what decides a clear match; 0: not kept)."""

    subject_id: str
    score: float  # fused, -log10 FMR
    fpir: float
    samples: tuple[SampleScore, ...] = ()
    vouched_fpir: float = 0.0


@dataclass(frozen=True)
class Attempt:
    """A later enrolment that matched the held capture (the same person presenting again)."""

    unix_ms: int
    principal_id: str
    principal_name: str
    subject_id: str  # the id that enrolment asked for
    score: float  # its fused score against the held capture


@dataclass(frozen=True)
class Decision:
    """Who decided what, when and why.

    Attributes:
        subject_id: the id the registration app uses from now on: the candidate judged the
            same person, or the held subject for ``different``; empty for ``recapture``.
        attached: ``same``: the capture became an encounter of ``subject_id`` (else discarded).
        candidates: the candidates the decision was made against.
        removed: ``same`` on two enrolled subjects (a cross-site duplicate): the one merged
            into ``subject_id`` (the later enrolment; every site merges the same way).
        site / case_id: where the decision was made and in which case, for one adopted
            from a peer site ("" when made here, in this case).
    """

    verdict: Verdict
    principal_id: str
    principal_name: str
    unix_ms: int
    reason: str
    subject_id: str = ""
    attached: bool = False
    candidates: tuple[str, ...] = ()
    removed: str = ""
    site: str = ""
    case_id: str = ""

    def agrees(self, other: "Decision") -> bool:
        """Whether two decisions on one question come to the same thing (a merge: into the
        same subject)."""
        return self.verdict is other.verdict and (self.verdict is not Verdict.SAME or
                                                  self.subject_id == other.subject_id)

    @classmethod
    def from_dict(cls, d: dict) -> "Decision":
        return cls(**{**d, "verdict": Verdict(d["verdict"]), "candidates": tuple(d["candidates"])})


@dataclass(frozen=True)
class Case:
    """An adjudication case.

    Attributes:
        subject_id: the id the held capture asked for.
        kind: why it was opened (``DUPLICATE``; from sync ``CROSS_SITE_DUPLICATE`` or
            ``ID_CONFLICT``; ``AUDIT_CLUSTER``).
        site: the site where the capture was taken ("" for this one).
        conflicting: a ``DECISION_CONFLICT`` case: the decisions two sites made on one
            question that do not agree (none was applied here over the other);
            ``supersedes``: their cases, which this case's decision settles everywhere.
    """

    case_id: str
    partition: str
    subject_id: str
    source: CaseSource
    kind: str
    created_ms: int
    principal_id: str
    principal_name: str
    site: str = ""
    state: CaseState = CaseState.OPEN
    candidates: tuple[CaseCandidate, ...] = ()
    attempts: tuple[Attempt, ...] = ()
    decision: Decision | None = None
    updated_ms: int = field(default=0, compare=False)
    conflicting: tuple[Decision, ...] = ()
    supersedes: tuple[str, ...] = ()

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "Case":
        d = json.loads(data)
        d["source"], d["state"] = CaseSource(d["source"]), CaseState(d["state"])
        d["candidates"] = tuple(CaseCandidate(c["subject_id"], c["score"], c["fpir"],
                                              tuple(SampleScore(**s) for s in c["samples"]), c.get("vouched_fpir", 0.0))
                                for c in d["candidates"])
        d["attempts"] = tuple(Attempt(**a) for a in d["attempts"])
        if d["decision"] is not None:
            d["decision"] = Decision.from_dict(d["decision"])
        d["conflicting"] = tuple(Decision.from_dict(c) for c in d.get("conflicting", ()))
        d["supersedes"] = tuple(d.get("supersedes", ()))
        return cls(**d)

    def pairs(self) -> frozenset[frozenset[str]]:
        """The question this case asks, as the pairs of subject ids it asks about (a pair of
        one id: an id two sites use). Two sites' cases about one question share a pair."""
        return frozenset(frozenset((self.subject_id, c.subject_id)) for c in self.candidates)

    def with_attempt(self, attempt: Attempt) -> "Case":
        return replace(self, attempts=(*self.attempts, attempt), updated_ms=attempt.unix_ms)

    def decided(self, decision: Decision) -> "Case":
        state = CaseState.WITHDRAWN if decision.verdict is Verdict.RECAPTURE else CaseState.DECIDED
        return replace(self, state=state, decision=decision, updated_ms=decision.unix_ms)

    def closed(self) -> str:
        """How it was closed, in words: ``decided by Amina at 2026-12-06 10:00:00 UTC``."""
        d = self.decision
        at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(d.unix_ms / 1000)) if d else "?"
        return f"{self.state.value} by {d.principal_name or d.principal_id if d else '?'} at {at}"

    def without(self, subject_id: str) -> "Case":
        """This case with an erased subject's candidacy gone (its scores go with it)."""
        def strip(d: Decision) -> Decision:
            return replace(d, candidates=tuple(c for c in d.candidates if c != subject_id),
                           removed="" if d.removed == subject_id else d.removed)

        return replace(self, candidates=tuple(c for c in self.candidates if c.subject_id != subject_id),
                       decision=None if self.decision is None else strip(self.decision),
                       conflicting=tuple(strip(d) for d in self.conflicting))


@dataclass(frozen=True)
class Settled:
    """What a decision changed among enrolled subjects, for the engine to mirror in its
    galleries: subjects merged away, and subjects a merge it undid brought back."""

    removed: tuple[str, ...] = ()
    restored: tuple[str, ...] = ()


# Cases whose question is about two enrolled subjects (or one id two sites use): their
# decisions merge or link those subjects at every site that holds them.
PAIRWISE = frozenset({"CROSS_SITE_DUPLICATE", "DECISION_CONFLICT", "AUDIT_CLUSTER"})


def new_case_id() -> str:
    """A case id: time-ordered (so ids sort roughly by age) and random (unique across sites)."""
    return f"C{int(time.time() * 1000):011x}{secrets.token_hex(5)}"


def check_reason(reason: str) -> str:
    """A decision's reason: required, printable, bounded.

    Raises:
        InvalidInput: empty, or longer than :data:`MAX_REASON` characters.
    """
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("a decision needs a reason", "REASON_REQUIRED")
    if len(reason) > MAX_REASON:
        raise InvalidInput(f"a reason has at most {MAX_REASON} characters")
    return reason
