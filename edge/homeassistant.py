"""Home Assistant over MQTT: device-based discovery, entity states and safe remote commands.

One retained discovery message on ``<prefix>/device/<device_id>/config`` announces every entity
(``dev``, ``o``, ``cmps``; each component with ``p`` and a stable ``unique_id``); availability comes
from the daemon's will (``<base>/<device>/availability``). The bridge announces again whenever Home
Assistant's birth message (``<prefix>/status`` = ``online``) arrives, and after every reconnect.

Topic layout (``<base>/<device>`` = ``mqtt.base_topic``/``mqtt.device_id``), chosen so a broker ACL
can give the device write access to ``state/#`` and read access to ``cmd/#`` only:

- ``state/lock`` LOCKED/UNLOCKED, ``state/face_unlock`` ON/OFF, ``state/face_present`` and
  ``state/camera_ok`` ON/OFF, ``state/liveness_score``, ``state/last_access`` (ISO 8601): retained;
- ``state/fps``, ``state/decision_latency`` (not retained), ``state/event`` (one JSON message per
  event, ``{"event_type": kind, ...}``), ``state/snapshot`` (JPEG, opt-in);
- ``cmd/lock`` (see ``edge.commands``) and ``cmd/face_unlock`` (ON/OFF).

Every handler that runs on paho's thread catches its own errors. The state lock is never held while
calling back into the daemon (``emit``, ``request_unlock``, ``request_lock``): the event bus calls
``on_event`` under the bus lock, and the relay calls ``set_lock_state`` from inside a pulse.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edge import __version__
from edge.commands import (
    HA_CODE_FORMAT,
    LOCK,
    SWITCH_ON,
    UNLOCK,
    CommandGate,
    ParsedCommand,
    load_unlock_code,
    parse_lock_command,
    parse_switch_command,
)
from edge.config import Config
from edge.events import EVENT_KINDS, Event, new_event
from edge.mqtt import OFFLINE, ONLINE, MqttLink, device_topic

logger = logging.getLogger(__name__)

# Event kinds that fire Home Assistant's event entity. Relay changes show on the lock entity.
HA_EVENT_TYPES: tuple[str, ...] = tuple(sorted(EVENT_KINDS - {"relay"}))
# Decision events that carry a liveness score, and the data keys it may come under.
_SCORED_KINDS = frozenset({"granted", "denied_spoof", "denied_unknown"})
_SCORE_KEYS = ("liveness_score", "p_real", "score")

LOCKED = "LOCKED"
UNLOCKED = "UNLOCKED"
ON = "ON"
OFF = "OFF"
COMMAND_SOURCE = "mqtt"

METRICS_INTERVAL_S = 5.0  # diagnostic sensors: at most one update per this many seconds
FPS_EXPIRE_AFTER_S = 30  # fps goes "unavailable" in HA when the frame loop stops reporting
MALFORMED_EVENT_INTERVAL_S = 10.0  # a flood of garbage becomes one event per topic per interval
JPEG_MAGIC = b"\xff\xd8\xff"
SWITCH_FILE = "ha_switch.json"
SNAPSHOT_DIR = "snapshots"


@dataclass(frozen=True)
class Topics:
    """Every topic the Home Assistant integration reads or writes, for one config."""

    availability: str
    lock_state: str
    lock_command: str
    switch_state: str
    switch_command: str
    face_present: str
    camera_ok: str
    liveness_score: str
    last_access: str
    fps: str
    decision_latency: str
    event: str
    snapshot: str
    ha_status: str
    discovery: str
    enrolled: str

    @property
    def retained_states(self) -> tuple[str, ...]:
        return (
            self.lock_state,
            self.switch_state,
            self.face_present,
            self.camera_ok,
            self.liveness_score,
            self.last_access,
            self.enrolled,
        )


def discovery_topic(config: Config) -> str:
    """``<prefix>/device/<device_id>/config``: HA's device-based discovery topic."""
    return f"{config.homeassistant.discovery_prefix}/device/{config.mqtt.device_id}/config"


def topics(config: Config) -> Topics:
    m = config.mqtt

    def state(leaf: str) -> str:
        return device_topic(m, f"state/{leaf}")

    return Topics(
        availability=device_topic(m, "availability"),
        lock_state=state("lock"),
        lock_command=device_topic(m, "cmd/lock"),
        switch_state=state("face_unlock"),
        switch_command=device_topic(m, "cmd/face_unlock"),
        face_present=state("face_present"),
        camera_ok=state("camera_ok"),
        liveness_score=state("liveness_score"),
        last_access=state("last_access"),
        fps=state("fps"),
        decision_latency=state("decision_latency"),
        event=state("event"),
        snapshot=state("snapshot"),
        ha_status=f"{config.homeassistant.discovery_prefix}/status",
        discovery=discovery_topic(config),
        enrolled=state("enrolled"),
    )


