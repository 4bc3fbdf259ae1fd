"""Frame sources and camera health (lost, frozen, back), with a fake clock and real clips."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.camera import (
    Backoff,
    CameraHealth,
    OpenCVSource,
    frame_problem,
    make_source,
    redact_source,
)
from edge.config import CameraConfig
from edge.errors import CameraError
from tests.fakes import FakeClock


def noise(seed: int, shape: tuple[int, int, int] = (48, 64, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)


def test_frame_problem_names_each_kind_of_bad_frame() -> None:
    good = noise(1)
    assert frame_problem(good, None) is None
    assert frame_problem(good, good.shape) is None
    assert frame_problem(np.zeros((0, 0, 3), np.uint8), None) == "empty"
    assert frame_problem(None, None) == "empty"
    assert "not a BGR" in str(frame_problem(good[:, :, 0], None))
    assert "not a BGR" in str(frame_problem(good.astype(np.float32), None))
    assert "differs" in str(frame_problem(noise(2, (40, 64, 3)), good.shape))
    assert "flat" in str(frame_problem(np.full((48, 64, 3), 128, np.uint8), None))


def test_health_reports_no_frames_then_back(clock: FakeClock) -> None:
    health = CameraHealth(CameraConfig(lost_after_s=3, frozen_after_s=5), clock)
    assert not health.frame(noise(1))
    clock.advance(2.9)
    assert health.check() is None
    clock.advance(0.2)
    reason = health.check()
    assert reason is not None and "no frame" in reason
    assert health.check() is None, "a loss is reported once"
    assert not health.ok
    assert health.frame(noise(2)), "the first fresh frame brings it back"
    assert health.ok


def test_health_reports_frozen_picture(clock: FakeClock) -> None:
    health = CameraHealth(CameraConfig(lost_after_s=3, frozen_after_s=5), clock)
    still = noise(7)
    for _ in range(60):
        health.frame(still)
        clock.advance(0.1)
        if health.check():
            break
    assert not health.ok and "frozen" in health.reason
    assert not health.frame(still), "the same picture does not bring it back"
    assert health.frame(noise(8))


def test_backoff_doubles_to_max_and_resets() -> None:
    backoff = Backoff(1, 5)
    assert [backoff.next_delay() for _ in range(5)] == [1, 2, 4, 5, 5]
    backoff.reset()
    assert backoff.next_delay() == 1


def test_file_source_reads_bgr_frames_then_eof(videos_dir: Path) -> None:
    source = OpenCVSource(str(videos_dir / "wolf_real.mp4"), CameraConfig())
    assert source.is_file
    source.open()
    count = 0
    with pytest.raises(EOFError):
        while True:
            image = source.read()
            assert image is not None and image.ndim == 3 and image.shape[2] == 3
            count += 1
    source.close()
    assert count > 100


def test_missing_file_and_camera_give_camera_error(tmp_path: Path) -> None:
    with pytest.raises(CameraError, match="does not exist"):
        OpenCVSource(str(tmp_path / "none.mp4"), CameraConfig()).open()
    with pytest.raises(CameraError, match="cannot open"):
        OpenCVSource("rtsp://127.0.0.1:9/none", CameraConfig()).open()


def test_make_source_kinds() -> None:
    assert make_source("0", CameraConfig()).is_file is False
    assert make_source("rtsp://cam/stream", CameraConfig()).is_file is False
    assert make_source("clip.mp4", CameraConfig()).is_file is True
    picam = make_source("picamera2", CameraConfig())
    assert picam.name == "picamera2"
    try:
        import picamera2  # noqa: F401
    except ImportError:
        with pytest.raises(CameraError, match="python3-picamera2"):
            picam.open()


@pytest.mark.parametrize(
    ("source", "shown"),
    [
        ("rtsp://admin:hunter2@10.0.0.5:554/stream1", "rtsp://***@10.0.0.5:554/stream1"),
        ("rtsp://admin:hun/ter2@cam/s", "rtsp://***@cam/s"),  # unescaped / in the password
        ("http://cam/snap.mjpg?user=admin&pwd=hunter2", "http://cam/snap.mjpg?***"),
        ("rtsp://cam.local/stream", "rtsp://cam.local/stream"),
        ("0", "0"),
        ("clips/door.mp4", "clips/door.mp4"),
    ],
)
def test_redact_source_hides_user_password_and_query(source: str, shown: str) -> None:
    assert redact_source(source) == shown


def test_rtsp_password_stays_out_of_the_source_name_and_its_errors() -> None:
    # The name goes into the started and camera_lost events (MQTT, HA, journal) and the open
    # error into the camera_lost reason: a camera password must be in neither.
    source = OpenCVSource("rtsp://admin:hunter2@127.0.0.1:9/none", CameraConfig())
    assert "hunter2" not in source.name and "admin" not in source.name
    assert source.name == "opencv:rtsp://***@127.0.0.1:9/none"
    with pytest.raises(CameraError, match="cannot open") as caught:
        source.open()
    assert "hunter2" not in str(caught.value) and "admin" not in str(caught.value)


class FakePicamera2:
    """Stands in for picamera2.Picamera2 (not installable off a Pi): records what is called."""

    instances: list[FakePicamera2] = []
    fail_in = ""  # "start" or "stop": that call raises, as a camera in trouble does

    def __init__(self) -> None:
        self.calls: list[str] = []
        FakePicamera2.instances.append(self)

    def create_video_configuration(self, **config: Any) -> dict[str, Any]:
        return config

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name == FakePicamera2.fail_in:
            raise RuntimeError(f"{name} failed")

    def configure(self, _config: dict[str, Any]) -> None:
        self._call("configure")

    def start(self) -> None:
        self._call("start")

    def stop(self) -> None:
        self._call("stop")

    def close(self) -> None:
        self._call("close")


@pytest.fixture
def fake_picamera2(monkeypatch: pytest.MonkeyPatch) -> type[FakePicamera2]:
    module = types.ModuleType("picamera2")
    module.Picamera2 = FakePicamera2  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "picamera2", module)
    monkeypatch.setattr(FakePicamera2, "instances", [])
    return FakePicamera2


def test_pi_camera_that_fails_to_start_is_released_for_the_next_open(
    fake_picamera2: type[FakePicamera2], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_source("picamera2", CameraConfig())
    monkeypatch.setattr(fake_picamera2, "fail_in", "start")
    with pytest.raises(CameraError, match="start failed"):
        source.open()
    assert fake_picamera2.instances[0].calls[-1] == "close"


def test_pi_camera_is_closed_even_when_stop_fails(
    fake_picamera2: type[FakePicamera2], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_source("picamera2", CameraConfig())
    source.open()
    monkeypatch.setattr(fake_picamera2, "fail_in", "stop")
    source.close()
    assert fake_picamera2.instances[0].calls == ["configure", "start", "stop", "close"]
    source.close()  # twice is fine
    assert fake_picamera2.instances[0].calls.count("close") == 1
