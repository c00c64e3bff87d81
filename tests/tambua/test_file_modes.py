"""The data directory is the service user's alone: every store, log and key file 0600,
every folder 0700, whether the server, `tambua keys` or `tambua dev-certs` made it, and a
file left readable by others is closed at start (real server, real CLI)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

from tambua.v1 import tambua_pb2 as pb
from tests.tambua.test_server import REPO, Server, face


def _open_to_others(root) -> list[str]:
    return [f"{p} {stat.S_IMODE(p.stat().st_mode):o}" for p in [root, *root.rglob("*")]
            if stat.S_IMODE(p.stat().st_mode) & 0o077]


def test_the_data_directory_is_closed_to_other_users(tmp_path, orl, models):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    (data / "notes.txt").write_text("left by an earlier tool")
    (data / "notes.txt").chmod(0o644)
    s = Server(data)
    s.start()
    try:
        s.stub.Enroll(pb.EnrollRequest(subject_id="M1", samples=[face(orl, 1, 1)]))
    finally:
        s.stop()
    assert (data / "subjects.sqlite").exists() and (data / "audit.jsonl").exists()
    assert _open_to_others(data) == []
    kek = tmp_path / "kek"
    kek.write_text(os.urandom(32).hex())
    made = tmp_path / "new-site"
    r = subprocess.run([sys.executable, "-m", "tambua.cli", "keys", "create", "--name", "t", "--role", "registrar",
                        "--data-dir", str(made), "--kek-file", str(kek)], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert (made / "access.sqlite").exists() and _open_to_others(made) == []
    certs = tmp_path / "certs"
    r = subprocess.run([sys.executable, "-m", "tambua.cli", "dev-certs", "--out", str(certs), "--client", "tablet"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    keys = [p for p in certs.rglob("*") if "key" in p.name]
    assert keys and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in keys)
