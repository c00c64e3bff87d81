"""1:N search benchmark on synthetic galleries: ``python -m bench.search --modality face --gallery N --json OUT``.

Fingers and irises (``--modality finger|iris``) are benchmarked by :mod:`bench.finger_search`
and :mod:`bench.iris_search`; faces below.

Galleries are drawn from a Gaussian fitted to real embeddings (mean and covariance
of the model's LFW dev embeddings, stored as aggregate statistics in
``bench/data/<model>.stats.npz``; ``--fit-root`` refits them). Probes are gallery
members moved by ``--mate-distance`` in a random direction, like a second capture of an
enrolled person (0.40 is about the median genuine distance on LFW).

For each gallery size and index it reports build time, memory per template,
single-query latency on one thread (p50/p99), batched throughput on all cores,
recall@10 against the exact flat scan, and for the flat scan the bandwidth it reaches
compared with this machine's measured memory bandwidth.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import faiss
import numpy as np

from matcher import memory

STATS_DIR = Path(__file__).resolve().parent / "data"
K = 10


def fit_stats(modality: str, root: Path, layout: str, out: Path) -> None:
    """Fit mean and covariance of real embeddings (aggregate statistics only)."""
    from bench.accuracy import MODALITIES, extract_all, load_folders, load_lfw_pairs

    pairs = load_lfw_pairs(root) if layout == "lfw-pairs" else load_folders(root)
    vecs, ok, _, _ = extract_all(MODALITIES[modality], pairs.images, progress=False)
    v = vecs[ok].astype(np.float64)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, mean=v.mean(0), cov=np.cov(v, rowvar=False), count=len(v))


def draw(stats_path: Path, n: int, seed: int) -> np.ndarray:
    with np.load(stats_path) as z:
        mean, cov = z["mean"], z["cov"]
    rng = np.random.default_rng(seed)
    chol = np.linalg.cholesky(cov + 1e-9 * np.eye(len(mean)))
    out = np.empty((n, len(mean)), np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        out[start : start + m] = mean + rng.standard_normal((m, len(mean))) @ chol.T
    return out


def memory_bandwidth_gbs() -> float:
    """Single-thread read bandwidth: summing a 512 MiB array (best of 3)."""
    a = np.ones(128 * 1024 * 1024, np.float32)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t0)
    return a.nbytes / best / 1e9


def _index_bytes(index) -> int:
    return int(faiss.serialize_index(index).size)


def _make(kind: str, xb: np.ndarray, nprobe: int = 32):
    d = xb.shape[1]
    n = len(xb)
    if kind == "flat":
        index = faiss.IndexFlatL2(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, 32)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 64
    elif kind == "ivf":
        nlist = int(4 * np.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
        index.train(xb[np.random.default_rng(0).choice(n, min(n, 64 * nlist), replace=False)])
        index.nprobe = nprobe
    else:
        raise ValueError(kind)
    index.add(xb)
    return index


def bench_one(
    kind: str, xb: np.ndarray, xq: np.ndarray, mates: np.ndarray, exact: np.ndarray | None, threads: int,
    nprobe: int = 32,
) -> tuple[dict, np.ndarray]:
    faiss.omp_set_num_threads(threads)
    t0 = time.perf_counter()
    index = _make(kind, xb, nprobe)
    build_s = time.perf_counter() - t0
    faiss.omp_set_num_threads(1)
    lat = []
    found = []
    for q in xq:
        t0 = time.perf_counter()
        _, ids = index.search(q[None], K)
        lat.append((time.perf_counter() - t0) * 1000)
        found.append(ids[0])
    faiss.omp_set_num_threads(threads)
    t0 = time.perf_counter()
    index.search(xq, K)
    batch_s = time.perf_counter() - t0
    found = np.array(found)
    recall = 1.0 if exact is None else float(np.mean([len(set(f) & set(e)) / K for f, e in zip(found, exact)]))
    return {
        "index": kind,
        "build_s": build_s,
        "bytes_per_template": _index_bytes(index) / len(xb),
        "single_query_ms_p50": float(np.percentile(lat, 50)),
        "single_query_ms_p99": float(np.percentile(lat, 99)),
        "batch_queries": len(xq),
        "batch_qps": len(xq) / batch_s,
        "recall_at_10": recall,
        "mate_rank1": float(np.mean(found[:, 0] == mates)),
        **({"nprobe": nprobe} if kind == "ivf" else {}),
    }, found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="FAISS 1:N search benchmark on synthetic galleries.")
    p.add_argument("--modality", default="face", choices=["face", "finger", "iris"])
    p.add_argument("--gallery", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--indexes", nargs="+", default=["flat", "ivf", "hnsw"], help="flat first: it is the oracle")
    p.add_argument("--hnsw-max", type=int, default=100_000, help="skip HNSW above this size (slow build)")
    p.add_argument("--nprobe", type=int, nargs="+", default=[32], help="IVF lists visited per query")
    p.add_argument("--mate-distance", type=float, default=0.40,
                   help="distance of a probe from its enrolled mate (LFW genuine median is about 0.40)")
    p.add_argument("--fit-root", type=Path, help="refit the embedding statistics from this image set")
    p.add_argument("--fit-layout", default="lfw-pairs", choices=["folders", "lfw-pairs"])
    p.add_argument("--cache", "--finger-cache", dest="finger_cache", type=Path, default=Path(".bench-cache"),
                   help="finger, iris: where what is derived from the real images is cached")
    p.add_argument("--json", required=True, type=Path)
    args = p.parse_args(argv)
    if args.modality == "iris":
        from bench.iris_search import run as run_iris

        result = {"modality": "iris", **run_iris(args.gallery, args.queries, args.finger_cache)}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        return 0
    if args.modality == "finger":
        from bench.finger_search import run

        kinds = [k for k in args.indexes if k != "hnsw"]
        result = {"modality": "finger", **run(args.gallery, kinds, args.nprobe, args.queries, args.finger_cache)}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        return 0
    stats = STATS_DIR / f"{args.modality}.stats.npz"
    if args.fit_root:
        fit_stats(args.modality, args.fit_root, args.fit_layout, stats)
    threads = os.cpu_count() or 1
    result = {"modality": args.modality, "threads_batch": threads, "k": K, "mate_distance": args.mate_distance,
              "memory_bandwidth_gbs_1thread": memory_bandwidth_gbs(), "runs": [],
              # as the service runs (tambua serve restarts itself with them): see matcher.memory
              "huge_pages": memory.asked(), "huge_page_system_setting": memory.system_setting()}
    for n in args.gallery:
        xb = draw(stats, n, seed=1)
        rng = np.random.default_rng(2)
        mates = rng.choice(n, args.queries, replace=False)
        noise = rng.standard_normal((args.queries, xb.shape[1]))
        noise *= args.mate_distance / np.linalg.norm(noise, axis=1, keepdims=True)
        xq = (xb[mates] + noise).astype(np.float32)
        exact = None
        for kind in args.indexes:
            if kind == "hnsw" and n > args.hnsw_max:
                continue
            for nprobe in args.nprobe if kind == "ivf" else [0]:
                row, found = bench_one(kind, xb, xq, mates, exact if kind != "flat" else None, threads, nprobe)
                if kind == "flat":
                    exact = found
                    scanned = n * xb.shape[1] * 4 / 1e9
                    row["flat_scan_gbs"] = scanned / (row["single_query_ms_p50"] / 1000)
                    row["fraction_of_bandwidth"] = row["flat_scan_gbs"] / result["memory_bandwidth_gbs_1thread"]
                row["gallery"] = n
                result["runs"].append(row)
                print(json.dumps(row), flush=True)
        del xb
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    memory.restart_with_huge_pages()  # measure the search as the service runs it
    raise SystemExit(main())
