"""The whole daemon as Home Assistant sees it, on a real mosquitto on 127.0.0.1.

Fake camera, detector and liveness (``tests/fakes.py``) and gpiozero's MockFactory relay: the
face-unlock switch the daemon owns, the camera sensor, the event entity from the first event on,
what stays retained after a clean stop, first metric values, and decision snapshots. The liveness
threshold sensor runs the shipped liveness model, whose threshold a camera calibration raises.
"""

from __future__ import annotations

import json
import queue
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from gpiozero.pins.mock import MockFactory

from edge.calibration import calibrate, save
from edge.camera import Frame
from edge.config import Config, parse_config
from edge.daemon import Daemon, RunOptions
from edge.detectors.base import Detection, FaceDetector
from edge.errors import EXIT_OK
from edge.events import EventBus
from edge.homeassistant import discovery_payload, topics
from edge.liveness import LivenessModel
from edge.pipeline import Pipeline
from edge.relay import DoorRelay
from tests.conftest import MODEL
from tests.fakes import ConstantLiveness, FakeClock, FixedFaceDetector, ScriptedCamera
from tests.mosquitto import Mosquitto, free_port
from tests.test_homeassistant import Msg, Probe

BOX = (40, 30, 110, 100)  # FixedFaceDetector's face, inside ScriptedCamera's 160x120 frames


class VisitingFaceDetector(FaceDetector):
    """A face that comes for ``present`` frames, leaves for ``away`` frames, and comes back."""

    name = "visiting"

    def __init__(self, present: int = 15, away: int = 40) -> None:
        self.present, self.away = present, away
        self.calls = 0

    def detect(self, frame_bgr: np.ndarray) -> list[Detection]:
        self.calls += 1
        in_view = (self.calls - 1) % (self.present + self.away) < self.present
        return [Detection(BOX, 0.99)] if in_view else []


def door_config(tmp_path: Path, mqtt: dict[str, Any], **sections: dict[str, Any]) -> Config:
    data: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),
        "access": {"policy": "any_live"},
        "camera": {"lost_after_s": 3.0, "max_frame_age_s": 1.0},
        "decision": {"cooldown_s": 0.0, "track_timeout_s": 0.2},
        "relay": {"pin": 17, "pulse_s": 0.2},
        "mqtt": {"device_id": "frontdoor", **mqtt},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return parse_config(data, tmp_path)


def run_daemon(
    config: Config,
    factory: MockFactory,
    seconds: float,
    p_real: float = 0.95,
    detector: Any = None,
    model_of_config: bool = False,
) -> list[dict[str, Any]]:
    """Run the daemon on a 100 fps fake camera for ``seconds``; its events, in order.
    ``model_of_config``: the liveness model ``config`` names, as the daemon loads it (with its
    camera calibration), instead of a constant ``p_real``."""
    out = config.state_dir.parent / "events.jsonl"
    options = RunOptions(
        frame_source=ScriptedCamera([("frames", int(seconds * 100) + 200)]),
        detector=detector or FixedFaceDetector(BOX),
        liveness=None if model_of_config else ConstantLiveness(p_real),
        pin_factory=factory,
        events_out=out,
    )
    timer = threading.Timer(seconds, options.stop_event.set)
    timer.start()
    try:
        assert Daemon(config, options).run() == EXIT_OK
    finally:
        timer.cancel()
    return [json.loads(line) for line in out.read_text().splitlines()]


def drain(probe: Probe) -> list[Msg]:
    """Everything the probe has received so far (the daemon has stopped: nothing more comes)."""
    got = []
    while True:
        try:
            got.append(probe.messages.get(timeout=0.3))
        except queue.Empty:
            return got


@pytest.fixture
def ha(mosquitto: Mosquitto) -> Iterator[Probe]:
    probe = Probe(mosquitto.port, ("homeassistant/#", "livegate/#"))
    yield probe
    probe.close()


# -- 13: the face-unlock switch belongs to the daemon ----------------------------------------------
@pytest.mark.parametrize("mqtt", ["disabled", "broker_down", "no_discovery"])
def test_face_unlock_switched_off_stays_off_whatever_mqtt_does(
    tmp_path: Path,
    mock_factory: MockFactory,
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
    mqtt: str,
) -> None:
    if mqtt == "disabled":
        settings: dict[str, Any] = {"enabled": False}
        sections: dict[str, Any] = {}
    elif mqtt == "broker_down":
        settings = {"port": free_port()}  # nothing listens there
        sections = {}
    else:
        settings = {"port": request.getfixturevalue("mosquitto").port}
        sections = {"homeassistant": {"discovery": False}}
    config = door_config(tmp_path, settings, **sections)
    # The owner switched face unlock off in HA before this restart.
    config.state_dir.mkdir(parents=True)
    (config.state_dir / "ha_switch.json").write_text('{"face_unlock": false}')
    kinds = [e["kind"] for e in run_daemon(config, mock_factory, seconds=1.0)]
    assert "denied_disabled" in kinds, kinds
    assert "granted" not in kinds
    assert True not in [s.state for s in mock_factory.pin(17).states], "the relay never moved"
    assert "face unlock is switched OFF" in caplog.text, "said at start, in the journal"


