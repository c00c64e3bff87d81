"""Image -> template, one subpackage per modality (``face/``, ``finger/``, ``iris/``): decoding,
quality gates with re-capture reasons, and extraction by ONNX models run by ONNX Runtime on
CPU (OpenCV for the image work). May import ``matcher/`` (template types, errors); never
grpc, faiss, ``tambua/`` or ``models/`` (build tooling; ``model_files`` says where the
built models are).

The public API, imported on first use so that ``import enroll`` stays light::

    from enroll import FaceExtractor, FingerExtractor, IrisExtractor
    template = FaceExtractor().extract(jpeg_bytes)   # thread-safe, one per process
"""

from __future__ import annotations

import importlib

__all__ = ["FaceExtractor", "FingerExtractor", "IrisExtractor"]
_HOMES = {"FaceExtractor": "enroll.face.pipeline", "FingerExtractor": "enroll.finger.pipeline",
          "IrisExtractor": "enroll.iris.pipeline"}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'enroll' has no attribute {name!r}")
