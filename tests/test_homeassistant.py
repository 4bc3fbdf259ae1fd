"""The Home Assistant bridge against a real mosquitto on 127.0.0.1 and gpiozero's MockFactory relay.

Home Assistant itself is played by a plain paho client (``Probe``): it reads what the device
publishes and sends commands the way HA's lock and switch entities do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from gpiozero.pins.mock import MockFactory
from paho.mqtt.enums import CallbackAPIVersion

from edge.calibration import ThresholdFrom
from edge.config import Config
from edge.events import Event, EventBus, new_event
from edge.homeassistant import (
    HA_EVENT_TYPES,
    HomeAssistantBridge,
    discovery_payload,
    discovery_topic,
    mosquitto_acl,
    topics,
)
from edge.mqtt import MqttLink
from edge.relay import DoorRelay
from tests.fakes import FakeClock
from tests.mosquitto import Mosquitto

CODE = "482913"
WAIT = 5.0  # seconds to wait for a message that must come (never reached when things work)
DOCS = Path(__file__).resolve().parent.parent / "docs" / "home-assistant.md"


@dataclass
class Msg:
    topic: str
    payload: bytes
    retain: bool


class Probe:
    """A paho client standing in for Home Assistant (or an intruder): records what it receives."""

    def __init__(
        self,
        port: int,
        subscriptions: tuple[str, ...] = (),
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.port, self._credentials = port, (username, password)
        self.messages: queue.Queue[Msg] = queue.Queue()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_message = lambda c, u, m: self.messages.put(
            Msg(m.topic, bytes(m.payload), bool(m.retain))
        )
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        for topic in subscriptions:
            self.subscribe(topic)

    def subscribe(self, topic: str) -> None:
        self._subscribed.clear()
        self.client.subscribe(topic, 1)
        assert self._subscribed.wait(WAIT), f"no SUBACK for {topic}"

    def publish(self, topic: str, payload: str | bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(WAIT)

    def next(self, topic: str, where: Callable[[Msg], bool] = lambda m: True) -> Msg:
        """The next message on ``topic`` that satisfies ``where`` (others on it are skipped)."""
        while True:
            try:
                msg = self.messages.get(timeout=WAIT)
            except queue.Empty:
                raise AssertionError(f"nothing (more) on {topic}") from None
            if msg.topic == topic and where(msg):
                return msg

    def retained_now(self, topic: str) -> list[Msg]:
        """What the broker holds retained on ``topic``, read by a fresh client up to a marker.

        mosquitto sends retained messages while handling SUBSCRIBE, so they reach the fresh client
        before the marker it publishes afterwards.
        """
        fresh = Probe(self.port, (topic, "probe/marker"), *self._credentials)
        try:
            fresh.publish("probe/marker", b"end")
            found = []
            while (msg := fresh.messages.get(timeout=WAIT)).topic != "probe/marker":
                if msg.retain:
                    found.append(msg)
            return found
        finally:
            fresh.close()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def make_config(tmp_path: Path, port: int, **ha: Any) -> Config:
    code_file = tmp_path / "unlock_code"
    code_file.write_text(CODE + "\n")
    code_file.chmod(0o600)
    ha.setdefault("remote_unlock", True)
    if ha["remote_unlock"]:
        ha.setdefault("unlock_code_file", str(code_file))
    return Config.model_validate(
        {
            "state_dir": str(tmp_path / "var"),
            "relay": {"pin": 17, "pulse_s": 10},
            "mqtt": {"port": port, "device_id": "frontdoor"},
            "homeassistant": ha,
        }
    )


class Door:
    """The daemon's side as the lead wires it: link, relay, event bus and bridge."""

    def __init__(
        self,
        config: Config,
        factory: MockFactory,
        clock: FakeClock,
        start: bool = True,
        watcher_auth: tuple[str | None, str | None] = (None, None),
        unlock_possible: Callable[[], bool] = lambda: True,
    ) -> None:
        self.config = config
        self.watcher_auth = watcher_auth
        self.events: list[Event] = []
        self.command_events: queue.Queue[Event] = queue.Queue()
        self.relay = DoorRelay(config.relay, pin_factory=factory)
        self.pin = factory.pin(config.relay.pin)
        self.link = MqttLink(config.mqtt, client_id=f"door-{id(self)}")
        self.bus = EventBus(None, [self._record])
        self.bridge = HomeAssistantBridge(
            self.link,
            config,
            emit=self.bus.emit,
            request_unlock=self._unlock,
            request_lock=self.relay.lock,
            clock=clock,
            unlock_possible=unlock_possible,
        )
        self.bus.add_listener(self.bridge.on_event)
        self.relay.add_listener(self.bridge.set_lock_state)
        if start:
            self.start()

    def _unlock(self, source: str) -> bool:
        # What was recorded by the time the strike is asked to open.
        self.recorded_before_unlock = [e.to_dict() for e in self.events]
        return self.relay.pulse()

    def _record(self, event: Event) -> None:
        self.events.append(event)
        if event.kind == "command":
            self.command_events.put(event)

    def start(self) -> None:
        """Start and return once the bridge's subscriptions are active.

        The link subscribes before it runs the connect handlers, so once the broker forwards the
        announcement live, it has handled the subscriptions too (one connection, in order).
        """
        topic = discovery_topic(self.config)
        watcher = Probe(self.config.mqtt.port, (topic,), *self.watcher_auth)
        try:
            self.bridge.start()
            self.link.start()
            assert self.link.wait_connected(WAIT)
            watcher.next(topic, where=lambda m: not m.retain)
        finally:
            watcher.close()

    def next_command(self) -> dict[str, Any]:
        return self.command_events.get(timeout=WAIT).to_dict()

    def pulses_after_command(self) -> int:
        """The relay's pulse count once the last accepted unlock had its turn: its event is
        recorded before the relay moves, so the pulse may follow the event by a moment."""
        deadline = time.monotonic() + WAIT
        while self.relay.pulses == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.relay.pulses

    def close(self) -> None:
        self.link.stop()
        self.relay.close()