def test_face_unlock_on_by_default_grants(tmp_path: Path, mock_factory: MockFactory) -> None:
    config = door_config(tmp_path, {"enabled": False})
    kinds = [e["kind"] for e in run_daemon(config, mock_factory, seconds=1.0)]
    assert "granted" in kinds and "denied_disabled" not in kinds


# -- 14, 15, 18a, 19: what HA sees of a run ------------------------------------------------
def run_watched(
    tmp_path: Path, factory: MockFactory, broker: Mosquitto, ha: Probe
) -> tuple[Config, list[dict[str, Any]], dict[str, list[bytes]]]:
    """Run the daemon for 1.5 s; its config, events, and every payload HA got, per topic."""
    config = door_config(tmp_path, {"port": broker.port})
    events = run_daemon(config, factory, seconds=1.5)
    payloads: dict[str, list[bytes]] = {}
    for msg in drain(ha):
        payloads.setdefault(msg.topic, []).append(msg.payload)
    return config, events, payloads


def test_camera_sensor_is_on_while_the_camera_works(
    tmp_path: Path, mock_factory: MockFactory, mosquitto: Mosquitto, ha: Probe
) -> None:
    config, _, payloads = run_watched(tmp_path, mock_factory, mosquitto, ha)
    t = topics(config)
    # Not only after a fault: ON from the first good frame, retained.
    assert payloads.get(t.camera_ok) and set(payloads[t.camera_ok]) == {b"ON"}
    assert [m.payload for m in ha.retained_now(t.camera_ok)] == [b"ON"]


def test_every_event_reaches_home_assistant_from_started_to_stopped(
    tmp_path: Path, mock_factory: MockFactory, mosquitto: Mosquitto, ha: Probe
) -> None:
    config, events, payloads = run_watched(tmp_path, mock_factory, mosquitto, ha)
    fired = [json.loads(p) for p in payloads.get(topics(config).event, [])]
    # "started" is emitted before the MQTT connection is up: it still reaches HA, once.
    assert [f["id"] for f in fired] == [e["id"] for e in events]
    kinds = [f["event_type"] for f in fired]
    assert kinds[0] == "started" and kinds[-1] == "stopped" and "granted" in kinds


def test_no_face_is_shown_after_a_clean_stop(
    tmp_path: Path, mock_factory: MockFactory, mosquitto: Mosquitto, ha: Probe
) -> None:
    config, _, payloads = run_watched(tmp_path, mock_factory, mosquitto, ha)
    t = topics(config)
    assert b"ON" in payloads.get(t.face_present, []), "a face was present during the run"
    assert [m.payload for m in ha.retained_now(t.face_present)] == [b"OFF"]
    assert [m.payload for m in ha.retained_now(t.availability)] == [b"offline"]


def test_first_metric_values_are_real_and_early(
    tmp_path: Path, mock_factory: MockFactory, mosquitto: Mosquitto, ha: Probe
) -> None:
    config, events, payloads = run_watched(tmp_path, mock_factory, mosquitto, ha)
    t = topics(config)
    # The decision latency arrives with the decision, not at the next 5 s tick.
    granted = next(e for e in events if e["kind"] == "granted")
    assert payloads.get(t.decision_latency, [])[:1] == [f"{granted['latency_ms']:.0f}".encode()]
    # The first frames-per-second value comes within the 1.5 s run and is not 0.0.
    fps = payloads.get(t.fps, [])
    assert fps and float(fps[0]) > 0.0


@pytest.mark.parametrize("calibrated", [False, True], ids=["model", "calibration"])
def test_liveness_threshold_sensor_shows_the_threshold_in_use_and_its_origin(
    tmp_path: Path, mock_factory: MockFactory, mosquitto: Mosquitto, ha: Probe, calibrated: bool
) -> None:
    config = door_config(
        tmp_path,
        {"port": mosquitto.port},
        liveness={"model": str(MODEL), "camera_calibration": True},
        device_guard={"enabled": False},  # not what this test is about; spares loading its model
    )
    model = LivenessModel.load(MODEL)
    if calibrated:
        # Live faces of this camera at 0.8 (5 % quantile): above the model's own threshold.
        calibration = calibrate([0.8] * 60, model, "0")
        save(calibration, config.calibration_path)
        expected, origin = calibration.threshold, "camera_calibration"
        assert expected > model.threshold, "a calibration that changes the threshold"
    else:
        expected, origin = model.threshold, "model"
    events = run_daemon(config, mock_factory, seconds=1.0, model_of_config=True)
    t = topics(config)
    sensor = discovery_payload(config)["cmps"]["liveness_threshold"]
    announced = [json.loads(m.payload) for m in ha.retained_now(t.discovery)]
    assert [a["cmps"]["liveness_threshold"] for a in announced] == [sensor]
    assert sensor["state_topic"] == sensor["json_attributes_topic"] == t.liveness_threshold
    assert sensor["entity_category"] == "diagnostic"
    # Retained, so HA shows it after its own restart while the door runs on.
    states = [json.loads(m.payload) for m in ha.retained_now(t.liveness_threshold)]
    assert states == [
        {
            "threshold": expected,
            "threshold_from": origin,
            "model_sha256_prefix": model.sha256[:12],
        }
    ]
    # The same threshold and origin as the started event.
    started = events[0]
    assert started["kind"] == "started"
    assert (started["threshold"], started["threshold_from"]) == (
        states[0]["threshold"],
        states[0]["threshold_from"],
    )


