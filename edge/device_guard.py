"""Device guard: a phone, tablet, laptop or monitor held around a face makes that face a spoof.

Most attacks at a door are a screen held up to the camera. An object detector sees the device
itself (its outline, the hand holding it), a cue independent of how well the liveness model
knows this camera. The detector is the TensorFlow Lite example COCO SSD MobileNet v1 (quantized,
Apache-2.0), shipped in ``models/third_party/coco_ssd_mobilenet_v1`` and checked by sha256 at
start; nothing downloads it at run time.

A device "is around" a face when its box contains the face centre or covers at least
``face_overlap`` of the face box. The guard runs on the whole frame, only while a face track is
undecided (the pipeline schedules it); it is a second, independent check beside the liveness
model, not a replacement: it misses close-up replays where the screen fills the picture.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from edge.assets import REPO_ROOT
from edge.coco_labels import COCO_CLASS_NAMES, COCO_LABELS
from edge.errors import ModelError
from edge.liveness import interpreter_class
from edge.preprocess import Box

if TYPE_CHECKING:
    from edge.config import DeviceGuardConfig

logger = logging.getLogger(__name__)

COCO_SSD_DIR = REPO_ROOT / "models" / "third_party" / "coco_ssd_mobilenet_v1"
COCO_SSD_MODEL = "detect.tflite"
COCO_SSD_LABELS = "labelmap.txt"
# Pinned like every other model file: a different file is refused, never run.
COCO_SSD_SHA256 = {
    COCO_SSD_MODEL: "e4b118e5e4531945de2e659742c7c590f7536f8d0ed26d135abcfe83b4779d13",
    COCO_SSD_LABELS: "c7e79c855f73cbba9f33d649d60e1676eb0a974021a41696d1ac0d4b7f7e0211",
}
COCO_SSD_INPUT_PX = 300


@dataclass(frozen=True)
class DeviceBox:
    """A device the detector found: its COCO class, score and box in frame pixels."""

    label: str
    score: float
    box: Box


def _centre_inside(outer: Box, inner: Box) -> bool:
    cx, cy = (inner[0] + inner[2]) / 2.0, (inner[1] + inner[3]) / 2.0
    return outer[0] <= cx <= outer[2] and outer[1] <= cy <= outer[3]


def face_share_covered(device: Box, face: Box) -> float:
    """The share of the face box's area that lies inside the device box (0 for an empty face)."""
    area = max(0, face[2] - face[0]) * max(0, face[3] - face[1])
    if area <= 0:
        return 0.0
    iw = max(0, min(device[2], face[2]) - max(device[0], face[0]))
    ih = max(0, min(device[3], face[3]) - max(device[1], face[1]))
    return iw * ih / area


def is_around(device: Box, face: Box, face_overlap: float) -> bool:
    """Does the device box contain the face centre, or cover at least ``face_overlap`` of it?

    The centre test catches a face shown on a screen (the device box holds the whole face); the
    overlap test catches a face whose centre lies just off a box the detector drew too tight.
    A real face beside a phone someone holds up covers less of it and keeps its centre outside.
    """
    return _centre_inside(device, face) or face_share_covered(device, face) >= face_overlap


def device_around(face: Box, devices: Sequence[DeviceBox], face_overlap: float) -> DeviceBox | None:
    """The highest-scoring device around ``face``, or None."""
    around = [d for d in devices if is_around(d.box, face, face_overlap)]
    return max(around, key=lambda d: d.score) if around else None


def check_file(path: Path, sha256: str) -> bytes:
    """The bytes of a shipped model file after checking its sha256; ModelError naming the fix."""
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise ModelError(
            f"cannot read {path}: {exc.strerror}; it is shipped in the repository: restore it"
            " (git checkout -- models/third_party) or set device_guard.enabled: false"
        ) from None
    actual = hashlib.sha256(content).hexdigest()
    if actual != sha256:
        raise ModelError(
            f"{path} has sha256 {actual}, expected {sha256}: the file is corrupt or foreign;"
            " restore it with git checkout -- models/third_party"
        )
    return content


