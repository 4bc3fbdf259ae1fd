"""Face detection: one small protocol, and the backends behind it.

Every detector returns boxes in pixels of the frame it was given, clipped to it, whatever
resolution it ran at internally, together with the detector's own unclipped box (``raw``): the
context crop of the liveness model is cut around that one, as its training frames were, since a
box clipped by the frame edge moves the crop's centre and scale (on a replay that fills the
picture the pretrained model's verdict flips with it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from edge.assets import RES10_CAFFEMODEL, RES10_PROTOTXT, checked_asset
from edge.config import DetectorConfig
from edge.preprocess import Box, FloatBox

logger = logging.getLogger(__name__)

# The res10 SSD was trained on BGR images with this per-channel mean subtracted, at 300x300.
# Its prior boxes follow the input size, so it also runs on smaller inputs: cheaper, but it then
# misses small faces (region detection feeds it a crop around one face, where that is fine).
RES10_MEAN_BGR = (104.0, 177.0, 123.0)
RES10_INPUT_PX = 300


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
    name: str

    def detect(self, frame_bgr: np.ndarray) -> list[Detection]:
        """All faces above the detector's confidence, best first."""
        ...


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


class Res10Detector:
    """OpenCV's res10 SSD face detector through ``cv2.dnn`` (the seed tutorial's)."""

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


def detect_frame(
    detector: FaceDetector, frame_bgr: np.ndarray, detect_bgr: np.ndarray | None = None
) -> list[Detection]:
    """Faces in pixels of ``frame_bgr``. ``detect_bgr`` is a low-resolution picture of the same
    scene (picamera2's lores stream of the same request), used by detectors that can (a
    ``detect_on`` or ``detect_frame`` method); the others search ``frame_bgr``."""
    by_frame = getattr(detector, "detect_frame", None)
    if by_frame is not None:
        found: list[Detection] = by_frame(frame_bgr, detect_bgr)
        return found
    detect_on = getattr(detector, "detect_on", None)
    if detect_bgr is not None and detect_on is not None:
        height, width = frame_bgr.shape[:2]
        found = detect_on(detect_bgr, (width, height))
        return found
    return detector.detect(frame_bgr)


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


class ScaledDetector:
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

    def detect_on(self, detect_bgr: np.ndarray, frame_size: tuple[int, int]) -> list[Detection]:
        """Detect on an already small image of the same scene (e.g. picamera2's lores stream)
        and return boxes in pixels of the full frame of ``frame_size`` (width, height)."""
        small_h, small_w = detect_bgr.shape[:2]
        found = rescale_detections(
            self.inner.detect(detect_bgr), (small_w, small_h), frame_size, self.min_face_px
        )
        found.sort(key=lambda d: d.score, reverse=True)
        return found


def _res10(
    confidence: float,
    min_face_px: int,
    assets_dir: Path | None,
    num_threads: int | None,
    min_visible: float = 0.0,
) -> FaceDetector:
    # cv2.dnn's thread count is process-wide (cv2.setNumThreads), so it is not set per net here.
    return Res10Detector(
        confidence=confidence,
        min_face_px=min_face_px,
        assets_dir=assets_dir,
        min_visible=min_visible,
    )


def _blazeface(
    confidence: float,
    min_face_px: int,
    assets_dir: Path | None,
    num_threads: int | None,
    min_visible: float = 0.0,
    tiles: bool = False,
) -> FaceDetector:
    # Imported on use: edge.blazeface imports this module, and res10 needs no litert.
    from edge.blazeface import BlazeFaceDetector

    return BlazeFaceDetector(
        confidence=confidence,
        min_face_px=min_face_px,
        assets_dir=assets_dir,
        num_threads=num_threads,
        min_visible=min_visible,
        tiles=tiles,
    )


