"""A shard: the galleries of the subjects whose slots it owns, as a Ray actor.

It is plain :class:`matcher.galleries.LocalGalleries` inside, so a shard searches and
scores exactly as one server does. Its constructor loads its subjects from the
coordinator, so when Ray restarts it (its node died) it comes back whole; adding a
subject it holds already replaces it (a write retried after a restart adds nothing twice).
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Iterable

from matcher import memory
from matcher.engine import default_matcher
from matcher.registry import warm_up
from matcher.galleries import Found, LocalGalleries
from matcher.types import StoredTemplate


class GalleryShard:
    """One shard.

    Args:
        models: the model id of each modality.
        index: this shard's number.
        coordinator: the coordinator's actor handle (None: start empty, for tests).
        copy: which copy of the shard this is.
        node: where a moved copy must run (it loads only there); None: wherever it starts.
        share: the part of each partition the shard holds; its matchers take that share of
            their search budgets, so all shards together do one server's work.
    """

    def __init__(self, models: dict[str, str], index: int, coordinator=None, copy: int = 0,
                 node: str | None = None, share: float = 1.0) -> None:
        import ray

        self.index, self.copy = index, copy
        self.galleries = LocalGalleries({m: default_matcher(m, model_id, share) for m, model_id in models.items()})
        self.subjects: dict[str, set[str]] = {}
        self.loaded = 0
        self.searches, self.search_seconds = 0, 0.0
        self.full_collections = _FullCollections()
        warm_up()  # as one server does at start: no kernel compiled on a request's time
        context = ray.get_runtime_context()
        # A copy started for a move on a node that did not take it stays empty: the
        # coordinator sees where it landed and stops it before minutes of loading. A
        # restart (its node died) loads wherever Ray put it.
        misplaced = node is not None and context.get_node_id() != node and not context.was_current_actor_reconstructed
        page: tuple[int, int] | None = (0, 0) if coordinator is not None and not misplaced else None
        while page is not None:
            rows, page = ray.get(coordinator.shard_rows.remote(index, *page))
            self.galleries.load(rows)
            for _, partition, subject_id, _, _ in rows:
                self.subjects.setdefault(partition, set()).add(subject_id)
            self.loaded += len(rows)
        memory.freeze_loaded()

    def ready(self) -> int:
        """Templates loaded at start (a call that returns once the constructor has run)."""
        return self.loaded

    def add(self, partition: str, subject_id: str, templates: tuple[StoredTemplate, ...]) -> None:
        self.galleries.remove(partition, subject_id)
        self.galleries.add(partition, subject_id, templates)
        self.subjects.setdefault(partition, set()).add(subject_id)

    def remove(self, partition: str, subject_id: str) -> None:
        self.galleries.remove(partition, subject_id)
        self.subjects.get(partition, set()).discard(subject_id)

    def candidates(self, partition: str, templates: tuple[StoredTemplate, ...], k: int,
                   within: frozenset[str] | None = None) -> Found:
        """This shard's best subjects and their evidence, with its count of the partition's subjects."""
        t0 = time.perf_counter()
        found = self.galleries.candidates(partition, templates, k, within)
        self.searches, self.search_seconds = self.searches + 1, self.search_seconds + time.perf_counter() - t0
        return Found(found.hits, found.fused, len(self.subjects.get(partition, ())))

    def search_many(self, partition: str, probes: list[StoredTemplate], k: int) -> list[list[tuple[str, float]]]:
        """This shard's best ``k`` subjects of each probe (a gallery audited against itself)."""
        t0 = time.perf_counter()
        found = self.galleries.search_many(partition, probes, k)
        self.searches, self.search_seconds = self.searches + len(probes), self.search_seconds + time.perf_counter() - t0
        return found

    def score(self, partition: str, subject_ids: Iterable[str],
              templates: tuple[StoredTemplate, ...]) -> dict[str, float]:
        return self.galleries.score(partition, subject_ids, templates)

    def sizes(self) -> dict[str, int]:
        return self.galleries.sizes()

    def status(self) -> dict:
        """What ``tambua cluster status`` shows of this shard."""
        import ray

        return {"shard": self.index, "copy": self.copy, "node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "subjects": sum(len(s) for s in self.subjects.values()), "templates": self.galleries.sizes(),
                "resident_bytes": resident_bytes(), "searches": self.searches, "search_seconds": self.search_seconds,
                "full_collections": self.full_collections.count, "full_collection_seconds": self.full_collections.seconds,
                "huge_pages": memory.asked(), "huge_page_bytes": memory.huge_page_bytes(),
                # Ray starts workers at niceness 15 unless the node has RAY_worker_niceness=0:
                # then anything else on the machine takes a searching shard's core first.
                "nice": os.nice(0)}


class _FullCollections:
    """Python's full (generation 2) garbage collections in this process: how many and
    their time. A shard holds a Python object per template; a full collection walks them all."""

    def __init__(self) -> None:
        self.count, self.seconds, self._started = 0, 0.0, 0.0
        gc.callbacks.append(self._observe)

    def _observe(self, phase: str, info: dict) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.count, self.seconds = self.count + 1, self.seconds + time.perf_counter() - self._started


def resident_bytes() -> int:
    """This process's resident memory now (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
