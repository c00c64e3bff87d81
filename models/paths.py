"""Where model files live. Imported by the runtime, so it depends on nothing heavy."""

from __future__ import annotations

import os
from pathlib import Path

REPO_MODELS = Path(__file__).resolve().parent
CACHE_DIR = REPO_MODELS / ".cache"


def model_dir() -> Path:
    """The folder of built models: ``$TAMBUA_MODEL_DIR`` or ``models/build``."""
    env = os.environ.get("TAMBUA_MODEL_DIR")
    return Path(env) if env else REPO_MODELS / "build"
