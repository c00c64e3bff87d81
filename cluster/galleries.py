"""The engine's galleries over shard actors: a write goes to the subject's shard, a search
scatters to every shard and merges.

Answers equal one server's on the same gallery: ``candidates`` merges each sample's hits
from every shard into the partition-wide best ``k`` (a subject's hits come from its one
shard, so the merged list is the single gallery's), and each of those subjects' fused
evidence comes from its own shard, which scored its own best with them; ``score`` (verify)
asks the subject's shard alone. Where a matcher shortlists approximately (the finger
index above its exhaustive limit, the iris sketch above its limit), each shard takes its
share of the limits and budgets (:meth:`cluster.layout.Layout.share`) and shortlists over
its own part: the shards decide as one server would and together compare as many
candidates exactly, so the recall is one server's in distribution (``bench.cluster``
measures it), not subject for subject.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable

from cluster.layout import Layout
from matcher.errors import NotReady, TambuaError
from matcher.galleries import Found
from matcher.types import StoredTemplate


def get(refs):
    """``ray.get``, with a task's own error raised as itself (its gRPC status intact) and a
    lost actor as :class:`NotReady` (UNAVAILABLE: the caller may retry)."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    try:
        return ray.get(refs)
    except RayTaskError as e:
        if isinstance(e.cause, TambuaError):
            raise e.cause from None
        raise
    except RayActorError as e:
        raise NotReady(f"a cluster actor is not answering ({type(e).__name__}); retry shortly") from None


def _merge(per_shard: list[list[list[tuple]]], samples: int, k: int, key: int) -> list[list]:
    """Each sample's best ``k`` over every shard's hits, by the hit's ranking field
    ``h[key]``, then id: the one gallery's order (:class:`matcher.base.Ranked`)."""
    return [sorted((hit for shard in per_shard for hit in shard[j]), key=lambda h: (h[key], h[0]))[:k]
            for j in range(samples)]


def _derive(templates) -> None:
    """Make the probes' derived features (finger: MCC cylinders, index codes) once here,
    so they travel with them rather than being made again on every shard's cores."""
    for t in templates:
        derive = getattr(t.template, "derived_bytes", None)
        if derive is not None:
            derive()


