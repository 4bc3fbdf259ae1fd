"""Blink check: eye landmarks from MediaPipe's face mesh, eye aspect ratio, and blink detection.

A blink is a second liveness factor against photos: a printed or displayed still face cannot
close and reopen its eyes. (A replayed video of a blinking person can; that is the liveness
CNN's job.) The mesh model is MediaPipe's ``face_landmark.tflite`` (Apache-2.0), run in
ai-edge-litert; dlib's 68-point model is deliberately not used (non-commercial training data).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.assets import FACE_MESH, checked_asset
from edge.errors import ModelError
from edge.preprocess import Box, PreprocessSpec, crop_with_margin, preprocess_crop

logger = logging.getLogger(__name__)

# MediaPipe's face landmark model: 192x192 RGB scaled to [0, 1]; 468 (x, y, z) landmarks in
# input pixels, plus a face-presence logit.
MESH_SPEC = PreprocessSpec(input_height=192, input_width=192, colour_order="RGB", scale=1 / 255)
MESH_LANDMARKS = 468
# MediaPipe grows the detection box 1.5x into a square before running the mesh
# (face_detection_front_detection_to_roi.pbtxt). On res10 boxes of the sample clips 1.2, 1.4 and
# 1.6 found the same blinks on wolf_real; 1.4 had the least frame-to-frame EAR jitter there.
MESH_CROP_SCALE = 1.4
MIN_FACE_PRESENCE = 0.5
# Both eyes must look at least half as wide as each other: beyond that the head is turned too far.
MIN_EYE_WIDTH_RATIO = 0.5

# Eye contour points of the 468-point mesh, in EAR order p1..p6: corner, upper, upper, corner,
# lower, lower (p2 pairs with p6 and p3 with p5 vertically).
RIGHT_EYE = (33, 160, 158, 133, 153, 144)
LEFT_EYE = (362, 385, 387, 263, 373, 380)


def eye_aspect_ratio(points: np.ndarray) -> float:
    """Soukupova & Cech's EAR of six (x, y) eye points: eye height over eye width."""
    p = np.asarray(points, dtype=np.float64)[:, :2]
    width = np.linalg.norm(p[0] - p[3])
    if width <= 0:
        return math.nan
    height = np.linalg.norm(p[1] - p[5]) + np.linalg.norm(p[2] - p[4])
    return float(height / (2.0 * width))


def _eye_width(landmarks: np.ndarray, eye: tuple[int, ...]) -> float:
    return float(np.linalg.norm(landmarks[eye[0], :2] - landmarks[eye[3], :2]))


def mesh_ear(landmarks: np.ndarray) -> float:
    """Mean EAR of both eyes from a (468, 2 or 3) landmark array; NaN for a turned head.

    With the head turned far to one side the far eye is foreshortened and the mesh guesses
    its contour: its EAR is meaningless (values above 1 were seen on the sample clips).
    """
    right, left = _eye_width(landmarks, RIGHT_EYE), _eye_width(landmarks, LEFT_EYE)
    if min(right, left) <= 0 or min(right, left) / max(right, left) < MIN_EYE_WIDTH_RATIO:
        return math.nan
    return (
        eye_aspect_ratio(landmarks[list(RIGHT_EYE)]) + eye_aspect_ratio(landmarks[list(LEFT_EYE)])
    ) / 2.0


def mesh_box(box: Box, scale: float = MESH_CROP_SCALE) -> Box:
    """A square of ``scale`` times the long side of ``box``, on the same centre."""
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1) * scale
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    half = side / 2.0
    return (
        int(round(cx - half)),
        int(round(cy - half)),
        int(round(cx + half)),
        int(round(cy + half)),
    )


@dataclass(frozen=True)
class MeshResult:
    landmarks: np.ndarray  # (468, 3) in frame pixels (z in the same scale, relative)
    presence: float  # probability that the crop holds a face


class EyeLandmarker:
    """MediaPipe face mesh on a detector box; gives the eye aspect ratio of that face."""

    def __init__(
        self,
        assets_dir: Path | None = None,
        threads: int = 1,
        crop_scale: float = MESH_CROP_SCALE,
    ) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise ModelError(f"ai-edge-litert is not importable ({exc})") from None
        path = checked_asset(FACE_MESH, assets_dir)
        self._interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self._interpreter.allocate_tensors()
        (inp,) = self._interpreter.get_input_details()
        if tuple(inp["shape"]) != (1, MESH_SPEC.input_height, MESH_SPEC.input_width, 3):
            raise ModelError(f"{path}: unexpected input shape {inp['shape']}")
        self._input_index = inp["index"]
        outputs = {
            int(np.prod(d["shape"])): d["index"] for d in self._interpreter.get_output_details()
        }
        try:
            self._landmarks_index = outputs[MESH_LANDMARKS * 3]
            self._presence_index = outputs[1]
        except KeyError:
            raise ModelError(f"{path}: unexpected outputs {sorted(outputs)}") from None
        self.crop_scale = crop_scale

    def mesh(self, frame_bgr: np.ndarray, box: Box) -> MeshResult:
        """The 468 landmarks of the face at ``box``, in frame pixels."""
        square = mesh_box(box, self.crop_scale)
        crop = crop_with_margin(frame_bgr, square, 1.0)
        tensor = preprocess_crop(crop, MESH_SPEC)[np.newaxis]
        self._interpreter.set_tensor(self._input_index, tensor)
        self._interpreter.invoke()
        raw = self._interpreter.get_tensor(self._landmarks_index).reshape(MESH_LANDMARKS, 3)
        logit = float(self._interpreter.get_tensor(self._presence_index).reshape(()))
        presence = 1.0 / (1.0 + math.exp(-max(min(logit, 60.0), -60.0)))
        side = square[2] - square[0]
        points = raw.astype(np.float64) * (side / MESH_SPEC.input_width)
        points[:, 0] += square[0]
        points[:, 1] += square[1]
        return MeshResult(points, presence)

    def eye_aspect_ratio(self, frame_bgr: np.ndarray, box: Box) -> float:
        """Mean EAR of both eyes, or NaN when the mesh finds no face in the box."""
        result = self.mesh(frame_bgr, box)
        if result.presence < MIN_FACE_PRESENCE:
            return math.nan
        return mesh_ear(result.landmarks)