# Home Assistant renders this for every lock/unlock call: ``value`` is payload_lock/payload_unlock
# and ``code`` what the user typed (None when nothing); to_json quotes and escapes it.
LOCK_COMMAND_TEMPLATE = '{"action": "{{ value }}", "code": {{ code | to_json }}}'


def discovery_payload(config: Config) -> dict[str, Any]:
    """The device discovery message (pure: a function of the config only)."""
    t = topics(config)
    device_id = config.mqtt.device_id
    ha = config.homeassistant

    def uid(name: str) -> str:
        return f"livegate_{device_id}_{name}"

    lock: dict[str, Any] = {
        "p": "lock",
        "unique_id": uid("lock"),
        "name": "Door",
        "state_topic": t.lock_state,
        "command_topic": t.lock_command,
        "command_template": LOCK_COMMAND_TEMPLATE,
        "payload_lock": LOCK,
        "payload_unlock": UNLOCK,
        "state_locked": LOCKED,
        "state_unlocked": UNLOCKED,
        "optimistic": False,
        "retain": False,
    }
    if ha.remote_unlock:
        lock["code_format"] = HA_CODE_FORMAT
    cmps: dict[str, dict[str, Any]] = {
        "lock": lock,
        "event": {
            "p": "event",
            "unique_id": uid("event"),
            "name": "Access event",
            "state_topic": t.event,
            "event_types": list(HA_EVENT_TYPES),
            "icon": "mdi:door",
        },
        "face_present": {
            "p": "binary_sensor",
            "unique_id": uid("face_present"),
            "name": "Face present",
            "state_topic": t.face_present,
            "payload_on": ON,
            "payload_off": OFF,
            "device_class": "occupancy",
        },
        "camera_ok": {
            "p": "binary_sensor",
            "unique_id": uid("camera_ok"),
            "name": "Camera",
            "state_topic": t.camera_ok,
            "payload_on": ON,
            "payload_off": OFF,
            "device_class": "connectivity",
            "entity_category": "diagnostic",
        },
        "liveness_score": {
            "p": "sensor",
            "unique_id": uid("liveness_score"),
            "name": "Last liveness score",
            "state_topic": t.liveness_score,
            "state_class": "measurement",
            "suggested_display_precision": 2,
            "icon": "mdi:face-recognition",
        },
        "last_access": {
            "p": "sensor",
            "unique_id": uid("last_access"),
            "name": "Last access",
            "state_topic": t.last_access,
            "device_class": "timestamp",
        },
        "fps": {
            "p": "sensor",
            "unique_id": uid("fps"),
            "name": "Frames per second",
            "state_topic": t.fps,
            "unit_of_measurement": "fps",
            "state_class": "measurement",
            "entity_category": "diagnostic",
            "expire_after": FPS_EXPIRE_AFTER_S,
        },
        "decision_latency": {
            "p": "sensor",
            "unique_id": uid("decision_latency"),
            "name": "Decision latency",
            "state_topic": t.decision_latency,
            "device_class": "duration",
            "unit_of_measurement": "ms",
            "state_class": "measurement",
            "entity_category": "diagnostic",
        },
        "face_unlock": {
            "p": "switch",
            "unique_id": uid("face_unlock"),
            "name": "Face unlock",
            "state_topic": t.switch_state,
            "command_topic": t.switch_command,
            "payload_on": ON,
            "payload_off": OFF,
            "optimistic": False,
            "retain": False,
            "icon": "mdi:face-recognition",
        },
    }
    if config.access.policy == "enrolled":
        # 0 means the door opens for nobody: visible in HA, not only in the daemon's log.
        cmps["enrolled"] = {
            "p": "sensor",
            "unique_id": uid("enrolled"),
            "name": "People enrolled",
            "state_topic": t.enrolled,
            "state_class": "measurement",
            "icon": "mdi:account-group",
        }
    if ha.snapshot:
        cmps["snapshot"] = {
            "p": "image",
            "unique_id": uid("snapshot"),
            "name": "Decision snapshot",
            "image_topic": t.snapshot,
            "content_type": "image/jpeg",
        }
    return {
        "dev": {
            "ids": [f"livegate_{device_id}"],
            "name": f"LiveGate {device_id}",
            "mf": "LiveGate",
            "mdl": "LiveGate face door",
            "sw": __version__,
        },
        "o": {"name": "LiveGate", "sw": __version__},
        "availability": [
            {
                "topic": t.availability,
                "payload_available": ONLINE,
                "payload_not_available": OFFLINE,
            }
        ],
        "qos": 1,
        "cmps": cmps,
    }


