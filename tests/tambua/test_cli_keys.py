"""`tambua keys` as the README writes it: store options after the subcommand, and no
store made up where the operator forgot --data-dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from store.sealing import load_kek
from store.sqlite import SubjectStore
from tests.tambua.test_server import REPO


def _tambua(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tambua.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_store_options_go_after_the_subcommand_too(tmp_path):
    data, kek = tmp_path / "data", tmp_path / "kek"
    kek.write_text(os.urandom(32).hex())
    SubjectStore(data / "subjects.sqlite", load_kek(kek)).close()  # the server's (encrypted) store
    store = ["--data-dir", str(data), "--kek-file", str(kek)]
    made = _tambua("keys", "create", "--name", "tablet K-12", "--role", "registrar", "--partition", "kakuma",
                   "--json", *store)
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    listed = _tambua("keys", "list", "--json", *store)
    assert listed.returncode == 0, listed.stderr
    assert [p["name"] for p in json.loads(listed.stdout)["principals"]] == ["tablet K-12"]
    before = _tambua("keys", "--json", *store, "list")  # the older order still works
    assert json.loads(before.stdout) == json.loads(listed.stdout)
    revoked = _tambua("keys", "revoke", key["id"], *store)
    assert revoked.returncode == 0, revoked.stderr


def test_keys_without_a_store_refuse_and_create_nothing(tmp_path):
    kek = tmp_path / "kek"
    kek.write_text(os.urandom(32).hex())
    r = _tambua("keys", "list", "--kek-file", str(kek), cwd=tmp_path)
    assert r.returncode == 1 and "no Tambua store in tambua-data" in r.stderr and "--data-dir" in r.stderr
    assert not (tmp_path / "tambua-data").exists()
