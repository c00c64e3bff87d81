"""Durable subject store: SQLite in WAL mode, every write committed with a full sync.

The store is the system of record; FAISS indexes are rebuilt from it at start. A
write returns only after SQLite has synced it (``synchronous=FULL``), so an
enrolment acknowledged to a caller survives a killed process or a power cut.
Subject ids are the caller's opaque strings: no names or personal data are stored.

Template bytes pass through a :class:`Sealer` before they reach the disk: AES-256-GCM
under the store's data key when it was created with a key-encryption key
(:mod:`store.sealing`), each record bound to its partition, subject, modality,
position and model. Deleted rows are overwritten in the file (``secure_delete``).

Subject ids are personal data (a refugee's case number) and are never written in clear:
every table keys a subject by its *ref*, a keyed hash (HMAC-SHA256, 16 bytes) of the id
under a key derived from the data key, and the id itself is sealed beside it. Links
between subjects and flag candidates are refs. Deleting a subject erases it: its rows go,
its enrol change is emptied to ``erased`` (sync needs only that a number was used), and its
delete change keeps the sealed id only until every peer has acknowledged it, then only the
ref. The audit log names subjects by the same ref (:meth:`SubjectStore.pseudonym`), which
:meth:`SubjectStore.resolve` turns back into the id while the subject is enrolled. (A
store without encryption, for local development, seals nothing: its ids are readable.)
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from matcher.cases import Case, SampleImage
from matcher.errors import AlreadyExists, InvalidInput, NotFound
from matcher.repository import Applied, Change, Flag, PeerState
from matcher.templates import Template, parse_template
from matcher.types import StoredTemplate, Subject, normalise_id
from store import sealing
from store.audits import AuditCheckpoints
from store.cases import CaseBook
from store.facts import CaptureFacts
from store.schema import SCHEMA, SCHEMA_V5, SCHEMA_VERSION, run_script
from store.sealing import PlainSealer, Sealer

_DERIVED = b"\x00derived"  # appended to a row's context: its features cannot pass for its template


def _context(partition: str, subject_id: str, modality: str, position: int, model_id: str) -> bytes:
    return "\x00".join((partition, subject_id, modality, str(position), model_id)).encode()


def _id_context(partition: str, ref: bytes) -> bytes:
    return b"\x00subject id\x00" + partition.encode() + b"\x00" + ref


_REF_BYTES = 16
_PSEUDONYM = "s:"  # how the audit log writes a ref


# A template row with its subject's sealed id, and the row's storage cursor (last).
_TEMPLATE_ROWS = ("SELECT t.partition, t.ref, s.id, t.modality, t.position, t.data, t.derived, t.rowid FROM templates t "
                  "JOIN subjects s ON s.partition = t.partition AND s.ref = t.ref")


@dataclass(frozen=True)
class Pseudonyms:
    """Names subjects as :meth:`SubjectStore.pseudonym` does (called with an id)."""

    key: bytes = field(repr=False)

    def ref(self, subject_id: str) -> bytes:
        """The subject's ref: how the store's tables key it (the id already NFC)."""
        return hmac.new(self.key, subject_id.encode(), hashlib.sha256).digest()[:_REF_BYTES]

    def __call__(self, subject_id: str) -> str:
        return _PSEUDONYM + self.ref(unicodedata.normalize("NFC", subject_id)).hex()


class SubjectStore(CaseBook, CaptureFacts, AuditCheckpoints):
    """SQLite-backed subject store. Thread-safe: one connection, calls serialised by a lock.

    Args:
        path: database file (created with its folder when missing).
        kek: the key-encryption key. A new store created with one is encrypted for good;
            an encrypted store cannot be opened without the right one.

    Raises:
        KeyMismatch: no key for an encrypted store, a wrong key, or a key for a plain one.
    """

    def __init__(self, path: Path, kek: bytes | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # WAL + FULL: committed means on disk
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA secure_delete=ON")  # erased templates are zeroed in the file, not left in free pages
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall()) if "meta" in tables else {}
        if "schema_version" not in meta:
            run_script(self._db, SCHEMA)
            meta = self._create_meta(kek)
        version = int(meta["schema_version"])
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"store schema {version} is newer than the supported {SCHEMA_VERSION}")
        self._sealer = self._open_sealer(meta, kek)
        self._names = Pseudonyms(self._sealer.derive("subject ids"))
        if version < 6:
            run_script(self._db, SCHEMA_V5)  # tables an old version lacked, in the layout it had
            if version < 5:
                self._migrate(version)
            self._migrate_refs()  # to the current layout
        elif version < SCHEMA_VERSION:  # 6: the tables of cases and encounters are new; 7: changes name cases
            with self._transaction():
                run_script(self._db, SCHEMA)
                if "case_id" not in {r[1] for r in self._db.execute("PRAGMA table_info(changes)")}:
                    self._db.execute("ALTER TABLE changes ADD COLUMN case_id TEXT NOT NULL DEFAULT ''")
                self._db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))
        if version < 9:  # 9: capture facts are new: the quality scores the templates carry
            with self._transaction():
                self._fill_facts()
        if version < 10:  # 10: when a peer's bundle was last refused: unknown before, so empty
            with self._transaction():
                if "last_refused_ms" not in {r[1] for r in self._db.execute("PRAGMA table_info(peers)")}:
                    self._db.execute("ALTER TABLE peers ADD COLUMN last_refused_ms INTEGER")
                self._db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))

    def _migrate(self, version: int) -> None:
        """Version 1 had no change log: every subject enrolled so far becomes a change, in
        enrolment order, so that a first sync carries it. Versions 1-2 had no derived
        features: the column is added empty and filled at the next gallery load. Versions
        1-3 kept no audit heads of peers: empty until their next bundle. Versions 1-4 relayed
        nothing: every change so far was made here."""
        with self._transaction():
            if version < 2:
                self._db.execute("INSERT INTO changes (kind, partition, subject_id, unix_ms) "
                                 "SELECT 'enrol', partition, subject_id, created_ns / 1000000 FROM subjects "
                                 "ORDER BY created_ns, partition, subject_id")
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(templates)")}
            if "derived" not in columns:
                self._db.execute("ALTER TABLE templates ADD COLUMN derived BLOB")
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(peers)")}
            for name, kind in (("audit_seq", "INTEGER"), ("audit_hash", "TEXT")):
                if name not in columns:
                    self._db.execute(f"ALTER TABLE peers ADD COLUMN {name} {kind}")
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(changes)")}
            for name, kind in (("via", "TEXT NOT NULL DEFAULT ''"), ("origin", "TEXT NOT NULL DEFAULT ''"),
                               ("origin_seq", "INTEGER NOT NULL DEFAULT 0")):
                if name not in columns:
                    self._db.execute(f"ALTER TABLE changes ADD COLUMN {name} {kind}")
            self._db.execute("UPDATE meta SET value='5' WHERE key='schema_version'")

    def _migrate_refs(self) -> None:
        """Version 5 kept subject ids in clear: every table is rebuilt keyed by refs with the
        ids sealed, in one transaction; then the file is rewritten (VACUUM) and the WAL
        emptied, so that no free page or old frame keeps an id in clear."""
        db = self._db
        with self._transaction():
            db.execute("DROP INDEX IF EXISTS templates_by_model")  # the name is v6's too
            for table in ("templates", "subjects", "changes", "origins", "flags"):
                db.execute(f"ALTER TABLE {table} RENAME TO v5_{table}")
            run_script(db, SCHEMA)
            enrolled = set()
            for partition, sid, created, linked in db.execute(
                    "SELECT partition, subject_id, created_ns, linked FROM v5_subjects").fetchall():
                ref = self._ref(sid)
                enrolled.add((partition, sid))
                db.execute("INSERT INTO subjects VALUES (?, ?, ?, ?, ?)",
                           (partition, ref, self._seal_id(partition, ref, sid), created, self._refs(json.loads(linked))))
            db.executemany("INSERT INTO templates VALUES (?, ?, ?, ?, ?, ?, ?)", [
                (p, self._ref(sid), *rest) for p, sid, *rest in db.execute(
                    "SELECT partition, subject_id, modality, position, model_id, data, derived FROM v5_templates")])
            for seq, kind, p, sid, unix_ms, via, origin, origin_seq in db.execute(
                    "SELECT seq, kind, partition, subject_id, unix_ms, via, origin, origin_seq FROM v5_changes").fetchall():
                ref = self._ref(sid)
                erased = kind == "enrol" and (p, sid) not in enrolled  # deleted since: nothing to keep
                db.execute("INSERT INTO changes (seq, kind, partition, ref, id, unix_ms, via, origin, origin_seq) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (seq, "erased" if erased else kind, p, ref, None if erased else self._seal_id(p, ref, sid),
                            unix_ms, via, origin, origin_seq))
            db.executemany("INSERT INTO origins VALUES (?, ?, ?, ?)", [
                (p, self._ref(sid), site, seq) for p, sid, site, seq in db.execute("SELECT * FROM v5_origins")])
            db.executemany("INSERT INTO flags VALUES (?, ?, ?, ?, ?, ?)", [
                (p, self._ref(sid), kind, site, self._refs(json.loads(cands)), t)
                for p, sid, kind, site, cands, t in db.execute("SELECT * FROM v5_flags")])
            for table in ("templates", "subjects", "changes", "origins", "flags"):
                db.execute(f"DROP TABLE v5_{table}")
            self._forget_delivered()
            db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))
        with self._lock:
            db.execute("VACUUM")
        self._scrub()

    def _fill_facts(self) -> None:
        """Facts for subjects stored before they were kept (schema < 9): the quality score
        each template carries, where it came from (its origin site); no components, sizes
        or operator (never recorded). Caller holds a transaction."""
        rows = self._db.execute(
            "SELECT t.partition, t.ref, s.id, t.modality, t.position, t.model_id, t.data, s.created_ns, "
            "COALESCE(o.site, '') FROM templates t JOIN subjects s ON s.partition = t.partition AND s.ref = t.ref "
            "LEFT JOIN origins o ON o.partition = t.partition AND o.ref = t.ref "
            "WHERE NOT EXISTS (SELECT 1 FROM sample_facts f WHERE f.partition = t.partition AND f.ref = t.ref "
            "AND f.modality = t.modality AND f.position = t.position)").fetchall()
        facts = []
        for partition, ref, sealed_id, modality, position, model_id, data, created_ns, site in rows:
            subject_id = self._open_id(partition, ref, sealed_id)
            template, _ = self._parse(data, None, _context(partition, subject_id, modality, position, model_id))
            facts.append((partition, ref, modality, position, template.quality, "{}", 0, 0, 0, "", site,
                          created_ns // 1_000_000))
        self._db.executemany("INSERT INTO sample_facts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", facts)

    # --- refs: subject ids as keyed hashes, the ids sealed -------------------------------

    def _ref(self, subject_id: str) -> bytes:
        return self._names.ref(subject_id)

    def _refs(self, subject_ids) -> str:
        """JSON list of the refs (hex) of ``subject_ids``: how links and candidates are kept."""
        return json.dumps([self._ref(i).hex() for i in subject_ids])

    def _seal_id(self, partition: str, ref: bytes, subject_id: str) -> bytes:
        return self._sealer.seal(subject_id.encode(), _id_context(partition, ref))

    def _open_id(self, partition: str, ref: bytes, sealed: bytes) -> str:
        return self._sealer.open(sealed, _id_context(partition, ref)).decode()

    def _enrolled_id(self, partition: str, ref: bytes) -> str | None:
        """The id of ``ref`` if it is enrolled in ``partition`` (caller holds the lock)."""
        row = self._db.execute("SELECT id FROM subjects WHERE partition=? AND ref=?", (partition, ref)).fetchone()
        return None if row is None else self._open_id(partition, ref, row[0])

    def _enrolled_ids(self, partition: str, refs_json: str) -> tuple[str, ...]:
        """The ids of the refs in ``refs_json`` still enrolled in ``partition`` (caller holds the lock)."""
        ids = (self._enrolled_id(partition, bytes.fromhex(r)) for r in json.loads(refs_json))
        return tuple(i for i in ids if i is not None)

    def pseudonym(self, subject_id: str) -> str:
        """How records outside the store (the audit log) name a subject: ``s:`` and its ref
        in hex. It names the same subject in every partition and after the subject is gone,
        but only the key holder can tell which id it is (:meth:`resolve`)."""
        return self._names(subject_id)

    def pseudonyms(self) -> "Pseudonyms":
        """:meth:`pseudonym` as a value that names subjects without the store: a cluster
        front-end takes it once instead of asking the coordinator for every audited id."""
        return self._names

    def resolve(self, pseudonyms) -> dict[str, str]:
        """The ids of those ``pseudonyms`` whose subjects are enrolled (in any partition);
        erased and never-enrolled ones are absent."""
        out = {}
        with self._lock:
            for p in set(pseudonyms):
                try:
                    ref = bytes.fromhex(p.removeprefix(_PSEUDONYM)) if p.startswith(_PSEUDONYM) else b""
                except ValueError:
                    continue
                row = self._db.execute("SELECT partition, id FROM subjects WHERE ref=? LIMIT 1", (ref,)).fetchone()
                if row is not None:
                    out[p] = self._open_id(row[0], ref, row[1])
        return out

    def _forget_delivered(self) -> None:
        """Drop the sealed id of every deletion that each peer which could need it has
        acknowledged (the one it came from and the site that made it hold it already); only
        its ref stays. Caller holds a transaction."""
        self._db.execute(
            "UPDATE changes SET id = NULL WHERE kind = 'delete' AND id IS NOT NULL AND NOT EXISTS ("
            "SELECT 1 FROM peers WHERE peers.acked_seq < changes.seq AND peers.site != changes.via "
            "AND peers.site != changes.origin)")

    @contextlib.contextmanager
    def _transaction(self):
        """One synced write transaction; rolled back on any error."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _log(self, kind: str, partition: str, subject_id: str, via: str = "", origin: str = "",
             origin_seq: int = 0, case_id: str = "") -> None:
        ref = self._ref(subject_id)
        self._db.execute("INSERT INTO changes (kind, partition, ref, id, unix_ms, via, origin, origin_seq, case_id) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (kind, partition, ref, self._seal_id(partition, ref, subject_id), int(time.time() * 1000),
                          via, origin, origin_seq, case_id))

    def _create_meta(self, kek: bytes | None) -> dict[str, str]:
        meta = {"schema_version": str(SCHEMA_VERSION), "encryption": "none"}
        if kek is not None:
            meta.update(encryption="aes-256-gcm", kek_id=sealing.key_id(kek),
                        wrapped_dek=sealing.wrap(sealing.new_key(), kek).hex())
        self._db.executemany("INSERT INTO meta VALUES (?, ?)", list(meta.items()))
        return meta

    @staticmethod
    def _open_sealer(meta: dict[str, str], kek: bytes | None) -> Sealer:
        encrypted = meta.get("encryption", "none") != "none"
        if not encrypted:
            if kek is not None:
                raise sealing.KeyMismatch("this store was created without encryption; a key-encryption key "
                                          "cannot be applied to it afterwards")
            return PlainSealer()
        if kek is None:
            raise sealing.KeyMismatch("this store is encrypted: give its key-encryption key "
                                      "(kek_file or TAMBUA_KEK)")
        if sealing.key_id(kek) != meta["kek_id"]:
            raise sealing.KeyMismatch(f"wrong key-encryption key: this store needs key id {meta['kek_id']}, "
                                      f"the key given is {sealing.key_id(kek)}")
        return sealing.AesGcmSealer(sealing.unwrap(bytes.fromhex(meta["wrapped_dek"]), kek))

    @property
    def encrypted(self) -> bool:
        return not isinstance(self._sealer, PlainSealer)

    def seal_secret(self, data: bytes, name: str) -> bytes:
        """``data`` sealed under this store's data key (unchanged for a plain store), bound
        to ``name``: for secrets kept beside the store, e.g. the site's private keys."""
        return self._sealer.seal(data, b"\x00secret:" + name.encode())

    def derive_key(self, name: str) -> bytes | None:
        """A key for ``name`` derived from this store's data key (the audit chain's); None
        for a plain store, which has no key."""
        return None if not self.encrypted else self._sealer.derive(name)

    def open_secret(self, data: bytes, name: str) -> bytes:
        """What :meth:`seal_secret` sealed under ``name``.

        Raises:
            RecordTampered: altered bytes, or sealed under another name or store.
        """
        return self._sealer.open(data, b"\x00secret:" + name.encode())

    def rotate_kek(self, old_kek: bytes, new_kek: bytes) -> str:
        """Re-wrap the data key under ``new_kek`` (templates untouched; servers keep running).

        Returns:
            The new key's id.

        Raises:
            KeyMismatch: the store is not encrypted or ``old_kek`` is not its key.
        """
        with self._lock:
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("encryption", "none") == "none":
                raise sealing.KeyMismatch("this store is not encrypted")
            if sealing.key_id(old_kek) != meta["kek_id"]:
                raise sealing.KeyMismatch("the current key-encryption key given is not this store's")
            dek = sealing.unwrap(bytes.fromhex(meta["wrapped_dek"]), old_kek)
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("UPDATE meta SET value=? WHERE key='wrapped_dek'", (sealing.wrap(dek, new_kek).hex(),))
            self._db.execute("UPDATE meta SET value=? WHERE key='kek_id'", (sealing.key_id(new_kek),))
            self._db.execute("COMMIT")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the old wrapping leaves the WAL too
        return sealing.key_id(new_kek)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _import_ref(self, import_key: str) -> bytes:
        return self._ref("\x00import\x00" + import_key)  # keyed like refs: no record's hash is kept in clear

    def imported(self, partition: str, subject_id: str, import_key: str) -> bool:
        """Whether ``subject_id`` is enrolled from the import record with this key (sent
        again after a lost reply or a killed import: nothing to do)."""
        with self._lock:
            row = self._db.execute("SELECT key FROM import_keys WHERE partition=? AND ref=?",
                                   (partition, self._ref(subject_id))).fetchone()
        return row is not None and hmac.compare_digest(row[0], self._import_ref(import_key))

    def add(self, subject: Subject, images: tuple[SampleImage, ...] = (), import_key: str = "") -> None:
        """Store a subject and its templates (and the images to keep) in one synced transaction.

        Raises:
            AlreadyExists: the subject id is taken in that partition.
        """
        self.add_many([subject], {subject.subject_id: images} if images else None,
                      {subject.subject_id: import_key} if import_key else None)

    def add_many(self, subjects: list[Subject], images: dict[str, tuple[SampleImage, ...]] | None = None,
                 import_keys: dict[str, str] | None = None) -> None:
        """Store several subjects in one synced transaction (bulk import): all or none.
        Each becomes an ``enrol`` change of this site; ``import_keys`` (by subject id) are
        kept for :meth:`imported`.

        Raises:
            AlreadyExists: a subject id is taken; nothing is stored.
        """
        try:
            with self._transaction():
                self._insert(subjects)
                for s in subjects:
                    self._log("enrol", s.partition, s.subject_id)
                    if images and images.get(s.subject_id):
                        self._put_subject_images(s.partition, s.subject_id, images[s.subject_id])
                    if import_keys and import_keys.get(s.subject_id):
                        self._db.execute("INSERT INTO import_keys VALUES (?, ?, ?)", (
                            s.partition, self._ref(s.subject_id), self._import_ref(import_keys[s.subject_id])))
        except sqlite3.IntegrityError as e:
            what = f"subject {subjects[0].subject_id!r} is" if len(subjects) == 1 else "a subject of the batch is"
            raise AlreadyExists(f"{what} already enrolled") from e

    def _insert(self, subjects: list[Subject], site: str = "") -> None:
        """Insert subjects, their templates and capture facts (``site``: where they were
        enrolled, when their capture does not say). Caller holds a transaction."""
        heads, rows = [], []
        for s in subjects:
            ref = self._ref(s.subject_id)
            heads.append((s.partition, ref, self._seal_id(s.partition, ref, s.subject_id), s.created_ns,
                          self._refs(s.linked)))
            for t in s.templates:
                # Templates stay bound to the id itself (authenticated, never stored).
                context = _context(s.partition, s.subject_id, t.modality, t.position, t.template.model_id)
                rows.append((s.partition, ref, t.modality, t.position, t.template.model_id,
                             self._sealer.seal(t.template.to_bytes(), context), self._seal_derived(t.template, context)))
        self._db.executemany("INSERT INTO subjects VALUES (?, ?, ?, ?, ?)", heads)
        self._db.executemany("INSERT INTO templates (partition, ref, modality, position, model_id, data, "
                             "derived) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        for s, head in zip(subjects, heads):
            self._put_facts(s, head[1], site)

    def _seal_derived(self, template: Template, context: bytes) -> bytes | None:
        derive = getattr(template, "derived_bytes", None)
        return None if derive is None else self._sealer.seal(derive(), context + _DERIVED)

    def _parse(self, data: bytes, derived: bytes | None, context: bytes) -> tuple[Template, bool]:
        """The template of a row, with its persisted features loaded. Returns (template,
        whether the row should get fresh features: none stored, or made by other parameters)."""
        template = parse_template(self._sealer.open(data, context))
        load = getattr(template, "load_derived", None)
        if load is None:
            return template, False
        return template, derived is None or not load(self._sealer.open(derived, context + _DERIVED))

    def delete(self, partition: str, subject_id: str) -> None:
        """Delete a subject and its templates (a ``delete`` change of this site).

        Raises:
            NotFound: no such subject.
            InvalidInput: an id that is no id (see :func:`normalise_id`).
        """
        partition, subject_id = normalise_id(partition, "partition"), normalise_id(subject_id)
        with self._transaction():
            if not self._delete(partition, subject_id):
                raise NotFound(f"subject {subject_id!r} is not enrolled")
            self._log("delete", partition, subject_id)
            self._forget_delivered()
        self._scrub()

    def _delete(self, partition: str, subject_id: str, keep_cases: frozenset[str] = frozenset()) -> bool:
        """Erase a subject: its rows (encounters too), its origin, flags and cases (see
        :meth:`CaseBook._erase_cases`), and its enrol changes' content
        (they become ``erased``: the number stays for sync, the person goes)."""
        ref = self._ref(subject_id)
        cur = self._db.execute("DELETE FROM subjects WHERE partition=? AND ref=?", (partition, ref))
        if cur.rowcount:
            for table in ("origins", "flags"):
                self._db.execute(f"DELETE FROM {table} WHERE partition=? AND ref=?", (partition, ref))
            self._erase_cases(partition, ref, subject_id, frozenset(keep_cases))
            self._drop_checkpoints()  # a checkpoint may name the subject: the next audit starts over
            self._db.execute("UPDATE changes SET kind='erased', id=NULL WHERE partition=? AND ref=? AND kind='enrol'",
                             (partition, ref))
        return cur.rowcount == 1

    def _scrub(self) -> None:
        # secure_delete zeroes the freed pages, but older copies of them remain in WAL
        # frames until a checkpoint: erasure means none are left anywhere in the files.
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # --- site sync: this site's change log and what peers sent -----------------------------

    def changes_since(self, after_seq: int, limit: int = 10_000) -> list[Change]:
        """This site's changes after ``after_seq``, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT seq, kind, partition, ref, id, unix_ms, via, origin, origin_seq, case_id "
                                    "FROM changes WHERE seq > ? "
                                    "ORDER BY seq LIMIT ?", (after_seq, limit)).fetchall()
        # An erased enrolment or a deletion every peer has keeps no id: "".
        return [Change(seq, kind, p, "" if sealed is None else self._open_id(p, ref, sealed), *rest)
                for seq, kind, p, ref, sealed, *rest in rows]

    def oldest_pending_ms(self, site: str) -> int | None:
        """When the oldest change ``site`` has yet to acknowledge was made (None: none pending)."""
        with self._lock:
            acked = self._db.execute("SELECT acked_seq FROM peers WHERE site=?", (site,)).fetchone()
            return self._db.execute("SELECT MIN(unix_ms) FROM changes WHERE seq > ? AND via != ? AND origin != ?",
                                    (acked[0] if acked else 0, site, site)).fetchone()[0]

    def last_enrolled_ms(self) -> int | None:
        """When the subject stored last was enrolled (None: none). Read by every metrics
        scrape: the last row by rowid (insertion order), not a scan of every subject."""
        with self._lock:
            newest = self._db.execute("SELECT created_ns FROM subjects ORDER BY rowid DESC LIMIT 1").fetchone()
        return None if newest is None else newest[0] // 1_000_000

    def pending(self, site: str) -> int:
        """Changes ``site`` has not acknowledged and does not hold already
        (:meth:`Change.held_by`, counted in SQL)."""
        with self._lock:
            acked = self._db.execute("SELECT acked_seq FROM peers WHERE site=?", (site,)).fetchone()
            return self._db.execute("SELECT COUNT(*) FROM changes WHERE seq > ? AND via != ? AND origin != ?",
                                    (acked[0] if acked else 0, site, site)).fetchone()[0]

    def last_seq(self) -> int:
        """The newest change of this site (0 before any)."""
        with self._lock:
            return self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0]

    def peer(self, site: str) -> PeerState:
        """What this store knows of a peer site (zeros for one never heard of)."""
        with self._lock:
            row = self._db.execute("SELECT site, applied_seq, acked_seq, last_import_ms, last_export_ms, "
                                   "last_ack_ms, refused, gaps, audit_seq, audit_hash, last_refused_ms FROM peers "
                                   "WHERE site=?",
                                   (site,)).fetchone()
        return PeerState(*row) if row else PeerState(site)

    def note_peer(self, site: str, **fields: int) -> None:
        """Record sync events of a peer: ``acked_seq`` (only forwards), times, counters (added)."""
        allowed = {"acked_seq", "last_export_ms", "last_ack_ms", "refused", "gaps", "last_refused_ms"}
        if set(fields) - allowed:
            raise ValueError(f"unknown peer fields {sorted(set(fields) - allowed)}")
        with self._transaction():
            self._db.execute("INSERT OR IGNORE INTO peers (site) VALUES (?)", (site,))
            for name, value in fields.items():
                if name == "acked_seq":
                    self._db.execute("UPDATE peers SET acked_seq = MAX(acked_seq, ?) WHERE site=?", (value, site))
                    self._forget_delivered()
                elif name in ("refused", "gaps"):
                    self._db.execute(f"UPDATE peers SET {name} = {name} + ? WHERE site=?", (value, site))
                else:
                    self._db.execute(f"UPDATE peers SET {name} = ? WHERE site=?", (value, site))

    def note_audit_head(self, site: str, seq: int, digest: str) -> None:
        """Keep a peer's audit log head as its newest bundle stated it (only forwards: an older
        bundle imported again does not move it back)."""
        with self._transaction():
            self._db.execute("INSERT OR IGNORE INTO peers (site) VALUES (?)", (site,))
            self._db.execute("UPDATE peers SET audit_seq=?, audit_hash=? WHERE site=? "
                             "AND (audit_seq IS NULL OR audit_seq < ?)", (seq, digest, site, seq))

    def apply_remote(self, site: str, seq: int, kind: str, subject: Subject | None = None,
                     partition: str = "", subject_id: str = "",
                     flag: tuple[str, list[str]] | None = None, origin: str = "", origin_seq: int = 0,
                     case_for: Callable | None = None, case: Case | None = None,
                     settled: Callable | None = None) -> Applied:
        """Apply change ``seq`` of peer ``site`` in one transaction with its cursor.

        An applied enrolment or deletion joins this site's own change log (via ``site``), so
        the next bundles to its other peers relay it.

        Args:
            kind: ``enrol`` (with ``subject``), ``delete`` (``partition``, ``subject_id``),
                ``erased`` (an enrolment deleted at its site before it was sent) or ``skip``
                (a change the peer holds from this site: nothing to apply).
            flag: (kind, candidate ids) to record for adjudication with an enrolment.
            case_for: ``case_for(flag kind, candidate ids)`` -> (case, held templates): the
                adjudication case each raised flag opens, in the same transaction.
            case: for ``decision``, the case decided at another site (see
                :meth:`CaseBook._adopt`); ``settled(Settled, conflict case or None)`` is
                told what it changed here, once committed.
            origin / origin_seq: the site that made the change and its number there, when
                ``site`` relays it ("" / 0: ``site`` made it, as change ``seq``).

        Returns:
            ``applied``, ``already`` (seen before: nothing done), ``known`` (an enrolment
            that reached here before by another path: nothing done), ``conflict`` (the id is
            taken here by another enrolment: flagged, not stored), ``absent`` (a delete of
            nothing), ``erased`` / ``skipped`` (nothing to apply), ``disputed`` (a decision
            that contradicts one made here: a conflict case opened, nothing applied) or
            ``gap`` (``seq`` is not the next one from ``site``: nothing applied, the gap
            counted).
        """
        effect = None
        origin, origin_seq = (origin, origin_seq) if origin else (site, seq)
        with self._transaction():
            self._db.execute("INSERT OR IGNORE INTO peers (site) VALUES (?)", (site,))
            applied = self._db.execute("SELECT applied_seq FROM peers WHERE site=?", (site,)).fetchone()[0]
            if seq <= applied:
                return Applied.ALREADY
            if seq != applied + 1:
                self._db.execute("UPDATE peers SET gaps = gaps + 1 WHERE site=?", (site,))  # counted, nothing applied
                return Applied.GAP
            now = int(time.time() * 1000)
            outcome = Applied.APPLIED
            if kind == "enrol":
                ref = self._ref(subject.subject_id)
                taken = self._db.execute("SELECT 1 FROM subjects WHERE partition=? AND ref=?",
                                         (subject.partition, ref)).fetchone()
                came = self._db.execute("SELECT site, seq FROM origins WHERE partition=? AND ref=?",
                                        (subject.partition, ref)).fetchone()
                if taken and came == (origin, origin_seq):
                    outcome, flag = Applied.KNOWN, None
                elif taken:
                    outcome, flag = Applied.CONFLICT, ("ID_CONFLICT", [subject.subject_id])
                else:
                    self._insert([subject], origin)
                    self._db.execute("INSERT INTO origins VALUES (?, ?, ?, ?)",
                                     (subject.partition, ref, origin, origin_seq))
                    self._log("enrol", subject.partition, subject.subject_id, site, origin, origin_seq)
                if flag:
                    self._db.execute("INSERT OR REPLACE INTO flags VALUES (?, ?, ?, ?, ?, ?)",
                                     (subject.partition, ref, flag[0], site, self._refs(flag[1]), now))
                    if case_for is not None:
                        self._insert_case(*case_for(flag[0], flag[1]))
            elif kind == "delete":
                outcome = Applied.APPLIED if self._delete(partition, subject_id) else Applied.ABSENT
                if outcome is Applied.APPLIED:
                    self._log("delete", partition, subject_id, site, origin, origin_seq)
                    self._forget_delivered()
            elif kind == "decision":
                fresh, changed, conflict = self._adopt(case, site, origin, origin_seq)
                outcome = (Applied.DISPUTED if conflict else Applied.APPLIED) if fresh else Applied.KNOWN
                effect = (changed, conflict)
            elif kind == "erased":  # enrolled and deleted again before it was sent: nothing to store
                outcome = Applied.ERASED
            elif kind == "skip":  # relayed to us from here, or through here: we hold it
                outcome = Applied.SKIPPED
            else:
                raise InvalidInput(f"unknown change kind {kind!r}")
            self._db.execute("UPDATE peers SET applied_seq=?, last_import_ms=? WHERE site=?", (seq, now, site))
        if kind == "delete":
            self._scrub()
        if effect is not None and settled is not None:
            settled(*effect)
        return outcome

    def flags(self) -> list[Flag]:
        """Imported enrolments waiting for adjudication, oldest first."""
        out = []
        with self._lock:
            rows = self._db.execute("SELECT partition, ref, kind, site, candidates, unix_ms FROM flags "
                                    "ORDER BY unix_ms, ref").fetchall()
            for p, ref, k, site, candidates, t in rows:
                out.append(Flag(self._enrolled_id(p, ref) or "", p, k, site, self._enrolled_ids(p, candidates), t))
        return out

    def get(self, partition: str, subject_id: str) -> Subject:
        """Return a subject with its templates.

        Raises:
            NotFound: no such subject.
            InvalidInput: an id that is no id (see :func:`normalise_id`).
        """
        partition, subject_id = normalise_id(partition, "partition"), normalise_id(subject_id)
        ref = self._ref(subject_id)
        with self._lock:
            row = self._db.execute(
                "SELECT created_ns, linked FROM subjects WHERE partition=? AND ref=?", (partition, ref)
            ).fetchone()
            if row is None:
                raise NotFound(f"subject {subject_id!r} is not enrolled")
            trows = self._db.execute(
                "SELECT modality, position, model_id, data, derived FROM templates WHERE partition=? AND ref=? "
                "ORDER BY modality, position",
                (partition, ref),
            ).fetchall()
            linked = self._enrolled_ids(partition, row[1])  # links to erased subjects are gone with them
        templates = tuple(
            StoredTemplate(m, p, self._parse(d, dv, _context(partition, subject_id, m, p, model))[0])
            for m, p, model, d, dv in trows
        )
        return Subject(subject_id, partition, templates, linked, row[0])

    def templates(self, model_id: str) -> Iterator[tuple[str, str, int, Template]]:
        """Every stored template of one model as (partition, subject_id, position, template): index rebuilds."""
        with self._lock:
            rows = self._db.execute(
                f"{_TEMPLATE_ROWS} WHERE t.model_id=? ORDER BY t.partition, t.ref, t.position", (model_id,)).fetchall()
        yield from self._opened(model_id, rows)

    def template_page(self, model_id: str, after: int = 0, limit: int = 10_000,
                      keep: Callable[[str, str], bool] | None = None,
                      ) -> tuple[list[tuple[str, str, int, Template]], int]:
        """:meth:`templates` a page at a time, in storage order: of the ``limit`` rows after
        cursor ``after`` (0: from the first), those whose (partition, subject id) ``keep``
        accepts (all when None; the others are not decoded), and the cursor of the next
        page (0: no more). A cluster's shards load this way, so no answer holds a gallery."""
        with self._lock:
            rows = self._db.execute(f"{_TEMPLATE_ROWS} WHERE t.model_id=? AND t.rowid>? ORDER BY t.rowid LIMIT ?",
                                    (model_id, after, limit)).fetchall()
        return list(self._opened(model_id, rows, keep)), (rows[-1][-1] if len(rows) == limit else 0)

    def _opened(self, model_id: str, rows: list[tuple],
                keep: Callable[[str, str], bool] | None = None) -> Iterator[tuple[str, str, int, Template]]:
        stale = []
        for partition, ref, sealed_id, modality, position, data, derived, _ in rows:
            subject_id = self._open_id(partition, ref, sealed_id)
            if keep is not None and not keep(partition, subject_id):
                continue
            context = _context(partition, subject_id, modality, position, model_id)
            template, refresh = self._parse(data, derived, context)
            yield partition, subject_id, position, template
            if refresh:
                stale.append((template, context, partition, ref, modality, position))
        if stale:
            # The caller has had every template (a gallery load computes the features as it
            # adds them): keep them, so that the next start loads instead of computing.
            with self._transaction():
                self._db.executemany(
                    "UPDATE templates SET derived=? WHERE partition=? AND ref=? AND modality=? AND position=?",
                    [(self._seal_derived(t, c), p, r, m, pos) for t, c, p, r, m, pos in stale])

    def model_counts(self) -> dict[tuple[str, str], int]:
        """Number of stored templates per (modality, model id)."""
        with self._lock:
            rows = self._db.execute("SELECT modality, model_id, COUNT(*) FROM templates GROUP BY modality, model_id")
            return {(modality, model_id): n for modality, model_id, n in rows.fetchall()}

    def count_by_partition(self) -> dict[str, int]:
        """Number of enrolled subjects in each partition."""
        with self._lock:
            return dict(self._db.execute("SELECT partition, COUNT(*) FROM subjects GROUP BY partition").fetchall())

    def count(self, partition: str | None = None) -> int:
        """Number of enrolled subjects, in one partition or in all."""
        with self._lock:
            if partition is None:
                return self._db.execute("SELECT COUNT(*) FROM subjects").fetchone()[0]
            return self._db.execute("SELECT COUNT(*) FROM subjects WHERE partition=?", (partition,)).fetchone()[0]