# -- 19: the first frames-per-second value is a measurement -------------------------------
class RecordingObserver:
    def __init__(self) -> None:
        self.fps: list[tuple[float, float]] = []
        self.camera: list[bool] = []
        self.face: list[bool] = []

    def set_face_present(self, present: bool) -> None:
        self.face.append(present)

    def set_camera_ok(self, ok: bool) -> None:
        self.camera.append(ok)

    def set_fps(self, fps: float) -> None:
        self.fps.append((self.clock(), fps))

    clock: FakeClock


def test_first_fps_value_is_measured_after_one_second_then_every_five(
    tmp_path: Path, mock_factory: MockFactory
) -> None:
    config = door_config(tmp_path, {"enabled": False})
    clock = FakeClock()
    observer = RecordingObserver()
    observer.clock = clock
    relay = DoorRelay(config.relay)
    pipeline = Pipeline(
        config,
        ScriptedCamera([]),
        FixedFaceDetector(BOX),
        ConstantLiveness(0.1),
        relay,
        EventBus(None),
        observer=observer,
        clock=clock,
    )
    rng = np.random.default_rng(1)
    try:
        for index in range(120):  # 12 s at 10 frames per second
            clock.advance(0.1)
            image = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
            pipeline.process(Frame(image, clock(), index, None))
    finally:
        relay.close()
    assert observer.fps, "fps was never reported"
    first_at, first = observer.fps[0]
    assert first == pytest.approx(10.0, rel=0.01), "the first value is the measured rate"
    assert first_at - 1000.1 == pytest.approx(1.0, abs=0.11), "after 1 s of frames, not 5"
    assert all(value == pytest.approx(10.0, rel=0.01) for _, value in observer.fps)
    gaps = [b - a for (a, _), (b, _) in zip(observer.fps, observer.fps[1:], strict=False)]
    assert gaps and all(gap == pytest.approx(5.0, abs=0.11) for gap in gaps)
    assert observer.camera == [True], "the camera state is reported from the first frame on"


# -- 17: snapshots --------------------------------------------------------------------------------
def test_snapshots_of_decisions_reach_home_assistant_and_only_the_newest_are_kept(
    tmp_path: Path, mock_factory: MockFactory, mosquitto: Mosquitto, ha: Probe
) -> None:
    config = door_config(
        tmp_path, {"port": mosquitto.port}, homeassistant={"snapshot": True, "snapshot_keep": 2}
    )
    t = topics(config)
    assert discovery_payload(config)["cmps"]["snapshot"]["image_topic"] == t.snapshot
    events = run_daemon(config, mock_factory, seconds=2.5, detector=VisitingFaceDetector())
    grants = [e for e in events if e["kind"] == "granted"]
    assert len(grants) >= 3, [e["kind"] for e in events]
    published = [m for m in drain(ha) if m.topic == t.snapshot]
    assert len(published) == len(grants), "one picture per granted decision"
    assert not any(m.retain for m in published)
    assert ha.retained_now(t.snapshot) == [], "no face is kept on the broker"
    for msg in published:
        picture = cv2.imdecode(np.frombuffer(msg.payload, np.uint8), cv2.IMREAD_COLOR)
        assert picture is not None and picture.shape == (120, 160, 3)

    folder = config.state_dir / "snapshots"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = sorted(folder.iterdir())
    assert len(files) == 2, "snapshot_keep newest, the oldest deleted"
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    assert [f.read_bytes() for f in files] == [m.payload for m in published[-2:]]
    assert all(f.name.endswith("-granted.jpg") for f in files)
    for event in events:  # events name no file and carry no pixels
        assert "snapshot" not in event and "jpeg" not in json.dumps(event).lower()


def test_snapshots_are_off_by_default(
    tmp_path: Path, mock_factory: MockFactory, mosquitto: Mosquitto, ha: Probe
) -> None:
    config = door_config(tmp_path, {"port": mosquitto.port})
    assert config.homeassistant.snapshot is False
    events = run_daemon(config, mock_factory, seconds=1.0)
    assert any(e["kind"] == "granted" for e in events)
    assert not (config.state_dir / "snapshots").exists()
    assert [m for m in drain(ha) if m.topic == topics(config).snapshot] == []
    # No image entity: announced as its platform alone, which removes it from HA.
    assert discovery_payload(config)["cmps"]["snapshot"] == {"p": "image"}
