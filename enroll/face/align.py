"""dlib's face chip: the 150x150 aligned crop the dlib ResNet was trained on.

Reproduces ``dlib::get_face_chip_details(det, 150, 0.25)`` followed by
``extract_image_chip``: a similarity transform from dlib's mean 5-point face
(padded by 25%) to the landmarks gives angle and scale; dlib's chip rectangle is
``centered_drect(tform(size/2), size*s, size*s)``, which is one pixel narrower
than size*s, so the chip-to-image scale is ``(size*s - 1) / (size - 1)`` about the
chip centre ``(size-1)/2``. Pixels are sampled bilinearly in float64 and
truncated to uint8, zero outside the image. When the face is more than twice
the chip's size, the image is first shrunk by area averaging (dlib uses an image
pyramid there) so that bilinear sampling does not alias.
"""

from __future__ import annotations

import cv2
import numpy as np

from enroll.face.landmarks import similarity_transform

CHIP_SIZE = 150
CHIP_PADDING = 0.25
# dlib's mean positions of the 5 points in a unit face box (dlib/image_transforms/interpolation.h)
_MEAN_FACE_5 = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ]
)


def chip_transform(points: np.ndarray, size: int = CHIP_SIZE, padding: float = CHIP_PADDING) -> np.ndarray:
    """The 2x3 affine map from chip pixel coordinates to image coordinates."""
    template = (padding + _MEAN_FACE_5) / (2 * padding + 1) * size
    m, t = similarity_transform(template, points)
    p = m @ np.array([1.0, 0.0])
    angle = np.arctan2(p[1], p[0])
    scale = np.hypot(p[0], p[1])
    centre = m @ np.array([size / 2.0, size / 2.0]) + t
    k = (size * scale - 1) / (size - 1)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) * k
    offset = centre - rot @ np.array([(size - 1) / 2.0, (size - 1) / 2.0])
    return np.concatenate([rot, offset[:, None]], axis=1)


def _bilinear(img: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    x0 = np.floor(xs).astype(np.int64)
    y0 = np.floor(ys).astype(np.int64)
    ok = (x0 >= 0) & (y0 >= 0) & (x0 + 1 < w) & (y0 + 1 < h)
    x0c, y0c = np.clip(x0, 0, w - 2), np.clip(y0, 0, h - 2)
    fx = (xs - x0)[..., None]
    fy = (ys - y0)[..., None]
    f = img.astype(np.float64)
    tl, tr = f[y0c, x0c], f[y0c, x0c + 1]
    bl, br = f[y0c + 1, x0c], f[y0c + 1, x0c + 1]
    val = (1 - fy) * ((1 - fx) * tl + fx * tr) + fy * ((1 - fx) * bl + fx * br)
    out = val.astype(np.uint8)
    out[~ok] = 0
    return out


def extract_chip(rgb: np.ndarray, points: np.ndarray, size: int = CHIP_SIZE) -> np.ndarray:
    """Cut the aligned (size, size, 3) uint8 chip for the 5 dlib landmarks."""
    a = chip_transform(points, size)
    shrink = float(np.hypot(a[0, 0], a[1, 0])) / 2.0  # image pixels per chip pixel, halved
    if shrink > 1.0:
        h, w = rgb.shape[:2]
        rgb = cv2.resize(rgb, (max(1, round(w / shrink)), max(1, round(h / shrink))), interpolation=cv2.INTER_AREA)
        sx, sy = rgb.shape[1] / w, rgb.shape[0] / h
        a = np.diag([sx, sy]) @ a
        # pixel centres stay aligned: x' = (x + 0.5) * s - 0.5
        a[:, 2] += np.array([0.5 * sx - 0.5, 0.5 * sy - 0.5])
    gx, gy = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64))
    xs = a[0, 0] * gx + a[0, 1] * gy + a[0, 2]
    ys = a[1, 0] * gx + a[1, 1] * gy + a[1, 2]
    return _bilinear(rgb, xs, ys)
