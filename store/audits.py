"""The store's part that keeps duplicate-audit checkpoints: what a long audit has searched
so far and the pairs it found, so that an audit cut short (a stopped server, a lost
client) goes on from there next time instead of starting over.

A part of :class:`store.sqlite.SubjectStore` (a mixin over its connection, lock and
sealer), like ``store/cases.py``. A checkpoint names subjects, so it is sealed like a case
record (bound to its key); it is dropped when its audit completes, and the audit's counts
(no subject named) are kept in its place for the data-quality report.
"""

from __future__ import annotations

import json
import time


_RESULT = "result|"  # the key prefix of completed audits' counts (checkpoints' keys hold a "|" later)


def _context(key: str) -> bytes:
    return b"\x00audit checkpoint\x00" + key.encode()


class AuditCheckpoints:
    """Audit checkpoints of :class:`store.sqlite.SubjectStore` (see the module docstring)."""

    def audit_checkpoint(self, key: str) -> dict | None:
        """The checkpoint saved under ``key``, or None."""
        with self._lock:
            row = self._db.execute("SELECT data FROM audit_checkpoints WHERE key=?", (key,)).fetchone()
        return None if row is None else json.loads(self._sealer.open(row[0], _context(key)))

    def save_audit_checkpoint(self, key: str, state: dict) -> None:
        """Keep ``state`` (JSON-able) under ``key``, replacing the one before (one synced write)."""
        sealed = self._sealer.seal(json.dumps(state, separators=(",", ":")).encode(), _context(key))
        with self._transaction():
            self._db.execute("INSERT OR REPLACE INTO audit_checkpoints VALUES (?, ?, ?)",
                             (key, sealed, int(time.time() * 1000)))

    def drop_audit_checkpoint(self, key: str) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM audit_checkpoints WHERE key=?", (key,))

    def note_audit_result(self, partition: str, summary: dict) -> None:
        """Keep the counts of a completed audit of ``partition`` ("*": every partition) for
        the data-quality report: no subject named, only how many."""
        self.save_audit_checkpoint(_RESULT + partition, summary)

    def audit_results(self) -> dict[str, dict]:
        """The last completed audit's counts, by partition."""
        with self._lock:
            keys = [r[0] for r in self._db.execute("SELECT key FROM audit_checkpoints WHERE key LIKE ?",
                                                   (_RESULT + "%",)).fetchall()]
        return {k[len(_RESULT):]: self.audit_checkpoint(k) for k in keys}

    def _drop_checkpoints(self) -> None:
        """Every unfinished audit's checkpoint (an erasure: they may name the subject). Caller
        holds a transaction."""
        self._db.execute("DELETE FROM audit_checkpoints WHERE key NOT LIKE ?", (_RESULT + "%",))
