"""Access hygiene on a real TLS `tambua serve`: keys that expire, each key's last use,
the review that ranks keys by risk, pruning of unused keys and rotation without downtime."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import grpc
import pytest

from tambua.auth import ROLES
from tambua.v1 import tambua_pb2 as pb
from tambua.v1 import tambua_pb2_grpc as pb_grpc
from tambua.devpki import DevCA
from tests.tambua.test_security import _config, create, keys
from tests.tambua.test_server import REPO, Server

FLUSH_S = 0.3  # the server writes last uses this often here (default 10 s)


@pytest.fixture(scope="module")
def server(tmp_path_factory, models):
    tmp = tmp_path_factory.mktemp("hygiene")
    pki = DevCA(tmp / "pki")
    data = tmp / "data"
    root = create(data, "root", list(ROLES))["api_key"]
    config = _config(tmp, pki, api_keys=True)
    config.write_text(config.read_text() + f"key_lifetime_days = 30\nlast_use_flush_s = {FLUSH_S}\n")
    s = Server(data, config)
    s.start()
    channel = s.connect(pki.ca_pem)
    yield s, pb_grpc.MatcherStub(channel), root
    channel.close()
    s.stop()


def _call(stub, key: str, partition: str = "") -> tuple[grpc.StatusCode, str]:
    """A registrar's cheapest call: the status it ends with (NOT_FOUND: let in) and why."""
    try:
        stub.GetSubject(pb.SubjectRequest(subject_id="nobody", partition=partition), metadata=[("authorization", f"Bearer {key}")],
                        timeout=30)
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


def _tambua(data_dir, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tambua.cli", "keys", *args, "--data-dir", str(data_dir),
                           "--kek-file", str(data_dir.parent / "kek")], cwd=REPO, capture_output=True, text=True,
                          timeout=60)


def test_an_expired_key_is_refused_and_says_so(server):
    s, stub, _ = server
    short = keys(s.data_dir, "create", "--name", "tablet on loan", "--role", "registrar", "--expires", "3s")
    assert _call(stub, short["api_key"])[0] == grpc.StatusCode.NOT_FOUND  # let in, nobody there
    time.sleep(max(0.0, short["expires_unix_ms"] / 1000 - time.time()) + 0.2)
    code, details = _call(stub, short["api_key"])
    assert code == grpc.StatusCode.UNAUTHENTICATED and "expired at" in details and "new one" in details
    listed = {p["id"]: p for p in keys(s.data_dir, "list")["principals"]}
    assert listed[short["id"]]["expired"] and listed[short["id"]]["revoked_unix_ms"] is None
    # No --expires: the server's key_lifetime_days (30) from the config it started with.
    default = create(s.data_dir, "tablet K-12", ["registrar"])
    assert abs(default["expires_unix_ms"] - (time.time() + 30 * 86400) * 1000) < 120_000
    never = keys(s.data_dir, "create", "--name", "kiosk", "--role", "verifier", "--expires", "never")
    assert never["expires_unix_ms"] is None
    past = _tambua(s.data_dir, "create", "--name", "late", "--role", "registrar", "--expires", "2020-01-01")
    assert past.returncode == 1 and "in the past" in past.stderr
    assert "late" not in {p["name"] for p in keys(s.data_dir, "list")["principals"]}


def test_review_knows_a_key_never_used_from_one_used_a_moment_ago(server):
    s, stub, _ = server
    idle = create(s.data_dir, "idle tablet", ["registrar"], ["kakuma"])
    busy = create(s.data_dir, "busy tablet", ["registrar"], ["kakuma"])
    before = time.time() * 1000
    for _ in range(3):
        assert _call(stub, busy["api_key"], "kakuma")[0] == grpc.StatusCode.NOT_FOUND
    time.sleep(FLUSH_S * 4)
    review = keys(s.data_dir, "review", "--unused-days", "30")
    by_id = {p["id"]: p for p in review["principals"]}
    assert by_id[idle["id"]]["last_used_unix_ms"] is None and "never_used" in by_id[idle["id"]]["risks"]
    assert "unused" not in by_id[idle["id"]]["risks"]  # created a moment ago: not yet 30 days idle
    used = by_id[busy["id"]]
    assert before <= used["last_used_unix_ms"] <= time.time() * 1000 and used["calls"] == 3
    assert "never_used" not in used["risks"] and "unused" not in used["risks"]
    root = [p for p in review["principals"] if p["name"] == "root"][0]
    assert {"admin", "all_partitions", "broad_roles"} <= set(root["risks"])
    risks = [p["risk"] for p in review["principals"]]
    assert risks == sorted(risks, reverse=True) and all(bool(p["why"]) == (p["risk"] > 0) for p in review["principals"])
    assert used["risk"] == 0  # one partition, one role, used, expires in 30 days: nothing to act on
    text = _tambua(s.data_dir, "review", "--unused-days", "30")
    assert text.returncode == 0 and "never used since it was created" in text.stdout


