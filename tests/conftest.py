"""Shared fixtures: built models (from `make setup`) and the real sample sets in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest

from enroll.model_files import model_dir

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
LFW = SHARED_DATA / "face" / "lfw_dev"
ORL = SHARED_DATA / "face" / "att_orl"


def require(path: Path) -> Path:
    """Skip the calling test with a clear reason when a shared data set is absent."""
    if not path.exists():
        pytest.skip(f"real sample set {path} is absent (it lives in ../shared/data beside the clone)")
    return path


@pytest.fixture(scope="session")
def models() -> Path:
    d = model_dir()
    if not (d / "manifest.json").exists():
        pytest.fail(f"models are not built in {d}: run `make setup` (python -m models.build)")
    return d


@pytest.fixture(scope="session")
def face_extractor(models):
    from enroll.face.pipeline import FaceExtractor

    return FaceExtractor(models)


@pytest.fixture(scope="session")
def lfw() -> Path:
    return require(LFW)


@pytest.fixture(scope="session")
def orl() -> Path:
    return require(ORL)


FINGERPRINT = SHARED_DATA / "fingerprint"


@pytest.fixture(scope="session")
def fingerprints() -> Path:
    return require(FINGERPRINT)


@pytest.fixture(scope="session")
def finger_extractor(models):
    from enroll.finger.pipeline import FingerExtractor

    return FingerExtractor(models)


IRIS = SHARED_DATA / "iris"


@pytest.fixture(scope="session")
def irises() -> Path:
    return require(IRIS)


@pytest.fixture(scope="session")
def iris_extractor(models):
    from enroll.iris.pipeline import IrisExtractor

    return IrisExtractor(models)
