"""MqttLink against a real mosquitto on 127.0.0.1."""

from __future__ import annotations

import os
import queue
import signal
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import MqttConfig
from edge.mqtt import MqttLink
from tests.mosquitto import Mosquitto


def _subscriber(port: int, topic: str) -> tuple[mqtt.Client, queue.Queue[tuple[str, bytes, bool]]]:
    received: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
    ready = threading.Event()
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    client.on_message = lambda c, u, m: received.put((m.topic, m.payload, m.retain))
    client.on_subscribe = lambda c, u, mid, rcs, p: ready.set()
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, 1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert ready.wait(5)
    return client, received


def test_availability_online_then_offline_on_clean_stop(mosquitto: Mosquitto) -> None:
    config = MqttConfig(port=mosquitto.port, device_id="frontdoor")
    link = MqttLink(config)
    link.start()
    assert link.wait_connected(5)
    sub, received = _subscriber(mosquitto.port, "livegate/frontdoor/availability")
    # The first subscriber may be in place before "online" reaches the broker, and then gets it
    # live (retain flag off); once it has it, a later subscriber must get the retained copy.
    assert received.get(timeout=5)[:2] == ("livegate/frontdoor/availability", b"online")
    late, late_received = _subscriber(mosquitto.port, "livegate/frontdoor/availability")
    assert late_received.get(timeout=5) == ("livegate/frontdoor/availability", b"online", True)
    late.loop_stop()
    link.stop()
    assert received.get(timeout=5)[1] == b"offline"
    sub.loop_stop()


def test_start_returns_at_once_when_broker_is_down(mosquitto: Mosquitto) -> None:
    mosquitto.stop()
    link = MqttLink(MqttConfig(port=mosquitto.port))
    link.start()  # must not raise nor block
    assert not link.wait_connected(0.5)
    assert link.connections == 0  # refused attempts are not connections
    mosquitto.start()
    assert link.wait_connected(10), "paho reconnects by itself once the broker is back"
    assert link.connections == 1
    link.stop()


def test_oversized_payload_never_reaches_handler(mosquitto: Mosquitto) -> None:
    link = MqttLink(MqttConfig(port=mosquitto.port, max_payload_bytes=64))
    got: queue.Queue[bytes] = queue.Queue()
    link.subscribe("livegate/door/set", lambda m: got.put(m.payload))
    link.start()
    assert link.wait_connected(5)
    pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    pub.publish("livegate/door/set", b"x" * 1000, qos=1).wait_for_publish(5)
    pub.publish("livegate/door/set", b"small", qos=1).wait_for_publish(5)
    assert got.get(timeout=5) == b"small"
    assert got.empty()
    pub.loop_stop()
    link.stop()


def test_availability_is_offline_after_a_stop_the_broker_did_not_acknowledge(
    mosquitto: Mosquitto,
) -> None:
    config = MqttConfig(port=mosquitto.port, device_id="frontdoor")
    link = MqttLink(config)
    link.start()
    assert link.wait_connected(5)
    topic = "livegate/frontdoor/availability"
    sub, received = _subscriber(mosquitto.port, topic)
    assert received.get(timeout=5)[1] == b"online"
    sub.loop_stop()
    assert mosquitto.process is not None
    os.kill(mosquitto.process.pid, signal.SIGSTOP)  # takes TCP data, answers nothing
    try:
        # An event in flight that the broker never acknowledges: "offline" waits behind it.
        link.publish("livegate/frontdoor/event", b"{}", qos=1)
        link.stop()
    finally:
        os.kill(mosquitto.process.pid, signal.SIGCONT)
    # What the broker keeps for HA must say the device is gone: its "offline", or its will.
    late, late_received = _subscriber(mosquitto.port, topic)
    assert late_received.get(timeout=5) == (topic, b"offline", True)
    late.loop_stop()
