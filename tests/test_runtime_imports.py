"""The service runs without the build-only packages (the Docker image uninstalls onnx and
grpcio-tools after building models and stubs): nothing the server or CLI imports at run
time may need them."""

from __future__ import annotations

import subprocess
import sys

from tests.tambua.test_server import REPO

BUILD_ONLY = ("onnx", "grpc_tools")

_PROBE = f"""
import sys
for name in {BUILD_ONLY!r}:
    sys.modules[name] = None  # `import onnx` now raises ImportError, as in the image
import tambua.cli, tambua.server
from enroll.face.pipeline import FaceExtractor
from enroll.finger.pipeline import FingerExtractor
from enroll.iris.pipeline import IrisExtractor
FaceExtractor(), FingerExtractor(), IrisExtractor()
print("ok")
"""


def test_the_server_and_its_extractors_load_without_build_only_packages(models):
    r = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
