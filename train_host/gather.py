"""Cut face crops out of videos or images with the res10 detector, for training.

Keeps the most confident face per frame above ``confidence``, every ``skip``-th frame of a video,
cropped with ``edge.preprocess.crop_with_margin`` (margin 1.0 = the tight res10 box, as in
``../shared/data/faces``), skipping near-duplicates of the last saved crop. No TensorFlow.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.detectors.res10 import Res10Detector
from edge.errors import InputError
from edge.media import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from edge.preprocess import crop_with_margin

logger = logging.getLogger(__name__)

# Near-duplicate test: mean absolute difference of 16x16 grey thumbnails, in grey levels.
DUPLICATE_MEAN_DIFF = 4.0


@dataclass
class GatherStats:
    frames_read: int = 0
    frames_examined: int = 0
    saved: int = 0
    no_face: int = 0
    duplicates: int = 0
    unreadable: int = 0

    def line(self) -> str:
        return (
            f"read {self.frames_read} frames, examined {self.frames_examined}, saved {self.saved}"
            f" crops, skipped {self.no_face} without a face, {self.duplicates} near-duplicates,"
            f" {self.unreadable} unreadable files"
        )


def list_inputs(path: Path) -> list[Path]:
    """A video file, an image file, or a folder of them (searched recursively)."""
    path = Path(path)
    wanted = VIDEO_SUFFIXES | IMAGE_SUFFIXES
    if path.is_file():
        if path.suffix.lower() not in wanted:
            raise InputError(
                f"{path} is neither a video ({', '.join(sorted(VIDEO_SUFFIXES))}) nor an image"
            )
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in wanted)
        if not files:
            raise InputError(f"no videos or images under {path}")
        return files
    raise InputError(f"{path} does not exist")


def frames_of(path: Path, skip: int, stats: GatherStats) -> Iterator[np.ndarray]:
    """Every ``skip``-th frame of a video, or the single image."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            stats.unreadable += 1
            logger.warning("cannot read image %s: skipped", path)
            return
        stats.frames_read += 1
        yield image
        return
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        stats.unreadable += 1
        logger.warning("cannot open video %s: skipped", path)
        return
    try:
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok or frame is None:
                break
            stats.frames_read += 1
            if index % skip == 0:
                yield frame
            index += 1
    finally:
        capture.release()


def _thumb(crop: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    return cv2.resize(grey, (16, 16), interpolation=cv2.INTER_AREA).astype(np.float32)


def _limit_side(crop: np.ndarray, max_side: int) -> np.ndarray:
    long_side = max(crop.shape[:2])
    if max_side <= 0 or long_side <= max_side:
        return crop
    f = max_side / long_side
    size = (max(1, round(crop.shape[1] * f)), max(1, round(crop.shape[0] * f)))
    return cv2.resize(crop, size, interpolation=cv2.INTER_AREA)


def gather(
    source: Path,
    out_dir: Path,
    label: str,
    confidence: float = 0.5,
    skip: int = 16,
    margin: float = 1.0,
    max_side: int = 224,
    detector: Res10Detector | None = None,
    progress: bool = True,
) -> GatherStats:
    """Write crops to ``out_dir/label/<sha12>.jpg``; returns what was read, saved and skipped."""
    if label not in ("real", "fake"):
        raise InputError(f"label must be 'real' or 'fake', got {label!r}")
    if skip < 1:
        raise InputError(f"--skip must be >= 1, got {skip}")
    if margin < 1.0:
        raise InputError(f"--margin must be >= 1.0 (1.0 = the detector box), got {margin}")
    inputs = list_inputs(source)
    detector = detector or Res10Detector(confidence=confidence)
    target = Path(out_dir) / label
    target.mkdir(parents=True, exist_ok=True)
    stats = GatherStats()
    frames: Iterator[np.ndarray] = (
        frame for path in inputs for frame in frames_of(path, skip, stats)
    )
    if progress:
        from tqdm import tqdm

        frames = iter(tqdm(frames, desc=f"gather {label}", unit="frame"))
    last: np.ndarray | None = None
    for frame in frames:
        stats.frames_examined += 1
        found = detector.detect(frame)
        if not found:
            stats.no_face += 1
            continue
        crop = _limit_side(crop_with_margin(frame, found[0].box, margin), max_side)
        thumb = _thumb(crop)
        if last is not None and float(np.mean(np.abs(thumb - last))) < DUPLICATE_MEAN_DIFF:
            stats.duplicates += 1
            continue
        ok, encoded = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 92])
        if not ok:
            raise InputError("OpenCV failed to encode a crop as JPEG")
        data = encoded.tobytes()
        (target / f"{hashlib.sha256(data).hexdigest()[:12]}.jpg").write_bytes(data)
        last = thumb
        stats.saved += 1
    logger.info(stats.line())
    return stats
