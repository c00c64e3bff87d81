"""The store's part that keeps adjudication cases, their held captures and the encounters
that "same person" decisions attach to subjects.

A part of :class:`store.sqlite.SubjectStore` (a mixin over its connection, lock and
sealer), not a store of its own: a decision enrols or attaches in the same transaction
that closes its case, so that a crash leaves it applied whole or not at all. Case records
are sealed like templates (bound to the case id), the held capture's templates like a
subject's (bound to the case, modality, position and model); the columns in clear are
what the queue filters and sorts on: partition, state, source, times, and the held
subject's ref.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace

from matcher.cases import PAIRWISE, Case, CaseSource, CaseState, Decision, SampleImage, Settled, Verdict, new_case_id
from matcher.errors import AlreadyExists, FailedPrecondition, NotFound
from matcher.templates import Template
from matcher.types import StoredTemplate, Subject, normalise_id

def _case_context(case_id: str) -> bytes:
    return b"\x00case\x00" + case_id.encode()


def _held_context(case_id: str, modality: str, position: int, model_id: str) -> bytes:
    return "\x00".join(("\x00held", case_id, modality, str(position), model_id)).encode()


def _case_image_context(case_id: str, modality: str, position: int) -> bytes:
    return "\x00".join(("\x00case image", case_id, modality, str(position))).encode()


def _subject_image_context(partition: str, subject_id: str, modality: str, position: int) -> bytes:
    return "\x00".join(("\x00subject image", partition, subject_id, modality, str(position))).encode()


def _encounter_context(partition: str, subject_id: str, encounter: int, modality: str, position: int,
                       model_id: str) -> bytes:
    return "\x00".join(("\x00encounter", partition, subject_id, str(encounter), modality, str(position),
                        model_id)).encode()


class CaseBook:
    """Cases in the subject store (see the module docstring). Uses the store's ``_db``,
    ``_lock``, ``_transaction``, ``_sealer``, ``_ref``, ``_insert``, ``_log`` and
    ``_seal_derived``/``_parse``."""

    # --- writing --------------------------------------------------------------------------

    def open_case(self, case: Case, templates: tuple[StoredTemplate, ...], images: tuple[SampleImage, ...] = ()
                  ) -> None:
        """Store a new case and its held capture (with the images to keep) in one synced transaction."""
        with self._transaction():
            self._insert_case(case, templates, images)

    def _insert_case(self, case: Case, templates: tuple[StoredTemplate, ...] = (),
                     images: tuple[SampleImage, ...] = ()) -> None:
        """:meth:`open_case` inside the caller's transaction (sync opens one with an import)."""
        self._db.execute("INSERT INTO cases VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (case.case_id, case.partition, self._ref(case.subject_id), case.state.value,
                          case.source.value, case.created_ms, case.created_ms,
                          self._sealer.seal(case.to_json(), _case_context(case.case_id))))
        self._db.executemany("INSERT OR IGNORE INTO case_subjects VALUES (?, ?, ?)",
                             [(case.case_id, case.partition, self._ref(c.subject_id)) for c in case.candidates])
        rows = []
        for t in templates:
            context = _held_context(case.case_id, t.modality, t.position, t.template.model_id)
            rows.append((case.case_id, t.modality, t.position, t.template.model_id,
                         self._sealer.seal(t.template.to_bytes(), context), self._seal_derived(t.template, context)))
        self._db.executemany("INSERT INTO case_templates VALUES (?, ?, ?, ?, ?, ?)", rows)
        self._db.executemany("INSERT INTO case_images VALUES (?, ?, ?, ?)", [
            (case.case_id, i.modality, i.position,
             self._sealer.seal(i.data, _case_image_context(case.case_id, i.modality, i.position)))
            for i in images])

    def _put_subject_images(self, partition: str, subject_id: str, images: tuple[SampleImage, ...]) -> None:
        """Keep an enrolled subject's images (caller holds the transaction)."""
        ref = self._ref(subject_id)
        self._db.executemany("INSERT OR REPLACE INTO subject_images VALUES (?, ?, ?, ?, ?)", [
            (partition, ref, i.modality, i.position,
             self._sealer.seal(i.data, _subject_image_context(partition, subject_id, i.modality, i.position)))
            for i in images])

    def _put_case(self, case: Case) -> None:
        """Rewrite a case's record and state (caller holds a transaction)."""
        self._db.execute("UPDATE cases SET state=?, updated_ms=?, data=? WHERE case_id=?",
                         (case.state.value, case.updated_ms, self._sealer.seal(case.to_json(),
                                                                               _case_context(case.case_id)),
                          case.case_id))

    def join_case(self, partition: str, case_id: str, attempt) -> Case:
        """Record a later enrolment that matched the held capture of an open case."""
        with self._transaction():
            case = self._load_case(partition, case_id).with_attempt(attempt)
            self._put_case(case)
        return case

    def decide_case(self, partition: str, case_id: str, decision: Decision, enrol: Subject | None = None,
                    attach: tuple[str, tuple[StoredTemplate, ...]] | None = None,
                    keep_images: bool = False) -> tuple[Case, Settled]:
        """Apply a decision in one synced transaction: the case closes, its held capture
        goes, and ``enrol`` is stored (``different``; with ``keep_images`` the case's
        images become the subject's) or ``attach`` = (subject id, templates) becomes that
        subject's next encounter (``same``). The case keeps its images until
        :meth:`expire_case_images`. A case about two enrolled subjects (:data:`PAIRWISE`)
        merges or links them (:meth:`_settle`); its flag is resolved. The decision becomes
        a ``decision`` change: peers receive the decided case (:meth:`_adopt`).

        Returns:
            (the decided case, what it changed among enrolled subjects).

        Raises:
            NotFound: no such case in ``partition``, or the subject to attach to is gone.
            FailedPrecondition: the case was decided already (by whom and when is said).
            AlreadyExists: ``enrol``'s id was taken since the case was opened.
        """
        settled = Settled()
        with self._transaction():
            case = self._load_case(partition, case_id)
            if case.state is not CaseState.OPEN:
                raise FailedPrecondition(f"case {case_id} is {case.closed()}", "CASE_DECIDED")
            decided = case.decided(decision)
            if enrol is not None:
                try:
                    self._insert([enrol])
                except sqlite3.IntegrityError:
                    raise AlreadyExists(f"subject {enrol.subject_id!r} was enrolled since case {case_id} "
                                        "was opened: decide it as the same person, or withdraw it") from None
                self._log("enrol", enrol.partition, enrol.subject_id)
                if keep_images:
                    self._put_subject_images(partition, enrol.subject_id, self._case_images(case_id))
            if attach is not None:
                self._attach(partition, case_id, *attach, decision.unix_ms)
            self._put_case(decided)
            if case.kind in PAIRWISE:
                settled = self._settle(partition, decided, decision, case_id)
            self._close(decided)
            self._log("decision", partition, case.subject_id, case_id=case_id)
        return decided, settled

    def _close(self, case: Case) -> None:
        """A case is closed (caller holds the transaction): its held capture and flag go."""
        self._db.execute("DELETE FROM flags WHERE partition=? AND ref=?", (case.partition, self._ref(case.subject_id)))
        self._db.execute("DELETE FROM case_templates WHERE case_id=?", (case.case_id,))

    def _present(self, partition: str, subject_id: str) -> bool:
        return self._db.execute("SELECT 1 FROM subjects WHERE partition=? AND ref=?",
                                (partition, self._ref(subject_id))).fetchone() is not None

    def _case_refs(self, case: Case) -> list[bytes]:
        """The refs of every subject a case names (its own and its candidates')."""
        return [self._ref(i) for i in {case.subject_id, *(c.subject_id for c in case.candidates)}]

    def _question(self, partition: str, case: Case) -> dict[str, Case]:
        """Every case here (any state; ``case`` too) that asks about a pair of subjects
        ``case`` asks about: the same question, as this or another site put it."""
        refs = self._case_refs(case)
        marks = ",".join("?" * len(refs))
        ids = {r[0] for r in self._db.execute(
            f"SELECT case_id FROM cases WHERE partition=? AND ref IN ({marks}) UNION "
            f"SELECT case_id FROM case_subjects WHERE partition=? AND ref IN ({marks})",
            (partition, *refs, partition, *refs))}
        found = {cid: self._load_case(partition, cid) for cid in ids}
        return {cid: c for cid, c in found.items() if c.pairs() & case.pairs()} | {case.case_id: case}

    def _settle(self, partition: str, case: Case, decision: Decision, made_in: str) -> Settled:
        """Bring the subjects a case asks about to what ``decision`` says, from whatever an
        earlier decision on the same question left here (caller holds the transaction).

        ``same`` merges ``decision.removed`` into ``decision.subject_id``: its templates
        become an encounter of the kept subject (tagged with ``made_in``, the case the
        decision was made in) and it goes, its cases kept as the record. A merge is never
        made where either subject is missing, so no capture is dropped without a home.
        ``different`` links the case's subject to its candidates. A merge made here
        earlier by a decision this one does not repeat is undone first: the merged subject
        comes back from its encounter.
        """
        question = self._question(partition, case)
        removed: list[str] = []
        restored: list[str] = []
        merged = False
        refs = self._case_refs(case)
        rows = self._db.execute(
            f"SELECT DISTINCT ref, encounter, case_id, created_ms FROM encounters WHERE partition=? AND "
            f"ref IN ({','.join('?' * len(refs))})", (partition, *refs)).fetchall()
        for ref, n, enc_case, ms in rows:
            prior = question.get(enc_case)
            if prior is None or prior.decision is None or prior.decision.verdict is not Verdict.SAME:
                continue  # an encounter of another question
            earlier = prior.decision
            if earlier.removed == "":
                continue  # a held capture attached, not a merge of two subjects
            if decision.verdict is Verdict.SAME and earlier.agrees(decision):
                merged = True
                continue
            if not self._present(partition, earlier.removed):
                templates = next(ts for k, _, _, ts in self.encounters(partition, earlier.subject_id) if k == n)
                self._insert([Subject(earlier.removed, partition, templates, (), ms * 1_000_000)])
                restored.append(earlier.removed)
            self._db.execute("DELETE FROM encounters WHERE partition=? AND ref=? AND encounter=?", (partition, ref, n))
        if decision.verdict is Verdict.SAME and decision.removed and not merged:
            kept, gone = decision.subject_id, decision.removed
            if self._present(partition, kept) and self._present(partition, gone):
                self._attach(partition, made_in, kept, self.get(partition, gone).templates, decision.unix_ms)
                self._delete(partition, gone, keep_cases=set(question))
                removed.append(gone)
        elif decision.verdict is Verdict.DIFFERENT and self._present(partition, case.subject_id):
            self._link(partition, case.subject_id, [c.subject_id for c in case.candidates if c.subject_id !=
                                                    case.subject_id])
        return Settled(tuple(removed), tuple(r for r in restored if r not in removed))

    def _link(self, partition: str, subject_id: str, others: list[str]) -> None:
        """Record that a subject was decided against ``others`` (its ``linked``)."""
        ref = self._ref(subject_id)
        row = self._db.execute("SELECT linked FROM subjects WHERE partition=? AND ref=?", (partition, ref)).fetchone()
        if row is not None:
            merged = list(dict.fromkeys([*json.loads(row[0]), *json.loads(self._refs(others))]))
            self._db.execute("UPDATE subjects SET linked=? WHERE partition=? AND ref=?",
                             (json.dumps(merged), partition, ref))

    def _adopt(self, remote: Case, site: str, origin: str, origin_seq: int) -> tuple[bool, Settled, Case | None]:
        """A case decided at another site arrives (caller holds the transaction): kept here
        as decided, and every case here on the same question is brought in line.

        An open case here closes with the remote decision, which is applied (merge, link).
        A case decided here the same way needs nothing; one the remote decision settles
        (its ``supersedes``) is brought to it. A case decided here otherwise is a
        conflict: nothing is applied over the local decision, and a new case
        (``DECISION_CONFLICT``) holding both decisions goes to a person here; its
        decision settles both cases at every site.

        Returns:
            (False if the case was here already, what changed, the conflict case opened).
        """
        if self._db.execute("SELECT 1 FROM cases WHERE case_id=?", (remote.case_id,)).fetchone():
            return False, Settled(), None
        decision = replace(remote.decision, site=remote.decision.site or origin,
                           case_id=remote.decision.case_id or remote.case_id)
        remote = replace(remote, site=remote.site or origin, decision=decision)
        self._insert_case(remote)
        question = self._question(remote.partition, remote)
        open_here, disputed = [], []
        for case in question.values():
            if case.case_id == remote.case_id:
                continue
            if case.state is CaseState.OPEN:
                open_here.append(case)
                continue
            if case.decision is None or remote.case_id in case.supersedes:
                continue  # settled here past the remote decision already
            if {case.case_id, case.decision.case_id} & set(remote.supersedes) or case.decision.agrees(decision):
                continue
            disputed.append(case)
        if disputed:
            first = disputed[0]
            mine = [replace(c.decision, case_id=c.decision.case_id or c.case_id) for c in disputed]
            conflict = Case(new_case_id(), remote.partition, first.subject_id, CaseSource.SYNC, "DECISION_CONFLICT",
                            int(time.time() * 1000), "", "", decision.site, candidates=first.candidates,
                            conflicting=(*mine, decision),
                            supersedes=tuple(dict.fromkeys([*(d.case_id for d in mine), remote.case_id])))
            self._insert_case(conflict)
            self._log("decision", remote.partition, remote.subject_id, site, origin, origin_seq, remote.case_id)
            return True, Settled(), conflict
        for case in open_here:
            closed = case.decided(decision)
            self._put_case(closed)
            self._close(closed)
        settled = self._settle(remote.partition, remote, decision, remote.case_id)
        self._log("decision", remote.partition, remote.subject_id, site, origin, origin_seq, remote.case_id)
        return True, settled, None

    def _attach(self, partition: str, case_id: str, subject_id: str, templates: tuple[StoredTemplate, ...],
                unix_ms: int) -> None:
        ref = self._ref(subject_id)
        if not self._present(partition, subject_id):
            raise NotFound(f"subject {subject_id!r} is not enrolled")
        n = self._db.execute("SELECT COALESCE(MAX(encounter), 0) + 1 FROM encounters WHERE partition=? AND ref=?",
                             (partition, ref)).fetchone()[0]
        self._db.executemany("INSERT INTO encounters VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [
            (partition, ref, n, case_id, unix_ms, t.modality, t.position, t.template.model_id,
             self._sealer.seal(t.template.to_bytes(), _encounter_context(partition, subject_id, n, t.modality,
                                                                         t.position, t.template.model_id)))
            for t in templates])

    def _erase_cases(self, partition: str, ref: bytes, subject_id: str, keep_cases: frozenset[str] = frozenset()
                     ) -> None:
        """A subject is being erased (caller holds the transaction): the cases about its
        capture go whole, as do those decided onto it; in the others its candidacy goes.
        ``keep_cases``: the cases of the question whose decision merges this subject into
        another (they stay whole, as the record of that decision)."""
        about = [r[0] for r in self._db.execute("SELECT case_id FROM cases WHERE partition=? AND ref=?",
                                                (partition, ref))]
        self._db.executemany("DELETE FROM cases WHERE case_id=?", [(c,) for c in about if c not in keep_cases])
        named = [r[0] for r in self._db.execute("SELECT case_id FROM case_subjects WHERE partition=? AND ref=?",
                                                (partition, ref))]
        for case_id in named:
            if case_id in keep_cases:
                continue
            case = self._load_case(partition, case_id)
            if case.decision is not None and case.decision.subject_id == subject_id:
                self._db.execute("DELETE FROM cases WHERE case_id=?", (case_id,))
            else:
                self._put_case(case.without(subject_id))
                self._db.execute("DELETE FROM case_subjects WHERE case_id=? AND ref=?", (case_id, ref))

    # --- reading --------------------------------------------------------------------------

    def _load_case(self, partition: str, case_id: str) -> Case:
        row = self._db.execute("SELECT data FROM cases WHERE case_id=? AND partition=?",
                               (case_id, partition)).fetchone()
        if row is None:
            raise NotFound(f"no case {case_id!r} in partition {partition!r}")
        return Case.from_json(self._sealer.open(row[0], _case_context(case_id)))

    def case(self, partition: str, case_id: str) -> Case:
        """One case.

        Raises:
            NotFound: no such case in ``partition`` (a case of another partition is not
                said to exist).
        """
        partition = normalise_id(partition, "partition")
        with self._lock:
            return self._load_case(partition, case_id)

    def case_templates(self, partition: str, case_id: str) -> tuple[StoredTemplate, ...]:
        """The held capture of an open case (empty once decided)."""
        with self._lock:
            self._load_case(partition, case_id)  # NotFound outside its partition
            rows = self._db.execute("SELECT modality, position, model_id, data, derived FROM case_templates "
                                    "WHERE case_id=? ORDER BY modality, position", (case_id,)).fetchall()
        return tuple(StoredTemplate(m, p, self._parse(d, dv, _held_context(case_id, m, p, model))[0])
                     for m, p, model, d, dv in rows)

    def _case_images(self, case_id: str) -> tuple[SampleImage, ...]:
        rows = self._db.execute("SELECT modality, position, data FROM case_images WHERE case_id=? "
                                "ORDER BY modality, position", (case_id,)).fetchall()
        return tuple(SampleImage(m, p, self._sealer.open(d, _case_image_context(case_id, m, p))) for m, p, d in rows)

    def case_images(self, partition: str, case_id: str) -> tuple[SampleImage, ...]:
        """The images kept with a case's capture (none once expired)."""
        with self._lock:
            self._load_case(partition, case_id)  # NotFound outside its partition
            return self._case_images(case_id)

    def subject_images(self, partition: str, subject_id: str) -> tuple[SampleImage, ...]:
        """The images kept with an enrolled subject (keep_images = "all")."""
        partition, subject_id = normalise_id(partition, "partition"), normalise_id(subject_id)
        with self._lock:
            rows = self._db.execute("SELECT modality, position, data FROM subject_images WHERE partition=? AND ref=? "
                                    "ORDER BY modality, position", (partition, self._ref(subject_id))).fetchall()
        return tuple(SampleImage(m, p, self._sealer.open(d, _subject_image_context(partition, subject_id, m, p)))
                     for m, p, d in rows)

    def expire_case_images(self, closed_before_ms: int) -> int:
        """Drop the images of cases decided or withdrawn before ``closed_before_ms`` (the
        retention period); returns how many images went."""
        with self._transaction():
            n = self._db.execute("DELETE FROM case_images WHERE case_id IN (SELECT case_id FROM cases "
                                 "WHERE state != ? AND updated_ms < ?)", (CaseState.OPEN.value, closed_before_ms)
                                 ).rowcount
        if n:
            self._scrub()
        return n

    def held_case(self, partition: str, subject_id: str) -> str | None:
        """The open case whose held capture asked for ``subject_id``, if any."""
        with self._lock:
            row = self._db.execute("SELECT case_id FROM cases WHERE partition=? AND ref=? AND state=?",
                                   (partition, self._ref(subject_id), CaseState.OPEN.value)).fetchone()
        return None if row is None else row[0]

    def cases(self, partitions: Iterable[str] | None = None, state: CaseState | None = CaseState.OPEN,
              source: str = "", created_before_ms: int = 0, created_after_ms: int = 0, after: str = "",
              limit: int = 100) -> tuple[list[Case], str]:
        """Cases oldest first, a page at a time.

        Args:
            partitions: only these (None: every partition).
            state: only cases in this state (None: every state).
            source: only from this source ("": any).
            created_before_ms / created_after_ms: age bounds (0: none).
            after: the cursor a previous page returned ("": from the oldest).

        Returns:
            (the page, the cursor of the next page or "" when this was the last).
        """
        where, args = self._case_filter(partitions, state, source, created_before_ms, created_after_ms)
        if after:
            ms, _, cid = after.partition("/")
            where.append("(created_ms, case_id) > (?, ?)")
            args += [int(ms), cid]
        sql = "SELECT case_id, data, created_ms FROM cases" + (" WHERE " + " AND ".join(where) if where else "")
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY created_ms, case_id LIMIT ?", (*args, limit + 1)).fetchall()
        page = [Case.from_json(self._sealer.open(data, _case_context(cid))) for cid, data, _ in rows[:limit]]
        more = len(rows) > limit
        return page, (f"{rows[limit - 1][2]}/{rows[limit - 1][0]}" if more and limit else "")

    def case_counts(self, partitions: Iterable[str] | None = None, state: CaseState | None = CaseState.OPEN
                    ) -> dict[tuple[str, str], int]:
        """Number of cases per (partition, source) (the queue's header)."""
        where, args = self._case_filter(partitions, state, "", 0, 0)
        sql = ("SELECT partition, source, COUNT(*) FROM cases" + (" WHERE " + " AND ".join(where) if where else "")
               + " GROUP BY partition, source")
        with self._lock:
            return {(p, s): n for p, s, n in self._db.execute(sql, args).fetchall()}

    @staticmethod
    def _case_filter(partitions, state, source, before_ms, after_ms) -> tuple[list[str], list]:
        where, args = [], []
        if partitions is not None:
            partitions = list(partitions)
            where.append(f"partition IN ({','.join('?' * len(partitions))})")
            args += partitions
        if state is not None:
            where.append("state=?")
            args.append(CaseState(state).value)
        if source:
            where.append("source=?")
            args.append(source)
        if before_ms:
            where.append("created_ms<?")
            args.append(before_ms)
        if after_ms:
            where.append("created_ms>?")
            args.append(after_ms)
        return where, args

    def held_templates(self, model_id: str) -> Iterator[tuple[str, str, int, Template]]:
        """Every held capture's templates of one model as (partition, case id, position,
        template): the pending gallery, rebuilt at start."""
        with self._lock:
            rows = self._db.execute("SELECT c.partition, t.case_id, t.modality, t.position, t.data, t.derived "
                                    "FROM case_templates t JOIN cases c ON c.case_id = t.case_id "
                                    "WHERE t.model_id=? AND c.state=?", (model_id, CaseState.OPEN.value)).fetchall()
        for partition, case_id, modality, position, data, derived in rows:
            yield partition, case_id, position, self._parse(data, derived,
                                                            _held_context(case_id, modality, position, model_id))[0]

    def encounters(self, partition: str, subject_id: str) -> list[tuple[int, str, int, tuple[StoredTemplate, ...]]]:
        """A subject's attached encounters: (number, case id, unix ms, templates), oldest first."""
        partition, subject_id = normalise_id(partition, "partition"), normalise_id(subject_id)
        with self._lock:
            rows = self._db.execute("SELECT encounter, case_id, created_ms, modality, position, model_id, data "
                                    "FROM encounters WHERE partition=? AND ref=? ORDER BY encounter, modality, "
                                    "position", (partition, self._ref(subject_id))).fetchall()
        out: dict[int, tuple[str, int, list]] = {}
        for n, case_id, ms, modality, position, model_id, data in rows:
            context = _encounter_context(partition, subject_id, n, modality, position, model_id)
            template = self._parse(data, None, context)[0]
            out.setdefault(n, (case_id, ms, []))[2].append(StoredTemplate(modality, position, template))
        return [(n, case_id, ms, tuple(ts)) for n, (case_id, ms, ts) in out.items()]
