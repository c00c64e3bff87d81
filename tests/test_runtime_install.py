"""The package as the Docker image installs it: into a fresh virtual environment, without
the build and test extras (no onnx, no grpcio-tools, no pytest), then `tambua serve` from
there enrols and verifies a face, a finger and an iris through that environment's CLI.

Run from a folder outside the checkout, so nothing is imported from the source tree.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.tambua.test_server import REPO


def test_a_runtime_only_install_serves_all_three_modalities(tmp_path, models, orl, fingerprints, irises):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(REPO)], capture_output=True,
                         text=True, timeout=900)
    assert pip.returncode == 0, pip.stderr[-3000:]
    python = str(venv / "bin" / "python")
    missing = subprocess.run([python, "-c", "import importlib.util as u; print([m for m in ('onnx', 'grpc_tools', "
                              "'pytest') if u.find_spec(m)])"], capture_output=True, text=True, cwd=tmp_path)
    assert missing.stdout.strip() == "[]", "the runtime install pulled in build or test packages"

    work = tmp_path / "work"
    work.mkdir()
    Image.open(orl / "s40" / "1.pgm").save(work / "face1.png")
    Image.open(orl / "s40" / "2.pgm").save(work / "face2.png")
    finger = fingerprints / "fvc2002_db1_b" / "104"
    Image.open(finger / "104_1.tif").save(work / "finger1.png")
    Image.open(finger / "104_2.tif").save(work / "finger2.png")
    eyes = sorted((irises / "mmu1" / "7_left").iterdir())
    Image.open(eyes[0]).save(work / "iris1.png")
    Image.open(eyes[1]).save(work / "iris2.png")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAMBUA_", "PYTHON"))}
    env["TAMBUA_MODEL_DIR"] = str(models)
    tambua = str(venv / "bin" / "tambua")
    server = subprocess.Popen([tambua, "serve", "--insecure", "--port", "0", "--metrics-port", "-1", "--data-dir",
                               str(work / "data")], cwd=work, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        m = re.search(r"listening on (\S+)", line)
        assert m, f"the installed server did not start: {line!r} {server.stderr.read()[-3000:] if not line else ''}"

        def cli(*args: str) -> dict:
            r = subprocess.run([tambua, *args, "--address", m.group(1), "--json"], cwd=work, env=env,
                               capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stderr[-2000:]
            return json.loads(r.stdout)

        enrolled = cli("enroll", "--subject", "R-1", "--face", "face1.png", "--finger", "2=finger1.png",
                       "--iris", "left=iris1.png")
        assert enrolled["outcome"] == "ENROLLED"
        for sample in (["--face", "face2.png"], ["--finger", "2=finger2.png"], ["--iris", "left=iris2.png"]):
            assert cli("verify", "--subject", "R-1", *sample)["match"] is True, sample
    finally:
        server.terminate()
        server.wait(timeout=30)
    # The server ran the installed code, not the checkout's.
    assert Path(subprocess.run([python, "-c", "import tambua; print(tambua.__file__)"], capture_output=True,
                               text=True, cwd=tmp_path).stdout.strip()).is_relative_to(venv)
