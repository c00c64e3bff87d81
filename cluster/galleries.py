"""The engine's galleries over shard actors: a write goes to the subject's shard, a search
scatters to every shard and merges.

Answers equal one server's on the same gallery: ``search`` merges each sample's hits from
every shard into the partition-wide best ``k`` (a subject's hits come from its one
shard, so the merged list is the single gallery's), and ``score`` asks each shortlisted
subject's own shard for its fused evidence. Where a matcher shortlists approximately
(the finger index above ``exhaustive_limit`` fingers, the iris sketch above its limit),
each shard does so over its own part, which can only add true candidates.
"""

from __future__ import annotations

from collections.abc import Iterable

from cluster.layout import Layout
from matcher.errors import NotReady, TambuaError
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


class ShardedGalleries:
    """Galleries held by ``shards`` (actor handles), subjects placed by ``layout``."""

    def __init__(self, shards: list, layout: Layout, models: dict[str, str]) -> None:
        if len(shards) != layout.shards:
            raise ValueError(f"{len(shards)} shards for a layout of {layout.shards}")
        self.shards, self.layout, self.models = shards, layout, dict(models)

    def modalities(self) -> tuple[str, ...]:
        return tuple(self.models)

    def load(self, rows) -> None:
        raise NotImplementedError("shards load their own subjects from the coordinator")

    def _shard(self, partition: str, subject_id: str):
        return self.shards[self.layout.shard_of(partition, subject_id)]

    def add(self, partition: str, subject_id: str, templates: tuple[StoredTemplate, ...]) -> None:
        get(self._shard(partition, subject_id).add.remote(partition, subject_id, templates))

    def remove(self, partition: str, subject_id: str) -> None:
        get(self._shard(partition, subject_id).remove.remote(partition, subject_id))

    def search(self, partition: str, templates: tuple[StoredTemplate, ...], k: int,
               within: frozenset[str] | None = None, observer=None) -> list[list[tuple[str, float, float]]]:
        per_shard = get([s.search.remote(partition, templates, k, within) for s in self.shards])
        # By each matcher's own ranking key, then id: the one gallery's order (base.pairs).
        return [sorted((hit for shard in per_shard for hit in shard[i]), key=lambda h: (h[2], h[0]))[:k]
                for i in range(len(templates))]

    def score(self, partition: str, subject_ids: Iterable[str],
              templates: tuple[StoredTemplate, ...]) -> dict[str, float]:
        by_shard: dict[int, list[str]] = {}
        for sid in subject_ids:
            by_shard.setdefault(self.layout.shard_of(partition, sid), []).append(sid)
        fused: dict[str, float] = {}
        for part in get([self.shards[i].score.remote(partition, sids, templates) for i, sids in by_shard.items()]):
            fused.update(part)
        return fused

    def sizes(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for sizes in get([s.sizes.remote() for s in self.shards]):
            for model, n in sizes.items():
                total[model] = total.get(model, 0) + n
        return total
