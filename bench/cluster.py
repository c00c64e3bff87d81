"""Cluster overhead and memory against one server, in one run:
``python -m bench.cluster --modality face --gallery 1000000 --shards 1 2 4 --json OUT --plot PNG``.

For each shard count a local Ray cluster of ``--nodes`` nodes on loopback (``ray start``,
stopped by PID) and a ``tambua serve --cluster`` front-end load the same store; one
server loads it too. Faces are synthetic templates drawn like ``bench.search``'s, probed
by mates 0.02 from their enrolled template; irises are the real CASIA-IrisV1 mates of
``bench.iris_search`` (first image enrolled, fifth probed, with its alternates) among
synthetic irises with the real codes' spectra; fingers are the real FCJ mates of
``bench.finger_search`` (first impression enrolled, the others probed) among synthetic
fingers spliced from real minutiae of the other FCJ and FVC fingers. Identify goes over gRPC with template
probes: p50/p99 latency one query at a time, queries per second with ``--concurrency``
callers, and the cluster's resident memory per shard copy and per node (``tambua cluster
status``). On one 2-core machine the curve shows the cluster's overhead, not a speed-up.
"""

from __future__ import annotations

import argparse
import base64
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
from bench.servers import serve
from bench.search import STATS_DIR, draw
from matcher.face.template import EmbeddingTemplate
from matcher.types import StoredTemplate, Subject
from store.sqlite import SubjectStore

MODEL = "face/dlib-resnet-v1"
REPO = Path(__file__).resolve().parent.parent


def _store(folder: Path, subjects) -> None:
    store = SubjectStore(folder / "subjects.sqlite")
    batch = []
    for subject in subjects:
        batch.append(subject)
        if len(batch) == 10_000:
            store.add_many(batch)
            batch = []
    if batch:
        store.add_many(batch)
    store.close()


def build_faces(folder: Path, n: int, queries: int) -> list[tuple[str, tuple]]:
    """A store of ``n`` synthetic face subjects in ``folder``; probes: (mate's id, sample)."""
    xb = draw(STATS_DIR / "face.stats.npz", n, seed=1)
    _store(folder, (Subject(f"S{i}", "default", (StoredTemplate("face", 0, EmbeddingTemplate(MODEL, xb[i])),))
                    for i in range(n)))
    rng = np.random.default_rng(2)
    mates = rng.choice(n, queries, replace=False)
    return [(f"S{m}", ("face", 0, EmbeddingTemplate(MODEL, (xb[m] + rng.normal(0, 0.02, xb.shape[1]))
                                                     .astype(np.float32)).to_bytes())) for m in mates]


def build_irises(folder: Path, n: int, queries: int, cache: Path) -> list[tuple[str, tuple]]:
    """A store of ``n`` subjects with one (right) iris: the real CASIA-IrisV1 mates, then
    synthetic irises; probes: the mates' other images, with their alternates."""
    from bench.iris_search import MODEL as IRIS, Synthesiser, _template, real_responses
    from matcher.iris.template import IrisTemplate

    real = real_responses(cache)
    resp, masks, eyes = real["response"], real["mask"], real["eye"]
    pairs = []
    for e in sorted({e for e in eyes if e.startswith("casia_v1/")}):
        idx = np.flatnonzero(eyes == e)
        if len(idx) >= 5:
            pairs.append((idx[0], idx[4]))
    pairs = pairs[:queries]
    syn, rng = Synthesiser(resp), np.random.default_rng(11)

    def subjects():
        for i, (a, _) in enumerate(pairs):
            yield Subject(f"M{i}", "default", (StoredTemplate("iris", 1, _template(resp[a], masks[a])),))
        for start in range(0, n - len(pairs), 10_000):
            bits = syn.draw(min(10_000, n - len(pairs) - start), rng)
            pick = rng.integers(len(masks), size=len(bits))
            turn = rng.integers(0, bits.shape[-1], size=len(bits))
            for j in range(len(bits)):
                mask = np.broadcast_to(np.roll(masks[pick[j]], turn[j], axis=-1), bits[j].shape).copy()
                yield Subject(f"F{start + j}", "default", (StoredTemplate("iris", 1, IrisTemplate(IRIS, bits[j], mask)),))

    _store(folder, subjects())
    return [(f"M{i}", ("iris", 1, _template(resp[b], masks[b], real["alt_code"][b], real["alt_mask"][b]).to_bytes()))
            for i, (_, b) in enumerate(pairs)]


