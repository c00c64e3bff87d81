"""Finger 1:N at scale: ``python -m bench.search --modality finger --gallery N [N ...] --json OUT``.

Probes and mates are real: the fingers of the odd-numbered FCJ persons
(``fcj2020_dev``, without the known mislabelled impressions) are enrolled by their first
impression and searched with each of the others. The rest of the gallery is synthetic
but built from real minutiae: each filler finger splices two real fingers from a pool
that shares no finger with the probes (the other FCJ fingers and every FVC set but
FVC2000 DB2_B, which holds DB1_B's fingers) along a random line through their centres,
then turns, shifts, jitters and thins the result. The JSON records how the fillers score against the
probes beside real impostors, so one can see that they are realistic impostors.

For each gallery size and index kind (``flat``: exact; ``ivf``: inverted lists,
``nprobe`` visited per probe minutia) it reports the service's own
:class:`matcher.finger.index.FingerIndex` build time, memory per finger (index codes
and side arrays; the cylinders MCC keeps per finger are reported apart), shortlist
latency on one thread (p50/p99), the mate's rank among the votes (first, top 10, top
100, within the shortlist of max(100, 0.1%) of the gallery that the service re-ranks),
and on the first ``rerank_probes`` probes the MCC re-rank time of the top ``rerank``
and whether the mate is first after it. Minutiae of the real images are cached
under ``--cache`` (derived minutiae only; never images).
"""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import numpy as np

from matcher.finger import mcc
from matcher.finger.index import FingerIndex
from matcher.finger.template import MinutiaeTemplate

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fingerprint"
NOISE = Path(__file__).resolve().parent / "data" / "fingerprint_label_noise.txt"
POOL_SETS = ("fcj2020_dev", "fvc2000_db1_b", "fvc2000_db3_b", "fvc2000_db4_b", "fvc2002_db1_b")
MODEL = "finger/leader-mcc-v1"


def real_minutiae(root: Path, cache: Path) -> dict[str, list[np.ndarray]]:
    """Minutiae of every impression under ``root`` (one folder per finger), cached."""
    from bench.accuracy import load_exclusions, load_folders
    from enroll.finger.pipeline import FingerExtractor

    path = cache / f"{root.name}.{MODEL.replace('/', '_')}.npz"
    if not path.exists():
        pairs = load_folders(root, "all", load_exclusions(NOISE))
        extractor = FingerExtractor()
        found = {}
        for image, finger in zip(pairs.images, pairs.identity):
            try:
                found[f"{finger}/{image.name}"] = extractor.extract(image.read_bytes()).minutiae
            except Exception:  # noqa: BLE001 - failures to enrol are simply not in the pool
                continue
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(path, **found)
    out: dict[str, list[np.ndarray]] = {}
    with np.load(path) as z:
        for key in sorted(z.files):
            out.setdefault(f"{root.name}/{key.split('/')[0]}", []).append(z[key])
    return out


