"""systemd's notify protocol (``sd_notify``) by hand: one datagram to ``$NOTIFY_SOCKET`` per call.

Without the variable (not started by systemd, or a unit that is not ``Type=notify``) every call is
a silent no-op, so the daemon runs the same way from a terminal, in tests and under systemd. A
send that fails is logged and otherwise ignored: losing a message to systemd must never stop the
door; a missed ``WATCHDOG=1`` only means systemd restarts the daemon, which locks the door.
"""

from __future__ import annotations

import logging
import os
import socket

logger = logging.getLogger(__name__)

# Only the frame loop calls watchdog(); a stuck send must not stall it for long.
_SEND_TIMEOUT_S = 1.0


def _socket_address(path: str) -> str | None:
    """The address to send to: a file system path, or an abstract name for a leading '@'."""
    if path.startswith("/"):
        return path
    if path.startswith("@") and len(path) > 1:
        return "\0" + path[1:]
    return None


class SystemdNotifier:
    """Sends READY=1, WATCHDOG=1, STOPPING=1 and STATUS=… to the service manager."""

    def __init__(self, socket_path: str | None = None) -> None:
        path = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._address = _socket_address(path) if path else None
        if path and self._address is None:
            # e.g. systemd 254+'s "vsock:" sockets, which a Raspberry Pi service never gets.
            logger.warning("NOTIFY_SOCKET %r is not a Unix socket path: not notifying", path)
        self._failing = False

    @property
    def enabled(self) -> bool:
        """True when there is a socket to notify (started by systemd as Type=notify)."""
        return self._address is not None

    def notify(self, message: str) -> bool:
        """Send ``message`` (newline-separated VAR=value lines); True if it was sent."""
        if self._address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(_SEND_TIMEOUT_S)
                sock.connect(self._address)
                sock.sendall(message.encode("utf-8"))
        except OSError as exc:
            # Warn once per outage, not at every watchdog ping.
            if not self._failing:
                logger.warning("sd_notify %r failed: %s", message.split("\n", 1)[0], exc)
            self._failing = True
            return False
        self._failing = False
        return True

    def ready(self) -> None:
        """Startup finished: camera, models and relay are up (systemd ends the start job)."""
        self.notify("READY=1")

    def watchdog(self) -> None:
        """Keep-alive from the frame loop; see :func:`watchdog_interval_s` for how often."""
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        """Shutdown has begun (systemd no longer expects watchdog pings)."""
        self.notify("STOPPING=1")

    def status(self, text: str) -> None:
        """One line shown by ``systemctl status livegate``."""
        # A newline would start a new VAR=value assignment in the protocol.
        self.notify("STATUS=" + " ".join(text.split()))


def watchdog_interval_s() -> float | None:
    """Half of systemd's ``WatchdogSec`` in seconds, or None when no watchdog is meant for us.

    ``WATCHDOG_PID``, when set, names the process the watchdog is meant for; a child process that
    inherited the variables must not ping on its parent's behalf.
    """
    usec_text = os.environ.get("WATCHDOG_USEC", "").strip()
    if not usec_text:
        return None
    pid_text = os.environ.get("WATCHDOG_PID", "").strip()
    try:
        usec = int(usec_text)
        pid = int(pid_text) if pid_text else None
    except ValueError:
        logger.warning("ignoring malformed WATCHDOG_USEC=%r / WATCHDOG_PID=%r", usec_text, pid_text)
        return None
    if usec <= 0 or (pid is not None and pid != os.getpid()):
        return None
    return usec / 2 / 1_000_000
