"""Identify latency over gRPC beside pure search: ``python -m bench.service --gallery 10000 100000 --json OUT``.

``--security`` measures what protection costs: each size runs plain, then over TLS with
an API key checked on every call and templates encrypted at rest (decrypted at the
gallery rebuild), and the ratios are reported from the same run.

A real server (in this process, on a free loopback port) over a store bulk-loaded with
synthetic face templates drawn like ``bench.search``'s. Probes are sent as templates
(the service's matching path: parse, search, scoring, gRPC) and, with ``--image-probes
DIR``, also as real photos from DIR (extraction + search: what a registration app sees).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from bench.search import STATS_DIR, draw
from matcher.engine import Engine
from matcher.types import StoredTemplate, Subject
from store.sqlite import SubjectStore
from matcher.face.template import EmbeddingTemplate

MODEL = "face/dlib-resnet-v1"


def _percentiles(ms: list[float]) -> dict:
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def _secure(workdir: Path, store: SubjectStore) -> tuple[dict, grpc.ChannelCredentials, list]:
    """TLS settings, client credentials and an API key's metadata for a secure run."""
    from tambua.auth import ROLES, AccessStore
    from tambua.devpki import DevCA

    ca = DevCA(workdir / "pki")
    cert, key = ca.issue("server", server=True)
    access = AccessStore(workdir / "access.sqlite", store)
    _, api_key = access.create_key("bench", set(ROLES), {"*"})
    access.close()
    return ({"tls_cert": cert, "tls_key": key, "insecure": False},
            grpc.ssl_channel_credentials(ca.ca_pem.read_bytes()), [("authorization", f"Bearer {api_key}")])


def run(n: int, queries: int, workdir: Path, images: list[bytes], secure: bool = False) -> dict:
    """One gallery size; ``secure``: TLS, an API key on every call, templates encrypted at rest."""
    from store.sealing import new_key
    from tambua.config import Config
    from tambua.server import create_server
    from tambua.v1 import tambua_pb2 as pb
    from tambua.v1 import tambua_pb2_grpc as pb_grpc

    workdir = workdir / ("secure" if secure else "plain") / str(n)
    workdir.mkdir(parents=True)
    xb = draw(STATS_DIR / "face.stats.npz", n, seed=1)
    store = SubjectStore(workdir / "subjects.sqlite", new_key() if secure else None)
    t0 = time.perf_counter()
    for start in range(0, n, 10_000):
        store.add_many([
            Subject(f"S{i}", "default", (StoredTemplate("face", 0, EmbeddingTemplate(MODEL, xb[i])),))
            for i in range(start, min(n, start + 10_000))
        ])
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    from enroll.face.pipeline import FaceExtractor

    extractors = {"face": FaceExtractor()}
    engine = Engine(store, {"face": extractors["face"].model_id})
    rebuild_s = time.perf_counter() - t0
    settings, creds, md = _secure(workdir, store) if secure else ({"insecure": True}, None, None)
    bound = create_server(Config(port=0, metrics_port=-1, data_dir=workdir, **settings), engine, extractors)
    server, port = bound.server, bound.port
    server.start()
    channel = (grpc.secure_channel(f"localhost:{port}", creds) if secure
               else grpc.insecure_channel(f"127.0.0.1:{port}"))
    stub = pb_grpc.MatcherStub(channel)
    rng = np.random.default_rng(2)
    mates = rng.choice(n, queries, replace=False)
    probes = [EmbeddingTemplate(MODEL, (xb[m] + rng.normal(0, 0.02, xb.shape[1])).astype(np.float32)) for m in mates]
    rpc_ms, search_ms, hits = [], [], 0
    for m, p in zip(mates, probes):
        req = pb.IdentifyRequest(samples=[pb.Sample(modality=pb.FACE, template=p.to_bytes())], max_candidates=10)
        t0 = time.perf_counter()
        resp = stub.Identify(req, timeout=30, metadata=md)
        rpc_ms.append((time.perf_counter() - t0) * 1000)
        hits += resp.candidates[0].subject_id == f"S{m}"
        t0 = time.perf_counter()
        engine.matchers["face"].search("default", 0, p, 10)
        search_ms.append((time.perf_counter() - t0) * 1000)
    image_ms = []
    for img in images:
        req = pb.IdentifyRequest(samples=[pb.Sample(modality=pb.FACE, image=img)], max_candidates=10)
        t0 = time.perf_counter()
        stub.Identify(req, timeout=30, metadata=md)
        image_ms.append((time.perf_counter() - t0) * 1000)
    server.stop(0)
    store.close()
    return {
        "gallery": n,
        "mode": "tls+api-key+aes-gcm-at-rest" if secure else "plain",
        "bulk_load_s": load_s,
        "gallery_rebuild_s": rebuild_s,
        "identify_rpc": _percentiles(rpc_ms),
        "pure_search": _percentiles(search_ms),
        "service_overhead_p50_ms": float(np.percentile(rpc_ms, 50) - np.percentile(search_ms, 50)),
        "mate_rank1": hits / queries,
        "queries": queries,
        **({"identify_rpc_image_probe": _percentiles(image_ms), "image_queries": len(image_ms)} if image_ms else {}),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gallery", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--image-probes", type=Path, help="folder of face photos sent as image probes (recursive)")
    p.add_argument("--security", action="store_true",
                   help="run each size twice: plain, then TLS + API key + encryption at rest, and report the cost")
    p.add_argument("--json", required=True, type=Path)
    args = p.parse_args(argv)
    images = []
    if args.image_probes:
        files = sorted(f for f in args.image_probes.rglob("*") if f.suffix.lower() in {".jpg", ".png", ".pgm"})
        images = [f.read_bytes() for f in files[: args.queries]]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.gallery:
            for secure in ([False, True] if args.security else [False]):
                runs.append(run(n, args.queries, Path(tmp), images, secure))
                print(json.dumps(runs[-1]), flush=True)
    if args.security:  # the ratios, each pair measured back to back in this run
        for plain, secure in zip(runs[::2], runs[1::2]):
            secure["vs_plain"] = {
                "identify_rpc_p50_ratio": secure["identify_rpc"]["p50_ms"] / plain["identify_rpc"]["p50_ms"],
                "identify_rpc_p50_added_ms": secure["identify_rpc"]["p50_ms"] - plain["identify_rpc"]["p50_ms"],
                "gallery_rebuild_ratio": secure["gallery_rebuild_s"] / plain["gallery_rebuild_s"],
            }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
