"""The sample clips: finding them, and their frames resized to the bench width, as an iterator or
as a camera-like frame source."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.errors import InputError
from edge.media import VIDEO_SUFFIXES

BENCH_WIDTH = 640
CAMERA_FPS = 30.0


# -- clips and frames ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Clip:
    path: Path
    label: str  # "real" or "fake", from the file name
    person: str  # the part of the file name before the label

    @property
    def name(self) -> str:
        return self.path.name


def find_clips(videos_dir: Path) -> list[Clip]:
    """The labelled clips: ``<person>_real.*`` and ``<person>_fake.*``."""
    videos_dir = Path(videos_dir)
    if not videos_dir.is_dir():
        raise InputError(f"video folder {videos_dir} does not exist (use --videos DIR)")
    clips = []
    for path in sorted(videos_dir.iterdir()):
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            continue
        person, _, label = path.stem.rpartition("_")
        if label in ("real", "fake") and person:
            clips.append(Clip(path, label, person))
    if not clips:
        raise InputError(f"no <person>_real / <person>_fake clips in {videos_dir}")
    return clips


def one_per_label(clips: Sequence[Clip]) -> list[Clip]:
    """The first real and the first fake clip."""
    chosen: dict[str, Clip] = {}
    for clip in clips:
        chosen.setdefault(clip.label, clip)
    return list(chosen.values())


def fit_width(image: np.ndarray, width: int = BENCH_WIDTH) -> np.ndarray:
    """The frame resized to ``width`` pixels wide, aspect ratio kept."""
    height, old_width = image.shape[:2]
    if old_width == width:
        return image
    new_height = max(1, int(round(height * width / old_width)))
    interpolation = cv2.INTER_AREA if old_width > width else cv2.INTER_LINEAR
    return cv2.resize(image, (width, new_height), interpolation=interpolation)


def frames_of(path: Path) -> Iterator[np.ndarray]:
    """Every frame of a clip as a file source hands them out (BGR, the clip's own size), decoded
    as they are asked for. InputError (on the first frame asked) when it cannot be opened."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise InputError(f"cannot open video {path}")
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield frame
    finally:
        capture.release()


def read_frames(path: Path, max_frames: int | None = None, step: int = 1) -> list[np.ndarray]:
    """Every ``step``-th frame of a clip, ``max_frames`` at most (BGR, the clip's own size)."""
    frames: list[np.ndarray] = []
    for index, frame in enumerate(frames_of(path)):
        if max_frames is not None and len(frames) >= max_frames:
            break
        if index % step == 0:
            frames.append(frame)
    if not frames:
        raise InputError(f"{path} has no readable frames")
    return frames


def clip_paths(videos_dir: Path) -> list[Path]:
    """The video clips of a folder, by name."""
    folder = Path(videos_dir)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder of video clips")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not paths:
        raise InputError(f"no video clips ({', '.join(sorted(VIDEO_SUFFIXES))}) in {folder}")
    return paths


def clip_frames(path: Path, limit: int | None = None) -> Iterator[tuple[np.ndarray, float]]:
    """(frame 640 wide, seconds spent decoding and resizing it) for each frame of a clip."""
    frames = frames_of(path)
    for _ in range(limit) if limit is not None else itertools.count():
        start = time.perf_counter()
        image = next(frames, None)
        if image is None:
            return
        fitted = fit_width(image)
        yield fitted, time.perf_counter() - start


class ClipSource:
    """A FrameSource over clips at 640 wide: played once (a file) or looped for ``total`` frames,
    optionally paced like a camera at ``fps`` (then it is not a file: the pipeline's capture
    thread and one-slot handoff take it, as they take a camera)."""

    def __init__(
        self, paths: Sequence[Path], total: int | None = None, fps: float | None = None
    ) -> None:
        if not paths:
            raise InputError("no clips to play")
        self.paths = list(paths)
        self.total = total
        self.fps = fps
        self.is_file = fps is None
        self.name = "bench:" + ",".join(p.name for p in self.paths)
        self.reads = 0
        self._capture: cv2.VideoCapture | None = None
        self._clip = 0
        self._next_due = 0.0

    def open(self) -> None:
        self._capture = cv2.VideoCapture(str(self.paths[self._clip]))
        self._next_due = time.monotonic()

    def read(self) -> np.ndarray | None:
        if self._capture is None:
            raise InputError("bench source is not open")
        if self.total is not None and self.reads >= self.total:
            raise EOFError("bench source: frame budget reached")
        if self.fps is not None:
            delay = self._next_due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._next_due = max(self._next_due, time.monotonic() - 1.0) + 1.0 / self.fps
        ok, image = self._capture.read()
        if not ok:
            if self.total is None and self._clip == len(self.paths) - 1:
                raise EOFError("end of the clips")
            self._capture.release()
            self._clip = (self._clip + 1) % len(self.paths)
            self._capture = cv2.VideoCapture(str(self.paths[self._clip]))
            ok, image = self._capture.read()
            if not ok:
                raise InputError(f"cannot read {self.paths[self._clip]}")
        self.reads += 1
        return fit_width(image)

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None
