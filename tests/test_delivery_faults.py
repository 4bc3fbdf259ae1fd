"""Events reach a real mosquitto in order with no gap through broker outages, a hung broker and a
producer killed with SIGKILL. Duplicates (same id) are allowed; consumers drop them.

The broker here keeps its state on disk (``persistence true``, saved on every change) so that
the *consumer's* persistent session survives the broker being killed: without that, messages the
broker accepted while the consumer was still reconnecting would be lost by the broker itself,
whatever the producer does. The producer side never relies on it: after every reconnect it
publishes again, from its journal, everything not acknowledged.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import MqttConfig
from edge.delivery import EventDelivery
from edge.events import Event, EventBus, new_event
from edge.journal import EventJournal
from edge.mqtt import MqttLink, device_topic
from tests.fakes import FakeClock
from tests.mosquitto import Mosquitto

REPO_ROOT = Path(__file__).resolve().parent.parent
TOPIC = "livegate/door/event"


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path)
    # `user root`: when the tests run as root, mosquitto would otherwise drop to its own user and
    # fail to write the database in tmp_path; as any other user the option has no effect.
    broker.conf.write_text(
        f"listener {broker.port} 127.0.0.1\nallow_anonymous true\n"
        f"persistence true\npersistence_location {tmp_path}/\n"
        "autosave_interval 1\nautosave_on_changes true\nuser root\n"
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


class Consumer:
    """A persistent QoS 1 subscriber that records every payload it receives, duplicates too."""

    def __init__(self, broker: Mosquitto, client_id: str) -> None:
        self._lock = threading.Lock()
        self.payloads: list[bytes] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
        )
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(TOPIC, 1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 2)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert self._subscribed.wait(5)
        # Wait until the broker has saved the subscription, so that it outlives a kill -9.
        database = broker.workdir / "mosquitto.db"
        _wait(
            lambda: database.exists() and TOPIC.encode() in database.read_bytes(),
            5,
            "the broker to persist the subscription",
        )

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.payloads.append(bytes(message.payload))

    def events(self) -> list[Event]:
        """Received events in arrival order, later copies of an id dropped."""
        with self._lock:
            payloads = list(self.payloads)
        seen: set[str] = set()
        out = []
        for payload in payloads:
            event = Event.from_json(payload)
            if event.id not in seen:
                seen.add(event.id)
                out.append(event)
        return out

    def numbers(self) -> list[int]:
        return [int(event.data["n"]) for event in self.events()]

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        _wait(lambda: len(self.events()) >= count, timeout, f"{count} distinct events")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Producer:
    journal: EventJournal
    link: MqttLink
    delivery: EventDelivery
    bus: EventBus

    def emit(self, numbers: range) -> None:
        for n in numbers:
            self.bus.emit(new_event("command", n=n))


@pytest.fixture
def producer(broker: Mosquitto, tmp_path: Path) -> Iterator[Producer]:
    config = MqttConfig(port=broker.port, device_id="door")
    journal = EventJournal(tmp_path / "events.sqlite3")
    link = MqttLink(config)
    delivery = EventDelivery(journal, link, device_topic(config, "event"))
    bus = EventBus(journal, [delivery.on_event])
    link.start()
    delivery.start()
    assert link.wait_connected(5)
    try:
        yield Producer(journal, link, delivery, bus)
    finally:
        delivery.stop(timeout=0.5)
        link.stop()
        journal.close()


class FakeInfo:
    """What EventDelivery reads of paho's MQTTMessageInfo."""

    def __init__(self, mid: int, rc: int) -> None:
        self.mid = mid
        self.rc = rc
        self.published = False

    def is_published(self) -> bool:
        return self.published