@pytest.fixture
def door(
    tmp_path: Path, mosquitto: Mosquitto, mock_factory: MockFactory, clock: FakeClock
) -> Iterator[Door]:
    d = Door(make_config(tmp_path, mosquitto.port), mock_factory, clock)
    yield d
    d.close()


@pytest.fixture
def ha(mosquitto: Mosquitto) -> Iterator[Probe]:
    probe = Probe(mosquitto.port, ("homeassistant/#", "livegate/#"))
    yield probe
    probe.close()


def unlock(code: str | None = CODE) -> str:
    """What HA's command_template renders for an unlock."""
    return json.dumps({"action": "UNLOCK", "code": code})


# -- discovery (pure) ----------------------------------------------------------------------------
# Required options per platform, from HA's MQTT docs (lock/event/image/switch/sensor/binary_sensor
# pages) and the device discovery section: every component needs "p" and a "unique_id".
REQUIRED = {
    "lock": {"command_topic"},
    "event": {"state_topic", "event_types"},
    "switch": {"command_topic"},
    "sensor": {"state_topic"},
    "binary_sensor": {"state_topic"},
    "image": {"image_topic"},
}


def test_discovery_payload_has_what_home_assistant_requires(tmp_path: Path) -> None:
    config = make_config(tmp_path, 1883, snapshot=True)
    payload = discovery_payload(config)
    assert payload["dev"]["ids"] and payload["dev"]["name"]
    assert payload["o"]["name"]
    avail = payload["availability"]
    assert avail == [
        {
            "topic": "livegate/frontdoor/availability",
            "payload_available": "online",
            "payload_not_available": "offline",
        }
    ]
    # fleet_version is off: announced for removal, as its platform alone (test below).
    assert payload["cmps"]["fleet_version"] == {"p": "sensor"}
    cmps = {name: c for name, c in payload["cmps"].items() if name != "fleet_version"}
    platforms = sorted(c["p"] for c in cmps.values())
    assert platforms == sorted(
        [
            "lock",
            "event",
            "binary_sensor",
            "binary_sensor",
            "sensor",
            "sensor",
            "sensor",
            "sensor",
            "sensor",
            "sensor",
            "switch",
            "image",
        ]
    )
    for key, component in cmps.items():
        missing = REQUIRED[component["p"]] - set(component)
        assert not missing, f"{key} lacks {missing}"
        assert component["unique_id"].startswith("livegate_frontdoor_")
    unique_ids = [c["unique_id"] for c in cmps.values()]
    assert len(set(unique_ids)) == len(unique_ids)
    assert cmps["event"]["event_types"] == list(HA_EVENT_TYPES)
    assert {"granted", "denied_spoof", "lockout", "camera_lost", "command"} <= set(HA_EVENT_TYPES)
    assert cmps["last_access"]["device_class"] == "timestamp"
    assert cmps["camera_ok"]["entity_category"] == "diagnostic"
    assert cmps["fps"]["entity_category"] == cmps["decision_latency"]["entity_category"]
    threshold = cmps["liveness_threshold"]
    assert threshold["entity_category"] == "diagnostic"
    # State and attributes (origin, model) from one retained JSON message.
    assert threshold["state_topic"] == "livegate/frontdoor/state/liveness_threshold"
    assert threshold["json_attributes_topic"] == threshold["state_topic"]
    assert threshold["value_template"] == "{{ value_json.threshold }}"
    assert cmps["lock"]["code_format"]
    json.dumps(payload)  # serialisable as is


