"""Cluster mode: one engine for several front-ends, its galleries sharded over Ray actors.

A **coordinator** actor (one per cluster, on the head node) holds the system of record
(the SQLite store, as on one server) and the engine: dedup-then-insert under a partition
lock, so two front-ends that receive the same new person at once enrol one subject, and
a subject id names one subject cluster-wide. The galleries live in **shard** actors
spread over the nodes; each subject's templates live on one shard (a stable slot of
its partition and id), so per-subject fusion is exact, and a search scatters to every
shard and merges (two fan-outs: each sample's best subjects, then every sample's evidence
for the shortlist), which gives the single-node answer. A shard that dies is restarted by
Ray and reloads its subjects from the coordinator.

Owns: the slot layout (``layout``), the shard actor (``shard``), the sharded galleries
the engine searches through (``galleries``), the coordinator (``coordinator``) and what
a front-end holds instead of an engine (``client``). May import ``matcher/``, ``store/``
and ``ray``; ``tambua/`` imports it only in cluster mode (``ray`` is the optional
``cluster`` extra).
"""
