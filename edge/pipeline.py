"""The frame loop: capture -> detect -> liveness (-> identity, blink) -> decide -> relay + events.

Capture runs in its own thread and hands over only the newest frame (a one-slot handoff that drops
stale frames and counts them), so decisions are made on fresh pictures and never wait for a queue.
A video file played as fast as possible (``camera.realtime: false``) is read on the loop's own
thread instead, so that every frame of a test clip is processed. One stop event ends everything.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from edge.camera import Backoff, CameraHealth, Frame, FrameSource, frame_problem
from edge.config import Config
from edge.decide import Decision, DecisionEngine, Observation, Track
from edge.detectors.base import Detection, FaceDetector
from edge.device_guard import DeviceGuard
from edge.errors import CameraError
from edge.events import EventBus, new_event
from edge.handoff import LatestFrameSlot
from edge.identity import Match, consensus
from edge.liveness import is_live
from edge.preprocess import Box, FloatBox
from edge.relay import DoorRelay

logger = logging.getLogger(__name__)

# Recognition samples of one face track: every 3rd frame, and a name needs 2 agreeing frames
# (on 15 people, 2 of 3 admitted fewer strangers than any 1 of 3 at the same distance).
ID_SAMPLE_EVERY_FRAMES = 3
ID_MIN_AGREE = 2
# Frames per second for Home Assistant: the first value after 1 s of frames, then one every 5 s.
FPS_FIRST_WINDOW_S = 1.0
FPS_WINDOW_S = 5.0


class LivenessScorer(Protocol):
    threshold: float
    sha256: str

    def score_face(self, frame_bgr: np.ndarray, box: FloatBox) -> float: ...


class IdentityCheck(Protocol):
    """Who is it: an embedding of the face matched against the enrolment store."""

    def identify(self, frame_bgr: np.ndarray, box: Box) -> Match: ...

    def reload_if_changed(self) -> bool: ...


class BlinkCheck(Protocol):
    """Per-track blink detection from eye landmarks."""

    def update(self, track_id: int, frame_bgr: np.ndarray, box: Box, now: float) -> bool: ...

    def forget(self, track_id: int) -> None: ...


class StateObserver(Protocol):
    """What Home Assistant (or any dashboard) is told besides events."""

    def set_face_present(self, present: bool) -> None: ...

    def set_camera_ok(self, ok: bool) -> None: ...

    def set_fps(self, fps: float) -> None: ...


class FaceUnlockState(Protocol):
    """The face-unlock switch (``edge.switch``): the daemon's own, whatever MQTT does."""

    @property
    def enabled(self) -> bool: ...


class DecisionFrameSink(Protocol):
    """Gets the frame behind each decision (``edge.snapshots``); must not block."""

    def decision_frame(self, decision: Decision, frame_bgr: np.ndarray) -> None: ...


class Watchdog(Protocol):
    def watchdog(self) -> None: ...


DECISIONS_KEPT = 1000  # PipelineStats.decisions: the newest this many


@dataclass
class StageTimes:
    """Seconds spent per stage, per processed frame (for the benchmark and the log)."""

    capture: list[float] = field(default_factory=list)
    detect: list[float] = field(default_factory=list)
    liveness: list[float] = field(default_factory=list)
    identity: list[float] = field(default_factory=list)
    decide: list[float] = field(default_factory=list)
    guard: list[float] = field(default_factory=list)  # per device-guard run, not per frame
    keep: int = 10_000  # bounded: a long run must not grow memory

    def add(self, stage: str, seconds: float) -> None:
        values: list[float] = getattr(self, stage)
        values.append(seconds)
        if len(values) > self.keep:
            del values[: len(values) - self.keep]


