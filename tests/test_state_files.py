"""State files are owner-only whatever the umask; a readable password file is warned about."""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from edge.config import MqttConfig, parse_config
from edge.daemon import Daemon, RunOptions
from tests.fakes import ConstantLiveness, FixedFaceDetector, ScriptedCamera


@pytest.fixture
def umask_022() -> Iterator[None]:
    """As outside systemd (a shell's usual umask), not the unit's UMask=0077."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_state_file_is_owner_only_under_umask_022(
    tmp_path: Path, mock_factory: MockFactory, umask_022: None
) -> None:
    state = tmp_path / "state"
    config = parse_config(
        {
            "state_dir": str(state),
            "access": {"policy": "any_live"},
            "relay": {"pulse_s": 0.2},
            "mqtt": {"enabled": False},
        },
        tmp_path,
    )
    options = RunOptions(
        frame_source=ScriptedCamera([("frames", 100)]),
        detector=FixedFaceDetector(),
        liveness=ConstantLiveness(0.95),
    )
    seen: dict[str, int] = {}

    def look_while_running() -> None:
        # The WAL and shared-memory files exist only while the journal is open.
        for path in state.iterdir():
            seen[path.name] = mode(path)
        options.stop_event.set()

    timer = threading.Timer(1.0, look_while_running)
    timer.start()
    try:
        assert Daemon(config, options).run() == 0
    finally:
        timer.cancel()
    assert mode(state) == 0o700
    for path in state.iterdir():
        seen.setdefault(path.name, mode(path))
    assert {"events.sqlite3", "audit.log", "audit.log.head"} <= set(seen)
    assert {name: m for name, m in seen.items() if m & 0o077} == {}, seen


def test_a_start_with_snapshots_off_deletes_the_faces_stored_earlier(
    tmp_path: Path, mock_factory: MockFactory
) -> None:
    from edge.snapshots import SnapshotStore

    state = tmp_path / "state"
    earlier = SnapshotStore(state / "snapshots", keep=20)
    saved = [earlier.save(b"\xff\xd8jpeg", "granted") for _ in range(3)]
    config = parse_config(
        {"state_dir": str(state), "access": {"policy": "any_live"}, "mqtt": {"enabled": False}},
        tmp_path,
    )
    assert config.homeassistant.snapshot is False  # the default
    options = RunOptions(
        frame_source=ScriptedCamera([("frames", 1)]),
        detector=FixedFaceDetector(),
        liveness=ConstantLiveness(0.95),
    )
    options.stop_event.set()  # the start is what matters here, not the frames
    assert Daemon(config, options).run() == 0
    assert all(path is not None and not path.exists() for path in saved)


def test_older_wider_state_files_are_tightened(
    tmp_path: Path, mock_factory: MockFactory, umask_022: None
) -> None:
    from edge.audit import AuditLog
    from edge.journal import EventJournal

    for name in ("events.sqlite3", "audit.log"):
        (tmp_path / name).touch(mode=0o644)
        (tmp_path / name).chmod(0o644)
    EventJournal(tmp_path / "events.sqlite3").close()
    log = AuditLog(tmp_path / "audit.log")
    log.append("start")
    log.close()
    for name in ("events.sqlite3", "audit.log", "audit.log.head"):
        assert mode(tmp_path / name) == 0o600, name


@pytest.mark.parametrize(("file_mode", "warned"), [(0o644, True), (0o640, True), (0o600, False)])
def test_readable_password_file_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, file_mode: int, warned: bool
) -> None:
    secret = tmp_path / "mqtt_password"
    secret.write_text("hunter2secret\n")
    secret.chmod(file_mode)
    config = MqttConfig(username="door", password_file=secret)
    with caplog.at_level(logging.WARNING):
        assert config.password() is not None
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("readable by other users" in w and str(secret) in w for w in warnings) == warned
    assert not any("hunter2secret" in w for w in warnings)
