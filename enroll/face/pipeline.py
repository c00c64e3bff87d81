"""Image bytes -> face template: decode, detect, select and gate, landmarks, align, embed.

Each stage hands a frozen value to the next. The dlib ResNet was trained on
chips aligned with dlib's 5-point predictor inside dlib's HOG detector boxes, so
the MTCNN detection is turned into a box of that convention (fitted from the
MTCNN landmarks, constants below) before the predictor runs.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from enroll.face.align import extract_chip
from enroll.face.detect import DetectorParams, FaceDetector
from enroll.face.landmarks import LandmarkPredictor, box_from_mean_shape, grey_for_landmarks
from enroll.face.quality import FaceQuality, FaceQualityConfig, assess, check_image, select_face
from enroll.image import DecodedImage, decode_image
from enroll.onnx_model import OnnxModel
from matcher.errors import QualityError, TambuaError
from matcher.face.template import EmbeddingTemplate
from enroll.model_files import model_dir as default_model_dir

log = logging.getLogger(__name__)

FACE_MODEL_ID = "face/dlib-resnet-v1"
EMBED_FILE = "face_embed_dlib_resnet_v1.onnx"
LANDMARK_FILE = "face_landmarks_dlib_5.npz"
# Mean MTCNN landmarks in dlib HOG-detector box coordinates (box = unit square), fitted by
# least squares on 693 LFW images where both detectors found the face; the box found this
# way deviates from dlib's by ~5% of its width (std), which the 5-point cascade absorbs.
_MTCNN_IN_DLIB_BOX = np.array(
    [[0.3313, 0.3116], [0.7333, 0.3040], [0.5335, 0.5415], [0.3613, 0.7475], [0.7125, 0.7422]]
)


@dataclass(frozen=True)
class FaceConfig:
    """Configuration of face extraction.

    Attributes:
        max_detect_side: photos are shrunk so their longer side is at most this
            before detection (detection cost grows with pixels; faces stay large enough).
        thorough_detect_side: when that finds no face, a photo is searched again shrunk
            only to this, for faces down to the detector's ``min_face`` whatever the
            photo's size (a passport photo on a scanned form or ID card).
        detector: MTCNN parameters.
        pad_retry: when no face is found, detect again with this fraction of the image's
            longer side added as a plain border on every side (0: never): a tightly
            cropped portrait (the face filling the frame, as in old ID photos) has no
            margin for the detector's windows or the alignment chip (model card:
            failure to enrol on tight crops).
        flip_average: embed the chip and its mirror image and average the two
            (test-time augmentation; measured on LFW in the model card).
        quality: quality gate thresholds.
    """

    max_detect_side: int = 640
    thorough_detect_side: int = 2048
    pad_retry: float = 0.5
    flip_average: bool = True
    detector: DetectorParams = DetectorParams()
    quality: FaceQualityConfig = FaceQualityConfig()

    def __post_init__(self) -> None:
        if not 64 <= self.max_detect_side <= self.thorough_detect_side:
            raise ValueError("need 64 <= max_detect_side <= thorough_detect_side")
        if not 0 <= self.pad_retry <= 2:
            raise ValueError("pad_retry must be within 0..2")


@dataclass(frozen=True)
class AlignedFace:
    """A face ready for embedding: the 150x150 RGB chip and its measured quality."""

    chip: np.ndarray
    landmarks: np.ndarray  # (5, 2) dlib points in original-image pixels
    quality: FaceQuality


def _pad(rgb: np.ndarray, fraction: float) -> np.ndarray:
    """The image inside a plain border of ``fraction`` of its longer side, in the mean
    colour of its own edge (a uniform background, as a photo studio's, adds no edges the
    detector could take for a face)."""
    h, w = rgb.shape[:2]
    m = max(1, round(fraction * max(h, w)))
    edge = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).mean(axis=0)
    return cv2.copyMakeBorder(rgb, m, m, m, m, cv2.BORDER_CONSTANT, value=[float(v) for v in edge])


class FaceExtractor:
    """Face template extraction. Thread-safe; one instance serves all requests.

    Args:
        model_dir: folder of built models (default ``models/build`` or ``$TAMBUA_MODEL_DIR``).
        config: extraction configuration.
        threads: onnxruntime intra-op threads per call.
    """

    model_id = FACE_MODEL_ID

    def __init__(self, model_dir: Path | None = None, config: FaceConfig = FaceConfig(), threads: int = 1) -> None:
        d = Path(model_dir) if model_dir else default_model_dir()
        self.config = config
        self._detector = FaceDetector(d, config.detector, threads)
        self._landmarks = LandmarkPredictor(d / LANDMARK_FILE)
        self._embedder = OnnxModel(d / EMBED_FILE, threads)

    def align(self, image: DecodedImage) -> AlignedFace:
        """Detect, gate and align the one face of a decoded image (with a margin added
        when a tight crop shows none: ``FaceConfig.pad_retry``).

        Raises:
            QualityError: the capture fails a quality gate (reason says which).
        """
        rgb = image.rgb
        check_image(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), self.config.quality)
        cfg = self.config
        # What the first search skips, tried only when it finds nothing: a tight crop gets
        # a margin (the detector needs some background around a face); a small face on a
        # large scan (an ID card, a form) a finer search of a larger copy.
        attempts, tried = [lambda: self._align(rgb)], []
        if cfg.pad_retry:
            attempts.append(lambda: self._align(_pad(rgb, cfg.pad_retry)))
            tried.append("with a margin added around it (a tight crop)")
        h, w = rgb.shape[:2]
        small_side = min(h, w) / max(1.0, max(h, w) / cfg.max_detect_side)
        if max(h, w) > cfg.max_detect_side or cfg.detector.min_face_fraction * small_side > cfg.detector.min_face:
            side = min(max(h, w), cfg.thorough_detect_side)
            attempts.append(lambda: self._align(rgb, side, thorough=True))
            tried.append(f"searched for faces down to {cfg.detector.min_face * max(h, w) / side:.0f} px "
                         "(a small photo on a large scan)")
        for attempt in attempts:
            try:
                return attempt()
            except QualityError as e:
                if e.reason != "NO_FACE":
                    raise
        raise QualityError("no face found in the image" + "".join(f", nor {t}" for t in tried), "NO_FACE")

    def _align(self, rgb: np.ndarray, max_side: int = 0, thorough: bool = False) -> AlignedFace:
        h, w = rgb.shape[:2]
        scale = max(1.0, max(h, w) / (max_side or self.config.max_detect_side))
        small = rgb if scale == 1.0 else cv2.resize(
            rgb, (round(w / scale), round(h / scale)), interpolation=cv2.INTER_AREA
        )
        found = self._detector.detect(small, 0.0 if thorough else None)
        det = select_face(found, (small.shape[1], small.shape[0]), self.config.quality)
        # The landmark cascade samples pixels within about a box width of the face: work on
        # that region only (grey conversion of a whole photo costs more than the cascade).
        x1, y1, x2, y2 = (v * scale for v in det.box)
        margin = x2 - x1
        ox, oy = max(0, int(x1 - margin)), max(0, int(y1 - margin))
        region = rgb[oy : int(y2 + margin) + 1, ox : int(x2 + margin) + 1]
        grey_lm = grey_for_landmarks(region)
        offset = np.array([ox, oy], np.float64)
        box = box_from_mean_shape(_MTCNN_IN_DLIB_BOX, det.points * scale - offset)
        landmarks = self._landmarks.predict(grey_lm, box)
        # Second pass from the box the predictor's own mean shape implies: removes most of
        # the offset between MTCNN's and dlib's box conventions (+0.3% LFW accuracy).
        landmarks = self._landmarks.predict(grey_lm, self._landmarks.box_for(landmarks)) + offset
        chip = extract_chip(rgb, landmarks)
        quality = assess(det, scale, chip, self.config.quality)
        return AlignedFace(chip, landmarks, quality)

    def embed(self, faces: list[AlignedFace]) -> np.ndarray:
        """Embed aligned faces in one batch; returns (N, 128) float32."""
        if not faces:
            return np.empty((0, 128), np.float32)
        batch = np.stack([f.chip for f in faces]).transpose(0, 3, 1, 2).astype(np.float32)
        if not self.config.flip_average:
            return self._embedder.run(batch)["embedding"]
        both = self._embedder.run(np.concatenate([batch, batch[..., ::-1]]))["embedding"]
        return (both[: len(faces)] + both[len(faces) :]) / 2

    def extract(self, data: bytes) -> EmbeddingTemplate:
        """Image bytes -> face template.

        Raises:
            ImageDecodeError: undecodable, truncated, empty or oversized image.
            QualityError: no face, several faces, too small, blurred, dark, bright, strong pose.
        """
        face = self.align(decode_image(data))
        return self._template(face, self.embed([face])[0])

    def extract_batch(self, items: list[bytes], workers: int | None = None) -> list[EmbeddingTemplate | TambuaError]:
        """Extract many images (bulk import): per-item result or error.

        Decoding, detection and alignment run on a thread pool (onnxruntime, OpenCV and
        most numpy work release the GIL); embeddings run in batches of 32.

        Args:
            items: encoded images.
            workers: threads for the per-image stages (default: all cores).

        Returns:
            One entry per input, in order: the template, or the error that item raised.
        """
        results: list[EmbeddingTemplate | TambuaError | None] = [None] * len(items)
        faces: list[tuple[int, AlignedFace]] = []

        def prepare(data: bytes) -> AlignedFace | TambuaError:
            try:
                return self.align(decode_image(data))
            except TambuaError as e:
                return e

        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            for i, out in enumerate(pool.map(prepare, items)):
                if isinstance(out, TambuaError):
                    results[i] = out
                else:
                    faces.append((i, out))
        log.info("face batch: %d images, %d aligned, %d rejected", len(items), len(faces), len(items) - len(faces))
        for start in range(0, len(faces), 32):
            chunk = faces[start : start + 32]
            vectors = self.embed([f for _, f in chunk])
            for (i, face), vec in zip(chunk, vectors):
                results[i] = self._template(face, vec)
        return results  # type: ignore[return-value]

    def _template(self, face: AlignedFace, vector: np.ndarray) -> EmbeddingTemplate:
        q = face.quality
        # The measures behind the score, for the data-quality report (after ISO/IEC 29794-5's
        # components: face size, sharpness, illumination, pose), not certified values.
        components = (("detection_score", round(q.detection_score, 4)), ("face_px", round(q.face_px, 1)),
                      ("sharpness", round(q.sharpness, 4)), ("brightness", round(q.brightness, 2)),
                      ("yaw", round(q.yaw, 2)))
        return EmbeddingTemplate(self.model_id, np.asarray(vector, np.float32), q.score, components)