def test_discovery_depends_on_config_only_where_it_should(tmp_path: Path) -> None:
    plain = discovery_payload(make_config(tmp_path, 1883, remote_unlock=False))
    assert "code_format" not in plain["cmps"]["lock"]
    assert plain["cmps"]["snapshot"] == {"p": "image"}
    other_port = discovery_payload(make_config(tmp_path, 18830, remote_unlock=False))
    assert other_port == plain  # ids are stable: nothing but topics and options go in
    custom = make_config(tmp_path, 1883, discovery_prefix="ha-test")
    assert discovery_topic(custom) == "ha-test/device/frontdoor/config"
    assert topics(custom).ha_status == "ha-test/status"


def test_entities_the_config_leaves_out_are_announced_for_removal(tmp_path: Path) -> None:
    """Home Assistant (checked with 2025.4) keeps a component that a later device discovery
    message omits: turning snapshots off left the image entity showing the last face. Only a
    component with nothing but its platform removes it."""
    config = make_config(tmp_path, 1883, snapshot=False)
    config = config.model_copy(
        update={"access": config.access.model_copy(update={"policy": "any_live"})}
    )
    assert not config.fleet.enabled
    cmps = discovery_payload(config)["cmps"]
    assert cmps["snapshot"] == {"p": "image"}
    assert cmps["enrolled"] == {"p": "sensor"}
    assert cmps["fleet_version"] == {"p": "sensor"}
    on = discovery_payload(make_config(tmp_path, 1883, snapshot=True))["cmps"]
    assert on["snapshot"]["p"] == "image" and on["snapshot"]["image_topic"]
    assert on["enrolled"]["state_topic"]


def test_every_component_carries_its_own_qos(tmp_path: Path) -> None:
    """HA (checked with 2025.4) accepts "qos" at the device level of a device discovery message
    but does not pass it on: the entities subscribed with QoS 0. Each component says it itself."""
    payload = discovery_payload(make_config(tmp_path, 1883, snapshot=True))
    assert "qos" not in payload
    cmps = payload["cmps"]
    assert cmps["fleet_version"] == {"p": "sensor"}  # a removal is the platform alone
    assert {name: c["qos"] for name, c in cmps.items() if name != "fleet_version"} == {
        name: 1 for name in cmps if name != "fleet_version"
    }


# -- on a real broker ----------------------------------------------------------------------------
def test_announces_retained_discovery_and_states_on_connect(door: Door, ha: Probe) -> None:
    ha.next(door.bridge.topics.face_present)  # the last state of the announcement has landed
    found = ha.retained_now(discovery_topic(door.config))
    assert len(found) == 1
    assert json.loads(found[0].payload) == discovery_payload(door.config)
    t = door.bridge.topics
    assert [m.payload for m in ha.retained_now(t.lock_state)] == [b"LOCKED"]
    assert [m.payload for m in ha.retained_now(t.switch_state)] == [b"ON"]


def test_announces_again_when_home_assistant_comes_online(door: Door, ha: Probe) -> None:
    topic = discovery_topic(door.config)
    ha.next(topic)  # the announcement on connect
    ha.publish("homeassistant/status", "online")  # HA's birth message after a restart
    again = ha.next(topic)
    assert json.loads(again.payload) == discovery_payload(door.config)
    assert ha.next(door.bridge.topics.lock_state).payload == b"LOCKED"


@pytest.mark.parametrize(
    ("threshold", "origin"), [(0.4588, "model"), (0.8123, "camera_calibration")]
)
def test_liveness_threshold_is_retained_with_its_origin_and_announced_again(
    door: Door, ha: Probe, threshold: float, origin: ThresholdFrom
) -> None:
    t = door.bridge.topics
    sha256 = hashlib.sha256(b"a liveness model").hexdigest()
    door.bridge.set_liveness_threshold(threshold, origin, sha256)
    expected = {
        "threshold": threshold,
        "threshold_from": origin,
        "model_sha256_prefix": sha256[:12],
    }
    assert json.loads(ha.next(t.liveness_threshold).payload) == expected
    assert [json.loads(m.payload) for m in ha.retained_now(t.liveness_threshold)] == [expected]
    ha.publish("homeassistant/status", "online")  # an HA restart: the state comes again
    assert json.loads(ha.next(t.liveness_threshold).payload) == expected


