"""The frame loop with fake camera/detector/liveness and gpiozero's MockFactory relay."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from gpiozero.pins.mock import MockFactory

from edge.config import Config, parse_config
from edge.errors import CameraError
from edge.events import Event, EventBus
from edge.pipeline import DECISIONS_KEPT, Pipeline, PipelineStats
from edge.relay import DoorRelay
from tests.fakes import ConstantLiveness, FixedFaceDetector, ScriptedCamera, ScriptedIdentity


def config(tmp_path: Path, **camera: float) -> Config:
    return parse_config(
        {
            "access": {"policy": "any_live"},
            "camera": {
                "lost_after_s": 0.3,
                "frozen_after_s": 0.5,
                "max_frame_age_s": 1.0,
                **camera,
            },
            "decision": {"cooldown_s": 0.0, "track_timeout_s": 0.2},
            "relay": {"pulse_s": 0.2},
            "mqtt": {"enabled": False},
        },
        tmp_path,
    )


def run_pipeline(
    tmp_path: Path,
    camera: ScriptedCamera,
    p_real: float,
    seconds: float,
    detector: FixedFaceDetector | None = None,
) -> tuple[Pipeline, list[Event], DoorRelay]:
    events: list[Event] = []
    relay = DoorRelay(config(tmp_path).relay)
    pipeline = Pipeline(
        config(tmp_path),
        camera,
        detector or FixedFaceDetector(),
        ConstantLiveness(p_real),
        relay,
        EventBus(None, [events.append]),
    )
    timer = threading.Timer(seconds, pipeline.stop)
    timer.start()
    try:
        pipeline.run()
    finally:
        timer.cancel()
        relay.close()
    return pipeline, events, relay


def test_camera_lost_then_back_in_order_and_no_grant_while_lost(
    tmp_path: Path, mock_factory: MockFactory
) -> None:
    camera = ScriptedCamera([("fail", 1.0), ("frames", 40)])
    pipeline, events, _ = run_pipeline(tmp_path, camera, p_real=0.9, seconds=2.5)
    kinds = [e.kind for e in events]
    assert "camera_lost" in kinds and "camera_ok" in kinds
    lost, back = kinds.index("camera_lost"), kinds.index("camera_ok")
    assert lost < back
    assert "granted" not in kinds[:back], "never a grant while the camera is lost"
    assert "granted" in kinds[back:], "a live face after the camera came back is granted"


def test_a_camera_back_in_another_size_is_used_again(
    tmp_path: Path, mock_factory: MockFactory
) -> None:
    # Unplugged and plugged back in at another resolution: the reopened camera's frames are not
    # refused as the wrong size for ever (the door would stay shut until a restart).
    camera = ScriptedCamera([("frames", 10), ("fail", 1.0), ("wide", 60)])
    pipeline, events, _ = run_pipeline(tmp_path, camera, p_real=0.9, seconds=2.5)
    kinds = [e.kind for e in events]
    assert camera.opened >= 2 and "camera_lost" in kinds
    back = kinds.index("camera_ok", kinds.index("camera_lost"))
    assert "granted" in kinds[back:]
    assert pipeline.stats.frames_bad == 0


def test_frozen_camera_is_lost_and_never_decides(tmp_path: Path, mock_factory: MockFactory) -> None:
    camera = ScriptedCamera([("frames", 3), ("frozen", 200)])
    pipeline, events, _ = run_pipeline(tmp_path, camera, p_real=0.1, seconds=1.8)
    kinds = [e.kind for e in events]
    assert "camera_lost" in kinds
    lost = kinds.index("camera_lost")
    assert [k for k in kinds[lost:] if k.startswith(("granted", "denied"))] == []
    assert "frozen" in events[lost].data["reason"]


def test_bad_frames_are_skipped_and_counted(tmp_path: Path, mock_factory: MockFactory) -> None:
    camera = ScriptedCamera([("frames", 5), ("bad", 10), ("frames", 5)])
    pipeline, events, _ = run_pipeline(tmp_path, camera, p_real=0.9, seconds=0.8)
    assert pipeline.stats.frames_bad == 10
    assert pipeline.stats.frames_processed == 10


def test_spoof_never_moves_the_relay(tmp_path: Path, mock_factory: MockFactory) -> None:
    camera = ScriptedCamera([("frames", 60)])
    _, events, _ = run_pipeline(tmp_path, camera, p_real=0.05, seconds=1.0)
    assert "denied_spoof" in [e.kind for e in events]
    assert True not in [s.state for s in mock_factory.pin(17).states]


def test_grant_pulses_relay_then_locks(tmp_path: Path, mock_factory: MockFactory) -> None:
    camera = ScriptedCamera([("frames", 30)])
    pipeline, events, _ = run_pipeline(tmp_path, camera, p_real=0.95, seconds=1.0)
    granted = [e for e in events if e.kind == "granted"]
    assert granted and granted[0].data["relay_pulsed"] is True
    states = [s.state for s in mock_factory.pin(17).states]
    assert states[0] is False and True in states and states[-1] is False


def test_stats_count_every_decision_and_keep_only_the_newest(
    tmp_path: Path, mock_factory: MockFactory
) -> None:
    camera = ScriptedCamera([("frames", 30)])
    pipeline, events, _ = run_pipeline(tmp_path, camera, p_real=0.95, seconds=1.0)
    decided = [e for e in events if e.kind == "granted"]
    assert pipeline.stats.decisions_total == len(decided) == len(pipeline.stats.decisions) >= 1
    # A door runs for months: what the stats keep must not grow with every decision.
    stats = PipelineStats()
    for _ in range(DECISIONS_KEPT + 5):
        stats.decisions.append(pipeline.stats.decisions[0])
    assert len(stats.decisions) == DECISIONS_KEPT


def test_detector_exception_propagates_and_relay_ends_locked(
    tmp_path: Path, mock_factory: MockFactory
) -> None:
    camera = ScriptedCamera([("frames", 100)])
    with pytest.raises(RuntimeError, match="injected"):
        run_pipeline(
            tmp_path, camera, p_real=0.95, seconds=2.0, detector=FixedFaceDetector(fail_after=8)
        )
    assert mock_factory.pin(17).state is False


def test_a_camera_read_that_raises_fails_the_loop_instead_of_ending_it(
    tmp_path: Path, mock_factory: MockFactory
) -> None:
    # The capture thread died on it; the loop used to return as if a file had ended (exit 0).
    camera = ScriptedCamera([("frames", 10), ("raise", 1), ("frames", 100)])
    with pytest.raises(CameraError, match="injected camera read failure"):
        run_pipeline(tmp_path, camera, p_real=0.95, seconds=30.0)
    assert mock_factory.pin(17).state is False


def run_enrolled(tmp_path: Path, identity: ScriptedIdentity, frames: int = 30) -> list[Event]:
    cfg = parse_config(
        {
            "access": {"policy": "enrolled", "samples_per_track": 3},
            "mqtt": {"enabled": False},
            "decision": {"cooldown_s": 0.0},
            "relay": {"pulse_s": 0.2},
        },
        tmp_path,
    )
    events: list[Event] = []
    relay = DoorRelay(cfg.relay)
    camera = ScriptedCamera([("frames", frames)])
    pipeline = Pipeline(
        cfg,
        camera,
        FixedFaceDetector(),
        ConstantLiveness(0.95),
        relay,
        EventBus(None, [events.append]),
        identity=identity,
    )
    if isinstance(identity, RevokedWhileRecognised):
        identity.pipeline = pipeline
    timer = threading.Timer(frames / 100 + 1.0, pipeline.stop)
    timer.start()
    try:
        pipeline.run()
    finally:
        timer.cancel()
        relay.close()
    return events


def test_enrolled_needs_two_agreeing_samples_spread_over_the_track(
    tmp_path: Path, mock_factory: MockFactory
) -> None:
    identity = ScriptedIdentity([("ada", 0.2), (None, 0.5), ("ada", 0.25)])
    events = run_enrolled(tmp_path, identity)
    granted = [e for e in events if e.kind == "granted"]
    assert len(granted) == 1 and granted[0].data["person"] == "ada"
    assert granted[0].data["match_distance"] == pytest.approx(0.225)
    assert identity.calls == 3, "recognition runs a few times per track, not on every frame"


def test_unknown_face_is_denied_once_and_never_opens(
    tmp_path: Path, mock_factory: MockFactory
) -> None:
    identity = ScriptedIdentity([(None, 0.7)])
    events = run_enrolled(tmp_path, identity)
    kinds = [e.kind for e in events]
    assert kinds.count("denied_unknown") == 1 and "granted" not in kinds
    assert True not in [s.state for s in mock_factory.pin(17).states]


class RevokedWhileRecognised(ScriptedIdentity):
    """Says "ada" twice (recognised), and on the second call the store changes underneath
    (a fleet revoke arriving between recognition and the grant); "nobody" from then on."""

    def __init__(self) -> None:
        super().__init__([("ada", 0.2), ("ada", 0.2), (None, 0.7)])
        self.pipeline: Pipeline | None = None

    def identify(self, frame_bgr: np.ndarray, box: tuple[int, int, int, int]):  # noqa: ANN201
        if self.calls == 1 and self.pipeline is not None:
            self.pipeline.enrolment_changed()
        return super().identify(frame_bgr, box)


def test_a_person_revoked_after_recognition_is_recognised_again_and_denied(
    tmp_path: Path, mock_factory: MockFactory
) -> None:
    identity = RevokedWhileRecognised()
    kinds = [e.kind for e in run_enrolled(tmp_path, identity)]
    assert "granted" not in kinds and kinds.count("denied_unknown") == 1
    assert identity.calls == 5  # 2 before the change, 3 new samples after it
    assert True not in [s.state for s in mock_factory.pin(17).states]
    # The same answers without the store change: granted as ada (the test can fail).
    kinds = [e.kind for e in run_enrolled(tmp_path, ScriptedIdentity([("ada", 0.2)]))]
    assert "granted" in kinds


def test_one_match_among_strangers_is_not_enough(tmp_path: Path, mock_factory: MockFactory) -> None:
    identity = ScriptedIdentity([("ada", 0.3), (None, 0.6), (None, 0.6)])
    kinds = [e.kind for e in run_enrolled(tmp_path, identity)]
    assert "granted" not in kinds and "denied_unknown" in kinds


def test_remote_unlock_possible_says_what_remote_unlock_would_do(
    tmp_path: Path, mock_factory: MockFactory
) -> None:
    cfg = parse_config({"mqtt": {"enabled": False}, "relay": {"pulse_s": 5.0}}, tmp_path)
    relay = DoorRelay(cfg.relay)
    pipeline = Pipeline(
        cfg, ScriptedCamera([]), FixedFaceDetector(), ConstantLiveness(0.9), relay,
        EventBus(None, []),
    )  # fmt: skip
    try:
        assert pipeline.remote_unlock_possible()
        assert pipeline.remote_unlock("mqtt")
        # The strike is open: a second remote unlock would be refused, and the check says so.
        assert not pipeline.remote_unlock_possible() and not pipeline.remote_unlock("mqtt")
        relay.lock()
        assert pipeline.remote_unlock_possible()
        pipeline.engine.locked_out_until = pipeline.clock() + 60.0  # a spoof lockout
        assert not pipeline.remote_unlock_possible() and not pipeline.remote_unlock("mqtt")
    finally:
        relay.close()
