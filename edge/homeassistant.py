"""Home Assistant over MQTT: device-based discovery, entity states and safe remote commands.

One retained discovery message on ``<prefix>/device/<device_id>/config`` announces every entity
(``dev``, ``o``, ``cmps``; each component with ``p`` and a stable ``unique_id``); availability comes
from the daemon's will (``<base>/<device>/availability``). The bridge announces again whenever Home
Assistant's birth message (``<prefix>/status`` = ``online``) arrives, and after every reconnect.

Topic layout (``<base>/<device>`` = ``mqtt.base_topic``/``mqtt.device_id``), chosen so a broker ACL
can give the device write access to ``state/#`` and read access to ``cmd/#`` only:

- ``state/lock`` LOCKED/UNLOCKED, ``state/face_unlock`` ON/OFF, ``state/face_present`` and
  ``state/camera_ok`` ON/OFF, ``state/liveness_score``, ``state/last_access`` (ISO 8601),
  ``state/liveness_threshold`` (JSON: the threshold in use and where it came from),
  ``state/enrolled`` (people in the store), ``state/enrolment`` (``edge.fleet``'s report, which
  the "Fleet version" sensor reads): retained;
- ``state/fps``, ``state/decision_latency`` (not retained), ``state/event`` (one JSON message per
  event, ``{"event_type": kind, ...}``; events from before a connection wait for it, bounded),
  ``state/snapshot`` (JPEG from ``edge.snapshots``, opt-in, never retained);
- ``cmd/lock`` (see ``edge.commands``) and ``cmd/face_unlock`` (ON/OFF). An empty payload there is
  the clearing of a retained message, not a command.

The face unlock switch is the daemon's (``edge.switch``, kept on disk): the bridge shows it and
changes it, and the door applies it with or without MQTT.

Every handler that runs on paho's thread catches its own errors. The state lock is never held while
calling back into the daemon (``emit``, ``request_unlock``, ``request_lock``): the event bus calls
``on_event`` under the bus lock, and the relay calls ``set_lock_state`` from inside a pulse.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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
from edge.switch import FaceUnlockSwitch

if TYPE_CHECKING:  # edge.calibration pulls in numpy and the liveness model's module
    from edge.calibration import ThresholdFrom

logger = logging.getLogger(__name__)

# Event kinds that fire Home Assistant's event entity: every kind. Relay changes are no event:
# they show on the lock entity (and as relay_on/relay_off in the audit log).
HA_EVENT_TYPES: tuple[str, ...] = tuple(sorted(EVENT_KINDS))
# Decision events (edge.pipeline): each carries "score" (liveness) and "latency_ms".
_DECISION_KINDS = frozenset(
    {"granted", "denied_spoof", "denied_unknown", "denied_disabled", "lockout"}
)

LOCKED = "LOCKED"
UNLOCKED = "UNLOCKED"
ON = "ON"
OFF = "OFF"
COMMAND_SOURCE = "mqtt"

METRICS_INTERVAL_S = 5.0  # frames per second: at most one update per this many seconds
# Events for the event entity that happened while the broker was unreachable (the daemon's start
# among them) are sent once connected: the newest this many. Every event is in the journal and on
# the durable <base>/<device>/event stream whatever happens here.
HA_EVENT_BACKLOG = 100
FPS_EXPIRE_AFTER_S = 30  # fps goes "unavailable" in HA when the frame loop stops reporting
MALFORMED_EVENT_INTERVAL_S = 10.0  # a flood of garbage becomes one event per topic per interval
JPEG_MAGIC = b"\xff\xd8\xff"
# The model is named by this many hex digits of its sha256, as in the log lines: enough to tell
# two models apart in Home Assistant, short enough to read there.
MODEL_SHA256_PREFIX = 12
DISCOVERY_QOS = 1  # HA's subscriptions to the state topics and its commands


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
    liveness_threshold: str
    last_access: str
    fps: str
    decision_latency: str
    event: str
    snapshot: str
    ha_status: str
    discovery: str
    enrolled: str
    # Written by edge.fleet (FleetDoor.report) when fleet sync is on, not by the bridge; here
    # because the "Fleet version" sensor reads it and `unregister` must clear it.
    enrolment: str

    @property
    def retained_states(self) -> tuple[str, ...]:
        """Every retained state topic the daemon may have written (the bridge's and the fleet
        report), whatever the config says now: ``unregister`` clears them all."""
        return (
            self.lock_state,
            self.switch_state,
            self.face_present,
            self.camera_ok,
            self.liveness_score,
            self.liveness_threshold,
            self.last_access,
            self.enrolled,
            self.enrolment,
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
        liveness_threshold=state("liveness_threshold"),
        last_access=state("last_access"),
        fps=state("fps"),
        decision_latency=state("decision_latency"),
        event=state("event"),
        snapshot=state("snapshot"),
        ha_status=f"{config.homeassistant.discovery_prefix}/status",
        discovery=discovery_topic(config),
        enrolled=state("enrolled"),
        enrolment=state("enrolment"),
    )


# Home Assistant renders this for every lock/unlock call: ``value`` is payload_lock/payload_unlock
# and ``code`` what the user typed (None when nothing); to_json quotes and escapes it.
LOCK_COMMAND_TEMPLATE = '{"action": "{{ value }}", "code": {{ code | to_json }}}'


def _uid(config: Config, name: str) -> str:
    return f"livegate_{config.mqtt.device_id}_{name}"


def _left_out(platform: str) -> dict[str, Any]:
    """An optional entity the config leaves out: its platform alone.

    That is how HA's device discovery removes a component it created from an earlier payload; a
    component merely missing from ``cmps`` stays in HA, available and showing its last state (the
    last snapshot's face, say). HA ignores it for an entity it never had.
    """
    return {"p": platform}


def _lock(config: Config, t: Topics) -> dict[str, Any]:
    """The door lock (a code is asked for a remote unlock when homeassistant.remote_unlock)."""
    lock: dict[str, Any] = {
        "p": "lock",
        "unique_id": _uid(config, "lock"),
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
    if config.homeassistant.remote_unlock:
        lock["code_format"] = HA_CODE_FORMAT
    return lock


def _event(config: Config, t: Topics) -> dict[str, Any]:
    """The access events (granted, denied_...)."""
    return {
        "p": "event",
        "unique_id": _uid(config, "event"),
        "name": "Access event",
        "state_topic": t.event,
        "event_types": list(HA_EVENT_TYPES),
        "icon": "mdi:door",
    }


def _face_present(config: Config, t: Topics) -> dict[str, Any]:
    """Someone at the door."""
    return {
        "p": "binary_sensor",
        "unique_id": _uid(config, "face_present"),
        "name": "Face present",
        "state_topic": t.face_present,
        "payload_on": ON,
        "payload_off": OFF,
        "device_class": "occupancy",
    }


def _camera_ok(config: Config, t: Topics) -> dict[str, Any]:
    """The camera delivers frames."""
    return {
        "p": "binary_sensor",
        "unique_id": _uid(config, "camera_ok"),
        "name": "Camera",
        "state_topic": t.camera_ok,
        "payload_on": ON,
        "payload_off": OFF,
        "device_class": "connectivity",
        "entity_category": "diagnostic",
    }


def _liveness_score(config: Config, t: Topics) -> dict[str, Any]:
    """The last face's P(real)."""
    return {
        "p": "sensor",
        "unique_id": _uid(config, "liveness_score"),
        "name": "Last liveness score",
        "state_topic": t.liveness_score,
        "state_class": "measurement",
        "suggested_display_precision": 2,
        "icon": "mdi:face-recognition",
    }


def _liveness_threshold(config: Config, t: Topics) -> dict[str, Any]:
    """The threshold the door holds P(real) against, with its origin and model as attributes.

    One retained JSON message carries all three, so state and attributes can never disagree.
    """
    return {
        "p": "sensor",
        "unique_id": _uid(config, "liveness_threshold"),
        "name": "Liveness threshold",
        "state_topic": t.liveness_threshold,
        "value_template": "{{ value_json.threshold }}",
        # The whole JSON dictionary becomes the attributes (threshold_from, model_sha256_prefix).
        "json_attributes_topic": t.liveness_threshold,
        # A precision makes HA treat the state as a number; no state_class, since a value set
        # once at start is not a measurement worth long-term statistics.
        "suggested_display_precision": 3,
        "entity_category": "diagnostic",
        "icon": "mdi:tune-vertical",
    }


def _last_access(config: Config, t: Topics) -> dict[str, Any]:
    """When the door last opened."""
    return {
        "p": "sensor",
        "unique_id": _uid(config, "last_access"),
        "name": "Last access",
        "state_topic": t.last_access,
        "device_class": "timestamp",
    }


def _fps(config: Config, t: Topics) -> dict[str, Any]:
    """Frames per second (expires when the loop stops)."""
    return {
        "p": "sensor",
        "unique_id": _uid(config, "fps"),
        "name": "Frames per second",
        "state_topic": t.fps,
        "unit_of_measurement": "fps",
        "state_class": "measurement",
        "entity_category": "diagnostic",
        "expire_after": FPS_EXPIRE_AFTER_S,
    }


def _decision_latency(config: Config, t: Topics) -> dict[str, Any]:
    """First sighting to verdict."""
    return {
        "p": "sensor",
        "unique_id": _uid(config, "decision_latency"),
        "name": "Decision latency",
        "state_topic": t.decision_latency,
        "device_class": "duration",
        "unit_of_measurement": "ms",
        "state_class": "measurement",
        "entity_category": "diagnostic",
    }


def _face_unlock(config: Config, t: Topics) -> dict[str, Any]:
    """The face-unlock switch."""
    return {
        "p": "switch",
        "unique_id": _uid(config, "face_unlock"),
        "name": "Face unlock",
        "state_topic": t.switch_state,
        "command_topic": t.switch_command,
        "payload_on": ON,
        "payload_off": OFF,
        "optimistic": False,
        "retain": False,
        "icon": "mdi:face-recognition",
    }


def _enrolled(config: Config, t: Topics) -> dict[str, Any]:
    """How many people are enrolled (policy "enrolled" only). 0 means the door opens for
    nobody: visible in HA, not only in the daemon's log."""
    if config.access.policy != "enrolled":
        return _left_out("sensor")
    return {
        "p": "sensor",
        "unique_id": _uid(config, "enrolled"),
        "name": "People enrolled",
        "state_topic": t.enrolled,
        "state_class": "measurement",
        "icon": "mdi:account-group",
    }


def _snapshot(config: Config, t: Topics) -> dict[str, Any]:
    """The JPEG of the last decision (homeassistant.snapshot only)."""
    if not config.homeassistant.snapshot:
        return _left_out("image")
    return {
        "p": "image",
        "unique_id": _uid(config, "snapshot"),
        "name": "Decision snapshot",
        "image_topic": t.snapshot,
        "content_type": "image/jpeg",
    }


def _fleet_version(config: Config, t: Topics) -> dict[str, Any]:
    """The fleet's enrolment version (fleet.enabled only). Written by edge.fleet (retained JSON:
    names and versions, never embeddings). The people count is the "People enrolled" sensor,
    kept current on every reload."""
    if not config.fleet.enabled:
        return _left_out("sensor")
    return {
        "p": "sensor",
        "unique_id": _uid(config, "fleet_version"),
        "name": "Fleet version",
        "state_topic": t.enrolment,
        "value_template": "{{ value_json.fleet_version }}",
        "entity_category": "diagnostic",
        "icon": "mdi:sync",
    }


# One builder per Home Assistant entity, in the order of the discovery message; for an entity the
# config leaves out, a builder returns its platform alone (_left_out).
ENTITIES: dict[str, Callable[[Config, Topics], dict[str, Any]]] = {
    "lock": _lock,
    "event": _event,
    "face_present": _face_present,
    "camera_ok": _camera_ok,
    "liveness_score": _liveness_score,
    "liveness_threshold": _liveness_threshold,
    "last_access": _last_access,
    "fps": _fps,
    "decision_latency": _decision_latency,
    "face_unlock": _face_unlock,
    "enrolled": _enrolled,
    "snapshot": _snapshot,
    "fleet_version": _fleet_version,
}


def discovery_payload(config: Config) -> dict[str, Any]:
    """The device discovery message (pure: a function of the config only)."""
    t = topics(config)
    device_id = config.mqtt.device_id
    cmps = {name: build(config, t) for name, build in ENTITIES.items()}
    for entity in cmps.values():
        if entity != _left_out(entity["p"]):
            # Per component: HA (2025.4) accepts a device-level "qos" but does not pass it on to
            # the components, which would subscribe (and command) with QoS 0.
            entity["qos"] = DISCOVERY_QOS
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
        # Fleet sync: a door only reads enrolments; only the admin user may write them.
        + (f"topic read {base}/fleet/#\n" if config.fleet.enabled else "")
        + "\n"
        "# Home Assistant: reads every door, and is the only client that may send commands.\n"
        f"user {ha_user}\n"
        f"topic read {base}/#\n"
        f"topic write {base}/+/cmd/#\n"
        f"topic readwrite {prefix}/#\n"
    )