class FakeLink:
    """An MqttLink stand-in whose acknowledgements and reconnects the test decides."""

    def __init__(self) -> None:
        self.connected = True
        self.connections = 1
        self.refuse = False
        self.sent: list[tuple[int, FakeInfo]] = []  # (n, info) in publish order
        self._lock = threading.Lock()
        self._on_connect: list[Callable[[], None]] = []
        self._on_ack: list[Callable[[int], None]] = []

    def add_connect_handler(self, handler: Callable[[], None]) -> None:
        self._on_connect.append(handler)

    def add_publish_ack_handler(self, handler: Callable[[int], None]) -> None:
        self._on_ack.append(handler)

    def publish(
        self, topic: str, payload: str | bytes, qos: int = 1, retain: bool = False
    ) -> FakeInfo:
        assert (topic, qos, retain) == (TOPIC, 1, False)
        with self._lock:
            info = FakeInfo(len(self.sent) + 1, 15 if self.refuse else 0)  # 15: QUEUE_SIZE
            if not self.refuse:
                self.sent.append((int(Event.from_json(payload).data["n"]), info))
        return info

    def numbers(self) -> list[int]:
        with self._lock:
            return [n for n, _ in self.sent]

    def ack(self, index: int) -> None:
        with self._lock:
            info = self.sent[index][1]
        info.published = True
        for handler in self._on_ack:
            handler(info.mid)

    def reconnect(self) -> None:
        self.connections += 1
        self.announce_connect()

    def announce_connect(self) -> None:
        """The connect handlers only: MqttLink runs them after it already reports connected."""
        for handler in self._on_connect:
            handler()


@dataclass
class FakeRig:
    link: FakeLink
    journal: EventJournal
    delivery: EventDelivery
    bus: EventBus
    clock: FakeClock


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeRig]:
    link = FakeLink()
    journal = EventJournal(tmp_path / "fake-events.sqlite3")
    clock = FakeClock()
    delivery = EventDelivery(
        journal, link, TOPIC, window=3, ack_timeout_s=30.0, poll_s=0.05, clock=clock
    )
    bus = EventBus(journal, [delivery.on_event])
    delivery.start()
    try:
        yield FakeRig(link, journal, delivery, bus, clock)
    finally:
        link.connected = False
        delivery.stop(timeout=0.5)
        journal.close()


def _emit(bus: EventBus, numbers: range) -> None:
    for n in numbers:
        bus.emit(new_event("command", n=n))


def test_delivery_keeps_a_bounded_window_and_marks_in_order_on_ack(
    fake: FakeRig,
) -> None:
    link, journal, delivery, bus = fake.link, fake.journal, fake.delivery, fake.bus
    _emit(bus, range(5))
    _wait(lambda: link.numbers() == [0, 1, 2], 5, "a window of 3 published")
    link.ack(1)  # out of order: nothing may be marked before event 0 is acknowledged
    link.ack(2)
    delivery.wake()
    time.sleep(0.3)  # several poll periods: the thread has seen both acks and must still wait
    assert journal.pending_count() == 5
    assert link.numbers() == [0, 1, 2] and delivery.in_flight == 3
    link.ack(0)
    _wait(lambda: journal.pending_count() == 2, 5, "events 0-2 marked delivered")
    _wait(lambda: link.numbers() == [0, 1, 2, 3, 4], 5, "the rest published")
    link.ack(3)
    link.ack(4)
    _wait(lambda: journal.pending_count() == 0, 5, "all marked delivered")


def test_after_reconnect_unacknowledged_events_are_published_again_in_order(
    fake: FakeRig,
) -> None:
    link, journal, delivery, bus = fake.link, fake.journal, fake.delivery, fake.bus
    _emit(bus, range(4))
    _wait(lambda: link.numbers() == [0, 1, 2], 5, "a window published")
    link.ack(0)
    _wait(lambda: link.numbers() == [0, 1, 2, 3], 5, "event 3 takes the freed slot")
    link.connected = False  # the broker dies with 1-3 unacknowledged, as if paho forgot them
    _emit(bus, range(4, 6))
    link.connected = True
    link.reconnect()
    _wait(lambda: len(link.numbers()) >= 7, 5, "the backlog published again")
    assert link.numbers() == [0, 1, 2, 3, 1, 2, 3]  # the window is full again: 4, 5 wait
    assert delivery.republished == 3
    assert journal.pending_count() == 5
    for index in (4, 5, 6):
        link.ack(index)
    _wait(lambda: link.numbers()[7:] == [4, 5], 5, "the newer events follow")


def test_events_published_before_the_connect_handler_ran_are_not_published_twice(
    fake: FakeRig,
) -> None:
    link, delivery, bus = fake.link, fake.delivery, fake.bus
    _emit(bus, range(2))
    _wait(lambda: link.numbers() == [0, 1], 5, "both published")
    link.announce_connect()  # late news of the connection they were published on
    delivery.wake()
    time.sleep(0.2)
    assert link.numbers() == [0, 1] and delivery.republished == 0
    link.reconnect()  # a new connection: they may have been lost with the old one
    _wait(lambda: link.numbers() == [0, 1, 0, 1], 5, "published again")
    assert delivery.republished == 2


