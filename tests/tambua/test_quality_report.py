"""The data-quality report against a real TLS server with API keys: two registrars enrol
real ORL faces, FVC fingers (one sent as WSQ) and CASIA irises into two partitions, and have
captures refused (a blank photo, a truncated one, a fingerprint sent as a face); an
administrator's `tambua quality-report` counts exactly that per modality, operator and
partition, with the images' sizes and resolutions; a partition-scoped administrator sees
only its partition; the HTML page, opened in real headless Chromium, shows every plot and
the very numbers of the JSON."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from tambua.v1 import tambua_pb2 as pb
from tambua.v1 import tambua_pb2_grpc as pb_grpc
from tests.tambua.test_security import _config, create
from tests.tambua.test_server import REPO, Server
from tests.tambua.test_nist import _wsq
from tests.tambua.test_web import CHROMIUM


def _md(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def reported(tmp_path_factory, orl, fingerprints, irises, models):
    from tambua.devpki import DevCA

    tmp = tmp_path_factory.mktemp("quality")
    data = tmp / "data"
    keys = {name: create(data, name, roles, parts)["api_key"] for name, roles, parts in [
        ("tablet 1", ["registrar"], ["default"]), ("tablet 2", ["registrar"], ["default", "opB"]),
        ("officer", ["admin"], []), ("default officer", ["admin"], ["default"])]}
    ca = DevCA(tmp / "pki")
    server = Server(data, _config(tmp, ca, api_keys=True))
    server.start()
    channel = server.connect(ca.ca_pem)
    stub = pb_grpc.MatcherStub(channel)
    face = lambda person, shot=1: pb.Sample(modality=pb.FACE, image=(orl / f"s{person}" / f"{shot}.pgm").read_bytes())  # noqa: E731
    finger_file = fingerprints / "fvc2000_db1_b" / "101" / "101_1.tif"
    eyes = [sorted((irises / "casia_v1" / f"{i:03d}").iterdir())[0] for i in (1, 2, 3)]

    def enrol(who, subject_id, samples, partition=""):
        return stub.Enroll(pb.EnrollRequest(subject_id=subject_id, samples=samples, partition=partition),
                           metadata=_md(keys[who]), timeout=120)

    # A1: face, two fingers (one as WSQ, its resolution in the WSQ header only), one iris.
    assert enrol("tablet 1", "A1", [
        face(1), pb.Sample(modality=pb.FINGER, position=2, image=finger_file.read_bytes(), dpi=500),
        pb.Sample(modality=pb.FINGER, position=7, image=_wsq(fingerprints / "fvc2000_db1_b" / "102" / "102_1.tif")),
        pb.Sample(modality=pb.IRIS, position=1, image=eyes[0].read_bytes())]).outcome == pb.EnrollResponse.ENROLLED
    assert enrol("tablet 2", "A2", [face(2)]).outcome == pb.EnrollResponse.ENROLLED  # a face only
    assert enrol("tablet 2", "B1", [face(3), pb.Sample(modality=pb.IRIS, position=1, image=eyes[1].read_bytes()),
                                    pb.Sample(modality=pb.IRIS, position=2, image=eyes[2].read_bytes())],
                 partition="opB").outcome == pb.EnrollResponse.ENROLLED
    # Refused captures: a blank photo and a truncated one by tablet 1; a fingerprint sent as a face by tablet 2.
    blank = _png(np.full((120, 100), 128, np.uint8))
    truncated = (orl / "s4" / "1.pgm").read_bytes()[:3000]
    for who, sample, partition in [("tablet 1", pb.Sample(modality=pb.FACE, image=blank), ""),
                                   ("tablet 1", pb.Sample(modality=pb.FACE, image=truncated), ""),
                                   ("tablet 2", pb.Sample(modality=pb.FACE, image=finger_file.read_bytes()), "opB")]:
        with pytest.raises(grpc.RpcError) as e:
            enrol(who, "R", [sample], partition)
        assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT

    audited = stub.AuditDuplicates(pb.AuditDuplicatesRequest(), metadata=_md(keys["officer"]), timeout=120)
    assert audited.subjects == 2

    def report(who: str, *extra: str) -> tuple[int, dict, str]:
        r = subprocess.run([sys.executable, "-m", "tambua.cli", "quality-report", "--address",
                            f"localhost:{server.address.rsplit(':', 1)[1]}", "--ca", str(ca.ca_pem), "--api-key",
                            keys[who], *extra], cwd=REPO, capture_output=True, text=True, timeout=300)
        return r.returncode, (json.loads(r.stdout) if r.returncode == 0 and "--json" in extra else {}), r.stderr

    yield report, tmp
    channel.close()
    server.stop()


def test_the_report_counts_what_was_enrolled_and_refused(reported):
    report, tmp = reported
    rc, out, err = report("officer", "--json", "--out", str(tmp / "report.json"), "--html", str(tmp / "report.html"))
    assert rc == 0, err
    assert json.loads((tmp / "report.json").read_text()) == out
    assert out["partitions"] == ["default", "opB"]
    assert out["totals"] == {"subjects": 3, "samples": {"face": 3, "finger": 2, "iris": 3},
                             "refused": {"face": 3, "finger": 0, "iris": 0}}
    face, finger, iris = (out["modalities"][m] for m in ("face", "finger", "iris"))
    # Why each capture was refused, as the enrolment said it.
    assert face["refusal_reasons"] == {"BLANK_IMAGE": 1, "IMAGE_TRUNCATED": 1, "NO_FACE": 1}
    assert face["refusal_rate"] == pytest.approx(3 / 6, abs=1e-4)
    # Quality: a score and its components for every face; ORL photos are 92x112 and carry no dpi.
    assert face["quality"]["n"] == 3 and 0 < face["quality"]["mean"] <= 100 and sum(face["quality"]["histogram"]) == 3
    assert {"sharpness", "brightness", "yaw", "face_px"} <= set(face["components"])
    assert face["image_sizes"]["width"]["p50"] == 92 and face["image_sizes"]["height"]["p50"] == 112
    assert face["dpi"] == {"(unknown)": 3}
    # The dpi the request gave, and the one only the WSQ header gave: both 500.
    assert finger["dpi"] == {"500": 2} and set(finger["by_position"]) == {"2", "7"}
    assert {"minutiae", "clarity"} <= set(finger["components"])
    assert iris["components"] and iris["by_position"]["1"]["samples"] == 2
    assert out["missing"] == {"subjects": 3, "without_face": 0, "without_iris": 1, "one_iris": 1,
                              "without_fingers": 2, "fingers_short_of_ten": 1,
                              "finger_counts": {"0": 2, "1": 0, "2": 1, **{str(k): 0 for k in range(3, 11)}},
                              "combinations": {"face": 1, "face+finger+iris": 1, "face+iris": 1}}
    operators = {g["key"]: g for g in out["groups"]["operator"]}
    assert operators["tablet 1"]["subjects"] == 1 and operators["tablet 1"]["refused"]["face"] == 2
    assert operators["tablet 2"]["subjects"] == 2 and operators["tablet 2"]["samples"]["iris"] == 2
    assert operators["tablet 2"]["refusal_rate"]["face"] == pytest.approx(1 / 3, abs=1e-4)
    assert {g["key"]: g["subjects"] for g in out["groups"]["partition"]} == {"default": 2, "opB": 1}
    assert [g["key"] for g in out["groups"]["site"]] == ["(this server)"]
    assert sum(g["samples"]["face"] for g in out["groups"]["day"]) == 3
    assert out["sync"] == []
    assert {p: (a["subjects"], a["clusters"]) for p, a in out["audits"].items()} == {"default": (2, 0)}


def test_an_officer_of_one_partition_sees_only_it(reported):
    report, _ = reported
    rc, out, err = report("default officer", "--json")
    assert rc == 0, err
    assert out["partitions"] == ["default"] and out["totals"]["subjects"] == 2
    assert out["totals"]["refused"]["face"] == 2  # opB's refusal is not theirs to see
    rc, _, err = report("default officer", "--json", "--partition", "opB")
    assert rc != 0 and "PERMISSION_DENIED" in err and "opB" in err


def _shown(text: str, percent: bool) -> float | None:
    text = text.strip()
    if text == "–":
        return None
    value = float(text.replace(",", "").rstrip("%"))
    return value / 100 if percent else value


def test_the_page_renders_its_plots_and_the_json_numbers(reported):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make setup installs it)")
    pytest.importorskip("playwright", reason="playwright is a test dependency (make setup installs it)")
    from playwright.sync_api import sync_playwright

    report, tmp = reported
    rc, out, err = report("officer", "--json", "--html", str(tmp / "page.html"))
    assert rc == 0, err
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page()
        page.goto((tmp / "page.html").as_uri())
        assert page.title() == "Data-quality report"
        plots = page.eval_on_selector_all("img", "els => els.map(e => [e.id, e.complete && e.naturalWidth])")
        assert {i for i, _ in plots} == {"plot-quality", "plot-refusals", "plot-days", "plot-fingers"}
        assert all(width > 100 for _, width in plots), plots
        cells = page.eval_on_selector_all(
            "[data-json]", "els => els.map(e => [e.dataset.json, e.hasAttribute('data-percent'), e.innerText])")
        browser.close()
    assert len(cells) > 60
    for path, percent, text in cells:
        value = out
        for part in path.split("."):
            value = value[int(part)] if isinstance(value, list) else value[part]
        shown = _shown(text, percent)
        if value is None:
            assert shown is None, path
        else:
            assert shown == pytest.approx(value, abs=0.006 if not percent else 5e-5), (path, text, value)
    # The refusals the officer must act on are named on the page.
    assert re.search(r"NO_FACE", (tmp / "page.html").read_text())
