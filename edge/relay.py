"""The door strike relay on a gpiozero ``OutputDevice``: locked at start, on stop, and on any error.

A pulse is ended by its own timer thread, not by the frame loop, so a stalled pipeline can never
hold the door open past ``pulse_s`` (itself capped by ``PULSE_HARD_CAP_S``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from gpiozero import OutputDevice
from gpiozero.pins import Factory

from edge.config import PULSE_HARD_CAP_S, RelayConfig
from edge.errors import RelayError

logger = logging.getLogger(__name__)

StateListener = Callable[[bool], None]  # called with True when unlocked, False when locked


class DoorRelay:
    """One pulse per grant; ``lock()`` ends a pulse early; ``close()`` is safe twice."""

    def __init__(self, config: RelayConfig, pin_factory: Factory | None = None) -> None:
        self.config = config
        self.pulse_s = min(config.pulse_s, PULSE_HARD_CAP_S)
        self._device = open_locked(config, pin_factory)
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._listeners: list[StateListener] = []
        self._closed = False
        self.pulses = 0

    def add_listener(self, listener: StateListener) -> None:
        self._listeners.append(listener)

    @property
    def unlocked(self) -> bool:
        with self._lock:
            return not self._closed and bool(self._device.value)

    @property
    def ready(self) -> bool:
        """True when ``pulse()`` would drive the strike now (not closed, not already unlocked)."""
        with self._lock:
            return not self._closed and not bool(self._device.value)

    def pulse(self, seconds: float | None = None) -> bool:
        """Unlock for ``seconds`` (default ``pulse_s``, never above the cap); False if refused."""
        duration = min(seconds if seconds is not None else self.pulse_s, PULSE_HARD_CAP_S)
        if duration <= 0:
            return False
        with self._lock:
            if self._closed or self._device.value:
                return False  # one pulse at a time: a grant during a pulse does not extend it
            timer = threading.Timer(duration, self._end_pulse)
            timer.daemon = True
            # The timer is the only thing that ends a pulse: it runs before the pin moves, so a
            # timer that cannot start (no thread left) raises with the strike still locked.
            timer.start()
            self._timer = timer
            self._device.on()
            self.pulses += 1
        logger.info("relay on: door unlocked for %.1f s", duration)
        self._notify(True)
        return True

    def _end_pulse(self) -> None:
        self.lock(reason="pulse ended")

    def lock(self, reason: str = "lock requested") -> None:
        """Drive the pin to its locked level now (idempotent)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._closed:
                return
            was_unlocked = bool(self._device.value)
            self._device.off()
        if was_unlocked:
            logger.info("relay off: door locked (%s)", reason)
            self._notify(False)

    def close(self) -> None:
        """Lock, then release the pin. Safe to call more than once."""
        # One critical section: closed, locked and released together, so a pulse from another
        # thread (a remote unlock during shutdown) cannot slip in between and leave the pin high.
        with self._lock:
            if self._closed:
                return
            self._closed = True  # from here on pulse() refuses
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            was_unlocked = bool(self._device.value)
            try:
                self._device.off()
            finally:
                self._device.close()
        if was_unlocked:
            logger.info("relay off: door locked (closing)")
            self._notify(False)

    def _notify(self, unlocked: bool) -> None:
        for listener in self._listeners:
            try:
                listener(unlocked)
            except Exception:
                logger.exception("relay listener %r failed", listener)

    def __enter__(self) -> DoorRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def mock_pin_factory() -> Factory:
    """gpiozero's MockFactory, for ``--relay mock`` and demos without hardware."""
    from gpiozero.pins.mock import MockFactory

    return MockFactory()


def open_locked(config: RelayConfig, pin_factory: Factory | None = None) -> OutputDevice:
    """The relay's pin, held at its locked level from the start (``initial_value=False``).
    RelayError naming the pin and the cause when it cannot be opened, not gpiozero's traceback
    (no GPIO library or chip on this machine, no permission, the pin in use)."""
    try:
        return OutputDevice(
            config.pin, active_high=config.active_high, initial_value=False, pin_factory=pin_factory
        )
    except Exception as exc:  # noqa: BLE001 - gpiozero, lgpio and the OS each raise their own
        raise RelayError(
            f"relay.pin {config.pin}: cannot open the GPIO pin ({type(exc).__name__}: {exc});"
            " on a Pi: is lgpio installed and the user in group gpio? Without GPIO: --relay mock"
        ) from None


def drive_locked(config: RelayConfig, pin_factory: Factory | None = None) -> None:
    """Set the relay pin to its locked level and release it (the service's stop hook)."""
    device = open_locked(config, pin_factory)
    device.off()
    device.close()