def test_events_left_unacknowledged_past_the_timeout_are_published_again(fake: FakeRig) -> None:
    link, journal, delivery, bus = fake.link, fake.journal, fake.delivery, fake.bus
    _emit(bus, range(2))
    _wait(lambda: link.numbers() == [0, 1], 5, "both published")
    fake.clock.advance(29.0)
    delivery.wake()
    time.sleep(0.2)
    assert link.numbers() == [0, 1], "published again before the timeout"
    fake.clock.advance(2.0)
    delivery.wake()
    _wait(lambda: link.numbers() == [0, 1, 0, 1], 5, "published again after the timeout")
    assert delivery.republished == 2 and journal.pending_count() == 2


def test_nothing_is_published_while_disconnected(
    fake: FakeRig,
) -> None:
    link, delivery, bus = fake.link, fake.delivery, fake.bus
    link.connected = False
    _emit(bus, range(3))
    delivery.wake()
    time.sleep(0.2)  # a few poll periods: the thread must not publish into a dead link
    assert link.numbers() == []
    link.connected = True
    link.reconnect()
    _wait(lambda: link.numbers() == [0, 1, 2], 5, "published after connecting")


def test_a_refused_publish_is_retried_not_lost(
    fake: FakeRig,
) -> None:
    link, journal, delivery, bus = fake.link, fake.journal, fake.delivery, fake.bus
    link.refuse = True
    _emit(bus, range(2))
    delivery.wake()
    time.sleep(0.2)
    assert delivery.in_flight == 0 and journal.pending_count() == 2
    link.refuse = False
    delivery.wake()
    _wait(lambda: link.numbers() == [0, 1], 5, "published once paho takes them")


def test_events_are_delivered_in_order_and_marked_only_when_acknowledged(
    broker: Mosquitto, producer: Producer
) -> None:
    consumer = Consumer(broker, "consumer-basic")
    producer.emit(range(20))
    consumer.wait_for(20)
    _wait(lambda: producer.journal.pending_count() == 0, 10, "all rows marked delivered")
    assert consumer.numbers() == list(range(20))
    events = consumer.events()
    assert all(event.kind == "command" and event.ts.endswith("Z") for event in events)
    consumer.close()


def test_100_events_through_a_broker_outage_arrive_in_order_without_gap(
    broker: Mosquitto, producer: Producer
) -> None:
    consumer = Consumer(broker, "consumer-outage")
    producer.emit(range(30))
    consumer.wait_for(30)
    _wait(lambda: producer.journal.pending_count() == 0, 10, "the first 30 delivered")

    broker.stop()  # kill -9
    _wait(lambda: not producer.link.connected, 5, "the link to notice the broker is gone")
    producer.emit(range(30, 70))
    # Nothing is acknowledged while the broker is down, so nothing may be marked delivered.
    assert producer.journal.pending_count() == 40

    broker.start()  # same port, new process
    producer.emit(range(70, 100))
    consumer.wait_for(100)
    assert consumer.numbers() == list(range(100))
    _wait(lambda: producer.journal.pending_count() == 0, 10, "the backlog marked delivered")
    consumer.close()


def test_events_in_flight_at_a_hung_then_killed_broker_are_published_again(
    broker: Mosquitto, producer: Producer
) -> None:
    consumer = Consumer(broker, "consumer-hung")
    producer.emit(range(5))
    consumer.wait_for(5)
    _wait(lambda: producer.journal.pending_count() == 0, 10, "the first 5 delivered")

    assert broker.process is not None
    os.kill(broker.process.pid, signal.SIGSTOP)  # accepts TCP data, never answers
    emitter = threading.Thread(target=producer.emit, args=(range(5, 10),))
    emitter.start()
    emitter.join(10)
    assert not emitter.is_alive(), "emit waited on a hung broker"
    _wait(lambda: producer.delivery.in_flight == 5, 10, "5 events handed to paho")
    assert producer.journal.pending_count() == 5  # no PUBACK, not delivered

    broker.stop()  # SIGKILL also ends a stopped process; the 5 publishes die with it
    broker.start()
    consumer.wait_for(10)
    assert consumer.numbers() == list(range(10))
    assert producer.delivery.republished >= 5
    _wait(lambda: producer.journal.pending_count() == 0, 10, "the 5 marked delivered")
    consumer.close()