def test_lock_state_follows_the_relay(door: Door, ha: Probe) -> None:
    t = door.bridge.topics
    assert ha.next(t.lock_state).payload == b"LOCKED"
    assert door.relay.pulse()
    assert door.pin.state  # MockFactory pin high: strike open
    assert ha.next(t.lock_state).payload == b"UNLOCKED"
    door.relay.lock()
    assert not door.pin.state
    assert ha.next(t.lock_state).payload == b"LOCKED"
    assert [m.payload for m in ha.retained_now(t.lock_state)] == [b"LOCKED"]


def test_remote_unlock_with_the_code_pulses_and_lock_ends_it(door: Door, ha: Probe) -> None:
    t = door.bridge.topics
    ha.next(t.lock_state)
    ha.publish(t.lock_command, unlock())
    event = door.next_command()
    assert event["action"] == "UNLOCK" and event["accepted"] and event["source"] == "mqtt"
    assert ha.next(t.lock_state).payload == b"UNLOCKED"
    assert door.relay.pulses == 1 and door.pin.state
    # Journaled before the relay moved (a kill at the pulse keeps it), like a face grant.
    assert door.recorded_before_unlock[-1] == event
    ha.publish(t.lock_command, json.dumps({"action": "LOCK", "code": None}))
    assert door.next_command()["action"] == "LOCK"
    assert not door.pin.state
    assert ha.next(t.lock_state).payload == b"LOCKED"


def test_unlock_the_door_cannot_do_is_refused_once_and_never_pulses(
    tmp_path: Path, mosquitto: Mosquitto, mock_factory: MockFactory, clock: FakeClock, ha: Probe
) -> None:
    door = Door(make_config(tmp_path, mosquitto.port), mock_factory, clock,
                unlock_possible=lambda: False)  # fmt: skip
    try:
        ha.publish(door.bridge.topics.lock_command, unlock())
        event = door.next_command()
        assert event["action"] == "UNLOCK" and not event["accepted"]
        assert event["reason"] == "door_refused"
        assert door.relay.pulses == 0 and not door.pin.state
        assert [e.kind for e in door.events].count("command") == 1
    finally:
        door.close()


def test_unlock_refused_after_it_was_recorded_is_reported_as_refused(door: Door, ha: Probe) -> None:
    # The door looked able (no check wired here) but the strike was already open: the accepted
    # event is followed by a refusal, and the relay still pulsed once.
    t = door.bridge.topics
    ha.publish(t.lock_command, unlock())
    assert door.next_command()["accepted"] and door.pulses_after_command() == 1
    ha.publish(t.lock_command, unlock())
    second = [door.next_command(), door.next_command()]
    assert [(e["accepted"], e["reason"]) for e in second] == [(True, "ok"), (False, "door_refused")]
    assert door.relay.pulses == 1


def test_retained_unlock_is_refused_and_reported(
    tmp_path: Path, mosquitto: Mosquitto, mock_factory: MockFactory, clock: FakeClock, ha: Probe
) -> None:
    config = make_config(tmp_path, mosquitto.port)
    # Left on the broker by a misconfigured automation: it must not open the door at connect.
    ha.publish(topics(config).lock_command, unlock(), retain=True)
    d = Door(config, mock_factory, clock)
    try:
        event = d.next_command()
        assert (event["action"], event["accepted"]) == ("UNLOCK", False)
        assert event["reason"] == "retained"
        assert event["retained"] is True
        assert d.relay.pulses == 0 and not d.pin.state
        # Reported to HA as well, through the event entity.
        fired = json.loads(ha.next(d.bridge.topics.event).payload)
        assert fired["event_type"] == "command" and fired["reason"] == "retained"
    finally:
        d.close()


def test_wrong_or_missing_code_is_refused_and_reported_without_the_code(
    door: Door, ha: Probe, caplog: pytest.LogCaptureFixture
) -> None:
    t = door.bridge.topics
    caplog.set_level(logging.DEBUG)
    ha.publish(t.lock_command, unlock("999999"))
    ha.publish(t.lock_command, unlock(None))
    first, second = door.next_command(), door.next_command()
    assert (first["accepted"], first["reason"]) == (False, "bad_code")
    assert (second["accepted"], second["reason"]) == (False, "code_missing")
    assert door.relay.pulses == 0 and not door.pin.state
    fired = json.loads(ha.next(t.event).payload)
    assert fired["event_type"] == "command" and fired["reason"] == "bad_code"
    everything = caplog.text + "".join(e.to_json() for e in door.events)
    assert "999999" not in everything and CODE not in everything


