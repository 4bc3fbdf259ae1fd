"""Decision snapshots: a JPEG of the frame behind a decision, with the face box drawn on it.

Off by default (``homeassistant.snapshot``): a snapshot is a picture of a face, so it is kept only
where the owner asked for it: in ``<state_dir>/snapshots`` (folder 0700, files 0600, at most
``snapshot_keep`` files, the oldest deleted first, at start too; with snapshots off the daemon
deletes them all at start) and, with MQTT, on Home Assistant's image entity (never retained, so
no face stays on the broker). No pixels ever go into an event or a log line.

The frame loop only copies the frame into a small queue; encoding, the disk and the network happen
on the snapshot thread, so a snapshot never delays the door. When the queue is full the snapshot
is dropped and counted: decisions come first.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from edge.config import HomeAssistantConfig
from edge.decide import Decision
from edge.preprocess import Box

logger = logging.getLogger(__name__)

SNAPSHOT_DIR = "snapshots"
JPEG_QUALITY = 85
QUEUE_SIZE = 4  # decisions are seconds apart; more than a few waiting means the disk is stuck
BOX_THICKNESS_PX = 2
# BGR: green for a grant, red for every refusal.
GRANTED_BGR = (0, 200, 0)
DENIED_BGR = (0, 0, 230)
# <sequence>-<UTC time>-<verdict>.jpg: the sequence orders the files even when the wall clock
# jumps back (a Pi without a real-time clock corrects its time after boot).
_NAME = re.compile(r"^(\d{8,})-.*\.jpg$")

Publish = Callable[[bytes], None]


def render_jpeg(frame_bgr: np.ndarray, box: Box, verdict: str) -> bytes:
    """The frame as a JPEG with ``box`` drawn; the caller's array is not modified."""
    import cv2  # the daemon has OpenCV already; imported here so the module loads without it

    image = np.ascontiguousarray(frame_bgr).copy()
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    colour = GRANTED_BGR if verdict == "granted" else DENIED_BGR
    cv2.rectangle(image, (x1, y1), (x2, y2), colour, BOX_THICKNESS_PX)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("OpenCV could not encode the snapshot as JPEG")
    return encoded.tobytes()


class SnapshotStore:
    """Owner-only JPEG files in one folder, at most ``keep`` of them (0: nothing is stored)."""

    def __init__(self, folder: Path, keep: int) -> None:
        self.folder = Path(folder)
        self.keep = keep
        self._seq = self._last_seq()

    def _last_seq(self) -> int:
        if not self.folder.is_dir():
            return 0
        seqs = [int(m.group(1)) for p in self.folder.iterdir() if (m := _NAME.match(p.name))]
        return max(seqs, default=0)

    def files(self) -> list[Path]:
        """Stored snapshots, oldest first."""
        if not self.folder.is_dir():
            return []
        named = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := _NAME.match(p.name))]
        return [p for _, p in sorted(named)]

    def save(self, jpeg: bytes, verdict: str, wall_time: datetime | None = None) -> Path | None:
        """Write one snapshot and delete the oldest beyond ``keep``; None when keep is 0."""
        if self.keep <= 0:
            return None
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        # mkdir's mode is cut by the umask and ignored for a folder that already exists.
        os.chmod(self.folder, 0o700)
        self._seq += 1
        stamp = (wall_time or datetime.now(tz=UTC)).strftime("%Y%m%dT%H%M%S%fZ")
        path = self.folder / f"{self._seq:08d}-{stamp}-{verdict}.jpg"
        # 0600 whatever the umask (it can only take bits away); O_EXCL never follows a planted link.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(jpeg)
        self.prune()
        return path

    def prune(self) -> int:
        """Delete the oldest snapshots beyond ``keep`` (every one when keep is 0); how many went.

        Run at start too: a lower ``snapshot_keep`` than the last run's must not leave faces
        behind until the next decision, nor for good when keep is 0 and nothing is ever saved.
        """
        stored = self.files()
        doomed = stored[: max(len(stored) - self.keep, 0)]
        for old in doomed:
            old.unlink(missing_ok=True)
        return len(doomed)


def forget_snapshots(state_dir: Path) -> int:
    """Snapshots turned off: delete the faces an earlier run with them on left in
    ``<state_dir>/snapshots``; how many went. Files of other names are left alone."""
    return SnapshotStore(Path(state_dir) / SNAPSHOT_DIR, keep=0).prune()


@dataclass
class _Job:
    verdict: str
    box: Box
    image: np.ndarray


class Snapshotter:
    """Takes decisions from the frame loop (``decision_frame``) and stores/publishes snapshots."""

    def __init__(
        self, config: HomeAssistantConfig, state_dir: Path, publish: Publish | None = None
    ) -> None:
        self.kinds = frozenset(config.snapshot_kinds)
        self.store = SnapshotStore(Path(state_dir) / SNAPSHOT_DIR, config.snapshot_keep)
        if removed := self.store.prune():
            logger.info("deleted %d snapshot(s) beyond snapshot_keep=%d", removed, self.store.keep)
        self.publish = publish
        self.taken = 0
        self.dropped = 0
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=QUEUE_SIZE)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="snapshots", daemon=True)
        self._thread.start()

    def decision_frame(self, decision: Decision, frame_bgr: np.ndarray) -> None:
        """Called by the frame loop after a decision was acted on; never blocks."""
        if self._closed or decision.verdict not in self.kinds:
            return
        # A copy: the capture side may reuse or release its buffer once the loop moves on.
        job = _Job(decision.verdict, decision.box, np.array(frame_bgr, copy=True))
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.dropped += 1
            logger.warning("snapshot of a %s dropped: %d still waiting", job.verdict, QUEUE_SIZE)

    def close(self, timeout: float = 2.0) -> None:
        """Finish the queued snapshots (up to ``timeout`` s) and stop the thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            logger.warning("snapshot thread is stuck; %d snapshot(s) not written", QUEUE_SIZE)
            return
        self._thread.join(timeout)

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                self._take(job)
            except Exception:
                # A full disk or a broken encoder must not end snapshots for good (nor the door).
                logger.exception("could not take the %s snapshot", job.verdict)

    def _take(self, job: _Job) -> None:
        jpeg = render_jpeg(job.image, job.box, job.verdict)
        path = self.store.save(jpeg, job.verdict)
        if self.publish is not None:
            self.publish(jpeg)
        self.taken += 1
        logger.debug("%s snapshot: %d bytes, stored as %s", job.verdict, len(jpeg), path)