def _blazeface_tiles(
    confidence: float,
    min_face_px: int,
    assets_dir: Path | None,
    num_threads: int | None,
    min_visible: float = 0.0,
) -> FaceDetector:
    return _blazeface(confidence, min_face_px, assets_dir, num_threads, min_visible, tiles=True)


# kind name -> factory taking (confidence, min_face_px, assets_dir, num_threads, min_visible)
# keywords.
# "blazeface_tiles" adds BlazeFace passes on 2 square tiles for faces under ~10 % of the frame.
DETECTORS: dict[str, Callable[..., FaceDetector]] = {
    "res10": _res10,
    "blazeface": _blazeface,
    "blazeface_tiles": _blazeface_tiles,
}


def make_detector(
    kind: str,
    *,
    confidence: float = 0.5,
    min_face_px: int = 0,
    assets_dir: Path | None = None,
    num_threads: int | None = None,
    detect_width: int = 0,
    min_visible: float = 0.0,
) -> FaceDetector:
    """The detector of ``kind``; with ``detect_width`` > 0 it runs on frames downscaled to that
    width and still returns boxes in pixels of the frame it is given. Boxes with less than
    ``min_visible`` of their area inside the frame are dropped (``clip_box``)."""
    try:
        factory = DETECTORS[kind]
    except KeyError:
        raise ValueError(f"unknown detector kind {kind!r}; known: {sorted(DETECTORS)}") from None
    if detect_width <= 0:
        return factory(
            confidence=confidence,
            min_face_px=min_face_px,
            assets_dir=assets_dir,
            num_threads=num_threads,
            min_visible=min_visible,
        )
    inner = factory(
        confidence=confidence,
        min_face_px=0,
        assets_dir=assets_dir,
        num_threads=num_threads,
        min_visible=min_visible,
    )
    return ScaledDetector(inner, detect_width, min_face_px=min_face_px)


def make_region_detector(
    kind: str,
    *,
    confidence: float = 0.5,
    min_face_px: int = 0,
    assets_dir: Path | None = None,
    num_threads: int | None = None,
    min_visible: float = 0.0,
    input_px: int = RES10_INPUT_PX,
) -> FaceDetector:
    """The detector for crops around a known face (``edge.regions``): res10 at an ``input_px``
    input; BlazeFace (its input is fixed at 128 px) without tiles, which are for small faces."""
    if kind == "res10":
        return Res10Detector(
            confidence=confidence,
            min_face_px=min_face_px,
            assets_dir=assets_dir,
            min_visible=min_visible,
            input_px=input_px,
        )
    if kind not in DETECTORS:
        raise ValueError(f"unknown detector kind {kind!r}; known: {sorted(DETECTORS)}")
    return _blazeface(confidence, min_face_px, assets_dir, num_threads, min_visible)


def detector_from_config(
    config: DetectorConfig, kind: str | None = None, num_threads: int | None = None
) -> FaceDetector:
    """The detector the ``detector`` config section asks for (``kind`` and ``num_threads``
    override it, for the bench). With ``every_n_frames`` > 1 it is a ``RegionDetector``: one per
    frame stream, it remembers the faces of the last frame."""
    kind = kind or config.kind
    threads = num_threads if num_threads is not None else (config.threads or None)
    whole = make_detector(
        kind,
        confidence=config.confidence_for(kind),
        min_face_px=config.min_face_px,
        assets_dir=config.assets_dir,
        num_threads=threads,
        detect_width=config.detect_width,
        min_visible=config.min_visible,
    )
    if config.every_n_frames <= 1:
        return whole
    # Imported on use: edge.regions imports this module.
    from edge.regions import RegionDetector

    regional = make_region_detector(
        kind,
        confidence=config.confidence_for(kind),
        min_face_px=config.min_face_px,
        assets_dir=config.assets_dir,
        num_threads=threads,
        min_visible=config.min_visible,
        input_px=config.region_input_px,
    )
    return RegionDetector(whole, regional, config.every_n_frames, config.region_scale)
