"""What the rest of Tambua needs of a subject store, as five interfaces: the engine's
(:class:`Subjects`), site sync's (:class:`ChangeLog`), the keepers of secrets beside the
store (:class:`SecretKeeper`: the principals table, site keys, the audit chain),
adjudication cases (:class:`Cases`) and a long audit's checkpoints
(:class:`AuditCheckpoints`). The SQLite
store (:class:`store.sqlite.SubjectStore`) is the one implementation today; a store per
shard or a remote one (issue 24's cluster) implements the same, and nothing above it
changes. The interfaces live here, with the engine that needs them, not in ``store/``:
``store/`` implements them and imports ``matcher/``, never the reverse. Also the records
the store and sync exchange (changes, what applying one did, flags, a peer's state), and
the facts the data-quality report counts (samples' capture facts, refused captures).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from matcher.cases import Attempt, Case, Decision, SampleImage, Settled
    from matcher.templates import Template
    from matcher.types import StoredTemplate, Subject


@dataclass(frozen=True)
class Change:
    """One change this site sends its peers: ``enrol``, ``delete`` or ``decision`` (of case
    ``case_id``), made here or relayed.

    Attributes:
        via: the peer it was applied from ("" when made here): never sent back there.
        origin / origin_seq: the site that made it and its number there ("" / 0: here).
    """

    seq: int
    kind: str
    partition: str
    subject_id: str
    unix_ms: int
    via: str = ""
    origin: str = ""
    origin_seq: int = 0
    case_id: str = ""

    def held_by(self, site: str) -> bool:
        """Whether ``site`` has this change already (it made it, or relayed it here); the
        same rule counts :meth:`SubjectStore.pending`."""
        return site in (self.via, self.origin)


class Applied(StrEnum):
    """What applying a peer's change did (:meth:`SubjectStore.apply_remote`)."""

    APPLIED = "applied"
    ALREADY = "already"  # seen before: nothing done
    KNOWN = "known"  # an enrolment that reached here before by another path
    CONFLICT = "conflict"  # the id is taken here by another enrolment: flagged, not stored
    ABSENT = "absent"  # a delete of nothing
    DISPUTED = "disputed"  # a decision that contradicts one made here: a conflict case, nothing applied
    ERASED = "erased"  # an enrolment deleted at its site before it was sent
    SKIPPED = "skipped"  # a change the peer holds from this site
    GAP = "gap"  # not the next change from that peer: nothing applied


@dataclass(frozen=True)
class Flag:
    """An imported enrolment waiting for a person's decision.

    Attributes:
        kind: ``CROSS_SITE_DUPLICATE`` (it matched subjects here) or ``ID_CONFLICT`` (its
            id is taken here by another enrolment).
        site: the peer it came from.
        candidates: the subjects here it matched (still enrolled).
    """

    subject_id: str
    partition: str
    kind: str
    site: str
    candidates: tuple[str, ...] = ()
    unix_ms: int = 0


@dataclass(frozen=True)
class PeerState:
    """What this site knows of a peer: how far each side got, and when."""

    site: str
    applied_seq: int = 0
    acked_seq: int = 0
    last_import_ms: int | None = None
    last_export_ms: int | None = None
    last_ack_ms: int | None = None
    refused: int = 0
    gaps: int = 0
    audit_seq: int | None = None  # the peer's audit head as its newest bundle stated it
    audit_hash: str | None = None
    last_refused_ms: int | None = None  # when a bundle from the peer was last refused


@dataclass(frozen=True)
class SampleFact:
    """One enrolled sample as the data-quality report counts it (nothing biometric).

    Attributes:
        subject: an opaque key of its subject (the same for every sample of one subject,
            never the id): what tells which modalities a subject lacks.
        quality: the template's 0..100 quality score.
        components: its named quality measures (ISO/IEC 29794 components where the
            extractor measures them; empty for samples from before they were kept).
        width / height / dpi: the image's (0: unknown, or sent as a template).
        operator / site: who enrolled it and where ("" unknown / this site).
        unix_ms: when the subject was enrolled.
    """

    partition: str
    subject: str
    modality: str
    position: int
    quality: int
    components: dict = field(default_factory=dict, compare=False)
    width: int = 0
    height: int = 0
    dpi: int = 0
    operator: str = ""
    site: str = ""
    unix_ms: int = 0


@dataclass(frozen=True)
class Refusal:
    """A capture an enrolment refused (failure to enrol): which sample, why, by whom."""

    unix_ms: int
    partition: str
    modality: str
    position: int
    reason: str
    operator: str = ""
    site: str = ""
    width: int = 0
    height: int = 0


