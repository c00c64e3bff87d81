"""The store's part that keeps capture facts: for each enrolled sample its quality score and
components, image size, who captured it and where; and each capture an enrolment refused
(failure to enrol) with its reason. What the data-quality report (``tambua/quality.py``)
counts.

A part of :class:`store.sqlite.SubjectStore` (a mixin over its connection and lock), like
``store/cases.py``. Nothing here is biometric or names a subject: a sample's facts are
keyed by its subject's ref (erased with it), a refusal by nobody (the person was not
enrolled); so the columns stay in clear, as the report needs them.
"""

from __future__ import annotations

import json
import time

from matcher.repository import Refusal, SampleFact
from matcher.types import Capture, Subject


class CaptureFacts:
    """Capture facts of :class:`store.sqlite.SubjectStore` (see the module docstring)."""

    def _put_facts(self, subject: Subject, ref: bytes, site: str = "") -> None:
        """Record the facts of a subject's samples (caller holds a transaction).

        Args:
            site: where it was enrolled when its capture does not say (a peer's enrolment).
        """
        capture = subject.capture or Capture(site=site)
        sizes = {(m, p): rest for m, p, *rest in capture.sizes}
        unix_ms = subject.created_ns // 1_000_000
        self._db.executemany(
            "INSERT OR REPLACE INTO sample_facts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(subject.partition, ref, t.modality, t.position, t.template.quality,
              json.dumps(dict(t.template.components), sort_keys=True),
              *sizes.get((t.modality, t.position), (0, 0, 0)), capture.operator, capture.site or site, unix_ms)
             for t in subject.templates])

    def note_refusal(self, refusal: Refusal) -> None:
        """Record a refused capture (one synced write; the caller's enrolment failed anyway)."""
        with self._transaction():
            self._db.execute("INSERT INTO refusals VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (
                refusal.unix_ms or int(time.time() * 1000), refusal.partition, refusal.modality, refusal.position,
                refusal.reason, refusal.operator, refusal.site, refusal.width, refusal.height))

    def sample_facts(self, partitions: list[str]) -> list[SampleFact]:
        """The facts of every enrolled sample in ``partitions``, by subject."""
        marks = ",".join("?" * len(partitions))
        with self._lock:
            rows = self._db.execute(
                "SELECT partition, ref, modality, position, quality, components, width, height, dpi, operator, site, "
                f"unix_ms FROM sample_facts WHERE partition IN ({marks}) ORDER BY partition, ref, modality, position",
                partitions).fetchall()
        # The subject key is the ref's hex cut short: distinct enough within a report, and no
        # more than a report needs to tell samples of one subject from another's.
        return [SampleFact(p, ref.hex()[:16], m, pos, q, json.loads(c), w, h, dpi, op, site, t)
                for p, ref, m, pos, q, c, w, h, dpi, op, site, t in rows]

    def refusals(self, partitions: list[str], since_ms: int = 0) -> list[Refusal]:
        """Refused captures in ``partitions`` since ``since_ms``, oldest first."""
        marks = ",".join("?" * len(partitions))
        with self._lock:
            rows = self._db.execute(
                "SELECT unix_ms, partition, modality, position, reason, operator, site, width, height FROM refusals "
                f"WHERE partition IN ({marks}) AND unix_ms >= ? ORDER BY unix_ms", (*partitions, since_ms)).fetchall()
        return [Refusal(*r) for r in rows]

    def partitions(self) -> list[str]:
        """Every partition that holds a subject or a refused capture."""
        with self._lock:
            return [r[0] for r in self._db.execute(
                "SELECT partition FROM subjects UNION SELECT partition FROM refusals ORDER BY 1")]
