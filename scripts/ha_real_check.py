#!/usr/bin/env python3
"""Manual check of LiveGate's Home Assistant discovery against a REAL Home Assistant.

Starts its own mosquitto (127.0.0.1:PORT) and Home Assistant (MQTT set up as a config entry, no
onboarding, no UI), enrols the person of the first clip, runs the daemon once per clip (remote
unlock with a code and snapshots on, relay mocked), then prints one row per entity the daemon
announced: entity id, platform, whether HA created it, the last state HA showed (unavailable and
unknown skipped; for the event entity its event type) and whether ``python -m edge unregister``
removed it. Exit 1 if an announced entity is missing, survives unregister, or HA logged a warning
or error about MQTT or discovery.

Usage: python3 scripts/ha_real_check.py --ha-python /tmp/ha-venv/bin/python --port 18830
           [--workdir DIR] [CLIP ...]   (default clips: wolf_real.mp4 wolf_fake.mp4)
Home Assistant >= 2024.12 (device discovery) must be installed in that interpreter's environment;
its first start installs paho-mqtt from PyPI. Not part of the test suite: it takes minutes.
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from edge.config import load_config  # noqa: E402
from edge.homeassistant import discovery_payload  # noqa: E402

VIDEOS = Path("/work/shared/videos")
REGISTRY_SAVE_S = 12  # HA writes core.entity_registry 10 s after a change
PROBLEM = ("mqtt", "discovery", "invalid config")


def write_ha_config(ha_dir: Path, port: int) -> None:
    (ha_dir / ".storage").mkdir(parents=True, exist_ok=True)
    (ha_dir / "configuration.yaml").write_text(
        "homeassistant:\n  name: LiveGate check\n  time_zone: UTC\n  country: DE\n"
        "recorder:\n  commit_interval: 1\n"
    )
    now = "2025-01-01T00:00:00+00:00"
    entry = {
        "entry_id": "livegatecheckmqtt", "domain": "mqtt", "title": "127.0.0.1",
        "data": {"broker": "127.0.0.1", "port": port},
        "options": {"discovery": True, "discovery_prefix": "homeassistant"},
        "version": 1, "minor_version": 2, "source": "user", "unique_id": None,
        "created_at": now, "modified_at": now, "discovery_keys": {}, "disabled_by": None,
        "pref_disable_new_entities": False, "pref_disable_polling": False, "subentries": [],
    }  # fmt: skip
    storage = {"version": 1, "minor_version": 5, "key": "core.config_entries"}
    storage["data"] = {"entries": [entry]}
    (ha_dir / ".storage" / "core.config_entries").write_text(json.dumps(storage))


def wait_for_ha_birth(port: int, timeout: float) -> None:
    """HA publishes ``online`` on homeassistant/status once it listens to discovery."""
    seen: list[bytes] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.on_connect = lambda c, *_: c.subscribe("homeassistant/status")
    client.on_message = lambda _c, _u, m: seen.append(m.payload)
    client.connect("127.0.0.1", port)
    client.loop_start()
    deadline = time.monotonic() + timeout
    while b"online" not in seen and time.monotonic() < deadline:
        time.sleep(0.5)
    client.loop_stop()
    client.disconnect()
    if b"online" not in seen:
        raise SystemExit(f"Home Assistant sent no birth message within {timeout:.0f} s")


def door_config(work: Path, port: int) -> Path:
    code = work / "unlock_code"
    code.write_text("482913\n")
    code.chmod(0o600)
    config = {
        "state_dir": str(work / "door"),
        "liveness": {"model": str(REPO / "models" / "liveness.tflite")},
        "detector": {"assets_dir": str(REPO / "assets")},
        "relay": {"mock": True},
        "mqtt": {"port": port, "device_id": "frontdoor"},
        "homeassistant": {"remote_unlock": True, "unlock_code_file": str(code), "snapshot": True},
    }
    path = work / "door.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def edge(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "edge", *args], cwd=REPO, check=True, timeout=600)


def last_states(db: Path) -> tuple[dict[str, str], list[str]]:
    """Per entity, the last state other than unavailable/unknown (events: their event type), and
    the event types the event entity fired, in order."""
    sql = (
        "SELECT m.entity_id, s.state, a.shared_attrs FROM states s JOIN states_meta m"
        " USING (metadata_id) LEFT JOIN state_attributes a USING (attributes_id)"
        " WHERE s.state NOT IN ('unavailable', 'unknown') ORDER BY s.state_id"
    )
    out: dict[str, str] = {}
    fired: dict[str, str] = {}  # event time (the state) -> type; a restored state repeats one
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        for entity_id, state, attrs in con.execute(sql):
            if entity_id.startswith("event."):
                fired[state] = out[entity_id] = json.loads(attrs or "{}").get("event_type")
            else:
                out[entity_id] = state
    return out, list(fired.values())


def registry(ha_dir: Path) -> dict[str, str]:
    """unique_id -> entity_id of HA's entity registry."""
    data = json.loads((ha_dir / ".storage" / "core.entity_registry").read_text())["data"]
    return {e["unique_id"]: e["entity_id"] for e in data["entities"]}


