"""bench.web end to end on a small store: every page answers, the real case shows its six
images, the JSON has the numbers the README quotes and the plot is drawn."""

from __future__ import annotations

import json


def test_web_bench_small(tmp_path, models, orl, fingerprints, irises):
    from bench import web

    out, png = tmp_path / "w.json", tmp_path / "w.png"
    assert web.main(["--cases", "120", "--repeat", "3", "--json", str(out), "--plot", str(png)]) == 0
    r = json.loads(out.read_text())
    assert r["cases"] == 120 and r["queue_rows_per_page"] == 50
    assert r["case_view_real_with_images"]["images"] == 6
    assert r["queue_deep_page"]["page"] == 3
    for name in ("queue_first_page", "queue_deep_page", "case_view_real", "case_view_synthetic"):
        assert r[name]["p99_ms"] >= r[name]["p50_ms"] > 0, name
    assert png.stat().st_size > 10_000
