#!/usr/bin/env python3
"""Fleet scale check: N simulated doors (fleet client only) on one local mosquitto.

Each door is what a daemon runs for the fleet: an ``edge.mqtt.MqttLink`` (its own connection and
paho thread) and an ``edge.fleet.FleetDoor`` writing its own store, all as threads of this one
process. The admin publishes a new person (10 real-sized embeddings, random) with
``edge.fleet.publish_person``, as ``python -m edge fleet publish`` does; the time from the call
until each door has written the person to its store is recorded. Memory per door client is the
growth of this process's RSS from before the doors were started to after they all connected,
divided by N (a door's daemon carries it on top of what it already has loaded).

Usage: python3 scripts/fleet_scale.py [--doors 50] [--rounds 3] [--json docs/fleet_scale.json]
Needs mosquitto (apt) on PATH or in /usr/sbin; starts and stops its own on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from edge.config import Config, parse_config  # noqa: E402
from edge.fleet import DoorKeys, FleetDoor, keygen, publish_person  # noqa: E402
from edge.identity import EMBEDDING_MODEL_SHA256, EnrolmentStore  # noqa: E402
from edge.mqtt import MqttLink  # noqa: E402

EMBEDDINGS_PER_PERSON = 10  # what `enroll add` keeps by default


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_broker(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    conf = workdir / "mosquitto.conf"
    # Enough connections for every door; plain TCP on loopback like tests/mosquitto.py.
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    log = (workdir / "mosquitto.log").open("ab")
    process = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("mosquitto did not start")


def door_config(root: Path, keys: dict[str, Path], index: int, port: int) -> Config:
    return parse_config(
        {
            "state_dir": str(root / f"door-{index:03d}"),
            "mqtt": {"port": port, "device_id": f"door-{index:03d}"},
            "fleet": {
                "enabled": True,
                "public_key": str(keys["public_key"]),
                "content_key_file": str(keys["content_key_file"]),
            },
        },
        root,
    )


class SimulatedDoor:
    def __init__(self, config: Config) -> None:
        self.store_path = config.store_path
        self.applied: dict[str, float] = {}
        self.lock = threading.Lock()
        self.fleet = FleetDoor(
            config, DoorKeys.from_config(config), EMBEDDING_MODEL_SHA256, self._changed
        )
        self.link = MqttLink(config.mqtt)
        self.fleet.attach(self.link)

    def _changed(self) -> None:
        now = time.monotonic()
        for name in EnrolmentStore.load(self.store_path, EMBEDDING_MODEL_SHA256).people():
            with self.lock:
                self.applied.setdefault(name, now)

    def applied_at(self, name: str) -> float | None:
        with self.lock:
            return self.applied.get(name)


def run(doors: int, rounds: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="livegate-fleet-scale-") as tmp:
        root = Path(tmp)
        broker, port = start_broker(root)
        try:
            keys = keygen(root / "keys")
            admin = parse_config(
                {
                    "state_dir": str(root / "admin"),
                    "mqtt": {"port": port, "device_id": "admin"},
                    "fleet": {
                        "signing_key": str(keys["signing_key"]),
                        "public_key": str(keys["public_key"]),
                        "content_key_file": str(keys["content_key_file"]),
                    },
                },
                root,
            )
            rss_before = rss_kb()
            fleet = [SimulatedDoor(door_config(root, keys, i, port)) for i in range(doors)]
            for door in fleet:
                door.link.start()
            for door in fleet:
                if not door.link.wait_connected(30):
                    raise RuntimeError("a door did not connect within 30 s")
            time.sleep(1.0)  # let every first report go out before measuring
            rss_after = rss_kb()
            rng = np.random.default_rng(0)
            per_round = []
            for number in range(rounds):
                name = f"person {number + 1}"
                vectors = rng.normal(size=(EMBEDDINGS_PER_PERSON, 128))
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                with EnrolmentStore.editing(admin.store_path, EMBEDDING_MODEL_SHA256) as store:
                    store.add(name, list(vectors))
                    store.save()
                start = time.monotonic()
                _version, size = publish_person(admin, name, ["*"])
                deadline = start + 60
                while time.monotonic() < deadline:
                    if all(d.applied_at(name) is not None for d in fleet):
                        break
                    time.sleep(0.01)
                delays = [
                    (at - start) * 1000.0 if (at := d.applied_at(name)) is not None else None
                    for d in fleet
                ]
                held = [d for d in delays if d is not None]
                per_round.append(
                    {
                        "person": name,
                        "message_bytes": size,
                        "doors_holding": len(held),
                        "median_ms": round(statistics.median(held), 1) if held else None,
                        "max_ms": round(max(held), 1) if len(held) == doors else None,
                    }
                )
            for door in fleet:
                door.link.stop()
        finally:
            broker.kill()
            broker.wait(5)
    all_held = all(r["doors_holding"] == doors for r in per_round)
    return {
        "doors": doors,
        "rounds": per_round,
        "all_doors_held_every_person": all_held,
        "median_ms": statistics.median(r["median_ms"] for r in per_round if r["median_ms"]),
        "max_ms": max(r["max_ms"] for r in per_round) if all_held else None,
        "rss_per_door_client_kb": round((rss_after - rss_before) / doors, 1),
        "rss_process_before_doors_mb": round(rss_before / 1024.0, 1),
        "rss_process_with_doors_mb": round(rss_after / 1024.0, 1),
        "machine": f"{platform.machine()}, {platform.python_implementation()}"
        f" {platform.python_version()}",
        "command": "python3 scripts/fleet_scale.py " + " ".join(sys.argv[1:]),
        "basis": "one process, one thread per door client (MqttLink + FleetDoor), one local"
        " mosquitto; time = publish call to the person written in the door's store",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--doors", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3, help="new people published, one by one")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    # Each door's clean disconnect at the end would log a warning: keep the output to numbers.
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("paho").setLevel(logging.CRITICAL)  # MqttLink.stop's disconnect noise
    result = run(args.doors, args.rounds)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0 if result["all_doors_held_every_person"] else 1


if __name__ == "__main__":
    sys.exit(main())