def problems(log: Path) -> list[str]:
    lines = log.read_text(errors="replace").splitlines()
    return [
        line
        for line in lines
        if (" WARNING " in line or " ERROR " in line) and any(p in line.lower() for p in PROBLEM)
    ]


def check(args: argparse.Namespace, work: Path, ha_dir: Path) -> int:
    config_path = door_config(work, args.port)
    clips = args.clips or [str(VIDEOS / "wolf_real.mp4"), str(VIDEOS / "wolf_fake.mp4")]
    edge("enroll", "add", "wolf", "--source", clips[0], "--config", str(config_path))
    for clip in clips:
        edge("run", "--config", str(config_path), "--relay", "mock", "--source", clip)
    time.sleep(REGISTRY_SAVE_S)
    created = registry(ha_dir)
    states, fired = last_states(ha_dir / "home-assistant_v2.db")
    edge("unregister", "--config", str(config_path))
    time.sleep(REGISTRY_SAVE_S)
    left = registry(ha_dir)
    cmps = discovery_payload(load_config(config_path))["cmps"]
    announced = [c for c in cmps.values() if "unique_id" in c]
    print(f"{'entity_id':52} {'platform':14} {'created':8} {'last state':32} removed")
    failed = False
    for component in announced:
        entity_id = created.get(component["unique_id"])
        removed = component["unique_id"] not in left
        failed |= entity_id is None or not removed
        state = states.get(entity_id or "", "-")
        print(
            f"{entity_id or component['unique_id']:52} {component['p']:14}"
            f" {'yes' if entity_id else 'NO':8} {state[:32]:32} {'yes' if removed else 'NO'}"
        )
    print("event entity fired:", ", ".join(fired))
    found = problems(ha_dir / "home-assistant.log")
    for line in found:
        print("HA:", line[:300])
    return 1 if failed or found else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ha-python", required=True, help="python of the Home Assistant venv")
    parser.add_argument("--port", type=int, required=True, help="a free port for mosquitto")
    parser.add_argument("--workdir", type=Path, help="default: a new temporary folder")
    parser.add_argument("--ha-timeout", type=float, default=600.0)
    parser.add_argument("clips", nargs="*")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ha-real-check-"))
    ha_dir = work / "ha"
    write_ha_config(ha_dir, args.port)
    (work / "mosquitto.conf").write_text(
        f"listener {args.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
    )
    with (work / "mosquitto.log").open("wb") as mlog, (work / "hass.out").open("wb") as hlog:
        broker = subprocess.Popen(
            ["/usr/sbin/mosquitto", "-c", str(work / "mosquitto.conf")], stdout=mlog, stderr=mlog
        )
        time.sleep(0.5)
        hass = subprocess.Popen(
            [args.ha_python, "-m", "homeassistant", "-c", str(ha_dir)], stdout=hlog, stderr=hlog
        )
        try:
            wait_for_ha_birth(args.port, args.ha_timeout)
            version = subprocess.run(
                [args.ha_python, "-c", "import homeassistant.const as c; print(c.__version__)"],
                capture_output=True, text=True, check=True,
            ).stdout.strip()  # fmt: skip
            print(f"Home Assistant {version}, work folder {work}")
            return check(args, work, ha_dir)
        finally:
            hass.send_signal(signal.SIGTERM)
            hass.wait(timeout=60)
            broker.terminate()
            broker.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