@runtime_checkable
class Subjects(Protocol):
    """Enrolled subjects: what the engine stores, finds, erases and rebuilds its galleries from."""

    def add(self, subject: Subject, images: tuple["SampleImage", ...] = (), import_key: str = "") -> None: ...

    def imported(self, partition: str, subject_id: str, import_key: str) -> bool: ...

    def get(self, partition: str, subject_id: str) -> Subject: ...

    def delete(self, partition: str, subject_id: str) -> None: ...

    def templates(self, model_id: str) -> Iterator[tuple[str, str, int, Template]]: ...

    def count(self, partition: str | None = None) -> int: ...

    def last_enrolled_ms(self) -> int | None: ...

    def count_by_partition(self) -> dict[str, int]: ...

    def model_counts(self) -> dict[tuple[str, str], int]: ...


@runtime_checkable
class ChangeLog(Protocol):
    """The numbered changes a site sends its peers, what peers sent, and the flags they raised."""

    def changes_since(self, after_seq: int, limit: int = 10_000) -> list[Change]: ...

    def last_seq(self) -> int: ...

    def pending(self, site: str) -> int: ...

    def oldest_pending_ms(self, site: str) -> int | None: ...

    def peer(self, site: str) -> PeerState: ...

    def note_peer(self, site: str, **fields: int) -> None: ...

    def note_audit_head(self, site: str, seq: int, digest: str) -> None: ...

    def apply_remote(self, site: str, seq: int, kind: str, subject: Subject | None = None, partition: str = "",
                     subject_id: str = "", flag: tuple[str, list[str]] | None = None, origin: str = "",
                     origin_seq: int = 0, case_for: Callable | None = None, case: "Case | None" = None,
                     settled: Callable | None = None) -> Applied: ...

    def flags(self) -> list[Flag]: ...


@runtime_checkable
class Cases(Protocol):
    """Adjudication cases (:mod:`matcher.cases`): opened, joined and decided by the engine
    (a decision is one transaction with what it enrols or attaches), read by the service."""

    def open_case(self, case: "Case", templates: tuple["StoredTemplate", ...],
                  images: tuple["SampleImage", ...] = ()) -> None: ...

    def join_case(self, partition: str, case_id: str, attempt: "Attempt") -> "Case": ...

    def decide_case(self, partition: str, case_id: str, decision: "Decision", enrol: Subject | None = None,
                    attach: tuple[str, tuple["StoredTemplate", ...]] | None = None,
                    keep_images: bool = False) -> tuple["Case", "Settled"]: ...

    def case_images(self, partition: str, case_id: str) -> tuple["SampleImage", ...]: ...

    def subject_images(self, partition: str, subject_id: str) -> tuple["SampleImage", ...]: ...

    def expire_case_images(self, closed_before_ms: int) -> int: ...

    def case(self, partition: str, case_id: str) -> "Case": ...

    def case_templates(self, partition: str, case_id: str) -> tuple["StoredTemplate", ...]: ...

    def held_case(self, partition: str, subject_id: str) -> str | None: ...

    def held_templates(self, model_id: str) -> Iterator[tuple[str, str, int, Template]]: ...

    def cases(self, partitions: Iterable[str] | None = None, state: str | None = "open", source: str = "",
              created_before_ms: int = 0, created_after_ms: int = 0, after: str = "",
              limit: int = 100) -> tuple[list["Case"], str]: ...

    def case_counts(self, partitions: Iterable[str] | None = None,
                    state: str | None = "open") -> dict[tuple[str, str], int]: ...

    def encounters(self, partition: str, subject_id: str) -> list[tuple[int, str, int, tuple["StoredTemplate", ...]]]: ...


@runtime_checkable
class AuditCheckpoints(Protocol):
    """Where a long duplicate audit (:mod:`matcher.audit`) keeps its progress, sealed."""

    def audit_checkpoint(self, key: str) -> dict | None: ...

    def save_audit_checkpoint(self, key: str, state: dict) -> None: ...

    def drop_audit_checkpoint(self, key: str) -> None: ...

    def note_audit_result(self, partition: str, summary: dict) -> None: ...


@runtime_checkable
class SecretKeeper(Protocol):
    """Seals small secrets, derives keys and names subjects under the store's data key."""

    @property
    def encrypted(self) -> bool: ...

    def seal_secret(self, data: bytes, name: str) -> bytes: ...

    def open_secret(self, data: bytes, name: str) -> bytes: ...

    def derive_key(self, name: str) -> bytes | None: ...

    def pseudonym(self, subject_id: str) -> str: ...

    def resolve(self, pseudonyms: Iterable[str]) -> dict[str, str]: ...


class Repository(Subjects, ChangeLog, Cases, AuditCheckpoints, SecretKeeper, Protocol):
    """All of them: what one server's store is."""
