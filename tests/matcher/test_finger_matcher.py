"""The fingerprint matcher on real FVC2002 impressions: exhaustive MCC and the FAISS-index shortlist."""

from __future__ import annotations

import pytest

from matcher.calibration import Calibration
from matcher.finger.index import FingerIndex
from matcher.finger.matcher import MinutiaeMatcher


@pytest.fixture(scope="module")
def impressions(finger_extractor, fingerprints):
    root = fingerprints / "fvc2002_db1_b"
    return {(f, i): finger_extractor.extract((root / str(f) / f"{f}_{i}.tif").read_bytes())
            for f in range(101, 111) for i in (1, 2)}


@pytest.mark.parametrize("exhaustive_limit", [1000, 3], ids=["exhaustive", "index-shortlist"])
def test_mates_rank_first_and_delete_removes(impressions, exhaustive_limit):
    cal = Calibration.load("finger/leader-mcc-v1")
    m = MinutiaeMatcher("finger/leader-mcc-v1", cal, exhaustive_limit=exhaustive_limit, shortlist=3)
    for f in range(101, 111):
        m.add("p", f"S{f}", 1, impressions[(f, 1)])
    firsts = [m.search("p", 1, impressions[(f, 2)], 3)[0] for f in range(101, 111)]
    assert sum(sid == f"S{f}" for (sid, _), f in zip(firsts, range(101, 111))) >= 9
    assert all(fmr < 1e-3 for sid, fmr in firsts)
    assert m.search("p", 2, impressions[(101, 2)], 3) == []  # another finger position: nothing to compare
    assert m.search("p", 0, impressions[(101, 2)], 1)[0][0] == "S101"  # unknown position searches all
    within = m.search("p", 1, impressions[(101, 2)], 3, within=frozenset({"S102", "S103"}))
    assert {s for s, _ in within} <= {"S102", "S103"}
    m.remove("p", "S101")
    assert all(s != "S101" for s, _ in m.search("p", 1, impressions[(101, 2)], 10))
    assert m.size("p") == 9


@pytest.mark.parametrize("ivf_min_codes", [10**9, 100], ids=["flat", "ivf"])
def test_index_shortlist_survives_removal_compaction_and_ivf(impressions, ivf_min_codes):
    index = FingerIndex(ivf_min_codes=ivf_min_codes, nprobe=64)
    for f in range(101, 111):
        index.add("p", f"S{f}", 1, impressions[(f, 1)])
    assert index.kind("p", 1) == ("ivf" if ivf_min_codes == 100 else "flat")
    hits = [index.shortlist("p", 1, impressions[(f, 2)], 3)[0] == f"S{f}" for f in range(101, 111)]
    assert sum(hits) >= 9
    for f in range(101, 106):  # half the shelf dead: compacted
        index.remove("p", f"S{f}")
    assert index.fingers("p", 1) == 5
    for f in range(101, 111):
        listed = index.shortlist("p", 1, impressions[(f, 2)], 10)
        assert (f"S{f}" in listed) == (f >= 106)
    assert all(s in {"S108", "S109"} for s in index.shortlist("p", 1, impressions[(107, 2)], 10,
                                                             within=frozenset({"S108", "S109", "S101"})))
    index.add("p", "S107", 1, impressions[(101, 1)])  # re-enrolment replaces the finger
    assert index.shortlist("p", 1, impressions[(101, 2)], 1) == ["S107"]
    assert index.fingers("p", 1) == 5


