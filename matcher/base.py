"""What every modality's matcher is to the engine (:class:`ModalityMatcher`), and the
per-subject hold of templates that the matchers share for exact one-subject comparison.

A matcher owns the in-memory gallery of its model's templates (rebuilt from the store
at start), parses its template bytes, and turns comparisons into false-match rates
with its model's calibration, so the engine can fuse evidence across modalities and
fingers without knowing how each one scores. The matchers live in ``matcher/face/``,
``matcher/finger/`` and ``matcher/iris/``; :mod:`matcher.registry` names them.
"""

from __future__ import annotations

import math
import threading
from typing import Protocol

from matcher.errors import InvalidInput
from matcher.templates import Template, parse_template


class ModalityMatcher(Protocol):
    """What the engine needs from one modality's model."""

    modality: str
    model_id: str

    def parse(self, data: bytes) -> Template: ...

    def add(self, partition: str, subject_id: str, position: int, template: Template) -> None: ...

    def remove(self, partition: str, subject_id: str) -> None: ...

    def size(self, partition: str | None = None) -> int: ...

    def search(self, partition: str, position: int, template: Template, k: int,
               within: frozenset[str] | None = None) -> list[tuple[str, float]]: ...

    def ranked(self, partition: str, position: int, template: Template, k: int,
               within: frozenset[str] | None = None) -> list[tuple[str, float, float]]: ...

    def fmr_against(self, partition: str, subject_id: str, position: int, template: Template) -> float | None: ...

    def fmr(self, a: Template, b: Template) -> float: ...


class Held:
    """Templates per partition and subject, for exact comparison against one subject."""

    def __init__(self) -> None:
        self.by_partition: dict[str, dict[str, dict[int, object]]] = {}
        self.lock = threading.Lock()

    def put(self, partition: str, subject_id: str, position: int, value: object) -> None:
        with self.lock:
            self.by_partition.setdefault(partition, {}).setdefault(subject_id, {})[position] = value

    def drop(self, partition: str, subject_id: str) -> None:
        with self.lock:
            self.by_partition.get(partition, {}).pop(subject_id, None)

    def of(self, partition: str, subject_id: str) -> dict[int, object]:
        return self.by_partition.get(partition, {}).get(subject_id, {})

    def count(self, partition: str | None) -> int:
        parts = self.by_partition.values() if partition is None else [self.by_partition.get(partition, {})]
        return sum(len(p) for sub in parts for p in sub.values())



def parse_own(data: bytes, kind: type, modality: str, model_id: str) -> Template:
    """Template bytes a matcher accepts: a ``kind`` template made by ``model_id``.

    Raises:
        TemplateFormatError: not a Tambua template, or corrupt.
        InvalidInput: a template of another modality.
        ModelMismatch: made by another model.
    """
    t = parse_template(data)
    if not isinstance(t, kind):
        raise InvalidInput(f"{'an' if modality[0] in 'aeiou' else 'a'} {modality} sample carries a {t.modality} template")
    t.require_model(model_id)
    return t


def scaled(budget: int, share: float) -> int:
    """A whole partition's search budget for a gallery holding ``share`` of it (a cluster
    shard's; 1 on one server), at least one.

    Raises:
        ValueError: a share outside (0, 1].
    """
    if not 0 < share <= 1:
        raise ValueError(f"a gallery's share of a partition is within (0, 1], not {share}")
    return max(1, math.ceil(budget * share)) if budget else 0


class Ranked:
    """The shared half of a matcher's search: :meth:`search` is :meth:`ranked` without
    its ranking key.

    ``ranked`` adds the key the matcher orders its answer by (ascending, then by subject
    id): a distance where it ranks by distance, the FMR where it ranks by FMR. Answers
    from several shards merged by that key are the answer of one gallery, even where a
    calibration gives many subjects one rate (it saturates at both ends of its table).
    """

    def ranked(self, partition: str, position: int, template: Template, k: int,
               within: frozenset[str] | None = None) -> list[tuple[str, float, float]]:
        raise NotImplementedError

    def search(self, partition: str, position: int, template: Template, k: int,
               within: frozenset[str] | None = None) -> list[tuple[str, float]]:
        """The ``k`` best subjects: (subject id, FMR), best first."""
        return [(s, f) for s, f, _ in self.ranked(partition, position, template, k, within)]
