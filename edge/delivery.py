"""Delivery of the journaled events to MQTT: in order, at QoS 1, acknowledged before forgotten.

``EventDelivery`` drains the journal (``edge.journal``) to MQTT in ``seq`` order at QoS 1 on its
own thread and marks a row delivered only once the broker acknowledged it (PUBACK); after a
reconnect it publishes again, from the journal, every row not yet acknowledged. Consumers may
therefore see an event twice (same ``id``); once they drop the repeats, events arrive in order
and without gaps. It never holds more than a window of events in memory: during an outage they
wait in the journal.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from paho.mqtt.enums import MQTTErrorCode

from edge.events import Event
from edge.journal import EventJournal

logger = logging.getLogger(__name__)


class PublishInfo(Protocol):
    """What delivery reads of paho's ``MQTTMessageInfo``."""

    @property
    def rc(self) -> int: ...

    def is_published(self) -> bool: ...


class DeliveryLink(Protocol):
    """The part of ``edge.mqtt.MqttLink`` that delivery uses (tests pass a fake)."""

    @property
    def connected(self) -> bool: ...

    @property
    def connections(self) -> int:
        """Successful connects so far; counted before ``connected`` turns true."""
        ...

    def publish(
        self, topic: str, payload: str | bytes, qos: int = 1, retain: bool = False
    ) -> PublishInfo: ...

    def add_connect_handler(self, handler: Callable[[], None]) -> None: ...

    def add_publish_ack_handler(self, handler: Callable[[int], None]) -> None: ...


def _acknowledged(info: PublishInfo) -> bool:
    """Whether the broker acknowledged the message behind ``info``.

    paho's ``is_published`` raises for every ``rc`` but success, for ever, even once paho has sent
    a NO_CONN message after reconnecting and the broker acknowledged it. Such a message counts as
    unacknowledged: its row is published again from the journal after the reconnect (or the ack
    timeout), instead of the exception stopping every later acknowledgement.
    """
    if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
        return False
    return info.is_published()


