"""The Grafana dashboard (docker/grafana/dashboards/tambua.json): every panel's PromQL parses
(promtool) and names only metrics a real server exports (its /metrics scraped); the compose
file provisions it. The cluster panels' metrics are checked on a real cluster in
tests/cluster/test_cluster.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request

import grpc
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tambua.v1 import tambua_pb2 as pb
from tests.tambua.test_readme import _free_port
from tests.tambua.test_server import REPO, Server, face
from tests.tambua.test_sync import identity, ok

DOCKER = REPO / "docker"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "tambua.json"
_SUFFIXES = ("_bucket", "_count", "_sum")


def panels(cluster: bool | None = None) -> list[dict]:
    """The dashboard's panels with queries (``cluster``: only those of cluster mode, or only the others)."""
    out = [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]
    return [p for p in out if cluster is None or p["title"].startswith("Cluster:") == cluster]


def metric_names(exprs) -> set[str]:
    """The metric names a set of PromQL expressions read (histogram series by their family)."""
    names = set()
    for expr in exprs:
        for name in re.findall(r"\b(tambua_[a-z_]+)\b", expr):
            names.add(next((name[:-len(s)] for s in _SUFFIXES if name.endswith(s)), name))
    return names


def exported(metrics_text: str) -> set[str]:
    """Every name a scrape offers: families (declared, even before a first sample; the
    parser drops a counter's ``_total``, which its samples carry) and samples."""
    names = set()
    for family in text_string_to_metric_families(metrics_text):
        names |= {family.name} | {s.name for s in family.samples}
        if family.type == "counter":
            names.add(family.name + "_total")
    return names


def test_every_panel_has_a_query_that_parses(tmp_path):
    found = panels()
    assert len(found) >= 15 and all(p["targets"] for p in found)
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian's prometheus package) is not installed: `make setup` installs it")
    # promtool parses the PromQL of a rules file: every query as a recording rule.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"panel_{p['id']}_{t['refId']}", "expr": t["expr"].replace("$site", ".*")}
        for p in found for t in p["targets"]]}]}
    f = tmp_path / "dashboard-rules.yml"
    f.write_text(yaml.safe_dump(rules))
    r = subprocess.run([promtool, "check", "rules", str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_compose_file_provisions_the_dashboard_and_its_data_source():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    mounts = {inside: outside for outside, inside in (v.split(":")[:2] for v in compose["grafana"]["volumes"])}
    assert (DOCKER / mounts["/etc/grafana/provisioning"].removeprefix("./")).resolve() == (
        DOCKER / "grafana" / "provisioning").resolve()
    boards = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/tambua.yml").read_text())["providers"][0]
    assert (DOCKER / mounts[boards["options"]["path"]].removeprefix("./") / DASHBOARD.name).exists()
    source = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    assert {t["datasource"]["uid"] for p in panels() for t in p["targets"]} == {source["uid"]}
    assert source["url"] == "http://prometheus:9090" and "prometheus" in compose


def test_every_panel_reads_metrics_a_real_server_exports(tmp_path, orl, models):
    data = tmp_path / "data"
    other = identity(tmp_path / "peer", "camp-b", tmp_path)
    identity(data, "camp-a", tmp_path)
    ok("sync", "peer", "add", str(other), "--data-dir", str(data))
    port = _free_port()
    server = Server(data, env={"TAMBUA_ENROLMENT_STALL": "6h"}, args=("--metrics-port", str(port)))
    server.start()
    try:
        stub = server.stub
        stub.Enroll(pb.EnrollRequest(subject_id="A", samples=[face(orl, 1, 1)]), timeout=60)
        with pytest.raises(grpc.RpcError):
            stub.Enroll(pb.EnrollRequest(subject_id="B", samples=[pb.Sample(modality=pb.FACE, image=b"junk")]),
                        timeout=60)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    finally:
        server.stop()
    offered = exported(text)
    wanted = metric_names(t["expr"] for p in panels(cluster=False) for t in p["targets"])
    assert wanted <= offered, sorted(wanted - offered)
    # Not just declared: the panels of a serving site have numbers to show.
    samples = {s.name: s for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples["tambua_site_info"].labels["site"] == "camp-a"
    assert samples["tambua_subjects"].value == 1 and samples["tambua_enrolments_total"].labels["outcome"] == "ENROLLED"
    assert samples["tambua_quality_rejections_total"].labels["reason"] == "IMAGE_UNDECODABLE"
    assert samples["tambua_sync_lag_seconds"].labels["peer"] == "camp-b"
