"""Region detection: between whole-frame passes, search only around the faces already found.

Frigate runs its detector on regions around motion rather than on whole frames; a door has a
better cue, the faces it found a frame ago. On the frames between whole-frame passes the detector
runs on a square crop around each known face (``scale`` times the face's long side) at a small
input size: a fraction of a whole-frame pass, with more pixels on the face than the whole frame
gives it. Each frame still gets fresh boxes from a detector (nothing is carried over), and the
whole frame is searched

- every ``every_n_frames``-th frame (a second person is found within that many frames),
- whenever no face is known (a newcomer must not wait for a turn),
- at once, on the same frame, when a known face is not found in its region (it moved fast,
  turned away or left), and when more than ``MAX_REGIONS`` faces are known.

So on frames where the whole-frame detector would find a face that is already known, a region
pass finds it too; ``python -m bench.detector_compare`` measures how often that holds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from edge.detectors.base import Detection, FaceDetector, box_iou, iou
from edge.preprocess import Box

logger = logging.getLogger(__name__)

# Past this many known faces one whole-frame pass costs about as much as the regions.
MAX_REGIONS = 3
# Boxes of one face found in two overlapping regions overlap at least this much.
SAME_FACE_IOU = 0.5
# A region never shrinks below this many pixels: the detector needs context around a face.
MIN_REGION_PX = 64


def region_around(box: Box, scale: float, width: int, height: int) -> Box:
    """The square of side ``scale`` x the box's long side, centred on the box and moved inside the
    frame (as large as the frame's short side at most)."""
    x1, y1, x2, y2 = box
    side = int(round(scale * max(x2 - x1, y2 - y1)))
    side = min(max(side, MIN_REGION_PX), width, height)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    rx = int(round(min(max(cx - side / 2.0, 0.0), width - side)))
    ry = int(round(min(max(cy - side / 2.0, 0.0), height - side)))
    return (rx, ry, rx + side, ry + side)


def merge_same_faces(detections: list[Detection]) -> list[Detection]:
    """Best first; a box overlapping a kept one by ``SAME_FACE_IOU`` or more is the same face."""
    kept: list[Detection] = []
    for det in sorted(detections, key=lambda d: d.score, reverse=True):
        if kept:
            overlaps = iou(
                np.asarray(det.box, dtype=np.float64),
                np.asarray([k.box for k in kept], dtype=np.float64),
            )
            if float(overlaps.max()) >= SAME_FACE_IOU:
                continue
        kept.append(det)
    return kept


@dataclass
class RegionStats:
    """How the frames were searched (what the tests check; handy when tuning)."""

    whole: int = 0  # whole-frame passes (scheduled, no face known, or after a lost face)
    regional: int = 0  # frames searched in regions only
    lost: int = 0  # region frames where a known face was not found: whole frame searched too


class RegionDetector(FaceDetector):
    """A stateful ``FaceDetector``: ``whole`` on whole frames, ``regional`` on crops around the
    faces of the previous frame. One instance per frame stream (it remembers the last faces)."""

    def __init__(
        self,
        whole: FaceDetector,
        regional: FaceDetector,
        every_n_frames: int,
        scale: float = 2.0,
    ) -> None:
        if every_n_frames < 1:
            raise ValueError(f"every_n_frames must be >= 1, not {every_n_frames}")
        if scale < 1.0:
            raise ValueError(f"a region must be at least as large as the face (scale {scale})")
        self.whole = whole
        self.regional = regional
        self.name = whole.name
        self.every_n_frames = every_n_frames
        self.scale = scale
        self.stats = RegionStats()
        self._known: list[Detection] = []
        self._frame_shape: tuple[int, ...] | None = None
        self._since_whole = 0

    def reset(self) -> None:
        """Forget the known faces: the next frame is searched whole."""
        self._known = []
        self._frame_shape = None
        self._since_whole = 0

    def detect(self, frame_bgr: np.ndarray) -> list[Detection]:
        return self.detect_frame(frame_bgr, None)

    def detect_frame(
        self, frame_bgr: np.ndarray, detect_bgr: np.ndarray | None = None
    ) -> list[Detection]:
        """Faces in ``frame_bgr`` (its pixels). ``detect_bgr``: a low-resolution picture of the
        same scene (picamera2's lores stream) for whole-frame passes; regions are always cut
        from ``frame_bgr``, at full detail."""
        region_turn = (
            self._known
            and len(self._known) <= MAX_REGIONS
            and frame_bgr.shape == self._frame_shape
            and self._since_whole + 1 < self.every_n_frames
        )
        if region_turn:
            found = self._search_regions(frame_bgr)
            if found is not None:
                self.stats.regional += 1
                self._since_whole += 1
                self._known = found
                return found
            self.stats.lost += 1
        self.stats.whole += 1
        found = self.whole.detect_frame(frame_bgr, detect_bgr)
        self._known = found
        self._frame_shape = frame_bgr.shape
        self._since_whole = 0
        return found

    def _search_regions(self, frame_bgr: np.ndarray) -> list[Detection] | None:
        """Faces found around each known face; None as soon as one known face is not found (no
        box in its region overlaps where it was)."""
        height, width = frame_bgr.shape[:2]
        found: list[Detection] = []
        for known in self._known:
            rx1, ry1, rx2, ry2 = region_around(known.box, self.scale, width, height)
            region = (rx1, ry1, rx2, ry2)
            in_region = [
                det
                for det in self.regional.detect(frame_bgr[ry1:ry2, rx1:rx2])
                if not cut_by_region(det.box, region, width, height)
            ]
            shifted = [det.shifted(rx1, ry1) for det in in_region]
            # Another face in this region (a neighbour) is not this one: had the known face moved
            # out of its region, it would go unjudged until the next whole pass.
            if not any(box_iou(det.box, known.box) > 0.0 for det in shifted):
                return None
            found.extend(shifted)
        return merge_same_faces(found)


def cut_by_region(box: Box, region: Box, width: int, height: int) -> bool:
    """Does ``box`` (pixels of the region's crop) touch an edge of the region that lies inside the
    frame? Then the region cut the face, not the frame: its box is wrong, and the frame must be
    searched whole. (A face cut by the frame's own edge is the detector's ``min_visible`` case.)"""
    x1, y1, x2, y2 = box
    rx1, ry1, rx2, ry2 = region
    return (
        (x1 <= 0 and rx1 > 0)
        or (y1 <= 0 and ry1 > 0)
        or (x2 >= rx2 - rx1 and rx2 < width)
        or (y2 >= ry2 - ry1 and ry2 < height)
    )
