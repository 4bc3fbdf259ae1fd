"""The door fails locked: stage exceptions, SIGTERM during a pulse, a killed process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from edge.config import parse_config
from edge.daemon import EXIT_FAILURE, Daemon, RunOptions
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
    process = subprocess.Popen(
        [sys.executable, "-m", "edge", "run", "--config", str(config), "--source", str(clip),
         "--relay", "mock", "--events-out", str(events)],
        cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
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
