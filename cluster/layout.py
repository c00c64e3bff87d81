"""Which shard holds a subject: a stable hash of (partition, subject id) picks one of
``SLOTS`` slots, and a table maps slots to shards, so moving slots (growing the cluster)
moves whole subjects and never splits one."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

SLOTS = 4096


def slot_of(partition: str, subject_id: str) -> int:
    """The subject's slot: the same in every process and on every machine (unlike ``hash``)."""
    digest = hashlib.blake2b(f"{partition}\x00{subject_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % SLOTS


@dataclass(frozen=True)
class Layout:
    """Slots to shards.

    Attributes:
        owners: the shard of each slot (``SLOTS`` entries).
    """

    owners: tuple[int, ...]

    @classmethod
    def even(cls, shards: int) -> "Layout":
        if shards < 1:
            raise ValueError("a cluster needs at least one shard")
        return cls(tuple(slot % shards for slot in range(SLOTS)))

    @property
    def shards(self) -> int:
        return max(self.owners) + 1

    def shard_of(self, partition: str, subject_id: str) -> int:
        return self.owners[slot_of(partition, subject_id)]

    def share(self, shard: int) -> float:
        """The part of every partition that ``shard`` holds (its slots' share: subjects
        hash evenly over slots)."""
        return self.owners.count(shard) / SLOTS


def plan_moves(where: dict[tuple[int, int], str], alive: list[str]) -> list[tuple[int, int, str]]:
    """Moves that spread shard copies evenly over the live nodes: (shard, copy, to node).

    First, two copies of one shard on one node (Ray placed a copy elsewhere when its node
    could not take it yet) are parted; then a copy moves from the busiest node to the
    idlest until they differ by at most one, never onto a node that holds a copy of the
    same shard already. Copies on dead nodes are Ray's to restart; they are not counted.

    >>> plan_moves({(0, 0): "a", (0, 1): "b", (1, 0): "a", (1, 1): "b"}, ["a", "b", "c"])
    [(0, 1, 'c')]
    >>> plan_moves({(0, 0): "a", (0, 1): "a"}, ["a", "b"])
    [(0, 1, 'b')]
    """
    where = dict(where)
    load = {n: sum(1 for node in where.values() if node == n) for n in alive}
    moves = []

    def holds(node: str, shard: int) -> bool:
        return any(n == node and s == shard for (s, _), n in where.items())

    for key in sorted(where):
        twins = [k for k, n in where.items() if n == where[key] and k[0] == key[0]]
        free = [n for n in alive if not holds(n, key[0])]
        if where[key] in load and len(twins) > 1 and key != min(twins) and free:
            to = min(free, key=lambda n: (load[n], n))
            load[where[key]] -= 1
            load[to] += 1
            where[key] = to
            moves.append((*key, to))
    while load:
        busiest = max(load, key=lambda n: (load[n], n))
        idlest = min(load, key=lambda n: (load[n], n))
        if load[busiest] - load[idlest] <= 1:
            break
        movable = sorted(key for key, node in where.items() if node == busiest and not holds(idlest, key[0]))
        if not movable:
            break
        where[movable[0]] = idlest
        load[busiest] -= 1
        load[idlest] += 1
        moves.append((*movable[0], idlest))
    return moves