def splice(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A new finger from two real ones: ``a`` on one side of a line, ``b`` on the other."""
    a = a - np.r_[a[:, :2].mean(0), 0, 0, 0]
    b = b - np.r_[b[:, :2].mean(0), 0, 0, 0]
    normal = rng.normal(size=2)
    cut = rng.normal(scale=20.0)
    m = np.concatenate([a[a[:, :2] @ normal >= cut], b[b[:, :2] @ normal < cut]])
    turn = rng.uniform(-np.pi, np.pi)
    c, s = np.cos(turn), np.sin(turn)
    xy = m[:, :2] @ np.array([[c, s], [-s, c]]) + rng.uniform(150, 250, size=2)
    xy += rng.normal(scale=2.0, size=xy.shape)
    # y is down on images: turning the picture by `turn` turns directions by -turn.
    angle = (m[:, 2] - turn + rng.normal(scale=0.08, size=len(m)) + np.pi) % (2 * np.pi) - np.pi
    out = np.column_stack([xy, angle, m[:, 3:]]).astype(np.float32)
    return out[rng.random(len(out)) >= 0.15]


def fillers(pool: list[np.ndarray], owners: list[str], n: int, rng: np.random.Generator,
            frame: tuple[int, int] | None = None) -> list[np.ndarray]:
    """``n`` synthetic fingers, each spliced from two different real fingers of ``pool``
    (``owners`` names each impression's finger); ``frame`` (width, height): only the
    minutiae a sensor of that size would see are kept."""
    out = []
    while len(out) < n:
        i, j = rng.integers(len(pool), size=2)
        if owners[i] == owners[j]:
            continue
        m = splice(pool[i], pool[j], rng)
        if frame is not None:
            m = m[(m[:, 0] >= 0) & (m[:, 0] < frame[0]) & (m[:, 1] >= 0) & (m[:, 1] < frame[1])]
        if len(m) >= 8:
            out.append(m)
    return out


def real_fingers(cache: Path) -> tuple[dict[str, list[np.ndarray]], list[str], list[np.ndarray], list[str]]:
    """The real fingers the benchmarks use: FCJ's impressions by finger, the mated fingers
    (the odd-numbered persons' fingers with two or more impressions: the first enrolled,
    the others probed), and the filler pool (every impression of every other finger of
    the pool sets) with each impression's finger."""
    sets = {name: real_minutiae(DATA / name, cache) for name in POOL_SETS}
    fcj = sets["fcj2020_dev"]
    mated = [f for f in fcj if int(f.split("/")[1].split("_")[0]) % 2 == 1 and len(fcj[f]) >= 2]
    pool, owners = [], []
    for fingers in sets.values():
        for f, impressions in fingers.items():
            if f not in mated:
                pool += impressions
                owners += [f] * len(impressions)
    return fcj, mated, pool, owners


def _codes(batch: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    got = [mcc.index_codes(mcc.index_subset(m)) for m in batch]
    return (np.concatenate([c for c, _, _ in got]), np.concatenate([t for _, t, _ in got]).astype(np.float32),
            np.concatenate([xy for _, _, xy in got]).astype(np.float32), np.array([len(c) for c, _, _ in got], np.int64))


def filler_codes(pool: list[np.ndarray], owners: list[str], n: int, cache: Path, seed: int = 7):
    """Index codes of ``n`` synthetic fingers (cached); their minutiae come back too."""
    fingers = fillers(pool, owners, n, np.random.default_rng(seed))
    path = cache / f"fillers-{n}-{seed}-{mcc.derived_version()}.npz"  # codes made by today's parameters only
    if path.exists():
        with np.load(path) as z:
            return fingers, z["codes"], z["theta"], z["xy"], z["counts"]
    chunks = [fingers[k:k + 2000] for k in range(0, n, 2000)]
    with multiprocessing.Pool() as workers:
        parts = workers.map(_codes, chunks)
    codes, theta, xy, counts = (np.concatenate(p) for p in zip(*parts))
    np.savez(path, codes=codes, theta=theta, xy=xy, counts=counts)
    return fingers, codes, theta, xy, counts


def _template(m: np.ndarray) -> MinutiaeTemplate:
    return MinutiaeTemplate(MODEL, m.astype(np.float32), 500, 500)


def run(sizes: list[int], kinds: list[str], nprobes: list[int], queries: int, cache: Path,
        flat_max: int = 200_000, rerank: int = 100, rerank_probes: int = 60) -> dict:
    fcj, probe_fingers, pool, owners = real_fingers(cache)
    mates = [_template(fcj[f][0]) for f in probe_fingers]
    probes, mate_of = [], []
    for i, f in enumerate(probe_fingers):
        for m in fcj[f][1:]:
            probes.append(_template(m))
            mate_of.append(f"M{i}")
    probes, mate_of = probes[:queries], mate_of[:queries]
    result: dict = {"probes": len(probes), "mated_fingers": len(mates), "pool_fingers": len(set(owners)),
                    "pool_impressions": len(pool), "rerank": rerank, "rerank_probes": min(rerank_probes, len(probes)),
                    "runs": []}
    fingers, codes, theta, xy, counts = filler_codes(pool, owners, max(sizes) - len(mates), cache)

    # Are the fillers realistic impostors? Their MCC against the probes beside real impostors.
    rng = np.random.default_rng(3)
    real = [mcc.similarity(p.cylinders, mcc.encode(pool[i])) for p in probes[:60] for i in rng.choice(len(pool), 30)]
    fake = [mcc.similarity(p.cylinders, mcc.encode(fingers[i]))
            for p in probes[:60] for i in rng.choice(len(fingers), 30)]
    q = [0.5, 0.9, 0.99, 0.999]
    result["impostor_mcc_quantiles"] = {"levels": q, "real_pool": np.quantile(real, q).tolist(),
                                        "synthetic_fillers": np.quantile(fake, q).tolist()}
    result["minutiae_per_finger"] = {"real": float(np.mean([len(m) for m in pool])),
                                     "synthetic": float(np.mean([len(m) for m in fingers]))}
    mate_codes = [m.index_codes for m in mates]
    starts = np.concatenate([[0], np.cumsum(counts)])
    cylinders: dict[str, mcc.Cylinders] = {f"M{i}": m.cylinders for i, m in enumerate(mates)}
    for n in sizes:
        k_fill = n - len(mates)
        end = starts[k_fill]
        names = [f"M{i}" for i in range(len(mates))] + [f"F{i}" for i in range(k_fill)]
        all_codes = np.concatenate([c for c, _, _ in mate_codes] + [codes[:end]])
        all_theta = np.concatenate([t.astype(np.float32) for _, t, _ in mate_codes] + [theta[:end]])
        all_xy = np.concatenate([p.astype(np.float32) for _, _, p in mate_codes] + [xy[:end]])
        all_counts = np.concatenate([[len(c) for c, _, _ in mate_codes], counts[:k_fill]])
        shortlist_n = max(100, n // 1000)
        for kind in kinds:
            if kind == "flat" and n > flat_max:
                continue
            for nprobe in nprobes if kind == "ivf" else [0]:
                index = FingerIndex(ivf_min_codes=0 if kind == "ivf" else 10**12, nprobe=max(nprobe, 1))
                t0 = time.perf_counter()
                index.add_many("p", 1, names, all_codes, all_theta, all_xy, all_counts)
                build_s = time.perf_counter() - t0
                lat, vote_rank, rerank_ms, first = [], [], [], []
                for p, mate in zip(probes, mate_of):
                    t0 = time.perf_counter()
                    got = index.shortlist("p", 1, p, shortlist_n)
                    lat.append((time.perf_counter() - t0) * 1000)
                    vote_rank.append(got.index(mate) if mate in got else shortlist_n)
                    if len(vote_rank) <= rerank_probes:
                        for s in got[:rerank]:
                            if s not in cylinders:
                                cylinders[s] = mcc.encode(fingers[int(s[1:])])
                        t0 = time.perf_counter()
                        sims = [mcc.similarity(p.cylinders, cylinders[s]) for s in got[:rerank]]
                        rerank_ms.append((time.perf_counter() - t0) * 1000)
                        first.append(bool(sims) and got[int(np.argmax(sims))] == mate)
                vote_rank = np.array(vote_rank)
                row = {"gallery": n, "index": kind, "build_s": build_s,
                       "index_bytes_per_finger": _index_bytes(index) / n,
                       "shortlist": shortlist_n,
                       "shortlist_ms_p50": float(np.percentile(lat, 50)),
                       "shortlist_ms_p99": float(np.percentile(lat, 99)),
                       "mate_vote_rank1": float(np.mean(vote_rank == 0)),
                       "mate_in_top10": float(np.mean(vote_rank < 10)),
                       "mate_in_top100": float(np.mean(vote_rank < 100)),
                       "mate_in_shortlist": float(np.mean(vote_rank < shortlist_n)),
                       "rerank_ms_p50": float(np.median(rerank_ms)),
                       "mate_rank1_after_rerank": float(np.mean(first)),
                       **({"nprobe": nprobe} if kind == "ivf" else {})}
                result["runs"].append(row)
                print(json.dumps(row), flush=True)
                del index
    result["cylinder_bytes_per_finger"] = float(np.mean(
        [m.cylinders.bits.nbytes + m.cylinders.valid.nbytes for m in mates]))
    return result


def _index_bytes(index: FingerIndex) -> int:
    """Codes and side arrays of every shelf (FAISS holds 64 bytes a code, plus list ids for IVF)."""
    total = 0
    for shelf in index._shelves.values():
        per_code = 64 + (8 if shelf.trained_at else 0) + 4 + 4  # code, IVF id, owner, angle
        total += shelf.rows * per_code
    return total
