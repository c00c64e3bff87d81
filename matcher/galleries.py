"""Where the engine's searchable templates live: :class:`Galleries` is what the engine asks
of them, :class:`LocalGalleries` the one-process answer (one matcher per modality in this
process), and ``cluster/`` the answer spread over shard actors. The engine's dedup, FPIR
and fusion stay the engine's; a galleries implementation only finds and scores subjects.

The engine searches in two steps, and an implementation must keep them apart for answers
to stay equal however the subjects are spread: each sample's best subjects over the whole
partition make the shortlist; every sample's evidence is then fused for the shortlisted
subjects. ``candidates`` gives both at once, so that galleries spread over shards answer
in one round: each shard scores its own shortlist, which holds every subject of the
partition-wide shortlist that lives there.
"""

from __future__ import annotations

import concurrent.futures
import os

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from matcher.base import ModalityMatcher
from matcher.errors import Unimplemented
from matcher.fusion import fuse
from matcher.types import StoredTemplate


@dataclass(frozen=True)
class Found:
    """What :meth:`Galleries.candidates` found.

    Attributes:
        hits: each sample's best subjects, best first: (subject id, FMR, ranking key).
        fused: every subject in ``hits`` with its fused FMR over all samples.
        subjects: how many subjects of the partition were searched, where the galleries
            count them (shards do: the count then comes from the very copies that were
            searched, exact while other front-ends enrol); None: the engine's own count.
    """

    hits: list[list[tuple[str, float, float]]]
    fused: dict[str, float]
    subjects: int | None = None


class Galleries(Protocol):
    """What the engine needs of its searchable templates."""

    def modalities(self) -> tuple[str, ...]: ...

    def load(self, rows: Iterable[tuple[str, str, str, int, object]]) -> None: ...

    def add(self, partition: str, subject_id: str, templates: tuple[StoredTemplate, ...]) -> None: ...

    def remove(self, partition: str, subject_id: str) -> None: ...

    def score(self, partition: str, subject_ids: Iterable[str],
              templates: tuple[StoredTemplate, ...]) -> dict[str, float]: ...

    def candidates(self, partition: str, templates: tuple[StoredTemplate, ...], k: int,
                   within: frozenset[str] | None = None, observer=None) -> Found: ...

    def sizes(self) -> dict[str, int]: ...


class LocalGalleries:
    """Every modality's matcher in this process.

    Args:
        matchers: one per modality.
    """

    def __init__(self, matchers: dict[str, ModalityMatcher]) -> None:
        self.matchers = matchers

    def modalities(self) -> tuple[str, ...]:
        return tuple(self.matchers)

    def matcher(self, modality: str) -> ModalityMatcher:
        if modality not in self.matchers:
            raise Unimplemented(f"{modality} matching is not available yet")
        return self.matchers[modality]

    def load(self, rows: Iterable[tuple[str, str, str, int, object]]) -> None:
        """(modality, partition, subject id, position, template) rows, as the store gives them."""
        for modality, partition, subject_id, position, template in rows:
            self.matchers[modality].add(partition, subject_id, position, template)

    def add(self, partition: str, subject_id: str, templates: tuple[StoredTemplate, ...]) -> None:
        for t in templates:
            self.matchers[t.modality].add(partition, subject_id, t.position, t.template)

    def remove(self, partition: str, subject_id: str) -> None:
        for m in self.matchers.values():
            m.remove(partition, subject_id)

    def search(self, partition: str, templates: tuple[StoredTemplate, ...], k: int,
               within: frozenset[str] | None = None, observer=None) -> list[list[tuple[str, float, float]]]:
        """Each sample's ``k`` best subjects of the partition, best first: (subject id, FMR,
        the matcher's ranking key; see :class:`matcher.base.Ranked`)."""
        found = []
        for t in templates:
            t0 = time.perf_counter()
            found.append(self.matchers[t.modality].ranked(partition, t.position, t.template, k, within))
            if observer is not None:
                observer.timing("search", t.modality, time.perf_counter() - t0)
        return found

    def search_many(self, partition: str, probes: list[StoredTemplate], k: int,
                    workers: int | None = None) -> list[list[tuple[str, float]]]:
        """Each probe's ``k`` best subjects, best first, as (id, FMR of that sample): one
        batch where the matcher has one (faces: a FAISS search of every probe on every
        core), else the probes spread over ``workers`` threads (default: every core; the
        iris and finger kernels release the GIL, so the threads run at once)."""
        out: list[list[tuple[str, float]] | None] = [None] * len(probes)
        by_modality: dict[str, list[int]] = {}
        for i, t in enumerate(probes):
            by_modality.setdefault(t.modality, []).append(i)
        for modality, idx in by_modality.items():
            matcher = self.matchers[modality]
            if hasattr(matcher, "ranked_many"):
                for i, hits in zip(idx, matcher.ranked_many(partition, [probes[i].template for i in idx], k)):
                    out[i] = hits
                continue

            def one(i: int, matcher=matcher) -> list[tuple[str, float]]:
                return [(s, f) for s, f, _ in matcher.ranked(partition, probes[i].position, probes[i].template, k)]

            with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
                for i, hits in zip(idx, pool.map(one, idx)):
                    out[i] = hits
        return out  # type: ignore[return-value]

    def score(self, partition: str, subject_ids: Iterable[str],
              templates: tuple[StoredTemplate, ...]) -> dict[str, float]:
        """Each subject's fused FMR over every sample it has a template for (subjects with
        none left out)."""
        fused = {}
        for subject_id in subject_ids:
            fmrs = [f for t in templates
                    if (f := self.matchers[t.modality].fmr_against(partition, subject_id, t.position, t.template))
                    is not None]
            if fmrs:
                fused[subject_id] = fuse(fmrs)
        return fused

    def candidates(self, partition: str, templates: tuple[StoredTemplate, ...], k: int,
                   within: frozenset[str] | None = None, observer=None) -> Found:
        """:meth:`search`, and :meth:`score` of every subject it found."""
        hits = self.search(partition, templates, k, within, observer)
        return Found(hits, self.score(partition, dict.fromkeys(s for found in hits for s, *_ in found), templates))

    def sizes(self) -> dict[str, int]:
        """Templates held per model."""
        return {m.model_id: m.size() for m in self.matchers.values()}