class ShardedGalleries:
    """Galleries held by shard actors: ``replicas[i]`` are the copies of shard ``i``
    (actor handles), subjects placed by ``layout``.

    Writes go to every copy and return once every copy has applied them, or one has and
    the others have not within ``hedge_s`` (their node may be down): a copy on a node that
    died gets the write from Ray when it has restarted and reloaded from the store (which
    holds it already), and applies it again harmlessly (adding a subject replaces it).
    Each copy runs its calls one at a time, in the order they reach it, so a search that
    any process (a front-end reads the shards itself) sends after a write returned sees
    it on every copy that applied it. Reads go to one copy per shard, in turn; a copy
    that has not answered within ``hedge_s`` (its node may be down) is asked again of the
    next copy, and the first answer wins.
    """

    def __init__(self, replicas: list[list], layout: Layout, models: dict[str, str], hedge_s: float = 1.0) -> None:
        if len(replicas) != layout.shards or not all(replicas):
            raise ValueError(f"{len(replicas)} shards for a layout of {layout.shards}, each needs a copy")
        self.replicas, self.layout, self.models, self.hedge_s = replicas, layout, dict(models), hedge_s
        # Copies being added (a move): they get every write, no read until they are ready.
        self.joining: dict[int, list] = {}
        self._turn = itertools.count()

    def modalities(self) -> tuple[str, ...]:
        return tuple(self.models)

    def load(self, rows) -> None:
        raise NotImplementedError("shards load their own subjects from the coordinator")

    def _write(self, shard: int, method: str, *args) -> None:
        import ray

        for copy in self.joining.get(shard, ()):  # applied after its load: harmless if it holds it already
            getattr(copy, method).remote(*args)
        pending = [getattr(copy, method).remote(*args) for copy in self.replicas[shard]]
        settle_by = None  # once one copy has applied it: how long the others get
        while pending:
            left = None if settle_by is None else max(0.0, settle_by - time.monotonic())
            done, pending = ray.wait(pending, num_returns=1, timeout=left)
            if not done:  # a copy that slow is on a node going down: Ray re-sends it after a restart
                return
            try:
                get(done[0])
                settle_by = settle_by or time.monotonic() + self.hedge_s
            except NotReady:
                if not pending and settle_by is None:
                    raise

    def _read(self, method: str, calls: dict[int, tuple]) -> dict[int, object]:
        """``method(*calls[i])`` on one copy of each shard ``i``, hedged (see the class)."""
        import ray

        first = next(self._turn)
        tried = dict.fromkeys(calls, 0)
        pending: dict = {}

        def send(i: int) -> None:
            copies = self.replicas[i]
            ref = getattr(copies[(first + tried[i]) % len(copies)], method).remote(*calls[i])
            tried[i] += 1
            pending[ref] = i

        for i in calls:
            send(i)
        results: dict[int, object] = {}
        hedge_at = time.monotonic() + self.hedge_s
        while len(results) < len(calls):
            waiting = {i for i in pending.values() if i not in results}
            spare = any(tried[i] < len(self.replicas[i]) for i in waiting)
            done, _ = ray.wait(list(pending), num_returns=1,
                               timeout=max(0.0, hedge_at - time.monotonic()) if spare else None)
            if not done:  # slow copies: ask the next copy of each shard still waiting
                for i in waiting:
                    if tried[i] < len(self.replicas[i]):
                        send(i)
                hedge_at = time.monotonic() + self.hedge_s
                continue
            i = pending.pop(done[0])
            if i in results:
                continue
            try:
                results[i] = get(done[0])
            except NotReady:
                if tried[i] < len(self.replicas[i]):
                    send(i)
                elif i not in pending.values():
                    raise
        return results

    def add(self, partition: str, subject_id: str, templates: tuple[StoredTemplate, ...]) -> None:
        self._write(self.layout.shard_of(partition, subject_id), "add", partition, subject_id, templates)

    def remove(self, partition: str, subject_id: str) -> None:
        self._write(self.layout.shard_of(partition, subject_id), "remove", partition, subject_id)

    def score(self, partition: str, subject_ids: Iterable[str],
              templates: tuple[StoredTemplate, ...]) -> dict[str, float]:
        by_shard: dict[int, list[str]] = {}
        for sid in subject_ids:
            by_shard.setdefault(self.layout.shard_of(partition, sid), []).append(sid)
        fused: dict[str, float] = {}
        for part in self._read("score", {i: (partition, sids, templates) for i, sids in by_shard.items()}).values():
            fused.update(part)
        return fused

    def candidates(self, partition: str, templates: tuple[StoredTemplate, ...], k: int,
                   within: frozenset[str] | None = None, observer=None) -> Found:
        """One round: each shard's own best subjects per sample, with their fused evidence
        and its count of the partition's subjects; merged into the partition-wide best
        ``k`` per sample. A subject in those is in its shard's own best ``k``, so its
        evidence came back with it."""
        _derive(templates)
        per_shard = list(self._read("candidates", {i: (partition, templates, k, within)
                                                   for i in range(len(self.replicas))}).values())
        fused: dict[str, float] = {}
        for found in per_shard:
            fused.update(found.fused)
        return Found(_merge([found.hits for found in per_shard], len(templates), k, key=2), fused,
                     sum(found.subjects or 0 for found in per_shard))

    def search_many(self, partition: str, probes: list[StoredTemplate], k: int) -> list[list[tuple[str, float]]]:
        """Each probe's best ``k`` subjects of the partition, (id, FMR), best first: every
        shard searches the whole batch over its own subjects at once (the audit's batch
        path: the shards share the work), merged by rate then id. A subject's hits come from
        its one shard, so the merge is the one gallery's answer, but for subjects tied at
        one rate at the ``k``-th place (rates tie only far above any edge's, or at a
        calibration's floor)."""
        _derive(probes)
        per_shard = list(self._read("search_many", {i: (partition, probes, k) for i in range(len(self.replicas))}).values())
        return _merge(per_shard, len(probes), k, key=1)

    def sizes(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for sizes in self._read("sizes", dict.fromkeys(range(len(self.replicas)), ())).values():
            for model, n in sizes.items():
                total[model] = total.get(model, 0) + n
        return total