def test_remote_unlock_disabled_by_default(
    tmp_path: Path, mosquitto: Mosquitto, mock_factory: MockFactory, clock: FakeClock, ha: Probe
) -> None:
    d = Door(make_config(tmp_path, mosquitto.port, remote_unlock=False), mock_factory, clock)
    try:
        ha.publish(d.bridge.topics.lock_command, unlock())
        event = d.next_command()
        assert (event["accepted"], event["reason"]) == (False, "disabled")
        assert d.relay.pulses == 0
    finally:
        d.close()


def test_remote_unlock_is_rate_limited(door: Door, ha: Probe, clock: FakeClock) -> None:
    t = door.bridge.topics
    for _ in range(3):  # unlock_rate_per_min defaults to 3
        ha.publish(t.lock_command, unlock("999999"))
    ha.publish(t.lock_command, unlock())
    reasons = [door.next_command()["reason"] for _ in range(4)]
    assert reasons == ["bad_code", "bad_code", "bad_code", "rate_limited"]
    assert door.relay.pulses == 0
    clock.advance(60)
    ha.publish(t.lock_command, unlock())
    assert door.next_command()["accepted"]
    assert door.pulses_after_command() == 1


def test_malformed_commands_change_nothing(door: Door, ha: Probe) -> None:
    t = door.bridge.topics
    for payload in (
        b"\xff\xfe\x00",
        b'{"action": "UNLOCK", "code": ',
        b'{"action": "OPEN"}',
        b'{"action": "UNLOCK", "code": 482913}',
        json.dumps({"action": "UNLOCK", "code": CODE, "pad": "x" * 400}).encode(),
        b"x" * 10_000,  # above mqtt.max_payload_bytes: dropped by the link itself
    ):
        ha.publish(t.lock_command, payload)
    for payload in (b"maybe", b"\xff", b"on"):
        ha.publish(t.switch_command, payload)
    # A well-formed command last: once its event is in, everything before it was handled.
    ha.publish(t.lock_command, unlock("999999"))
    seen = []
    while (event := door.next_command())["reason"] != "bad_code":
        seen.append(event)
    # One event per topic however many bad payloads came in (the rest are only logged).
    assert sorted((e["target"], e["reason"], e["accepted"]) for e in seen) == [
        ("face_unlock", "malformed", False),
        ("lock", "malformed", False),
    ]
    assert all(e["action"] is None for e in seen)
    assert door.relay.pulses == 0 and not door.pin.state
    assert door.bridge.face_unlock_enabled
    assert not (door.config.state_dir / "ha_switch.json").exists()


def test_switch_disables_face_unlock_and_survives_a_restart(
    door: Door, ha: Probe, mock_factory: MockFactory, clock: FakeClock
) -> None:
    t = door.bridge.topics
    changes: list[bool] = []
    door.bridge.add_switch_listener(changes.append)
    assert door.bridge.face_unlock_enabled  # default ON
    assert ha.next(t.switch_state).payload == b"ON"
    ha.publish(t.switch_command, "OFF")
    event = door.next_command()
    assert (event["target"], event["action"], event["accepted"]) == ("face_unlock", "OFF", True)
    assert not door.bridge.face_unlock_enabled
    assert changes == [False]
    assert ha.next(t.switch_state).payload == b"OFF"
    door.close()

    restarted = Door(door.config, mock_factory, clock, start=False)
    try:
        assert not restarted.bridge.face_unlock_enabled
        restarted.start()
        assert [m.payload for m in ha.retained_now(t.switch_state)] == [b"OFF"]
        ha.publish(t.switch_command, "ON")
        assert restarted.next_command()["action"] == "ON"
        assert restarted.bridge.face_unlock_enabled
    finally:
        restarted.close()


def test_retained_switch_command_is_ignored(
    tmp_path: Path, mosquitto: Mosquitto, mock_factory: MockFactory, clock: FakeClock, ha: Probe
) -> None:
    config = make_config(tmp_path, mosquitto.port)
    ha.publish(topics(config).switch_command, "OFF", retain=True)
    d = Door(config, mock_factory, clock)
    try:
        event = d.next_command()
        assert (event["target"], event["accepted"], event["reason"]) == (
            "face_unlock",
            False,
            "retained",
        )
        assert d.bridge.face_unlock_enabled
    finally:
        d.close()


