"""Sync watch on two real servers, a field site and a country server: `tambua doctor` and the
alert rules of docker/alerts.yml (run by Debian's promtool on the metrics the country server
exported) report the field site late once it passes its limit, and clear after a sync."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.tambua.test_readme import _free_port
from tests.tambua.test_server import REPO, Server
from tests.tambua.test_sync import Site, cli, identity, ok

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian's prometheus package) is not "
                                                             "installed: `make setup` installs it")
RULES = REPO / "docker" / "alerts.yml"
LIMIT_S = 5  # the field site's sync_max_lag on the country server here


@needs_promtool
def test_the_alert_rules_are_valid_and_pass_their_unit_tests():
    checked = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([PROMTOOL, "test", "rules", "alerts_test.yml"], cwd=RULES.parent, capture_output=True,
                            text=True, timeout=120)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
    tests = yaml.safe_load((RULES.parent / "alerts_test.yml").read_text())["tests"]
    rules = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    fired = {t["alertname"] for case in tests for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert fired == rules  # every rule has a case where it fires


def _doctor(site: Site, *extra: str) -> tuple[int, str]:
    r = cli("doctor", "--address", site.server.address, *extra)
    return r.returncode, r.stdout


def _scrape(port: int) -> dict[str, list]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(body)}


def _alerts(metrics: dict[str, list], tmp, expect: list[str]) -> subprocess.CompletedProcess:
    """promtool's verdict on TambuaSiteSyncLate, held for 10 minutes at the values scraped:
    ``expect`` the peers it must fire for (and no other)."""
    series = [{"series": "%s{instance=\"country\", job=\"tambua\", peer=\"%s\"}" % (s.name, s.labels["peer"]),
               "values": f"{s.value}x15"}
              for name in ("tambua_sync_lag_seconds", "tambua_sync_max_lag_seconds") for s in metrics[name]]
    expected = [{"exp_labels": {"severity": "page", "instance": "country", "job": "tambua", "peer": peer},
                 "exp_annotations": {
                     "summary": f"{peer} has not synced within its limit",
                     "description": "Run `tambua doctor` on country; ask the site to sync (tambua sync push, or a "
                                    "bundle by hand)."}} for peer in expect]
    case = {"rule_files": [str(RULES)], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": series,
                       "alert_rule_test": [{"eval_time": "10m", "alertname": "TambuaSiteSyncLate",
                                            "exp_alerts": expected}]}]}
    f = tmp / "scraped_test.yml"
    f.write_text(yaml.safe_dump(case))
    return subprocess.run([PROMTOOL, "test", "rules", str(f)], capture_output=True, text=True, timeout=120)


@needs_promtool
def test_doctor_and_the_alert_report_a_late_site_and_clear_after_a_sync(tmp_path, orl, models):
    field_dir, country_dir = tmp_path / "field", tmp_path / "country"
    ids = {s: identity(d, s, tmp_path) for s, d in [("field-1", field_dir), ("country", country_dir)]}
    ok("sync", "peer", "add", str(ids["country"]), "--data-dir", str(field_dir))
    ok("sync", "peer", "add", str(ids["field-1"]), "--data-dir", str(country_dir))
    metrics_port = _free_port()
    field = Site(Server(field_dir))
    country = Site(Server(country_dir, env={"TAMBUA_SYNC_MAX_LAG": f"field-1={LIMIT_S}s,1d",
                                            "TAMBUA_ENROLMENT_STALL": "1d"},
                          args=("--metrics-port", str(metrics_port))))
    field.server.start()
    country.server.start()
    try:
        def sync() -> None:
            r = ok("sync", "push", "--address", field.server.address, "--to", "country", "--peer",
                   country.server.address, "--json")
            assert r["acked_seq"] >= 1

        field.enrol("F1", orl, 1, 1)
        sync()
        code, out = _doctor(country, "--json")
        report = json.loads(out)
        assert code == 0 and report["ok"] and report["needs_action"] == []
        lag = [f for f in report["findings"] if f["check"] == "sync_lag"][0]
        assert lag["about"] == "field-1" and lag["limit"] == LIMIT_S and lag["value"] < LIMIT_S
        assert {f["check"] for f in report["findings"]} == {"sync_lag", "sync_pending", "sync_refused",
                                                             "audit_chain", "disk", "enrolments"}
        scraped = _scrape(metrics_port)
        quiet = _alerts(scraped, tmp_path, expect=[])
        assert quiet.returncode == 0, quiet.stdout + quiet.stderr
        # Every metric the alert rules name is one this server exports.
        named = set(re.findall(r"\b(tambua_[a-z_]+)", RULES.read_text()))
        assert named <= set(scraped), named - set(scraped)

        time.sleep(LIMIT_S + 1.5)  # the field site stops syncing
        code, out = _doctor(country, "--json")
        late = json.loads(out)
        assert code == 1 and not late["ok"]
        assert any(m.startswith("field-1 is late: it last synced") for m in late["needs_action"]), late
        code, text = _doctor(country)
        assert code == 1 and "1 things need action" in text and "! field-1 is late" in text
        fired = _alerts(_scrape(metrics_port), tmp_path, expect=["field-1"])
        assert fired.returncode == 0, fired.stdout + fired.stderr
        assert _alerts(_scrape(metrics_port), tmp_path, expect=[]).returncode != 0  # promtool can say no

        field.enrol("F2", orl, 2, 1)
        sync()
        code, out = _doctor(country, "--json")
        assert code == 0 and json.loads(out)["ok"]
        cleared = _alerts(_scrape(metrics_port), tmp_path, expect=[])
        assert cleared.returncode == 0, cleared.stdout + cleared.stderr
    finally:
        field.server.stop()
        country.server.stop()
    # A server that cannot be asked is not a healthy one: its own exit code.
    assert _doctor(country)[0] == 2


def test_each_check_says_what_needs_action_and_when_it_clears(tmp_path):
    from matcher.repository import PeerState
    from tambua.doctor import PeerFacts, disk_finding, enrolment_finding, sync_findings

    now = 10_000_000_000
    hour = 3_600_000

    def facts(**state) -> dict:
        pending = state.pop("pending_since", None)
        return {"camp-a": PeerFacts(PeerState("camp-a", **state), 3 if pending else 0, pending, now - 48 * hour,
                                    6 * 3600)}

    def failing(found) -> set[str]:
        return {f.check for f in found if not f.ok}

    assert failing(sync_findings(facts(last_import_ms=now - hour), now)) == set()
    assert failing(sync_findings(facts(), now)) == {"sync_lag"}  # added two days ago, never synced
    stuck = sync_findings(facts(last_import_ms=now - hour, pending_since=now - 7 * hour), now)
    assert failing(stuck) == {"sync_pending"} and "3 changes made here have waited 7 h 0 min" in stuck[1].message
    refused = facts(last_import_ms=now - hour, refused=2, last_refused_ms=now - 600_000)
    assert failing(sync_findings(refused, now)) == {"sync_refused"}
    accepted_since = facts(last_import_ms=now - 60_000, refused=2, last_refused_ms=now - 600_000)
    assert failing(sync_findings(accepted_since, now)) == set()
    assert not enrolment_finding(now - 7 * hour, 6 * 3600, now).ok and enrolment_finding(now - hour, 6 * 3600, now).ok
    assert enrolment_finding(None, 6 * 3600, now).ok  # a new site has nothing to be late with
    assert disk_finding(tmp_path, 0.0).ok and not disk_finding(tmp_path, 0.999999).ok
