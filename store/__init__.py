"""The durable store: SQLite in WAL mode (``sqlite``, with its parts for adjudication cases,
held captures, encounters and kept images: ``cases``; capture facts and refused captures
for the data-quality report: ``facts``; duplicate-audit checkpoints: ``audits``), its schema and migrations' starting
layout (``schema``), and encryption at rest (``sealing``: envelope AES-256-GCM, the
key-encryption key's loading, sealers). It implements the interfaces the engine, sync and
auth declare in :mod:`matcher.repository`, so it may import ``matcher/`` (types, errors,
template parsing); nothing in ``matcher/`` imports it. No grpc, no images.

The public API::

    from store import SubjectStore, load_kek
    store = SubjectStore(Path("subjects.sqlite"), kek=load_kek())
"""

from __future__ import annotations

import importlib

__all__ = ["SubjectStore", "load_kek", "new_key"]
_HOMES = {"SubjectStore": "store.sqlite", "load_kek": "store.sealing", "new_key": "store.sealing"}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'store' has no attribute {name!r}")
