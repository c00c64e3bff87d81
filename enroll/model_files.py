"""Where the built model files live (``make setup`` builds them; nothing is downloaded at
run time). Depends on nothing heavy: every extractor imports it."""

from __future__ import annotations

import os
from pathlib import Path

# The models/ folder of a source checkout (build scripts and the build output).
CHECKOUT_MODELS = Path(__file__).resolve().parents[1] / "models"


def model_dir() -> Path:
    """The folder of built models: ``$TAMBUA_MODEL_DIR`` or ``models/build`` of the checkout."""
    env = os.environ.get("TAMBUA_MODEL_DIR")
    return Path(env) if env else CHECKOUT_MODELS / "build"