def test_corrupt_switch_file_starts_with_face_unlock_off(
    tmp_path: Path, mosquitto: Mosquitto, mock_factory: MockFactory, clock: FakeClock
) -> None:
    config = make_config(tmp_path, mosquitto.port)
    config.state_dir.mkdir(parents=True)
    (config.state_dir / "ha_switch.json").write_text('{"face_unlock": ')
    d = Door(config, mock_factory, clock, start=False)
    try:
        assert not d.bridge.face_unlock_enabled
    finally:
        d.relay.close()


def test_events_fire_the_event_entity_and_update_sensors(door: Door, ha: Probe) -> None:
    t = door.bridge.topics
    # The keys the pipeline's decision events carry (edge.pipeline.Pipeline._act).
    granted = new_event("granted", score=0.93, latency_ms=212.4, person="ada", box=[1, 2, 3, 4])
    door.bus.emit(granted)
    fired = json.loads(ha.next(t.event).payload)
    assert fired["event_type"] == "granted" and fired["id"] == granted.id
    assert fired["person"] == "ada" and fired["score"] == 0.93
    assert float(ha.next(t.liveness_score).payload) == pytest.approx(0.93)
    assert ha.next(t.last_access).payload.decode() == granted.ts.replace("Z", "+00:00")
    door.bus.emit(new_event("denied_spoof", score=0.12, latency_ms=480.0))
    assert json.loads(ha.next(t.event).payload)["event_type"] == "denied_spoof"
    assert float(ha.next(t.liveness_score).payload) == pytest.approx(0.12)
    door.bus.emit(new_event("denied_disabled", score=0.88, latency_ms=300.0))
    assert json.loads(ha.next(t.event).payload)["event_type"] == "denied_disabled"
    assert float(ha.next(t.liveness_score).payload) == pytest.approx(0.88)
    door.bus.emit(new_event("camera_lost", source="0"))
    assert ha.next(t.camera_ok).payload == b"OFF"
    door.bus.emit(new_event("camera_ok", source="0"))
    assert ha.next(t.camera_ok).payload == b"ON"
    door.bridge.set_face_present(True)
    assert ha.next(t.face_present).payload == b"ON"
    door.bridge.set_face_present(False)
    assert ha.next(t.face_present).payload == b"OFF"


def test_fps_is_published_at_most_every_few_seconds(
    door: Door, ha: Probe, clock: FakeClock
) -> None:
    t = door.bridge.topics
    door.bridge.set_fps(12.0)
    door.bridge.set_fps(20.0)  # too soon: dropped
    clock.advance(5)
    door.bridge.set_fps(14.5)
    assert ha.next(t.fps).payload == b"12.0"
    second = ha.next(t.fps)
    assert second.payload == b"14.5" and not second.retain


def test_decision_latency_is_published_with_each_decision(
    door: Door, ha: Probe, clock: FakeClock
) -> None:
    t = door.bridge.topics
    door.bridge.set_fps(12.0)  # a metrics tick just went out: the latency must not wait for one
    door.bus.emit(new_event("granted", score=0.9, latency_ms=254.4))
    assert ha.next(t.decision_latency).payload == b"254"
    door.bus.emit(new_event("denied_unknown", score=0.8, latency_ms=731.0))
    assert ha.next(t.decision_latency).payload == b"731"
    ha.publish("homeassistant/status", "online")  # HA restarted: it gets the last value again
    assert ha.next(t.decision_latency).payload == b"731"


def test_events_from_before_the_connection_reach_home_assistant_after_discovery(
    tmp_path: Path, mosquitto: Mosquitto, mock_factory: MockFactory, clock: FakeClock, ha: Probe
) -> None:
    config = make_config(tmp_path, mosquitto.port)
    d = Door(config, mock_factory, clock, start=False)
    try:
        # The daemon emits "started" while its MQTT connection is still being made.
        started = new_event("started", source="0")
        d.bus.emit(started)
        d.start()
        t = d.bridge.topics
        order = []
        while len(order) < 2:
            msg = ha.messages.get(timeout=WAIT)
            if msg.topic in (discovery_topic(config), t.event):
                order.append(msg)
        assert order[0].topic == discovery_topic(config), "the entity exists before its event"
        fired = json.loads(order[1].payload)
        assert (fired["event_type"], fired["id"]) == ("started", started.id)
        # Once connected, events go straight out (no second copy of the first one).
        later = new_event("camera_lost", source="0")
        d.bus.emit(later)
        assert json.loads(ha.next(t.event).payload)["id"] == later.id
    finally:
        d.close()


