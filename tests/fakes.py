"""Fakes that are real classes (no ad-hoc mocks): a clock that tests move, cameras, models."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

import numpy as np

from edge.detectors.base import Detection, FaceDetector


class FakeClock:
    """A monotonic clock that only moves when a test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeCamera:
    """A frame source that plays a list of frames; ``None`` entries simulate a failed read."""

    name = "fake"

    def __init__(self, frames: Iterable[np.ndarray | None]) -> None:
        self._frames: Iterator[np.ndarray | None] = iter(list(frames))
        self.opened = 0
        self.closed = 0
        self.lock = threading.Lock()

    def open(self) -> None:
        self.opened += 1

    def read(self) -> np.ndarray | None:
        with self.lock:
            try:
                return next(self._frames)
            except StopIteration:
                raise EOFError("fake camera played all its frames") from None

    def close(self) -> None:
        self.closed += 1


class ScriptedCamera:
    """A camera that follows a script of steps, for fault tests on the capture thread.

    Steps: ``("frames", n)`` n fresh noise frames (each different), ``("fail", seconds)`` failed
    reads (None) for that long, ``("frozen", n)`` n copies of one frame, ``("bad", n)`` n unusable
    frames (flat grey), ``("wide", n)`` n fresh frames twice as wide and high (a camera back in
    another mode), ``("raise", 1)`` a read that raises (a driver or OpenCV error). After the
    script, reads fail forever (an unplugged camera).
    """

    name = "scripted"
    is_file = False

    def __init__(
        self,
        steps: list[tuple[str, float]],
        shape: tuple[int, int, int] = (120, 160, 3),
        fps: float = 100.0,
    ) -> None:
        self.steps = list(steps)
        self.shape = shape
        self.period = 1.0 / fps
        self.rng = np.random.default_rng(0)
        self.opened = 0
        self._items = self._generate()

    def _generate(self) -> Iterator[np.ndarray | None | float | Exception]:
        for kind, amount in self.steps:
            if kind == "frames":
                for _ in range(int(amount)):
                    yield self.rng.integers(0, 255, self.shape, dtype=np.uint8)
            elif kind == "wide":
                height, width, channels = self.shape
                for _ in range(int(amount)):
                    yield self.rng.integers(0, 255, (2 * height, 2 * width, channels), np.uint8)
            elif kind == "frozen":
                still = self.rng.integers(0, 255, self.shape, dtype=np.uint8)
                for _ in range(int(amount)):
                    yield still
            elif kind == "bad":
                for _ in range(int(amount)):
                    yield np.full(self.shape, 127, np.uint8)
            elif kind == "fail":
                yield float(amount)
            elif kind == "raise":
                yield RuntimeError("injected camera read failure")
        while True:
            yield None

    def open(self) -> None:
        self.opened += 1

    def read(self) -> np.ndarray | None:
        import time

        time.sleep(self.period)
        item = next(self._items)
        if isinstance(item, Exception):
            raise item
        if isinstance(item, float):
            time.sleep(item)  # a stalled USB camera: the read hangs, then fails
            return None
        return item

    def close(self) -> None:
        pass


class NoFaceDetector(FaceDetector):
    """Finds no face in any frame: an empty doorstep, where the frame loop turns and nothing is
    recognised (so no face model ever runs)."""

    name = "no_face"

    def detect(self, frame_bgr: np.ndarray) -> list[Detection]:
        return []


class FixedFaceDetector(FaceDetector):
    """Finds one face at a fixed box in every frame (no model)."""

    name = "fixed"

    def __init__(
        self, box: tuple[int, int, int, int] = (40, 30, 110, 100), fail_after: int | None = None
    ) -> None:
        self.box = box
        self.calls = 0
        self.fail_after = fail_after

    def detect(self, frame_bgr: np.ndarray) -> list[Detection]:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("injected detector failure")
        return [Detection(self.box, 0.99)]


class ConstantLiveness:
    """A liveness scorer that returns one probability of 'real' for every face."""

    sha256 = "0" * 64

    def __init__(self, p_real: float, threshold: float = 0.5) -> None:
        self.p_real = p_real
        self.threshold = threshold

    def score_face(self, frame_bgr: np.ndarray, box: tuple[int, int, int, int]) -> float:
        return self.p_real

    def refuse_other_detector(self, kind: str) -> None:
        """Boxes of any detector will do: the score does not depend on the face crop."""


class ScriptedIdentity:
    """An identity check answering from a list of (person, distance) per call, then the last one."""

    def __init__(self, answers: list[tuple[str | None, float]]) -> None:
        self.answers = answers
        self.calls = 0
        self.reloads = 0

    def identify(self, frame_bgr: np.ndarray, box: tuple[int, int, int, int]):  # noqa: ANN201
        from edge.identity import Match

        person, distance = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        return Match(person, distance, 0.2 if person else None)

    def reload_if_changed(self) -> bool:
        self.reloads += 1
        return False


class ScriptedDeviceDetector:
    """A device detector (the guard's COCO SSD stand-in) that finds the same devices on every
    frame, or none once ``devices`` is emptied; counts its runs."""

    def __init__(self, devices: list | None = None) -> None:
        self.devices = list(devices or [])  # DeviceBox items
        self.calls = 0

    def detect(self, frame_bgr: np.ndarray, min_score: float = 0.0) -> list:
        self.calls += 1
        return [d for d in self.devices if d.score >= min_score]


class FixedOutputRunner:
    """Stands in for ``edge.liveness.TfliteRunner``: every run returns the same output vector,
    whatever the input (to see what ``LivenessModel`` makes of outputs a real model may give)."""

    def __init__(self, output: list[float]) -> None:
        self.output = np.asarray(output, dtype=np.float32)

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.output.copy()