def mosquitto_acl(config: Config, device_user: str, ha_user: str) -> str:
    """A mosquitto ``acl_file`` for one door: it writes only its own topics, only HA commands it."""
    t = topics(config)
    base = config.mqtt.base_topic
    device_root = device_topic(config.mqtt, "")
    prefix = config.homeassistant.discovery_prefix
    return (
        f"# LiveGate door '{config.mqtt.device_id}': its own topics and its discovery topic only.\n"
        f"user {device_user}\n"
        f"topic write {t.availability}\n"
        f"topic write {device_root}event\n"
        f"topic write {device_root}state/#\n"
        f"topic read {device_root}cmd/#\n"
        f"topic write {t.discovery}\n"
        f"topic read {t.ha_status}\n"
        "\n"
        "# Home Assistant: reads every door, and is the only client that may send commands.\n"
        f"user {ha_user}\n"
        f"topic read {base}/#\n"
        f"topic write {base}/+/cmd/#\n"
        f"topic readwrite {prefix}/#\n"
    )


def _iso_utc(ts: str) -> str:
    # Events use "...Z"; "+00:00" is what every ISO 8601 parser accepts for HA's timestamp class.
    return ts[:-1] + "+00:00" if ts.endswith("Z") else ts


def _score_of(event: Event) -> float | None:
    for key in _SCORE_KEYS:
        value = event.data.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