def _finger_rows(chunk: tuple[int, str, list[np.ndarray]]) -> tuple[int, str, list[tuple[bytes, bytes]]]:
    """(template bytes, derived features) of each finger of a chunk, made in a worker process."""
    from bench.finger_search import _template

    start, prefix, fingers = chunk
    return start, prefix, [((t := _template(m)).to_bytes(), t.derived_bytes()) for m in fingers]


def build_fingers(folder: Path, n: int, queries: int, cache: Path) -> list[tuple[str, tuple]]:
    """A store of ``n`` subjects with one finger (position 1): the real FCJ mates, then
    synthetic fingers; probes: the mates' other impressions. Cylinders and index codes are
    derived on every core once and stored, as the service would have stored them at enrolment."""
    import multiprocessing

    from bench.finger_search import _template, fillers, real_fingers
    from matcher.finger.template import MinutiaeTemplate

    fcj, mated, pool, owners = real_fingers(cache)
    rng = np.random.default_rng(7)

    def chunks():  # (first id, id prefix, minutiae): the mates, then fillers 10,000 at a time
        yield 0, "M", [fcj[f][0] for f in mated]
        for start in range(0, n - len(mated), 10_000):
            yield start, "F", fillers(pool, owners, min(10_000, n - len(mated) - start), rng, frame=(500, 500))

    def subjects():
        with multiprocessing.Pool() as workers:
            for start, prefix, rows in workers.imap(_finger_rows, chunks()):
                for j, (data, derived) in enumerate(rows):
                    template = MinutiaeTemplate.from_bytes(data)
                    template.load_derived(derived)
                    yield Subject(f"{prefix}{start + j}", "default", (StoredTemplate("finger", 1, template),))

    _store(folder, subjects())
    probes = [(f"M{i}", ("finger", 1, _template(m).to_bytes())) for i, f in enumerate(mated) for m in fcj[f][1:]]
    return probes[:queries]


def measure(address: str, probes: list[tuple[str, tuple]], concurrency: int, max_fpir: float = 0.0,
            mark=None) -> dict:
    """Identify latency one at a time, then throughput with ``concurrency`` callers.
    ``max_fpir`` 0 asks at the service's identify FPIR; 1 ranks every candidate (one
    finger cannot reach FPIR 0.01 among 200,000 people: the bench measures the search).
    ``mark()``, if given, is called before and after the one-at-a-time phase; what it
    returns comes back as ``marks``."""
    from tambua.v1 import tambua_pb2 as pb
    from tambua.v1 import tambua_pb2_grpc as pb_grpc

    stub = pb_grpc.MatcherStub(grpc.insecure_channel(address))
    kinds = {"face": pb.FACE, "iris": pb.IRIS, "finger": pb.FINGER}

    def ask(probe: tuple) -> str:
        modality, position, template = probe
        r = stub.Identify(pb.IdentifyRequest(samples=[pb.Sample(modality=kinds[modality], position=position,
                                                                template=template)], max_candidates=10, max_fpir=max_fpir),
                              timeout=300)
        return r.candidates[0].subject_id if r.candidates else ""

    for _, p in probes[:5]:  # warm up: connections, first-call paths
        ask(p)
    ms, hits = [], 0
    marks = [mark()] if mark else []
    stalls = _compaction_stalls()
    for mate, p in probes:
        t0 = time.perf_counter()
        hits += ask(p) == mate
        ms.append((time.perf_counter() - t0) * 1000)
    stalls = _compaction_stalls() - stalls
    if mark:
        marks.append(mark())
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(ask, [p for _, p in probes]))
    qps = len(probes) / (time.perf_counter() - t0)
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(np.mean(ms)),
            "qps": qps, "concurrency": concurrency, "mate_rank1": hits / len(probes), "queries": len(probes), "max_fpir": max_fpir,
            # The machine's direct compactions (a process waiting for the kernel to make a
            # huge page) over the one-at-a-time phase: the cause to rule out of a slow tail.
            "slowest_ms": float(np.max(ms)), "slowest_query": int(np.argmax(ms)), "compaction_stalls": stalls,
            **({"marks": marks} if mark else {})}


def _compaction_stalls() -> int:
    """The kernel's count of direct compactions so far (Linux; 0 where unreadable)."""
    try:
        with open("/proc/vmstat") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("compact_stall ")), 0)
    except OSError:
        return 0


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * 4096


