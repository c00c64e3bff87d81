"""The adjudication pages in real headless Chromium (Debian's, driven by Playwright) against
a real TLS server holding real ORL faces, FVC fingers and CASIA irises: an adjudicator logs
in with an API key, sees the queue of their partitions only, opens cases with every
candidate's images and scores, decides "same person" with the keyboard and "different
people" with the mouse; the store and the audit chain show both; a verifier's key gets no
page; another partition's case stays hidden. Screenshots go to the test's temporary folder
only."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from tambua.v1 import tambua_pb2 as pb
from tambua.v1 import tambua_pb2_grpc as pb_grpc
from tests.tambua.test_security import _config, create
from tests.tambua.test_server import REPO, Server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _md(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


def _samples(orl: Path, fingerprints: Path, irises: Path, person: int, finger: str, eye: str, shot: int
             ) -> list[pb.Sample]:
    prints = sorted((fingerprints / "fvc2000_db1_b" / finger).iterdir())
    eyes = sorted((irises / "casia_v1" / eye).iterdir())
    return [pb.Sample(modality=pb.FACE, image=(orl / f"s{person}" / f"{shot}.pgm").read_bytes()),
            pb.Sample(modality=pb.FINGER, position=2, image=prints[shot - 1].read_bytes()),
            pb.Sample(modality=pb.IRIS, position=1, image=eyes[shot - 1].read_bytes())]


@pytest.fixture(scope="module")
def site(tmp_path_factory, orl, fingerprints, irises, models):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make setup installs it)")
    pytest.importorskip("playwright", reason="playwright is a test dependency (make setup installs it)")
    from tambua.devpki import DevCA

    tmp = tmp_path_factory.mktemp("web")
    data = tmp / "data"
    keys = {name: create(data, name, roles, parts) for name, roles, parts in [
        ("tablet 1", ["registrar"], ["default", "opB"]), ("supervisor amina", ["adjudicator"], ["default"]),
        ("gate 4", ["verifier"], ["default"]), ("inspector", ["auditor"], ["default"])]}
    ca = DevCA(tmp / "pki")
    config = _config(tmp, ca, api_keys=True)
    # Every duplicate to a person: the pages are under test, and a capture of all three
    # modalities of one person is otherwise beyond doubt (decided without a case).
    config.write_text(config.read_text() + "clear_match_fpir = 0\n")
    server = Server(data, config, args=("--web-port", "0", "--keep-images", "all"))
    server.start()
    channel = server.connect(ca.ca_pem)
    stub = pb_grpc.MatcherStub(channel)
    reg = _md(keys["tablet 1"]["api_key"])

    def enrol(subject_id, samples, hold=False, partition=""):
        return stub.Enroll(pb.EnrollRequest(subject_id=subject_id, samples=samples, hold=hold, partition=partition),
                           metadata=reg, timeout=120)

    assert enrol("P1", _samples(orl, fingerprints, irises, 1, "101", "005", 1)).outcome == pb.EnrollResponse.ENROLLED
    assert enrol("P2", _samples(orl, fingerprints, irises, 2, "102", "006", 1)).outcome == pb.EnrollResponse.ENROLLED
    same = enrol("N1", _samples(orl, fingerprints, irises, 1, "101", "005", 2), hold=True)
    other = enrol("N2", _samples(orl, fingerprints, irises, 2, "102", "006", 2), hold=True)
    assert enrol("Q1", _samples(orl, fingerprints, irises, 3, "103", "007", 1)[:1], partition="opB").outcome == pb.EnrollResponse.ENROLLED
    hidden = enrol("Q2", _samples(orl, fingerprints, irises, 3, "103", "007", 2)[:1], hold=True, partition="opB")
    assert same.case_id and other.case_id and hidden.case_id
    yield server, stub, keys, {"same": same.case_id, "different": other.case_id, "hidden": hidden.case_id}
    channel.close()
    server.stop()


@pytest.fixture(scope="module")
def browser(site):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


def _login(browser, web: str, key: str):
    context = browser.new_context(ignore_https_errors=True)  # the dev CA is not the browser's
    page = context.new_page()
    page.goto(f"{web}/")
    assert page.url.endswith("/login")
    page.fill("#api_key", key)
    page.click("button[type=submit]")
    return context, page


def _images_loaded(page) -> bool:
    """Every sample image on the page has arrived and decoded (a broken one has no width)."""
    deadline = time.monotonic() + 30
    # Polled from here: the page's Content-Security-Policy forbids the eval wait_for_function uses.
    while not page.evaluate("Array.from(document.querySelectorAll('img.sample')).every(i => i.complete)"):
        assert time.monotonic() < deadline, "images still loading after 30 s"
        time.sleep(0.05)
    return page.evaluate("Array.from(document.querySelectorAll('img.sample')).every(i => i.naturalWidth > 0)")


def test_an_adjudicator_decides_two_cases_on_the_pages(site, browser, tmp_path):
    server, stub, keys, cases = site
    auditor = _md(keys["inspector"]["api_key"])
    head = stub.ReadAudit(pb.ReadAuditRequest(limit=1), metadata=auditor, timeout=30).head_seq
    context, page = _login(browser, server.web, keys["supervisor amina"]["api_key"])

    # The queue: both default-partition cases, oldest first; nothing of opB.
    rows = page.locator("#queue tbody tr")
    assert [rows.nth(i).get_attribute("data-case") for i in range(rows.count())] == [cases["same"], cases["different"]]
    assert page.inner_text("#total") == "2" and "opB" not in page.content()
    page.screenshot(path=str(tmp_path / "queue.png"))

    # A case: probe beside the hit for the face, the finger and the iris, scores in words.
    page.click(f"a[href^='/cases/{cases['same']}']")
    assert page.inner_text("#hit-of") == "Hit 1 of 1" and page.inner_text("#hit-id") == "P1"
    assert "1 in" in page.inner_text("#fpir-words")
    assert "without a person" in page.inner_text("#why-a-person")  # the band, in words
    scores = page.inner_text("#scores")
    assert "face" in scores and "right index finger" in scores and "right iris" in scores
    assert page.locator("section.panel").count() == 3 and page.locator("img.sample").count() == 6
    assert _images_loaded(page)
    finger = page.locator("section.panel[data-modality=finger]")
    assert "matched minutiae pairs" in finger.inner_text()
    finger.locator("button[data-view=enhanced]").click()
    assert "view=enhanced" in finger.locator("img.sample").first.get_attribute("src") and _images_loaded(page)
    page.locator("section.panel[data-modality=iris] button[data-view=strip]").click()
    assert _images_loaded(page)
    page.fill("#zoom", "200")
    page.dispatch_event("#zoom", "input")
    assert "scale(2)" in page.locator("img.sample").first.get_attribute("style")
    page.screenshot(path=str(tmp_path / "case.png"), full_page=True)
    image = page.request.get(server.web + page.locator("img.sample").first.get_attribute("src"))
    assert image.status == 200 and image.headers["cache-control"] == "no-store"

    # Same person, by keyboard: S picks it and moves to the reason, Ctrl+Enter records.
    page.keyboard.press("s")
    assert page.is_checked("#verdict-same")
    page.keyboard.type("same face, finger and iris; same family card")
    page.keyboard.press("Control+Enter")
    page.wait_for_url(f"{server.web}/?done=*")
    assert "same person as P1" in page.inner_text("p.done")

    # Different people, by mouse; a decision without a reason is refused by the form.
    page.click(f"a[href^='/cases/{cases['different']}']")
    assert page.inner_text("#hit-id") == "P2" and _images_loaded(page)
    page.check("#verdict-different")
    page.click("#submit")
    assert page.url.startswith(f"{server.web}/cases/")  # the browser kept it: reason is required
    page.fill("#reason", "twins: different birth records")
    page.click("#submit")
    page.wait_for_url(f"{server.web}/?done=*")
    assert "N2 enrolled" in page.inner_text("p.done") and page.inner_text("#total") == "0"

    # The store: one subject with two encounters; one new subject linked to its candidate.
    reg = _md(keys["tablet 1"]["api_key"])
    p1 = stub.GetSubject(pb.SubjectRequest(subject_id="P1"), metadata=reg, timeout=30)
    assert p1.encounters == 1
    with pytest.raises(grpc.RpcError) as e:
        stub.GetSubject(pb.SubjectRequest(subject_id="N1"), metadata=reg, timeout=30)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    n2 = stub.GetSubject(pb.SubjectRequest(subject_id="N2"), metadata=reg, timeout=30)
    assert list(n2.linked_subject_ids) == ["P2"] and len(n2.templates) == 3

    # The audit chain: who looked and who decided, in order, and the chain verifies.
    entries = stub.ReadAudit(pb.ReadAuditRequest(after_seq=head), metadata=auditor, timeout=30).entries
    mine = [(e.rpc, e.outcome) for e in entries if e.principal_name == "supervisor amina"]
    assert [m for m in mine if m[0] == "web:DecideCase"] == [("web:DecideCase", "OK")] * 2
    assert ("web:Login", "OK") in mine and ("web:GetCase", "OK") in mine
    decided = [e for e in entries if e.rpc == "web:DecideCase"]
    assert "P1" in decided[0].subject_ids and {"N2", "P2"} <= set(decided[1].subject_ids)
    verify = subprocess.run([sys.executable, "-m", "tambua.cli", "audit", "verify", "--data-dir", str(server.data_dir),
                             "--kek-file", str(server.data_dir.parent / "kek"), "--json"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and json.loads(verify.stdout)["ok"]
    context.close()


def test_a_verifier_gets_no_page_and_other_partitions_stay_hidden(site, browser):
    server, _, keys, cases = site
    context, page = _login(browser, server.web, keys["gate 4"]["api_key"])
    assert "need the role adjudicator or admin" in page.content() and page.locator("#queue").count() == 0
    context.close()

    context, page = _login(browser, server.web, keys["supervisor amina"]["api_key"])
    for partition, words in (("opB", "may not see partition"), ("default", "No such case")):
        page.goto(f"{server.web}/cases/{cases['hidden']}?partition={partition}")
        assert words in page.content() and "Q2" not in page.content()
    response = page.request.get(f"{server.web}/cases/{cases['hidden']}/image?partition=opB&who=probe&modality=face"
                                "&position=0&view=original")
    assert response.status == 404
    page.goto(f"{server.web}/login")
    page.fill("#api_key", "tmb_nobody_nothing")
    page.click("button[type=submit]")
    assert "Unknown or revoked key" in page.content()
    context.close()
    # Without a session every page sends the browser to log in, images included.
    context = browser.new_context(ignore_https_errors=True)
    assert context.request.get(f"{server.web}/cases/{cases['hidden']}?partition=opB",
                               max_redirects=0).status == 303
    context.close()