def test_stop_delivers_the_last_event_first(broker: Mosquitto, producer: Producer) -> None:
    consumer = Consumer(broker, "consumer-stop")
    producer.emit(range(3))
    producer.bus.emit(new_event("stopped", reason="end of input", n=3))
    producer.delivery.stop(timeout=5)
    assert producer.journal.pending_count() == 0
    consumer.wait_for(4)
    assert consumer.numbers() == [0, 1, 2, 3]
    assert consumer.events()[-1].kind == "stopped"
    consumer.close()


def _start_producer(broker: Mosquitto, journal: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.event_producer",
            "--journal",
            str(journal),
            "--port",
            str(broker.port),
            "--count",
            "100",
            "--interval",
            "0.01",
        ],
        cwd=REPO_ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def _count(journal: Path, where: str) -> int:
    # A plain second connection: WAL lets it read while the producer process writes.
    conn = sqlite3.connect(journal, timeout=5)
    try:
        return int(conn.execute(f"SELECT COUNT(*) FROM events {where}").fetchone()[0])
    finally:
        conn.close()


def test_producer_killed_mid_stream_and_restarted_loses_nothing(
    broker: Mosquitto, tmp_path: Path
) -> None:
    consumer = Consumer(broker, "consumer-crash")
    journal_path = tmp_path / "events.sqlite3"
    log = tmp_path / "producer.log"
    first = _start_producer(broker, journal_path, log)
    assert broker.process is not None
    try:
        consumer.wait_for(30)
        # Hang the broker so that the kill surely leaves journaled, unacknowledged events behind.
        os.kill(broker.process.pid, signal.SIGSTOP)
        _wait(lambda: _count(journal_path, "") >= 45, 10, "45 events journaled")
    finally:
        first.kill()  # SIGKILL: no clean-up, no drain, maybe mid-transaction
        first.wait(5)
        os.kill(broker.process.pid, signal.SIGCONT)
    assert _count(journal_path, "WHERE delivered_s IS NULL") > 0
    assert _count(journal_path, "") < 100, "the producer was meant to die mid-stream"

    second = _start_producer(broker, journal_path, log)
    try:
        assert second.wait(60) == 0, log.read_text()
    finally:
        if second.poll() is None:
            second.kill()
    consumer.wait_for(100)
    assert consumer.numbers() == list(range(100)), log.read_text()
    pids = {event.data["pid"] for event in consumer.events()}
    assert pids == {first.pid, second.pid}
    assert _count(journal_path, "WHERE delivered_s IS NULL") == 0
    consumer.close()


class StaleFlagLink(MqttLink):
    """A real MqttLink whose ``connected`` flag is already set while paho has no socket: the
    window between paho closing a dropped socket and ``on_disconnect`` clearing the flag, made
    to last. A publish in that window gets paho's ``MQTT_ERR_NO_CONN``; paho keeps the message
    and sends it once connected."""

    @property
    def connected(self) -> bool:
        return True


def test_an_event_published_into_a_dropped_socket_is_still_delivered(
    broker: Mosquitto, tmp_path: Path
) -> None:
    consumer = Consumer(broker, "consumer-no-conn")
    config = MqttConfig(port=broker.port, device_id="door")
    journal = EventJournal(tmp_path / "events.sqlite3")
    link = StaleFlagLink(config)
    delivery = EventDelivery(journal, link, TOPIC, poll_s=0.05)
    bus = EventBus(journal, [delivery.on_event])
    delivery.start()
    try:
        bus.emit(new_event("command", n=0))
        _wait(lambda: delivery.in_flight == 1, 5, "the event handed to paho without a socket")
        link.start()  # paho connects, sends its copy; delivery must not wedge on that copy
        consumer.wait_for(1)
        bus.emit(new_event("command", n=1))
        _wait(lambda: journal.pending_count() == 0, 10, "both events marked delivered")
        consumer.wait_for(2)
        assert consumer.numbers() == [0, 1]
    finally:
        delivery.stop(timeout=0.5)
        link.stop()
        journal.close()
        consumer.close()
