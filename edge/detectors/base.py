"""What every face detector shares: the ``Detection`` it returns, the ``FaceDetector`` protocol
(every detector subclasses it: ``detect`` to write, ``detect_frame``, the one call the pipeline
makes, and ``reset`` with defaults to override) and box helpers (``clip_box``, ``iou``).

Every detector returns boxes in pixels of the frame it was given, clipped to it, whatever
resolution it ran at internally, together with the detector's own unclipped box (``raw``): the
context crop of the liveness model is cut around that one, as its training frames were, since a
box clipped by the frame edge moves the crop's centre and scale (on a replay that fills the
picture the pretrained model's verdict flips with it).
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edge.preprocess import Box, FloatBox


@dataclass(frozen=True)
class Detection:
    box: Box  # clipped to the frame, whole pixels
    score: float
    raw: FloatBox | None = None  # the detector's box before clipping (frame pixels)

    @property
    def context_box(self) -> FloatBox:
        """The box a context crop is cut around: the unclipped one where the detector gave it."""
        return self.raw if self.raw is not None else self.box

    def shifted(self, dx: int, dy: int) -> Detection:
        """The same detection in a frame whose origin lies at (-dx, -dy) of this one's."""
        x1, y1, x2, y2 = self.box
        raw = None
        if self.raw is not None:
            rx1, ry1, rx2, ry2 = self.raw
            raw = (rx1 + dx, ry1 + dy, rx2 + dx, ry2 + dy)
        return Detection((x1 + dx, y1 + dy, x2 + dx, y2 + dy), self.score, raw)

    @property
    def area(self) -> int:
        x1, y1, x2, y2 = self.box
        return (x2 - x1) * (y2 - y1)


class FaceDetector(Protocol):
    """A face detector. Every detector subclasses this explicitly, so that it states what it
    does: it must write ``detect``; ``detect_frame`` and ``reset`` have defaults for a stateless
    detector that searches only the full frame, and a detector that can do more overrides them.
    """

    name: str

    @abstractmethod
    def detect(self, frame_bgr: np.ndarray) -> list[Detection]:
        """All faces above the detector's confidence, best first."""

    def detect_frame(
        self, frame_bgr: np.ndarray, detect_bgr: np.ndarray | None = None
    ) -> list[Detection]:
        """Faces in pixels of ``frame_bgr``. ``detect_bgr`` is a low-resolution picture of the
        same scene (picamera2's lores stream of the same request), for detectors that can search
        it (``ScaledDetector``, ``RegionDetector``); by default it is not used and ``frame_bgr``
        is searched."""
        return self.detect(frame_bgr)

    def reset(self) -> None:
        """Forget what earlier frames showed (a new clip is a new scene). By default there is
        nothing to forget; a stateful detector (``RegionDetector``) overrides it."""
        return None  # a body, so that type checkers take it as a default, not an abstract member


def clip_box(
    x1: float,
    y1: float,
    x2: float,
    y2: float,
    width: int,
    height: int,
    min_visible: float = 0.0,
) -> Box | None:
    """Round and clip a box to the frame; None when nothing of it is left, or when less than
    ``min_visible`` of the detector's box area lies inside the frame.

    A face cut by the frame edge cannot be judged: the liveness model learnt whole faces, and
    res10 reports chins and shirts below the frame edge as faces at 0.99 (seen on the sample
    clips), so a door ignores such boxes instead of voting on them.
    """
    bx1, by1 = max(0, int(round(x1))), max(0, int(round(y1)))
    bx2, by2 = min(width, int(round(x2))), min(height, int(round(y2)))
    if bx2 <= bx1 or by2 <= by1:
        return None
    if min_visible > 0.0:
        full = max(x2 - x1, 1e-6) * max(y2 - y1, 1e-6)
        if (bx2 - bx1) * (by2 - by1) < min_visible * full:
            return None
    return (bx1, by1, bx2, by2)


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one x1, y1, x2, y2 box with each of ``boxes`` (N, 4)."""
    ix1 = np.maximum(box[0], boxes[:, 0])
    iy1 = np.maximum(box[1], boxes[:, 1])
    ix2 = np.minimum(box[2], boxes[:, 2])
    iy2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix2 - ix1, 0.0, None) * np.clip(iy2 - iy1, 0.0, None)
    area = max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0.0, None) * np.clip(
        boxes[:, 3] - boxes[:, 1], 0.0, None
    )
    union = area + areas - inter
    return np.where(union > 0.0, inter / np.where(union > 0.0, union, 1.0), 0.0)


def box_iou(a: FloatBox, b: FloatBox) -> float:
    """``iou`` of two single boxes."""
    return float(iou(np.asarray(a, dtype=np.float64), np.asarray([b], dtype=np.float64))[0])
