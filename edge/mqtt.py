"""The daemon's one MQTT connection (paho-mqtt v2), shared by event delivery and Home Assistant.

paho's network thread does the work (``connect_async`` + ``loop_start``), so nothing here
ever blocks the frame loop on the network. The will message marks the device ``offline``
(retained) when the connection drops without a clean stop.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import MqttConfig

logger = logging.getLogger(__name__)

MessageHandler = Callable[[mqtt.MQTTMessage], None]
ConnectHandler = Callable[[], None]
PublishAckHandler = Callable[[int], None]

ONLINE = "online"
OFFLINE = "offline"


class _DropNotConnected(logging.Filter):
    """paho logs "Client is not connected" at ERROR on every retry while the broker is down and
    again at a clean stop; MqttLink reports an unreachable broker itself, once, with host:port."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Client is not connected")


_PAHO_LOGGER = logging.getLogger("paho")
_PAHO_LOGGER.addFilter(_DropNotConnected())


def device_topic(config: MqttConfig, leaf: str) -> str:
    """``<base>/<device>/<leaf>``: every topic this device writes lives below its own prefix."""
    return f"{config.base_topic}/{config.device_id}/{leaf}"


@dataclass
class _Subscription:
    topic: str
    handler: MessageHandler
    qos: int = 1
    max_bytes: int | None = None


@dataclass
class _Callbacks:
    on_connect: list[ConnectHandler] = field(default_factory=list)
    on_publish_ack: list[PublishAckHandler] = field(default_factory=list)
    subscriptions: list[_Subscription] = field(default_factory=list)


