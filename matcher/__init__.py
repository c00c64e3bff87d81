"""Templates in, candidates out: template kinds and their bytes, comparison, galleries and
indexes, calibration (scores -> false-match rates), fusion, the engine (dedup-then-insert,
identify, verify) and what it needs of a store (:mod:`matcher.repository`). One folder per
modality (``face/``, ``finger/``, ``iris/``: template kind, gallery or index, kernels,
matcher), named in :mod:`matcher.registry`. No images: may import numpy, faiss, numba and
OpenCV (geometry only); never ONNX Runtime, grpc, ``store/``, ``sync/``, ``enroll/``,
``tambua/`` or ``models/``.

The public API, imported on first use so that ``import matcher`` stays light::

    from matcher import Engine, StoredTemplate
    from store import SubjectStore
    engine = Engine(SubjectStore("subjects.sqlite"), {"face": "face/dlib-resnet-v1"})
    result = engine.enroll("A-001", "default", [StoredTemplate("face", 0, template)])
"""

from __future__ import annotations

import importlib

__all__ = ["Engine", "Thresholds", "EnrollOutcome", "Subject", "StoredTemplate",
           "EmbeddingTemplate", "MinutiaeTemplate", "IrisTemplate", "parse_template", "TambuaError", "REGISTRY"]
_HOMES = {"Engine": "matcher.engine", "Thresholds": "matcher.engine", "EnrollOutcome": "matcher.engine",
          "Subject": "matcher.types", "StoredTemplate": "matcher.types",
          "EmbeddingTemplate": "matcher.face.template", "MinutiaeTemplate": "matcher.finger.template",
          "IrisTemplate": "matcher.iris.template", "parse_template": "matcher.templates", "TambuaError": "matcher.errors",
          "REGISTRY": "matcher.registry"}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'matcher' has no attribute {name!r}")
