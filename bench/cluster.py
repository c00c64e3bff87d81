"""Cluster overhead and memory against one server, in one run:
``python -m bench.cluster --faces 100000 --shards 1 2 4 --json OUT --plot PNG``.

For each shard count a local Ray cluster of ``--nodes`` nodes on loopback (``ray start``,
stopped by PID) and a ``tambua serve --cluster`` front-end load the same store of synthetic
face templates (drawn like ``bench.search``'s); one server in this process loads it too.
Identify goes over gRPC with template probes (mates 0.02 from their enrolled template):
p50/p99 latency one query at a time, queries per second with ``--concurrency`` callers,
and the cluster's resident memory per shard copy and per node (``tambua cluster status``).
On one 2-core machine the curve shows the cluster's overhead, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np

from bench.ray_local import RayCluster
from bench.search import STATS_DIR, draw
from matcher.face.template import EmbeddingTemplate
from matcher.types import StoredTemplate, Subject
from store.sqlite import SubjectStore

MODEL = "face/dlib-resnet-v1"
REPO = Path(__file__).resolve().parent.parent


def build_store(folder: Path, n: int) -> np.ndarray:
    """A store of ``n`` face subjects in ``folder``; returns their vectors."""
    xb = draw(STATS_DIR / "face.stats.npz", n, seed=1)
    store = SubjectStore(folder / "subjects.sqlite")
    for start in range(0, n, 10_000):
        store.add_many([Subject(f"S{i}", "default", (StoredTemplate("face", 0, EmbeddingTemplate(MODEL, xb[i])),))
                        for i in range(start, min(n, start + 10_000))])
    store.close()
    return xb


def _probes(xb: np.ndarray, queries: int) -> list[tuple[int, bytes]]:
    rng = np.random.default_rng(2)
    mates = rng.choice(len(xb), queries, replace=False)
    return [(int(m), EmbeddingTemplate(MODEL, (xb[m] + rng.normal(0, 0.02, xb.shape[1])).astype(np.float32))
             .to_bytes()) for m in mates]


def measure(address: str, probes: list[tuple[int, bytes]], concurrency: int) -> dict:
    """Identify latency one at a time, then throughput with ``concurrency`` callers."""
    from tambua.v1 import tambua_pb2 as pb
    from tambua.v1 import tambua_pb2_grpc as pb_grpc

    stub = pb_grpc.MatcherStub(grpc.insecure_channel(address))

    def ask(probe: bytes) -> str:
        r = stub.Identify(pb.IdentifyRequest(samples=[pb.Sample(modality=pb.FACE, template=probe)],
                                             max_candidates=10), timeout=120)
        return r.candidates[0].subject_id if r.candidates else ""

    for _, p in probes[:5]:  # warm up: connections, first-call paths
        ask(p)
    ms, hits = [], 0
    for m, p in probes:
        t0 = time.perf_counter()
        hits += ask(p) == f"S{m}"
        ms.append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(ask, [p for _, p in probes]))
    qps = len(probes) / (time.perf_counter() - t0)
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "qps": qps, "concurrency": concurrency, "mate_rank1": hits / len(probes), "queries": len(probes)}


def _serve(data_dir: Path, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "tambua.cli", "serve", "--insecure", "--port", "0",
                             "--metrics-port", "-1", "--data-dir", str(data_dir), *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"the server did not start: {line!r}")
    return proc, line.split("listening on ")[1].split()[0]


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * 4096


def single(store_dir: Path, probes, concurrency: int) -> dict:
    data = store_dir.parent / "single"
    shutil.copytree(store_dir, data)
    t0 = time.perf_counter()
    proc, address = _serve(data)
    ready_s = time.perf_counter() - t0
    try:
        return {"mode": "single", "ready_s": ready_s, **measure(address, probes, concurrency),
                "resident_bytes": _rss(proc.pid)}
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def clustered(store_dir: Path, shards: int, nodes: int, probes, concurrency: int) -> dict:
    data = store_dir.parent / f"cluster{shards}"
    shutil.copytree(store_dir, data)
    ray = RayCluster()
    proc = None
    try:
        ray.start(workers=nodes - 1)
        t0 = time.perf_counter()
        proc, address = _serve(data, "--cluster", ray.address, "--shards", str(shards))
        ready_s = time.perf_counter() - t0
        result = measure(address, probes, concurrency)
        state = json.loads(subprocess.run([sys.executable, "-m", "tambua.cli", "cluster", "status", "--address",
                                           ray.address, "--json"], cwd=REPO, capture_output=True, text=True,
                                          timeout=120).stdout)
        per_node = sorted((n["resident_bytes"] for n in state["nodes"] if n["copies"]), reverse=True)
        return {"mode": "cluster", "shards": shards, "nodes": nodes, "ready_s": ready_s, **result,
                "front_end_resident_bytes": _rss(proc.pid),
                "shard_resident_bytes": [c["resident_bytes"] for c in state["shards"]],
                "node_shard_resident_bytes": per_node,
                "max_node_shard_resident_bytes": per_node[0] if per_node else 0}
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)
        ray.stop()


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in result["runs"] if r["mode"] == "cluster"]
    base = next(r for r in result["runs"] if r["mode"] == "single")
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    shards = [r["shards"] for r in runs]
    a.plot(shards, [r["p50_ms"] for r in runs], "o-", label="cluster p50")
    a.plot(shards, [r["p99_ms"] for r in runs], "s--", label="cluster p99")
    a.axhline(base["p50_ms"], color="grey", label="one server p50")
    a.axhline(base["p99_ms"], color="grey", ls="--", label="one server p99")
    a.set(xlabel="shards", ylabel="Identify over gRPC, ms", title=f"{result['faces']:,} faces, {runs[0]['nodes']} nodes")
    a.legend()
    b.plot(shards, [r["max_node_shard_resident_bytes"] / 2**20 for r in runs], "o-", label="busiest node's shards")
    b.axhline(base["resident_bytes"] / 2**20, color="grey", label="one server (whole process)")
    b.set(xlabel="shards", ylabel="resident MiB", title="memory")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--faces", type=int, default=100_000)
    p.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--json", required=True, type=Path)
    p.add_argument("--plot", type=Path)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        store_dir = Path(tmp) / "store"
        store_dir.mkdir()
        t0 = time.perf_counter()
        xb = build_store(store_dir, args.faces)
        probes = _probes(xb, args.queries)
        result = {"faces": args.faces, "bulk_load_s": time.perf_counter() - t0, "runs": []}
        result["runs"].append(single(store_dir, probes, args.concurrency))
        print(json.dumps(result["runs"][-1]), flush=True)
        for shards in args.shards:
            result["runs"].append(clustered(store_dir, shards, args.nodes, probes, args.concurrency))
            print(json.dumps(result["runs"][-1]), flush=True)
    base = result["runs"][0]
    for r in result["runs"][1:]:  # ratios within this run
        r["p50_ratio_to_single"] = r["p50_ms"] / base["p50_ms"]
        r["p50_added_ms"] = r["p50_ms"] - base["p50_ms"]
        r["qps_ratio_to_single"] = r["qps"] / base["qps"]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        plot(result, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