class MqttLink:
    """A paho v2 client with a retained availability will, automatic reconnect and resubscribe.

    - ``add_connect_handler(fn)``: called (from paho's thread) after every successful connect,
      so announcements and backlog drains happen again after a broker restart.
    - ``subscribe(topic, handler)``: (re)subscribed on every connect; ``handler(message)`` runs on
      paho's thread and must not block.
    - ``add_publish_ack_handler(fn)``: ``fn(mid)`` when the broker acknowledged a QoS 1 publish.
    - ``publish(...)`` returns paho's ``MQTTMessageInfo`` (``.mid``, ``.rc``); it never blocks.
    """

    def __init__(
        self, config: MqttConfig, client_id: str | None = None, availability: bool = True
    ) -> None:
        """``availability=False``: a helper connection (``unregister``) that must not speak for
        the device: no will, no ``online``/``offline``."""
        self.config = config
        self.availability_topic = device_topic(config, "availability")
        self.availability = availability
        self._callbacks = _Callbacks()
        self._connected = threading.Event()
        self._connections = 0
        self._started = False
        self._stopping = False
        self._down_reported = False
        # Set by the daemon: events waiting in the journal, named when the broker is unreachable.
        self.backlog: Callable[[], int] | None = None
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or f"livegate-{config.device_id}",
            # A persistent session keeps QoS 1 messages in flight across reconnects.
            clean_session=False,
        )
        self.client.enable_logger(_PAHO_LOGGER)
        if availability:
            self.client.will_set(self.availability_topic, OFFLINE, qos=1, retain=True)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        # In-order delivery: one QoS 1 message in flight at a time, queued in paho beyond that.
        self.client.max_inflight_messages_set(1)
        password = config.password()
        if config.username is not None:
            self.client.username_pw_set(
                config.username, password.get_secret_value() if password else None
            )
        if config.tls.enabled:
            self.client.tls_set(
                ca_certs=str(config.tls.ca_certs) if config.tls.ca_certs else None,
                certfile=str(config.tls.certfile) if config.tls.certfile else None,
                keyfile=str(config.tls.keyfile) if config.tls.keyfile else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_publish = self._on_publish

    # -- wiring ---------------------------------------------------------------------------------
    def add_connect_handler(self, handler: ConnectHandler) -> None:
        self._callbacks.on_connect.append(handler)

    def add_publish_ack_handler(self, handler: PublishAckHandler) -> None:
        self._callbacks.on_publish_ack.append(handler)

    def subscribe(
        self, topic: str, handler: MessageHandler, qos: int = 1, max_bytes: int | None = None
    ) -> None:
        """``max_bytes``: this topic's payload limit instead of mqtt.max_payload_bytes."""
        self._callbacks.subscriptions.append(_Subscription(topic, handler, qos, max_bytes))
        self.client.message_callback_add(topic, self._guarded(handler, max_bytes))
        if self._connected.is_set():
            self.client.subscribe(topic, qos)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background; returns at once even when the broker is down."""
        if self._started:
            return
        self._started = True
        self.client.connect_async(self.config.host, self.config.port, self.config.keepalive_s)
        self.client.loop_start()

    def stop(self) -> None:
        """Publish ``offline`` (a clean stop fires no will), disconnect, join paho's thread.

        If the broker does not acknowledge ``offline`` in time, the connection is dropped without
        a DISCONNECT so that the broker publishes the will instead."""
        if not self._started:
            return
        self._started = False
        self._stopping = True  # our own disconnect is not an outage worth a warning
        connected = self._connected.is_set()
        if connected and self.availability and not self._offline_acknowledged():
            logger.warning("the broker did not acknowledge offline; leaving it to the will")
            self._drop_connection()
        else:
            if connected:
                self.client.disconnect()
            self.client.loop_stop()
        self._connected.clear()

    def _drop_connection(self) -> None:
        # A DISCONNECT would tell the broker to discard the will, leaving "online" retained for a
        # stopped door. Shutting the socket down without one makes the broker publish the will
        # ("offline", retained) instead. Shut down first: paho's thread only ends once its
        # connection is gone while messages are unacknowledged (else after keepalive_s).
        sock = self.client.socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed: the broker saw the connection drop, the will is out
        self.client.loop_stop()

    def _offline_acknowledged(self, timeout: float = 2.0) -> bool:
        # wait_for_publish returns quietly at its timeout: ask is_published afterwards. paho sends
        # QoS 1 messages one at a time (max_inflight 1), so this waits behind any still in flight.
        info = self.client.publish(self.availability_topic, OFFLINE, qos=1, retain=True)
        try:
            info.wait_for_publish(timeout=timeout)
            return info.is_published()
        except (RuntimeError, ValueError):
            return False

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    def waiting_events(self) -> int | None:
        """Events the journal holds for the broker (None when nobody said how to count them)."""
        if self.backlog is None:
            return None
        try:
            return self.backlog()
        except Exception:  # a closed journal at exit: the count is only for the message
            return None

    def _report_down(self, why: str, level: int = logging.WARNING) -> None:
        # Once per outage: a broker that stays down must not flood the log at every retry.
        if self._down_reported or self._stopping:
            return
        self._down_reported = True
        waiting = self.waiting_events()
        logger.log(
            level,
            "MQTT broker %s %s%s; retrying in the background (the door works without it)",
            self.address,
            why,
            "" if waiting is None else f"; {waiting} event(s) waiting in the journal",
        )

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def connections(self) -> int:
        """Successful connects so far (counted before ``connected`` turns true)."""
        return self._connections

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def publish(
        self, topic: str, payload: str | bytes, qos: int = 1, retain: bool = False
    ) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=qos, retain=retain)

    # -- paho callbacks (paho's network thread) ------------------------------------------------
    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: mqtt.ReasonCode,
        properties: mqtt.Properties | None,
    ) -> None:
        if reason_code.is_failure:
            # Do not believe a refused connection (bad credentials, not authorised).
            self._report_down(f"refused the connection ({reason_code})", logging.ERROR)
            return
        logger.info("MQTT connected to %s", self.address)
        self._down_reported = False
        self._connections += 1
        self._connected.set()
        if self.availability:
            client.publish(self.availability_topic, ONLINE, qos=1, retain=True)
        for sub in self._callbacks.subscriptions:
            client.subscribe(sub.topic, sub.qos)
        for handler in self._callbacks.on_connect:
            self._guarded_call(handler)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason_code: mqtt.ReasonCode,
        properties: mqtt.Properties | None,
    ) -> None:
        if self._stopping:
            logger.info("MQTT disconnected from %s", self.address)
        elif self._connected.is_set():
            logger.warning("MQTT disconnected (%s); paho reconnects with backoff", reason_code)
        self._connected.clear()

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        self._report_down("cannot be reached")

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_code: mqtt.ReasonCode,
        properties: mqtt.Properties | None,
    ) -> None:
        for handler in self._callbacks.on_publish_ack:
            self._guarded_call(handler, mid)

    @staticmethod
    def _guarded_call(handler: Callable[..., None], *args: object) -> None:
        # An exception in a handler must not kill paho's network thread.
        try:
            handler(*args)
        except Exception:
            logger.exception("MQTT handler %r failed", handler)

    def _guarded(
        self, handler: MessageHandler, max_bytes: int | None = None
    ) -> Callable[[mqtt.Client, object, mqtt.MQTTMessage], None]:
        limit = self.config.max_payload_bytes if max_bytes is None else max_bytes

        def call(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
            if len(message.payload) > limit:
                logger.warning(
                    "ignored %d-byte payload on %s: above its limit (mqtt.max_payload_bytes"
                    " or fleet.max_message_bytes)",
                    len(message.payload),
                    message.topic,
                )
                return
            self._guarded_call(handler, message)

        return call
