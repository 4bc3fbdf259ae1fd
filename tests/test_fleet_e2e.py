"""Issue 18 end to end on a real mosquitto: an admin and two door daemons, `front` and `back`.

The admin enrols Wolf from the FIRST half of wolf_real.mp4 (`enroll add --end 0.5`) and
publishes him for `back` only. Each door is a whole daemon (res10, the shipped liveness model,
dlib, MockFactory relay) whose camera is a short part of the clip's SECOND half, played only
when the test opens its gate: once after the publish (a grant), once after the revoke (denied).
Forged, tampered and replayed messages are sent in between and must change nothing.
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from gpiozero.pins.mock import MockFactory
from paho.mqtt.enums import CallbackAPIVersion

from edge.__main__ import main
from edge.config import Config, parse_config
from edge.daemon import Daemon, RunOptions
from edge.fleet import canonical, keygen
from edge.identity import EMBEDDING_MODEL_SHA256, EnrolmentStore
from tests.conftest import MODEL, REPO_ROOT
from tests.mosquitto import Mosquitto

pytestmark = pytest.mark.slow
ENROL_END = 0.5
PLAY_FRAMES = 45  # of the second half: enough for a face track to be voted and recognised
SYNC_LIMIT_S = 10.0


class GatedClip:
    """A file source (every frame processed) that plays its frames once per opened gate.

    Between plays ``read`` waits like a camera facing an empty hall; each play starts with one
    frame of that hall (noise, no face) at least ``AWAY_S`` after the last face, so the person
    has left (their face track expired) and comes back. ``played[i]`` is set once every frame of
    play ``i`` has been processed. EOFError after the last play or on stop.
    """

    AWAY_S = 1.5  # > decision.track_timeout_s

    name = "gated-clip"
    is_file = True

    def __init__(self, frames: list[np.ndarray], plays: int, stop: threading.Event) -> None:
        self.frames = frames
        self.gates = [threading.Event() for _ in range(plays)]
        self.played = [threading.Event() for _ in range(plays)]
        self.stop = stop
        self._play = 0
        self._pos = 0
        self._last_read = 0.0
        self._hall = np.random.default_rng(0).integers(0, 255, frames[0].shape, dtype=np.uint8)

    def open(self) -> None:
        pass

    def read(self) -> np.ndarray:
        while self._play < len(self.gates) and not self.stop.is_set():
            if self._pos == len(self.frames):
                self.played[self._play].set()
                self._play, self._pos = self._play + 1, 0
                continue
            if self.gates[self._play].wait(0.1):
                if self._pos == 0 and self._last_read >= 0:
                    time.sleep(max(0.0, self._last_read + self.AWAY_S - time.monotonic()))
                    self._last_read = -1.0  # the hall frame of this play is out
                    return self._hall
                self._pos += 1
                self._last_read = time.monotonic()
                return self.frames[self._pos - 1]
        raise EOFError("gated clip: no more plays")

    def close(self) -> None:
        pass


def second_half(clip: Path, count: int) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(clip))
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.set(cv2.CAP_PROP_POS_FRAMES, int(round(total * ENROL_END)))
    frames = []
    while len(frames) < count:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    assert len(frames) == count
    return frames


class Watcher:
    """Every door's retained enrolment report, as it changes."""

    def __init__(self, port: int) -> None:
        self.reports: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("livegate/+/state/enrolment", 1)
        self.client.loop_start()

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.reports[message.topic.split("/")[1]] = json.loads(message.payload)

    def report(self, door: str) -> dict:
        with self.lock:
            return self.reports.get(door, {})

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def wait_for(condition: Callable[[], bool], timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout} s")


def raw_publish(port: int, topic: str, payload: bytes) -> None:
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()


def retained_message(port: int, topic: str) -> bytes:
    got: queue.Queue[bytes] = queue.Queue()
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    client.on_message = lambda _c, _u, m: got.put(m.payload)
    client.connect("127.0.0.1", port)
    client.subscribe(topic, 1)
    client.loop_start()
    try:
        return got.get(timeout=5)
    finally:
        client.loop_stop()
        client.disconnect()


def door_config(tmp_path: Path, keys: dict[str, Path], device: str, port: int) -> Config:
    return parse_config(
        {
            "state_dir": str(tmp_path / device),
            "liveness": {"model": str(MODEL)},
            "decision": {"cooldown_s": 0.0},
            "relay": {"pulse_s": 0.5},
            "mqtt": {"port": port, "device_id": device},
            "fleet": {
                "enabled": True,
                "public_key": str(keys["public_key"]),
                "content_key_file": str(keys["content_key_file"]),
            },
        },
        REPO_ROOT,
    )


class Door:
    def __init__(self, config: Config, frames: list[np.ndarray], events: Path) -> None:
        self.config = config
        self.factory = MockFactory()
        self.stop = threading.Event()
        self.source = GatedClip(frames, 2, self.stop)
        self.events = events
        options = RunOptions(
            frame_source=self.source,
            pin_factory=self.factory,
            events_out=events,
            stop_event=self.stop,
        )
        self.daemon = Daemon(config, options)
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, name=f"door-{config.mqtt.device_id}")
        self.thread.start()

    def _run(self) -> None:
        self.code = self.daemon.run()

    def play(self, index: int) -> list[dict]:
        """Play the clip part once; the events of the whole run so far."""
        self.source.gates[index].set()
        assert self.source.played[index].wait(180), "the door did not process its frames"
        return [json.loads(line) for line in self.events.read_text().splitlines()]

    def relay_states(self) -> list[bool]:
        return [s.state for s in self.factory.pin(self.config.relay.pin).states]

    def holds(self, name: str) -> bool:
        return name in EnrolmentStore.load(self.config.store_path, EMBEDDING_MODEL_SHA256).people()

    def close(self) -> int | None:
        self.stop.set()
        self.thread.join(30)
        return self.code