class EventDelivery:
    """Drains the journal to ``topic`` in order at QoS 1; marks rows delivered on PUBACK only.

    Runs on its own thread: ``wake()`` (or the ``on_event`` listener) after appends, the MQTT
    link's connect handler after every (re)connect. At most ``window`` events are handed to paho
    at once (MqttLink keeps one in flight), so a long outage never piles events up in memory:
    they wait in the journal. After a reconnect everything not acknowledged that went out on an
    earlier connection is published again from the journal, in order, whatever paho or the broker
    remembered of the old session.
    """

    def __init__(
        self,
        journal: EventJournal,
        link: DeliveryLink,
        topic: str,
        window: int = 16,
        ack_timeout_s: float = 30.0,
        prune_every_s: float = 3600.0,
        poll_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # ``clock`` times the ack timeout and pruning (tests move it); waits use real time.
        self.journal = journal
        self.link = link
        self.topic = topic
        self.window = window
        self.ack_timeout_s = ack_timeout_s
        self.prune_every_s = prune_every_s
        self.poll_s = poll_s
        self._clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._reconnected = threading.Event()
        self._thread: threading.Thread | None = None
        # Owned by the delivery thread only: (seq, paho message info, connection it was published
        # on) handed to paho, in order.
        self._outstanding: list[tuple[int, PublishInfo, int]] = []
        self._last_progress = clock()
        self._next_prune = clock()
        self.delivered = 0
        self.republished = 0
        link.add_connect_handler(self._on_connect)
        link.add_publish_ack_handler(self._on_ack)

    @property
    def in_flight(self) -> int:
        """Events handed to paho and not yet acknowledged (for stats and tests)."""
        return len(self._outstanding)

    # -- called from other threads; never block ---------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    def on_event(self, event: Event) -> None:
        """An EventBus listener: the journal has a new row to deliver."""
        self._wake.set()

    def _on_connect(self) -> None:
        # paho's thread: only flag it; the delivery thread re-publishes from the journal.
        self._reconnected.set()
        self._wake.set()

    def _on_ack(self, mid: int) -> None:
        # paho's thread, inside paho's message lock: do no I/O here. The delivery thread reads
        # the acknowledgement from the MQTTMessageInfo it holds (no mid reuse ambiguity).
        self._wake.set()

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="event-delivery", daemon=True)
        self._thread.start()
        self._wake.set()

    def stop(self, timeout: float = 2.0) -> None:
        """Deliver what the journal holds for up to ``timeout`` s while connected (so that the
        ``stopped`` event gets out), then stop the thread. Idempotent. Whatever is still
        undelivered stays in the journal for the next start."""
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout
        if self.link.connected and not self.drain(timeout):
            logger.warning(
                "event delivery: %d event(s) not acknowledged at stop; kept in the journal",
                self.journal.pending_count(),
            )
        thread, self._thread = self._thread, None
        self._stop.set()
        self._wake.set()
        thread.join(max(0.5, deadline - time.monotonic()))
        if thread.is_alive():
            logger.warning("event delivery thread did not stop within %.1f s", timeout)

    # -- the delivery thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self._step()
            except Exception:
                # A journal error must not kill delivery for good; rows stay pending.
                logger.exception("event delivery failed; retrying")
                self._stop.wait(self.poll_s)

    def _step(self) -> None:
        self._collect_acks()
        if self._reconnected.is_set():
            self._reconnected.clear()
            # Only what went out on an earlier connection can have been lost with it. The link
            # reports "connected" before the connect handlers run, so events published in that
            # gap are on the new connection already: publishing them again would duplicate them.
            if any(on < self.link.connections for _, _, on in self._outstanding):
                self._restart_from_journal("reconnected")
        elif self._outstanding and self._clock() - self._last_progress > self.ack_timeout_s:
            self._restart_from_journal(f"no PUBACK for {self.ack_timeout_s:.0f} s")
        if self.link.connected:
            self._publish_more()
        if self._clock() >= self._next_prune:
            self._next_prune = self._clock() + self.prune_every_s
            self.journal.prune()

    def _collect_acks(self) -> None:
        # PUBACKs come back in publish order; stop at the first one still waiting so that rows
        # are only ever marked delivered in seq order.
        while self._outstanding and _acknowledged(self._outstanding[0][1]):
            seq, _, _ = self._outstanding.pop(0)
            self.journal.mark_delivered(seq)
            self.delivered += 1
            self._last_progress = self._clock()

    def _restart_from_journal(self, why: str) -> None:
        if self._outstanding:
            logger.info(
                "event delivery: %s; publishing %d unacknowledged event(s) again from the journal",
                why,
                len(self._outstanding),
            )
            self.republished += len(self._outstanding)
        # Forget paho's copies: they may still go out (duplicates, same id), but correctness
        # rests on the journal, which still holds every unacknowledged row.
        self._outstanding.clear()
        self._last_progress = self._clock()

    def _publish_more(self) -> None:
        room = self.window - len(self._outstanding)
        if room <= 0:
            return
        if not self._outstanding:
            self._last_progress = self._clock()
        after = self._outstanding[-1][0] if self._outstanding else 0
        connection = self.link.connections  # read after `connected`: it is the current one
        for seq, event in self.journal.pending(room, after_seq=after):
            info = self.link.publish(self.topic, event.to_json(), qos=1, retain=False)
            # NO_CONN: paho keeps the message and sends it after reconnecting (we publish it
            # again then anyway). Any other error: paho dropped it; try again on the next step.
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                logger.warning("event delivery: paho refused event seq %d: rc=%s", seq, info.rc)
                break
            self._outstanding.append((seq, info, connection))

    def drain(self, timeout: float) -> bool:
        """Wait until the journal has nothing undelivered (e.g. before a clean stop).

        True when everything was acknowledged; False at the deadline (rows stay journaled).
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.journal.pending_count() == 0:
                return True
            if time.monotonic() >= deadline or self._thread is None:
                return False
            self._wake.set()
            self._stop.wait(0.02)
