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


def plan_moves(where: dict[tuple[int, int], str], alive: list[str]) -> list[tuple[int, int, str]]:
    """Moves that spread shard copies evenly over the live nodes: (shard, copy, to node).

    A copy moves from the busiest node to the idlest until they differ by at most one,
    never onto a node that holds a copy of the same shard already. Copies on dead nodes
    are Ray's to restart; they are not counted.

    >>> plan_moves({(0, 0): "a", (0, 1): "b", (1, 0): "a", (1, 1): "b"}, ["a", "b", "c"])
    [(0, 1, 'c')]
    """
    where = dict(where)
    load = {n: sum(1 for node in where.values() if node == n) for n in alive}
    moves = []
    while load:
        busiest = max(load, key=lambda n: (load[n], n))
        idlest = min(load, key=lambda n: (load[n], n))
        if load[busiest] - load[idlest] <= 1:
            break
        movable = sorted(key for key, node in where.items() if node == busiest
                         and all(n != idlest for (shard, _), n in where.items() if shard == key[0]))
        if not movable:
            break
        where[movable[0]] = idlest
        load[busiest] -= 1
        load[idlest] += 1
        moves.append((*movable[0], idlest))
    return moves
