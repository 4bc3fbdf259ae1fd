"""Detection on a smaller picture of the frame, boxes mapped back to the frame's pixels."""

from __future__ import annotations

import cv2
import numpy as np

from edge.detectors.base import Detection, FaceDetector, clip_box


def rescale_detections(
    detections: list[Detection],
    from_size: tuple[int, int],
    to_size: tuple[int, int],
    min_face_px: int = 0,
) -> list[Detection]:
    """Detections in an image of ``from_size`` (width, height) -> pixels of the same scene at
    ``to_size``, clipped; faces narrower than ``min_face_px`` there are dropped. For detecting on
    a downscaled frame or on picamera2's low-resolution stream of the same request."""
    (from_w, from_h), (to_w, to_h) = from_size, to_size
    sx, sy = to_w / from_w, to_h / from_h
    mapped: list[Detection] = []
    for det in detections:
        x1, y1, x2, y2 = det.box
        box = clip_box(x1 * sx, y1 * sy, x2 * sx, y2 * sy, to_w, to_h)
        if box is None or min(box[2] - box[0], box[3] - box[1]) < min_face_px:
            continue
        rx1, ry1, rx2, ry2 = det.context_box
        mapped.append(Detection(box, det.score, (rx1 * sx, ry1 * sy, rx2 * sx, ry2 * sy)))
    return mapped


class ScaledDetector(FaceDetector):
    """Runs ``inner`` on the frame downscaled to ``detect_width`` and maps its boxes back.

    Detection cost falls with the pixel count while the face crop keeps full resolution. The
    minimum face size is checked here, in full-resolution pixels (build ``inner`` with
    ``min_face_px=0``). Frames already at most ``detect_width`` wide are used as they are.
    """

    def __init__(self, inner: FaceDetector, detect_width: int, min_face_px: int = 0) -> None:
        if detect_width < 16:
            raise ValueError(f"detect_width {detect_width} is too small to find faces")
        self.inner = inner
        self.name = inner.name
        self.detect_width = detect_width
        self.min_face_px = min_face_px

    def detect(self, frame_bgr: np.ndarray) -> list[Detection]:
        height, width = frame_bgr.shape[:2]
        if width <= self.detect_width:
            small = frame_bgr
        else:
            small_h = max(1, int(round(height * self.detect_width / width)))
            small = cv2.resize(
                frame_bgr, (self.detect_width, small_h), interpolation=cv2.INTER_AREA
            )
        return self.detect_on(small, (width, height))

    def detect_frame(
        self, frame_bgr: np.ndarray, detect_bgr: np.ndarray | None = None
    ) -> list[Detection]:
        """With ``detect_bgr`` (a low-resolution picture of the same scene) that picture is
        searched as it is (``detect_on``), else ``frame_bgr`` downscaled (``detect``)."""
        if detect_bgr is None:
            return self.detect(frame_bgr)
        height, width = frame_bgr.shape[:2]
        return self.detect_on(detect_bgr, (width, height))

    def reset(self) -> None:
        """The inner detector forgets what it saw."""
        self.inner.reset()

    def detect_on(self, detect_bgr: np.ndarray, frame_size: tuple[int, int]) -> list[Detection]:
        """Detect on an already small image of the same scene (e.g. picamera2's lores stream)
        and return boxes in pixels of the full frame of ``frame_size`` (width, height)."""
        small_h, small_w = detect_bgr.shape[:2]
        found = rescale_detections(
            self.inner.detect(detect_bgr), (small_w, small_h), frame_size, self.min_face_px
        )
        found.sort(key=lambda d: d.score, reverse=True)
        return found
