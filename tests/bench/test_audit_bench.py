"""The audit benchmark end to end on a small gallery: its JSON contract, and that the
planted duplicates (every ORL person twice) are found with no false cluster."""

import json

from bench import audit


def test_audit_bench_small(orl, tmp_path, models):
    out = tmp_path / "audit.json"
    assert audit.main(["--sizes", "300", "--orl", str(orl), "--import-rate", "face", "--import-limit", "6",
                       "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    imported = result["import"]["face"]
    assert imported["subjects"] == 6 and imported["failed"] == 0 and imported["subjects_per_s"] > 0
    r = result["sizes"]["300"]
    assert {"audit_s", "faiss_s", "ratio", "planted_pairs", "recall", "false_clusters", "clusters"} <= set(r)
    assert r["subjects"] == 300 and r["planted_pairs"] == 40
    assert r["recall"] >= 0.8 and r["false_clusters"] == 0
