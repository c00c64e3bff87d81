"""The coordinator: the cluster's one engine and system of record, as a Ray actor on the
head node.

It holds the SQLite store (synced before every answer, as on one server) and the engine,
whose galleries are the shards. Every front-end's writes pass through it, so the engine's
partition lock makes deduplication exact across front-ends and a subject id names one
subject cluster-wide. Identify does not: a front-end asks the shards itself (one hop
fewer), with the copy table it reads from here (:meth:`Coordinator.routing`). It runs
calls on threads (a threaded actor): calls of different requests overlap, and the heavy
work runs on the shards.

Why the store lives here: Ray's own control store (GCS) lives on the head node, so the
cluster does not outlive its head anyway; the store beside it adds no new single point,
and a worker node that dies loses no acknowledged write (its shards reload from here).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid
from pathlib import Path

from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from cluster.galleries import ShardedGalleries
from cluster.layout import Layout, plan_moves
from cluster.shard import GalleryShard
from matcher import memory
from matcher.engine import Engine, Thresholds
from matcher.errors import NotReady
from store.sealing import load_kek
from store.sqlite import SubjectStore

NAME, NAMESPACE = "tambua-coordinator", "tambua"
# Copy r of shard i: started as tambua-shard-i-r, moved copies get -m<n> (n grows).
_COPY_NAME = re.compile(r"tambua-shard-(\d+)-(\d+)(?:-m(\d+))?")
# What a front-end may ask of the engine and of the store through the coordinator.
# (Identify is not one: front-ends read the shards themselves.)
ENGINE_CALLS = frozenset({"enroll", "verify", "delete", "import_change", "decide", "capture", "audit"})
STORE_CALLS = frozenset({"get", "count", "count_by_partition", "model_counts", "changes_since", "last_seq",
                         "pending", "oldest_pending_ms", "last_enrolled_ms", "peer", "note_peer", "note_audit_head", "flags", "seal_secret",
                         "open_secret", "derive_key", "pseudonym", "pseudonyms", "resolve", "encrypted",
                         # adjudication: reads of cases, their captures, encounters and kept images
                         "case", "cases", "case_counts", "case_templates", "case_images", "subject_images",
                         "held_case", "encounters", "expire_case_images",
                         # the data-quality report's facts, and refused captures to count
                         "sample_facts", "refusals", "partitions", "note_refusal", "audit_results"})


def shard_nodes() -> list[str]:
    """The live nodes that take shard copies: those with CPUs (a front-end's node joins with
    none, to run its driver only)."""
    import ray

    return sorted(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0)


class Coordinator:
    """The cluster's engine.

    Args:
        data_dir: where the store lives on the head node.
        kek_file: the key-encryption key's file on the head node (None: ``$TAMBUA_KEK``,
            or no encryption): a path, never the key, so the key does not travel.
        models: the model id of each modality.
        thresholds: decision rates.
        shards: how many shards.
        replicas: copies of each shard, on different nodes where there are enough.
        keep_images: which enrolments' images the store keeps (``Engine``'s).
    """

    def __init__(self, data_dir: str, kek_file: str | None, models: dict[str, str], thresholds: Thresholds,
                 shards: int, replicas: int = 1, keep_images: str = "cases") -> None:
        import ray

        self.store = SubjectStore(Path(data_dir) / "subjects.sqlite", load_kek(Path(kek_file) if kek_file else None))
        # Which named copy serves each shard, written before every change: a restarted
        # coordinator takes back exactly these (a copy still joining, or one swapped out
        # but not yet stopped, is not one of them).
        self._table_file = Path(data_dir) / "cluster-copies.json"
        self.layout = Layout.even(shards)
        self.models = dict(models)
        self.replicas = replicas
        self._me = ray.get_runtime_context().current_actor
        self._made = 0
        # Names the copy table; new at every move and every start, so a front-end holding
        # any other table re-reads it (a number could repeat after a restart).
        self.version = uuid.uuid4().hex
        self._moving = threading.Lock()
        self.galleries = ShardedGalleries(self._adopt_or_start(shards, replicas), self.layout, models)
        self.engine = Engine(self.store, models, thresholds, galleries=self.galleries, keep_images=keep_images)

    def _adopt_or_start(self, shards: int, replicas: int) -> list[list]:
        """Each shard's copies: the ones this coordinator's last table names, where this is
        a restart (Ray restarts it after its process died; the copies outlive it, detached)
        and they still run; new ones for the rest. Every other copy found is stopped.
        Copy r of shard i starts on node (i + r) mod N, so copies of one shard start apart.
        New copies load from this actor in their constructors: never waited for here (this
        constructor must return before the coordinator can answer them)."""
        import ray
        from ray.util import list_named_actors

        running = {a["name"] for a in list_named_actors(all_namespaces=True)
                   if a["namespace"] == NAMESPACE and _COPY_NAME.fullmatch(a["name"])}
        self._made = max((int(_COPY_NAME.fullmatch(n)[3] or 0) for n in running), default=0)
        saved = json.loads(self._table_file.read_text()) if self._table_file.exists() else []
        nodes = shard_nodes()
        table, self._names = [], []
        for i in range(shards):
            row, names = [], []
            for r in range(replicas):
                name = saved[i][r] if i < len(saved) and r < len(saved[i]) else ""
                if name in running:
                    row.append(ray.get_actor(name, namespace=NAMESPACE))
                else:
                    name = f"tambua-shard-{i}-{r}"
                    if name in running:  # a leftover under the name a new copy takes
                        ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
                        running.discard(name)
                    row.append(self._copy(i, r, nodes[(i + r) % len(nodes)], name))
                names.append(name)
            table.append(row)
            self._names.append(names)
        for name in running - {n for names in self._names for n in names}:
            ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
        self._save_table(self._names)
        return table

    def _save_table(self, names: list[list[str]]) -> None:
        tmp = self._table_file.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(names, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._table_file)

    def _copy(self, shard: int, copy: int, node: str, name: str, only_there: bool = False):
        """A copy of ``shard`` started on ``node``. The affinity is soft: a copy whose node
        dies restarts wherever Ray finds room. It runs one call at a time, in the order sent
        (see ShardedGalleries)."""
        import ray

        return ray.remote(GalleryShard).options(
            name=name, namespace=NAMESPACE, get_if_exists=True, lifetime="detached", max_restarts=-1,
            max_task_retries=-1, max_concurrency=1, num_cpus=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True),
            # Its galleries on huge pages (matcher.memory): a worker's glibc reads this at start.
            runtime_env={"env_vars": huge} if (huge := memory.environment()) else None,
        ).remote(self.models, shard, self._me, copy, node if only_there else None, self.layout.share(shard))

    def _start_on(self, shard: int, copy: int, node: str, tries: int = 20):
        """A new copy of ``shard`` loaded and running on ``node``, joining the writes from its
        start. A node that has just joined may not take work yet (soft affinity then places
        the copy elsewhere): such a copy is stopped and started again a moment later."""
        import ray

        from cluster.galleries import get

        for _ in range(tries):
            self._made += 1
            name = f"tambua-shard-{shard}-{copy}-m{self._made}"
            new = self._copy(shard, copy, node, name, only_there=True)
            self.galleries.joining[shard] = [new]
            if get(new.status.remote())["node"] == node:  # answered once it has loaded
                return new, name
            self.galleries.joining.pop(shard)  # elsewhere, and empty
            ray.kill(new)
            time.sleep(0.5)
        raise NotReady(f"node {node[:12]} did not take shard {shard}'s copy")

    def rebalance(self) -> list[dict]:
        """Spread the shard copies evenly over the live nodes (after nodes were added),
        while the service answers: each moved copy starts on its new node and gets every
        write from then on, loads its shard from the store, takes reads once ready, and only
        then is the old copy stopped. Returns the moves."""
        import ray

        from cluster.galleries import get

        with self._moving:
            state = get([c.status.remote() for copies in self.galleries.replicas for c in copies])
            where = {(s["shard"], s["copy"]): s["node"] for s in state}
            moves = plan_moves(where, shard_nodes())
            for shard, copy, node in moves:
                new, name = self._start_on(shard, copy, node)
                # Saved first: a coordinator restarted from here on takes the new copy,
                # which is whole (loaded, and joined to every write since it started).
                names = [list(row) for row in self._names]
                names[shard][copy] = name
                self._save_table(names)
                self._names = names
                old = self.galleries.replicas[shard][copy]
                self.galleries.replicas[shard] = [new if c is old else c for c in self.galleries.replicas[shard]]
                self.galleries.joining.pop(shard)
                self.version = uuid.uuid4().hex
                # Reads sent to the old copy before the swap finish first, and front-ends
                # (which re-read the table every half second) move over.
                time.sleep(2.0)
                ray.kill(old, no_restart=True)
            return [{"shard": shard, "copy": copy, "from": where[(shard, copy)], "to": node}
                    for shard, copy, node in moves]

    def ready(self) -> dict:
        """Once every shard has loaded: templates per shard."""
        from cluster.galleries import get

        return {"shards": get([c.ready.remote() for copies in self.galleries.replicas for c in copies]),
                "models": self.models}

    def routing(self, known: str = "") -> dict | None:
        """The copy table, for front-ends that read the shards themselves: the layout and
        each shard's copies (actor handles) at ``version``; None when that is ``known``."""
        if known == self.version:
            return None
        return {"version": self.version, "layout": self.layout,
                "replicas": [list(copies) for copies in self.galleries.replicas]}

    def shard_rows(self, index: int, model: int = 0, after: int = 0, limit: int = 20_000
                   ) -> tuple[list[tuple], tuple[int, int] | None]:
        """A page of the templates of the subjects whose slots shard ``index`` owns, and
        where the next page starts: (modality number, storage cursor), None after the last.
        Pages keep each answer small (Ray's object store) and the coordinator's memory flat."""
        modalities = list(self.models.items())
        modality, model_id = modalities[model]
        rows, after = self.store.template_page(model_id, after, limit,
                                               keep=lambda p, s: self.layout.shard_of(p, s) == index)
        page = [(modality, partition, subject_id, position, template)
                for partition, subject_id, position, template in rows]
        if not after:
            model += 1
        if model == len(modalities):
            # A shard's whole part has passed through here as small buffers on this actor's
            # threads; glibc keeps them in its arenas (4-5 GiB at 200k fingers) until asked.
            memory.release()
            return page, None
        return page, (model, after)

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

    def unserved(self, timeout_s: float = 1.0) -> list[int]:
        """Shards none of whose copies answered within ``timeout_s`` (a partition's search
        cannot be complete while one is down)."""
        import ray

        pings = {c.ready.remote(): i for i, copies in enumerate(self.galleries.replicas) for c in copies}
        done, _ = ray.wait(list(pings), num_returns=len(pings), timeout=timeout_s)
        alive = {pings[ref] for ref in done}
        return [i for i in range(len(self.galleries.replicas)) if i not in alive]

    def status(self) -> dict:
        """Nodes, shards and what each holds."""
        import ray

        from cluster.galleries import get

        return {"subjects": self.store.count(), "replicas": self.replicas, "coordinator_pid": os.getpid(),
                "unserved_shards": self.unserved(),
                "shards": get([c.status.remote() for copies in self.galleries.replicas for c in copies]),
                "nodes": [{"node": n["NodeID"], "alive": n["Alive"], "address": n["NodeManagerAddress"]}
                          for n in ray.nodes()]}
