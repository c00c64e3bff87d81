"""What the rest of Tambua needs of a subject store, as three interfaces: the engine's
(:class:`Subjects`), site sync's (:class:`ChangeLog`) and the keepers of secrets beside the
store (:class:`SecretKeeper`: the principals table, site keys, the audit chain). The SQLite
store (:class:`matcher.store.SubjectStore`) is the one implementation today; a store per
shard or a remote one (issue 24's cluster) implements the same, and nothing above it
changes. Types only: this module imports nothing of the store.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from matcher.store import Applied, Change, Flag, PeerState, Subject
    from matcher.templates import Template


@runtime_checkable
class Subjects(Protocol):
    """Enrolled subjects: what the engine stores, finds, erases and rebuilds its galleries from."""

    def add(self, subject: Subject) -> None: ...

    def get(self, partition: str, subject_id: str) -> Subject: ...

    def delete(self, partition: str, subject_id: str) -> None: ...

    def templates(self, model_id: str) -> Iterator[tuple[str, str, int, Template]]: ...

    def count(self, partition: str | None = None) -> int: ...

    def count_by_partition(self) -> dict[str, int]: ...

    def model_counts(self) -> dict[tuple[str, str], int]: ...


@runtime_checkable
class ChangeLog(Protocol):
    """The numbered changes a site sends its peers, what peers sent, and the flags they raised."""

    def changes_since(self, after_seq: int, limit: int = 10_000) -> list[Change]: ...

    def last_seq(self) -> int: ...

    def pending(self, site: str) -> int: ...

    def peer(self, site: str) -> PeerState: ...

    def note_peer(self, site: str, **fields: int) -> None: ...

    def note_audit_head(self, site: str, seq: int, digest: str) -> None: ...

    def apply_remote(self, site: str, seq: int, kind: str, subject: Subject | None = None, partition: str = "",
                     subject_id: str = "", flag: tuple[str, list[str]] | None = None, origin: str = "",
                     origin_seq: int = 0) -> Applied: ...

    def flags(self) -> list[Flag]: ...


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


class Repository(Subjects, ChangeLog, SecretKeeper, Protocol):
    """All three: what one server's store is."""
