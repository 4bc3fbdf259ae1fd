"""Builds the daemon from a validated config and runs it with an ordered, door-safe shutdown.

Order of start: everything that can refuse (model, detector, enrolment store, journal) is loaded
BEFORE the relay is touched, so a bad setup exits without ever driving the pin. Order of stop: relay
locked first, then the last events, then MQTT. Any exception in a stage locks the door and makes
the process exit non-zero (systemd restarts it).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

import numpy as np
from gpiozero.pins import Factory

from edge.calibration import ThresholdFrom, apply_calibration
from edge.camera import FrameSource, make_source
from edge.config import Config
from edge.detectors.base import FaceDetector
from edge.detectors.registry import detector_from_config
from edge.device_guard import load_device_guard
from edge.errors import EXIT_FAILURE, EXIT_OK, LiveGateError
from edge.events import Event, EventBus, JsonLinesSink, new_event
from edge.identity import Match
from edge.liveness import LivenessModel
from edge.mqtt import MqttLink, device_topic
from edge.pipeline import LivenessScorer, Pipeline, PipelineStats
from edge.preprocess import Box
from edge.relay import DoorRelay, mock_pin_factory
from edge.switch import FaceUnlockSwitch

logger = logging.getLogger(__name__)


class DaemonLiveness(LivenessScorer, Protocol):
    """The liveness scorer the daemon runs: the pipeline's ``LivenessScorer`` plus the check at
    start that it may be given boxes of the configured detector."""

    def refuse_other_detector(self, kind: str) -> None:
        """Raise ``ModelError`` when boxes of detector ``kind`` are not what the scorer was
        validated on (``LivenessModel``: its sidecar's ``box_detectors``); else return."""
        ...


@dataclass
class RunOptions:
    """Command-line overrides of the config, for trying things out."""

    source: str | None = None
    relay_mock: bool = False
    events_out: Path | None = None
    print_events: TextIO | None = None
    pin_factory: Factory | None = None  # tests pass their MockFactory
    stop_event: threading.Event = field(default_factory=threading.Event)
    # Why stop_event was set (e.g. "signal SIGTERM"), for the stopped event and the audit log.
    stop_reason: str | None = None
    # Injected parts (tests, benchmarks): used instead of the ones the config names.
    frame_source: FrameSource | None = None
    detector: FaceDetector | None = None
    liveness: DaemonLiveness | None = None


class RateLimitedWatchdog:
    """Pings systemd's watchdog at most at half its interval, from the frame loop."""

    def __init__(self, notifier: Any, interval_s: float | None) -> None:
        self.notifier = notifier
        self.interval_s = interval_s
        self._last = 0.0

    def watchdog(self) -> None:
        if self.interval_s is None:
            return
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            self.notifier.watchdog()


class IdentityService:
    """Face embeddings (dlib) matched against the enrolment store; hot reload on change."""

    def __init__(self, config: Config) -> None:
        from edge.identity import EnrolmentStore, FaceEmbedder, Recogniser

        self._store_cls, self._recogniser_cls = EnrolmentStore, Recogniser
        self.config = config
        self.embedder = FaceEmbedder()
        self.store = EnrolmentStore.load(config.store_path, self.embedder.model_sha256)
        self.recogniser = Recogniser(
            self.store, config.access.max_distance, config.access.min_margin
        )
        # Fleet sync reloads from paho's thread, SIGHUP from the frame loop: one at a time.
        self._reload_lock = threading.Lock()
        # Called with the number of people after each reload (Home Assistant's sensor).
        self.on_reload: list[Callable[[int], None]] = []

    def identify(self, frame_bgr: np.ndarray, box: Box) -> Match:
        return self.recogniser.match(self.embedder.embed(frame_bgr, box))

    def reload_if_changed(self) -> bool:
        with self._reload_lock:
            if not self.store.changed_on_disk():
                return False
            store = self._store_cls.load(self.config.store_path, self.embedder.model_sha256)
            # One assignment swaps what identify() sees: never a new store with an old matcher.
            self.recogniser = self._recogniser_cls(
                store, self.config.access.max_distance, self.config.access.min_margin
            )
            self.store = store
        count = len(self.store.people())
        logger.info("enrolment store changed on disk: %d people", count)
        for listener in self.on_reload:
            listener(count)
        return True


class BlinkService:
    """Eye aspect ratio per frame (MediaPipe face mesh) and a blink tracker per face track."""

    def __init__(self, config: Config) -> None:
        from edge.blink import BlinkTracker, EyeLandmarker

        self._tracker_cls = BlinkTracker
        self.landmarker = EyeLandmarker(assets_dir=config.detector.assets_dir)
        self.trackers: dict[int, Any] = {}

    def update(self, track_id: int, frame_bgr: np.ndarray, box: Box, now: float) -> bool:
        # The tracker's own defaults shape one blink (closed at most 0.4 s); how recent a blink
        # must be for a grant is liveness.blink_window_s, checked by the decision engine.
        tracker = self.trackers.setdefault(track_id, self._tracker_cls())
        return bool(tracker.update(self.landmarker.eye_aspect_ratio(frame_bgr, box), now))

    def forget(self, track_id: int) -> None:
        self.trackers.pop(track_id, None)


def load_detector(config: Config) -> FaceDetector:
    if config.detector.threads and config.detector.kind == "res10":
        import cv2

        cv2.setNumThreads(config.detector.threads)  # process-wide in OpenCV
    return detector_from_config(config.detector)


def _stop_mqtt(delivery: Any, link: MqttLink | None) -> None:
    """Stop delivery, then the link; say so when the broker was never reached (the events wait
    in the journal for the next start)."""
    if delivery is not None:
        delivery.stop(timeout=3.0)
    if link is not None:
        if not link.connected:
            waiting = link.waiting_events()
            logger.warning(
                "MQTT broker %s not reached; %s event(s) kept in the journal for the next start",
                link.address,
                "some" if waiting is None else waiting,
            )
        link.stop()


class Daemon:
    """Owns every long-lived part; ``run()`` returns the process exit code."""

    def __init__(self, config: Config, options: RunOptions) -> None:
        self.config = config
        self.options = options
        self.stats: PipelineStats | None = None
        self._closers: list[Callable[[], None]] = []
        self.pipeline: Pipeline | None = None

    # Everything that can refuse to start, before the relay exists.
    def _load_refusable(self) -> None:
        from edge.nativelog import filtered_native_stderr

        # Models load here, before any thread runs: TFLite's per-interpreter INFO line is dropped.
        with filtered_native_stderr():
            self._load_models()
        cfg = self.config
        cfg.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # owner-only when new
        self._open_state()

    def _load_models(self) -> None:
        cfg = self.config
        opts = self.options
        self.liveness = opts.liveness or LivenessModel.load(
            cfg.liveness.model, cfg.sidecar_path, cfg.liveness.threshold
        )
        self.threshold_from: ThresholdFrom = (
            "config" if cfg.liveness.threshold is not None else "model"
        )
        if opts.liveness is None and apply_calibration(self.liveness, cfg) is not None:
            self.threshold_from = "camera_calibration"
        self.detector = opts.detector or load_detector(cfg)
        self.liveness.refuse_other_detector(cfg.detector.kind)
        # A missing or altered guard model refuses to start, like the liveness model.
        self.guard = load_device_guard(cfg.device_guard)
        self.identity: IdentityService | None = None
        if cfg.access.policy == "enrolled":
            self.identity = IdentityService(cfg)
            if not self.identity.store.people():
                logger.warning(
                    "nobody is enrolled: the door will not open for anyone. Enrol a person with"
                    " `python -m edge enroll add NAME --source <images|video|camera> --config ...`"
                )
        else:
            logger.warning(
                "access.policy is any_live: ANY live face opens the door;"
                " this is not access control"
            )
        self.fleet: Any = None
        if cfg.fleet.enabled:
            # Keys are checked now: a door with a bad key file refuses to start (locked).
            from edge.fleet import DoorKeys, FleetDoor
            from edge.identity import EMBEDDING_MODEL_SHA256

            self.fleet = FleetDoor(
                cfg,
                DoorKeys.from_config(cfg),
                EMBEDDING_MODEL_SHA256,
                on_change=self._fleet_changed,
            )
        self.blink: BlinkService | None = (
            BlinkService(cfg) if cfg.liveness.blink == "required" else None
        )

    def _open_state(self) -> None:
        cfg = self.config
        # Loaded before the first frame, whatever MQTT does: a door switched off stays off.
        self.face_unlock = FaceUnlockSwitch(cfg.state_dir)
        if not self.face_unlock.enabled:
            logger.warning(
                "face unlock is switched OFF (%s): faces are refused (denied_disabled) until it"
                " is switched on in Home Assistant",
                self.face_unlock.path,
            )
        from edge.audit import AuditLog
        from edge.journal import EventJournal

        self.journal = EventJournal(
            cfg.journal_path,
            cfg.events.max_rows,
            cfg.events.max_age_days,
            # Without MQTT nothing will ever deliver: let pruning treat rows as done.
            awaits_delivery=cfg.mqtt.enabled,
        )
        self._closers.append(self.journal.close)
        self.audit = AuditLog(cfg.audit_path)
        self._closers.append(self.audit.close)

    def _fleet_changed(self) -> None:
        # Reload now, on the fleet's thread: a camera that sees no one calls nothing, and a
        # revoked person must not be matched by a stale copy a moment longer than needed.
        if self.identity is not None:
            self.identity.reload_if_changed()

    def run(self) -> int:
        self._load_refusable()
        cfg, opts = self.config, self.options
        from edge.audit import STOP, entries_of_last_run, unclosed_pulse

        # Read before this run's own "start" entry: what the previous run left behind.
        unclosed = unclosed_pulse(entries_of_last_run(cfg.audit_path))
        relay, bus = self._start_relay_and_events()
        link: MqttLink | None = None
        delivery = None
        bridge = None
        exit_code = EXIT_OK
        error: BaseException | None = None
        try:
            from edge.sdnotify import SystemdNotifier, watchdog_interval_s

            notifier = SystemdNotifier()
            source = opts.frame_source or make_source(opts.source or cfg.camera.source, cfg.camera)
            self.pipeline = pipeline = Pipeline(
                cfg,
                source,
                self.detector,
                self.liveness,
                relay,
                bus,
                identity=self.identity,
                blink=self.blink,
                face_unlock=self.face_unlock,
                watchdog=RateLimitedWatchdog(notifier, watchdog_interval_s()),
                audit=self.audit.append,
                stop_event=opts.stop_event,
                # READY only once camera, model and relay have all worked on a real frame.
                on_first_frame=notifier.ready,
                guard=self.guard,
            )
            if self.identity is not None:
                # Fleet sync or SIGHUP: faces already recognised are recognised again.
                self.identity.on_reload.append(lambda _count: pipeline.enrolment_changed())
            if cfg.mqtt.enabled:
                link, delivery, bridge = self._start_mqtt(bus, relay, pipeline)
            if cfg.homeassistant.snapshot:
                pipeline.snapshots = self._start_snapshots(bridge)
            else:
                self._forget_snapshots()
            bus.emit(self._started_event(source.name))
            if unclosed is not None:
                self._report_unclosed_pulse(bus, unclosed)
            pipeline.run()
            notifier.stopping()
        except BaseException as exc:  # noqa: BLE001 - every failure must lock the door first
            error = exc
            exit_code = EXIT_FAILURE
            if isinstance(exc, LiveGateError):  # its message names the cause: no traceback
                logger.error("stage failure: %s; locking the door and stopping", exc)
            else:
                logger.exception("stage failure; locking the door and stopping")
        finally:
            relay.close()  # locked before anything else can go wrong
            self.stats = self.pipeline.stats if self.pipeline else None
            if error is not None:
                reason = f"error: {type(error).__name__}: {error}"
            else:
                reason = opts.stop_reason or "end of input"
            try:
                bus.emit(new_event("stopped", reason=reason))
            except Exception:
                logger.exception("could not record the stopped event")
            try:
                self.audit.append(STOP, reason=reason)
            except Exception:
                logger.exception("could not audit the stop")
            _stop_mqtt(delivery, link)
            for close in reversed(self._closers):
                close()
        if isinstance(error, KeyboardInterrupt):
            return EXIT_OK
        return exit_code

    def _start_relay_and_events(self) -> tuple[DoorRelay, EventBus]:
        """The relay (locked), then the audit log's start entry and the event bus. A pin it
        cannot open refuses the start (RelayError, exit 2) before any entry or event."""
        from edge.audit import START

        relay = self._door_relay()
        try:
            self.audit.append(
                START,
                model_sha256=self.liveness.sha256,
                policy=self.config.access.policy,
                pid=os.getpid(),
            )
            return relay, self._event_bus()
        except BaseException:
            relay.close()
            raise

    def _event_bus(self) -> EventBus:
        """The journal's bus, with the JSON-lines sinks the options ask for."""
        bus = EventBus(self.journal)
        if self.options.events_out is not None:
            sink = JsonLinesSink(self.options.events_out)
            bus.add_listener(sink)
            self._closers.append(sink.close)
        if self.options.print_events is not None:
            bus.add_listener(JsonLinesSink(self.options.print_events))
        return bus

    def _door_relay(self) -> DoorRelay:
        """The relay (mock pins when asked), every switch audited."""
        opts = self.options
        pin_factory = opts.pin_factory or (
            mock_pin_factory() if opts.relay_mock or self.config.relay.mock else None
        )
        relay = DoorRelay(self.config.relay, pin_factory=pin_factory)
        relay.add_listener(
            lambda unlocked: self.audit.append("relay_on" if unlocked else "relay_off")
        )
        return relay

    def _started_event(self, source_name: str) -> Event:
        return new_event(
            "started",
            model_sha256=self.liveness.sha256,
            threshold=self.liveness.threshold,
            threshold_from=self.threshold_from,
            detector=self.detector.name,
            policy=self.config.access.policy,
            source=source_name,
            enrolled=None if self.identity is None else len(self.identity.store.people()),
            device_guard=self.guard is not None,
        )

    def _report_unclosed_pulse(self, bus: EventBus, entry: dict[str, Any]) -> None:
        """The previous run was killed between a grant and the end of its pulse."""
        logger.error(
            "the previous run ended during a door pulse: %s at %s (audit seq %d) has no relay_off"
            " after it (killed or powered off while unlocked?); the relay is locked now",
            {"remote_unlock": "a remote unlock", "decision": "a grant"}.get(
                entry["action"], "a relay_on"
            ),
            entry["ts"],
            entry["seq"],
        )
        data = {
            "audit_seq": entry["seq"],
            "audit_ts": entry["ts"],
            "grant_action": entry["action"],
            "person": entry.get("person"),
            "source": entry.get("source"),
        }
        bus.emit(new_event("unclosed_pulse", **data))
        self.audit.append("unclosed_pulse", **data)

    def _start_mqtt(
        self, bus: EventBus, relay: DoorRelay, pipeline: Pipeline
    ) -> tuple[Any, Any, Any]:
        from edge.delivery import EventDelivery

        link = MqttLink(self.config.mqtt)
        link.backlog = self.journal.pending_count
        delivery = EventDelivery(self.journal, link, device_topic(self.config.mqtt, "event"))
        bus.add_listener(lambda _event: delivery.wake())
        bridge = None
        if self.config.homeassistant.discovery:
            from edge.homeassistant import HomeAssistantBridge

            bridge = HomeAssistantBridge(
                link,
                self.config,
                emit=bus.emit,
                request_unlock=pipeline.remote_unlock,
                request_lock=lambda: relay.lock(reason="MQTT LOCK command"),
                switch=self.face_unlock,
                unlock_possible=pipeline.remote_unlock_possible,
            )
            bus.add_listener(bridge.on_event)
            relay.add_listener(bridge.set_lock_state)
            bridge.set_liveness_threshold(
                self.liveness.threshold, self.threshold_from, self.liveness.sha256
            )
            if self.identity is not None:
                bridge.set_enrolled(len(self.identity.store.people()))
                self.identity.on_reload.append(bridge.set_enrolled)
            pipeline.observer = bridge
            bridge.start()
        if self.fleet is not None:
            self.fleet.attach(link)
            if self.identity is not None:
                self.identity.on_reload.append(self.fleet.store_reloaded)
        delivery.start()
        link.start()
        return link, delivery, bridge

    def _forget_snapshots(self) -> None:
        """Snapshots off: faces stored while they were on must not stay on the door for good."""
        from edge.snapshots import forget_snapshots

        try:
            removed = forget_snapshots(self.config.state_dir)
        except OSError as exc:
            # The door works without this; the owner must hear that faces are still stored.
            logger.error("snapshots are off but old ones could not be deleted: %s", exc)
            return
        if removed:
            logger.info("snapshots are off: deleted %d stored earlier", removed)

    def _start_snapshots(self, bridge: Any) -> Any:
        from edge.snapshots import Snapshotter

        logger.info(
            "snapshots on: %s decisions are kept as JPEGs (faces) in %s",
            ", ".join(self.config.homeassistant.snapshot_kinds),
            self.config.state_dir / "snapshots",
        )
        snapshots = Snapshotter(
            self.config.homeassistant,
            self.config.state_dir,
            publish=bridge.publish_snapshot if bridge is not None else None,
        )
        self._closers.append(snapshots.close)
        return snapshots