def ignored_lines(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(1 for r in caplog.records if r.name == "edge.fleet" and text in r.getMessage())


def test_enrol_once_publish_to_back_grant_revoke_and_refuse_forgeries(
    tmp_path: Path, videos_dir: Path, mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    clip = videos_dir / "wolf_real.mp4"
    if not clip.exists() or not MODEL.exists():
        pytest.skip("wolf_real.mp4 or the shipped model missing")
    caplog.set_level(logging.INFO)
    keys = keygen(tmp_path / "keys")
    admin = tmp_path / "admin.yaml"
    admin.write_text(
        f"state_dir: {tmp_path / 'admin'}\nliveness:\n  model: {MODEL}\n"
        f"mqtt:\n  port: {mosquitto.port}\n  device_id: admin\n"
        f"fleet:\n  signing_key: {keys['signing_key']}\n  public_key: {keys['public_key']}\n"
        f"  content_key_file: {keys['content_key_file']}\n"
    )
    enrol = ["enroll", "add", "wolf", "--source", str(clip), "--end", str(ENROL_END)]
    assert main([*enrol, "--confidence", "0.75", "--config", str(admin)]) == 0

    frames = second_half(clip, PLAY_FRAMES)
    watcher = Watcher(mosquitto.port)
    doors = {
        name: Door(
            door_config(tmp_path, keys, name, mosquitto.port), frames, tmp_path / f"{name}.jsonl"
        )
        for name in ("front", "back")
    }
    try:
        # Both doors up (each reports what it holds on connect), then one publish for `back`.
        wait_for(lambda: all(watcher.report(d) for d in doors), 60)
        start = time.monotonic()
        assert main(["fleet", "publish", "wolf", "--doors", "back", "--config", str(admin)]) == 0
        version = json.loads(retained_message(mosquitto.port, "livegate/fleet/people/wolf"))[
            "body"
        ]["version"]
        wait_for(lambda: "wolf" in watcher.report("back").get("people", {}), SYNC_LIMIT_S)
        synced_s = time.monotonic() - start
        wait_for(lambda: watcher.report("front").get("fleet_version") == version, SYNC_LIMIT_S)
        assert doors["back"].holds("wolf") and not doors["front"].holds("wolf")
        assert watcher.report("back")["people"]["wolf"] == {"source": "fleet", "version": version}
        assert watcher.report("front")["people"] == {}

        events = doors["back"].play(0)
        grants = [e for e in events if e["kind"] == "granted"]
        assert grants and {g["person"] for g in grants} == {"wolf"}, [e["kind"] for e in events]
        assert True in doors["back"].relay_states()
        phase_one = len(events)
        published = retained_message(mosquitto.port, "livegate/fleet/people/wolf")

        # Signed with another key (and for every door): both doors ignore it, front stays empty.
        other = Ed25519PrivateKey.generate()
        forged = json.loads(published)
        forged["body"].update(version=version + 1000, doors=["*"])
        forged["signature"] = base64.b64encode(
            other.sign(b"livegate-fleet-v1\x00" + canonical(forged["body"]))
        ).decode()
        raw_publish(mosquitto.port, "livegate/fleet/people/wolf", canonical(forged))
        wait_for(lambda: ignored_lines(caplog, "bad signature") >= 2, SYNC_LIMIT_S)
        # The admin's own message with one ciphertext byte flipped.
        tampered = json.loads(published)
        cipher = bytearray(base64.b64decode(tampered["body"]["ciphertext"]))
        cipher[-1] ^= 0x80
        tampered["body"]["ciphertext"] = base64.b64encode(bytes(cipher)).decode()
        raw_publish(mosquitto.port, "livegate/fleet/people/wolf", canonical(tampered))
        wait_for(lambda: ignored_lines(caplog, "bad signature") >= 4, SYNC_LIMIT_S)
        assert not doors["front"].holds("wolf") and doors["back"].holds("wolf")
        assert watcher.report("back")["people"]["wolf"]["version"] == version

        start = time.monotonic()
        assert main(["fleet", "revoke", "wolf", "--config", str(admin)]) == 0
        wait_for(lambda: "wolf" not in watcher.report("back").get("people", {}), SYNC_LIMIT_S)
        revoked_s = time.monotonic() - start
        assert not doors["back"].holds("wolf")
        # The old enrolment replayed after the revoke: not newer, ignored by both doors.
        raw_publish(mosquitto.port, "livegate/fleet/people/wolf", published)
        wait_for(lambda: ignored_lines(caplog, "not newer than version") >= 2, SYNC_LIMIT_S)
        assert not doors["back"].holds("wolf") and not doors["front"].holds("wolf")

        states_before = len(doors["back"].relay_states())
        events = doors["back"].play(1)[phase_one:]
        kinds = [e["kind"] for e in events]
        assert "granted" not in kinds and "denied_unknown" in kinds, kinds
        assert True not in doors["back"].relay_states()[states_before:]
        print(
            f"fleet e2e: back held wolf {synced_s:.2f} s after publish, lost him"
            f" {revoked_s:.2f} s after revoke"
        )
    finally:
        codes = {name: door.close() for name, door in doors.items()}
        watcher.close()
    assert codes == {"front": 0, "back": 0}
    # Wolf's embeddings appear in no log line (names and versions only).
    wolf = EnrolmentStore.load(tmp_path / "admin" / "enrolled.json", EMBEDDING_MODEL_SHA256)
    for value in wolf.person("wolf").embeddings[0][:8]:
        assert f"{value:.5f}"[:7] not in caplog.text
