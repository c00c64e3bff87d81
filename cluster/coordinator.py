"""The coordinator: the cluster's one engine and system of record, as a Ray actor on the
head node.

It holds the SQLite store (synced before every answer, as on one server) and the engine,
whose galleries are the shards. Every front-end's writes pass through it, so the engine's
partition lock makes deduplication exact across front-ends and a subject id names one
subject cluster-wide. It runs calls on threads (a threaded actor): searches of different
requests overlap, and the heavy work runs on the shards.

Why the store lives here: Ray's own control store (GCS) lives on the head node, so the
cluster does not outlive its head anyway; the store beside it adds no new single point,
and a worker node that dies loses no acknowledged write (its shards reload from here).
"""

from __future__ import annotations

import time
from pathlib import Path

from cluster.galleries import ShardedGalleries
from cluster.layout import Layout
from cluster.shard import GalleryShard
from matcher.engine import Engine, Thresholds
from store.sealing import load_kek
from store.sqlite import SubjectStore

NAME, NAMESPACE = "tambua-coordinator", "tambua"
# What a front-end may ask of the engine and of the store through the coordinator.
ENGINE_CALLS = frozenset({"enroll", "identify", "verify", "delete", "import_change"})
STORE_CALLS = frozenset({"get", "count", "count_by_partition", "model_counts", "changes_since", "last_seq",
                         "pending", "peer", "note_peer", "note_audit_head", "flags", "seal_secret",
                         "open_secret", "derive_key", "pseudonym", "resolve", "encrypted"})


class Coordinator:
    """The cluster's engine.

    Args:
        data_dir: where the store lives on the head node.
        kek_file: the key-encryption key's file on the head node (None: ``$TAMBUA_KEK``,
            or no encryption): a path, never the key, so the key does not travel.
        models: the model id of each modality.
        thresholds: decision rates.
        shards: how many shard actors.
    """

    def __init__(self, data_dir: str, kek_file: str | None, models: dict[str, str], thresholds: Thresholds,
                 shards: int) -> None:
        import ray

        self.store = SubjectStore(Path(data_dir) / "subjects.sqlite", load_kek(Path(kek_file) if kek_file else None))
        self.layout = Layout.even(shards)
        self.models = dict(models)
        me = ray.get_runtime_context().current_actor
        shard = ray.remote(GalleryShard)
        # Shards load from this actor in their constructors: created here, never waited for
        # here (this constructor must return before the coordinator answers them).
        self.shards = [shard.options(name=f"tambua-shard-{i}", namespace=NAMESPACE, lifetime="detached",
                                     max_restarts=-1, max_task_retries=-1, max_concurrency=4, num_cpus=0,
                                     scheduling_strategy="SPREAD").remote(models, i, me) for i in range(shards)]
        self.engine = Engine(self.store, models, thresholds,
                             galleries=ShardedGalleries(self.shards, self.layout, models))

    def ready(self) -> dict:
        """Once every shard has loaded: templates per shard."""
        from cluster.galleries import get

        return {"shards": get([s.ready.remote() for s in self.shards]), "models": self.models}

    def shard_rows(self, index: int) -> list[tuple]:
        """Every template of the subjects whose slots shard ``index`` owns."""
        return [(modality, partition, subject_id, position, template)
                for modality, model_id in self.models.items()
                for partition, subject_id, position, template in self.store.templates(model_id)
                if self.layout.shard_of(partition, subject_id) == index]

    def engine_call(self, name: str, args: tuple, kwargs: dict, deadline_in: float | None = None):
        if name not in ENGINE_CALLS:
            raise AttributeError(f"the coordinator does not serve engine.{name}")
        if deadline_in is not None:  # monotonic clocks are per machine: the time left travels
            kwargs = dict(kwargs, deadline=time.monotonic() + deadline_in)
        return getattr(self.engine, name)(*args, **kwargs)

    def store_call(self, name: str, args: tuple = (), kwargs: dict | None = None):
        if name not in STORE_CALLS:
            raise AttributeError(f"the coordinator does not serve store.{name}")
        value = getattr(self.store, name)
        return value(*args, **(kwargs or {})) if callable(value) else value

    def gallery_sizes(self) -> dict[str, int]:
        return self.engine.galleries.sizes()

    def status(self) -> dict:
        """Nodes, shards and what each holds."""
        import ray

        from cluster.galleries import get

        return {"subjects": self.store.count(), "shards": get([s.status.remote() for s in self.shards]),
                "nodes": [{"node": n["NodeID"], "alive": n["Alive"], "address": n["NodeManagerAddress"]}
                          for n in ray.nodes()]}