def test_event_backlog_for_home_assistant_is_bounded(
    tmp_path: Path, mosquitto: Mosquitto, mock_factory: MockFactory, clock: FakeClock, ha: Probe
) -> None:
    from edge.homeassistant import HA_EVENT_BACKLOG

    config = make_config(tmp_path, mosquitto.port)
    d = Door(config, mock_factory, clock, start=False)
    try:
        ids = []
        for _ in range(HA_EVENT_BACKLOG + 5):  # a long broker outage
            event = new_event("command", target="lock", action=None, accepted=False)
            ids.append(event.id)
            d.bus.emit(event)
        d.start()
        got = [json.loads(ha.next(d.bridge.topics.event).payload)["id"] for _ in ids[5:]]
        assert got == ids[5:], "the newest events, in order"
    finally:
        d.close()


def test_snapshot_is_published_never_retained_and_only_when_on(
    tmp_path: Path, mosquitto: Mosquitto, mock_factory: MockFactory, clock: FakeClock, ha: Probe
) -> None:
    jpeg = b"\xff\xd8\xff\xe0" + bytes(100)
    (tmp_path / "off").mkdir()
    off = Door(make_config(tmp_path / "off", mosquitto.port), mock_factory, clock)
    try:
        # snapshot is off by default: nothing goes out (else it would be the first one seen below)
        off.bridge.publish_snapshot(b"\xff\xd8\xff\xe0" + b"off" * 30)
    finally:
        off.close()
    config = make_config(tmp_path, mosquitto.port, snapshot=True)
    d = Door(config, mock_factory, clock)
    try:
        d.bridge.publish_snapshot(b"not a jpeg")
        d.bridge.publish_snapshot(jpeg)
        first = ha.next(d.bridge.topics.snapshot)
        assert first.payload == jpeg and not first.retain
        assert ha.retained_now(d.bridge.topics.snapshot) == []  # faces are never retained
        assert not (config.state_dir / "snapshots").exists()  # storing is edge.snapshots' job
    finally:
        d.close()


def test_unregister_clears_the_retained_config_and_states(door: Door, ha: Probe) -> None:
    topic = discovery_topic(door.config)
    assert len(ha.retained_now(topic)) == 1
    door.bridge.unregister()
    assert ha.retained_now(topic) == []
    assert ha.retained_now(door.bridge.topics.lock_state) == []
    ha.publish("homeassistant/status", "online")  # no come-back after an unregister
    ha.publish(door.bridge.topics.lock_command, unlock("999999"))
    door.next_command()  # the bridge has handled HA's status by now (same connection, in order)
    assert ha.retained_now(topic) == []


