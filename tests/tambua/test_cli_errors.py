"""What the CLI says when something is wrong: the file it could not read, by name, and a
server's refusal as CODE (REASON): message, never a traceback or a code said twice."""

from __future__ import annotations

import subprocess
import sys


from tests.tambua.test_server import REPO


def _tambua(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tambua.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)



def test_a_missing_file_is_named(tmp_path):
    missing = tmp_path / "nowhere.pem"
    r = _tambua("stats", "--ca", str(missing))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"cannot read the server CA (--ca) {missing}: No such file or directory" in r.stderr
    image = tmp_path / "c3_l.png"
    r = _tambua("extract", "--iris", f"left={image}")
    assert r.returncode == 1 and "Traceback" not in r.stderr and f"cannot read image {image}" in r.stderr


def test_a_refusal_says_its_code_once_and_its_reason(plain_server, orl, irises):
    r = _tambua("verify", "--address", plain_server.address, "--subject", "NOBODY", "--face", str(orl / "s1" / "1.pgm"))
    assert r.returncode == 1 and r.stderr.startswith("error: NOT_FOUND: ") and "NOT_FOUND NOT_FOUND" not in r.stderr
    r = _tambua("extract", "--address", plain_server.address, "--iris", f"left={orl / 's1' / '1.pgm'}")
    assert r.returncode == 1 and r.stderr.startswith("error: INVALID_ARGUMENT (FACE_PHOTO): "), r.stderr
