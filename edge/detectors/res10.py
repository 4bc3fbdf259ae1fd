"""OpenCV's res10 SSD face detector through ``cv2.dnn`` (the seed tutorial's)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge.assets import RES10_CAFFEMODEL, RES10_PROTOTXT, checked_asset
from edge.detectors.base import Detection, FaceDetector, clip_box

# The res10 SSD was trained on BGR images with this per-channel mean subtracted, at 300x300.
# Its prior boxes follow the input size, so it also runs on smaller inputs: cheaper, but it then
# misses small faces (region detection feeds it a crop around one face, where that is fine).
RES10_MEAN_BGR = (104.0, 177.0, 123.0)
RES10_INPUT_PX = 300


class Res10Detector(FaceDetector):
    """res10 on whole frames (300 px input) or on crops around a known face (smaller)."""

    name = "res10"

    def __init__(
        self,
        confidence: float = 0.5,
        min_face_px: int = 0,
        assets_dir: Path | None = None,
        min_visible: float = 0.0,
        input_px: int = RES10_INPUT_PX,
    ) -> None:
        if input_px < 64:
            raise ValueError(f"res10 input {input_px} px is too small to find faces (>= 64)")
        prototxt = checked_asset(RES10_PROTOTXT, assets_dir)
        caffemodel = checked_asset(RES10_CAFFEMODEL, assets_dir)
        self.net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
        self.confidence = confidence
        self.min_face_px = min_face_px
        self.min_visible = min_visible
        self.input_size = (input_px, input_px)

    def detect(self, frame_bgr: np.ndarray) -> list[Detection]:
        height, width = frame_bgr.shape[:2]
        blob = cv2.dnn.blobFromImage(
            cv2.resize(frame_bgr, self.input_size), 1.0, self.input_size, RES10_MEAN_BGR
        )
        self.net.setInput(blob)
        raw = self.net.forward()  # 1 x 1 x N x 7: _, _, score, x1, y1, x2, y2 (relative)
        found: list[Detection] = []
        for row in raw[0, 0]:
            score = float(row[2])
            if score < self.confidence:
                continue
            raw = (
                float(row[3] * width),
                float(row[4] * height),
                float(row[5] * width),
                float(row[6] * height),
            )
            box = clip_box(*raw, width, height, self.min_visible)
            if box is None:
                continue
            if min(box[2] - box[0], box[3] - box[1]) < self.min_face_px:
                continue
            found.append(Detection(box, score, raw))
        found.sort(key=lambda d: d.score, reverse=True)
        return found


def make_res10(
    confidence: float,
    min_face_px: int,
    assets_dir: Path | None,
    num_threads: int | None,
    min_visible: float = 0.0,
    input_px: int = RES10_INPUT_PX,
) -> FaceDetector:
    """The registry's factory of kind ``res10``, on whole frames or (with a smaller ``input_px``)
    on the regions around known faces."""
    # cv2.dnn's thread count is process-wide (cv2.setNumThreads), so it is not set per net here.
    return Res10Detector(
        confidence=confidence,
        min_face_px=min_face_px,
        assets_dir=assets_dir,
        min_visible=min_visible,
        input_px=input_px,
    )