def test_unregister_the_broker_does_not_acknowledge_says_so(
    door: Door, mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    assert mosquitto.process is not None
    os.kill(mosquitto.process.pid, signal.SIGSTOP)  # takes TCP data, acknowledges nothing
    try:
        with caplog.at_level(logging.WARNING, logger="edge.homeassistant"):
            assert door.bridge.unregister(timeout=1.0) is False
    finally:
        os.kill(mosquitto.process.pid, signal.SIGCONT)
    assert "did not acknowledge" in caplog.text


def test_clearing_a_retained_command_is_not_a_command(door: Door, ha: Probe) -> None:
    t = door.bridge.topics
    # What the docs advise for a command retained by mistake: mosquitto_pub -r -n -t <topic>.
    ha.publish(t.lock_command, b"", retain=True)
    ha.publish(t.switch_command, b"", retain=True)
    ha.publish(t.lock_command, unlock("999999"))  # handled after the two above (same connection)
    event = door.next_command()
    assert (event["target"], event["reason"]) == ("lock", "bad_code"), "no malformed event before"
    assert door.command_events.empty()
    assert door.bridge.face_unlock_enabled and door.relay.pulses == 0


def test_unregister_command_leaves_nothing_of_the_device_on_the_broker(
    tmp_path: Path, mosquitto: Mosquitto, mock_factory: MockFactory, clock: FakeClock, ha: Probe
) -> None:
    from edge.__main__ import main
    from edge.fleet import DoorKeys, FleetDoor, enrolment_state_topic, keygen
    from edge.identity import EMBEDDING_MODEL_SHA256

    # A fleet door: its enrolment report (edge.fleet) is retained below the device's topics too.
    data = make_config(tmp_path, mosquitto.port, remote_unlock=False).model_dump(mode="json")
    keys = keygen(tmp_path / "keys")
    data["fleet"] = {
        "enabled": True,
        "public_key": str(keys["public_key"]),
        "content_key_file": str(keys["content_key_file"]),
    }
    config = Config.model_validate(data)
    d = Door(config, mock_factory, clock)
    fleet = FleetDoor(config, DoorKeys.from_config(config), EMBEDDING_MODEL_SHA256)
    fleet.attach(d.link)
    fleet.report()
    report = enrolment_state_topic(config.mqtt)
    ha.next(report)
    d.bridge.set_enrolled(0)
    ha.next(d.bridge.topics.enrolled)
    d.bridge.on_event(new_event("granted", score=0.9, latency_ms=100.0))  # last_access, score
    ha.next(d.bridge.topics.last_access)
    d.bridge.set_liveness_threshold(0.8, "camera_calibration", "0" * 64)
    ha.next(d.bridge.topics.liveness_threshold)
    d.close()  # the daemon is stopped first, as the docs say
    left = {m.topic for m in ha.retained_now("livegate/frontdoor/#")}
    assert {report, d.bridge.topics.enrolled} <= left, "the stopped daemon left its states"
    config_file = tmp_path / "config.yaml"
    config_file.write_text(json.dumps(config.model_dump(mode="json")))  # JSON is YAML
    assert main(["unregister", "--config", str(config_file)]) == 0
    assert ha.retained_now(discovery_topic(config)) == []
    left = ha.retained_now("livegate/frontdoor/#")
    assert [(m.topic, m.payload) for m in left] == []


# -- the documented broker ACL -------------------------------------------------------------------
def test_documented_acl_lets_the_device_write_its_topics_and_only_ha_command(
    tmp_path: Path, mosquitto: Mosquitto, mock_factory: MockFactory, clock: FakeClock
) -> None:
    users = {"livegate-frontdoor": "door-secret", "homeassistant": "ha-secret", "guest": "guest"}
    pwfile = tmp_path / "passwd"
    pwfile.touch(mode=0o600)
    for user, password in users.items():
        subprocess.run(["mosquitto_passwd", "-b", str(pwfile), user, password], check=True)
    (tmp_path / "door_password").write_text("door-secret")
    base = make_config(tmp_path, mosquitto.port)
    data = base.model_dump(mode="json")
    data["mqtt"]["username"] = "livegate-frontdoor"
    data["mqtt"]["password_file"] = str(tmp_path / "door_password")
    config = Config.model_validate(data)
    acl = tmp_path / "acl"
    acl.write_text(mosquitto_acl(config, "livegate-frontdoor", "homeassistant"))
    mosquitto.stop()
    mosquitto.conf.write_text(
        f"listener {mosquitto.port} 127.0.0.1\nallow_anonymous false\npersistence false\n"
        f"password_file {pwfile}\nacl_file {acl}\n" + ("user root\n" if os.geteuid() == 0 else "")
        # As root, mosquitto drops to user "mosquitto", who cannot read pytest's 0700 tmp dirs.
    )
    mosquitto.start()

    ha = Probe(mosquitto.port, ("homeassistant/#", "livegate/#"), "homeassistant", "ha-secret")
    guest = Probe(mosquitto.port, (), "guest", "guest")
    d = Door(config, mock_factory, clock, watcher_auth=("homeassistant", "ha-secret"))
    try:
        t = d.bridge.topics
        # The device may announce itself and publish its states.
        assert json.loads(ha.next(discovery_topic(config)).payload)["cmps"]
        assert ha.next(t.lock_state).payload == b"LOCKED"
        # Neither another client nor the device itself may command the door. A QoS 1 PUBACK means
        # mosquitto has handled (here: dropped) the message before the next one arrives.
        guest.publish(t.lock_command, unlock())
        d.link.publish(t.lock_command, unlock(), qos=1).wait_for_publish(WAIT)
        ha.publish(t.lock_command, unlock("999999"))
        event = d.next_command()
        assert event["reason"] == "bad_code"  # the first command to arrive is HA's
        assert d.relay.pulses == 0
        ha.publish(t.lock_command, unlock())
        assert d.next_command()["accepted"]
        assert d.pulses_after_command() == 1
    finally:
        d.close()
        ha.close()
        guest.close()


def test_docs_show_the_acl_the_code_generates() -> None:
    config = Config.model_validate({"mqtt": {"device_id": "frontdoor"}})
    acl = mosquitto_acl(config, "livegate-frontdoor", "homeassistant")
    assert acl in DOCS.read_text()
