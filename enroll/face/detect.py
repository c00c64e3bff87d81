"""Face detection with the MTCNN cascade (P-Net, R-Net, O-Net) run by onnxruntime.

The cascade follows Zhang et al., "Joint Face Detection and Alignment using
Multi-task Cascaded Convolutional Networks" (2016): P-Net scans an image pyramid
for candidate windows, R-Net and O-Net re-score and refine them, O-Net also
gives five landmarks (eye centres, nose tip, mouth corners). Crops that reach
past the image border are zero-padded as in the original method, so faces
touching the border (tight crops) are still found.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from enroll.onnx_model import OnnxModel


@dataclass(frozen=True)
class DetectorParams:
    """MTCNN parameters (the published defaults).

    Attributes:
        min_face: smallest face side searched for, in pixels of the detection image
            (the paper's 20).
        min_face_fraction: and at least this fraction of the image's shorter side: in a
            640x480 photo faces under 34 px are not searched for (a person that far
            from the camera comes closer), and skipping the two finest pyramid levels
            halves the detection time; in a small legacy photo the fraction is a few
            pixels and ``min_face`` rules, so faces down to the 24 px gate are found.
        factor: pyramid scale step.
        thresholds: face-probability thresholds of P-Net, R-Net and O-Net.
    """

    min_face: int = 20
    min_face_fraction: float = 0.07
    factor: float = 0.709
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)

    def __post_init__(self) -> None:
        if self.min_face < 12 or not 0.1 < self.factor < 0.95:
            raise ValueError("min_face must be >= 12 and factor in (0.1, 0.95)")


@dataclass(frozen=True)
class Detection:
    """One detected face in image coordinates.

    Attributes:
        box: (x1, y1, x2, y2) float pixels, inclusive corners.
        score: O-Net face probability.
        points: (5, 2) landmarks: left eye, right eye (as seen), nose, mouth left, mouth right.
    """

    box: tuple[float, float, float, float]
    score: float
    points: np.ndarray

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0] + 1

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1] + 1


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, best first."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores)[::-1]
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        denom = np.minimum(area[i], area[rest]) if mode == "min" else area[i] + area[rest] - inter
        order = rest[inter / denom <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    out[:, 0] += reg[:, 0] * w
    out[:, 1] += reg[:, 1] * h
    out[:, 2] += reg[:, 2] * w
    out[:, 3] += reg[:, 3] * h
    return out


def _normalise(x: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW scaled as MTCNN was trained."""
    return ((x.astype(np.float32) - 127.5) * 0.0078125).transpose(0, 3, 1, 2)


def _crops(img: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Crop each (integer) box, zero-padding outside the image, resized to size x size."""
    h, w = img.shape[:2]
    out = np.empty((len(boxes), size, size, 3), np.uint8)
    for k, (x1, y1, x2, y2) in enumerate(np.trunc(boxes[:, :4]).astype(np.int64)):
        bw, bh = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
        patch = np.zeros((bh, bw, 3), np.uint8)
        sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, w - 1), min(y2, h - 1)
        if sx2 >= sx1 and sy2 >= sy1:
            patch[sy1 - y1 : sy2 - y1 + 1, sx1 - x1 : sx2 - x1 + 1] = img[sy1 : sy2 + 1, sx1 : sx2 + 1]
        out[k] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
    return out


class FaceDetector:
    """MTCNN face detector. Thread-safe: holds only immutable sessions and parameters."""

    def __init__(self, model_dir: Path, params: DetectorParams = DetectorParams(), threads: int = 1) -> None:
        self.params = params
        self._pnet = OnnxModel(model_dir / "face_detect_mtcnn_pnet.onnx", threads)
        self._rnet = OnnxModel(model_dir / "face_detect_mtcnn_rnet.onnx", threads)
        self._onet = OnnxModel(model_dir / "face_detect_mtcnn_onet.onnx", threads)

    def _stage1(self, img: np.ndarray, grid_offset: float, fraction: float) -> np.ndarray:
        p = self.params
        h, w = img.shape[:2]
        scale = 12.0 / max(p.min_face, fraction * min(h, w)) * grid_offset
        min_side = min(h, w) * scale
        found = []
        level = img
        while min_side >= 12:
            hs, ws = int(h * scale + 1), int(w * scale + 1)
            # Each level is shrunk from the previous one: area averaging of the full image
            # at every scale cost more than all the P-Net runs together.
            level = resized = cv2.resize(level, (ws, hs), interpolation=cv2.INTER_AREA)
            out = self._pnet.run(_normalise(resized[None]))
            prob, reg = out["prob"][0, 1], out["reg"][0]
            ys, xs = np.nonzero(prob >= p.thresholds[0])
            if ys.size:
                cells = np.stack([xs, ys], axis=1).astype(np.float32)
                q1 = np.floor((2 * cells + 1) / scale)
                q2 = np.floor((2 * cells + 12) / scale)
                boxes = np.concatenate(
                    [q1, q2, prob[ys, xs][:, None], reg[:, ys, xs].T], axis=1
                ).astype(np.float32)
                found.append(boxes[_nms(boxes[:, :4], boxes[:, 4], 0.5)])
            scale *= p.factor
            min_side *= p.factor
        if not found:
            return np.empty((0, 5), np.float32)
        boxes = np.concatenate(found)
        boxes = boxes[_nms(boxes[:, :4], boxes[:, 4], 0.7)]
        refined = _regress(boxes[:, :4], boxes[:, 5:9])
        return _square(np.concatenate([refined, boxes[:, 4:5]], axis=1))

    def detect(self, img: np.ndarray, min_face_fraction: float | None = None) -> list[Detection]:
        """Detect faces in an RGB uint8 image, largest first.

        P-Net sees the face only at the pyramid's discrete scales, and a face that
        falls between them can be missed. When nothing is found, the pyramid is
        run once more shifted by half a step (costs time on faceless images only).

        Args:
            img: (H, W, 3) uint8 RGB.
            min_face_fraction: instead of the parameters' (0: faces down to ``min_face``
                pixels whatever the image's size: a small photo on a large scan).

        Returns:
            Detections sorted by box area, largest first; empty when none.
        """
        fraction = self.params.min_face_fraction if min_face_fraction is None else min_face_fraction
        dets = self._detect(img, 1.0, fraction)
        return dets or self._detect(img, self.params.factor**0.5, fraction)

    def _detect(self, img: np.ndarray, grid_offset: float, fraction: float) -> list[Detection]:
        _, t2, t3 = self.params.thresholds
        boxes = self._stage1(img, grid_offset, fraction)
        if len(boxes):
            out = self._rnet.run(_normalise(_crops(img, boxes, 24)))
            score = out["prob"][:, 1]
            keep = score > t2
            boxes, reg = boxes[keep], out["reg"][keep]
            boxes[:, 4] = score[keep]
            pick = _nms(boxes[:, :4], boxes[:, 4], 0.7)
            boxes, reg = boxes[pick], reg[pick]
            boxes[:, :4] = _regress(boxes[:, :4], reg)
            boxes = _square(boxes)
        if not len(boxes):
            return []
        out = self._onet.run(_normalise(_crops(img, boxes, 48)))
        score = out["prob"][:, 1]
        keep = score > t3
        boxes, reg, lms = boxes[keep], out["reg"][keep], out["landmarks"][keep]
        boxes[:, 4] = score[keep]
        w = boxes[:, 2] - boxes[:, 0] + 1
        h = boxes[:, 3] - boxes[:, 1] + 1
        px = w[:, None] * lms[:, :5] + boxes[:, 0:1] - 1
        py = h[:, None] * lms[:, 5:] + boxes[:, 1:2] - 1
        points = np.stack([px, py], axis=2)
        boxes[:, :4] = _regress(boxes[:, :4], reg)
        pick = _nms(boxes[:, :4], boxes[:, 4], 0.7, mode="min")
        dets = [
            Detection(tuple(float(v) for v in boxes[i, :4]), float(boxes[i, 4]), points[i].astype(np.float32))
            for i in pick
        ]
        return sorted(dets, key=lambda d: d.width * d.height, reverse=True)
