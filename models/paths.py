"""Where the build keeps its sources (``models/.cache``) and writes models (the runtime's
:func:`enroll.model_files.model_dir`). Build tooling only."""

from __future__ import annotations

from enroll.model_files import CHECKOUT_MODELS as REPO_MODELS
from enroll.model_files import model_dir

CACHE_DIR = REPO_MODELS / ".cache"

__all__ = ["CACHE_DIR", "REPO_MODELS", "model_dir"]