class HomeAssistantBridge:
    """Entities and commands for one door on the daemon's MQTT link (see the module docstring)."""

    def __init__(
        self,
        link: MqttLink,
        config: Config,
        emit: Callable[[Event], None],
        request_unlock: Callable[[str], bool],
        request_lock: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._link = link
        self.config = config
        self.topics = topics(config)
        self._emit = emit
        self._request_unlock = request_unlock
        self._request_lock = request_lock
        self._clock = clock
        ha = config.homeassistant
        # Raises ConfigError now (the daemon refuses to start) rather than at the first command.
        self._gate = CommandGate(
            ha.remote_unlock, load_unlock_code(ha), ha.unlock_rate_per_min, clock
        )
        self._lock = threading.Lock()  # guards the state below; never held while calling out
        self._cmd_lock = threading.Lock()  # one command at a time through the gate
        self._switch_path = config.state_dir / SWITCH_FILE
        self._face_unlock = self._load_switch()
        self._switch_listeners: list[Callable[[bool], None]] = []
        self._unlocked = False
        self._face_present = False
        self._camera_ok: bool | None = None
        self._score: float | None = None
        self._last_access: str | None = None
        self._enrolled: int | None = None
        self._metrics_at: float | None = None
        self._malformed_at: dict[str, float] = {}
        self._snapshot_seq = 0
        self._started = False
        self._unregistered = False

    # -- wiring ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Subscribe the command topics and HA's status; announce on every (re)connect."""
        if self._started:
            return
        self._started = True
        # QoS 0: the broker does not queue these for the daemon while it is offline, so a command
        # sent during an outage can never arrive minutes later and open the door.
        self._link.subscribe(self.topics.lock_command, self._on_lock_message, qos=0)
        self._link.subscribe(self.topics.switch_command, self._on_switch_message, qos=0)
        self._link.subscribe(self.topics.ha_status, self._on_ha_status, qos=1)
        self._link.add_connect_handler(self.announce)
        if self._link.connected:
            self.announce()

    def add_switch_listener(self, listener: Callable[[bool], None]) -> None:
        """``listener(enabled)`` after every change of the face unlock switch (paho's thread)."""
        self._switch_listeners.append(listener)

    @property
    def face_unlock_enabled(self) -> bool:
        with self._lock:
            return self._face_unlock

    def announce(self) -> None:
        """Publish the discovery config (if enabled) and every known state."""
        if self._unregistered:
            return
        if self.config.homeassistant.discovery:
            payload = json.dumps(discovery_payload(self.config), separators=(",", ":"))
            self._pub(self.topics.discovery, payload, retain=True)
        with self._lock:
            self._publish_states_locked()

    def _publish_states_locked(self) -> None:
        t = self.topics
        self._pub(t.lock_state, UNLOCKED if self._unlocked else LOCKED, retain=True)
        self._pub(t.switch_state, ON if self._face_unlock else OFF, retain=True)
        self._pub(t.face_present, ON if self._face_present else OFF, retain=True)
        if self._camera_ok is not None:
            self._pub(t.camera_ok, ON if self._camera_ok else OFF, retain=True)
        if self._score is not None:
            self._pub(t.liveness_score, f"{self._score:.3f}", retain=True)
        if self._last_access is not None:
            self._pub(t.last_access, self._last_access, retain=True)
        if self._enrolled is not None:
            self._pub(t.enrolled, str(self._enrolled), retain=True)

    def _pub(self, topic: str, payload: str | bytes, retain: bool = False, qos: int = 1) -> None:
        # States are re-published on every connect, so nothing is queued while offline (a backlog
        # of stale states would only replay old news after the fresh ones).
        if not self._link.connected:
            return
        try:
            self._link.publish(topic, payload, qos=qos, retain=retain)
        except (ValueError, RuntimeError, OSError):
            logger.exception("could not publish to %s", topic)

    # -- states from the daemon -----------------------------------------------------------------
    def set_lock_state(self, unlocked: bool) -> None:
        with self._lock:
            self._unlocked = unlocked
            self._pub(self.topics.lock_state, UNLOCKED if unlocked else LOCKED, retain=True)

    def set_enrolled(self, count: int) -> None:
        """How many people the enrolment store holds (kept; published now and on each connect)."""
        with self._lock:
            self._enrolled = count
            self._pub(self.topics.enrolled, str(count), retain=True)

    def set_face_present(self, present: bool) -> None:
        with self._lock:
            if present == self._face_present:
                return
            self._face_present = present
            self._pub(self.topics.face_present, ON if present else OFF, retain=True)

    def set_camera_ok(self, ok: bool) -> None:
        with self._lock:
            if ok == self._camera_ok:
                return
            self._camera_ok = ok
            self._pub(self.topics.camera_ok, ON if ok else OFF, retain=True)

    def set_metrics(self, fps: float, decision_latency_ms: float | None) -> None:
        now = self._clock()
        with self._lock:
            if self._metrics_at is not None and now - self._metrics_at < METRICS_INTERVAL_S:
                return
            self._metrics_at = now
            self._pub(self.topics.fps, f"{fps:.1f}")
            if decision_latency_ms is not None:
                self._pub(self.topics.decision_latency, f"{decision_latency_ms:.0f}")

    def on_event(self, event: Event) -> None:
        """EventBus listener: fire the event entity and update the sensors it implies."""
        payload = {"event_type": event.kind, **event.to_dict()}
        with self._lock:
            if event.kind in HA_EVENT_TYPES:
                text = json.dumps(payload, separators=(",", ":"), allow_nan=False)
                self._pub(self.topics.event, text)
            if event.kind in _SCORED_KINDS:
                score = _score_of(event)
                if score is not None:
                    self._score = score
                    self._pub(self.topics.liveness_score, f"{score:.3f}", retain=True)
            if event.kind == "granted":
                self._last_access = _iso_utc(event.ts)
                self._pub(self.topics.last_access, self._last_access, retain=True)
        if event.kind in ("camera_lost", "camera_ok"):
            self.set_camera_ok(event.kind == "camera_ok")

    def publish_snapshot(self, jpeg: bytes) -> None:
        """Publish the JPEG of a decision (only with ``homeassistant.snapshot``) and keep at most
        ``snapshot_keep`` files in ``<state_dir>/snapshots``."""
        ha = self.config.homeassistant
        if not ha.snapshot:
            return
        if not jpeg.startswith(JPEG_MAGIC):
            logger.warning("snapshot ignored: %d bytes that are not a JPEG", len(jpeg))
            return
        self._pub(self.topics.snapshot, jpeg, qos=0)  # never retained: faces stay off the broker
        if ha.snapshot_keep > 0:
            try:
                self._store_snapshot(jpeg, ha.snapshot_keep)
            except OSError:
                logger.exception("could not store the snapshot in %s", self._snapshot_dir)

    @property
    def _snapshot_dir(self) -> Path:
        return self.config.state_dir / SNAPSHOT_DIR

    def _store_snapshot(self, jpeg: bytes, keep: int) -> None:
        folder = self._snapshot_dir
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._lock:
            self._snapshot_seq += 1
            seq = self._snapshot_seq
        stamp = datetime.now(tz=UTC).strftime("%Y%m%dT%H%M%S%fZ")
        path = folder / f"{stamp}-{seq:06d}.jpg"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(jpeg)
        # Names sort by time: the oldest go first.
        for old in sorted(folder.glob("*.jpg"))[:-keep]:
            old.unlink(missing_ok=True)

    def unregister(self, timeout: float = 5.0) -> None:
        """Remove the device from HA (empty retained discovery) and clear the retained states.

        Waits up to ``timeout`` seconds for the broker to acknowledge; announcing stops for good.
        """
        self._unregistered = True
        infos = [self._link.publish(self.topics.discovery, b"", qos=1, retain=True)]
        for topic in self.topics.retained_states:
            infos.append(self._link.publish(topic, b"", qos=1, retain=True))
        deadline = time.monotonic() + timeout
        for info in infos:
            try:
                info.wait_for_publish(timeout=max(0.0, deadline - time.monotonic()))
            except (RuntimeError, ValueError):
                logger.warning("unregister: the broker did not acknowledge every message")
                return

    # -- commands (paho's thread) ---------------------------------------------------------------
    def _emit_safely(self, event: Event) -> bool:
        try:
            self._emit(event)
            return True
        except Exception:
            logger.exception("could not record the %s event", event.kind)
            return False

    def _command_event(
        self, target: str, action: str | None, accepted: bool, reason: str, retained: bool
    ) -> Event:
        return new_event(
            "command",
            target=target,
            action=action,
            accepted=accepted,
            reason=reason,
            source=COMMAND_SOURCE,
            retained=retained,
        )

    def _malformed(self, target: str, topic: str, parsed: ParsedCommand, retained: bool) -> None:
        # The payload itself is never logged: it may hold a code.
        logger.warning("ignored malformed command on %s: %s", topic, parsed.error)
        now = self._clock()
        with self._lock:
            last = self._malformed_at.get(topic)
            if last is not None and now - last < MALFORMED_EVENT_INTERVAL_S:
                return
            self._malformed_at[topic] = now
        self._emit_safely(self._command_event(target, None, False, "malformed", retained))

    def _on_lock_message(self, message: mqtt.MQTTMessage) -> None:
        parsed = parse_lock_command(message.payload)
        retained = bool(message.retain)
        if parsed.malformed:
            self._malformed("lock", message.topic, parsed, retained)
            return
        with self._cmd_lock:
            verdict = self._gate.check(parsed, retained)
            reason: str = verdict.reason
            accepted = verdict.accepted
            if accepted and parsed.action == UNLOCK:
                if not self._request_unlock(COMMAND_SOURCE):
                    accepted, reason = False, "door_refused"
            elif accepted:
                self._request_lock()
        logger.info(
            "remote %s %s (%s)%s",
            parsed.action,
            "accepted" if accepted else "refused",
            reason,
            " [retained]" if retained else "",
        )
        recorded = self._emit_safely(
            self._command_event("lock", parsed.action, accepted, reason, retained)
        )
        if accepted and parsed.action == UNLOCK and not recorded:
            # An unlock that cannot be recorded must not stand: end the pulse now.
            self._request_lock()

    def _on_switch_message(self, message: mqtt.MQTTMessage) -> None:
        parsed = parse_switch_command(message.payload)
        retained = bool(message.retain)
        if parsed.malformed:
            self._malformed("face_unlock", message.topic, parsed, retained)
            return
        if retained:
            # A stale retained OFF/ON would silently flip the switch at every reconnect.
            logger.warning("ignored retained face unlock command")
            self._emit_safely(
                self._command_event("face_unlock", parsed.action, False, "retained", True)
            )
            return
        enabled = parsed.action == SWITCH_ON
        with self._lock:
            self._face_unlock = enabled
            self._pub(self.topics.switch_state, ON if enabled else OFF, retain=True)
        persisted = self._save_switch(enabled)
        logger.info("face unlock switched %s", "on" if enabled else "off")
        for listener in list(self._switch_listeners):
            try:
                listener(enabled)
            except Exception:
                logger.exception("face unlock listener %r failed", listener)
        self._emit_safely(
            self._command_event(
                "face_unlock", parsed.action, True, "ok" if persisted else "not_persisted", False
            )
        )

    def _on_ha_status(self, message: mqtt.MQTTMessage) -> None:
        if message.payload.strip() == ONLINE.encode():
            logger.info("Home Assistant is online: announcing again")
            self.announce()

    # -- the switch's persisted state -----------------------------------------------------------
    def _load_switch(self) -> bool:
        path = self._switch_path
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return True  # never set: face unlock on, the product's purpose
        except (OSError, ValueError):
            # Someone turned it off or on and we cannot tell which: fail locked.
            logger.error("cannot read %s: face unlock starts OFF until switched again", path)
            return False
        value = data.get("face_unlock") if isinstance(data, dict) else None
        if not isinstance(value, bool):
            logger.error("%s has no boolean 'face_unlock': face unlock starts OFF", path)
            return False
        return value

    def _save_switch(self, enabled: bool) -> bool:
        path = self._switch_path
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