def test_prune_dry_run_changes_nothing_and_prune_revokes_and_audits(server):
    s, stub, root = server
    stale = create(s.data_dir, "lost tablet", ["registrar"])
    time.sleep(12)
    fresh = create(s.data_dir, "tablet in use", ["registrar"])

    def in_use() -> None:  # the tablet keeps working; its last use is flushed before each look
        assert _call(stub, fresh["api_key"])[0] == grpc.StatusCode.NOT_FOUND
        assert _call(stub, root)[0] == grpc.StatusCode.NOT_FOUND
        time.sleep(FLUSH_S * 4)

    limit = str(8 / 86400)  # eight seconds, in days: the stale key is older, the fresh one in use
    in_use()
    before = keys(s.data_dir, "list")["principals"]
    dry = keys(s.data_dir, "prune", "--unused-days", limit, "--dry-run")
    would = {p["id"] for p in dry["would_revoke"]}
    assert stale["id"] in would and fresh["id"] not in would and dry["dry_run"]
    assert keys(s.data_dir, "list")["principals"] == before
    in_use()
    done = keys(s.data_dir, "prune", "--unused-days", limit)
    revoked = {p["id"] for p in done["revoked"]}
    assert stale["id"] in revoked and fresh["id"] not in revoked
    code, details = _call(stub, stale["api_key"])
    assert code == grpc.StatusCode.UNAUTHENTICATED and "revoked" in details
    assert _call(stub, fresh["api_key"])[0] == grpc.StatusCode.NOT_FOUND
    lines = [json.loads(x) for x in (s.data_dir / "audit.jsonl").read_text().splitlines()]
    pruned = [e for e in lines if e["rpc"].startswith("keys prune")]
    assert len(pruned) == 1 and stale["id"] in pruned[0]["rpc"] and pruned[0]["principal_id"].startswith("host:")


def test_a_rotated_key_keeps_working_through_its_grace_period_then_expires(server):
    s, stub, _ = server
    old = create(s.data_dir, "tablet K-40", ["registrar"], ["kakuma"])
    new = keys(s.data_dir, "rotate-key", old["id"], "--grace", "4s")
    assert new["replaces"] == old["id"] and new["id"] != old["id"]
    listed = {p["id"]: p for p in keys(s.data_dir, "list")["principals"]}
    assert (listed[new["id"]]["name"], listed[new["id"]]["roles"], listed[new["id"]]["partitions"]) == (
        "tablet K-40", ["registrar"], ["kakuma"])
    while time.time() * 1000 < new["old_key_expires_unix_ms"] - 700:  # the grace period: both keys work
        assert _call(stub, old["api_key"], "kakuma")[0] == grpc.StatusCode.NOT_FOUND
        assert _call(stub, new["api_key"], "kakuma")[0] == grpc.StatusCode.NOT_FOUND
        time.sleep(0.25)
    time.sleep(max(0.0, new["old_key_expires_unix_ms"] / 1000 - time.time()) + 0.2)
    code, details = _call(stub, old["api_key"], "kakuma")
    assert code == grpc.StatusCode.UNAUTHENTICATED and "expired" in details
    assert _call(stub, new["api_key"], "kakuma")[0] == grpc.StatusCode.NOT_FOUND
    again = _tambua(s.data_dir, "rotate-key", old["id"])
    assert again.returncode == 1 and "expired" in again.stderr
