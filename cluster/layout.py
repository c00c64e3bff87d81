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
