"""Face extraction speed on one core: ``python -m bench.face_speed --json OUT``.

Measures, in one run, a 640x480 JPEG photo with one face (an LFW image scaled
into the frame): the whole ``extract`` (decode + detect + align + embed) one by
one, the stages separately, and the batch entry point per face.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

DEFAULT_FACE = Path(__file__).resolve().parents[2] / "shared/data/face/lfw_dev/lfw/Abel_Pacheco/Abel_Pacheco_0001.jpg"


def photo_640x480(face_path: Path = DEFAULT_FACE) -> bytes:
    """A 640x480 JPEG with the face image scaled to 480 px high in the middle."""
    face = Image.open(face_path).convert("RGB").resize((480, 480), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (640, 480), (120, 120, 120))
    canvas.paste(face, (80, 0))
    buf = io.BytesIO()
    canvas.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _times_ms(fn, repeat: int) -> list[float]:
    for _ in range(5):  # warm-up: first runs pay allocation and cache misses
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return times


def _median_ms(fn, repeat: int) -> float:
    return statistics.median(_times_ms(fn, repeat))


def measure(repeat: int = 50, batch: int = 16) -> dict:
    from enroll.face.pipeline import FaceExtractor
    from enroll.image import decode_image

    fx = FaceExtractor(threads=1)
    data = photo_640x480()
    img = decode_image(data)
    face = fx.align(img)
    single_times = _times_ms(lambda: fx.extract(data), repeat)
    single = statistics.median(single_times)
    batch_ms = _median_ms(lambda: fx.extract_batch([data] * batch), max(3, repeat // 5)) / batch
    small = img.rgb
    return {
        "image": "640x480 JPEG, one face",
        "threads": 1,
        "extract_ms_median": single,
        "extract_ms_min": min(single_times),
        "decode_ms_median": _median_ms(lambda: decode_image(data), repeat),
        "detect_ms_median": _median_ms(lambda: fx._detector.detect(small), repeat),
        "align_ms_median": _median_ms(lambda: fx.align(img), repeat),
        "embed_ms_median": _median_ms(lambda: fx.embed([face]), repeat),
        "batch_size": batch,
        "batch_extract_ms_per_face": batch_ms,
        "batch_speedup": single / batch_ms,
        "embedding_norm": float(np.linalg.norm(fx.extract(data).vector)),
    }


def speed_cli(doc: str, measure_fn, repeat: int, argv: list[str] | None = None) -> int:
    """The shared ``--json OUT [--repeat N]`` command line of the speed tools."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--repeat", type=int, default=repeat)
    args = p.parse_args(argv)
    result = measure_fn(args.repeat)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    return speed_cli(__doc__, measure, 50, argv)


if __name__ == "__main__":
    raise SystemExit(main())
