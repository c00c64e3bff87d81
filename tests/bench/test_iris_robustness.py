"""The iris robustness tool end to end on a few real eyes: its JSON contract, and that a
changed capture of a real eye (bigger, tilted, noisier) still matches the original."""

import json

from bench import iris_robustness


def test_changed_captures_still_match_their_originals(irises, tmp_path, models):
    out = tmp_path / "r.json"
    assert iris_robustness.main(["--root", str(irises), "--json", str(out), "--every", "300"]) == 0
    r = json.loads(out.read_text())
    assert r["enrolled_originals"] >= 6 and set(r["changes"]) == set(iris_robustness.CHANGES)
    for name in ("size_x2", "tilt_12deg", "noise_sd8", "jpeg_q40"):
        c = r["changes"][name]
        assert c["enrolled"] == r["enrolled_originals"] and c["non_matches"] == 0, (name, c)
        assert c["distance_max"] < r["threshold_fmr_1e-4"]
