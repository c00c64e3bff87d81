"""The audit log: an append-only, hash-chained record of every call to the service.

One JSON object a line in ``audit.jsonl`` beside the subject store: sequence number, time,
caller (principal id and name), RPC, partition, the subject ids the call touched or
returned, and the outcome (a gRPC status name). Never images, templates or scores. Each
entry carries an HMAC-SHA256 of the previous entry's hash and its own canonical JSON, so an
edited, removed, inserted or reordered entry breaks the chain (:func:`verify`). The HMAC
key is derived from the subject store's data key (so the KEK protects it, and it is never
written anywhere): whoever can write ``audit.jsonl`` but lacks the KEK cannot remove an
entry and recompute the chain, and verifying needs the KEK too. A store without
encryption (insecure development mode) has no key; its chain is plain SHA-256.

Subjects are named by pseudonyms (``s:`` and a keyed hash of the id, from the subject
store), never by their ids: an erased subject leaves no id in the log, yet the entries
about it stay provable and findable by whoever knows the id (``ReadAudit`` with
``subject_id``), and ``ReadAudit`` shows the ids of subjects still enrolled. Each entry
is written and fsynced before the caller gets its answer; calls that end together share
one fsync (group commit), so the log does not hold concurrent calls to one disk flush each.
Another process may append too (``tambua keys`` records grants and revocations made on
the host): every append holds an advisory lock on the file and first takes up the chain
from whatever another writer added.

What a chain alone cannot show is the loss of its newest entries (a truncated tail is a
shorter valid chain): the head (sequence and hash) is what to copy elsewhere, e.g. into
each backup and sync bundle, and compare (``tambua audit verify --head SEQ:HASH``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import io
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from matcher.errors import RecordTampered

log = logging.getLogger(__name__)

KEY_NAME = "audit.jsonl/chain"  # what the chain key is derived under (SubjectStore.derive_key)

GENESIS = "0" * 64  # the "previous hash" of the first entry


@dataclass(frozen=True)
class AuditEntry:
    """One audited call.

    Attributes:
        seq: 1, 2, ... without gaps.
        unix_ms: when the call ended.
        principal_id / principal_name: who called (key id or certificate fingerprint).
        rpc: the method's short name; for a change made on the server host, what it was
            (``keys create <id> (...)``, ``keys revoke <id>``, ``keys seal <ids>``).
        partition: the gallery partition named by the request ("" when none).
        subject_ids: pseudonyms of the subjects the call touched (enrolled, deleted, read,
            verified against) or returned as candidates.
        outcome: ``OK`` or the gRPC status name (``PERMISSION_DENIED``, ...).
        prev: the previous entry's hash (``GENESIS`` for the first).
        hash: HMAC-SHA256 (SHA-256 without a key) over ``prev`` and this entry's other fields.
    """

    seq: int
    unix_ms: int
    principal_id: str
    principal_name: str
    rpc: str
    partition: str
    subject_ids: tuple[str, ...]
    outcome: str
    prev: str
    hash: str


def _digest(fields: dict, key: bytes | None) -> str:
    body = {k: v for k, v in fields.items() if k != "hash"}
    body["subject_ids"] = list(body["subject_ids"])
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    if key is None:
        return hashlib.sha256(canonical).hexdigest()
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def _entry(line: str) -> AuditEntry:
    d = json.loads(line)
    d["subject_ids"] = tuple(d["subject_ids"])
    return AuditEntry(**d)


class AuditLog:
    """Appends entries to ``path``. Thread-safe: one lock orders the chain.

    A line left half-written by a crash (its call never answered) is cut off at start.

    Args:
        path: the log file.
        key: the chain key (``store.derive_key(KEY_NAME)``); None: plain SHA-256 (a store
            without encryption).
        pseudonym: turns a subject id into what the log keeps (``store.pseudonyms()``); None
            keeps ids as given (logs that name no subjects: the host's ``keys`` commands).

    Raises:
        RecordTampered: the last entry is not chained under ``key`` (a log written before
            the chain was keyed, or one rewritten without the key): nothing is appended to it.
    """

    def __init__(self, path: Path, key: bytes | None = None, pseudonym: Callable[[str], str] | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self._key, self._pseudonym = path, key, pseudonym
        self._lock = threading.Lock()  # order: the chain and the file's lines
        self._flush = threading.Lock()  # one fsync at a time; waiters often find theirs done
        self._seq, self._head = 0, GENESIS
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with self._other_writers():
            self._catch_up()
        self._durable = self._seq  # every entry up to here is on disk

    @contextlib.contextmanager
    def _other_writers(self):
        """Excludes other processes appending to the file (``tambua keys`` on the host
        while the server runs) for one append: an advisory lock on the file."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _catch_up(self) -> None:
        """Take the chain's head from the file's last entry (called with the file locked:
        a half-written last line is then a crash's, never a live writer's, and is cut off)."""
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            log.warning("audit log: cutting off a half-written last entry (%d bytes)", len(data) - end)
            os.truncate(self.path, end)
        if end:
            last = _entry(data[data.rfind(b"\n", 0, end - 1) + 1:end].decode())
            if _digest(asdict(last), self._key) != last.hash:
                # Chaining on would bury the fault under new, valid-looking entries.
                unkeyed = self._key is not None and _digest(asdict(last), None) == last.hash
                raise RecordTampered(
                    f"{self.path.name}: its last entry (seq {last.seq}) is "
                    + ("chained without the store's key: a log from before the chain was keyed, or one "
                       f"rewritten without the key. Move it aside (check it with `tambua audit verify "
                       f"--unkeyed --log FILE`); a new keyed log starts in its place" if unkeyed
                       else "not chained under this store's key: altered, or another store's log"))
            self._seq, self._head = last.seq, last.hash
        self._size = end

    @property
    def head(self) -> tuple[int, str]:
        """(sequence, hash) of the newest entry: what to keep elsewhere to detect a cut tail."""
        with self._lock:
            return self._seq, self._head

    def append(self, principal_id: str, principal_name: str, rpc: str, partition: str,
               subject_ids: tuple[str, ...], outcome: str) -> AuditEntry:
        """Write one entry durably (fsync) and return it.

        The line is written in chain order under one lock; the fsync is taken outside it,
        and one fsync makes every line written before it durable, so calls that end at the
        same time wait for one flush between them instead of one each.
        """
        if self._pseudonym is not None:
            subject_ids = tuple(dict.fromkeys(self._pseudonym(s) for s in subject_ids))
        with self._lock, self._other_writers():
            if os.fstat(self._fd).st_size != self._size:  # another process appended since
                self._catch_up()
            fields = {"seq": self._seq + 1, "unix_ms": int(time.time() * 1000), "principal_id": principal_id,
                      "principal_name": principal_name, "rpc": rpc, "partition": partition,
                      "subject_ids": tuple(subject_ids), "outcome": outcome, "prev": self._head, "hash": ""}
            fields["hash"] = _digest(fields, self._key)
            entry = AuditEntry(**fields)
            line = json.dumps({**asdict(entry), "subject_ids": list(entry.subject_ids)}, sort_keys=True,
                              separators=(",", ":"), ensure_ascii=True) + "\n"
            self._size += os.write(self._fd, line.encode())
            self._seq, self._head = entry.seq, entry.hash
        self._sync_through(entry.seq)
        return entry

    def _sync_through(self, seq: int) -> None:
        with self._flush:
            if self._durable >= seq:  # an fsync that began after our write covered it
                return
            with self._lock:
                written = self._seq  # every line up to here has been written
            os.fsync(self._fd)
            self._durable = written

    def read(self, after_seq: int = 0, limit: int = 1000, about: str | None = None) -> list[AuditEntry]:
        """Entries with ``seq > after_seq``, oldest first, at most ``limit``; with ``about``
        (a pseudonym) only those naming that subject."""
        out: list[AuditEntry] = []
        with open(self.path, encoding="ascii") as f:
            for line in f:
                if not line.endswith("\n"):
                    break
                e = _entry(line)
                if e.seq > after_seq and (about is None or about in e.subject_ids):
                    out.append(e)
                    if len(out) >= limit:
                        break
        return out

    def check(self) -> "VerifyReport":
        """:func:`verify` of this log while it is written: every entry up to the head this
        process last wrote or read (a line being appended meanwhile is not judged)."""
        with self._lock:
            size, head = self._size, (self._seq, self._head)
        return verify(self.path, head if head[0] else None, self._key, upto=size)

    def close(self) -> None:
        os.close(self._fd)


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify` found: ``ok``, how many entries, the head, and the first fault."""

    ok: bool
    entries: int
    head: tuple[int, str]
    problem: str = ""


def head_of(path: Path) -> tuple[int, str]:
    """(sequence, hash) of the last whole entry, unchecked (:func:`verify` checks)."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if not end:
        return 0, GENESIS
    last = _entry(data[data.rfind(b"\n", 0, end - 1) + 1:end].decode())
    return last.seq, last.hash


def verify(path: Path, expect_head: tuple[int, str] | None = None, key: bytes | None = None,
           upto: int | None = None) -> VerifyReport:
    """Check the whole chain: every entry's hash (an HMAC under ``key``), its link to the
    one before, and the sequence without gaps; optionally that the head is (at least) a
    known one.

    Returns:
        The report; ``problem`` names the first bad line and what is wrong with it.
    """
    seq, head, n = 0, GENESIS, 0
    at_expected = None  # the hash this log has at the expected head's sequence number
    with open(path, "rb") as whole:
        # ``upto``: the bytes a live writer had written whole (the lines after it may be half-written).
        f = whole if upto is None else io.BytesIO(whole.read(upto))
        for number, raw in enumerate(f, start=1):
            try:
                e = _entry(raw.decode("ascii"))
            except (ValueError, TypeError, UnicodeDecodeError):
                return VerifyReport(False, n, (seq, head), f"line {number}: not an audit entry")
            if _digest(asdict(e), key) != e.hash:
                what = ("chained without the key (rewritten by someone without it, or from before the chain "
                        "was keyed)" if key is not None and _digest(asdict(e), None) == e.hash
                        else "edited (its hash does not match)")
                return VerifyReport(False, n, (seq, head), f"line {number} (seq {e.seq}): {what}")
            if e.seq != seq + 1 or e.prev != head:
                what = "entries missing or out of order" if e.seq > seq + 1 else "out of order or repeated"
                return VerifyReport(False, n, (seq, head),
                                    f"line {number} (seq {e.seq}, expected {seq + 1}): chain broken: {what}")
            seq, head, n = e.seq, e.hash, n + 1
            if expect_head is not None and seq == expect_head[0]:
                at_expected = head
    if expect_head is not None and at_expected != expect_head[1]:
        return VerifyReport(False, n, (seq, head),
                            f"the known head {expect_head[0]}:{expect_head[1][:12]}... is not in the log: entries were cut")
    return VerifyReport(True, n, (seq, head))