class CocoSsdDetector:
    """The COCO SSD MobileNet v1 quantized detector in ai-edge-litert: one uint8 RGB 300x300
    input, four outputs of the detection post-processing op (boxes, classes, scores, count).

    Not thread-safe by itself (TFLite interpreters are not): ``detect`` takes a lock.
    """

    def __init__(self, model_dir: Path = COCO_SSD_DIR, num_threads: int = 1) -> None:
        content = check_file(model_dir / COCO_SSD_MODEL, COCO_SSD_SHA256[COCO_SSD_MODEL])
        labels_text = check_file(model_dir / COCO_SSD_LABELS, COCO_SSD_SHA256[COCO_SSD_LABELS])
        self.labels = [line.strip() for line in labels_text.decode().splitlines()][1:]
        self.sha256 = COCO_SSD_SHA256[COCO_SSD_MODEL]
        try:
            self.interpreter = interpreter_class(", or set device_guard.enabled: false")(
                model_content=content, num_threads=num_threads
            )
            self.interpreter.allocate_tensors()
        except ModelError:
            raise
        except Exception as exc:  # the interpreter raises ValueError/RuntimeError on bad files
            raise ModelError(f"the interpreter cannot load {model_dir}: {exc}") from exc
        inputs = self.interpreter.get_input_details()
        # The post-processing op names its outputs NAME, NAME:1, NAME:2, NAME:3 in this order.
        outputs = sorted(self.interpreter.get_output_details(), key=lambda d: str(d["name"]))
        shapes = [[int(v) for v in d["shape"]] for d in outputs]
        if (
            len(inputs) != 1
            or [int(v) for v in inputs[0]["shape"]] != [1, COCO_SSD_INPUT_PX, COCO_SSD_INPUT_PX, 3]
            or np.dtype(inputs[0]["dtype"]) != np.uint8
            or len(shapes) != 4
            or len(shapes[0]) != 3
            or shapes[0][2] != 4
            or shapes[1] != shapes[0][:2]
            or shapes[2] != shapes[0][:2]
            or shapes[3] != [1]
        ):
            raise ModelError(
                f"{model_dir / COCO_SSD_MODEL} is not the COCO SSD the guard expects (input"
                f" {inputs[0]['shape'] if inputs else None}, outputs {shapes})"
            )
        self._input = int(inputs[0]["index"])
        self._boxes, self._classes, self._scores, self._count = (int(d["index"]) for d in outputs)
        self._lock = threading.Lock()

    def detect(self, frame_bgr: np.ndarray, min_score: float = 0.0) -> list[DeviceBox]:
        """Every object of any class at ``min_score`` or more, boxes in frame pixels (clipped)."""
        height, width = frame_bgr.shape[:2]
        # Stretched, not letterboxed: the model was trained and measured here that way.
        small = cv2.resize(frame_bgr, (COCO_SSD_INPUT_PX, COCO_SSD_INPUT_PX))
        rgb = cv2.cvtColor(small, cv2.COLOR_BGR2RGB)
        with self._lock:
            self.interpreter.set_tensor(self._input, rgb[np.newaxis])
            self.interpreter.invoke()
            boxes = self.interpreter.get_tensor(self._boxes)[0]
            classes = self.interpreter.get_tensor(self._classes)[0]
            scores = self.interpreter.get_tensor(self._scores)[0]
            count = int(self.interpreter.get_tensor(self._count)[0])
        found: list[DeviceBox] = []
        for k in range(min(count, len(scores))):
            score = float(scores[k])
            index = int(classes[k])
            if score < min_score or not 0 <= index < len(self.labels):
                continue
            label = self.labels[index]
            if label == "???":
                continue
            ymin, xmin, ymax, xmax = (float(v) for v in boxes[k])
            x1, y1 = max(0, round(xmin * width)), max(0, round(ymin * height))
            x2, y2 = min(width, round(xmax * width)), min(height, round(ymax * height))
            if x2 <= x1 or y2 <= y1:
                continue
            found.append(DeviceBox(label, score, (x1, y1, x2, y2)))
        found.sort(key=lambda d: d.score, reverse=True)
        return found


class DeviceGuard:
    """Which faces of a frame have a device around them (``check``), per the config."""

    def __init__(self, detector: Any, config: DeviceGuardConfig) -> None:
        self.detector = detector  # anything with detect(frame_bgr, min_score) -> list[DeviceBox]
        self.config = config
        self.classes = frozenset(config.classes)
        self.every_n_frames = config.every_n_frames

    def devices(self, frame_bgr: np.ndarray) -> list[DeviceBox]:
        """The devices of the configured classes in the frame, best first."""
        found: list[DeviceBox] = self.detector.detect(frame_bgr, self.config.min_score)
        return [d for d in found if d.label in self.classes and d.score >= self.config.min_score]

    def check(self, frame_bgr: np.ndarray, faces: Sequence[Box]) -> list[DeviceBox | None]:
        """For each face, the strongest device around it (None: no device around that face)."""
        if not faces:
            return []
        devices = self.devices(frame_bgr)
        return [device_around(face, devices, self.config.face_overlap) for face in faces]


def load_device_guard(config: DeviceGuardConfig, num_threads: int = 1) -> DeviceGuard | None:
    """The guard the config asks for (None when disabled); ModelError if its model is wrong."""
    if not config.enabled:
        logger.warning(
            "device_guard is disabled: a phone held up to the camera is judged by the"
            " liveness model alone"
        )
        return None
    detector = CocoSsdDetector(num_threads=num_threads)
    logger.info(
        "device guard: COCO SSD (sha256 %s…) classes %s score >= %.2f, every %d frames while a"
        " face is undecided",
        detector.sha256[:12],
        ", ".join(config.classes),
        config.min_score,
        config.every_n_frames,
    )
    return DeviceGuard(detector, config)


__all__ = [
    "COCO_CLASS_NAMES",
    "COCO_LABELS",
    "CocoSsdDetector",
    "DeviceBox",
    "DeviceGuard",
    "device_around",
    "face_share_covered",
    "is_around",
    "load_device_guard",
]