def _iso_utc(ts: str) -> str:
    # Events use "...Z"; "+00:00" is what every ISO 8601 parser accepts for HA's timestamp class.
    return ts[:-1] + "+00:00" if ts.endswith("Z") else ts


def _number(event: Event, key: str) -> float | None:
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
        switch: FaceUnlockSwitch | None = None,
        unlock_possible: Callable[[], bool] = lambda: True,
    ) -> None:
        self._link = link
        self.config = config
        self.topics = topics(config)
        self._emit = emit
        self._request_unlock = request_unlock
        # Whether request_unlock would drive the strike now (no lockout, relay not pulsing).
        self._unlock_possible = unlock_possible
        self._request_lock = request_lock
        self._clock = clock
        ha = config.homeassistant
        # Raises ConfigError now (the daemon refuses to start) rather than at the first command.
        self._gate = CommandGate(
            ha.remote_unlock, load_unlock_code(ha), ha.unlock_rate_per_min, clock
        )
        self._lock = threading.Lock()  # guards the state below; never held while calling out
        self._cmd_lock = threading.Lock()  # one command at a time through the gate
        # The daemon owns the switch (it applies with MQTT down too); the bridge mirrors it.
        self.switch = switch if switch is not None else FaceUnlockSwitch(config.state_dir)
        self.switch.add_listener(self._on_switch_changed)
        self._unlocked = False
        self._face_present = False
        self._camera_ok: bool | None = None
        self._score: float | None = None
        self._last_access: str | None = None
        self._latency_ms: float | None = None
        self._enrolled: int | None = None
        self._threshold: str | None = None  # the state/liveness_threshold JSON
        self._metrics_at: float | None = None
        self._event_backlog: deque[str] = deque(maxlen=HA_EVENT_BACKLOG)
        self._backlog_dropped = 0
        # link.connections when discovery and states last went out: events wait until then, so
        # HA has the entity (and the device is on that connection) before its first event.
        self._announced_on: int | None = None
        self._malformed_at: dict[str, float] = {}
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
        """``listener(enabled)`` after every change of the face unlock switch."""
        self.switch.add_listener(listener)

    @property
    def face_unlock_enabled(self) -> bool:
        return self.switch.enabled

    def announce(self) -> None:
        """Publish the discovery config (if enabled) and every known state."""
        if self._unregistered:
            return
        if self.config.homeassistant.discovery:
            payload = json.dumps(discovery_payload(self.config), separators=(",", ":"))
            self._pub(self.topics.discovery, payload, retain=True)
        with self._lock:
            self._publish_states_locked()
            self._announced_on = self._link.connections
            self._flush_events_locked()

    def _flush_events_locked(self) -> None:
        while self._event_backlog and self._link.connected:
            self._pub(self.topics.event, self._event_backlog.popleft())
        if self._backlog_dropped and not self._event_backlog:
            logger.warning(
                "%d older event(s) were not sent to Home Assistant's event entity while the broker"
                " was unreachable; all are in the journal and on the %s stream",
                self._backlog_dropped,
                device_topic(self.config.mqtt, "event"),
            )
            self._backlog_dropped = 0

    def _publish_states_locked(self) -> None:
        t = self.topics
        self._pub(t.lock_state, UNLOCKED if self._unlocked else LOCKED, retain=True)
        self._pub(t.switch_state, ON if self.switch.enabled else OFF, retain=True)
        self._pub(t.face_present, ON if self._face_present else OFF, retain=True)
        if self._camera_ok is not None:
            self._pub(t.camera_ok, ON if self._camera_ok else OFF, retain=True)
        if self._score is not None:
            self._pub(t.liveness_score, f"{self._score:.3f}", retain=True)
        if self._last_access is not None:
            self._pub(t.last_access, self._last_access, retain=True)
        if self._latency_ms is not None:
            self._pub(t.decision_latency, f"{self._latency_ms:.0f}")
        if self._enrolled is not None:
            self._pub(t.enrolled, str(self._enrolled), retain=True)
        if self._threshold is not None:
            self._pub(t.liveness_threshold, self._threshold, retain=True)

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

    def set_liveness_threshold(
        self, threshold: float, threshold_from: ThresholdFrom, model_sha256: str
    ) -> None:
        """The liveness threshold in use, where it came from and for which model (kept; published
        now and on each connect). The daemon sets it once: the threshold never changes while it
        runs."""
        payload = {
            "threshold": threshold,
            "threshold_from": threshold_from,
            "model_sha256_prefix": model_sha256[:MODEL_SHA256_PREFIX],
        }
        with self._lock:
            self._threshold = json.dumps(payload, separators=(",", ":"), allow_nan=False)
            self._pub(self.topics.liveness_threshold, self._threshold, retain=True)

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

    def set_fps(self, fps: float) -> None:
        now = self._clock()
        with self._lock:
            if self._metrics_at is not None and now - self._metrics_at < METRICS_INTERVAL_S:
                return
            self._metrics_at = now
            self._pub(self.topics.fps, f"{fps:.1f}")

    def on_event(self, event: Event) -> None:
        """EventBus listener: fire the event entity and update the sensors it implies."""
        payload = {"event_type": event.kind, **event.to_dict()}
        with self._lock:
            if event.kind in HA_EVENT_TYPES:
                text = json.dumps(payload, separators=(",", ":"), allow_nan=False)
                if self._link.connected and self._announced_on == self._link.connections:
                    self._flush_events_locked()
                    self._pub(self.topics.event, text)
                else:
                    if len(self._event_backlog) == self._event_backlog.maxlen:
                        self._backlog_dropped += 1
                    self._event_backlog.append(text)
            if event.kind in _DECISION_KINDS:
                score = _number(event, "score")
                if score is not None:
                    self._score = score
                    self._pub(self.topics.liveness_score, f"{score:.3f}", retain=True)
                latency = _number(event, "latency_ms")
                if latency is not None:
                    # At once, not at the next metrics tick: a decision is rare and this is its
                    # own measurement.
                    self._latency_ms = latency
                    self._pub(self.topics.decision_latency, f"{latency:.0f}")
            if event.kind == "granted":
                self._last_access = _iso_utc(event.ts)
                self._pub(self.topics.last_access, self._last_access, retain=True)
        if event.kind in ("camera_lost", "camera_ok"):
            self.set_camera_ok(event.kind == "camera_ok")

    def publish_snapshot(self, jpeg: bytes) -> None:
        """Show a decision's JPEG on the image entity (only with ``homeassistant.snapshot``).

        Storing it is ``edge.snapshots``' job; this only publishes, never retained, so no face is
        kept on the broker.
        """
        if not self.config.homeassistant.snapshot:
            return
        if not jpeg.startswith(JPEG_MAGIC):
            logger.warning("snapshot ignored: %d bytes that are not a JPEG", len(jpeg))
            return
        self._pub(self.topics.snapshot, jpeg, qos=0)

    def unregister(self, timeout: float = 5.0) -> bool:
        """Remove the device from HA (empty retained discovery) and clear the retained states,
        the fleet's enrolment report among them (whether or not fleet sync is on now: it may have
        been when the report was written).

        Waits up to ``timeout`` seconds for the broker to acknowledge; True when it acknowledged
        every message. Announcing stops for good.
        """
        self._unregistered = True
        infos = [self._link.publish(self.topics.discovery, b"", qos=1, retain=True)]
        # Availability too: run from `python -m edge unregister` (a link without availability,
        # daemon stopped), nothing of the device is left on the broker.
        for topic in (*self.topics.retained_states, self.topics.availability):
            infos.append(self._link.publish(topic, b"", qos=1, retain=True))
        deadline = time.monotonic() + timeout
        for info in infos:
            try:
                info.wait_for_publish(timeout=max(0.0, deadline - time.monotonic()))
                # wait_for_publish returns quietly at its timeout: only is_published tells.
                acknowledged = info.is_published()
            except (RuntimeError, ValueError):
                acknowledged = False
            if not acknowledged:
                logger.warning("unregister: the broker did not acknowledge every message")
                return False
        return True

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

    @staticmethod
    def _clears_retained(message: mqtt.MQTTMessage) -> bool:
        # An empty payload is how a retained message is deleted (mosquitto_pub -r -n): the broker
        # forwards it to subscribers. It is housekeeping, never a command, so not "malformed".
        if message.payload:
            return False
        logger.debug("empty payload on %s (a retained command was cleared)", message.topic)
        return True

    def _on_lock_message(self, message: mqtt.MQTTMessage) -> None:
        if self._clears_retained(message):
            return
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
                self._remote_unlock(reason, retained)
                return
            if accepted:
                self._request_lock()
        self._record_lock_command(parsed.action, accepted, reason, retained)

    def _record_lock_command(
        self, action: str | None, accepted: bool, reason: str, retained: bool
    ) -> bool:
        logger.info(
            "remote %s %s (%s)%s",
            action,
            "accepted" if accepted else "refused",
            reason,
            " [retained]" if retained else "",
        )
        return self._emit_safely(self._command_event("lock", action, accepted, reason, retained))

    def _remote_unlock(self, reason: str, retained: bool) -> None:
        """An UNLOCK the gate accepted. Its event is journaled before the relay moves, as a face
        grant is, so a crash at the moment the strike opens keeps it; an unlock whose event
        cannot be recorded is not done."""
        if not self._unlock_possible():
            self._record_lock_command(UNLOCK, False, "door_refused", retained)
            return
        if not self._record_lock_command(UNLOCK, True, reason, retained):
            logger.error("remote unlock not done: its event could not be recorded")
            return
        if not self._request_unlock(COMMAND_SOURCE):
            # Refused between the check and the pulse (a face grant or a lockout came first).
            self._record_lock_command(UNLOCK, False, "door_refused", retained)

    def _on_switch_message(self, message: mqtt.MQTTMessage) -> None:
        if self._clears_retained(message):
            return
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
        persisted = self.switch.set(parsed.action == SWITCH_ON)
        self._emit_safely(
            self._command_event(
                "face_unlock", parsed.action, True, "ok" if persisted else "not_persisted", False
            )
        )

    def _on_switch_changed(self, enabled: bool) -> None:
        with self._lock:
            self._pub(self.topics.switch_state, ON if enabled else OFF, retain=True)

    def _on_ha_status(self, message: mqtt.MQTTMessage) -> None:
        if message.payload.strip() == ONLINE.encode():
            logger.info("Home Assistant is online: announcing again")
            self.announce()
