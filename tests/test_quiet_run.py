"""A clean run logs nothing alarming; a broker that cannot be reached is reported once, naming
host:port and the events waiting, and again at exit."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MODEL, REPO_ROOT
from tests.mosquitto import Mosquitto, free_port

pytestmark = pytest.mark.slow

ALARMING = ("WARNING", "ERROR", "CRITICAL", "Traceback")


def damaged_clip(videos: Path, out: Path) -> Path:
    """A real clip with bytes overwritten: FFmpeg's h264 decoder complains on stderr about it."""
    data = bytearray(sorted(videos.glob("*_real.mp4"))[0].read_bytes())
    rng = random.Random(1)
    for offset in range(200_000, min(600_000, len(data) - 200), 20_000):
        data[offset : offset + 200] = bytes(rng.randrange(256) for _ in range(200))
    out.write_bytes(data)
    return out


def write_config(tmp_path: Path, mqtt: str) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        f"liveness:\n  model: {MODEL}\n"
        "access:\n  policy: any_live\n"  # the warning this policy rightly gives is filtered below
        f"mqtt:\n{mqtt}"
    )
    return config


def run(config: Path, source: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge",
            "run",
            "--config",
            str(config),
            "--source",
            str(source),
            "--relay",
            "mock",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("OPENCV_")},
    )


def alarming(stderr: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if any(word in line for word in ALARMING) and "access.policy is any_live" not in line
    ]


def test_clean_run_with_a_broker_logs_nothing_alarming_or_native(
    tmp_path: Path, videos_dir: Path
) -> None:
    broker = Mosquitto(tmp_path)
    broker.start()
    try:
        config = write_config(tmp_path, f"  port: {broker.port}\n")
        process = run(config, damaged_clip(videos_dir, tmp_path / "damaged.mp4"))
        _, stderr = process.communicate(timeout=120)
    finally:
        broker.stop()
    assert process.returncode == 0, stderr
    assert "MQTT connected" in stderr
    assert "XNNPACK" not in stderr, "TFLite's per-model INFO line"
    assert "[h264 @" not in stderr, "FFmpeg's decoder chatter"
    assert alarming(stderr) == []


def test_unreachable_broker_is_reported_once_with_the_backlog_and_at_exit(
    tmp_path: Path, videos_dir: Path
) -> None:
    port = free_port()  # nothing listens there
    config = write_config(tmp_path, f"  port: {port}\n")
    clip = sorted(videos_dir.glob("*_real.*"))[0]
    config.write_text(config.read_text() + "camera:\n  realtime: true\n")
    # Played at its own pace (about 4 s): paho retries after 1 and 2 s meanwhile, then the clip
    # ends and the daemon stops by itself.
    process = run(config, clip)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    problems = alarming(stderr)
    assert "Client is not connected" not in stderr
    address = f"127.0.0.1:{port}"
    assert len(problems) == 2, problems
    assert address in problems[0] and "cannot be reached" in problems[0]
    assert "event(s) waiting in the journal" in problems[0]
    assert address in problems[1] and "kept in the journal" in problems[1]
