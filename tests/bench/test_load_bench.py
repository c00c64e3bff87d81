"""bench.load end to end on a small real server: the open-loop ramp, its JSON contract and its plot."""

import json

from bench import load


def test_the_load_ramp_measures_a_real_server(tmp_path, models):
    out, png = tmp_path / "load.json", tmp_path / "load.png"
    assert load.main(["--gallery", "300", "--modality", "face", "--rpcs", "identify", "enroll", "mixed",
                      "--start-qps", "10", "--factor", "2", "--step-s", "1.5", "--max-steps", "2",
                      "--json", str(out), "--plot", str(png)]) == 0
    r = json.loads(out.read_text())
    face = r["modalities"]["face"]
    assert face["gallery"] == 300 and set(face["rpcs"]) == {"identify", "enroll", "mixed"}
    for rpc, runs in face["rpcs"].items():
        assert [s["offered_qps"] for s in runs["steps"]] == [10.0, 20.0], rpc  # far from saturating 300 faces
        for s in runs["steps"]:
            assert s["errors"] == 0 and s["overflow"] == 0 and s["requests"] == int(s["offered_qps"] * 1.5)
            assert 0 < s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] <= s["max_ms"] < 1000
            assert abs(s["answered_qps"] - s["offered_qps"]) <= 0.2 * s["offered_qps"]
        assert runs["saturation_qps"] > 0 and not runs["saturated"]
    assert face["matcher_p50_ms"]["identify"] > 0 and face["rpcs"]["identify"]["service_over_matcher"] > 1
    assert png.stat().st_size > 5000
