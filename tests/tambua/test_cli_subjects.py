"""The subject commands of the CLI against a real server: an adjudicated enrol-anyway
records its links, `get` shows them, `identify` lists only candidates within the FPIR
asked for (or every ranked one with --max-fpir 1)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.tambua.test_server import REPO


def _json(server, *args: str) -> dict:
    r = subprocess.run([sys.executable, "-m", "tambua.cli", *args, "--address", server.address, "--json"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_enrol_anyway_links_get_and_trimmed_identify(plain_server, orl):
    photo = lambda person, shot: str(orl / f"s{person}" / f"{shot}.pgm")  # noqa: E731
    for person in range(11, 17):
        assert _json(plain_server, "enroll", "--subject", f"L-{person}", "--face", photo(person, 1))["outcome"] == \
            "ENROLLED"
    dup = _json(plain_server, "enroll", "--subject", "L-11b", "--face", photo(11, 2))
    assert dup["outcome"] == "DUPLICATE" and dup["candidates"][0]["subject_id"] == "L-11"
    # The adjudicator decided: two people after all. The links are what the decision was about.
    forced = _json(plain_server, "enroll", "--subject", "L-11b", "--face", photo(11, 2), "--force",
                   "--adjudicated", "L-11")
    assert forced["outcome"] == "ENROLLED"
    record = _json(plain_server, "get", "--subject", "L-11b")
    assert record["linked_subject_ids"] == ["L-11"] and record["subject_id"] == "L-11b"
    assert [(t["modality"], t["model_id"]) for t in record["templates"]] == [("face", "face/dlib-resnet-v1")]
    # Forced without naming them: the server records the candidates it found.
    _json(plain_server, "enroll", "--subject", "L-12b", "--face", photo(12, 3), "--force")
    assert _json(plain_server, "get", "--subject", "L-12b")["linked_subject_ids"] == ["L-12"]

    stranger = photo(25, 1)
    assert _json(plain_server, "identify", "--face", stranger)["candidates"] == []
    ranked = _json(plain_server, "identify", "--face", stranger, "--max-fpir", "1", "--max-candidates", "4")
    assert len(ranked["candidates"]) == 4 and all(c["fpir"] > 0.01 for c in ranked["candidates"])
    mate = _json(plain_server, "identify", "--face", photo(14, 5))["candidates"]
    assert [c["subject_id"] for c in mate] == ["L-14"]
