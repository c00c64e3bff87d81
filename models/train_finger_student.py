"""Distil LEADER into the small student network of ``models/finger_student.py``.

Usage (PyTorch is a training-only dependency: ``pip install -e ".[train]"``)::

    python -m models.train_finger_student --minutes 60 --out models/weights/finger_student_v1.npz

1. Teacher maps: every training impression goes through the service's own preprocessing
   (decode, segment, the finger's box on a canvas of multiples of 32) and LEADER; its
   position heat map, direction and type are kept (``.bench-cache/student``).
2. Training: random 128 x 128 crops, the eight flips and transposes of the square (with
   the directions turned to match) and grey-level changes (gain, offset, gamma, noise);
   loss = soft binary cross-entropy on the position map (weighted towards minutiae),
   squared error of (cos, sin) of the direction and cross-entropy of the type, both
   weighted by the teacher's position map.
3. The weights go to an ``.npz`` that ``models.build`` turns into an ONNX graph.

Training data: the FCJ fingers at even positions of the sorted folder list and FVC2000
DB1-DB3. FCJ's odd fingers, FVC2002 DB1 and FVC2000 DB4 are never seen, so accuracy on
them measures the student on unseen impressions (see the card).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from models import finger_student

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fingerprint"
CACHE = Path(__file__).resolve().parents[1] / ".bench-cache" / "student"
TRAIN_FVC = ("fvc2000_db1_b", "fvc2000_db2_b", "fvc2000_db3_b")
CROP = 128


def training_images(root: Path = DATA) -> list[Path]:
    """The impressions the student learns from (never the held-out ones)."""
    fcj = sorted(p for p in (root / "fcj2020_dev").iterdir() if p.is_dir())[::2]
    folders = fcj + [p for s in TRAIN_FVC for p in sorted((root / s).iterdir()) if p.is_dir()]
    return [f for d in folders for f in sorted(d.iterdir()) if f.suffix.lower() in (".png", ".tif", ".bmp")]


def teacher_maps(images: list[Path], poses: int = 0) -> list[dict[str, np.ndarray]]:
    """LEADER's maps on each impression's network input, cached per file.

    Args:
        images: the training impressions.
        poses: extra maps per impression, each of the input turned by a random angle
            (+-35 degrees) and scaled by a random factor (0.93-1.07) and LEADER run
            again on it: the flips of training only cover the square's 8 symmetries,
            and a teacher run on the moved impression gives directions and positions
            as LEADER itself finds them there, not as interpolated.
    """
    from enroll.finger.minutiae import network_input
    from enroll.finger.pipeline import LEADER_FILE, grey_500dpi
    from enroll.finger.segment import segment
    from enroll.onnx_model import OnnxModel
    from models.paths import model_dir

    CACHE.mkdir(parents=True, exist_ok=True)
    teacher = None  # loaded only when a map is missing from the cache
    out = []
    for i, path in enumerate(images):
        stem = f"{path.parent.parent.name}__{path.parent.name}__{path.stem}"
        for pose in range(poses + 1):
            cached = CACHE / (f"{stem}.npz" if pose == 0 else f"{stem}__pose{pose}.npz")
            if not cached.exists():
                teacher = teacher or OnnxModel(model_dir() / LEADER_FILE, threads=1)
                grey = grey_500dpi(path.read_bytes())
                canvas, _ = network_input(grey, segment(grey))
                if pose:
                    rng = np.random.default_rng([i, pose])
                    canvas = _moved(canvas, rng.uniform(-35, 35), rng.uniform(0.93, 1.07))
                maps = next(iter(teacher.run(canvas[None, :, :, None]).values()))[0]
                np.savez(cached, canvas=canvas.astype(np.uint8), pos=maps[..., 0].astype(np.float16),
                         dir=maps[..., 1].astype(np.float16), typ=maps[..., 2].astype(np.float16))
            with np.load(cached) as z:
                out.append({k: z[k] for k in z.files})
        if (i + 1) % 100 == 0:
            print(f"teacher maps: {i + 1}/{len(images)} impressions", flush=True)
    return out


def _moved(canvas: np.ndarray, turn: float, scale: float) -> np.ndarray:
    """The canvas turned by ``turn`` degrees (counter-clockwise) and scaled about its
    centre onto a canvas (multiples of 32) large enough to hold all of it, filled with
    its background grey."""
    import cv2

    h, w = canvas.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), turn, scale)
    corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], np.float64) @ m.T
    span = corners.max(axis=0) - corners.min(axis=0)
    nw, nh = (int(-(-v // 32) * 32) for v in span)
    m[:, 2] += (nw - w) / 2, (nh - h) / 2
    return cv2.warpAffine(canvas, m, (nw, nh), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=float(canvas[0, 0])).astype(np.float32)


def _dihedral(arrays: list[np.ndarray], cos: np.ndarray, sin: np.ndarray, k: int):
    """One of the square's 8 symmetries applied to maps (H, W) and to the direction.

    A direction is counter-clockwise from +x with y down, i.e. the image vector
    (cos, -sin): a left-right flip negates cos, an up-down flip negates sin, a transpose
    swaps the image vector's axes: (cos, sin) -> (-sin, -cos).
    """
    if k & 1:
        arrays, cos = [a[:, ::-1] for a in arrays], -cos[:, ::-1]
        sin = sin[:, ::-1]
    if k & 2:
        arrays, sin = [a[::-1] for a in arrays], -sin[::-1]
        cos = cos[::-1]
    if k & 4:
        arrays = [a.T for a in arrays]
        cos, sin = -sin.T, -cos.T
    return arrays, cos, sin


def batch(samples: list[dict], n: int, rng: np.random.Generator, crop: int = CROP):
    """n augmented crops: (grey, pos, cos, sin, typ) float32 arrays of shape (n, 1, crop, crop)."""
    out = [[] for _ in range(5)]
    for _ in range(n):
        s = samples[rng.integers(len(samples))]
        h, w = s["canvas"].shape
        y, x = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
        win = (slice(y, y + crop), slice(x, x + crop))
        theta = s["dir"][win].astype(np.float32)
        (grey, pos, typ), cos, sin = _dihedral(
            [s["canvas"][win].astype(np.float32), s["pos"][win].astype(np.float32), s["typ"][win].astype(np.float32)],
            np.cos(theta), np.sin(theta), int(rng.integers(8)))
        gamma = math.exp(rng.uniform(-0.35, 0.35))
        grey = 255.0 * (np.clip(grey, 0, 255) / 255.0) ** gamma
        if rng.random() < 0.3:  # dry, broken ridges: dark pixels dropped to the background at random
            drop = rng.random(grey.shape) < rng.uniform(0.1, 0.5)
            grey = np.where(drop, np.maximum(grey, np.percentile(grey, 90)), grey)
        grey = grey * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20) + rng.normal(0, rng.uniform(0, 6), grey.shape)
        for lst, a in zip(out, (np.clip(grey, 0, 255), pos, cos, sin, typ)):
            lst.append(np.ascontiguousarray(a, np.float32)[None])
    return [np.stack(lst) for lst in out]


def loss_fn(pred, pos, cos, sin, typ):
    """Position: soft BCE weighted 1 + 10 x teacher position; direction and type weighted by it."""
    import torch.nn.functional as F

    w = pos
    lpos = (F.binary_cross_entropy_with_logits(pred[:, 0:1], pos, reduction="none") * (1 + 10 * w)).mean()
    norm = w.sum().clamp_min(1.0)
    ldir = (((pred[:, 1:2] - cos) ** 2 + (pred[:, 2:3] - sin) ** 2) * w).sum() / norm
    ltyp = (F.binary_cross_entropy_with_logits(pred[:, 3:4], typ, reduction="none") * w).sum() / norm
    return lpos + ldir + ltyp, (lpos.item(), ldir.item(), ltyp.item())


def train(samples: list[dict], minutes: float, batch_size: int = 16, lr: float = 2e-3, seed: int = 0,
          init: Path | None = None, widths: tuple[int, ...] | None = None, crop: int = CROP):
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    start_weights = None
    if init is not None:  # go on from earlier weights, widened if asked
        with np.load(init) as z:
            start_weights = {k: z[k] for k in z.files}
        widths = widths or finger_student.widths_of(start_weights)
        for width in widths[len(finger_student.widths_of(start_weights)):]:  # coarser levels
            start_weights = finger_student.deepen(start_weights, width, seed)
        start_weights = finger_student.widen(start_weights, widths, seed)
    net = finger_student.torch_module(widths or finger_student.V1_WIDTHS)
    if start_weights is not None:
        net.load_numpy_weights(start_weights)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    start, step, log = time.monotonic(), 0, []
    budget = minutes * 60
    while (elapsed := time.monotonic() - start) < budget:
        for group in opt.param_groups:  # cosine decay over the time budget
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(1.0, elapsed / budget)))
        tensors = [torch.from_numpy(a) for a in batch(samples, batch_size, rng, crop)]
        loss, parts = loss_fn(net(tensors[0]), *tensors[1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        log.append(parts)
        if step % 50 == 0:
            m = np.mean(log[-50:], axis=0)
            print(f"step {step} {elapsed / 60:.1f} min lr {opt.param_groups[0]['lr']:.2e} "
                  f"pos {m[0]:.4f} dir {m[1]:.4f} typ {m[2]:.4f}", flush=True)
    return net, step


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=60.0, help="training time budget")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--init", type=Path, help="start from these weights (.npz) instead of at random")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (cosine decay over the budget)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--widths", type=lambda v: tuple(int(x) for x in v.split(",")),
                   help="channels of each level, e.g. 36,72,144,192 (default v1's, or --init's "
                        "widened, and deepened by a fifth coarser level, to these)")
    p.add_argument("--crop", type=int, default=CROP, help="training crop side, a multiple of 32")
    p.add_argument("--poses", type=int, default=0,
                   help="extra teacher maps per impression, LEADER run on it turned and scaled")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    images = training_images()
    samples = teacher_maps(images, args.poses)
    print(f"{len(samples)} teacher maps of {len(images)} impressions", flush=True)
    net, steps = train(samples, args.minutes, args.batch, args.lr, args.seed, args.init, args.widths, args.crop)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **net.numpy_weights())
    print(f"{steps} steps; weights written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
