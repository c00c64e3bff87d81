"""The accuracy tool end to end on a small real subset (ORL), checking its JSON contract."""

import json

import pytest

from bench import accuracy

KEYS = {"eer", "fnmr_at_fmr", "accuracy", "tar_at_far_1e-3", "failure_to_enrol", "genuine_pairs",
        "impostor_pairs", "rank1", "extract_ms_median"}


def test_folders_layout_on_orl_subset(orl, tmp_path, models):
    root = tmp_path / "orl"
    for s in ("s1", "s2", "s3", "s4", "s5", "s6"):
        (root / s).mkdir(parents=True)
        for k in (1, 2, 3):
            (root / s / f"{k}.pgm").symlink_to(orl / s / f"{k}.pgm")
    out, plot = tmp_path / "r.json", tmp_path / "det.png"
    assert accuracy.main(["--modality", "face", "--root", str(root), "--layout", "folders",
                          "--json", str(out), "--plot", str(plot), "--no-progress"]) == 0
    r = json.loads(out.read_text())
    assert KEYS <= set(r)
    assert r["genuine_pairs"] == 6 * 3 and r["impostor_pairs"] == 18 * 17 // 2 - 18
    assert r["failure_to_enrol"] <= 0.2
    assert r["rank1"] >= 0.8
    assert r["eer"] <= 0.15
    assert plot.stat().st_size > 1000


def test_bad_root_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit):
        accuracy.main(["--modality", "face", "--root", str(tmp_path / "none"), "--layout", "folders",
                       "--json", str(tmp_path / "x.json")])


def test_several_roots_are_measured_alone_and_pooled(orl, tmp_path, models):
    """Two sets: each keeps its own result under ``sets``; the top-level keys count the
    pairs of both (none across them) and name each set's threshold beside the pooled one."""
    roots = []
    for name, people in (("a", ("s1", "s2", "s3", "s4", "s5")), ("b", ("s6", "s7", "s8", "s9", "s10", "s11"))):
        root = tmp_path / name
        for s in people:
            (root / s).mkdir(parents=True)
            for k in (1, 2, 3):
                (root / s / f"{k}.pgm").symlink_to(orl / s / f"{k}.pgm")
        roots.append(str(root))
    out = tmp_path / "r.json"
    assert accuracy.main(["--modality", "face", "--root", *roots, "--layout", "folders",
                          "--json", str(out), "--no-progress"]) == 0
    r = json.loads(out.read_text())
    assert KEYS <= set(r) and set(r["sets"]) == {"a", "b"}
    assert r["sets"]["a"]["genuine_pairs"] == 15 and r["sets"]["b"]["genuine_pairs"] == 18
    assert r["genuine_pairs"] == 33 and r["impostor_pairs"] == (15 * 14 // 2 - 15) + (18 * 17 // 2 - 18)
    spread = r["threshold_spread"]["0.01"]  # 225 impostor pairs pooled: FMR 1e-2 is measurable
    assert set(spread) == {"a", "b", "pooled"} and spread["pooled"] == r["thresholds_at_fmr"]["0.01"]
    assert r["rank1_probes"] == r["sets"]["a"]["rank1_probes"] + r["sets"]["b"]["rank1_probes"]
