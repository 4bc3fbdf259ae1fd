"""The face-unlock switch: owned by the daemon, kept on disk, mirrored and changed by HA.

The door must behave the same whether or not MQTT is configured, connected or announcing: an owner
who switched face unlock off must not find it on again after a restart with the broker down. So
the state lives here, is loaded from ``<state_dir>/ha_switch.json`` before the first frame, and the
Home Assistant bridge only shows it and asks for changes.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

SWITCH_FILE = "ha_switch.json"  # the name predates this module: kept so upgrades keep the state

SwitchListener = Callable[[bool], None]


class FaceUnlockSwitch:
    """``enabled`` (thread-safe), loaded at construction; ``set`` persists before it returns."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / SWITCH_FILE
        self._lock = threading.Lock()
        self._listeners: list[SwitchListener] = []
        self._enabled = self._load()

    @property
    def enabled(self) -> bool:
        with self._lock:
            return self._enabled

    def add_listener(self, listener: SwitchListener) -> None:
        """``listener(enabled)`` after every change (on the thread that made it)."""
        self._listeners.append(listener)

    def set(self, enabled: bool) -> bool:
        """Change the switch; True when the new state is on disk (it applies either way)."""
        with self._lock:
            self._enabled = enabled
        persisted = self._save(enabled)
        logger.info("face unlock switched %s", "on" if enabled else "off")
        for listener in list(self._listeners):
            try:
                listener(enabled)
            except Exception:
                logger.exception("face unlock listener %r failed", listener)
        return persisted

    def _load(self) -> bool:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return True  # never set: face unlock on, the product's purpose
        except (OSError, ValueError):
            # Someone turned it off or on and we cannot tell which: fail locked.
            logger.error("cannot read %s: face unlock starts OFF until switched again", self.path)
            return False
        value = data.get("face_unlock") if isinstance(data, dict) else None
        if not isinstance(value, bool):
            logger.error("%s has no boolean 'face_unlock': face unlock starts OFF", self.path)
            return False
        return value

    def _save(self, enabled: bool) -> bool:
        path = self.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write then rename: a power cut leaves the old file or the new one, never half of one.
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".ha_switch.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    json.dump({"face_unlock": enabled}, out)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError:
            logger.exception("could not persist the face unlock switch in %s", path)
            return False
        return True