def _searched(metrics_port: int) -> tuple[float, float]:
    """The server's search stage so far, from its /metrics: (searches, seconds)."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30).read().decode()
    total = {"count": 0.0, "sum": 0.0}
    for line in text.splitlines():
        for part in total:
            if line.startswith(f"tambua_stage_seconds_{part}{{") and 'stage="search"' in line:
                total[part] += float(line.rsplit(" ", 1)[1])
    return total["count"], total["sum"]


def single(store_dir: Path, probes, concurrency: int, max_fpir: float = 0.0, beside: int = 0) -> dict:
    """One server on a copy of the store; ``beside`` > 0: with that many idle Ray nodes
    running on the machine too (the control run: what the co-located nodes cost a search
    that does not use them)."""
    from bench.ray_local import free_port

    if beside:
        idle = RayCluster()
        try:
            idle.start(workers=beside - 1)
            return {**single(store_dir, probes, concurrency, max_fpir), "mode": "single beside idle nodes",
                    "nodes": beside}
        finally:
            idle.stop()
    data = store_dir.parent / "single"
    shutil.rmtree(data, ignore_errors=True)
    shutil.copytree(store_dir, data)
    t0 = time.perf_counter()
    metrics = free_port("127.0.0.1")
    proc, address = serve(data, "--metrics-port", str(metrics))
    ready_s = time.perf_counter() - t0
    try:
        result = measure(address, probes, concurrency, max_fpir, mark=lambda: _searched(metrics))
        (n0, s0), (n1, s1) = result.pop("marks")
        # Mean time in the engine's search per query, one at a time (cf. shard_search_ms).
        return {"mode": "single", "ready_s": ready_s, **result, "search_ms": 1000 * (s1 - s0) / max(1.0, n1 - n0),
                "resident_bytes": _rss(proc.pid)}
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def clustered(store_dir: Path, shards: int, nodes: int, probes, concurrency: int, max_fpir: float = 0.0) -> dict:
    data = store_dir.parent / f"cluster{shards}"
    shutil.copytree(store_dir, data)
    ray = RayCluster()
    proc = None
    try:
        ray.start(workers=nodes - 1)
        t0 = time.perf_counter()
        proc, address = serve(data, "--cluster", ray.address, "--shards", str(shards))
        ready_s = time.perf_counter() - t0

        def status() -> dict:
            return json.loads(subprocess.run([sys.executable, "-m", "tambua.cli", "cluster", "status", "--address",
                                              ray.address, "--json"], cwd=REPO, capture_output=True, text=True,
                                             timeout=120).stdout)

        def searched() -> dict:  # each copy's search counters
            return {f"{c['shard']}/{c['copy']}": (c["searches"], c["search_seconds"], c["full_collection_seconds"])
                    for c in status()["shards"]}

        result = measure(address, probes, concurrency, max_fpir, mark=searched)
        before, after = result.pop("marks")
        state = status()
        per_node = sorted((n["resident_bytes"] for n in state["nodes"] if n["copies"]), reverse=True)
        return {"mode": "cluster", "shards": shards, "nodes": nodes, "ready_s": ready_s, **result,
                "front_end_resident_bytes": _rss(proc.pid), "coordinator_resident_bytes": _rss(state["coordinator_pid"]),
                "shard_resident_bytes": [c["resident_bytes"] for c in state["shards"]],
                # Mean time inside each copy per search, one query at a time: the rest of a
                # query's time is the front-end's and the hop's.
                "shard_search_ms": [1000 * (after[c][1] - before[c][1]) / max(1, after[c][0] - before[c][0])
                                    for c in sorted(after)],
                # Python's full collections in each copy over that phase (a pause outside the search).
                "shard_full_collection_ms": [1000 * (after[c][2] - before[c][2]) for c in sorted(after)],
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
    control = next((r for r in result["runs"] if r["mode"] == "single beside idle nodes"), None)
    if control is not None:
        a.axhline(control["p50_ms"], color="grey", ls=":", label="one server beside idle nodes, p50")
    a.axhline(base["p99_ms"], color="grey", ls="--", label="one server p99")
    a.set(xlabel="shards", ylabel="Identify over gRPC, ms",
          title=f"{result['gallery']:,} {result['modality']} subjects, {runs[0]['nodes']} nodes")
    a.legend()
    b.plot(shards, [r["max_node_shard_resident_bytes"] / 2**20 for r in runs], "o-", label="busiest node's shards")
    b.plot(shards, [max(r["shard_resident_bytes"]) / 2**20 for r in runs], "s--", label="largest shard copy")
    b.axhline(base["resident_bytes"] / 2**20, color="grey", label="one server (whole process)")
    b.set(xlabel="shards", ylabel="resident MiB", title="memory")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modality", default="face", choices=["face", "iris", "finger"])
    p.add_argument("--gallery", "--faces", dest="gallery", type=int, default=100_000, help="subjects")
    p.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--queries", type=int, default=200, help="irises: at most the 108 real CASIA-IrisV1 pairs; fingers: the FCJ mates' other impressions")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--cache", type=Path, default=Path(".bench-cache"), help="iris and finger: real codes and minutiae, derived once")
    p.add_argument("--control", action="store_true", help="also one server beside --nodes idle Ray nodes: what "
                   "sharing the machine with them costs, apart from the fan-out")
    p.add_argument("--workdir", type=Path, help="keep the gallery here and reuse it when run again (same "
                   "modality, size and queries): a 200,000-finger gallery takes ~15 min to build")
    p.add_argument("--json", required=True, type=Path)
    p.add_argument("--plot", type=Path)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        store_dir = Path(tmp) / "store"
        build = {"face": lambda: build_faces(store_dir, args.gallery, args.queries),
                 "iris": lambda: build_irises(store_dir, args.gallery, args.queries, args.cache),
                 "finger": lambda: build_fingers(store_dir, args.gallery, args.queries, args.cache)}
        kept = args.workdir / f"cluster-{args.modality}-{args.gallery}-{args.queries}" if args.workdir else None
        if kept is not None and (kept / "built.json").exists():
            shutil.copytree(kept / "store", store_dir)
            built = json.loads((kept / "built.json").read_text())
            probes = [(mate, (m, pos, base64.b64decode(t))) for mate, (m, pos, t) in built["probes"]]
            bulk_load_s = built["bulk_load_s"]
        else:
            store_dir.mkdir()
            t0 = time.perf_counter()
            probes = build[args.modality]()
            bulk_load_s = time.perf_counter() - t0
            if kept is not None:  # the gallery and its probes, for the next run of this command
                shutil.rmtree(kept, ignore_errors=True)
                shutil.copytree(store_dir, kept / "store")
                (kept / "built.json").write_text(json.dumps({"bulk_load_s": bulk_load_s, "probes": [
                    (mate, (m, pos, base64.b64encode(t).decode())) for mate, (m, pos, t) in probes]}))
        result = {"modality": args.modality, "gallery": args.gallery, "bulk_load_s": bulk_load_s, "runs": []}
        if args.modality == "face":
            result["faces"] = args.gallery
        max_fpir = 1.0 if args.modality == "finger" else 0.0
        result["runs"].append(single(store_dir, probes, args.concurrency, max_fpir))
        print(json.dumps(result["runs"][-1]), flush=True)
        if args.control:
            result["runs"].append(single(store_dir, probes, args.concurrency, max_fpir, beside=args.nodes))
            print(json.dumps(result["runs"][-1]), flush=True)
        for shards in args.shards:
            result["runs"].append(clustered(store_dir, shards, args.nodes, probes, args.concurrency, max_fpir))
            print(json.dumps(result["runs"][-1]), flush=True)
    base = result["runs"][0]
    control = next((r for r in result["runs"] if r["mode"] == "single beside idle nodes"), None)
    for r in result["runs"][1:]:  # ratios within this run
        r["p50_ratio_to_single"] = r["p50_ms"] / base["p50_ms"]
        r["p50_added_ms"] = r["p50_ms"] - base["p50_ms"]
        r["qps_ratio_to_single"] = r["qps"] / base["qps"]
        if control is not None and r["mode"] == "cluster":
            r["p50_ratio_to_control"] = r["p50_ms"] / control["p50_ms"]
            r["p50_added_to_control_ms"] = r["p50_ms"] - control["p50_ms"]
        if r["mode"] == "cluster" and "mean_ms" in r and "search_ms" in base:
            # Means, one query at a time: the time a query spends outside the search (gRPC,
            # the service, the Ray hop and merge), against one server's outside its engine.
            # A probe's derived features (finger cylinders) count as search on one server
            # and as outside on a front-end, which makes them before it scatters.
            r["outside_search_ms"] = r["mean_ms"] - max(r["shard_search_ms"])
            r["single_outside_search_ms"] = base["mean_ms"] - base["search_ms"]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        plot(result, args.plot)
    return 0


def replot(json_path: Path, png: Path) -> None:
    """The plot of a result file written earlier."""
    plot(json.loads(json_path.read_text()), png)


if __name__ == "__main__":
    raise SystemExit(main())
