"""Remote commands from Home Assistant: parse, then decide. Pure logic, no MQTT and no relay.

A remote ``UNLOCK`` opens a door from anywhere the broker is reachable, so it is off by default
and, when enabled, has to pass every check in ``CommandGate.check``: not a retained message, remote
unlock enabled, under the rate limit, not in a bad-code lockout, and the right code (compared in
constant time). ``LOCK`` only ever makes the door safer and is always accepted.

Payloads on the lock command topic (``<base>/<device>/cmd/lock``), at most ``MAX_COMMAND_BYTES``:

- JSON ``{"action": "UNLOCK", "code": "482913"}`` (what Home Assistant's ``command_template`` sends;
  ``code`` may be ``null`` or absent for ``LOCK``);
- plain text ``LOCK`` or ``UNLOCK`` (an ``UNLOCK`` without a code is always refused).

Anything else (not UTF-8, bad JSON, duplicate or unknown keys, unknown action, a code that is not a
string) is malformed and changes nothing. The code never appears in a repr, a log line or an event.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import SecretStr

from edge.config import HomeAssistantConfig
from edge.errors import ConfigError

logger = logging.getLogger(__name__)

LOCK = "LOCK"
UNLOCK = "UNLOCK"
SWITCH_ON = "ON"
SWITCH_OFF = "OFF"

# A command is a few dozen bytes; anything much larger is not from Home Assistant.
MAX_COMMAND_BYTES = 256
# The unlock code: 6 to 64 characters without white space. Six digits at the default bad-code
# lockout (5 wrong codes per 15 min) take years to guess; four digits would take days.
CODE_MIN_CHARS = 6
CODE_MAX_CHARS = 64
CODE_PATTERN = re.compile(rf"^\S{{{CODE_MIN_CHARS},{CODE_MAX_CHARS}}}$")
# What Home Assistant's lock entity is told (``code_format``): the code, or nothing at all so that
# LOCK works without typing a code (the device still refuses an UNLOCK without one).
HA_CODE_FORMAT = rf"^(?:\S{{{CODE_MIN_CHARS},{CODE_MAX_CHARS}}})?$"

Reason = Literal[
    "ok",
    "malformed",
    "retained",
    "disabled",
    "rate_limited",
    "bad_code_lockout",
    "code_missing",
    "bad_code",
]


@dataclass(frozen=True)
class ParsedCommand:
    """A payload as understood: ``action`` is None when it was malformed (see ``error``)."""

    action: str | None
    code: str | None = field(default=None, repr=False)  # never printed
    error: str | None = None

    @property
    def malformed(self) -> bool:
        return self.action is None


def _malformed(error: str) -> ParsedCommand:
    return ParsedCommand(action=None, error=error)


def _decode(payload: bytes) -> str | ParsedCommand:
    if len(payload) > MAX_COMMAND_BYTES:
        return _malformed(f"payload of {len(payload)} bytes is above {MAX_COMMAND_BYTES}")
    try:
        return payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        return _malformed("payload is not UTF-8")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # {"action": "LOCK", "action": "UNLOCK"} is ambiguous: refuse it rather than take the last.
    keys = [key for key, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("duplicate key")
    return dict(pairs)


def parse_lock_command(payload: bytes) -> ParsedCommand:
    """Parse a lock command payload (JSON object or plain ``LOCK``/``UNLOCK``); never raises."""
    text = _decode(payload)
    if isinstance(text, ParsedCommand):
        return text
    if not text.startswith("{"):
        if text in (LOCK, UNLOCK):
            return ParsedCommand(action=text)
        return _malformed("unknown plain-text command")
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except (ValueError, RecursionError):
        return _malformed("payload is not valid JSON (or repeats a key)")
    if not isinstance(obj, dict):
        return _malformed("JSON payload is not an object")
    unknown = set(obj) - {"action", "code"}
    if unknown:
        return _malformed(f"unknown key(s): {', '.join(sorted(unknown))}")
    action = obj.get("action")
    if action not in (LOCK, UNLOCK):
        return _malformed('action must be "LOCK" or "UNLOCK"')
    code = obj.get("code")
    if code is not None and not isinstance(code, str):
        return _malformed("code must be a string or null")
    return ParsedCommand(action=action, code=code or None)


def parse_switch_command(payload: bytes) -> ParsedCommand:
    """Parse a face-unlock switch payload: exactly ``ON`` or ``OFF``; never raises."""
    text = _decode(payload)
    if isinstance(text, ParsedCommand):
        return text
    if text in (SWITCH_ON, SWITCH_OFF):
        return ParsedCommand(action=text)
    return _malformed("switch payload must be ON or OFF")


def load_unlock_code(config: HomeAssistantConfig) -> SecretStr | None:
    """The remote unlock code from its file or environment variable; None when remote unlock is off.

    Raises ConfigError (naming the key, never the code) when the code cannot be read or is too weak.
    """
    if not config.remote_unlock:
        return None
    if config.unlock_code_file is not None:
        key = "homeassistant.unlock_code_file"
        path = config.unlock_code_file
        try:
            # Only the line ending is stripped: spaces inside a code are refused below.
            value = path.read_text(encoding="utf-8").rstrip("\r\n")
            mode = path.stat().st_mode
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{key}: cannot read {path}: {exc}") from None
        if mode & 0o077:
            logger.warning(
                "%s: %s is readable by other users; chmod 600 it (or use a systemd credential)",
                key,
                path,
            )
    else:
        key = "homeassistant.unlock_code_env"
        name = config.unlock_code_env or ""
        value = os.environ.get(name, "")
        if not value:
            raise ConfigError(f"{key}: environment variable {name} is not set or empty")
    if not CODE_PATTERN.match(value):
        raise ConfigError(
            f"{key}: the unlock code must be {CODE_MIN_CHARS} to {CODE_MAX_CHARS} characters"
            " without white space"
        )
    return SecretStr(value)


def code_matches(candidate: str, secret: SecretStr) -> bool:
    """Constant-time comparison; hashing first hides the code's length as well."""
    given = hashlib.sha256(candidate.encode("utf-8")).digest()
    wanted = hashlib.sha256(secret.get_secret_value().encode("utf-8")).digest()
    return hmac.compare_digest(given, wanted)


