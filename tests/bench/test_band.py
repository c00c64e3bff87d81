"""The band tool end to end on small real subsets of each modality, checking its JSON
contract and what must hold whatever the data: mated shares add up, and a non-mated
chimeric comparison is never a clear match."""

import json

from bench import band


def _subset(src, dst, folders, files):
    for f in folders:
        (dst / f).mkdir(parents=True)
        for p in sorted((src / f).iterdir())[:files]:
            (dst / f / p.name).symlink_to(p)
    return dst


def test_band_on_small_subsets(orl, fingerprints, irises, tmp_path, models):
    face = _subset(orl, tmp_path / "orl", ["s1", "s2", "s3", "s4"], 3)
    eyes = _subset(irises / "casia_v1", tmp_path / "casia", ["001", "002", "003"], 3)
    prints = _subset(fingerprints / "fvc2002_db1_b", tmp_path / "fvc", ["101", "102", "103"], 3)
    out, plot = tmp_path / "band.json", tmp_path / "band.png"
    assert band.main(["--face", str(face), "--iris", str(eyes), "--finger", str(prints), "--draws", "300",
                      "--json", str(out), "--plot", str(plot), "--no-progress"]) == 0
    r = json.loads(out.read_text())
    assert r["policy"] == {"clear_match_fpir": 1e-6, "dedup_fpir": 1e-2}
    assert set(r["modalities"]) == {"face", "iris", "fingerprint"}
    assert r["modalities"]["face"]["genuine_pairs"] == 4 * 3 and r["modalities"]["face"]["honesty"]
    for combo, by_size in r["combinations"].items():
        for size, row in by_size.items():
            assert abs(sum(row["mated"].values()) - 1) < 1e-9
            assert row["nonmated"]["clear"] == 0, (combo, size)
    # One face is never beyond doubt; ten agreeing fingers mostly are.
    assert all(row["mated"]["clear"] == 0 for row in r["combinations"]["face"].values())
    assert r["combinations"]["10 fingers"]["10000"]["mated"]["clear"] > 0.5
    assert plot.stat().st_size > 1000
