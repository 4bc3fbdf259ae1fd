"""Frame sources and camera health.

Every source hands out ``Frame`` objects whose ``image`` is BGR (OpenCV's order) — picamera2's
``RGB888`` format is BGR in memory, so both paths agree without conversion. A source may also give
a smaller ``detect_image`` (picamera2's low-resolution stream from the same request) for detection.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from edge.config import CameraConfig
from edge.errors import CameraError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # BGR, HxWx3 uint8
    captured_at: float  # monotonic seconds
    index: int
    detect_image: np.ndarray | None = None  # BGR, smaller, same moment (picamera2 lores)


class FrameSource(Protocol):
    name: str
    is_file: bool  # a file ends (EOFError); a camera is reopened when it fails

    def open(self) -> None: ...

    def read(self) -> np.ndarray | tuple[np.ndarray, np.ndarray] | None:
        """A BGR image (or main + detection image); None on a failed read; EOFError at file end."""
        ...

    def close(self) -> None: ...


def _is_url(source: str) -> bool:
    return "://" in source


def redact_source(source: str) -> str:
    """``source`` fit for logs, events, MQTT and error messages: a URL's user and password
    (``rtsp://user:pass@host``) and its query (some cameras take a token there) become ``***``.

    Everything up to the last ``@`` goes, not only what ``urlsplit`` calls the user part: a
    password with an unescaped ``/`` or ``?`` in it would otherwise be shown as part of the path.
    """
    scheme, sep, rest = source.partition("://")
    if not sep:
        return source  # a camera index or a file path: nothing secret in it
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    path, query_sep, _query = rest.partition("?")
    return f"{scheme}://{path}{'?***' if query_sep else ''}"


class OpenCVSource:
    """USB cameras (index), video files and network streams (RTSP/HTTP) through cv2.VideoCapture."""

    def __init__(self, source: str, config: CameraConfig) -> None:
        self.source = source
        self.config = config
        self.is_file = not source.isdigit() and not _is_url(source)
        # The name goes into events (MQTT, HA), the journal and error messages: never a password.
        self.shown = redact_source(source)
        self.name = f"opencv:{self.shown}"
        self._capture: cv2.VideoCapture | None = None
        self._file_fps = 0.0
        self._next_due = 0.0

    def open(self) -> None:
        if self.is_file and not Path(self.source).is_file():
            raise CameraError(f"video file {self.shown} does not exist")
        target: int | str = int(self.source) if self.source.isdigit() else self.source
        capture = cv2.VideoCapture(target)
        if not capture.isOpened():
            capture.release()
            raise CameraError(f"cannot open camera source {self.shown!r}")
        if not self.is_file:
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.config.width)
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.config.height)
            capture.set(cv2.CAP_PROP_FPS, self.config.fps)
            capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # keep the newest frame, not a backlog
        self._file_fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self._next_due = time.monotonic()
        self._capture = capture

    def read(self) -> np.ndarray | None:
        if self._capture is None:
            raise CameraError(f"source {self.shown!r} is not open")
        if self.is_file and self.config.realtime and self._file_fps > 0:
            # Pace a file like the camera it stands for.
            delay = self._next_due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._next_due = max(self._next_due, time.monotonic() - 1.0) + 1.0 / self._file_fps
        ok, image = self._capture.read()
        if not ok:
            if self.is_file:
                raise EOFError(f"end of {self.shown}")
            return None
        return image

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class Picamera2Source:
    """The Raspberry Pi camera through picamera2 (installed from apt; imported only here)."""

    is_file = False
    name = "picamera2"
    DETECT_SIZE = (320, 240)

    def __init__(self, config: CameraConfig) -> None:
        self.config = config
        self._camera: Any = None

    def open(self) -> None:
        try:
            from picamera2 import Picamera2  # type: ignore[import-not-found]
        except ImportError as exc:
            raise CameraError(
                "picamera2 is not installed: on Raspberry Pi OS run `sudo apt install"
                " python3-picamera2` and create the venv with --system-site-packages"
            ) from exc
        try:
            camera = Picamera2()
        except Exception as exc:  # picamera2 raises plain RuntimeError/IndexError on no camera
            raise CameraError(f"cannot start the Pi camera: {exc}") from exc
        try:
            video = camera.create_video_configuration(
                main={"size": (self.config.width, self.config.height), "format": "RGB888"},
                lores={"size": self.DETECT_SIZE, "format": "YUV420"},
                controls={"FrameRate": self.config.fps},
                buffer_count=2,  # few buffers: fresh frames, little memory
            )
            camera.configure(video)
            camera.start()
        except Exception as exc:
            # Picamera2() has acquired the camera: release it now, or every reopen attempt finds
            # it busy (held by this very process) until the garbage collector gets to it.
            self._release(camera)
            raise CameraError(f"cannot start the Pi camera: {exc}") from exc
        self._camera = camera

    def read(self) -> tuple[np.ndarray, np.ndarray] | None:
        if self._camera is None:
            raise CameraError("Pi camera is not open")
        try:
            # Both streams from the same request, so the detection image matches the crop image.
            (main, lores), _metadata = self._camera.capture_arrays(["main", "lores"])
        except Exception as exc:
            logger.warning("Pi camera read failed: %s", exc)
            return None
        detect = cv2.cvtColor(lores, cv2.COLOR_YUV420p2BGR)
        return main, detect

    def close(self) -> None:
        camera, self._camera = self._camera, None
        if camera is not None:
            self._release(camera)

    @staticmethod
    def _release(camera: Any) -> None:
        """Stop and close ``camera``; close even when stop fails (a camera that died), since
        close is what gives the device back for the next open."""
        try:
            camera.stop()
        except Exception as exc:
            logger.warning("Pi camera did not stop cleanly: %s", exc)
        finally:
            camera.close()


def make_source(source: str, config: CameraConfig) -> FrameSource:
    if source == "picamera2":
        return Picamera2Source(config)
    return OpenCVSource(source, config)


def frame_problem(image: object, expected_shape: tuple[int, ...] | None) -> str | None:
    """Why a frame is unusable (None if it is fine): empty, wrong size, not colour, flat grey."""
    if not isinstance(image, np.ndarray) or image.size == 0:
        return "empty"
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        return f"not a BGR uint8 image (shape {image.shape}, {image.dtype})"
    if expected_shape is not None and image.shape != expected_shape:
        return f"size {image.shape[1]}x{image.shape[0]} differs from the stream's"
    small = image[::16, ::16]
    if int(small.max()) - int(small.min()) < 8:
        return "flat (a grey or black frame)"
    return None


class CameraHealth:
    """Decides when the camera is lost (no frames, or a frozen picture) and when it is back."""

    def __init__(self, config: CameraConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.ok = True
        self.reason = ""
        self._last_frame_at = clock()
        self._last_change_at = clock()
        self._last_digest: int | None = None

    def frame(self, image: np.ndarray) -> bool:
        """Note a good frame; True when this frame brings the camera back after a loss."""
        now = self.clock()
        self._last_frame_at = now
        digest = zlib.crc32(np.ascontiguousarray(image[::8, ::8]).tobytes())
        if digest != self._last_digest:
            self._last_digest = digest
            self._last_change_at = now
        elif now - self._last_change_at >= self.config.frozen_after_s:
            return False  # still frozen: check() reports it
        if not self.ok and now - self._last_change_at < self.config.frozen_after_s:
            self.ok, self.reason = True, ""
            return True
        return False

    def check(self) -> str | None:
        """The reason the camera was just lost, once; None otherwise."""
        if not self.ok:
            return None
        now = self.clock()
        if now - self._last_frame_at >= self.config.lost_after_s:
            reason = f"no frame for {now - self._last_frame_at:.1f} s"
        elif now - self._last_change_at >= self.config.frozen_after_s:
            reason = f"frozen: the same picture for {now - self._last_change_at:.1f} s"
        else:
            return None
        self.ok, self.reason = False, reason
        return reason

    def reset(self) -> None:
        """After reopening the source: time the wait for frames afresh. The last picture is kept,
        so a camera that comes back still showing the same frozen picture stays lost."""
        self._last_frame_at = self.clock()


class Backoff:
    """Exponential reopen delays: initial, x2, ... up to max; reset after a success."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        self.initial_s, self.max_s = initial_s, max_s
        self._next = initial_s

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.max_s)
        return delay

    def reset(self) -> None:
        self._next = self.initial_s