def test_pose_votes_reward_one_consistent_placement():
    """A mate's votes agree on one turn and shift; chance neighbours scatter. Equal votes:
    the finger whose votes agree wins, a pose on a cell edge still collects all of its
    votes (the offset grids), and a probe minutia counts once per cell, however many
    neighbours it found there."""
    import numpy as np

    from matcher.finger.index import POSE_SHIFT, pose_votes

    rng = np.random.default_rng(5)
    k = 20
    probe_xy = rng.uniform(0, 300, (k, 2))
    turn = np.full(k, 0.3)
    c, s = np.cos(0.3), np.sin(0.3)
    shift = np.array([3 * POSE_SHIFT, -2 * POSE_SHIFT])  # exactly on a cell edge
    mate_xy = probe_xy @ np.array([[c, s], [-s, c]]) + shift + rng.normal(0, 2, (k, 2))
    chance_xy = rng.uniform(-400, 700, (k, 2))
    chance_turn = rng.uniform(-np.pi / 4, np.pi / 4, k)
    q = np.concatenate([np.arange(k), np.arange(k), np.zeros(k, int)])
    owner = np.concatenate([np.zeros(k, int), np.ones(k, int), np.full(k, 2)])
    votes = np.ones(3 * k)
    turns = np.concatenate([turn, chance_turn, turn])
    enrolled = np.concatenate([mate_xy, chance_xy, np.repeat(mate_xy[:1], k, axis=0)])
    probes = np.concatenate([probe_xy, probe_xy, np.repeat(probe_xy[:1], k, axis=0)])
    score = pose_votes(q, owner, votes, turns, probes, enrolled, 3)
    assert score[0] >= 0.9 * k  # nearly every mate vote in one cell despite the edge and the noise
    assert score[1] <= 3  # scattered
    assert score[2] == 1  # one probe minutia, twenty neighbours in one cell: one vote


def test_shards_take_their_share_of_the_budget_and_still_rank_mates_first(impressions, monkeypatch):
    """Two halves of a gallery, each matcher with share 1/2, compare as many fingers by MCC
    as one matcher over the whole (each taking the whole budget would double it), decide
    exhaustive against indexed as that one does, and their merged answers rank mates first."""
    from cluster.layout import Layout
    from matcher.finger import mcc

    cal = Calibration.load("finger/leader-mcc-v1")
    layout = Layout.even(2)
    whole = MinutiaeMatcher("finger/leader-mcc-v1", cal, exhaustive_limit=6, shortlist=6)
    halves = [MinutiaeMatcher("finger/leader-mcc-v1", cal, exhaustive_limit=6, shortlist=6,
                              share=layout.share(i)) for i in range(2)]
    for f in range(101, 111):
        whole.add("p", f"S{f}", 1, impressions[(f, 1)])
        halves[layout.shard_of("p", f"S{f}")].add("p", f"S{f}", 1, impressions[(f, 1)])
    assert sorted(h.size("p") for h in halves) != [0, 10]  # both halves hold subjects
    compared = []
    similarity = mcc.similarity
    monkeypatch.setattr(mcc, "similarity", lambda a, b: compared.append(1) or similarity(a, b))
    firsts = 0
    for f in range(101, 111):
        probe = impressions[(f, 2)]
        compared.clear()
        one = whole.ranked("p", 1, probe, 3)
        alone = len(compared)
        compared.clear()
        merged = sorted((hit for h in halves for hit in h.ranked("p", 1, probe, 3)), key=lambda h: (h[2], h[0]))[:3]
        # One server: 10 fingers are above its limit of 6, so 6 are shortlisted and compared;
        # a half: its ~5 are above its limit of 3, so 3 are (or all, where it holds 3 or fewer).
        assert alone <= 6 and len(compared) <= sum(min(h.size("p"), 3) for h in halves) <= 6
        firsts += merged[0][0] == f"S{f}"
        assert merged[0][0] == one[0][0]
    assert firsts >= 9
    with pytest.raises(ValueError):
        MinutiaeMatcher("finger/leader-mcc-v1", cal, share=0)


def test_the_registry_gives_one_server_the_whole_budget_and_a_shard_its_share():
    """What servers and shards are built with (``default_matcher``): the whole partition's
    limits on one server, a quarter of each on a quarter shard (the share once reached the
    finger matcher as its exhaustive limit)."""
    from matcher.engine import default_matcher

    whole, quarter = default_matcher("finger", "finger/leader-mcc-v1"), default_matcher("finger", "finger/leader-mcc-v1", 0.25)
    assert (whole.exhaustive_limit, whole.shortlist, whole.index.ivf_min_codes) == (500, 100, 1_000_000)
    assert (quarter.exhaustive_limit, quarter.shortlist, quarter.index.ivf_min_codes) == (125, 25, 250_000)
    assert (quarter.index.neighbours, quarter.index.nprobe) == (64, 8)
    iris, iris_quarter = default_matcher("iris", "iris/gabor-v2"), default_matcher("iris", "iris/gabor-v2", share=0.25)
    assert (iris.exhaustive_limit, iris.shortlist, iris.refine) == (20_000, 50_000, 1_000)
    assert (iris_quarter.exhaustive_limit, iris_quarter.shortlist, iris_quarter.refine) == (5_000, 12_500, 250)
