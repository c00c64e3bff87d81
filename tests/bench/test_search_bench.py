import json

import numpy as np

from bench import search
from matcher.calibration import Calibration


def test_synthetic_gallery_matches_real_impostor_distances():
    x = search.draw(search.STATS_DIR / "face.stats.npz", 4000, seed=3)
    d = np.linalg.norm(x[:2000] - x[2000:], axis=1)
    cal = Calibration.load("face/dlib-resnet-v1")
    # the fitted Gaussian reproduces the measured 1% impostor quantile within 5%
    assert abs(np.quantile(d, 0.01) - cal.distance_at_fmr(0.01)) < 0.05 * cal.distance_at_fmr(0.01)


def test_cli_small_gallery(tmp_path):
    out = tmp_path / "s.json"
    assert search.main(["--gallery", "3000", "--queries", "20", "--indexes", "flat", "hnsw", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    flat, hnsw = r["runs"]
    assert flat["index"] == "flat" and flat["recall_at_10"] == 1.0 and flat["mate_rank1"] == 1.0
    assert flat["bytes_per_template"] >= 512
    assert hnsw["recall_at_10"] >= 0.9


def test_service_identify_bench_small(tmp_path):
    from bench import service

    out = tmp_path / "svc.json"
    assert service.main(["--gallery", "500", "--queries", "20", "--security", "--json", str(out)]) == 0
    plain, secure = json.loads(out.read_text())["runs"]
    for run in (plain, secure):
        assert run["gallery"] == 500 and run["mate_rank1"] == 1.0
        assert run["identify_rpc"]["p50_ms"] >= run["pure_search"]["p50_ms"] > 0
    assert plain["mode"] == "plain" and secure["mode"].startswith("tls") and secure["vs_plain"]["identify_rpc_p50_ratio"] > 0


def test_sync_bench_small(tmp_path):
    from bench import sync

    out = tmp_path / "sync.json"
    assert sync.main(["--subjects", "60", "--json", str(out)]) == 0
    run = json.loads(out.read_text())["runs"][0]
    assert run["applied"] == 60 and run["reimport_applied"] == 0 and run["bytes_per_subject"] > 128 * 4 * 0.5


def test_finger_startup_bench_small(tmp_path):
    from bench import finger_startup

    out = tmp_path / "startup.json"
    assert finger_startup.main(["--fingers", "40", "--json", str(out)]) == 0
    run = json.loads(out.read_text())["runs"][0]
    assert run["fingers"] == 40 and run["load_persisted_s"] < run["load_computing_s"]


def test_cluster_bench_small(tmp_path):
    """bench.cluster end to end on a tiny gallery: one server and a 2-node cluster at 1 and
    2 shards, the same answers (every mate first), ratios from the same run, a plot."""
    import pytest

    pytest.importorskip("ray", reason="cluster mode needs the cluster extra (make setup installs it)")
    from bench import cluster

    out, png = tmp_path / "c.json", tmp_path / "c.png"
    assert cluster.main(["--faces", "2000", "--shards", "1", "2", "--nodes", "2", "--queries", "20",
                         "--concurrency", "2", "--control", "--json", str(out), "--plot", str(png)]) == 0
    r = json.loads(out.read_text())
    single, control, one, two = r["runs"]
    assert single["mode"] == "single" and [one["shards"], two["shards"]] == [1, 2]
    assert control["mode"] == "single beside idle nodes" and control["mate_rank1"] == 1.0
    assert one["p50_ratio_to_control"] == one["p50_ms"] / control["p50_ms"]
    assert all(run["mate_rank1"] == 1.0 and run["p99_ms"] >= run["p50_ms"] > 0 and run["qps"] > 0
               for run in r["runs"])
    assert all(run["slowest_ms"] >= run["p99_ms"] and run["compaction_stalls"] >= 0 for run in r["runs"])
    assert len(two["shard_resident_bytes"]) == 2 and two["p50_ratio_to_single"] > 0
    # Time inside the engine (one server) and inside each shard copy, below the call's own.
    assert 0 < single["search_ms"] < single["p50_ms"] * 2 and len(two["shard_search_ms"]) == 2
    assert all(0 < ms < run["p99_ms"] for run in (one, two) for ms in run["shard_search_ms"])
    assert all(run["mean_ms"] > run["outside_search_ms"] > 0 for run in (one, two))
    assert png.stat().st_size > 10_000
