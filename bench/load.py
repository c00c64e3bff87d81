"""The service under load: ``python -m bench.load --gallery 10000 --json OUT --plot PNG``.

An open-loop load generator over gRPC: requests leave at a fixed arrival rate whatever the
answers do, so a slow answer cannot hold the next request back and hide the queue behind
it (coordinated omission); each latency is measured from when its request was *due*, and
recorded in an HdrHistogram. Built on ``grpc.aio`` (one event loop sends on schedule with
as many calls in flight as the schedule makes, up to ``--max-in-flight``) and the
``hdrhistogram`` package: locust, the obvious well-kept alternative, drives closed-loop
users (each waits for its answer before its next request), which is what hides queueing.

For each modality a store of ``--gallery`` subjects is built as the search benchmarks
build theirs (faces drawn from the Gaussian of real LFW embeddings; irises: the real
CASIA-IrisV1 mates among synthetic irises; fingers: the real FCJ mates among fingers
spliced from real minutiae), a real ``tambua serve`` loads it on loopback, and each RPC
(Identify, Verify, Enroll, all with template samples, so the service's matching, fusion,
storage and gRPC are measured and not the image decoders), then mixed registration traffic
(3 Enroll : 2 Identify : 5 Verify), is offered at a rate stepped up by ``--factor`` until
p99 passes ``--p99-limit-ms`` or the server stops keeping up (answered under 90% of the
offered rate, or more than 1% errors or overflows). Each step is bounded in time
(``--step-s``) and count (``--max-requests``). Enrolments are new people (fresh synthetic
templates), each searched against the gallery before it is stored.

Output per modality and RPC: each step's offered and answered QPS, p50/p90/p99/p99.9/max
latency, errors; ``saturation_qps`` (the highest answered rate whose p99 stayed within the
limit); and for Identify and Verify the raw matcher's time for the same probes in the same
run (the engine in this process, one call at a time) with ``service_over_matcher`` (the
service's p50 at the lowest rate over the matcher's p50). The client shares the machine's
cores with the server: on this 2-core VM the saturation rates are a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MIXED = (("enroll", 3), ("identify", 2), ("verify", 5))
MODELS = {"face": "face/dlib-resnet-v1", "iris": "iris/gabor-v2", "finger": "finger/leader-mcc-v1"}


def build(modality: str, folder: Path, n: int, cache: Path, queries: int = 200):
    """The store of ``n`` subjects in ``folder``; (probes as (mate id, sample), fresh samples to enrol)."""
    from bench import cluster

    if modality == "face":
        from bench.search import STATS_DIR, draw
        from matcher.face.template import EmbeddingTemplate

        probes = cluster.build_faces(folder, n, queries)
        fresh = draw(STATS_DIR / "face.stats.npz", 4000, seed=99)
        return probes, [("face", 0, EmbeddingTemplate(MODELS["face"], v).to_bytes()) for v in fresh]
    if modality == "iris":
        from bench.iris_search import Synthesiser, real_responses
        from matcher.iris.template import IrisTemplate

        probes = cluster.build_irises(folder, n, queries, cache)
        real = real_responses(cache)
        rng = np.random.default_rng(98)
        bits = Synthesiser(real["response"]).draw(4000, rng)
        masks = real["mask"][rng.integers(len(real["mask"]), size=len(bits))]
        return probes, [("iris", 1, IrisTemplate(MODELS["iris"], b, np.broadcast_to(m, b.shape).copy()).to_bytes())
                        for b, m in zip(bits, masks)]
    from bench.finger_search import _template, fillers, real_fingers

    probes = cluster.build_fingers(folder, n, queries, cache)
    _, _, pool, owners = real_fingers(cache)
    fresh = fillers(pool, owners, 4000, np.random.default_rng(97), frame=(500, 500))
    return probes, [("finger", 1, _template(m).to_bytes()) for m in fresh]


def matcher_ms(folder: Path, modality: str, probes) -> dict:
    """The engine's own Identify and Verify time for the probes, in this process, one call
    at a time (what the service adds to it is the ratio)."""
    from matcher.engine import Engine
    from matcher.registry import REGISTRY
    from matcher.types import StoredTemplate
    from store.sqlite import SubjectStore

    store = SubjectStore(folder / "subjects.sqlite")
    engine = Engine(store, {modality: MODELS[modality]})
    parse = REGISTRY[modality].template.from_bytes
    out = {}
    try:
        for rpc in ("identify", "verify"):
            ms = []
            for mate, (m, position, data) in probes:
                sample = (StoredTemplate(m, position, parse(data)),)
                t0 = time.perf_counter()
                if rpc == "identify":
                    engine.identify("default", sample)
                else:
                    engine.verify(mate, "default", sample)
                ms.append((time.perf_counter() - t0) * 1000)
            out[rpc] = float(np.percentile(ms[5:] if len(ms) > 20 else ms, 50))
    finally:
        store.close()
    return out


class Load:
    """Requests of one kind (or the mix) against one server, offered open-loop."""

    def __init__(self, address: str, probes, fresh, max_in_flight: int) -> None:
        import grpc

        from tambua.v1 import tambua_pb2 as pb
        from tambua.v1 import tambua_pb2_grpc as pb_grpc

        self.pb, self.probes, self.fresh, self.max_in_flight = pb, probes, fresh, max_in_flight
        self.channel = grpc.aio.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)])
        self.stub = pb_grpc.MatcherStub(self.channel)
        self.enrolled = 0
        self.kinds = {"face": pb.FACE, "iris": pb.IRIS, "finger": pb.FINGER}

    def _sample(self, probe: tuple):
        modality, position, data = probe
        return self.pb.Sample(modality=self.kinds[modality], position=position, template=data)

    def request(self, rpc: str, i: int):
        """The call for the ``i``-th request of ``rpc`` (an awaitable)."""
        pb = self.pb
        mate, probe = self.probes[i % len(self.probes)]
        if rpc == "identify":
            return self.stub.Identify(pb.IdentifyRequest(samples=[self._sample(probe)]), timeout=60)
        if rpc == "verify":
            return self.stub.Verify(pb.VerifyRequest(subject_id=mate, samples=[self._sample(probe)]), timeout=60)
        self.enrolled += 1
        new = self.fresh[self.enrolled % len(self.fresh)]
        return self.stub.Enroll(pb.EnrollRequest(subject_id=f"L{os.getpid()}-{self.enrolled}",
                                                 samples=[self._sample(new)]), timeout=60)

    async def step(self, rpc: str, rate: float, seconds: float, max_requests: int) -> dict:
        from hdrh.histogram import HdrHistogram

        hist = HdrHistogram(1, 120_000_000, 3)  # microseconds, 1 us .. 2 min
        loop = asyncio.get_running_loop()
        count = max(1, min(max_requests, int(rate * seconds)))
        mix = [name for name, share in MIXED for _ in range(share)]
        state = {"in_flight": 0, "errors": 0, "overflow": 0, "last": 0.0}

        async def one(call, due: float) -> None:
            try:
                await call
            except Exception:  # noqa: BLE001 - any failed call counts as an error, its latency too
                state["errors"] += 1
            finally:
                state["in_flight"] -= 1
                now = loop.time()
                state["last"] = max(state["last"], now)
                hist.record_value(max(1, int((now - due) * 1e6)))

        start = loop.time() + 0.05
        tasks = []
        for i in range(count):
            due = start + i / rate
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if state["in_flight"] >= self.max_in_flight:  # the server is not keeping up at all
                state["overflow"] += 1
                continue
            state["in_flight"] += 1
            kind = mix[i % len(mix)] if rpc == "mixed" else rpc
            tasks.append(asyncio.create_task(one(self.request(kind, i), due)))
        await asyncio.gather(*tasks)
        answered = len(tasks) - state["errors"]
        span = max(state["last"] - start, count / rate)
        pct = {f"p{q:g}_ms": hist.get_value_at_percentile(q) / 1000 for q in (50, 90, 99, 99.9)}
        return {"offered_qps": round(rate, 3), "answered_qps": round(answered / span, 3), "requests": count,
                "errors": state["errors"], "overflow": state["overflow"], **pct,
                "max_ms": hist.get_max_value() / 1000}

    async def ramp(self, rpc: str, start_qps: float, factor: float, p99_limit_ms: float, step_s: float,
                   max_requests: int, max_steps: int) -> dict:
        steps, rate = [], start_qps
        await self.step(rpc, start_qps, min(2.0, step_s), 10)  # warm up: connections, first-call paths
        for _ in range(max_steps):
            s = await self.step(rpc, rate, step_s, max_requests)
            steps.append(s)
            print(json.dumps({"rpc": rpc, **s}), file=sys.stderr, flush=True)
            failed = (s["errors"] + s["overflow"]) > 0.01 * s["requests"]
            if s["p99_ms"] > p99_limit_ms or s["answered_qps"] < 0.9 * rate or failed:
                break
            rate *= factor
        ok = [s for s in steps if s["p99_ms"] <= p99_limit_ms and s["errors"] + s["overflow"] <= 0.01 * s["requests"]
              and s["answered_qps"] >= 0.9 * s["offered_qps"]]
        # Saturated: the last step broke a limit; else the ramp ran out of steps first and
        # the rate is a floor.
        return {"steps": steps, "saturation_qps": max((s["answered_qps"] for s in ok), default=0.0),
                "saturated": len(ok) < len(steps), "p99_limit_ms": p99_limit_ms}


def run_modality(modality: str, gallery: int, workdir: Path, cache: Path, args) -> dict:
    from bench.servers import serve

    folder = workdir / f"{modality}-{gallery}"
    folder.mkdir()
    t0 = time.perf_counter()
    probes, fresh = build(modality, folder, gallery, cache)
    build_s = time.perf_counter() - t0
    raw = matcher_ms(folder, modality, probes)
    t0 = time.perf_counter()
    proc, address = serve(folder)
    ready_s = time.perf_counter() - t0
    out = {"gallery": gallery, "build_s": round(build_s, 1), "ready_s": round(ready_s, 1), "matcher_p50_ms": raw,
           "rpcs": {}}
    try:
        async def main() -> None:
            load = Load(address, probes, fresh, args.max_in_flight)
            try:
                for rpc in args.rpcs:
                    out["rpcs"][rpc] = await load.ramp(rpc, args.start_qps, args.factor, args.p99_limit_ms,
                                                       args.step_s, args.max_requests, args.max_steps)
            finally:
                await load.channel.close()

        asyncio.run(main())
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    for rpc in ("identify", "verify"):
        if rpc in out["rpcs"] and out["rpcs"][rpc]["steps"]:
            service = out["rpcs"][rpc]["steps"][0]["p50_ms"]
            out["rpcs"][rpc]["service_over_matcher"] = round(service / max(raw[rpc], 1e-3), 2)
    return out


def plot(result: dict, png: Path) -> None:
    """Latency percentiles against offered QPS: a panel per modality, a colour per RPC."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modalities = list(result["modalities"])
    fig, axes = plt.subplots(1, len(modalities), figsize=(5.5 * len(modalities), 4.5), squeeze=False)
    for ax, modality in zip(axes[0], modalities):
        r = result["modalities"][modality]
        for i, (rpc, runs) in enumerate(r["rpcs"].items()):
            x = [s["offered_qps"] for s in runs["steps"]]
            colour = f"C{i}"
            said = "saturates at" if runs["saturated"] else "not saturated at"
            ax.plot(x, [s["p50_ms"] for s in runs["steps"]], "o-", color=colour,
                    label=f"{rpc} p50 ({said} {runs['saturation_qps']:.0f}/s)")
            ax.plot(x, [s["p99_ms"] for s in runs["steps"]], "s--", color=colour, alpha=0.7, label=f"{rpc} p99")
        ax.axhline(result["p99_limit_ms"], color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offered requests per second (open loop)")
        ax.set_ylabel("latency from when due, ms")
        ax.set_title(f"{modality}, {r['gallery']:,} subjects")
        ax.legend(fontsize=6)
    fig.suptitle(f"Tambua under load, {result['cores']}-core machine, client and server sharing it", fontsize=9)
    fig.savefig(png, dpi=100, bbox_inches="tight")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Open-loop gRPC load: latency against offered rate, per RPC.")
    p.add_argument("--gallery", type=int, default=10_000)
    p.add_argument("--modality", nargs="*", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--rpcs", nargs="*", choices=["identify", "verify", "enroll", "mixed"],
                   default=["identify", "verify", "enroll", "mixed"])
    p.add_argument("--start-qps", type=float, default=2.0)
    p.add_argument("--factor", type=float, default=1.6, help="each step offers this many times the last")
    p.add_argument("--p99-limit-ms", type=float, default=1000.0)
    p.add_argument("--step-s", type=float, default=10.0, help="seconds per step (at most)")
    p.add_argument("--max-requests", type=int, default=3000, help="requests per step (at most)")
    p.add_argument("--max-steps", type=int, default=14)
    p.add_argument("--max-in-flight", type=int, default=512)
    p.add_argument("--cache", type=Path, default=Path(".bench-cache"), help="real iris codes and minutiae")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--plot", type=Path)
    args = p.parse_args(argv)
    out = {"command": "python -m bench.load " + " ".join(sys.argv[1:] if argv is None else argv),
           "cores": os.cpu_count(), "p99_limit_ms": args.p99_limit_ms, "tool": "grpc.aio + hdrhistogram",
           "mixed": dict(MIXED), "modalities": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for modality in args.modality:
            out["modalities"][modality] = run_modality(modality, args.gallery, Path(tmp), args.cache, args)
            print(json.dumps({modality: {rpc: r["saturation_qps"] for rpc, r in
                                         out["modalities"][modality]["rpcs"].items()}}), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    if args.plot:
        plot(out, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
