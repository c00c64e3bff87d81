"""Every image of ../shared/data through `tambua import`, on real servers: the counts match
the manifest (enrolled + failed by reason), a second run imports nothing new, and a run
killed (SIGKILL) halfway then run again leaves the very store a clean run leaves. Also the
failure to enrol per reason of every development set, and the import rate.

    python -m bench.import_all --json bench/results/import_all.json

One subject per image (``SET/PATH``), loaded without deduplication (``--dedup skip``: the
people repeat by design; the audit finds them after). The manifest points at the images
where they lie (relative paths): nothing is copied.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.servers import REPO, serve

DATA = REPO.parent / "shared" / "data"
SUFFIXES = (".pgm", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".wsq")


def _position(modality: str, set_name: str, path: Path) -> str:
    """A manifest position for an image of a development set (fingers need 1-10, irises an eye)."""
    if modality == "face":
        return ""
    if modality == "finger":
        if set_name == "fcj2020_dev":  # PERSON_FINGER_IMPRESSION, fingers 4-7
            return path.stem.split("_")[1]
        return "2"  # FVC B sets do not say which finger: counted as the right index
    eye = path.parent.name.lower()
    return "left" if eye.endswith(("_l", "left")) else "right"  # CASIA-IrisV1 does not say: right


def shared_manifest(data: Path, folder: Path) -> tuple[Path, int]:
    """A manifest of every image under ``data`` (face/, fingerprint/, iris/), one subject
    each, with its development set as metadata: (manifest, images)."""
    modality_of = {"face": "face", "fingerprint": "finger", "iris": "iris"}
    rows = []
    for top, modality in modality_of.items():
        for set_dir in sorted((data / top).iterdir()):
            for f in sorted(set_dir.rglob("*")):
                if f.is_file() and f.suffix.lower() in SUFFIXES:
                    rel = f.relative_to(set_dir).with_suffix("")
                    rows.append({"subject_id": f"{set_dir.name}/{rel}", "partition": "", "modality": modality,
                                 "position": _position(modality, set_dir.name, f),
                                 "path": os.path.relpath(f, folder), "set": set_dir.name})
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as out:
        w = csv.DictWriter(out, ["subject_id", "partition", "modality", "position", "path", "set"])
        w.writeheader()
        w.writerows(rows)
    return manifest, len(rows)


def _import(address: str, manifest: Path, report: Path, state: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tambua.cli", "import", "--address", address, "--manifest",
                             str(manifest), "--dedup", "skip", "--jobs", str(os.cpu_count() or 1), "--state",
                             str(state), "--report", str(report), "--json"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def _finish(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=7200)
    return json.loads(out)


def _store(address: str, ids: list[str]) -> dict[str, list]:
    """What a server holds for each id (templates' modality, position, bytes digest)."""
    import hashlib

    import grpc

    from tambua.v1 import tambua_pb2 as pb
    from tambua.v1 import tambua_pb2_grpc

    held = {}
    with grpc.insecure_channel(address) as channel:
        stub = tambua_pb2_grpc.MatcherStub(channel)
        for sid in ids:
            try:
                s = stub.GetSubject(pb.SubjectRequest(subject_id=sid), timeout=30)
            except grpc.RpcError as e:
                if e.code() is grpc.StatusCode.NOT_FOUND:
                    continue
                raise
            held[sid] = sorted((t.modality, t.position, hashlib.sha256(t.data).hexdigest()) for t in s.templates)
    return held


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Import every image of ../shared/data; kill and resume; compare.")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--json", required=True, type=Path)
    args = parser.parse_args(argv)
    out: dict = {"command": "python -m bench.import_all " + " ".join(sys.argv[1:] if argv is None else argv),
                 "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        manifest, images = shared_manifest(args.data, work)
        out["images"] = images
        clean_proc, clean = serve(work / "clean")
        killed_proc, killed = serve(work / "killed")
        try:
            t0 = time.monotonic()
            first = _finish(_import(clean, manifest, work / "clean.csv", work / "clean.state"))
            clean_s = time.monotonic() - t0
            again = _finish(_import(clean, manifest, work / "again.csv", work / "clean.state"))
            proc = _import(killed, manifest, work / "killed.csv", work / "killed.state")
            time.sleep(clean_s / 2)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            resumed = _finish(_import(killed, manifest, work / "resumed.csv", work / "killed.state"))
            rows = list(csv.DictReader(open(work / "clean.csv")))
            ids = sorted({r["subject_id"] for r in rows})
            a, b = _store(clean, ids), _store(killed, ids)
        finally:
            for p in (clean_proc, killed_proc):
                p.terminate()
                p.wait(timeout=60)
    per_set: dict = {}
    for r in rows:
        s = per_set.setdefault(r["meta_set"], {"modality": r["modality"], "images": 0, "enrolled": 0, "failed": Counter()})
        s["images"] += 1
        if r["outcome"] == "enrolled":
            s["enrolled"] += 1
        elif r["outcome"] == "failed":
            s["failed"][r["reason"]] += 1
    for s in per_set.values():
        s["fte"] = round(sum(s["failed"].values()) / s["images"], 4)
        s["failed"] = dict(s["failed"].most_common())
    out.update({
        "clean": first, "again": again, "killed_after_s": round(clean_s / 2, 1),
        "resumed": resumed, "subjects_clean": len(a), "subjects_killed_and_resumed": len(b),
        "stores_equal": a == b, "differences": sorted(set(a) ^ set(b) | {k for k in a if k in b and a[k] != b[k]})[:20],
        "counts_match": first["enrolled"] + first["failed"] == images == first["records"],
        "per_set": per_set,
    })
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("images", "counts_match", "stores_equal", "subjects_clean")}))
    return 0 if out["stores_equal"] and out["counts_match"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
