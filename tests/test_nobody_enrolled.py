"""A missing enrolment store: the daemon runs (exit 0), denies everyone, and says "0 people
enrolled" in its started event and in Home Assistant (a retained sensor state)."""

from __future__ import annotations

import json
import queue
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from gpiozero.pins.mock import MockFactory
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import parse_config
from edge.daemon import Daemon, RunOptions
from edge.errors import EXIT_OK
from tests.fakes import ConstantLiveness, FixedFaceDetector, ScriptedCamera
from tests.mosquitto import Mosquitto

pytest.importorskip("dlib")


def test_missing_store_runs_denies_and_reports_zero_enrolled_to_home_assistant(
    tmp_path: Path, mosquitto: Mosquitto, mock_factory: MockFactory
) -> None:
    config = parse_config(
        {
            "state_dir": str(tmp_path / "state"),
            "access": {"policy": "enrolled"},
            "mqtt": {"port": mosquitto.port, "device_id": "frontdoor"},
        },
        tmp_path,
    )
    assert not config.store_path.exists()
    seen: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
    watcher = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    watcher.on_message = lambda _c, _u, m: seen.put((m.topic, m.payload, m.retain))
    watcher.connect("127.0.0.1", mosquitto.port)
    watcher.subscribe([("livegate/frontdoor/state/enrolled", 1), ("homeassistant/device/#", 1)])
    watcher.loop_start()
    events = tmp_path / "events.jsonl"
    options = RunOptions(
        frame_source=ScriptedCamera([("frames", 300)]),
        detector=FixedFaceDetector(),
        liveness=ConstantLiveness(0.95),  # a live face, but nobody it could be
        events_out=events,
    )
    timer = threading.Timer(3.0, options.stop_event.set)
    timer.start()
    try:
        assert Daemon(config, options).run() == EXIT_OK
    finally:
        timer.cancel()
    try:
        messages = []
        while True:
            try:
                messages.append(seen.get(timeout=2.0))
            except queue.Empty:
                break
    finally:
        watcher.disconnect()
        watcher.loop_stop()
    states = [payload for topic, payload, _ in messages if topic.endswith("/state/enrolled")]
    assert states and states[-1] == b"0"
    discovery = [json.loads(p) for t, p, _ in messages if t.startswith("homeassistant/") and p]
    sensor = discovery[-1]["cmps"]["enrolled"]
    assert sensor["state_topic"] == "livegate/frontdoor/state/enrolled"
    kinds = [json.loads(line) for line in events.read_text().splitlines()]
    assert kinds[0]["kind"] == "started" and kinds[0]["enrolled"] == 0
    assert "granted" not in [e["kind"] for e in kinds]
    assert mock_factory.pin(17).state is False