class SlidingWindow:
    """At most ``limit`` entries within the last ``window_s`` seconds of ``clock``."""

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float]) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._times: deque[float] = deque()

    def _prune(self, now: float) -> None:
        while self._times and now - self._times[0] >= self.window_s:
            self._times.popleft()

    def full(self) -> bool:
        self._prune(self._clock())
        return len(self._times) >= self.limit

    def add(self) -> None:
        now = self._clock()
        self._prune(now)
        self._times.append(now)

    def clear(self) -> None:
        self._times.clear()


@dataclass(frozen=True)
class GateVerdict:
    accepted: bool
    reason: Reason


class CommandGate:
    """Decides whether a parsed lock command may run. Time comes from an injected clock.

    UNLOCK checks, in order: retained -> ``retained``; remote unlock off -> ``disabled``; a
    bad-code lockout -> ``bad_code_lockout``; ``rate_per_min`` attempts already in the last 60 s ->
    ``rate_limited``; no code -> ``code_missing``; wrong code -> ``bad_code``. Attempts that reach
    the code check count against the rate; ``bad_codes`` wrong codes within ``bad_code_window_s``
    refuse every UNLOCK for ``bad_code_lockout_s`` (guessing slows to a few codes per quarter hour).
    """

    def __init__(
        self,
        remote_unlock: bool,
        code: SecretStr | None,
        rate_per_min: int,
        clock: Callable[[], float],
        bad_codes: int = 5,
        bad_code_window_s: float = 900.0,
        bad_code_lockout_s: float = 900.0,
    ) -> None:
        if remote_unlock and code is None:
            raise ConfigError("homeassistant.remote_unlock is on but no unlock code was loaded")
        self.remote_unlock = remote_unlock
        self._code = code
        self._clock = clock
        self._attempts = SlidingWindow(rate_per_min, 60.0, clock)
        self._bad = SlidingWindow(bad_codes, bad_code_window_s, clock)
        self._bad_code_lockout_s = bad_code_lockout_s
        self._locked_until: float | None = None

    def check(self, command: ParsedCommand, retained: bool) -> GateVerdict:
        if command.action is None:
            return GateVerdict(False, "malformed")
        if command.action == LOCK:
            # Ending a pulse early only makes the door safer: always allowed, even when replayed.
            return GateVerdict(True, "ok")
        if retained:
            # A retained UNLOCK would open the door again at every reconnect of the daemon.
            return GateVerdict(False, "retained")
        if not self.remote_unlock or self._code is None:
            return GateVerdict(False, "disabled")
        now = self._clock()
        if self._locked_until is not None and now < self._locked_until:
            return GateVerdict(False, "bad_code_lockout")
        if self._attempts.full():
            return GateVerdict(False, "rate_limited")
        self._attempts.add()
        if command.code is None:
            return GateVerdict(False, "code_missing")
        if not code_matches(command.code, self._code):
            self._bad.add()
            if self._bad.full():
                self._locked_until = now + self._bad_code_lockout_s
                self._bad.clear()
                logger.warning(
                    "remote unlock refused for %.0f s after repeated wrong codes",
                    self._bad_code_lockout_s,
                )
            return GateVerdict(False, "bad_code")
        return GateVerdict(True, "ok")
