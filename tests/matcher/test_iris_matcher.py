"""The iris matcher on real CASIA-IrisV1 codes: exhaustive kernel and FAISS sketch first
pass agree, removal and re-enrolment, eyes kept apart."""

from __future__ import annotations

import pytest

from matcher.calibration import Calibration
from matcher.iris.matcher import IrisMatcher


@pytest.fixture(scope="module")
def codes(iris_extractor, irises):
    eyes = sorted(p for p in (irises / "casia_v1").iterdir() if p.is_dir())[:30]
    enrol = {e.name: iris_extractor.extract(sorted(e.iterdir())[0].read_bytes()) for e in eyes}
    probe = {e.name: iris_extractor.extract(sorted(e.iterdir())[5].read_bytes()) for e in eyes}
    return enrol, probe


@pytest.mark.parametrize("exhaustive_limit,shortlist,refine",
                         [(10**6, 5, 1000), (0, 5, 1000), (0, 10, 2), (0, 1000, 2)],
                         ids=["exhaustive", "sketch-first-pass", "sketch-then-alternates-on-the-nearest",
                              "every-row-windowed"])
def test_mates_first_removal_and_eyes(codes, exhaustive_limit, shortlist, refine):
    enrol, probe = codes
    assert all(len(t.alternates) == 2 for t in probe.values())  # probes from images: two radial alternates
    m = IrisMatcher("iris/gabor-v2", Calibration.load("iris/gabor-v2"), exhaustive_limit=exhaustive_limit,
                    shortlist=shortlist, refine=refine)
    for eye, t in enrol.items():
        m.add("p", eye, 1, t)
    found = {eye: m.search("p", 1, t, 3) for eye, t in probe.items()}
    assert all(len(hits) == 3 for hits in found.values())  # k candidates, however long the shortlist
    firsts = {eye: hits[0] for eye, hits in found.items()}
    assert sum(sid == eye for eye, (sid, _) in firsts.items()) >= 29
    assert all(fmr < 1e-4 for eye, (sid, fmr) in firsts.items() if sid == eye)
    some = next(iter(enrol))
    assert m.search("p", 2, probe[some], 3) == []  # the other eye: nothing enrolled there
    assert m.search("p", 0, probe[some], 1)[0][0] == some  # unknown eye searches both
    m.remove("p", some)
    assert all(s != some for s, _ in m.search("p", 1, probe[some], 30))
    other = sorted(enrol)[1]
    m.add("p", other, 1, enrol[some])  # re-enrolling an eye replaces it
    assert m.search("p", 1, probe[some], 1)[0][0] == other
    assert m.size("p") == 29
    assert m.fmr_against("p", other, 1, probe[some]) < 1e-4


def test_compaction_keeps_the_living(codes):
    enrol, probe = codes
    m = IrisMatcher("iris/gabor-v2", Calibration.load("iris/gabor-v2"), exhaustive_limit=0, shortlist=5)
    for eye, t in enrol.items():
        m.add("p", eye, 1, t)
    gone = sorted(enrol)[:15]  # half the rows removed: the arrays and sketch index get rebuilt
    for eye in gone:
        m.remove("p", eye)
    shelf = m._codes["p"]
    assert shelf.rows < 30 and shelf.rows - shelf.dead == 15  # compacted once a third was dead
    kept = [eye for eye in enrol if eye not in gone]
    assert sum(m.search("p", 1, probe[eye], 1)[0][0] == eye for eye in kept) >= 14
    assert all(m.search("p", 1, probe[eye], 1)[0][0] not in gone for eye in gone)


def test_sketch_shortlist_keeps_whole_tie_runs():
    import numpy as np

    from matcher.iris.matcher import _nearest_with_ties

    dist = np.array([5, 1, 3, 3, 3, 9, 3, 2])
    assert _nearest_with_ties(dist, 3, 1.0).tolist() == [1, 2, 3, 4, 6, 7]  # all four 3s, not one of them
    assert _nearest_with_ties(dist, 3, 0.34).tolist() == [1, 2, 3, 7]  # room for 4 rows: ties cut in storage order
    assert _nearest_with_ties(dist, 8, 1.0) is None


def test_exact_pass_follows_the_rotation_the_sketch_chose(codes):
    """A probe turned by 6 code columns: the sketch pass's best rotation centres the exact
    window, so the windowed distance of its mate equals the exhaustive one."""
    import numpy as np

    from matcher.iris.template import IrisTemplate

    enrol, probe = codes
    eye = sorted(enrol)[3]

    def turned(code, mask):
        return np.roll(code, -6, axis=2), np.roll(mask, -6, axis=2)

    p = probe[eye]
    tilted = IrisTemplate(p.model_id, *turned(p.code, p.mask), alternates=tuple(turned(c, m) for c, m in p.alternates))
    cal = Calibration.load("iris/gabor-v2")
    exhaustive, windowed = IrisMatcher("iris/gabor-v2", cal), IrisMatcher("iris/gabor-v2", cal, 0, shortlist=10, refine=1)
    for name, t in enrol.items():
        exhaustive.add("p", name, 1, t)
        windowed.add("p", name, 1, t)
    want = exhaustive.search("p", 1, tilted, 1)
    assert want[0][0] == eye and want[0][1] < 1e-4
    assert windowed.search("p", 1, tilted, 1) == want


def test_window_kernel_agrees_with_the_exhaustive_kernel(codes):
    import numpy as np

    from matcher.iris import template as iris
    from matcher.iris._kernel import best_distances, window_distances

    enrol, probe = codes
    gc = np.stack([t.packed[0] for t in enrol.values()])
    gm = np.stack([t.packed[1] for t in enrol.values()])
    pc, pm = next(iter(probe.values())).rotations
    args = float(iris.N0), int(iris.MIN_BITS)
    full = np.empty(len(gc))
    best_distances(pc, pm, gc, gm, *args, full)
    rows = np.array([4, 0, 17], np.int64)
    every = np.empty(3)
    window_distances(pc, pm, gc, gm, rows, np.zeros(3, np.int8), len(pc), *args, every)
    assert every.tolist() == full[rows].tolist()  # a window wider than the rotations: all of them
    one = np.empty(3)
    window_distances(pc, pm, gc, gm, rows, np.array([8, 8, 8], np.int8), 0, *args, one)
    alone = np.empty(len(gc))
    best_distances(pc[8:9], pm[8:9], gc, gm, *args, alone)
    assert one.tolist() == alone[rows].tolist()  # reach 0: the centre rotation only


def test_a_shard_takes_its_share_of_the_limit_and_budgets(codes):
    """A quarter of a partition's irises on a shard: it takes the sketch path where one
    server would over the whole (limit 40 for 4x its 30 rows, so 10 for it), keeps a quarter
    of the shortlist and of the alternates' budget, and still ranks its mates first."""
    enrol, probe = codes
    cal = Calibration.load("iris/gabor-v2")
    m = IrisMatcher("iris/gabor-v2", cal, exhaustive_limit=40, shortlist=20, refine=8, share=0.25)
    assert (m.exhaustive_limit, m.shortlist, m.refine) == (10, 5, 2)
    for eye, t in enrol.items():
        m.add("p", eye, 1, t)
    assert sum(m.search("p", 1, t, 1)[0][0] == eye for eye, t in probe.items()) >= 29
    with pytest.raises(ValueError):
        IrisMatcher("iris/gabor-v2", cal, share=1.5)
