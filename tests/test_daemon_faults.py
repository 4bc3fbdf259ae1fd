"""The door fails locked: stage exceptions, SIGTERM during a pulse, a killed process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from gpiozero.exc import PinUnsupported
from gpiozero.pins.mock import MockFactory

from edge.config import parse_config
from edge.daemon import Daemon, RunOptions
from edge.errors import EXIT_FAILURE, RelayError
from tests.conftest import MODEL, REPO_ROOT
from tests.fakes import ConstantLiveness, FixedFaceDetector, ScriptedCamera


def test_detector_exception_locks_relay_and_exits_non_zero(
    tmp_path: Path, mock_factory: MockFactory
) -> None:
    config = parse_config(
        {
            "state_dir": str(tmp_path),
            "access": {"policy": "any_live"},
            "relay": {"pulse_s": 10.0},
            "mqtt": {"enabled": False},
        },
        tmp_path,
    )
    events = tmp_path / "events.jsonl"
    options = RunOptions(
        frame_source=ScriptedCamera([("frames", 400)]),
        detector=FixedFaceDetector(fail_after=40),  # fails well after the grant (10 s pulse)
        liveness=ConstantLiveness(0.95),
        events_out=events,
    )
    assert Daemon(config, options).run() == EXIT_FAILURE
    kinds = [json.loads(line)["kind"] for line in events.read_text().splitlines()]
    assert "granted" in kinds, "the pulse was running when the detector failed"
    assert kinds[-1] == "stopped"
    stopped = json.loads(events.read_text().splitlines()[-1])
    assert "injected detector failure" in stopped["reason"]
    states = [s.state for s in mock_factory.pin(17).states]
    assert True in states and states[-1] is False, "the door ends locked"


def test_camera_read_exception_exits_non_zero_with_the_reason(
    tmp_path: Path, mock_factory: MockFactory
) -> None:
    # Exit 0 ("end of input") would leave the service stopped: Restart=on-failure skips it.
    config = parse_config(
        {"state_dir": str(tmp_path), "access": {"policy": "any_live"}, "mqtt": {"enabled": False}},
        tmp_path,
    )
    events = tmp_path / "events.jsonl"
    options = RunOptions(
        frame_source=ScriptedCamera([("frames", 20), ("raise", 1), ("frames", 400)]),
        detector=FixedFaceDetector(),
        liveness=ConstantLiveness(0.95),
        events_out=events,
    )
    assert Daemon(config, options).run() == EXIT_FAILURE
    stopped = json.loads(events.read_text().splitlines()[-1])
    assert stopped["kind"] == "stopped"
    assert "injected camera read failure" in stopped["reason"]
    assert mock_factory.pin(17).state is False


class NoGpioFactory(MockFactory):
    """Pins that cannot be opened, as on a machine without GPIO or a user without access."""

    def pin(self, name: object, **kwargs: object) -> object:
        raise PinUnsupported("no GPIO here")


def test_a_relay_pin_it_cannot_open_refuses_the_start_before_any_entry(tmp_path: Path) -> None:
    config = parse_config(
        {"state_dir": str(tmp_path), "access": {"policy": "any_live"}, "mqtt": {"enabled": False}},
        tmp_path,
    )
    events = tmp_path / "events.jsonl"
    options = RunOptions(
        frame_source=ScriptedCamera([("frames", 20)]),
        detector=FixedFaceDetector(),
        liveness=ConstantLiveness(0.95),
        events_out=events,
        pin_factory=NoGpioFactory(),
    )
    with pytest.raises(RelayError, match=r"relay\.pin 17: cannot open the GPIO pin"):
        Daemon(config, options).run()  # main() turns it into one line and exit 2
    assert _audit_actions(tmp_path / "audit.log") == [], "no start entry for a refused start"
    assert not events.exists() or events.read_text() == ""


def test_a_source_that_is_no_video_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\nliveness:\n  model: {MODEL}\nmqtt:\n  enabled: false\n"
    )
    not_a_video = tmp_path / "notes.txt"
    not_a_video.write_text("not a video\n")
    argv = [sys.executable, "-m", "edge", "run", "--config", str(config), "--relay", "mock"]
    done = subprocess.run(
        [*argv, "--source", str(not_a_video)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == EXIT_FAILURE, done.stderr[-2000:]
    assert f"stage failure: cannot open camera source '{not_a_video}'" in done.stderr
    assert "Traceback" not in done.stderr


def _run_daemon(config: Path, clip: Path, events: Path) -> subprocess.Popen:
    """``python -m edge run`` on ``clip`` with a mock relay, events to ``events``, stderr kept."""
    return subprocess.Popen(
        [
            sys.executable, "-m", "edge", "run", "--config", str(config), "--source", str(clip),
            "--relay", "mock", "--events-out", str(events),
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def _audit_actions(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["action"] for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_sigterm_during_pulse_locks_and_exits_cleanly(tmp_path: Path, videos_dir: Path) -> None:
    if not MODEL.exists():
        pytest.fail(f"{MODEL} is missing")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        f"liveness:\n  model: {MODEL}\n"
        "access:\n  policy: any_live\n"
        "camera:\n  realtime: true\n"  # paced like a camera: the run is still going at SIGTERM
        "relay:\n  pulse_s: 10\n"
        "mqtt:\n  enabled: false\n"
    )
    clip = sorted(videos_dir.glob("*_real.*"))[0]
    events = tmp_path / "events.jsonl"
    process = _run_daemon(config, clip, events)
    audit = tmp_path / "state" / "audit.log"
    deadline = time.monotonic() + 60
    while "relay_on" not in _audit_actions(audit) and time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        time.sleep(0.05)
    assert "relay_on" in _audit_actions(audit), "no grant on a real clip within 60 s"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0
    actions = [a for a in _audit_actions(audit) if a.startswith("relay_")]
    assert actions[-1] == "relay_off", "SIGTERM during a 10 s pulse leaves the door locked"
    kinds = [json.loads(line)["kind"] for line in events.read_text().splitlines()]
    assert kinds[-1] == "stopped"


def _tiny_clip(path: Path, frames: int = 8) -> Path:
    """A few grey frames (no face): a run that starts, reads them and ends."""
    import cv2
    import numpy as np

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (160, 120))
    for i in range(frames):
        writer.write(np.full((120, 160, 3), 100 + i, np.uint8))
    writer.release()
    return path


def _journal_kinds(path: Path) -> list[str]:
    import sqlite3

    with sqlite3.connect(path) as db:
        return [kind for (kind,) in db.execute("SELECT kind FROM events ORDER BY seq")]


@pytest.mark.slow
def test_kill_at_relay_on_keeps_the_grant_and_next_start_reports_the_open_pulse(
    tmp_path: Path, videos_dir: Path
) -> None:
    if not MODEL.exists():
        pytest.fail(f"{MODEL} is missing")
    state = tmp_path / "state"
    config = tmp_path / "config.yaml"
    config.write_text(
        f"state_dir: {state}\n"
        f"liveness:\n  model: {MODEL}\n"
        "access:\n  policy: any_live\n"
        "relay:\n  pulse_s: 10\n"
        "mqtt:\n  enabled: false\n"
    )
    clip = sorted(videos_dir.glob("*_real.*"))[0]
    killed = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.kill_at_relay_on",
            "run",
            "--config",
            str(config),
            "--source",
            str(clip),
            "--relay",
            "mock",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    # Committed before the pin moved: the grant is in the journal and the audit log.
    assert "granted" in _journal_kinds(state / "events.sqlite3")
    audit = [json.loads(line) for line in (state / "audit.log").read_text().splitlines()]
    grants = [e for e in audit if e["action"] == "decision" and e["decision"] == "granted"]
    assert grants and grants[-1]["pulse"] is True
    assert "relay_off" not in [e["action"] for e in audit]

    events = tmp_path / "events.jsonl"
    restarted = _run_daemon(config, _tiny_clip(tmp_path / "grey.avi"), events)
    _, restarted_err = restarted.communicate(timeout=120)
    assert restarted.returncode == 0, restarted_err[-2000:]
    assert "previous run ended during a door pulse" in restarted_err
    reported = [json.loads(line) for line in events.read_text().splitlines()]
    unclosed = [e for e in reported if e["kind"] == "unclosed_pulse"]
    assert len(unclosed) == 1 and unclosed[0]["audit_seq"] == grants[-1]["seq"]
    assert [e["kind"] for e in reported][:2] == ["started", "unclosed_pulse"]

    # Reported once: a third start finds the previous (clean) run closed.
    again = tmp_path / "again.jsonl"
    third = _run_daemon(config, tmp_path / "grey.avi", again)
    _, third_err = third.communicate(timeout=120)
    assert third.returncode == 0, third_err[-2000:]
    assert "unclosed_pulse" not in again.read_text()


def test_audit_has_start_and_stop_and_one_relay_on_per_pulse(
    tmp_path: Path, mock_factory: MockFactory
) -> None:
    config = parse_config(
        {
            "state_dir": str(tmp_path),
            "access": {"policy": "any_live"},
            "relay": {"pulse_s": 0.2},
            "decision": {"cooldown_s": 0.0, "track_timeout_s": 0.2},
            "mqtt": {"enabled": False},
        },
        tmp_path,
    )
    options = RunOptions(
        frame_source=ScriptedCamera([("frames", 300)]),
        detector=FixedFaceDetector(),
        liveness=ConstantLiveness(0.95),
        stop_reason="test over",
    )
    timer = threading.Timer(2.0, options.stop_event.set)
    timer.start()
    try:
        assert Daemon(config, options).run() == 0
    finally:
        timer.cancel()
    entries = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    actions = [e["action"] for e in entries]
    assert actions[0] == "start" and actions[-1] == "stop"
    assert entries[-1]["reason"] == "test over"
    pulsed = [e for e in entries if e["action"] == "decision" and e.get("pulse")]
    assert pulsed, "a live face for 2 s is granted"
    assert actions.count("relay_on") == len(pulsed) == actions.count("relay_off")
    # Each pulse: its grant, then relay_on, then relay_off, before the next grant.
    relay = [a for a in actions if a in ("relay_on", "relay_off")]
    assert relay == ["relay_on", "relay_off"] * len(pulsed)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_stopped_event_names_the_signal(
    tmp_path: Path, videos_dir: Path, signum: signal.Signals
) -> None:
    if not MODEL.exists():
        pytest.fail(f"{MODEL} is missing")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        f"liveness:\n  model: {MODEL}\n"
        "camera:\n  realtime: true\n"
        "mqtt:\n  enabled: false\n"
    )
    clip = sorted(videos_dir.glob("*_real.*"))[0]
    events = tmp_path / "events.jsonl"
    process = _run_daemon(config, clip, events)
    deadline = time.monotonic() + 60
    while not (events.exists() and "started" in events.read_text()):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signum)
    assert process.wait(timeout=20) == 0
    stopped = json.loads(events.read_text().splitlines()[-1])
    assert stopped["kind"] == "stopped"
    assert stopped["reason"] == f"signal {signum.name}"
    audit = (tmp_path / "state" / "audit.log").read_text().splitlines()
    assert json.loads(audit[-1])["reason"] == f"signal {signum.name}"
