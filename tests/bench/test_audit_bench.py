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


def test_an_audit_run_cut_short_counts_its_time_to_its_last_checkpoint(tmp_path):
    path = tmp_path / "runs.json"
    first = audit.Runs(path)
    first.progress(0, 10)  # the audit starts with nothing searched
    first.progress(5, 10)  # a block kept; then the process is killed
    second = audit.Runs(path)  # run again: it goes on from the checkpoint
    second.progress(5, 10)
    second.progress(10, 10)
    runs = json.loads(path.read_text())
    assert [(r["searched_before"], r["searched"]) for r in runs] == [(0, 5), (5, 10)]
    assert second.total_s() == sum(r["seconds"] for r in runs) >= runs[0]["seconds"] >= 0
