"""What a front-end (``tambua serve --cluster``) holds instead of an engine and a store:
the engine's and the store's methods that the servicer, sync and auth use, answered by
the coordinator, except Identify, which reads the shards directly."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from cluster.coordinator import NAME, NAMESPACE, Coordinator
from cluster.galleries import ShardedGalleries, get
from matcher.engine import Engine, Thresholds, VerifyResult
from matcher.errors import NotFound, NotReady
from matcher.types import StoredTemplate

log = logging.getLogger(__name__)


def connect(address: str, data_dir: str, kek_file: str | None, models: dict[str, str], thresholds: Thresholds,
            shards: int, replicas: int = 1, keep_images: str = "cases") -> "RemoteEngine":
    """Join the Ray cluster at ``address`` and find its coordinator, or start it (on the
    head node, with this front-end's ``data_dir`` and ``kek_file`` as paths there) when
    this is the first front-end; wait until every shard has loaded."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, logging_level=logging.WARNING)
    handle = ray.remote(Coordinator).options(
        name=NAME, namespace=NAMESPACE, get_if_exists=True, lifetime="detached", max_concurrency=32, num_cpus=0,
        max_restarts=-1, resources={"node:__internal_head__": 0.001},
    ).remote(data_dir, kek_file, models, thresholds, shards, replicas, keep_images)
    started = time.perf_counter()
    ready = get(handle.ready.remote())
    if ready["models"] != models:
        raise ValueError(f"the cluster serves {ready['models']}, this front-end extracts {models}")
    # Copies started on a node that had only just joined may have landed elsewhere: part
    # and spread them now (nothing moves when they are where they belong).
    get(handle.rebalance.remote())
    log.info("cluster at %s: %d shards ready in %.1f s", address, len(ready["shards"]), time.perf_counter() - started)
    return RemoteEngine(handle, models, thresholds)


def _coordinator(address: str):
    import ray

    if not ray.is_initialized():
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, logging_level=logging.WARNING)
    try:
        return ray.get_actor(NAME, namespace=NAMESPACE)
    except ValueError:
        raise NotFound(f"no Tambua coordinator in the cluster at {address}: start a front-end with --cluster") from None


def rebalance(address: str) -> list[dict]:
    """``tambua cluster rebalance``: spread the shard copies over the live nodes (after
    adding nodes); the service answers throughout. Returns the moves made."""
    return get(_coordinator(address).rebalance.remote())


def status(address: str) -> dict:
    """What ``tambua cluster status`` prints: nodes, and each shard copy's node, subjects,
    templates and resident bytes, summed per node."""
    state = get(_coordinator(address).status.remote())
    per_node: dict[str, dict] = {}
    for copy in state["shards"]:
        node = per_node.setdefault(copy["node"], {"copies": 0, "subjects": 0, "resident_bytes": 0})
        node["copies"] += 1
        node["subjects"] += copy["subjects"]
        node["resident_bytes"] += copy["resident_bytes"]
    for node in state["nodes"]:
        node.update(per_node.get(node["node"], {"copies": 0, "subjects": 0, "resident_bytes": 0}))
    return state


class RemoteStore:
    """The coordinator's store, as the servicer, sync and auth use it (the methods of
    :mod:`matcher.repository` they call, and the counts the service reports)."""

    def __init__(self, coordinator) -> None:
        self._coordinator = coordinator
        self.encrypted = get(coordinator.store_call.remote("encrypted"))

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)

        def call(*args, **kwargs):
            # An iterator (resolve() takes a generator) crosses to the coordinator as a list.
            args = tuple(list(a) if isinstance(a, Iterator) else a for a in args)
            return get(self._coordinator.store_call.remote(name, args, kwargs))

        return call

    def close(self) -> None:
        """The store is the coordinator's: a front-end going away closes nothing."""


class RemoteEngine:
    """The engine as a front-end has it. Writes (case decisions too), Verify and the
    captures held by cases are the coordinator's (its partition lock makes deduplication
    exact across front-ends); Identify reads the shards
    itself, one hop with no coordinator in the path, through an engine here over the
    coordinator's copy table, which it re-reads when the coordinator has moved copies.
    Parsing and 1:1 comparison of two given templates need no gallery and run here."""

    def __init__(self, coordinator, models: dict[str, str], thresholds: Thresholds) -> None:
        self.coordinator = coordinator
        self.thresholds = thresholds
        self.store = RemoteStore(coordinator)
        route = get(coordinator.routing.remote())
        self._version = route["version"]
        self.local = Engine(self.store, models, thresholds,
                            galleries=ShardedGalleries(route["replicas"], route["layout"], models))
        self.matchers = self.local.matchers
        self.galleries = self.local.galleries

    @property
    def observer(self):
        return self.local.observer

    @observer.setter
    def observer(self, observer) -> None:
        self.local.observer = observer

    def follow(self) -> bool:
        """Take the coordinator's copy table if it changed since this front-end read it."""
        route = get(self.coordinator.routing.remote(self._version))
        if route is None:
            return False
        self.galleries.replicas, self._version = route["replicas"], route["version"]
        log.info("shard copies moved: copy table %s", self._version[:8])
        return True

    def _call(self, name: str, *args, deadline: float | None = None, **kwargs):
        left = None if deadline is None else deadline - time.monotonic()
        return get(self.coordinator.engine_call.remote(name, args, kwargs, left))

    def check_deadline(self, deadline: float | None) -> None:
        self.local.check_deadline(deadline)

    def parse(self, modality: str, data: bytes):
        return self.local.parse(modality, data)

    def compare(self, a: StoredTemplate, b: StoredTemplate) -> VerifyResult:
        return self.local.compare(a, b)

    def identify(self, *args, **kwargs):
        try:
            return self.local.identify(*args, **kwargs)
        except NotReady:
            # A copy stopped after a move this front-end has not seen yet: once more with
            # the new table (a shard truly down stays NotReady: UNAVAILABLE, retry).
            if not self.follow():
                raise
            return self.local.identify(*args, **kwargs)

    def enroll(self, *args, **kwargs):
        return self._call("enroll", *args, **kwargs)

    def verify(self, *args, **kwargs):
        return self._call("verify", *args, **kwargs)

    def decide(self, *args, **kwargs):
        return self._call("decide", *args, **kwargs)

    def capture(self, *args, **kwargs):
        return self._call("capture", *args, **kwargs)

    def delete(self, *args, **kwargs):
        return self._call("delete", *args, **kwargs)

    def import_change(self, *args, **kwargs):
        return self._call("import_change", *args, **kwargs)

    def audit(self, *args, **kwargs):
        return self._call("audit", *args, **kwargs)

    def cluster_status(self) -> dict:
        """Each shard copy's node, subjects, resident bytes and search counters (metrics)."""
        return get(self.coordinator.status.remote())

    def unserved_shards(self) -> list[int]:
        """Shards with no copy answering now (the front-end's health check reads it, every
        half second; the copy table is followed at the same time)."""
        self.follow()
        return get(self.coordinator.unserved.remote())
