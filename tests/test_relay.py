"""DoorRelay on gpiozero's MockFactory: locked at start, one capped pulse, locked on close."""

from __future__ import annotations

import threading
import time

import pytest
from gpiozero.pins.mock import MockFactory

import edge.relay as relay_module
from edge.config import RelayConfig
from edge.relay import DoorRelay, drive_locked


def test_locked_at_start_and_pulse_ends_by_timer(mock_factory: MockFactory) -> None:
    relay = DoorRelay(RelayConfig(pin=17, pulse_s=0.2))
    pin = mock_factory.pin(17)
    assert pin.state is False and not relay.unlocked
    changes: list[bool] = []
    relay.add_listener(changes.append)
    assert relay.pulse()
    assert pin.state is True and relay.unlocked
    assert not relay.pulse(), "a second grant during a pulse does not extend it"
    deadline = time.monotonic() + 3
    while pin.state and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pin.state is False  # ended by the timer thread: nothing else ran
    assert changes == [True, False]
    relay.close()
    relay.close()  # safe twice


def test_active_low_relay(mock_factory: MockFactory) -> None:
    relay = DoorRelay(RelayConfig(pin=5, active_high=False, pulse_s=5))
    pin = mock_factory.pin(5)
    assert pin.state is True  # locked = high on an active-low board
    relay.pulse()
    assert pin.state is False
    relay.lock()
    assert pin.state is True
    relay.close()


def test_pulse_never_exceeds_hard_cap(mock_factory: MockFactory) -> None:
    relay = DoorRelay(RelayConfig(pin=17, pulse_s=10))
    relay.pulse(seconds=3600)
    assert relay._timer is not None and relay._timer.interval == 10.0
    relay.close()
    assert mock_factory.pin(17).state is False


def test_lock_ends_pulse_early_and_close_locks(mock_factory: MockFactory) -> None:
    relay = DoorRelay(RelayConfig(pin=17, pulse_s=5))
    relay.pulse()
    relay.lock()
    assert mock_factory.pin(17).state is False
    relay.pulse()
    relay.close()
    assert mock_factory.pin(17).state is False
    assert not relay.pulse(), "a closed relay refuses to unlock"


def test_drive_locked_sets_locked_level(mock_factory: MockFactory) -> None:
    drive_locked(RelayConfig(pin=22, active_high=False))
    assert mock_factory.pin(22).state is True


class _NoThreadLeft(threading.Timer):
    """A timer whose thread cannot start, as when the process has run out of threads."""

    def start(self) -> None:
        raise RuntimeError("can't start new thread")


def test_pulse_whose_timer_cannot_start_leaves_the_door_locked(
    mock_factory: MockFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay = DoorRelay(RelayConfig(pin=17, pulse_s=3))
    changes: list[bool] = []
    relay.add_listener(changes.append)
    monkeypatch.setattr(relay_module.threading, "Timer", _NoThreadLeft)
    # The failure is raised, not hidden (the MQTT thread logs it, the frame loop stops)...
    with pytest.raises(RuntimeError, match="new thread"):
        relay.pulse()
    # ...and nothing would ever end that pulse: the strike was never driven.
    assert True not in [s.state for s in mock_factory.pin(17).states]
    assert not relay.unlocked and relay.ready and changes == [] and relay.pulses == 0
    relay.close()


def test_a_pulse_racing_close_is_refused_and_the_pin_ends_locked(
    mock_factory: MockFactory,
) -> None:
    relay = DoorRelay(RelayConfig(pin=17, pulse_s=5))
    results: list[bool] = []

    def unlock_from_another_thread(unlocked: bool) -> None:
        # Runs as close() reports the lock: the moment a remote UNLOCK could arrive from the
        # MQTT thread during shutdown.
        if not unlocked and not results:
            results.append(relay.pulse())

    relay.pulse()
    relay.add_listener(unlock_from_another_thread)
    relay.close()
    assert results == [False], "a relay being closed refuses to unlock"
    assert mock_factory.pin(17).states[-1].state is False
    assert mock_factory.pin(17).state is False