@dataclass
class PipelineStats:
    frames_read: int = 0
    frames_processed: int = 0
    frames_bad: int = 0
    frames_stale: int = 0
    frames_dropped: int = 0  # replaced in the one-slot handoff before the loop took them
    detections: int = 0
    grants: int = 0
    guard_runs: int = 0  # frames the device guard ran on
    guard_flagged: int = 0  # ...of which a device was around at least one face
    decisions_total: int = 0
    # The newest decisions only: a door runs for months, and every decision kept for good grew
    # the daemon by ~360 bytes (the journal and the audit log are the record).
    decisions: deque[Decision] = field(default_factory=lambda: deque(maxlen=DECISIONS_KEPT))
    fps: float = 0.0
    last_latency_ms: float | None = None
    times: StageTimes = field(default_factory=StageTimes)


class _EndOfStream(Exception):
    pass


class CaptureThread:
    """Reads the source on its own thread into a one-slot handoff; reopens it with backoff."""

    def __init__(
        self,
        source: FrameSource,
        config: Config,
        stop: threading.Event,
        on_state: Callable[[bool, str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.config = config
        self.stop_event = stop
        self.on_state = on_state  # (ok, reason): opened / failed, for the loop to report
        self.clock = clock
        self.slot: LatestFrameSlot[Frame] = LatestFrameSlot()
        self.reopen_requested = threading.Event()
        self.ended = threading.Event()
        # Why the thread ended, when a source raised something else than the end of a file.
        self.error: BaseException | None = None
        self.reads = 0
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float = 2.0) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        backoff = Backoff(
            self.config.camera.reconnect_initial_s, self.config.camera.reconnect_max_s
        )
        opened = False
        failures = 0
        index = 0
        try:
            while not self.stop_event.is_set():
                if not opened or self.reopen_requested.is_set():
                    if opened:
                        self.source.close()
                        opened = False
                    self.reopen_requested.clear()
                    try:
                        self.source.open()
                    except CameraError as exc:
                        delay = backoff.next_delay()
                        self.on_state(False, f"{exc}; retrying in {delay:.0f} s")
                        self.stop_event.wait(delay)
                        continue
                    opened, failures = True, 0
                    backoff.reset()
                    self.on_state(True, "opened")
                try:
                    raw = self.source.read()
                except EOFError:
                    break
                if raw is None:
                    failures += 1
                    if failures >= 30:  # a camera that keeps failing is reopened
                        self.reopen_requested.set()
                    time.sleep(0.01)
                    continue
                failures = 0
                image, detect = raw if isinstance(raw, tuple) else (raw, None)
                self.reads += 1
                self.slot.put(Frame(image, self.clock(), index, detect))
                index += 1
        except BaseException as exc:  # noqa: BLE001 - handed to the frame loop, which raises it
            # Not an end of input: the loop must fail (exit non-zero, systemd restarts), not
            # stop as if a file had ended (exit 0, which Restart=on-failure never restarts).
            self.error = exc
        finally:
            if opened:
                self.source.close()
            self.ended.set()
            self.slot.close()


class Pipeline:
    """Runs the door logic on frames until the stop event, end of file, or an error."""

    def __init__(
        self,
        config: Config,
        source: FrameSource,
        detector: FaceDetector,
        liveness: LivenessScorer,
        relay: DoorRelay,
        bus: EventBus,
        *,
        identity: IdentityCheck | None = None,
        blink: BlinkCheck | None = None,
        observer: StateObserver | None = None,
        face_unlock: FaceUnlockState | None = None,
        snapshots: DecisionFrameSink | None = None,
        watchdog: Watchdog | None = None,
        audit: Callable[..., object] | None = None,
        clock: Callable[[], float] = time.monotonic,
        stop_event: threading.Event | None = None,
        on_first_frame: Callable[[], None] | None = None,
        guard: DeviceGuard | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.detector = detector
        self.liveness = liveness
        self.relay = relay
        self.bus = bus
        self.identity = identity
        self.blink = blink
        self.observer = observer
        self.face_unlock = face_unlock  # None (tests, bench): face unlock on
        self.snapshots = snapshots
        self.watchdog = watchdog
        self.audit = audit
        self.clock = clock
        self.stop_event = stop_event or threading.Event()
        # Called once, after the first good frame went through every stage (systemd READY=1).
        self.on_first_frame = on_first_frame
        self.guard = guard
        self._guard_age = 0  # frames since the device guard last ran
        self.reload_requested = threading.Event()
        self._enrolment_changed = threading.Event()
        self.stats = PipelineStats()
        self.engine = DecisionEngine(
            config.decision,
            policy=config.access.policy,
            blink_required=config.liveness.blink == "required",
            blink_window_s=config.liveness.blink_window_s,
            live_threshold=liveness.threshold,
            device_guard=guard is not None,
        )
        self.health = CameraHealth(config.camera, clock)
        self._camera_state_lock = threading.Lock()
        self._camera_events: list[tuple[bool, str]] = []
        self._expected_shape: tuple[int, ...] | None = None
        self._last_detections: list[Detection] = []
        self._face_present = False
        self._camera_shown = False  # the observer has been told the camera state at least once
        self._id_matches: dict[int, list[Match]] = {}
        self._fps_since: float | None = None
        self._fps_frames = 0
        self._fps_reported = False

    # -- public ---------------------------------------------------------------------------------
    @property
    def last_detections(self) -> list[Detection]:
        """The faces found on the last processed frame (a copy; for observers such as the bench)."""
        return list(self._last_detections)

    def stop(self) -> None:
        self.stop_event.set()

    def enrolment_changed(self) -> None:
        """The enrolment store changed (fleet sync, SIGHUP): from the next frame on, every face
        is recognised again before it can be granted, so a revoked person recognised a moment
        ago is not let in. Safe to call from any thread."""
        self._enrolment_changed.set()

    def remote_unlock_possible(self) -> bool:
        """Whether ``remote_unlock`` would drive the strike now (no lockout, relay not busy)."""
        return not self.engine.locked_out(self.clock()) and self.relay.ready

    def remote_unlock(self, source: str) -> bool:
        """An unlock not decided by a face (e.g. an authorised MQTT command); audited."""
        now = self.clock()
        if self.engine.locked_out(now):
            return False
        # Audited before the relay moves, like a face grant: a kill at the moment the strike opens
        # still leaves the reason, and the next start reports the pulse it never closed.
        self._audit("remote_unlock", source=source)
        pulsed = self.relay.pulse()
        if not pulsed:
            self._audit("relay_refused", source=source)
        return pulsed

    def run(self) -> None:
        """Process frames until stopped or the file ends. Stage errors propagate to the caller."""
        file_mode = self.source.is_file and not self.config.camera.realtime
        try:
            if file_mode:
                self._run_file()
            else:
                self._run_camera()
        finally:
            # Nobody is watched once the loop ends: HA must not keep showing a face at the door.
            self._set_face_present(False)

    # -- loops ----------------------------------------------------------------------------------
    def _run_file(self) -> None:
        self.source.open()
        try:
            index = 0
            while not self.stop_event.is_set():
                start = self.clock()
                try:
                    raw = self.source.read()
                except EOFError:
                    return
                self.stats.times.add("capture", self.clock() - start)
                if raw is None:
                    self.stats.frames_bad += 1
                    continue
                image, detect = raw if isinstance(raw, tuple) else (raw, None)
                self.stats.frames_read += 1
                self.process(Frame(image, self.clock(), index, detect))
                index += 1
        finally:
            self.source.close()

    def _run_camera(self) -> None:
        capture = CaptureThread(
            self.source, self.config, self.stop_event, self._on_camera_state, self.clock
        )
        capture.start()
        try:
            while not self.stop_event.is_set():
                frame = capture.slot.get(timeout=0.2)
                self._report_camera_state()
                if frame is None:
                    if capture.ended.is_set():
                        self._raise_capture_error(capture)
                        return  # a realtime file reached its end
                    self._idle()
                    lost = self.health.check()
                    if lost:
                        self._camera_lost(lost)
                        capture.reopen_requested.set()
                    continue
                self.stats.frames_read += 1
                self.stats.frames_dropped = capture.slot.dropped
                if self.clock() - frame.captured_at > self.config.camera.max_frame_age_s:
                    self.stats.frames_stale += 1
                    continue
                self.process(frame)
                lost = self.health.check()
                if lost:
                    self._camera_lost(lost)
                    capture.reopen_requested.set()
        finally:
            self.stop_event.set()
            capture.slot.close()
            capture.join()

    def _raise_capture_error(self, capture: CaptureThread) -> None:
        if capture.error is not None:
            raise CameraError(
                f"reading {self.source.name} failed: {type(capture.error).__name__}:"
                f" {capture.error}"
            ) from capture.error

    # -- one frame ------------------------------------------------------------------------------
    def process(self, frame: Frame) -> list[Decision]:
        """All stages on one frame; returns the verdicts reached on it."""
        problem = frame_problem(frame.image, self._expected_shape)
        if problem is not None:
            self.stats.frames_bad += 1
            logger.debug("skipped frame %d: %s", frame.index, problem)
            self._idle()
            return []
        if self._expected_shape is None:
            self._expected_shape = frame.image.shape
        if self.health.frame(frame.image):
            self._camera_back()
        if not self.health.ok:
            self._idle()
            return []  # frozen picture: never decide on it
        if not self._camera_shown and self.observer is not None:
            # The camera sensor shows ON from the first good frame, not only after a fault.
            self._camera_shown = True
            self.observer.set_camera_ok(True)
        self.stats.frames_processed += 1
        now = frame.captured_at
        if self._enrolment_changed.is_set():
            self._enrolment_changed.clear()
            self.engine.forget_identities()
            self._id_matches.clear()
        detections = self._detect(frame)
        t0 = self.clock()
        observations = []
        for detection in detections:
            p_real = self.liveness.score_face(frame.image, detection.context_box)
            observations.append(
                Observation(detection.box, p_real, is_live(p_real, self.liveness.threshold))
            )
        t1 = self.clock()
        self.stats.times.add("liveness", t1 - t0)
        if self.guard is not None:
            observations = self._guard_faces(frame, observations)
            t1 = self.clock()  # the guard times itself ("guard"), apart from the decision
        face_unlock = self.face_unlock.enabled if self.face_unlock is not None else True
        decisions, tracks = self.engine.update(observations, now, face_unlock)
        t2 = self.clock()
        self.stats.times.add("decide", t2 - t1)
        for decision, track in zip(decisions, tracks, strict=True):
            self._act(decision, track)
            if self.snapshots is not None:  # after the relay and the journal: never delays them
                self.snapshots.decision_frame(decision, frame.image)
        self._identify_and_blink(frame, now)
        self.stats.times.add("identity", self.clock() - t2)
        self._after_frame(now)
        if self.on_first_frame is not None:
            self.on_first_frame()
            self.on_first_frame = None
        return decisions

    def _detect(self, frame: Frame) -> list[Detection]:
        t0 = self.clock()
        # With picamera2's low-resolution stream of the same request, detectors that can search
        # it; boxes always come back in pixels of the full frame, where the face crop is cut.
        detections = self.detector.detect_frame(frame.image, frame.detect_image)
        self.stats.times.add("detect", self.clock() - t0)
        self.stats.detections += len(detections)
        self._last_detections = detections
        return detections

    def _guard_faces(self, frame: Frame, observations: list[Observation]) -> list[Observation]:
        """Run the device guard on this frame if an undecided face needs it: a face it has not
        looked at yet, or one it found a device around on its last run, at once (a flag is
        confirmed or cleared on the next frame, so one stray box cannot stand for several
        votes); the others every ``every_n_frames`` frames (a result counts for the track until
        the next run). No run on an empty doorstep or once every face is decided, so the guard
        costs nothing there."""
        assert self.guard is not None
        self._guard_age += 1
        if self.engine.locked_out(frame.captured_at):
            return observations  # nothing is decided during a lockout: nothing to check
        tracks = [self.engine.track_for(obs.box) for obs in observations]
        open_tracks = [track for track in tracks if track is None or not track.decided]
        if not open_tracks:
            return observations
        urgent = any(
            track is None or not track.device_checked or track.device is not None
            for track in open_tracks
        )
        if not urgent and self._guard_age < self.guard.every_n_frames:
            return observations
        t0 = self.clock()
        devices = self.guard.check(frame.image, [obs.box for obs in observations])
        self.stats.times.add("guard", self.clock() - t0)
        self._guard_age = 0
        self.stats.guard_runs += 1
        if any(device is not None for device in devices):
            self.stats.guard_flagged += 1
            logger.debug("device guard, frame %d: %s", frame.index, devices)
        return [
            replace(obs, device_checked=True, device=device)
            for obs, device in zip(observations, devices, strict=True)
        ]

    def _identify_and_blink(self, frame: Frame, now: float) -> None:
        for track in self.engine.seen_at(now):
            if self.identity is not None and not track.identity_done:
                self._identify(track, frame)
            if self.blink is not None and self.blink.update(track.id, frame.image, track.box, now):
                self.engine.note_blink(track.id, now)

    def _identify(self, track: Track, frame: Frame) -> None:
        # Spread the few recognition runs over the track (frames 1, 4, 7, ...): a face turning
        # away for a moment must not settle who it is, and the frame rate must hold.
        if (track.frames - 1) % ID_SAMPLE_EVERY_FRAMES:
            return
        assert self.identity is not None
        matches = self._id_matches.setdefault(track.id, [])
        matches.append(self.identity.identify(frame.image, track.box))
        needed = min(ID_MIN_AGREE, self.config.access.samples_per_track)
        verdict = consensus(matches, needed)
        if verdict.person is not None or len(matches) >= self.config.access.samples_per_track:
            self.engine.note_identity(track.id, verdict.person, verdict.distance)

    def _act(self, decision: Decision, track: Track) -> None:
        granted = decision.verdict == "granted"
        # One pulse at a time: a grant while the strike is already open does not drive it again.
        will_pulse = granted and self.relay.ready
        if granted:
            self.stats.grants += 1
        latency_ms = (self.clock() - track.first_seen) * 1000.0
        self.stats.decisions.append(decision)
        self.stats.decisions_total += 1
        self.stats.last_latency_ms = latency_ms if decision.verdict == "granted" else None
        data = {
            "box": list(decision.box),
            "score": round(decision.p_real, 4),
            "threshold": self.liveness.threshold,
            "frames_voted": decision.frames_voted,
            "live_votes": decision.live_votes,
            "frames_seen": decision.frames_seen,
            "latency_ms": round(latency_ms, 1),
            "model_sha256": self.liveness.sha256,
            "person": decision.person,
            "match_distance": (
                None if decision.match_distance is None else round(decision.match_distance, 4)
            ),
            "track": decision.track_id,
            "detector": self.detector.name,
        }
        if granted:
            data["relay_pulsed"] = will_pulse
        if decision.reason is not None:
            data["reason"] = decision.reason
        if decision.device is not None:
            data["device"] = decision.device.label
            data["device_score"] = round(decision.device.score, 4)
            data["device_box"] = list(decision.device.box)
        # Door safety: the decision is committed to the journal and the audit log BEFORE the relay
        # moves, so a kill -9 at the moment the strike opens never leaves an unexplained pulse.
        # (relay_on / relay_off are audited by the relay's own listener, once per pulse.)
        self.bus.emit(new_event(decision.verdict, **data))
        self._audit(
            "decision",
            decision=decision.verdict,
            score=data["score"],
            threshold=self.liveness.threshold,
            model_sha256=self.liveness.sha256,
            person=decision.person,
            source="face",
            pulse=will_pulse,
            **({"reason": decision.reason} if decision.reason is not None else {}),
        )
        if will_pulse and not self.relay.pulse():
            # Lost a race since `ready` (a remote unlock, or the stop closing the relay).
            self._audit("relay_refused", source="face", person=decision.person)
            logger.warning("granted, but the relay refused the pulse (already open or closing)")
        logger.info(
            "%s: track %d score %.3f (%d/%d live) person=%s latency %.0f ms",
            decision.verdict,
            decision.track_id,
            decision.p_real,
            decision.live_votes,
            decision.frames_voted,
            decision.person,
            latency_ms,
        )

    def _after_frame(self, now: float) -> None:
        for track in self.engine.expire(now):
            self._id_matches.pop(track.id, None)
            if self.blink is not None:
                self.blink.forget(track.id)
        self._set_face_present(self.engine.face_present)
        if self.reload_requested.is_set():
            self.reload_requested.clear()
            if self.identity is not None and self.identity.reload_if_changed():
                logger.info("enrolment store reloaded")
                self.enrolment_changed()
        self._idle()

    def _idle(self) -> None:
        """Work done on every loop turn, frame or not: watchdog, metrics."""
        if self.watchdog is not None:
            self.watchdog.watchdog()
        now = self.clock()
        processed = self.stats.frames_processed
        if self._fps_since is None:
            # The first window opens at the first processed frame, so that the first value is
            # a measured rate, not the camera's start-up time.
            if processed:
                self._fps_since, self._fps_frames = now, processed
            return
        elapsed = now - self._fps_since
        if elapsed >= (FPS_WINDOW_S if self._fps_reported else FPS_FIRST_WINDOW_S):
            self.stats.fps = (processed - self._fps_frames) / elapsed
            self._fps_since, self._fps_frames = now, processed
            self._fps_reported = True
            if self.observer is not None:
                self.observer.set_fps(self.stats.fps)

    def _set_face_present(self, present: bool) -> None:
        if present != self._face_present:
            self._face_present = present
            if self.observer is not None:
                self.observer.set_face_present(present)

    # -- camera state ---------------------------------------------------------------------------
    def _on_camera_state(self, ok: bool, reason: str) -> None:
        # Called on the capture thread: queue it; the loop thread emits events in order.
        with self._camera_state_lock:
            self._camera_events.append((ok, reason))

    def _report_camera_state(self) -> None:
        with self._camera_state_lock:
            pending, self._camera_events = self._camera_events, []
        for ok, reason in pending:
            if ok:
                self.health.reset()
                # A reopened camera may deliver another size (a USB camera plugged back in, a
                # driver that fell back to another mode): its first good frame sets the size
                # again, instead of every frame being refused as the wrong size for good. Tracks
                # go too: their boxes are in the old frame's pixels.
                self._expected_shape = None
                self.engine.forget_tracks()
            elif self.health.ok:
                self.health.ok, self.health.reason = False, reason
                self._emit_camera(False, reason)

    def _camera_lost(self, reason: str) -> None:
        self._emit_camera(False, reason)

    def _camera_back(self) -> None:
        self._emit_camera(True, "frames again")

    def _emit_camera(self, ok: bool, reason: str) -> None:
        if not ok:
            self.relay.lock(reason="camera lost")
            self.engine.forget_tracks()  # no grant may rest on frames from before the loss
        logger.warning("camera %s: %s", "ok" if ok else "lost", reason)
        self.bus.emit(
            new_event("camera_ok" if ok else "camera_lost", reason=reason, source=self.source.name)
        )
        if self.observer is not None:
            self._camera_shown = True
            self.observer.set_camera_ok(ok)

    def _audit(self, action: str, **fields: object) -> None:
        if self.audit is not None:
            self.audit(action, **fields)
