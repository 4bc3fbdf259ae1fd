"""The hand-written sd_notify client against a real AF_UNIX datagram socket, as systemd has."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.sdnotify import SystemdNotifier, watchdog_interval_s

# Only a guard against a hang if a message never arrives; no test measures time.
RECV_GUARD_S = 5.0


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(RECV_GUARD_S)
    return sock


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    sock = _receiver(path)
    yield path, sock
    sock.close()


@pytest.fixture
def no_systemd_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


def test_ready_watchdog_stopping_arrive_in_order(
    notify_socket: tuple[str, socket.socket],
) -> None:
    path, sock = notify_socket
    notifier = SystemdNotifier(path)
    assert notifier.enabled
    notifier.ready()
    notifier.watchdog()
    notifier.watchdog()
    notifier.stopping()
    received = [sock.recv(4096) for _ in range(4)]
    assert received == [b"READY=1", b"WATCHDOG=1", b"WATCHDOG=1", b"STOPPING=1"]


def test_socket_taken_from_notify_socket_env(
    notify_socket: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, sock = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    SystemdNotifier().ready()
    assert sock.recv(4096) == b"READY=1"


def test_status_is_one_line(notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    notifier = SystemdNotifier(path)
    notifier.status("camera lost\nREADY=1")  # a newline must not smuggle in another assignment
    assert sock.recv(4096) == b"STATUS=camera lost READY=1"
    assert notifier.notify("STATUS=ok\nWATCHDOG=1") is True
    assert sock.recv(4096) == b"STATUS=ok\nWATCHDOG=1"


def test_abstract_namespace_socket() -> None:
    name = f"livegate-test-{uuid.uuid4().hex}"
    sock = _receiver("\0" + name)
    try:
        notifier = SystemdNotifier("@" + name)
        assert notifier.notify("READY=1") is True
        notifier.watchdog()
        assert sock.recv(4096) == b"READY=1"
        assert sock.recv(4096) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_without_socket_every_call_is_a_silent_noop(
    no_systemd_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="edge.sdnotify")
    notifier = SystemdNotifier()
    assert not notifier.enabled
    notifier.ready()
    notifier.watchdog()
    notifier.status("running")
    notifier.stopping()
    assert notifier.notify("READY=1") is False
    assert caplog.records == []


def test_empty_notify_socket_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert SystemdNotifier().notify("READY=1") is False


def test_vanished_socket_warns_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = str(tmp_path / "gone.sock")
    receiver = _receiver(path)
    notifier = SystemdNotifier(path)
    assert notifier.notify("READY=1") is True
    assert receiver.recv(4096) == b"READY=1"
    receiver.close()
    os.unlink(path)  # systemd went away
    caplog.set_level(logging.WARNING, logger="edge.sdnotify")
    for _ in range(3):
        assert notifier.notify("WATCHDOG=1") is False
        notifier.watchdog()
    assert len([r for r in caplog.records if "sd_notify" in r.getMessage()]) == 1
    # Back again: sends work and a later outage is reported again.
    receiver = _receiver(path)
    try:
        assert notifier.notify("WATCHDOG=1") is True
        assert receiver.recv(4096) == b"WATCHDOG=1"
    finally:
        receiver.close()


def test_non_unix_socket_address_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="edge.sdnotify")
    notifier = SystemdNotifier("vsock:2:1234")
    assert not notifier.enabled
    assert notifier.notify("READY=1") is False
    assert any("not a Unix socket" in r.getMessage() for r in caplog.records)


def test_watchdog_interval_is_half_of_watchdog_usec(
    no_systemd_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert watchdog_interval_s() == pytest.approx(15.0)
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval_s() == pytest.approx(15.0)
    monkeypatch.setenv("WATCHDOG_USEC", "2500000")
    assert watchdog_interval_s() == pytest.approx(1.25)


def test_watchdog_meant_for_another_process_is_ignored(
    no_systemd_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog_interval_s() is None


@pytest.mark.parametrize("usec,pid", [("abc", ""), ("0", ""), ("-5", ""), ("30000000", "x")])
def test_malformed_watchdog_env_means_no_watchdog(
    no_systemd_env: None, monkeypatch: pytest.MonkeyPatch, usec: str, pid: str
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid:
        monkeypatch.setenv("WATCHDOG_PID", pid)
    assert watchdog_interval_s() is None