# Defaults chosen with the real mesh on the sample clips (EAR of the largest res10 face): open
# eyes measure 0.31-0.34 (wolf) and 0.16-0.22 (zubair: glasses, looking down); wolf's blinks
# dip to 58-70 % of his open level for 2-4 frames at 30 fps. A 0.47 s dip of zubair looking
# down (zubair_real frames 49-56 at 15 fps) counted as a blink with a 0.5 s limit: hence 0.4 s.
# Updates must come at least every 0.4 s (2.5 fps), and a blink is only seen reliably at 10 fps
# or more: a 150 ms blink falls between two frames at 5 fps.
DEFAULT_CLOSED_RATIO = 0.75
DEFAULT_OPEN_RATIO = 0.9
DEFAULT_MAX_CLOSED_S = 0.4
DEFAULT_BASELINE_S = 3.0
# No human eye measures more than this; larger values are mesh failures (turned head).
MAX_PLAUSIBLE_EAR = 0.6
# Blinks remembered per face: enough for any window a door needs.
_KEEP_BLINKS = 32
# A "blink" with the eye closed longer than this is a held-closed eye, whatever the caller asks.
MAX_BLINK_S = 1.0


class BlinkTracker:
    """Finds blinks in one face's EAR sequence. Pure logic: the caller passes the times.

    The open-eye level is a running high percentile of the recent EAR values (people and camera
    angles differ); the eye counts closed below ``closed_ratio`` of it and open again above
    ``open_ratio`` of it (hysteresis, so noise around one threshold is no blink). A blink is
    open -> closed -> open with the closed part at most ``window_s`` long: a held-closed eye
    is not a blink. NaN and implausible values (no face, turned head) are skipped; a gap longer
    than ``window_s`` forgets a half-seen blink.
    """

    def __init__(
        self,
        closed_ratio: float = DEFAULT_CLOSED_RATIO,
        window_s: float = DEFAULT_MAX_CLOSED_S,
        open_ratio: float = DEFAULT_OPEN_RATIO,
        baseline_s: float = DEFAULT_BASELINE_S,
        min_baseline_samples: int = 3,
    ) -> None:
        if not 0 < closed_ratio < open_ratio <= 1:
            raise ValueError(
                f"need 0 < closed_ratio ({closed_ratio}) < open_ratio ({open_ratio}) <= 1"
            )
        if not 0 < window_s <= MAX_BLINK_S:
            raise ValueError(
                f"window_s ({window_s}) is the longest closed phase of one blink, at most"
                f" {MAX_BLINK_S} s; the grant window goes to blinked_within()"
            )
        if baseline_s <= 0:
            raise ValueError("baseline_s must be positive")
        self.closed_ratio = closed_ratio
        self.open_ratio = open_ratio
        self.window_s = window_s
        self.baseline_s = baseline_s
        self.min_baseline_samples = min_baseline_samples
        self._history: deque[tuple[float, float]] = deque()
        self._state = "unknown"  # unknown -> open <-> closed
        self._closed_since: float | None = None
        self._last_t: float | None = None
        self.blinks: deque[float] = deque(maxlen=_KEEP_BLINKS)

    def baseline(self) -> float | None:
        """The current open-eye EAR level, or None before enough values were seen."""
        if len(self._history) < self.min_baseline_samples:
            return None
        return float(np.percentile([ear for _, ear in self._history], 90))

    def update(self, ear: float, t: float) -> bool:
        """Feed the EAR at time ``t`` (seconds, non-decreasing); True when a blink just ended."""
        if not math.isfinite(ear) or not 0 <= ear <= MAX_PLAUSIBLE_EAR:
            return False
        if self._last_t is not None and t - self._last_t > self.window_s:
            # Too long without a value: whatever the eye did in between is unknown.
            self._state = "unknown"
            self._closed_since = None
        self._last_t = t
        self._history.append((t, ear))
        while self._history and self._history[0][0] < t - self.baseline_s:
            self._history.popleft()
        level = self.baseline()
        if level is None or level <= 0:
            return False
        ratio = ear / level
        if self._state == "closed" and self._closed_since is not None:
            if ratio >= self.open_ratio:
                held = t - self._closed_since
                self._state = "open"
                self._closed_since = None
                if held <= self.window_s:
                    self.blinks.append(t)
                    return True
                return False
            return False
        if ratio >= self.open_ratio:
            self._state = "open"
        elif ratio < self.closed_ratio and self._state == "open":
            self._state = "closed"
            self._closed_since = t
        return False

    def blinked_within(self, now: float, window_s: float) -> bool:
        """True if a blink ended in the last ``window_s`` seconds before ``now``."""
        return any(now - window_s <= t <= now for t in self.blinks)
